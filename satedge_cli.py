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


def _whole_number(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give one >= {lowest}") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"{value} is too small; give a whole number >= {lowest}")
    return value


def non_negative_int(text: str) -> int:
    """argparse ``type`` for seeds and counts: a whole number >= 0, else a one-line argparse error."""
    return _whole_number(text, 0)


def positive_int(text: str) -> int:
    """argparse ``type`` for counts that must be at least 1 (frames, clients)."""
    return _whole_number(text, 1)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors end in one ``satedge: error: ...`` line, like every other error."""

    def error(self, message):
        self.print_usage(sys.stderr)
        verb = self.prog[len("satedge "):] if self.prog.startswith("satedge ") else ""
        self.exit(2, f"satedge: error: {verb + ': ' if verb else ''}{message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every side's verbs."""
    parser = _Parser(prog="satedge", description="satedge: onboard satellite edge computing "
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
    except OSError as exc:              # a last net: a file problem no verb turned into a UserError
        where = exc.filename if exc.filename is not None else ""
        reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
        print(f"satedge: error: {where}{': ' if where else ''}{reason}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
