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
    assert rx.summary()["frame_ids"] == list(range(len(kinds) + 1))
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


def test_repeated_signals_still_drain_and_exit_0(daemon):
    for _ in range(5):                                        # a handler that set an Event could deadlock here
        daemon.proc.send_signal(signal.SIGTERM)
        time.sleep(0.01)
    assert daemon.wait(timeout=30) == 0


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


# ---------------------------------------------------------------------------- configuration and CLI
def test_config_sections_load_from_toml_and_unknown_keys_are_errors(tmp_path, tiny_bundle):
    from engines.errors import UserError
    from onboard.settings import load_settings
    cfg = tmp_path / "daemon.toml"
    cfg.write_text(f"""
[daemon]
bundle = "{tiny_bundle}"
ack_endpoint = "tcp://127.0.0.1:5599"
[daemon.scheduler]
capacities = [32, 32, 32]
admission = "reject"
[daemon.outbox]
lease_s = 5
[daemon.power]
power_budget_w = 12.5
variants = ["fp32", "int8"]
[daemon.telemetry]
source = "simulated"
time_scale = 60
[daemon.health]
stall_s = {{ worker = 20 }}
[daemon.pipeline.msi]
priority = 1
overlap = 8
stages = [{{ name = "cloud", kind = "cloud_screen", bundle = "{tiny_bundle}", threshold = 0.5 }}]
""")
    s = load_settings(str(cfg))
    assert s.scheduler.capacities == [32, 32, 32] and s.outbox.lease_s == 5.0 and s.power.power_budget_w == 12.5
    assert s.power.variants == ("fp32", "int8") and s.telemetry.time_scale == 60.0
    assert s.pipeline["msi"].stages[0].threshold == 0.5 and s.pipeline["msi"].overlap == 8
    from onboard.settings import stall_timeout
    assert stall_timeout(s.health, "worker") == 20.0 and stall_timeout(s.health, "ingest") == 10.0
    for bad, match in (("[daemon.outbox]\nlease = 5", r"settings.outbox: unknown key\(s\) \['lease'\]"),
                       ("[daemon.power]\nbudget = 5", r"unknown key\(s\) \['budget'\]"),
                       ("[daemon.scheduler]\ncapacities = 3", "scheduler.capacities must be a list"),
                       ("[daemon.pipeline.msi]\npriority = 9", "priority 9 is not a scheduler class")):
        cfg.write_text(f'[daemon]\nbundle = "{tiny_bundle}"\n' + bad)
        with pytest.raises(UserError, match=match):
            load_settings(str(cfg))


def test_cli_run_config_error_exit_code_and_exit_code_table(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "bad.yaml"
    bad.write_text("daemon:\n  bundle: x\n  healthh: {}\n")
    proc = subprocess.run([sys.executable, "-m", "satedge_cli", "onboard", "run", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown key" in proc.stderr
    codes = subprocess.run([sys.executable, "-m", "satedge_cli", "onboard", "exit-codes"], capture_output=True,
                           text=True, timeout=60).stdout
    for code in ("20  health restart", "21  restart limit", "12  outbox error", "13  telemetry error"):
        assert code in codes


# ---------------------------------------------------------------------------- control commands
def test_control_commands_install_and_roll_back_engines_live(tmp_path):
    from daemon_helpers import cloud_bundle, frame, push_socket, start_daemon, wait_for
    from engines.signing import generate_keypair, sign_bundle
    from onboard.store import EngineStore, RollbackCommand
    private, public = generate_keypair(tmp_path / "keys")
    v1 = cloud_bundle(str(tmp_path), name="cloudscreen", version=1, int8=False)
    v2 = cloud_bundle(str(tmp_path), name="cloudscreen", version=2, int8=False)
    for b in (v1, v2):
        sign_bundle(b, private)
    assert EngineStore(tmp_path / "store", trusted_keys=[public]).install(v1).ok
    d = start_daemon(tmp_path, store_root=str(tmp_path / "store"), trusted_keys=[str(public)],
                     telemetry={"source": "scripted", "readings": [{"power_w": 5, "temp_c": 40, "soc": 0.9,
                                                                     "sunlit": True, "t": 0}]})
    s = d.settings
    client, push = ControlClient(s.control_endpoint), push_socket(s.sensor_endpoint)
    rx = GroundReceiver(s.results_endpoint, ack_endpoint=s.ack_endpoint)
    assert client.request("drain")["ok"] and client.status()["ingest"]["paused"] is True
    push.send_multipart(frame(1))
    time.sleep(0.3)
    assert client.status()["frames_in"] == 0                      # paused: nothing read
    assert client.request("resume")["ok"]
    wait_for(lambda: rx.poll(100) is not None and len(rx.results) == 1, what="the first result")
    reply = client.request("install", bundle=v2)
    assert reply["ok"] and reply["outcome"] == "installed" and reply["version"] == 2
    assert reply["stages_reloaded"] == ["*/cloud"]
    push.send_multipart(frame(2))
    wait_for(lambda: rx.poll(100) is not None and len(rx.results) == 2, what="a result from v2")
    assert {h["frame_id"]: h["engine"]["version"] for h in rx.results.values()} == {1: 1, 2: 2}
    refused = client.request("activate", engine="cloudscreen", version=1)       # rollback protection
    assert not refused["ok"] and refused["code"] == "E_COMMAND" and "signed order" in refused["message"]
    command = RollbackCommand.create("cloudscreen", 1, private).to_json()
    reply = client.request("rollback", engine="cloudscreen", command=command)
    assert reply["ok"] and reply["outcome"] == "rolled-back" and reply["active_version"] == 1
    again = client.request("rollback", engine="cloudscreen", command=command)     # the same order again: refused
    assert not again["ok"] and again["code"] == "E_COMMAND" and "refused" in again["message"]
    assert [op["ok"] for op in client.status()["engine_ops"]] == [True, True, False]
    push.send_multipart(frame(3))
    wait_for(lambda: rx.poll(100) is not None and len(rx.results) == 3, what="a result after the rollback")
    assert [h["engine"]["version"] for h in rx.results.values() if h["frame_id"] == 3] == [1]
    reply = client.request("set_policy", power_budget_w=7.5, max_batch_frames=4)
    assert reply["ok"] and reply["policy"]["power_budget_w"] == 7.5 and reply["policy"]["max_batch_frames"] == 4
    bad = client.request("set_policy", budget=3)
    assert not bad["ok"] and bad["code"] == "E_COMMAND" and "unknown key" in bad["message"]
    for value in (float("inf"), 1e10, -1.0):           # an unbounded batch wait once crashed the worker
        bad = client.request("set_policy", max_wait_s=value)
        assert not bad["ok"] and bad["code"] == "E_COMMAND" and "max_wait_s" in bad["message"], bad
    push.send_multipart(frame(4))
    wait_for(lambda: rx.poll(100) is not None and len(rx.results) == 4, what="a result after refused policies")
    assert client.status()["scheduler"]["classes"][0]["capacity"] == 256
    forbidden = client.request("inject_fault", stage="worker", kind="crash")
    assert not forbidden["ok"] and forbidden["code"] == "E_COMMAND" and "fault injection is off" in forbidden["message"]
    assert d.stop() == 0
    for x in (client, push, rx):
        x.close()


# ---------------------------------------------------------------------------- overload
def test_overload_short_against_the_daemon_process(tiny_bundle):
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("daemon_load", os.path.join(root, "bench", "daemon_load.py"))
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    r = load.run_load(tiny_bundle, seconds=5.0, overload=3.0, capacity_s=2.0, size=128)
    print("\n" + load.report(r))
    assert r["identity_holds"] and r["offered"] > 0 and r["processed"] > 0
    assert r["offered_fps"] > 2.5 * r["capacity_fps"]
    # 5 s includes the start-up transient and a few dozen class-0 frames, so one late batch moves the rate
    # by percents: this short run bounds it loosely; the < 1 % goal is shown by the 60 s run of
    # `python bench/daemon.py --load --seconds 60` (docs/benchmarks.md).
    assert r["critical_miss_rate"] < 0.10
    assert r["queue_peak_tiles"] <= r["queue_bound_tiles"]
    assert r["rss_mib"]["peak"] < r["rss_mib"]["warm"] + 150
    assert r["shed"] + r["rejected"] > 0 and r["exit_code"] == 0
