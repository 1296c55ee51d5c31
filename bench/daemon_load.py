"""Overload test of the daemon as a real process over real sockets, bounded by wall clock.

1. A daemon serves four streams, one per priority class: ``alert`` (class 0, deadline 0.5 s),
   ``msi1`` (1 s), ``msi2`` (2 s), ``msi3`` (4 s), with ``scheduler.admission: reject`` so that
   what it cannot queue is dropped (and counted) instead of pushing back on the sensor.
2. Capacity: a closed loop (at most 16 frames outstanding) of ``msi2`` frames for a few seconds;
   capacity is results per second at the ground.
3. Overload: frames offered at ``overload`` x capacity for ``seconds`` (10 % ``alert``, 30 % each
   of the others), each with its class's deadline, sent without blocking (a full sensor socket
   counts as refused). The daemon's memory (RSS from /proc) and queue use are sampled.
4. Then the daemon finishes what it holds; the figures are deltas of its own counters over the
   overload phase: offered == processed + shed + rejected, class-0 deadline misses (shed,
   rejected or finished late, over offered; goal < 1 %), memory at start, peak and end.

``python bench/daemon.py --load [--seconds 60] [--overload 3]``; the test suite runs a short one
(``tests/onboard/test_daemon.py``).
"""
from __future__ import annotations

import os
import random
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

import zmq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from onboard.control import ControlClient  # noqa: E402

STREAMS = (("alert", 0, 0.5), ("msi1", 1, 1.0), ("msi2", 2, 2.0), ("msi3", 3, 4.0))
SHARES = (0.1, 0.3, 0.3, 0.3)


def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _delta(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    """``b - a`` for every numeric key."""
    return {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b)
            if isinstance(b.get(k, 0), (int, float)) and isinstance(a.get(k, 0), (int, float))}


def run_load(bundle_dir: str, seconds: float = 60.0, overload: float = 3.0, size: int = 64, threads: int = 1,
             capacity_s: float = 5.0, workdir: Optional[str] = None, progress: bool = False) -> Dict[str, Any]:
    """Run the overload test against a daemon serving ``bundle_dir``; return the figures (see module doc)."""
    from bench.daemon import Ground, frame_parts, make_frames, start_daemon
    tmp = None if workdir else tempfile.TemporaryDirectory(prefix="bench-load-")
    workdir = workdir or tmp.name
    stage = [{"name": "cloud", "kind": "cloud_screen", "bundle": bundle_dir}]
    proc = start_daemon(bundle_dir, workdir, threads, heartbeat_interval_s=1.0,
                        scheduler={"admission": "reject", "capacities": [64, 64, 64, 64], "total_capacity": 128,
                                   "max_batch_frames": 8, "max_wait_s": 0.002},
                        pipeline={n: {"priority": c, "deadline_s": d, "stages": stage} for n, c, d in STREAMS})
    s = proc.settings
    frames = make_frames(32, size)
    ground = Ground(s)
    ground.start()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 256)
    push.connect(s.sensor_endpoint)
    client, lock = ControlClient(s.control_endpoint, timeout_s=10.0), threading.Lock()

    def status() -> Dict[str, Any]:
        """One client for both threads: a ZeroMQ socket serves one thread at a time, and two clients of one
        key (``anonymous`` on an unauthenticated control channel) would interleave their replay counters."""
        with lock:
            return client.status()

    try:
        # ---- capacity: closed loop, at most 16 frames outstanding
        sent, start = 0, time.time()
        while time.time() - start < capacity_s:
            if sent - ground.count() < 16:
                push.send_multipart(frame_parts(frames[sent % len(frames)], "msi2", sent), copy=False)
                sent += 1
            else:
                time.sleep(0.0005)
            if sent == 32:
                t0, n0 = time.time(), ground.count()
        capacity = (ground.count() - n0) / (time.time() - t0)
        while ground.count() < sent:
            time.sleep(0.01)
        before, rss_warm = status(), rss_mib(proc.pid)
        # ---- overload: open loop at overload x capacity
        rate, rng = overload * capacity, random.Random(0)
        offered = {n: 0 for n, _, _ in STREAMS}
        refused = {n: 0 for n, _, _ in STREAMS}
        samples: List[Dict[str, float]] = []
        halt = threading.Event()

        def sample() -> None:
            while not halt.is_set():
                _sample()

        def _sample() -> None:
            st = status()
            samples.append({"t": time.time(), "rss": rss_mib(proc.pid), "queued": st["scheduler"]["total_used"],
                            "outbox": st["outbox"]["depth"]})
            if progress:
                print("  %5.1f s  queued %3d tiles  outbox %4d  RSS %.1f MiB" % (
                    time.time() - t_start, samples[-1]["queued"], samples[-1]["outbox"], samples[-1]["rss"]))
            halt.wait(1.0)

        t_start = time.time()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        n = 0
        while time.time() - t_start < seconds:
            due = int((time.time() - t_start) * rate)
            while n < due:
                name, _, deadline = STREAMS[rng.choices(range(4), SHARES)[0]]
                offered[name] += 1
                try:
                    push.send_multipart(frame_parts(frames[n % len(frames)], name, sent + n, deadline),
                                        copy=False, flags=zmq.NOBLOCK)
                except zmq.Again:
                    refused[name] += 1
                n += 1
            time.sleep(0.0005)
        offer_s = time.time() - t_start
        total = sum(offered.values()) - sum(refused.values())
        after = None
        for _ in range(600):                     # the daemon finishes or sheds what it holds
            after = status()
            if after["frames_in"] - before["frames_in"] >= total and after["in_flight"] == 0:
                break
            time.sleep(0.1)
        for _ in range(300):                     # and downlinks everything
            if status()["outbox"]["depth"] == 0:
                break
            time.sleep(0.1)
        halt.set()
        sampler.join(5)
        rss_end = rss_mib(proc.pid)
    finally:
        client.close()
        push.close(0)
        ctx.term()
        code = proc.stop(timeout=60)
        ground.halt.set()
        ground.join(5)
        if tmp is not None:
            tmp.cleanup()
    d = _delta(before, after)
    drops = _delta(before["dropped_by_reason"], after["dropped_by_reason"])
    classes = [_delta(a, b) for a, b in zip(before["scheduler"]["classes"], after["scheduler"]["classes"])]
    shed = sum(v for k, v in drops.items() if k != "queue_full")
    rejected = drops.get("queue_full", 0) + d["frames_rejected"] + sum(refused.values())
    c0 = classes[0]
    late_ground = [h for h in ground.rx.results.values() if h["stream"] == "alert"
                   and h["_received"] - h["sensor_ts"] > STREAMS[0][2]]
    return {
        "capacity_fps": capacity, "offered_fps": sum(offered.values()) / offer_s, "overload": overload,
        "seconds": offer_s, "size": size, "offered": sum(offered.values()), "offered_by_stream": offered,
        "refused_at_sensor": refused, "frames_in": d["frames_in"], "processed": d["frames_processed"],
        "shed": shed, "rejected": rejected, "dropped_by_reason": drops, "classes": classes,
        "identity_holds": sum(offered.values()) == d["frames_processed"] + shed + rejected,
        "processed_fps": d["frames_processed"] / offer_s,
        "critical_miss_rate": (c0["shed"] + c0["rejected"] + c0["late"] + refused["alert"]) / max(1, offered["alert"]),
        "critical_late_at_ground": len(late_ground) / max(1, offered["alert"]),
        "queue_peak_tiles": max((x["queued"] for x in samples), default=0), "queue_bound_tiles": 128,
        "outbox_peak": max((x["outbox"] for x in samples), default=0),
        "rss_mib": {"warm": rss_warm, "peak": max([x["rss"] for x in samples] + [rss_warm]), "end": rss_end},
        "results_at_ground": len(ground.rx.results), "duplicates_at_ground": ground.rx.duplicates,
        "exit_code": code,
    }


def report(r: Dict[str, Any]) -> str:
    """The figures as text."""
    lines = [f"daemon capacity {r['capacity_fps']:.0f} frames/s ({r['size']}x{r['size']}); offered "
             f"{r['offered_fps']:.0f} frames/s ({r['offered_fps'] / r['capacity_fps']:.1f}x) for {r['seconds']:.0f} s; "
             f"processed {r['processed_fps']:.0f} frames/s",
             "class stream  offered  processed   shed  rejected  late"]
    for (name, cls, _), c in zip(STREAMS, r["classes"]):
        lines.append(f"{cls:5d} {name:6s} {r['offered_by_stream'][name]:8d} {c['processed']:10d} {c['shed']:6d} "
                     f"{c['rejected'] + r['refused_at_sensor'][name]:9d} {c['late']:5d}")
    lines += [f"offered {r['offered']} == processed {r['processed']} + shed {r['shed']} + rejected {r['rejected']}: "
              f"{r['identity_holds']}  (dropped by reason {r['dropped_by_reason']}, refused at the sensor "
              f"{sum(r['refused_at_sensor'].values())})",
              f"class-0 deadline misses {100 * r['critical_miss_rate']:.3f} % (goal < 1 %); reached the ground late "
              f"{100 * r['critical_late_at_ground']:.3f} %",
              f"queue peak {r['queue_peak_tiles']} of {r['queue_bound_tiles']} tiles; outbox peak {r['outbox_peak']}; "
              f"daemon RSS MiB warm {r['rss_mib']['warm']:.1f}, peak {r['rss_mib']['peak']:.1f}, "
              f"end {r['rss_mib']['end']:.1f}",
              f"results at the ground {r['results_at_ground']} ({r['duplicates_at_ground']} duplicates dropped); "
              f"daemon exit code {r['exit_code']}"]
    return "\n".join(lines)


def main_load(args) -> int:
    """``bench/daemon.py --load``."""
    import json

    from bench.daemon import cloud_bundle
    r = run_load(cloud_bundle(args.precision), args.seconds, args.overload, threads=args.threads,
                 progress=not args.json)
    print(json.dumps(r, indent=2, default=float) if args.json else report(r))
    return 0 if r["identity_holds"] else 1


__all__ = ["run_load", "report", "main_load"]
