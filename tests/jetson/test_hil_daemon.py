"""HIL: the daemon on the unit under the shipped scenario (latency), and rollback with deliberately broken engines.

Frames come from the bench host (``sim.sensor``, as ``satedge demo`` sends them: 60 scenes of
256 x 256, seed 10000) to the daemon's sensor endpoint on the unit; latency is the daemon's own
(ingest to result), so the bench network does not count. Installs go through ``engines.flash``
and the daemon's control channel, as ``satedge flash`` does.
"""
import math
import os
import time

import numpy as np
import pytest

pytestmark = pytest.mark.jetson
STORE_PY = r'''import json, sys
from onboard.store import EngineStore, RuntimeInfo
root, pub, trt, sm, engine = sys.argv[1:6]
store = EngineStore(root, [pub], runtime=RuntimeInfo(trt, sm), canary_backend="tensorrt")
reports = [store.install(path) for path in sys.argv[6:]]
print(json.dumps({"reports": [{"ok": r.ok, "outcome": r.outcome, "version": r.version, "reason": r.reason}
                              for r in reports], "active": store.versions(engine)["active"]}))
'''


def _sensor_endpoint(daemon):
    """The daemon's sensor endpoint as the bench host reaches it."""
    endpoint = daemon.endpoints["sensor"]
    host = os.environ.get("SATEDGE_HIL_HOST")
    return endpoint if not host else endpoint.replace("0.0.0.0", host.split("@")[-1])


def test_daemon_latency_under_the_shipped_scenario(hil, remote_daemon, record):
    from ground.data.spectra import default_data_root
    from sim.demo import FULL_FRAMES
    from sim.sensor import run as send
    if not default_data_root().is_dir():
        pytest.skip("the scene generator needs the real spectra at %s (SATEDGE_DATA)" % default_data_root())
    sent = send(_sensor_endpoint(remote_daemon), FULL_FRAMES, seed=10_000, size=256)
    deadline, status = time.time() + 600, {}
    while time.time() < deadline:
        status = remote_daemon.status()
        if status["frames_in"] >= sent["sent_total"] and status["in_flight"] == 0:
            break
        time.sleep(1.0)
    latency = status.get("latency_ms", {})
    record("daemon-latency", {"frames_sent": sent["sent_total"], "frames_processed": status.get("frames_processed"),
                              "latency_ms": latency, "backend": remote_daemon.settings.backend,
                              "tiles_total": status.get("tiles_total"), "engine": status.get("engine")}, hil)
    assert status.get("frames_processed") == sent["sent_good"], status
    assert math.isfinite(latency["p99"]) and latency["p50"] <= latency["p99"], latency


def _version(hil, tmp, make_versioned, version, perturb=0.0, plan_bytes=None):
    """A signed copy of the zoo's fp32 bundle as ``version``, with its plan (or ``plan_bytes`` in its place)."""
    from engines.build import add_plan
    from engines.bundle import Bundle
    bundle, plan = hil.build("fp32")
    entry = next(p for p in bundle.manifest.plans if p.key == plan.plan.key)
    data = plan_bytes if plan_bytes is not None else (bundle.path / entry.file).read_bytes()
    new = make_versioned(bundle.path, tmp / ("v%d" % version), version, hil.key, perturb)
    return add_plan(Bundle.open(new), data, entry, key=hil.key, replace=True)


def test_rollback_with_a_deliberately_broken_engine(hil, remote_daemon, make_versioned, record, tmp_path):
    from engines.flash import FlashOptions, flash, plan_flash
    opts = FlashOptions(key=hil.key, remote_dir=hil.remote + "/rollback", control=remote_daemon.control)
    outcomes = {}
    for version, perturb in ((2, 0.0), (3, 0.5)):                   # v3: outputs far from its reference
        plan = plan_flash(_version(hil, tmp_path, make_versioned, version, perturb), hil.profile, opts=opts)
        assert plan.action == "reuse", plan.format()
        outcomes[version] = flash(plan, hil.device)["report"]
    status = remote_daemon.status()
    record("rollback-daemon", {"installs": outcomes, "engine": status.get("engine")}, hil)
    assert outcomes[2]["ok"] and outcomes[2]["outcome"] == "installed", outcomes
    assert not outcomes[3]["ok"] and outcomes[3]["outcome"] == "canary-failed", outcomes
    assert hil.py("import json, sys\nfrom onboard.store import EngineStore\nprint(json.dumps(EngineStore(sys.argv[1], "
                  "[sys.argv[2]]).versions(sys.argv[3])))", remote_daemon.settings.store_root, hil.remote_pub,
                  remote_daemon.settings.engine)["active"] == 2


def test_store_with_a_tensorrt_canary_refuses_a_corrupt_plan(hil, make_versioned, record, tmp_path):
    if not hil.profile.has("tensorrt"):
        pytest.skip("the TensorRT canary needs TensorRT for the satedge Python on %s" % hil.device.label)
    good = _version(hil, tmp_path, make_versioned, 4)
    junk = np.random.default_rng(0).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()
    bad = _version(hil, tmp_path, make_versioned, 5, plan_bytes=junk)
    remote = hil.remote + "/corrupt"
    for b in (good, bad):
        hil.device.copy_dir(b.path, "%s/v%d" % (remote, b.manifest.version))
    out = hil.py(STORE_PY, remote + "/store", hil.remote_pub, hil.profile.tensorrt, hil.profile.sm, good.manifest.name,
                 remote + "/v4", remote + "/v5")
    record("rollback-corrupt-plan", out, hil)
    assert [r["outcome"] for r in out["reports"]] == ["installed", "canary-failed"], out
    assert out["active"] == 4
