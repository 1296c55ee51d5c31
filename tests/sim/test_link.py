"""The link emulator and the sim clock: windows, rate, latency, loss, duplicates, bit errors, seeds."""
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from sim.clock import SimClock
from sim.contacts import ContactPlan
from sim.link import LinkEmulator, LinkParams, Schedule, _Direction
from sim.processes import free_tcp_endpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANY = "tcp://127.0.0.1:*"


def _peer(endpoint):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def _msg(i, t, size=32):
    """A message of exactly ``size`` bytes: topic b"m" + (index, send time) + padding."""
    return [b"m", struct.pack("<id", i, t) + bytes(size - 13)]


def _drain(sock, clock, quiet_s=0.3, out=None):
    """Everything that arrives until nothing has come for ``quiet_s`` wall seconds: (arrival, parts)."""
    out = [] if out is None else out
    while sock.poll(int(quiet_s * 1000)):
        parts = sock.recv_multipart()
        out.append((clock.now(), parts))
    return out


def _receive_until(sock, clock, sim_t, out):
    """Record arrivals (sim time, parts) on ``sock`` until the clock reads ``sim_t``."""
    while True:
        left = clock.wall_at(sim_t) - time.time()
        if left <= 0:
            return
        if sock.poll(max(1, int(left * 1000))):
            while True:
                try:
                    out.append((clock.now(), sock.recv_multipart(zmq.NOBLOCK)))
                except zmq.Again:
                    break


def _connected(link):
    """A ground peer on the front and a satellite peer on the back, given time to connect."""
    g, s = _peer(link.front), _peer(link.back)
    time.sleep(0.2)
    return g, s


def test_clock_is_shared_through_the_environment():
    clock = SimClock(1.7e9, factor=600.0)
    code = ("import time; from sim.clock import SimClock; c = SimClock.from_env(); w = time.time(); "
            "print(c.now(), w, c.factor)")
    child = subprocess.run([sys.executable, "-c", code], env={**clock.to_env(), "PYTHONPATH": ROOT},
                           capture_output=True, text=True, check=True)
    sim_t, wall, factor = (float(x) for x in child.stdout.split())
    assert factor == 600.0 and sim_t == pytest.approx(clock.sim_at(wall), abs=0.01)    # same clock, 10 ms sim
    assert SimClock.from_dict(clock.to_dict()).to_dict() == clock.to_dict()
    assert SimClock(1.7e9, factor=1.0).now() == pytest.approx(time.time() - 1.7e9, abs=0.05)   # plain wall time
    fast = SimClock(0.0, factor=100.0)
    t0 = time.time()
    assert fast.sleep_until(fast.now() + 20.0)                      # 20 sim s = 0.2 wall s
    assert time.time() - t0 == pytest.approx(0.2, abs=0.05)
    assert SimClock.from_env({}) is None


def test_rate_is_enforced_in_sim_time():
    clock = SimClock(0.0, factor=10.0)
    rate_bps, size = 80e3, 1000                                      # 10 kB per sim second
    with LinkEmulator(ANY, ANY, None, LinkParams(rate_bps=rate_bps, latency_s=0.5), clock, seed=1) as link:
        g, s = _connected(link)
        t_next, got = clock.now(), []
        t_end, i = t_next + 30.0, 0
        while t_next < t_end:                                        # offer 15 kB/s: 50 % more than the link takes
            g.send_multipart(_msg(i, clock.now(), size))
            i += 1
            t_next += size / 15e3
            _receive_until(s, clock, t_next, got)
        _drain(s, clock, 1.0, got)
        stats = link.stats()["up"]
    times = np.array([t for t, _ in got])
    steady = times[times > times[0] + 5.0]                           # after the first bucketful (16 kB) went out
    measured = np.polyfit(steady, np.arange(len(steady)) * size * 8.0, 1)[0]
    print(f"\nrate: {measured / 1e3:.2f} kbit/s measured for {rate_bps / 1e3:.0f} kbit/s set ({len(got)} messages)")
    assert measured == pytest.approx(rate_bps, rel=0.03)
    assert stats["offered_bytes"] == i * size and stats["dropped"]["queue_full"]["msgs"] == 0


def test_latency_and_jitter():
    clock = SimClock(0.0, factor=2.0)                                # 0.1 sim s = 50 ms of wall time
    with LinkEmulator(ANY, ANY, None, LinkParams(latency_s=3.0, jitter_s=0.2), clock, seed=2) as link:
        g, s = _connected(link)
        got = []
        for i in range(40):
            g.send_multipart(_msg(i, clock.now()))
            _receive_until(s, clock, clock.now() + 0.1, got)
        _drain(s, clock, 1.0, got)
    delay = np.array([t - struct.unpack("<id", p[1][:12])[1] for t, p in got])
    print(f"\nlatency: median {np.median(delay):.3f} s, min {delay.min():.3f}, max {delay.max():.3f} "
          "(set 3 s + U(0, 0.2))")
    assert len(got) == 40 and delay.min() > 3.0 - 0.01                # never early
    assert np.percentile(delay, 90) < 3.2 + 0.1 and np.median(delay) == pytest.approx(3.1, abs=0.06)


def test_loss_duplicates_and_reordering_statistics():
    n, loss, dup, reorder = 3000, 0.2, 0.1, 0.1
    clock = SimClock.wall()
    params = LinkParams(loss=loss, duplicate=dup, reorder=reorder, reorder_delay_s=0.02)
    with LinkEmulator(ANY, ANY, None, params, clock, seed=3) as link:
        g, s = _connected(link)
        for i in range(n):
            g.send_multipart(_msg(i, 0.0))
            if i % 100 == 99:
                time.sleep(0.005)
        got = _drain(s, clock, 0.5)
        st = link.stats()["up"]
    idx = [struct.unpack("<id", p[1][:12])[0] for _, p in got]
    unique = len(set(idx))
    out_of_order = sum(1 for a, b in zip(idx, idx[1:]) if b < a)
    print(f"\nloss {1 - unique / n:.3f} (set {loss}), duplicates {(len(idx) - unique) / unique:.3f} (set {dup}), "
          f"{out_of_order} out of order, reordered {st['reordered'] / unique:.3f} (set {reorder})")
    assert 1 - unique / n == pytest.approx(loss, abs=0.03)           # 4 sigma for 3000 messages
    assert (len(idx) - unique) / unique == pytest.approx(dup, abs=0.025)
    assert st["reordered"] / unique == pytest.approx(reorder, abs=0.025) and out_of_order > 0
    assert st["offered_msgs"] == st["passed_msgs"] + sum(d["msgs"] for d in st["dropped"].values()) == n
    assert st["passed_msgs"] + st["duplicated"] == st["delivered_msgs"] == len(got)
    assert st["dropped"]["loss"]["msgs"] == n - unique


def test_bit_errors_are_flipped_and_counted():
    ber, n, size = 1e-4, 500, 1000
    clock = SimClock.wall()
    with LinkEmulator(ANY, ANY, None, LinkParams(ber=ber), clock, seed=4) as link:
        g, s = _connected(link)
        sent = {}
        for i in range(n):
            m = _msg(i, 0.0, size)
            m[1] = m[1][:12] + np.random.default_rng(i).bytes(size - 13)
            sent[i] = m
            g.send_multipart(m)
        got = _drain(s, clock, 0.5)
        st = link.stats()["up"]
    flipped = 0
    for _, parts in got:
        i = struct.unpack("<i", parts[1][:4])[0]
        if i not in sent or len(parts[0]) != 1:                      # the index or topic itself was hit: search
            i = min(sent, key=lambda k: sum(a != b for a, b in zip(sent[k][1], parts[1])))
        a = np.frombuffer(b"".join(sent[i]), np.uint8)
        flipped += int(np.unpackbits(a ^ np.frombuffer(b"".join(parts), np.uint8)).sum())
    rate = st["bits_flipped"] / (n * size * 8)
    print(f"\nbit errors: {st['bits_flipped']} flipped in {n * size * 8} bits = {rate:.2e} (set {ber:.0e}), "
          f"{st['corrupted_msgs']} of {n} messages hit")
    assert len(got) == n and flipped == st["bits_flipped"]
    assert st["bits_flipped"] / (n * size * 8) == pytest.approx(ber, rel=0.2)     # 400 expected: 5 sigma


def test_nothing_passes_outside_windows_or_in_outages():
    clock = SimClock(0.0, factor=4.0)
    windows, outage, latency, tol = [(3.0, 5.0), (8.0, 10.0)], (8.5, 9.0), 0.5, 0.2       # tol: 50 ms of wall
    with LinkEmulator(ANY, ANY, windows, LinkParams(latency_s=latency, outages=[outage]), clock, seed=5) as link:
        g, s = _connected(link)
        got, sent_at, t_next = [], [], clock.now()
        assert t_next < 2.5
        while t_next < 12.0:
            sent_at.append(clock.now())
            g.send_multipart(_msg(len(sent_at), sent_at[-1]))
            t_next += 0.05
            _receive_until(s, clock, t_next, got)
        _drain(s, clock, 0.5, got)
        st = link.stats()["up"]
    for arrival, parts in got:
        sent = struct.unpack("<id", parts[1][:12])[1]
        assert any(a - tol <= sent <= b + tol for a, b in windows), sent
        assert not (outage[0] + tol <= sent <= outage[1] - tol), sent
        assert any(a <= arrival - latency + tol and arrival - latency - tol <= b for a, b in windows)
    expected = sum(1 for t in sent_at if any(a <= t < b for a, b in windows) and not outage[0] <= t < outage[1])
    print(f"\nwindows: {len(got)} passed (expected {expected:.0f}), {st['dropped']['no_contact']['msgs']} outside "
          f"windows, {st['dropped']['outage']['msgs']} in the outage")
    assert len(got) == pytest.approx(expected, abs=2)                 # boundary messages may go either way
    assert st["dropped"]["no_contact"]["msgs"] > 70 and st["dropped"]["outage"]["msgs"] == pytest.approx(10, abs=2)


def _fates(seed, n=300):
    clock = SimClock.wall()
    params = LinkParams(loss=0.3, duplicate=0.2, reorder=0.2, reorder_delay_s=0.01, ber=1e-3)
    with LinkEmulator(ANY, ANY, None, params, clock, seed=seed) as link:
        g, s = _connected(link)
        for i in range(n):
            g.send_multipart(_msg(i, 0.0, 64))
        return sorted(b"".join(p) for _, p in _drain(s, clock, 0.5))


def test_deterministic_by_seed():
    a, b, c = _fates(11), _fates(11), _fates(12)
    assert a == b and a != c
    d1, d2 = (_Direction("up", 0, Schedule(None), LinkParams(loss=0.5, duplicate=0.5, ber=1e-2), 9) for _ in range(2))
    for k in range(50):
        d1.offer([b"x" * 50], float(k))
        d2.offer([b"x" * 50], float(k))
    assert d1.due(1e9) == d2.due(1e9) and d1.stats() == d2.stats()


def test_contact_plan_schedule_rates_and_owlt():
    contacts = [dict(source="gs", dest="sat", start=10.0, end=20.0, rate_bps=1e6, owlt=1, kind="up"),
                dict(source="sat", dest="gs", start=10.0, end=20.0, rate_bps=150e6, owlt=1, kind="down")]
    plan = ContactPlan("2026-11-21T00:00:00Z", contacts)
    link = LinkEmulator(ANY, ANY, plan, None, SimClock(0.0, 600.0), ground="gs", satellite="sat")
    up, down = link.dirs["up"].schedule, link.dirs["down"].schedule
    assert up.window_at(15.0) == (10.0, 20.0, 1e6, 1) and down.window_at(15.0)[2] == 150e6
    assert up.window_at(9.9) is None and up.window_at(20.0) is None and up.windows == [(10.0, 20.0)]
    d = link.dirs["up"]
    d.offer([b"y" * 125], 15.0)                                      # 1000 bits at 1 Mbit/s, 1 s OWLT
    assert d.next_due() == pytest.approx(16.0)


def test_runs_as_its_own_process(tmp_path):
    clock = SimClock(0.0, factor=10.0)
    front, back, stats = free_tcp_endpoint(), free_tcp_endpoint(), tmp_path / "link.json"
    proc = subprocess.Popen([sys.executable, "-m", "sim.link", "--front", front, "--back", back, "--windows", "0:1e9",
                             "--params", json.dumps({"latency_s": 0.5}), "--stats", str(stats)],
                            env={**clock.to_env(), "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(proc.stdout.readline())["ready"]
        g, s = _peer(front), _peer(back)
        time.sleep(0.2)
        for i in range(10):
            g.send_multipart(_msg(i, clock.now()))
            s.send_multipart(_msg(i, clock.now()))
        assert len(_drain(s, clock, 0.5)) == 10 and len(_drain(g, clock, 0.2)) == 10
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    counters = json.loads(stats.read_text())
    assert counters["up"]["delivered_msgs"] == counters["down"]["delivered_msgs"] == 10
