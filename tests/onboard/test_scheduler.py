"""Scheduler: priority + EDF, bounded queues, shedding, batching, accounting; device assignment; overload."""
import importlib.util
import os
import threading
import time
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines.errors import UserError
from onboard.scheduler import Admission, DeviceAssigner, Scheduler, allowed_devices

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FakeClock:
    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


def _identity(stats, drained=False):
    for c in stats["classes"]:
        live = 0 if drained else c["queued"] + c["in_service"]
        assert c["offered"] == c["processed"] + c["shed"] + c["rejected"] + live, c


def test_strict_priority_across_classes_and_edf_within():
    clock = FakeClock()
    s = Scheduler((8, 8, 8, 8), clock=clock)
    for name, prio, dl in [("c3", 3, 1), ("b9", 1, 9), ("b5", 1, 5), ("a7", 0, 7), ("a2", 0, 2), ("b1", 1, 1)]:
        assert s.submit(name, prio, dl) is Admission.ACCEPTED
    assert [j.item for j in s.next_batch(max_batch=4)] == ["a2", "a7", "b1", "b5"]
    assert [j.item for j in s.next_batch(max_batch=4)] == ["b9", "c3"]


def test_full_class_rejects_and_critical_sheds_least_urgent_first():
    clock, shed = FakeClock(), []
    s = Scheduler((2, 4, 4, 4), total_capacity=6, on_shed=lambda item, why: shed.append((item, why)), clock=clock)
    for i in range(4):
        assert s.submit("bg%d" % i, 3, 10 + i) is Admission.ACCEPTED
    assert s.submit("bg4", 3, 20) is Admission.REJECTED_FULL                  # class 3's own bound
    assert s.submit("n0", 2, 5) is Admission.ACCEPTED
    assert s.submit("n1", 2, 5) is Admission.ACCEPTED                          # total bound reached now
    assert s.submit("n2", 1, 5) is Admission.REJECTED_FULL                     # only class 0 may shed
    assert s.submit("crit0", 0, 1) is Admission.ACCEPTED
    assert s.submit("crit1", 0, 1) is Admission.ACCEPTED
    assert shed == [("bg3", "overload"), ("bg2", "overload")]                 # lowest class, latest deadline
    assert s.submit("crit2", 0, 1) is Admission.REJECTED_FULL                  # class 0's own bound holds
    st_ = s.stats()
    assert st_["total_used"] == 6 and st_["shed_by_reason"] == {"overload": 2}
    assert [c["rejected"] for c in st_["classes"]] == [1, 1, 0, 1]
    _identity(st_)


def test_deadlines_are_shed_never_dispatched():
    clock, shed = FakeClock(), []
    s = Scheduler((4, 4), total_capacity=4, on_shed=lambda item, why: shed.append((item, why)), clock=clock)
    assert s.submit("late", 1, 0.0) is Admission.SHED_DEADLINE
    for i in range(4):
        s.submit("x%d" % i, 1, 1.0 + i)
    clock.t = 2.5                                                              # x0, x1 expire in the queue
    assert s.submit("y", 1, 10.0) is Admission.ACCEPTED                        # room made by shedding expired work
    assert [j.item for j in s.next_batch(max_batch=10)] == ["x2", "x3", "y"]
    assert shed == [("late", "deadline"), ("x0", "deadline"), ("x1", "deadline")]
    s.submit("z", 1, 3.0)
    clock.t = 3.0
    assert s.next_batch(max_batch=10) == [] and shed[-1] == ("z", "deadline")


def test_done_counts_processed_late_and_engine_errors():
    clock, shed = FakeClock(), []
    s = Scheduler((4,), on_shed=lambda item, why: shed.append((item, why)), clock=clock)
    for i in range(3):
        s.submit(i, 0, 5.0)
    a, b = s.next_batch(max_batch=2), s.next_batch(max_batch=2)
    clock.t = 6.0
    s.done(a)
    s.done(b, error="engine_error")
    c = s.stats()["classes"][0]
    assert (c["processed"], c["late"], c["shed"], c["in_service"]) == (2, 2, 1, 0)
    assert shed == [(2, "engine_error")]
    _identity(s.stats(), drained=True)
    with pytest.raises(UserError):
        s.submit(0, 1, 9.0)


def test_batches_hold_one_engine_key_and_wait_to_fill():
    s = Scheduler((16, 16))
    far = time.time() + 60
    s.submit("i0", 1, far, engine_key="int8")
    s.submit("f0", 0, far + 1, engine_key="fp32")
    s.submit("f1", 1, far, engine_key="fp32")
    assert [j.item for j in s.next_batch(None, 8, defer_from=0)] == []        # power policy: everything waits
    assert [j.item for j in s.next_batch(None, 8, defer_from=1)] == ["f0"]    # only class 0 runs
    assert [j.item for j in s.next_batch(None, 8)] == ["i0"]                    # key of the most urgent job
    assert [j.item for j in s.next_batch("fp32", 8)] == ["f1"]

    def late_arrivals():
        for i in range(3):
            time.sleep(0.02)
            s.submit("k%d" % i, 1, far, engine_key="fp32")
    t = threading.Thread(target=late_arrivals)
    start = time.monotonic()
    t.start()
    batch = s.next_batch("fp32", max_batch=3, max_wait_s=2.0)                  # returns as soon as it is full
    t.join()
    assert [j.item for j in batch] == ["k0", "k1", "k2"] and time.monotonic() - start < 1.0
    start = time.monotonic()
    assert s.next_batch("fp32", max_batch=3, max_wait_s=0.05) == []            # waits max_wait_s at most
    assert 0.04 <= time.monotonic() - start < 1.0


SUBMIT = st.tuples(st.just("submit"), st.integers(0, 3), st.floats(-1.0, 20.0), st.integers(1, 2),
                   st.sampled_from("ab"))
OPS = st.lists(st.one_of(
    SUBMIT, SUBMIT, SUBMIT,
    st.tuples(st.just("tick"), st.floats(0.0, 3.0)),
    st.tuples(st.just("batch"), st.sampled_from([None, "a", "b"]), st.integers(1, 5), st.sampled_from([None, 1, 3])),
    st.tuples(st.just("done"), st.booleans())), min_size=5, max_size=120)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.lists(st.integers(1, 6), min_size=4, max_size=4), st.integers(2, 16))
def test_accounting_and_edf_hold_for_any_sequence(ops, caps, total):
    clock = FakeClock()
    queued = {}                                       # the model: item -> (class, key, deadline)
    s = Scheduler(caps, total_capacity=total, clock=clock, on_shed=lambda item, why: queued.pop(item, None))
    serial, in_service = 0, []
    for op in ops:
        if op[0] == "submit":
            _, prio, dl, cost, key = op
            serial += 1
            if s.submit(serial, prio, clock.t + dl, cost, key) is Admission.ACCEPTED:
                queued[serial] = (prio, key, clock.t + dl)
        elif op[0] == "tick":
            clock.t += op[1]
        elif op[0] == "batch":
            batch = s.next_batch(op[1], op[2], defer_from=op[3])
            assert len(batch) <= op[2] and len({j.engine_key for j in batch}) <= 1
            assert op[3] is None or all(j.priority < op[3] for j in batch)
            order = [(j.priority, j.deadline) for j in batch]
            assert order == sorted(order)                                     # most urgent first
            for j in batch:
                queued.pop(j.item)
                assert j.deadline > clock.t                                   # never dispatched late
            for j in batch:                                                   # EDF in class, strict across
                for prio, key, dl in queued.values():
                    if key == j.engine_key:
                        assert prio > j.priority or (prio == j.priority and dl >= j.deadline)
            in_service.extend(batch)
        else:
            s.done(in_service, error=None if op[1] else "engine_error")
            in_service = []
        stats = s.stats()
        _identity(stats)
        assert stats["total_used"] <= total
        assert all(c["used"] <= c["capacity"] for c in stats["classes"])
        assert sum(c["queued"] for c in stats["classes"]) == len(queued)
    while s.depth():
        in_service.extend(s.next_batch(None, 8))
    s.done(in_service)
    _identity(s.stats(), drained=True)


def test_device_assignment_follows_precision_and_load():
    assert allowed_devices("fp32", dla_cores=2) == ("GPU", "CPU")
    assert allowed_devices("int8", dla_cores=2) == ("GPU", "DLA0", "DLA1", "CPU")
    assert allowed_devices("int8", plans=[SimpleNamespace(dla_core=None), SimpleNamespace(dla_core=1)]) == \
        ("GPU", "DLA1", "CPU")
    assert allowed_devices("int8", has_gpu=False) == ("CPU",)
    dev = DeviceAssigner(speed={"GPU": 4.0, "DLA0": 1.0, "DLA1": 1.0, "CPU": 0.25})
    dev.register("fp32", allowed_devices("fp32"))
    dev.register("dla-int8", allowed_devices("int8", dla_cores=2))
    picks = [dev.assign("dla-int8") for _ in range(12)]
    assert set(picks) == {"GPU", "DLA0", "DLA1"} and picks.count("GPU") > picks.count("DLA0")
    assert dev.assign("fp32") == "GPU"
    dev.release("GPU", 100)
    assert dev.load()["GPU"] == 0.0 and dev.assign("fp32") == "GPU"
    with pytest.raises(UserError):
        DeviceAssigner(devices=("CPU",)).register("trt", ["GPU"])
    with pytest.raises(UserError):
        dev.assign("unknown")


def test_overload_short():
    """3x capacity for ~5 s through a real ONNX Runtime runner: bounded queues and memory, accounting, misses."""
    pytest.importorskip("onnx")
    spec = importlib.util.spec_from_file_location("loadtest", os.path.join(ROOT, "bench", "loadtest.py"))
    loadtest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loadtest)
    res = loadtest.run_loadtest(seconds=5.0, overload=3.0)
    classes = res["classes"]
    assert res["identity_holds"], classes
    assert all(c["queued"] == 0 and c["in_service"] == 0 for c in classes)
    assert sum(c["offered"] for c in classes) > 2.5 * res["processed_rate_items_s"] * 5.0 * 0.9
    assert sum(c["shed"] + c["rejected"] for c in classes[1:]) > 0            # it really was overloaded
    assert res["peak_queued"] <= res["queue_bound"]
    assert res["rss_mib"]["peak"] - res["rss_mib"]["warm"] < 64, res["rss_mib"]
    assert res["critical_miss_rate"] < 0.01, (res["critical_miss_rate"], classes[0])
