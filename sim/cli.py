"""``satedge demo`` and ``satedge sim ...``."""
from __future__ import annotations

import json
import os


def add_parsers(subparsers) -> None:
    """Add the ``demo`` and ``sim`` sides to the top-level parser."""
    demo = subparsers.add_parser("demo", help="train, ship and run a cloud screen end to end")
    demo.add_argument("--out", default="out/demo", help="work directory (default out/demo)")
    demo.add_argument("--quick", action="store_true", help="CI-sized run (fewer tiles and frames)")
    demo.add_argument("--frames", type=int, default=None, help="frames the sensor sends")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-bad", action="store_true", help="do not mix malformed messages into the stream")
    demo.add_argument("--json", metavar="PATH", help="also write the summary as JSON")
    demo.set_defaults(func=_demo)

    side = subparsers.add_parser("sim", help="the constellation simulator")
    verbs = side.add_subparsers(dest="verb", metavar="<verb>", required=True)
    sensor = verbs.add_parser("sensor", help="stream synthetic frames to a daemon")
    sensor.add_argument("--endpoint", required=True, help="the daemon's sensor endpoint")
    sensor.add_argument("--frames", type=int, default=10)
    sensor.add_argument("--rate", type=float, default=0.0, help="frames per second (0: as fast as accepted)")
    sensor.add_argument("--seed", type=int, default=1000)
    sensor.set_defaults(func=_sensor)


def _demo(args) -> int:
    from sim.demo import format_summary, run_demo
    summary = run_demo(args.out, quick=args.quick, seed=args.seed, frames=args.frames, bad=not args.no_bad)
    print()
    print(format_summary(summary))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)
        print(f"\nsummary written to {args.json}")
    return 0


def _sensor(args) -> int:
    from sim.sensor import run
    sent = run(args.endpoint, args.frames, seed=args.seed, rate_hz=args.rate)
    print(f"sent {sent['sent_total']} frames in {sent['seconds']:.1f} s")
    return 0
