"""`satedge sim run` end to end: real daemon processes, ground station process, link emulators.

One run of the shipped CI scenario (3 satellites, 3 h at 400x, ~40 s wall) in which satellite 0
is an *external* daemon: started here, outside the runner, as a hardware-in-the-loop satellite
would be. The run must roll the engine out to every satellite over the lossy uplink, recover
from each injected fault, deliver every accepted result exactly once, and write the report.
"""
import json
import os
import re

from engines.signing import generate_keypair
from onboard.settings import DaemonSettings
from sim import run_setup
from sim.processes import DaemonProcess, stable_tcp_endpoint
from sim.runner import run_scenario
from sim.scenario import load_scenario


def _external_daemon(tmp_path, sc):
    """A daemon with v1 in its store, started by the test (not by the runner); its endpoints for the scenario."""
    private, public = generate_keypair(tmp_path / "keys", name="ground")
    prep = tmp_path / "prep"
    prep.mkdir()
    bundles = run_setup.prepare_bundles(sc, str(prep), signing_key=str(private))
    run_setup.satellite_store(str(tmp_path / "ext" / "store"), bundles["v1"], str(public))
    eps = {k: stable_tcp_endpoint() for k in ("sensor", "results", "acks", "heartbeat", "control", "uplink")}
    settings = DaemonSettings.from_mapping({
        "store_root": str(tmp_path / "ext" / "store"), "engine": run_setup.ENGINE, "trusted_keys": [str(public)],
        "workdir": str(tmp_path / "ext" / "daemon"), "sensor_endpoint": eps["sensor"],
        "results_endpoint": eps["results"], "ack_endpoint": eps["acks"], "heartbeat_endpoint": eps["heartbeat"],
        "control_endpoint": eps["control"], "intra_op_threads": 1, "heartbeat_interval_s": 0.5,
        "outbox": {"lease_s": 1.0}, "uplink": {"endpoint": "@" + eps["uplink"], "scrub_interval_s": 2.0}})
    proc = DaemonProcess(settings, str(tmp_path / "ext" / "daemon.yaml"))
    proc.wait_ready(120)
    return proc, dict(eps, workdir=settings.workdir), str(private)


def test_constellation_run_with_an_external_daemon(tmp_path):
    sc = load_scenario("constellation-quick")
    proc, ext, key = _external_daemon(tmp_path, sc)
    sc.external = {0: ext}
    sc.validate()
    try:
        s = run_scenario(sc, str(tmp_path / "run"), signing_key=key, progress=False)
    finally:
        code = proc.stop(timeout=60)
    assert code == 0, proc.log_tail()
    d = s["delivery"]
    assert d["exactly_once"], d
    assert d["accepted"] >= 20 and d["lost"] == 0 and d["unexpected"] == 0
    assert set(s["versions"].values()) == {sc.rollout_version}, s["versions"]      # the external one too
    kinds = {f["fault"]: f for f in s["faults"]}
    assert set(kinds) == {f.kind for f in sc.faults}
    for f in s["faults"]:
        assert f["recovered"] and f["t_recovered"] >= f["t"], f
    # the external satellite was served through its link like the others: results and the uplink
    assert s["uplink"][s["satellites"][0]]["ok"]
    assert s["links"][s["satellites"][0]]["down"]["delivered_msgs"] > 0
    html = open(s["report"]).read()
    for png in re.findall(r'src="([^"]+\.png)"', html):
        with open(os.path.join(os.path.dirname(s["report"]), png), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "run" / "events.jsonl") as fh:
        events = [json.loads(line) for line in fh]
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    assert any(e["kind"] == "recovery" for e in events)
