"""Durable outbox: order, idempotence, leases, threads, and kill -9 at random moments."""
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from engines.errors import UserError
from onboard.outbox import Outbox

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "outbox_worker.py")


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def _parts(i, size=10):
    return [b"result", b"hdr-%d" % i, bytes([i % 256]) * size]


def test_put_is_durable_idempotent_and_round_trips(tmp_path):
    path = str(tmp_path / "o.sqlite")
    with Outbox(path) as box:
        arr = np.arange(6, dtype=np.uint16)
        assert box.put("a", 1, [b"result", memoryview(b"hdr"), arr, b""]) is True
        assert box.put("a", 0, [b"other", b"x"]) is False          # same id: stored once, first kept
        assert box.depth() == 1 and box.bytes_queued() == 6 + 3 + 12
    with Outbox(path) as box:                                       # reopened: still there
        (item,) = box.next_batch(10)
        assert item.msg_id == "a" and item.priority == 1 and item.attempts == 1
        assert item.parts == [b"result", b"hdr", arr.tobytes(), b""]
        with pytest.raises(UserError):
            box.put("", 0, _parts(0))
        with pytest.raises(UserError):
            box.put("b", 0, [b"topic-only"])


def test_downlink_order_is_priority_then_age(tmp_path):
    clock = FakeClock()
    with Outbox(str(tmp_path / "o.sqlite"), clock=clock) as box:
        for i, prio in enumerate([3, 1, 0, 1, 3, 0]):
            clock.t += 1
            box.put("m%d" % i, prio, _parts(i))
        ids = [it.msg_id for it in box.next_batch(3)] + [it.msg_id for it in box.next_batch(10)]
        assert ids == ["m2", "m5", "m1", "m3", "m0", "m4"]
        assert box.next_batch(10) == []


def test_max_bytes_keeps_order_and_never_blocks_on_a_big_message(tmp_path):
    with Outbox(str(tmp_path / "o.sqlite")) as box:
        box.put("big", 0, [b"t", b"h", b"x" * 5000])
        for i in range(5):
            box.put("s%d" % i, 1, [b"t", b"h", b"x" * 98])            # 100 bytes each
        assert [it.msg_id for it in box.next_batch(10, max_bytes=1000)] == ["big"]
        assert [it.msg_id for it in box.next_batch(10, max_bytes=250)] == ["s0", "s1"]
        assert len(box.next_batch(10, max_bytes=10_000)) == 3


def test_ack_leases_and_tombstones(tmp_path):
    clock = FakeClock()
    path = str(tmp_path / "o.sqlite")
    box = Outbox(path, clock=clock)
    for i in range(4):
        box.put("m%d" % i, 0, _parts(i))
    batch = box.next_batch(4)
    assert box.stats()["by_state"]["in_flight"]["messages"] == 4
    assert box.ack(["m0", "m1", "nope"]) == 2 and box.ack(["m0"]) == 0
    assert box.depth() == 2
    assert box.put("m0", 0, _parts(0)) is False                      # re-emitted after ack: not queued again
    clock.t += 5
    assert box.requeue_expired(10.0) == 0
    clock.t += 6
    assert box.requeue_expired(10.0) == 2                            # lease passed: back in the queue
    again = box.next_batch(10)
    assert [it.msg_id for it in again] == ["m2", "m3"] and all(it.attempts == 2 for it in again)
    assert box.nack(["m2"]) == 1 and box.stats()["retries"] == 2
    box.close()
    box = Outbox(path, clock=clock)                                  # reopen: every lease comes back
    assert box.stats()["by_state"]["queued"]["messages"] == 2
    assert box.stats()["by_state"]["acked"]["messages"] == 2
    clock.t += 100
    assert box.purge_acked(older_than_s=50) == 2 and not box.contains("m0") and box.contains("m2")
    assert len(batch) == 4
    box.close()


def test_threads_put_and_drain_concurrently(tmp_path):
    box = Outbox(str(tmp_path / "o.sqlite"))
    n_threads, per = 4, 60
    delivered, stop = [], threading.Event()

    def producer(k):
        for i in range(per):
            box.put("t%d-%d" % (k, i), i % 4, _parts(i))
            box.put("t%d-%d" % (k, i), i % 4, _parts(i))             # duplicates race too

    def drainer():
        while not stop.is_set() or box.depth():
            batch = box.next_batch(16)
            delivered.extend(it.msg_id for it in batch)
            box.ack([it.msg_id for it in batch])

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(n_threads)]
    drain = threading.Thread(target=drainer)
    drain.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    drain.join(30)
    assert sorted(delivered) == sorted("t%d-%d" % (k, i) for k in range(n_threads) for i in range(per))
    box.close()


def _run_and_kill(args, rng, n_lines):
    """Start the worker, SIGKILL it after it printed ``n_lines`` lines and a random moment; return its lines."""
    proc = subprocess.Popen([sys.executable, WORKER] + args, stdout=subprocess.PIPE)
    lines = []
    try:
        while len(lines) < n_lines:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        time.sleep(rng.uniform(0.0, 0.01))
    finally:
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait()
    lines.extend(rest.splitlines(keepends=True))
    return [ln.decode().strip() for ln in lines if ln.endswith(b"\n")]   # a torn last line is not a promise


def test_kill_9_loses_nothing_put_returned_for(tmp_path):
    path = str(tmp_path / "outbox.sqlite")
    n, promised, sent = 300, set(), []
    for seed in range(6):                    # the restarted worker re-puts ids it already stored: idempotent
        rng = random.Random(seed)
        promised.update(_run_and_kill(["put", path, str(n), str(seed)], rng, rng.randint(0, n)))
    assert promised, "the worker never got to put anything; is it importable?"
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with Outbox(path) as box:
        stored = box.depth()
        assert all(box.contains(i) for i in promised)
    for seed in range(3):                    # crash the downlink too, mid-batch and mid-ack
        rng = random.Random(100 + seed)
        sent += [ln.split()[1] for ln in _run_and_kill(["drain", path, str(seed)], rng, rng.randint(1, 120))]
    with Outbox(path) as box:                # finish the drain; the ground dedups by id
        while box.depth():
            batch = box.next_batch(32)
            sent.extend(it.msg_id for it in batch)
            box.ack([it.msg_id for it in batch])
        ground = set(sent)
        assert promised <= ground
        assert len(ground) == stored         # every stored message delivered exactly once after dedup
        assert box.stats()["by_state"]["acked"]["messages"] == stored
