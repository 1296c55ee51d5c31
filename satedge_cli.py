"""The ``satedge`` command: ``satedge <side> <verb>``.

Each side (engines and keys, onboard, ground, sim, plus demo and data) owns its verbs in its own
``cli.py`` with an ``add_parsers(subparsers)`` function; this thin dispatcher joins them, prints
:class:`engines.errors.UserError` messages without a traceback, and exits with their code.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

SIDES = ("engines.cli", "onboard.cli", "ground.cli", "ground.data.cli", "sim.cli")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every side's verbs."""
    parser = argparse.ArgumentParser(prog="satedge", description="satedge: onboard satellite edge computing "
                                     "(ground training and compression, engine bundles, the onboard daemon, "
                                     "the constellation simulator).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="side", metavar="<side>")
    for module in SIDES:
        importlib.import_module(module).add_parsers(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``satedge`` console script."""
    from engines.errors import SatedgeError
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except SatedgeError as exc:
        print(f"satedge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
