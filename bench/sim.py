"""Constellation simulator benchmark: SGP4 array propagation and a full contact plan.

Prints satellite-time steps per second of sgp4's array API (one thread and two), then the wall
and CPU time of a contact plan (default: a 1,000-satellite Walker shell, the 20 built-in stations,
24 h at 10 s steps; the goal is <= 30 s on 2 cores) with the windows found, and the plan's cost as
a multiple of propagating the same steps alone, measured side by side. ``--quick``: 200
satellites over 6 h.

    python bench/sim.py [--quick] [--sats N] [--hours H] [--step S] [--workers W]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sgp4.api import SatrecArray  # noqa: E402

from sim.contacts import ContactPlan  # noqa: E402
from sim.orbits import Constellation, load_stations  # noqa: E402
from sim.timescale import Times  # noqa: E402

EPOCH = "2026-11-21T00:00:00Z"


def _clock(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def propagation(const: Constellation, times: Times, workers: int, repeat: int = 3) -> dict:
    """Sat-steps per second of ``SatrecArray.sgp4``: 1 thread (wall and per CPU second), ``workers`` threads."""
    arr = SatrecArray(const.satrecs)
    n = len(const) * len(times)
    one = min((_clock(lambda: arr.sgp4(times.jd, times.fr)) for _ in range(repeat)), key=lambda x: x[1])
    parts = np.array_split(np.arange(len(times)), workers)
    arrays = [SatrecArray(const.satrecs) for _ in parts]
    with ThreadPoolExecutor(workers) as pool:
        many = min(_clock(lambda: list(pool.map(lambda k: arrays[k].sgp4(times.jd[parts[k]], times.fr[parts[k]]),
                                                range(workers))))[1] for _ in range(repeat))
    return {"steps": n, "one_thread": n / one[1], "per_cpu_s": n / one[2], "threads": n / many}


def bare(const: Constellation, times: Times, chunk: int = 200) -> tuple:
    """Wall and CPU seconds to propagate every step once on one thread, in chunks (no contact search)."""
    def run():
        for lo in range(0, len(times), chunk):
            const.at(times[lo:lo + chunk])
    return _clock(run)[1:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 satellites over 6 h")
    ap.add_argument("--sats", type=int, default=None, help="satellites (a 40-plane Walker 53 deg, 550 km shell)")
    ap.add_argument("--stations", type=int, default=20)
    ap.add_argument("--hours", type=float, default=None)
    ap.add_argument("--step", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    sats = args.sats or (200 if args.quick else 1000)
    hours = args.hours or (6.0 if args.quick else 24.0)
    planes = 40 if sats % 40 == 0 else 1
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"host: {_cpu_name()}, {os.cpu_count()} CPUs, load average {load1:.2f}, "
          f"python {platform.python_version()}, numpy {np.__version__}")

    const = Constellation.walker_delta(sats, planes, 1 if planes > 1 else 0, 550.0, 53.0, EPOCH)
    stations = load_stations(f"default:{args.stations}")
    times = Times.span(EPOCH, hours, args.step)
    prop = propagation(const, times[: min(len(times), 864)], args.workers)
    print(f"sgp4 SatrecArray: {prop['one_thread'] / 1e6:.2f} M sat-steps/s on 1 thread "
          f"({prop['per_cpu_s'] / 1e6:.2f} M per CPU second), {prop['threads'] / 1e6:.2f} M on "
          f"{args.workers} threads (best of 3, {prop['steps']:,} steps)")
    bare_wall, bare_cpu = bare(const, times)
    plan, wall, cpu = _clock(lambda: ContactPlan.build(const, stations, times, workers=args.workers))
    windows = len(plan) // 2
    print(f"contact plan: {sats} satellites x {len(stations)} stations x {hours:g} h at {args.step:g} s "
          f"({sats * len(times) / 1e6:.2f} M states): {wall:.1f} s wall, {cpu:.1f} s CPU, "
          f"{windows:,} windows ({len(plan):,} directed contacts)")
    print(f"  ratio plan / bare propagation of the same steps: {cpu / bare_cpu:.2f} in CPU time "
          f"(propagation alone: {bare_wall:.1f} s wall, {bare_cpu:.1f} s CPU on 1 thread)")
    with tempfile.TemporaryDirectory() as tmp:
        _, wj, _ = _clock(lambda: plan.write(os.path.join(tmp, "plan.json")))
        size = os.path.getsize(os.path.join(tmp, "plan.json"))
    print(f"  HDTN JSON: {size / 1e6:.1f} MB written in {wj:.2f} s")
    goal = 30.0 if (sats, len(stations), hours, args.step) == (1000, 20, 24.0, 10.0) else None
    if goal:
        print(f"  goal <= {goal:.0f} s on 2 cores: {'met' if wall <= goal else 'NOT met'}"
              + (" (host is shared: compare CPU time / cores too)" if load1 > (os.cpu_count() or 1) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
