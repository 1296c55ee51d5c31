"""``satedge flash``: dry-run plans for the shipped device profiles, the probe, and the install step for real.

The skeleton's bundles (``ground.cloudscreen``, opset 13, IR 8) are built once for this module.
No Jetson is reachable here: the profiles stand in for one, the probe runs on this host, and the
control-channel install runs against a real daemon process on this host.
"""
import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from engines.bundle import Bundle, pack_bundle
from engines.device_profile import (Device, DeviceProfile, load_profile, load_profile_file, match_target,
                                    parse_probe, parse_tegra_release, shipped_profiles)
from engines.errors import UserError
from engines.flash import FlashOptions, add_flash_parser, plan_flash, trtexec_args
from engines.targets import PROFILES

ORIN_PROBE = """model=NVIDIA Jetson AGX Orin Developer Kit
compatible=nvidia,p3737-0000+p3701-0005 nvidia,p3701-0005 nvidia,tegra234
tegra_release=# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13
jetpack=6.1+b123
tensorrt_deb=10.3.0.30-1+cuda12.5
cuda=/usr/local/cuda-12.6
smi_compute_cap=
dla=15880000.nvdla0 158c0000.nvdla1 nvhost-ctrl-nvdla0 nvhost-ctrl-nvdla1 nvhost-nvdla0 nvhost-nvdla1
trtexec=/usr/src/tensorrt/bin/trtexec
nvpmodel=NV Power Mode: MAXN 0
system_python=3.10.12
python_path=/opt/satedge/venv/bin/python
python=3.10.12
module.tensorrt=10.3.0
module.cuda-python=12.6.0
module.pycuda=
module.jtop=4.2.12
module.satedge=0.1.0
module.onnxruntime=1.19.2
"""


@pytest.fixture(scope="module")
def skeleton(tmp_path_factory):
    """The skeleton's fp32 and int8 cloud-screen bundles and a key pair."""
    pytest.importorskip("torch")
    from engines.signing import generate_keypair
    from ground.cloudscreen import build_cloud_screen
    root = tmp_path_factory.mktemp("flash")
    result = build_cloud_screen(root / "ground", quick=True, progress=False)
    private, public = generate_keypair(root / "keys", name="lab")
    return {"fp32": result.fp32_bundle, "int8": result.int8_bundle, "key": str(private), "pub": str(public)}


def flash_cli(argv, capsys):
    """Run the ``flash`` verb as the CLI would and return (exit code, stdout)."""
    parser = argparse.ArgumentParser()
    add_flash_parser(parser.add_subparsers())
    args = parser.parse_args(["flash"] + [str(a) for a in argv])
    code = args.func(args)
    return code, capsys.readouterr().out


def checks(plan):
    return {c.name: c for c in plan.checks}


def test_dry_run_orin_jp6_builds_with_satedge_on_the_device(skeleton, capsys):
    code, out = flash_cli([skeleton["fp32"], "--profile", "orin-jp6", "--dry-run", "--key", skeleton["key"]], capsys)
    assert code == 0, out
    assert "pass  target     orin-jp6: SM 8.7, TensorRT 10.3.0, CUDA 12.6, Python 3.10" in out
    assert "model.onnx: opset 13, IR 8; orin-jp6 (TensorRT 10.3.0) reads opset 9-20, IR <= 9" in out
    assert "2 DLA core(s); the plan runs on the GPU" in out
    assert "key SM 8.7, TensorRT 10.3.0.30, fp32, GPU; build it with 'satedge engines build'" in out
    assert "pass  buffers    cuda-python" in out and "pass  backend    tensorrt" in out
    assert "engines build /var/tmp/satedge-flash/cloudscreen-v1 --target orin-jp6 --precision fp32" in out
    assert "--backends tensorrt,onnxrt --tolerance fp32=1e-3" in out
    assert out.rstrip().endswith("dry run: nothing was copied, built or installed.")


def test_dry_run_refuses_a_missing_key_a_negative_dla_core_and_timeout(skeleton, capsys, tmp_path):
    code, out = flash_cli([skeleton["fp32"], "--profile", "orin-jp6", "--dry-run", "--key", tmp_path / "nope.key"],
                          capsys)
    assert code == 1 and "fail  signature" in out and "nope.key is not a file" in out, out
    for extra, why in ((["--dla-core", "-1"], "numbered from 0"), (["--timeout", "-5"], "> 0")):
        with pytest.raises(UserError, match=why):
            flash_cli([skeleton["fp32"], "--profile", "orin-jp6", "--dry-run"] + extra, capsys)


def test_dry_run_orin_jp6_int8_on_a_dla_core(skeleton):
    plan = plan_flash(Bundle.open(skeleton["int8"]), load_profile("orin-jp6"), dla_core=0,
                      opts=FlashOptions(key=skeleton["key"]))
    assert plan.ok, plan.format()
    assert plan.target.name == "orin-jp6" and plan.device.dla_cores == 2 == PROFILES["orin-jp6"].dla_cores
    assert plan.plan.file == "plans/sm87_trt10.3.0_int8_dla0.plan"
    assert checks(plan)["dla"].status == "pass" and "DLA core 0, GPU fallback on" in checks(plan)["dla"].detail
    assert any("--precision int8 --dla-core 0" in s for s in plan.steps)
    fp32 = plan_flash(Bundle.open(skeleton["fp32"]), load_profile("orin-jp6"), dla_core=0)
    assert checks(fp32)["dla"].status == "fail"                    # the DLA runs fp16/int8 only


def test_dry_run_tx2_jp46(skeleton, capsys):
    code, out = flash_cli([skeleton["fp32"], "--profile", "tx2-jp46", "--dry-run", "--key", skeleton["key"]], capsys)
    assert code == 1, out                                          # stock image: the daemon cannot run there
    plan = plan_flash(Bundle.open(skeleton["fp32"]), load_profile("tx2-jp46"), opts=FlashOptions(key=skeleton["key"]))
    c = checks(plan)
    assert plan.target.name == "tx2-jp46" and plan.target.trt_version.startswith("8.2")
    assert plan.device.tensorrt.startswith("8.2.") and plan.device.dla_cores == 0
    assert c["onnx"].status == "pass" and "opset 13, IR 8; tx2-jp46 (TensorRT 8.2.1) reads opset 7-13" in c["onnx"].detail
    assert "0 DLA core(s); the plan runs on the GPU" in c["dla"].detail
    assert c["buffers"].detail.startswith("pycuda (cuda-python has no JetPack 4 / Python 3.6 build)")
    assert c["python"].status == "fail" and "Python 3.6.9" in c["python"].detail and ">= 3.8" in c["python"].detail
    assert "Python 3.8 venv" in c["python"].detail
    assert plan.action == "build-trtexec" and plan.backends == "onnxrt" and c["backend"].status == "warn"
    args = trtexec_args(plan)
    assert args[0] == "/usr/src/tensorrt/bin/trtexec" and "--workspace=1024" in args and "--fp16" not in args
    assert "--minShapes=dn_norm:1x6x64x64" in args and "--maxShapes=dn_norm:8x6x64x64" in args
    assert "sm62_trt8.2.1_fp32_gpu.plan" in out and "pass  onnx" in out and "fail  python" in out


def test_dry_run_tx2_with_the_python38_venv_and_int8(skeleton):
    plan = plan_flash(Bundle.open(skeleton["fp32"]), load_profile("tx2-jp46-py38"), opts=FlashOptions(key=skeleton["key"]))
    c = checks(plan)
    assert plan.ok, plan.format()
    assert c["python"].status == "pass" and plan.action == "build-trtexec" and "no TensorRT bindings" in c["plan"].detail
    assert c["buffers"].status == "pass" and plan.backends == "onnxrt"
    int8 = plan_flash(Bundle.open(skeleton["int8"]), load_profile("tx2-jp46-py38"), opts=FlashOptions(key=skeleton["key"]))
    assert checks(int8)["precision"].status == "fail" and "fp32, fp16" in checks(int8)["precision"].detail


def test_opset_and_ir_checks_run_on_the_bundle_onnx(tmp_path, conv_model):
    import onnxruntime as ort

    from engines.manifest import TensorSpec

    def bundle(opset, ir):
        model = conv_model(tmp_path / ("m%d.onnx" % opset), opset=opset, ir_version=ir)
        x = np.ones((1, 6, 8, 8), np.float32)
        y = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
        return pack_bundle(tmp_path / ("b%d" % opset), name="conv", version=1, model_path=model, precision="fp32",
                           inputs=[TensorSpec("x", "float32", ("N", 6, 8, 8))],
                           outputs=[TensorSpec("y", "float32", ("N", 4, 8, 8))],
                           reference_inputs={"x": x}, reference_outputs={"y": y})
    b17 = bundle(17, 8)
    tx2 = checks(plan_flash(b17, load_profile("tx2-jp46")))["onnx"]
    assert tx2.status == "fail" and "opset 17" in tx2.detail and "opset_version=13" in tx2.detail
    assert checks(plan_flash(b17, load_profile("orin-jp6")))["onnx"].status == "pass"
    assert checks(plan_flash(b17, load_profile("orin-jp5")))["onnx"].status == "pass"
    ir10 = checks(plan_flash(bundle(19, 10), load_profile("orin-jp6")))["onnx"]
    assert ir10.status == "fail" and "IR version 10" in ir10.detail


def test_a_matching_plan_in_the_bundle_is_reused(make_bundle, keypair, plan_bytes):
    from engines.build import add_plan
    from engines.plan import PlanEntry
    entry = PlanEntry(file="plans/sm87_trt10.3.0_fp32_gpu.plan", sm="8.7", trt_version="10.3.0.30",
                      precision="fp32", dla_core=None, target="orin-jp6")
    bundle = add_plan(make_bundle(), plan_bytes(10, 3, 0, 30), entry, key=keypair[0])
    plan = plan_flash(bundle, load_profile("orin-jp6"))
    assert plan.ok and plan.action == "reuse" and plan.plan.file == entry.file, plan.format()
    assert checks(plan)["signature"].detail == "bundle is signed"
    assert not any(s.startswith("build") for s in plan.steps)
    other = plan_flash(bundle, load_profile("orin-jp6.0"))         # TensorRT 8.6: that plan does not fit
    assert other.action == "build-satedge" and checks(other)["signature"].status == "fail"


def test_profiles_and_their_errors(tmp_path, skeleton, capsys):
    assert {"tx2-jp46", "xavier-jp5", "orin-jp5", "orin-jp6.0", "orin-jp6"} <= set(shipped_profiles())
    for name in shipped_profiles():
        prof = load_profile(name)
        target = match_target(prof)
        assert (target.sm, target.dla_cores) == (prof.sm, prof.dla_cores), name
        assert DeviceProfile.from_dict(json.loads(json.dumps(prof.to_dict()))) == prof
    with pytest.raises(UserError, match="no shipped device profile 'nano'.*tx2-jp46"):
        load_profile("nano")
    (tmp_path / "bad.json").write_text(json.dumps({"name": "x", "gpu": "orin"}))
    with pytest.raises(UserError, match="unknown keys \\['gpu'\\]"):
        load_profile_file(tmp_path / "bad.json")
    jp46 = dict(load_profile("tx2-jp46").to_dict(), name="tx2-jp460", l4t="32.6.1", tensorrt="8.0.1.6")
    (tmp_path / "jp460.json").write_text(json.dumps(jp46))         # JetPack 4.6 itself shipped TensorRT 8.0
    code, out = flash_cli([skeleton["fp32"], "--profile-file", tmp_path / "jp460.json", "--dry-run"], capsys)
    assert code == 1 and "fail  target" in out and "which no target profile describes" in out
    with pytest.raises(UserError, match="only plans: add --dry-run"):
        flash_cli([skeleton["fp32"], "--profile", "orin-jp6"], capsys)


def test_probe_output_is_parsed():
    orin = parse_probe(ORIN_PROBE, "orin", "probed orin")
    assert (orin.soc, orin.sm, orin.dla_cores, orin.l4t, orin.jetpack) == ("tegra234", "8.7", 2, "36.4.0", "6.1")
    assert (orin.tensorrt, orin.cuda, orin.python) == ("10.3.0.30", "12.6", "3.10.12")
    assert orin.has("cuda-python") and not orin.has("pycuda") and match_target(orin).name == "orin-jp6"
    tx2 = parse_probe("compatible=nvidia,p3310-1000 nvidia,tegra186\ntegra_release=# R32 (release), REVISION: 7.1, "
                      "GCID: 29689809, BOARD: t186ref\ntensorrt_deb=8.2.1.8-1+cuda10.2\ndla=\npython=3.6.9\n",
                      "tx2", "probed tx2")
    assert (tx2.sm, tx2.dla_cores, tx2.l4t, tx2.tensorrt) == ("6.2", 0, "32.7.1", "8.2.1.8")
    assert any("nvidia-jetpack is not installed" in n for n in tx2.notes) and match_target(tx2).name == "tx2-jp46"
    assert parse_tegra_release("garbage") is None


def test_probe_runs_on_this_host_and_local_flash_refuses_it(skeleton, capsys):
    here = Device(None).probe(sys.executable)
    assert here.l4t is None and here.sm is None and any("not a Jetson" in n for n in here.notes)
    assert here.python == "%d.%d.%d" % sys.version_info[:3] and here.has("onnxruntime")
    assert not here.has("cuda-python")           # the repository's cuda/ folder is not cuda-python
    with pytest.raises(UserError, match="this host is not one"):
        flash_cli([skeleton["fp32"], "--local", "--dry-run"], capsys)


def _versioned(src, out, version, key, perturb=0.0):
    """A copy of bundle ``src`` as ``version``, signed; ``perturb`` shifts its reference outputs (a broken engine)."""
    from engines.signing import sign_bundle
    b = Bundle.open(src)
    m, (ins, outs) = b.manifest, b.reference()
    new = pack_bundle(out, name=m.name, version=version, model_path=b.model_path, precision=m.precision,
                      inputs=m.inputs, outputs=m.outputs, reference_inputs=ins,
                      reference_outputs={k: v + perturb for k, v in outs.items()}, metrics=m.metrics)
    sign_bundle(new.path, key)
    return str(new.path)


@pytest.fixture(scope="module")
def daemon(skeleton, tmp_path_factory):
    """A real daemon process on this host serving the skeleton's engine v1 from an engine store."""
    from onboard.settings import DaemonSettings
    from onboard.store import EngineStore
    from sim.processes import DaemonProcess, free_tcp_endpoint
    root = tmp_path_factory.mktemp("daemon")
    v1 = _versioned(skeleton["fp32"], root / "v1", 1, skeleton["key"])
    assert EngineStore(root / "store", trusted_keys=[skeleton["pub"]]).install(v1).ok
    settings = DaemonSettings(store_root=str(root / "store"), engine="cloudscreen", trusted_keys=[skeleton["pub"]],
                              workdir=str(root / "work"), sensor_endpoint=free_tcp_endpoint(),
                              results_endpoint=free_tcp_endpoint(), control_endpoint=free_tcp_endpoint(),
                              heartbeat_endpoint=free_tcp_endpoint(), intra_op_threads=1,
                              heartbeat_interval_s=0.2, drain_timeout_s=20).validate()
    proc = DaemonProcess(settings, str(root / "daemon.yaml"))
    try:
        proc.wait_ready(60)
        yield settings
    finally:
        proc.stop(timeout=20)


def _active(settings, key):
    from onboard.store import EngineStore
    return EngineStore(settings.store_root, trusted_keys=[key]).versions("cloudscreen")["active"]


def test_install_through_a_real_daemon_and_a_broken_engine_is_refused(skeleton, daemon, tmp_path):
    here = Device(None)
    good = here.install(sys.executable, _versioned(skeleton["fp32"], tmp_path / "v2", 2, skeleton["key"]),
                        daemon.control_endpoint, timeout=120)
    assert good["report"]["ok"] and good["report"]["outcome"] == "installed" and good["report"]["version"] == 2
    bad = here.install(sys.executable, _versioned(skeleton["fp32"], tmp_path / "v3", 3, skeleton["key"], perturb=0.5),
                       daemon.control_endpoint, timeout=120)
    assert not bad["report"]["ok"] and bad["report"]["outcome"] == "canary-failed", bad
    assert _active(daemon, skeleton["pub"]) == 2
    with pytest.raises(UserError, match="refused it: E_COMMAND: install needs 'bundle'"):
        here.install(sys.executable, "", daemon.control_endpoint, timeout=30)


def test_flash_end_to_end_on_this_host_standing_in_for_a_unit(skeleton, daemon, tmp_path, plan_bytes, capsys):
    """The real path (stage, reuse the plan, install, canary accuracy) with Device(None); only the profile is made up."""
    from engines.build import add_plan
    from engines.flash import flash
    from engines.plan import PlanEntry
    bundle = Bundle.open(_versioned(skeleton["fp32"], tmp_path / "v4", 4, skeleton["key"]))
    entry = PlanEntry(file="plans/sm87_trt10.3.0_fp32_gpu.plan", sm="8.7", trt_version="10.3.0.30", precision="fp32",
                      dla_core=None, target="orin-jp6")
    bundle = add_plan(bundle, plan_bytes(10, 3, 0, 30), entry, key=skeleton["key"])
    unit = DeviceProfile(name="stand-in", model="this host as an Orin", l4t="36.4.0", tensorrt="10.3.0.30", sm="8.7",
                         dla_cores=2, python_path=sys.executable, python="%d.%d.%d" % sys.version_info[:3],
                         modules={"satedge": "0.1.0", "onnxruntime": "?"}, source="made up for this test")
    plan = plan_flash(bundle, unit, opts=FlashOptions(key=skeleton["key"], remote_dir=str(tmp_path / "unit"),
                                                      control=daemon.control_endpoint, timeout=120))
    assert plan.ok and plan.action == "reuse" and plan.backends == "onnxrt", plan.format()
    result = flash(plan, Device(None))
    assert result["report"]["ok"] and result["report"]["outcome"] == "installed" and result["report"]["version"] == 4
    assert "onnxrt" in result["compare"] and "did not run" not in result["compare"], result["compare"]
    assert (tmp_path / "unit" / "cloudscreen-v4" / entry.file).is_file() and _active(daemon, skeleton["pub"]) == 4
    assert "canary accuracy on this host" in capsys.readouterr().out


def test_flash_modules_import_nothing_heavy():
    code = ("import sys, engines.flash, engines.device_profile, onboard.doctor\n"
            "print(','.join(m for m in ('torch', 'tensorrt', 'pycuda', 'cuda', 'onnxruntime', 'onnx', 'jtop') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert out.returncode == 0 and out.stdout.decode().strip() == "", out.stderr.decode()


@pytest.mark.skipif(bool(os.environ.get("SATEDGE_HIL_HOST")) or os.path.exists("/etc/nv_tegra_release"),
                    reason="a Jetson is reachable here, so the HIL tests run instead of skipping")
def test_hil_tests_are_collected_and_skip_with_the_reason():
    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jetson")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "jetson", "-rs", "-p", "no:cacheprovider",
                          tests], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    text = out.stdout.decode()
    assert out.returncode == 0, text
    assert re.search(r"\b9 skipped\b", text) and text.count("not a Jetson and SATEDGE_HIL_HOST unset") >= 5, text
