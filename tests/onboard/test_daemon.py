"""The daemon as a real process over real ZeroMQ sockets: bad input, accounting, drain on SIGTERM."""
import json
import os
import signal
import sqlite3
import time

import numpy as np
import pytest
import zmq

from ground.receiver import GroundReceiver
from onboard.control import ControlClient
from onboard.wire import make_frame
from sim.badframes import EXPECTED_CODES, bad_frame


def _frame(i, size=128):
    data = np.random.default_rng(i).integers(0, 4096, (6, size, size), dtype=np.uint16)
    return make_frame(data, stream="msi", frame_id=i)


def _push(settings):
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.connect(settings.sensor_endpoint)
    return sock


def _wait_status(client, pred, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = client.status()
        if pred(st):
            return st
        time.sleep(0.1)
    raise AssertionError(f"condition not reached; last status {st}")


def test_bad_input_is_rejected_counted_and_daemon_keeps_serving(daemon):
    s = daemon.settings
    rx = GroundReceiver(s.results_endpoint)
    push = _push(s)
    client = ControlClient(s.control_endpoint)
    kinds = list(EXPECTED_CODES)
    push.send_multipart(_frame(0))
    for i, kind in enumerate(kinds, start=1):
        push.send_multipart(bad_frame(kind, frame_id=1000 + i, oversize_bytes=6 * 1024 * 1024))
        push.send_multipart(_frame(i))                      # a valid frame right after each bad one
    total = 1 + 2 * len(kinds)
    st = _wait_status(client, lambda st: st["frames_in"] == total and st["in_flight"] == 0)
    deadline = time.time() + 20
    while len(rx.results) < len(kinds) + 1 and time.time() < deadline:
        rx.poll(200)
    assert st["frames_processed"] == len(kinds) + 1
    assert st["frames_rejected"] == len(kinds)
    assert st["frames_processed"] + st["frames_dropped"] + st["frames_rejected"] == st["frames_in"]
    expected = {}
    for kind in kinds:
        expected[EXPECTED_CODES[kind]] = expected.get(EXPECTED_CODES[kind], 0) + 1
    assert st["rejected_by_code"] == expected
    assert sorted(k[1] for k in rx.results) == list(range(len(kinds) + 1))
    assert daemon.alive()
    # every rejection is in the dead-letter log with its reason
    db = sqlite3.connect(os.path.join(s.workdir, "deadletter.sqlite"))
    rows = db.execute("SELECT code, reason FROM dead_letters").fetchall()
    assert sorted(r[0] for r in rows) == sorted(EXPECTED_CODES[k] for k in kinds)
    assert all(len(r[1]) > 10 for r in rows)
    assert daemon.stop() == 0
    push.close(0); rx.close(); client.close()


def test_results_carry_provenance_and_masks(daemon):
    s = daemon.settings
    rx = GroundReceiver(s.results_endpoint)
    push = _push(s)
    push.send_multipart(_frame(5, size=100))               # not a multiple of the tile: edge tiles
    deadline = time.time() + 20
    while not rx.results and time.time() < deadline:
        rx.poll(200)
    (header,) = rx.results.values()
    assert header["engine"] == {"name": "cloudscreen", "version": 1, "precision": "fp32"}
    assert header["frame_id"] == 5 and len(header["tiles"]) == 4
    assert {(t["h"], t["w"]) for t in header["tiles"]} == {(64, 64), (64, 36), (36, 64), (36, 36)}
    assert all(0.0 <= t["cloud"] <= 1.0 for t in header["tiles"])
    push.close(0); rx.close()


def test_sigterm_drains_every_accepted_frame(daemon):
    s = daemon.settings
    rx = GroundReceiver(s.results_endpoint)
    push = _push(s)
    n = 30
    for i in range(n):
        push.send_multipart(_frame(i))
    time.sleep(0.3)                                           # some frames are still queued
    assert daemon.stop(sig=signal.SIGTERM) == 0
    while rx.poll(300):
        pass
    with open(os.path.join(s.workdir, "stats.json")) as fh:
        stats = json.load(fh)
    assert stats["frames_in"] == stats["frames_processed"] + stats["frames_dropped"] + stats["frames_rejected"]
    assert stats["frames_processed"] == len(rx.results)       # every processed frame reached the ground
    assert stats["frames_in"] > 0
    push.close(0); rx.close()


def test_control_replies_ok_or_error(daemon):
    client = ControlClient(daemon.settings.control_endpoint)
    assert client.request("ping")["ok"] is True
    bad = client.request("self-destruct")
    assert bad["ok"] is False and bad["code"] == "E_COMMAND" and "known" in bad["message"]
    assert client.request("shutdown")["ok"] is True
    assert daemon.wait(timeout=30) == 0
    client.close()


def test_daemon_serves_the_store_engine_and_refuses_an_untrusted_bundle(tiny_bundle, tmp_path):
    import shutil
    from engines.signing import generate_keypair, sign_bundle
    from onboard.settings import DaemonSettings
    from onboard.store import EngineStore
    from sim.processes import DaemonProcess, free_tcp_endpoint
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    private, public = generate_keypair(tmp_path / "keys")
    _, other_public = generate_keypair(tmp_path / "other")
    sign_bundle(bundle, private)
    assert EngineStore(tmp_path / "store", trusted_keys=[public]).install(bundle).ok

    def settings(**kw):
        return DaemonSettings(workdir=str(tmp_path / f"w{len(kw)}"), sensor_endpoint=free_tcp_endpoint(),
                              results_endpoint=free_tcp_endpoint(), control_endpoint=free_tcp_endpoint(),
                              heartbeat_endpoint=free_tcp_endpoint(), intra_op_threads=1, **kw).validate()

    good = DaemonProcess(settings(store_root=str(tmp_path / "store"), engine="cloudscreen",
                                  trusted_keys=[str(public)]), str(tmp_path / "good.yaml"))
    good.wait_ready(60)
    client = ControlClient(good.settings.control_endpoint)
    assert client.status()["engine"] == {"name": "cloudscreen", "version": 1, "precision": "fp32"}
    client.close()
    assert good.stop() == 0
    bad = DaemonProcess(settings(bundle=str(bundle), trusted_keys=[str(other_public)]), str(tmp_path / "bad.yaml"))
    assert bad.wait(timeout=60) == 3                              # exitcodes.BUNDLE
    assert "not trusted" in bad.log_tail() or "trusted" in bad.log_tail()
