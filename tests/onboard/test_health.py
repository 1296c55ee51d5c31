"""Health and safety: liveness counters, stage restarts, escalation to a daemon restart, the persistent counter."""
import json
import os
import threading
import time

from daemon_helpers import frame, push_socket, restart, start_daemon, wait_for
from ground.receiver import GroundReceiver
from onboard import exitcodes
from onboard.control import ControlClient
from onboard.health import HealthMonitor, RestartCounter, Stage


def _loop(ctx):
    while not ctx.stopping:
        ctx.beat()
        time.sleep(0.01)


def test_monitor_restarts_dead_and_stalled_stages_then_escalates():
    stop = threading.Event()
    released = []
    mon = HealthMonitor(max_stage_restarts=1)
    worker = mon.add(Stage("worker", _loop, stop, stall_s=0.2, restart_on_stall=True,
                           on_abandon=lambda work, why: released.append((work, why))))
    time.sleep(0.05)
    assert mon.check() is None
    worker.ctx.claim(["job"])
    worker.ctx.fault = "stall"
    time.sleep(0.4)
    assert mon.check() is None and worker.restarts == 1       # abandoned, its claimed work released
    assert released and released[0][0] == ["job"] and "stalled" in released[0][1]
    time.sleep(0.05)
    assert mon.check() is None and worker.snapshot()["state"] == "running"
    worker.ctx.fault = "crash"
    time.sleep(0.05)
    assert "already restarted 1 times" in mon.check()          # a second failure: escalate
    sockets = HealthMonitor(max_stage_restarts=3)
    ingest = sockets.add(Stage("ingest", _loop, stop, stall_s=0.2))   # owns a socket: no restart on stall
    ingest.ctx.fault = "stall"
    time.sleep(0.4)
    assert "owns sockets" in sockets.check() and ingest.restarts == 0
    assert sockets.snapshot()["ingest"]["beats"] > 0
    stop.set()


def test_restart_counter_persists_and_counts_unclean_exits(tmp_path):
    path = str(tmp_path / "health.json")
    c = RestartCounter(path)
    c.boot()
    assert c.recent(60) == []
    c = RestartCounter(path)                       # the previous run never said clean_exit: kill -9
    c.boot()
    assert [r["reason"] for r in c.recent(60)] == ["previous run did not exit cleanly"]
    c.record("stage worker stalled")
    c = RestartCounter(path)
    c.boot()                                       # record() marked the run as ended
    assert len(c.recent(60)) == 2 and c.state["boots"] == 3 and c.recent(0.0) == []
    c.clean_exit()
    assert json.load(open(path))["running"] is False and c.clear() == 2


def test_daemon_restarts_stages_escalates_and_stops_looping(tiny_bundle, tmp_path):
    d = start_daemon(tmp_path, bundle=tiny_bundle,
                     health={"allow_fault_injection": True, "check_interval_s": 0.1, "max_stage_restarts": 1,
                             "max_daemon_restarts": 2, "stall_s": {"default": 1.0, "worker": 1.0}})
    s = d.settings
    client, push = ControlClient(s.control_endpoint), push_socket(s.sensor_endpoint)
    rx = GroundReceiver(s.results_endpoint, ack_endpoint=s.ack_endpoint)
    assert client.request("inject_fault", stage="worker", kind="stall")["ok"]
    st = wait_for(lambda: (lambda st: st if st["health"]["stages"]["worker"]["restarts"] == 1 else None)(
        client.status()), what="the stalled worker restarted")
    assert st["health"]["events"][-1]["stage"] == "worker"
    for i in range(3):
        push.send_multipart(frame(i))                       # the new worker serves
    wait_for(lambda: rx.poll(100) is not None and len(rx.results) == 3, what="results from the new worker")
    assert client.request("inject_fault", stage="ingest", kind="crash")["ok"]
    wait_for(lambda: client.status()["health"]["stages"]["ingest"]["restarts"] == 1, what="ingest restarted")
    push.send_multipart(frame(3))                           # the new ingest re-bound the sensor socket
    wait_for(lambda: rx.poll(100) is not None and len(rx.results) == 4, what="a result through the new ingest")
    assert client.request("inject_fault", stage="downlink", kind="stall")["ok"]   # owns sockets: escalate
    assert d.wait(timeout=30) == exitcodes.HEALTH_RESTART
    health = json.load(open(os.path.join(s.workdir, "health.json")))
    assert "downlink stalled" in health["restarts"][-1]["reason"]

    d2 = restart(d, tmp_path)                                # as a supervisor would
    assert client.status()["health"]["restarts_recent"] == 1
    assert client.request("inject_fault", stage="control", kind="stall")["ok"]
    assert d2.wait(timeout=30) == exitcodes.HEALTH_RESTART
    from sim.processes import DaemonProcess
    d3 = DaemonProcess(s, str(tmp_path / "daemon.yaml"))     # third start: two restarts in the window
    assert d3.wait(timeout=30) == exitcodes.RESTART_LIMIT
    assert "refusing to start" in d3.log_tail()
    for x in (client, push, rx):
        x.close()
