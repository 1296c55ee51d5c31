"""The power policy inside the real daemon: a scripted eclipse and thermal limit, and the simulator's power model.

Telemetry comes from the source the config selects (``telemetry.source``); what the policy
decides is read back from the daemon's heartbeats and status, and from the results themselves.
"""
import time

import zmq

from daemon_helpers import cloud_int8_bundle, frame, push_socket, start_daemon, wait_for
from ground.receiver import GroundReceiver
from onboard.control import ControlClient
from onboard.wire import decode


class Heartbeats:
    """A SUB socket on the daemon's heartbeat endpoint keeping every ``power`` section seen."""

    def __init__(self, endpoint):
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"heartbeat")
        self.sock.connect(endpoint)
        self.seen = []

    def poll(self, timeout_ms=50):
        while self.sock.poll(timeout_ms):
            self.seen.append(decode(self.sock.recv_multipart()).header["status"])
            timeout_ms = 0
        return self.seen[-1] if self.seen else None

    def close(self):
        self.sock.close(0)


def _readings():
    nominal = dict(power_w=8.0, temp_c=50.0, soc=0.9, sunlit=True)
    phases = [(nominal, 8), (dict(nominal, temp_c=80.0), 8),                         # over the soft limit
              (dict(nominal, sunlit=False, soc=0.2, temp_c=40.0, power_w=6.0), 24),  # eclipse, battery low
              (dict(nominal, temp_c=95.0, soc=0.5), 16),                            # over the hard limit
              (dict(nominal, temp_c=40.0, power_w=5.0), 30)]                        # recovered
    out, t = [], 0.0
    for reading, n in phases:
        for _ in range(n):
            out.append(dict(reading, t=t))
            t += 1.0
    return out


def test_eclipse_and_thermal_limit_switch_variants_and_defer_work(tiny_bundle, tmp_path):
    int8 = cloud_int8_bundle(str(tmp_path))
    stages = [{"name": "cloud", "kind": "cloud_screen", "bundle": tiny_bundle, "variants": {"int8": int8}}]
    d = start_daemon(tmp_path, heartbeat_interval_s=0.1,
                     pipeline={"alerts": {"priority": 0, "stages": stages}, "bulk": {"priority": 2, "stages": stages}},
                     telemetry={"source": "scripted", "interval_s": 0.15, "readings": _readings()},
                     power={"settle_s": 4.0, "min_dwell_s": 3.0})
    s = d.settings
    hb, rx = Heartbeats(s.heartbeat_endpoint), GroundReceiver(s.results_endpoint, ack_endpoint=s.ack_endpoint)
    push, client = push_socket(s.sensor_endpoint), ControlClient(s.control_endpoint)

    def power_is(pred):
        return lambda: (lambda st: st if st and pred(st["power"]) else None)(hb.poll())

    wait_for(power_is(lambda p: p["variant"] == "int8"), what="a lighter variant over the soft thermal limit")
    push.send_multipart(frame(1, stream="alerts", value=0))
    wait_for(lambda: rx.poll(50) is not None and len(rx.results) == 1, what="the result made with int8")
    (first,) = rx.results.values()
    assert first["engine"]["name"] == "cloudscreen-int8" and first["variant"] == "int8"

    st = wait_for(power_is(lambda p: p["defer_from"] == 2), what="eclipse with a low battery defers class 2")
    assert st["power"]["variant"] == "dla-int8" and st["power"]["telemetry"]["sunlit"] is False
    for i in range(3):
        push.send_multipart(frame(10 + i, stream="bulk", value=0))        # class 2: waits
        push.send_multipart(frame(20 + i, stream="alerts", value=0))      # class 0: runs
    wait_for(lambda: rx.poll(50) is not None and len(rx.results) == 4, what="the alerts processed in eclipse")
    st = client.status()
    assert st["power"]["defer_from"] in (1, 2)
    assert st["scheduler"]["classes"][2]["queued"] == 3 and st["scheduler"]["classes"][0]["processed"] == 4
    assert {h["variant"] for h in rx.results.values() if h["frame_id"] >= 20} == {"int8"}   # dla-int8: int8 on CPU

    wait_for(power_is(lambda p: p["defer_from"] == 1), what="the hard thermal limit defers all but class 0")
    st = wait_for(power_is(lambda p: p["defer_from"] is None), timeout=40, what="work resumed after cooling")
    wait_for(lambda: rx.poll(50) is not None and len(rx.results) == 7, what="the deferred class-2 frames")
    wait_for(power_is(lambda p: p["variant"] == "fp32"), timeout=40, what="back to fp32 with headroom")
    push.send_multipart(frame(30, stream="bulk", value=0))
    wait_for(lambda: rx.poll(50) is not None and len(rx.results) == 8, what="a result made with fp32 again")
    assert [h for h in rx.results.values() if h["frame_id"] == 30][0]["engine"]["name"] == "cloudscreen"

    st = client.status()
    kinds = [(e["kind"], e["new"]) for e in st["power"]["events"]]
    assert ("defer", 2) in kinds and ("defer", 1) in kinds and ("defer", None) in kinds
    assert ("variant", "int8") in kinds and ("variant", "fp32") in kinds
    assert st["frames_processed"] == 8 and st["frames_dropped"] == 0
    assert set(st["processed_by_variant"]) == {"int8", "fp32"}
    assert d.stop() == 0
    for x in (hb, rx, push, client):
        x.close()


def test_simulated_power_model_drives_the_policy(tiny_bundle, tmp_path):
    d = start_daemon(tmp_path, bundle=tiny_bundle, heartbeat_interval_s=0.1,
                     telemetry={"source": "simulated", "interval_s": 0.1, "time_scale": 200.0, "t0": 3500.0,
                                "soc0": 0.27})
    hb = Heartbeats(d.settings.heartbeat_endpoint)
    st = wait_for(lambda: (lambda s: s if s and s["power"]["defer_from"] == 2 else None)(hb.poll()),
                  what="the simulated eclipse (model time 3648 s) with the battery under 30 %")
    tel = st["power"]["telemetry"]
    assert tel["sunlit"] is False and tel["soc"] < 0.3 and tel["t"] > 3648.0
    assert st["power"]["variant"] == "dla-int8" and "eclipse" in st["power"]["reason"]
    assert d.stop() == 0
    hb.close()
    time.sleep(0.1)
