"""Engine store: signed installs into A/B slots, canary, health, rollback protection, scrub, kill -9.

Real files, real ed25519 keys, real ONNX Runtime canaries, real child processes killed with
SIGKILL at every phase of an install.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from engines.bundle import pack_bundle  # noqa: E402
from engines.errors import BundleError, PlanIncompatible, SignatureError, UserError  # noqa: E402
from engines.manifest import TensorSpec  # noqa: E402
from engines.runners import runner_for  # noqa: E402
from engines.signing import generate_keypair, sign_bundle  # noqa: E402
from onboard import store_journal as journal  # noqa: E402
from onboard.store import (CRASH_ENV, PHASES, EngineStore, RollbackCommand, RollbackRefused,  # noqa: E402
                           RuntimeInfo, StoreError)

NAME = "cloudmask"
WORKER = Path(__file__).with_name("store_worker.py")
REPO = Path(__file__).resolve().parents[2]


def write_model(path, version):
    """y = x * version + 0.5 on (N, 4) float32: each version computes something different."""
    scale = numpy_helper.from_array(np.full((4,), float(version), np.float32), "s")
    bias = numpy_helper.from_array(np.full((4,), 0.5, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])], "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], initializer=[scale, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def make_bundle(out, version, key, *, precision="fp32", ref_offset=0.0, extra_files=None, manifest_extra=None):
    """Pack and sign a bundle; ``ref_offset`` shifts the reference outputs (a canary that must fail)."""
    out = Path(out)
    model = write_model(out.parent / ("%s.onnx" % out.name), version)
    x = np.random.default_rng(version).standard_normal((2, 4)).astype(np.float32)
    y = (x * np.float32(version) + np.float32(0.5) + np.float32(ref_offset)).astype(np.float32)
    pack_bundle(out, name=NAME, version=version, model_path=model, precision=precision,
                inputs=[TensorSpec("x", "float32", ("N", 4))], outputs=[TensorSpec("y", "float32", ("N", 4))],
                reference_inputs={"x": x}, reference_outputs={"y": y}, extra_files=extra_files)
    if manifest_extra:
        doc = json.loads((out / "manifest.json").read_text())
        doc.update(manifest_extra)
        (out / "manifest.json").write_text(json.dumps(doc, indent=2, sort_keys=True))
    sign_bundle(out, key)
    return out


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Keys and signed bundles shared by the tests (never modified; tests copy before tampering)."""
    d = tmp_path_factory.mktemp("kit")
    ground, rogue = generate_keypair(d / "keys", "ground"), generate_keypair(d / "keys", "rogue")
    kit = {"key": ground[0], "pub": ground[1], "rogue_key": rogue[0], "rogue_pub": rogue[1]}
    for v in (1, 2, 3, 4):
        kit["v%d" % v] = make_bundle(d / ("v%d" % v), v, ground[0])
    kit["v2_bad_canary"] = make_bundle(d / "v2bad", 2, ground[0], ref_offset=1.0)
    kit["v2_rogue"] = make_bundle(d / "v2rogue", 2, rogue[0])
    return kit


@pytest.fixture
def store(tmp_path, kit):
    return EngineStore(tmp_path / "store", [kit["pub"]], health_checks=2)


def flip_byte(path, offset=-5):
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def active_version(store):
    return store.active(NAME).manifest.version


def test_install_v1_then_v2_keeps_v1_in_other_slot(store, kit):
    r1 = store.install(kit["v1"])
    assert (r1.ok, r1.outcome, r1.slot, r1.active_version) == (True, "installed", "A", 1)
    assert list(r1.phases) == list(PHASES) and r1.canary_max_abs_error <= 1e-3
    r2 = store.install(kit["v2"])
    assert (r2.ok, r2.slot, active_version(store)) == (True, "B", 2)
    v = store.versions(NAME)
    assert v["active"] == 2 and v["highest_activated"] == 2 and v["slots"]["A"] == {"version": 1, "status": "good"}
    assert store.active_path(NAME) == store.root / NAME / "B"
    assert store.install(kit["v2"]).outcome == "already-active"  # same signed engine again: a no-op
    assert [e["kind"] for e in store.health_events(NAME)] == ["installed", "installed"]


def test_older_version_refused_unless_signed_rollback_command(store, kit):
    store.install(kit["v1"])
    store.install(kit["v2"])
    with pytest.raises(RollbackRefused, match=r"v1 is not above the highest version ever activated \(v2\)"):
        store.install(kit["v1"])
    cmd = RollbackCommand.create(NAME, 1, kit["key"])
    with pytest.raises(RollbackRefused, match="allow_rollback_to=1"):
        store.install(kit["v1"], rollback=cmd)  # a command alone is not enough
    with pytest.raises(RollbackRefused):
        store.install(kit["v1"], allow_rollback_to=1)  # nor the flag alone
    with pytest.raises(RollbackRefused, match="not trusted"):
        store.install(kit["v1"], allow_rollback_to=1, rollback=RollbackCommand.create(NAME, 1, kit["rogue_key"]))
    assert active_version(store) == 2
    report = store.install(kit["v1"], allow_rollback_to=1, rollback=RollbackCommand.from_json(cmd.to_json()))
    assert report.ok and active_version(store) == 1 and store.versions(NAME)["highest_activated"] == 2
    assert store.health_events(NAME)[-2]["kind"] == "refused"


def test_rollback_command_wrong_key_replayed_tampered_or_stale_is_refused(store, kit):
    store.install(kit["v1"])
    store.install(kit["v2"])
    with pytest.raises(RollbackRefused, match="not trusted"):
        store.rollback(NAME, RollbackCommand.create(NAME, 1, kit["rogue_key"]))
    good = RollbackCommand.create(NAME, 1, kit["key"], issued_at=1000)
    doc = json.loads(good.to_json())
    doc["command"]["version"] = 2
    with pytest.raises(RollbackRefused, match="bad signature"):
        store.rollback(NAME, RollbackCommand.from_json(json.dumps(doc)))
    with pytest.raises(RollbackRefused, match="not 'cloudmask' v1"):
        store.rollback(NAME, RollbackCommand.create("other", 1, kit["key"]))
    with pytest.raises(RollbackRefused, match="malformed"):
        RollbackCommand.from_json('{"command": {"engine": "cloudmask"}}')
    report = store.rollback(NAME, good)
    assert (report.ok, report.outcome, active_version(store)) == (True, "rolled-back", 1)
    assert store.health_events(NAME)[-1]["kind"] == "rolled_back"
    store.rollback(NAME, RollbackCommand.create(NAME, 2, kit["key"], issued_at=2000))  # forward again
    with pytest.raises(RollbackRefused, match="already used"):
        store.rollback(NAME, good)  # replay
    with pytest.raises(RollbackRefused, match="stale"):
        store.rollback(NAME, RollbackCommand.create(NAME, 1, kit["key"], issued_at=1500))
    assert active_version(store) == 2


def test_tampered_or_wrongly_signed_bundle_refused_at_verify(store, kit, tmp_path):
    store.install(kit["v1"])
    tampered = shutil.copytree(kit["v2"], tmp_path / "tampered")
    flip_byte(tampered / "model.onnx")
    with pytest.raises(BundleError, match="model.onnx is corrupted"):
        store.install(tampered)
    forged = shutil.copytree(kit["v2"], tmp_path / "forged")
    text = (forged / "manifest.json").read_text()
    (forged / "manifest.json").write_text(text.replace('"version": 2', '"version": 9'))
    with pytest.raises(SignatureError, match="bad signature"):
        store.install(forged)
    with pytest.raises(SignatureError, match="not trusted"):
        store.install(kit["v2_rogue"])
    assert active_version(store) == 1 and store.versions(NAME)["slots"]["B"]["status"] == "empty"
    assert [e["kind"] for e in store.health_events(NAME)][-3:] == ["refused"] * 3
    assert sorted(p.name for p in (store.root / NAME).iterdir()) == [".lock", "A", "state.json", "state.json.bak"]


def test_canary_failure_rolls_back_automatically(store, kit):
    store.install(kit["v1"])
    report = store.install(kit["v2_bad_canary"])
    assert (report.ok, report.outcome, report.failed_phase) == (False, "canary-failed", "canary")
    assert "canary failed" in report.reason and "differs from the reference" in report.reason
    assert report.active_version == 1 and active_version(store) == 1
    assert store.versions(NAME)["slots"]["B"]["status"] == "bad"
    assert store.health_events(NAME)[-1]["kind"] == "canary_failed"
    assert store.install(kit["v2"]).ok and active_version(store) == 2  # a fixed v2 may still come


def test_health_failure_after_activation_rolls_back(tmp_path, kit):
    seen = []
    store = EngineStore(tmp_path / "s", [kit["pub"]], health_check=lambda b: seen.append(b.manifest.version)
                        or b.manifest.version == 1)
    store.install(kit["v1"])
    report = store.install(kit["v2"])
    assert (report.ok, report.outcome, report.failed_phase) == (False, "health-failed", "health")
    assert report.active_version == 1
    assert active_version(store) == 1 and seen == [1, 1, 1, 2]
    kinds = [e["kind"] for e in store.health_events(NAME)]
    assert kinds[-1] == "health_failed" and store.versions(NAME)["highest_activated"] == 2


@pytest.mark.parametrize("precision, passes", [("fp32", False), ("fp16", True), ("int8", True)])
def test_canary_tolerance_follows_precision(tmp_path, kit, precision, passes):
    bundle = make_bundle(tmp_path / "b", 1, kit["key"], precision=precision, ref_offset=5e-3)
    report = EngineStore(tmp_path / "s", [kit["pub"]], health_checks=1).install(bundle)
    assert report.ok is passes and report.canary_max_abs_error == pytest.approx(5e-3, rel=1e-2)


def test_plan_for_another_tensorrt_is_refused_before_loading(tmp_path, kit):
    from engines.plan import HEADER_BYTES, PLAN_MAGIC, VERSION_OFFSET
    header = bytearray(PLAN_MAGIC + bytes(HEADER_BYTES - 4))
    header[VERSION_OFFSET:VERSION_OFFSET + 4] = bytes([8, 5, 2, 2])
    plan = {"file": "plans/orin.plan", "sm": "8.7", "trt_version": "8.5.2.2", "precision": "fp32", "dla_core": None}
    bundle = make_bundle(tmp_path / "b", 1, kit["key"], extra_files={"plans/orin.plan": bytes(header)},
                         manifest_extra={"plans": [plan]})
    with pytest.raises(PlanIncompatible, match="TensorRT 8.5.2.2"):
        EngineStore(tmp_path / "s1", [kit["pub"]], RuntimeInfo("8.6.2", "8.7")).install(bundle)
    assert EngineStore(tmp_path / "s2", [kit["pub"]], RuntimeInfo("8.5.2", "87")).install(bundle).ok
    assert EngineStore(tmp_path / "s3", [kit["pub"]]).install(bundle).ok  # no TensorRT here: ONNX is used


def test_scrub_switches_away_from_corrupted_active_slot(store, kit):
    store.install(kit["v1"])
    store.install(kit["v2"])
    assert store.scrub(NAME).ok
    flip_byte(store.active_path(NAME) / "model.onnx")
    with pytest.raises(StoreError, match="scrub"):
        store.active(NAME)
    report = store.scrub(NAME)
    assert report.slots["B"].startswith("corrupt") and report.slots["A"] == "ok" and report.switched_to == "A"
    assert active_version(store) == 1
    assert [e["kind"] for e in store.health_events(NAME)][-2:] == ["scrub_mismatch", "switched"]
    assert store.versions(NAME)["slots"]["B"]["status"] == "bad"
    assert store.install(kit["v3"]).slot == "B" and active_version(store) == 3  # the bad slot is reused


def test_scrub_marks_corrupted_inactive_slot_bad(store, kit):
    store.install(kit["v1"])
    store.install(kit["v2"])
    flip_byte(store.root / NAME / "A" / "reference.npz", offset=200)
    report = store.scrub(NAME)
    assert report.switched_to is None and report.slots["A"].startswith("corrupt") and not report.ok
    assert store.versions(NAME)["slots"]["A"]["status"] == "bad" and active_version(store) == 2
    with pytest.raises(StoreError, match="no good engine to roll back to"):
        store.rollback(NAME, RollbackCommand.create(NAME, 1, kit["key"]))


def test_state_file_bit_flip_falls_back_to_backup_copy(store, kit):
    store.install(kit["v1"])
    flip_byte(store.root / NAME / "state.json", offset=40)
    assert active_version(store) == 1
    flip_byte(store.root / NAME / "state.json.bak", offset=40)  # now both copies are damaged
    with pytest.raises(StoreError, match="both state files"):
        store.versions(NAME)


def test_errors_name_the_engine_and_the_fix(store, kit, tmp_path):
    with pytest.raises(StoreError, match="no engine 'nope'.*install"):
        store.active("nope")
    with pytest.raises(StoreError, match="not an engine name"):
        store.versions("../etc")
    with pytest.raises(BundleError, match="not a bundle folder"):
        store.install(tmp_path)
    with pytest.raises(UserError, match="trusted public key"):
        EngineStore(tmp_path / "x", [])


# ------------------------------------------------------------------------ kill -9 at every phase
CRASH_POINTS = ["%s:%s" % (p, s) for p in PHASES for s in ("before", "after")]
# (versions installed first, version the killed child installs): into an empty slot, and over an old engine
SCENARIOS = [((1,), 2, p) for p in CRASH_POINTS] + [((1, 2), 3, p) for p in CRASH_POINTS + ["stage:aside"]]
SERVES_NEW = {"activate:after", "health:before", "health:after", "commit:before", "commit:after"}


def run_worker(root, bundle, pub, crash_at):
    env = dict(os.environ, **{CRASH_ENV: crash_at, "PYTHONPATH": str(REPO)})
    return subprocess.run([sys.executable, str(WORKER), str(root), str(bundle), str(pub)], env=env,
                          capture_output=True, text=True, timeout=60)


def assert_intact_and_canary_passes(store):
    bundle = store.active(NAME)  # signature and every sha256 verified
    inputs, outputs = bundle.reference()
    with runner_for(bundle, intra_op_threads=1) as runner:
        np.testing.assert_allclose(runner.infer(inputs)["y"], outputs["y"], atol=1e-3)
    return bundle.manifest.version


@pytest.fixture(scope="module")
def base_stores(tmp_path_factory, kit):
    """Stores with v1, and with v1 then v2, installed once; each kill test works on a copy."""
    out = {}
    for installed in ((1,), (1, 2)):
        root = tmp_path_factory.mktemp("base") / "store"
        for v in installed:
            assert EngineStore(root, [kit["pub"]], health_checks=1).install(kit["v%d" % v]).ok
        out[installed] = root
    return out


@pytest.mark.parametrize("installed, new, crash_at", SCENARIOS,
                         ids=["%s-slot-%s" % ("empty" if len(i) == 1 else "full", c) for i, _, c in SCENARIOS])
def test_kill_9_during_install_leaves_old_or_new_engine(tmp_path, kit, base_stores, installed, new, crash_at):
    root = shutil.copytree(base_stores[installed], tmp_path / "store")
    proc = run_worker(root, kit["v%d" % new], kit["pub"], crash_at)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    store = EngineStore(root, [kit["pub"]], health_checks=1)  # a restart
    actions = store.recover()
    expected = new if crash_at in SERVES_NEW else installed[-1]
    assert assert_intact_and_canary_passes(store) == expected, actions
    assert store.versions(NAME)["active"] == expected and journal.load_state(root / NAME, NAME)["pending"] is None
    leftovers = [p.name for p in (root / NAME).iterdir() if ".tmp" in p.name or ".old-" in p.name]
    assert leftovers == [] and store.scrub(NAME).ok
    assert store.install(kit["v%d" % new]).ok and active_version(store) == new
    assert store.install(kit["v%d" % (new + 1)]).ok and active_version(store) == new + 1


def test_recover_rolls_back_when_health_checks_keep_being_interrupted(tmp_path, kit):
    root = tmp_path / "store"
    EngineStore(root, [kit["pub"]]).install(kit["v1"])
    assert run_worker(root, kit["v2"], kit["pub"], "health:before").returncode == -signal.SIGKILL
    state = journal.load_state(root / NAME, NAME)
    state["pending"]["health_attempts"] = 2  # as if recover() had been killed in its health check too
    journal.save_state(root / NAME, state)
    actions = EngineStore(root, [kit["pub"]]).recover()
    assert any("rolled back" in a for a in actions[NAME])
    store = EngineStore(root, [kit["pub"]])
    assert active_version(store) == 1 and store.health_events(NAME)[-1]["kind"] == "health_failed"
