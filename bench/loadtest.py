"""Overload test of the scheduler with a real ONNX Runtime runner: 3x capacity, bounded by wall clock.

First the capacity of one runner is measured (full batches back to back); then work is offered at
``overload`` times that rate for ``seconds`` (10 % critical class 0, the rest spread over classes
1-3, each class with its own deadline) to a :class:`onboard.scheduler.Scheduler` that one worker
thread drains in dynamic batches. It prints memory (RSS) at start, peak and end, the critical
deadline miss rate (goal < 1 %: shed, rejected or finished late, over offered) and the accounting
``offered == processed + shed + rejected`` per class.

Usage: ``python bench/loadtest.py [--seconds 60] [--overload 3] [--json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import threading
import time
from typing import Any, Dict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engines.runners.onnxrt import OnnxRuntimeRunner  # noqa: E402
from onboard.scheduler import Scheduler  # noqa: E402

DEADLINES_S = (0.1, 0.25, 0.5, 1.0)       # per class: critical alerts must be out within 100 ms
INPUT_SHAPE = (8, 32, 32)


def build_model() -> bytes:
    """A small real CNN (two 3x3 convolutions of 32 channels, ReLU, global mean) as ONNX bytes."""
    import onnx
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.1, (32, INPUT_SHAPE[0], 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.1, (32, 32, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h1"], ["a1"]),
             helper.make_node("Conv", ["a1", "w2"], ["h2"], pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["h2"], ["y"], axes=[2, 3], keepdims=0)]
    graph = helper.make_graph(
        nodes, "loadtest_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *INPUT_SHAPE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor("w1", TensorProto.FLOAT, w1.shape, w1.ravel()),
         helper.make_tensor("w2", TensorProto.FLOAT, w2.shape, w2.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def rss_mib() -> float:
    """Resident set size of this process now, in MiB (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_capacity(runner: OnnxRuntimeRunner, x: np.ndarray, seconds: float = 1.0) -> float:
    """Items per second of full batches back to back (after a warm-up)."""
    runner.infer({"x": x}, check_inputs=False)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner.infer({"x": x}, check_inputs=False)
        n += len(x)
    return n / (time.perf_counter() - start)


def run_loadtest(seconds: float = 60.0, overload: float = 3.0, high_fraction: float = 0.1, max_batch: int = 8,
                 max_wait_s: float = 0.002, capacities=(64, 64, 64, 64), total_capacity: int = 128,
                 seed: int = 0, progress: bool = False) -> Dict[str, Any]:
    """Measure capacity, offer ``overload`` x capacity for ``seconds``, and return the figures."""
    rss_start = rss_mib()
    runner = OnnxRuntimeRunner(build_model(), intra_op_threads=1, name="loadtest")
    runner.activate()
    x = np.random.default_rng(seed).random((max_batch, *INPUT_SHAPE), dtype=np.float32)
    capacity = measure_capacity(runner, x)
    rss_warm = rss_mib()
    rate = overload * capacity
    sched = Scheduler(capacities, total_capacity=total_capacity)
    stop_offer, stop_work = threading.Event(), threading.Event()
    peak = {"rss": rss_mib(), "queued": 0}

    def produce() -> None:
        rng = random.Random(seed)
        t0 = time.perf_counter()
        sent = 0
        while not stop_offer.is_set():
            due = int((time.perf_counter() - t0) * rate)
            for _ in range(due - sent):              # every arrival that is due, in a burst if behind
                cls = 0 if rng.random() < high_fraction else rng.randint(1, len(capacities) - 1)
                sched.submit(None, cls, time.time() + DEADLINES_S[cls])
            sent = max(sent, due)
            time.sleep(0.0005)

    def work() -> None:
        while not (stop_work.is_set() and sched.depth() == 0):
            jobs = sched.next_batch(None, max_batch, max_wait_s)
            if jobs:
                runner.infer({"x": x[:len(jobs)]}, check_inputs=False)
                sched.done(jobs)

    threads = [threading.Thread(target=produce, daemon=True), threading.Thread(target=work, daemon=True)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    next_report = start + 5.0
    while time.perf_counter() - start < seconds:
        time.sleep(0.05)
        peak["rss"] = max(peak["rss"], rss_mib())
        peak["queued"] = max(peak["queued"], sched.stats()["total_used"])
        if progress and time.perf_counter() >= next_report:
            next_report += 5.0
            print("  %5.0f s  queued %3d  RSS %.1f MiB" % (time.perf_counter() - start, sched.depth(), rss_mib()),
                  file=sys.stderr)
    stop_offer.set()
    threads[0].join()
    stop_work.set()
    threads[1].join(30)
    runner.deactivate()
    st = sched.stats()
    crit = st["classes"][0]
    missed = crit["shed"] + crit["rejected"] + crit["late"]
    return {
        "seconds": seconds, "capacity_items_s": capacity, "offered_rate_items_s": rate,
        "classes": st["classes"], "shed_by_reason": st["shed_by_reason"],
        "identity_holds": all(c["offered"] == c["processed"] + c["shed"] + c["rejected"] for c in st["classes"]),
        "offered_actual_items_s": sum(c["offered"] for c in st["classes"]) / seconds,
        "processed_rate_items_s": sum(c["processed"] for c in st["classes"]) / seconds,
        "critical_miss_rate": missed / max(1, crit["offered"]),
        "peak_queued": peak["queued"], "queue_bound": total_capacity,
        "rss_mib": {"start": rss_start, "warm": rss_warm, "peak": max(peak["rss"], rss_mib()), "end": rss_mib()},
    }


def main(argv=None) -> int:
    """Run the load test from the command line and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="overload phase length (default 60)")
    parser.add_argument("--overload", type=float, default=3.0, help="offered rate / measured capacity (default 3)")
    parser.add_argument("--high-fraction", type=float, default=0.1, help="share of class-0 work (default 0.1)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    res = run_loadtest(args.seconds, args.overload, args.high_fraction, args.max_batch, progress=not args.json)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print("capacity %.0f items/s; offered %.0f items/s (%.1fx) for %.0f s; processed %.0f items/s "
          "(offered / processed %.1fx)" % (res["capacity_items_s"], res["offered_actual_items_s"],
                                           res["offered_actual_items_s"] / res["capacity_items_s"], args.seconds,
                                           res["processed_rate_items_s"],
                                           res["offered_actual_items_s"] / res["processed_rate_items_s"]))
    print("class  offered  processed     shed  rejected  late")
    for i, c in enumerate(res["classes"]):
        print("%5d %8d %10d %8d %9d %5d" % (i, c["offered"], c["processed"], c["shed"], c["rejected"], c["late"]))
    print("offered == processed + shed + rejected: %s; shed by reason %s" % (res["identity_holds"],
                                                                           res["shed_by_reason"]))
    print("critical deadline miss rate %.3f %% (goal < 1 %%)" % (100 * res["critical_miss_rate"]))
    print("queue peak %d of bound %d; RSS MiB start %.1f, warm (runner loaded) %.1f, peak %.1f, end %.1f"
          % (res["peak_queued"], res["queue_bound"], *res["rss_mib"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
