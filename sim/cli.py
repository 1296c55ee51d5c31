"""``satedge demo`` and ``satedge sim ...``."""
from __future__ import annotations

import json
import os


def add_parsers(subparsers) -> None:
    """Add the ``demo`` and ``sim`` sides to the top-level parser."""
    from satedge_cli import non_negative_int, positive_int
    demo = subparsers.add_parser("demo", help="train, ship and run a cloud screen end to end")
    demo.add_argument("--out", default="out/demo", help="work directory (default out/demo)")
    demo.add_argument("--quick", action="store_true", help="CI-sized run (fewer tiles and frames)")
    demo.add_argument("--frames", type=positive_int, default=None,
                      help="frames the sensor sends (>= 1; default 12 with --quick, else 60)")
    demo.add_argument("--seed", type=non_negative_int, default=0)
    demo.add_argument("--no-bad", action="store_true", help="do not mix malformed messages into the stream")
    demo.add_argument("--json", metavar="PATH", help="also write the summary as JSON")
    demo.set_defaults(func=_demo)

    side = subparsers.add_parser("sim", help="the constellation simulator")
    verbs = side.add_subparsers(dest="verb", metavar="<verb>", required=True)
    sensor = verbs.add_parser("sensor", help="stream synthetic frames to a daemon")
    sensor.add_argument("--endpoint", required=True, help="the daemon's sensor endpoint")
    sensor.add_argument("--frames", type=int, default=10)
    sensor.add_argument("--rate", type=float, default=0.0, help="frames per second (0: as fast as accepted)")
    sensor.add_argument("--seed", type=non_negative_int, default=1000)
    sensor.set_defaults(func=_sensor)

    c = verbs.add_parser("contacts", help="contact windows of a constellation -> HDTN contact plan JSON")
    c.add_argument("--walker", help='Walker-delta "INC:T/P/F@ALT_KM", e.g. "53:24/3/1@550"')
    c.add_argument("--tle", help="TLE file instead of a Walker constellation")
    c.add_argument("--stations", help="'all', 'default:N', comma-separated names, or a JSON file")
    c.add_argument("--hours", type=float, default=24.0)
    c.add_argument("--step", type=float, default=10.0, help="propagation step in seconds")
    c.add_argument("--start", help="plan epoch, ISO UTC (default: today 00:00 UTC, or the latest TLE epoch)")
    c.add_argument("--isl", action="store_true", help="also inter-satellite line-of-sight windows")
    c.add_argument("--out", default="out/contacts.json")
    c.set_defaults(func=_contacts)

    r = verbs.add_parser("run", help="a constellation run: ground station + N daemons as processes, report.html")
    r.add_argument("scenario", help="YAML file, or a shipped name (constellation-12, constellation-quick)")
    r.add_argument("--out", default=None, help="run directory (default out/sim-<scenario name>)")
    r.add_argument("--signing-key", default="", help="ed25519 private key for the bundles (default: a fresh one)")
    r.set_defaults(func=_run)

    from sim.fl import add_fl_parser
    add_fl_parser(verbs)


def _demo(args) -> int:
    from engines.outpaths import output_file
    from sim.demo import format_summary, run_demo
    if args.json:
        output_file(args.json, "--json")       # before the run, not after it
    summary = run_demo(args.out, quick=args.quick, seed=args.seed, frames=args.frames, bad=not args.no_bad)
    print()
    print(format_summary(summary))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)
        print(f"\nsummary written to {args.json}")
    return 0


def _run(args) -> int:
    from sim.runner import run_scenario
    from sim.scenario import load_scenario
    sc = load_scenario(args.scenario)
    out = args.out or os.path.join("out", f"sim-{sc.name}")
    from engines.outpaths import output_folder
    output_folder(out, "--out")
    s = run_scenario(sc, out, args.signing_key)
    d = s["delivery"]
    print(f"\n{sc.name}: {len(s['satellites'])} satellites, {s['duration_s'] / 3600:g} h at {s['factor']:g}x in "
          f"{s['wall_s']:.0f} s wall")
    print(f"results: {d['accepted']} accepted on board, {d['delivered_unique']} delivered, {d['duplicates_dropped']} "
          f"duplicates dropped, {d['lost']} lost, {d['unexpected']} unexpected -> exactly once: {d['exactly_once']}")
    print(f"engine v{sc.rollout_version} active on {sum(v == sc.rollout_version for v in s['versions'].values())} of "
          f"{len(s['versions'])} satellites")
    for f in s["faults"]:
        print(f"fault {f['id']} {f['fault']:<19s} {f['sat']}: at {f['t']:.0f} s -> "
              + (f"recovered at {f['t_recovered']:.0f} s ({f['recovery']})" if f["recovered"] else "NOT recovered"))
    print(f"report: {s['report']}")
    ok = d["exactly_once"] and all(f["recovered"] for f in s["faults"])
    return 0 if ok else 1


def _sensor(args) -> int:
    from sim.sensor import run
    sent = run(args.endpoint, args.frames, seed=args.seed, rate_hz=args.rate)
    print(f"sent {sent['sent_total']} frames in {sent['seconds']:.1f} s")
    return 0


def _contacts(args) -> int:
    from sim.contacts import run_contacts
    plan = run_contacts(args.walker, args.tle, args.stations, args.hours, args.step, args.out,
                        start=args.start, isl=args.isl)
    print(plan.format_summary())
    print(f"written to {args.out}")
    return 0
