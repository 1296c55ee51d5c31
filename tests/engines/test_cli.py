"""``satedge keys`` and ``satedge engines`` verbs, driven through an argparse parser built here."""
import argparse
import json

import numpy as np
import pytest

from engines.cli import add_parsers
from engines.errors import BundleError, SignatureError, UserError
from engines.runners.devicebuf import gpu_present


def run(*argv):
    parser = argparse.ArgumentParser(prog="satedge")
    add_parsers(parser.add_subparsers(dest="side"))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture
def spec(tmp_path, conv_model):
    model = conv_model(tmp_path / "m.onnx")
    manifest = {"name": "cloudmask", "version": 3, "precision": "fp32", "targets": ["tx2-jp46", "orin-jp6"],
                "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 6, 8, 8]}],
                "outputs": [{"name": "y", "dtype": "float32", "shape": ["N", 4, 8, 8]}],
                "metrics": {"miou": 0.8}, "ground_commit": "abc123"}
    (tmp_path / "spec.json").write_text(json.dumps(manifest))
    return model, tmp_path / "spec.json"


def test_keys_pack_sign_verify_round_trip(tmp_path, spec, capsys):
    model, manifest = spec
    assert run("keys", "gen", "--out", tmp_path / "keys", "--name", "lab") == 0
    key, pub = tmp_path / "keys" / "lab.key", tmp_path / "keys" / "lab.pub"
    assert run("engines", "pack", "--onnx", model, "--manifest", manifest, "--out", tmp_path / "b", "--sign", key) == 0
    assert run("engines", "verify", tmp_path / "b", "--key", pub) == 0
    assert "signed by trusted key id" in capsys.readouterr().out
    assert run("engines", "pack", "--from-dir", tmp_path / "b", "--out", tmp_path / "b.tar.gz") == 0
    assert run("engines", "verify", tmp_path / "b.tar.gz", "--key", pub) == 0
    assert run("engines", "verify", tmp_path / "b.tar.gz") == 0
    assert "signature NOT checked" in capsys.readouterr().out
    run("keys", "gen", "--out", tmp_path / "other")
    with pytest.raises(SignatureError, match="not trusted"):
        run("engines", "verify", tmp_path / "b.tar.gz", "--key", tmp_path / "other" / "satedge.pub")
    data = np.load(str(tmp_path / "b" / "reference.npz"))
    assert data["in/x"].shape == (1, 6, 8, 8) and data["out/y"].shape == (1, 4, 8, 8)


def test_inspect_and_diff(tmp_path, spec, capsys):
    model, manifest = spec
    run("engines", "pack", "--onnx", model, "--manifest", manifest, "--out", tmp_path / "a")
    run("engines", "pack", "--onnx", model, "--manifest", manifest, "--out", tmp_path / "b", "--version", 4,
        "--precision", "fp16")
    capsys.readouterr()
    assert run("engines", "inspect", tmp_path / "a") == 0
    out = capsys.readouterr().out
    for text in ("cloudmask v3 (fp32)", "x float32(N, 6, 8, 8)", "model.onnx", "plans      (none",
                 "signature  none", "miou=0.8", "ground_commit"):
        assert text in out
    assert run("engines", "inspect", tmp_path / "a", "--json") == 0
    assert json.loads(capsys.readouterr().out)["ground_commit"] == "abc123"
    assert run("engines", "diff", tmp_path / "a", tmp_path / "a") == 0
    assert run("engines", "diff", tmp_path / "a", tmp_path / "b") == 1
    out = capsys.readouterr().out
    assert "version: 3 -> 4" in out and "precision: fp32 -> fp16" in out


def test_pack_checks_targets_and_arguments(tmp_path, spec, conv_model):
    _, manifest = spec
    new = conv_model(tmp_path / "new.onnx", opset=17, ir_version=8)
    with pytest.raises(UserError, match="opset 17.*tx2-jp46"):
        run("engines", "pack", "--onnx", new, "--manifest", manifest, "--out", tmp_path / "x")
    with pytest.raises(UserError, match="--from-dir"):
        run("engines", "pack", "--out", tmp_path / "x")
    with pytest.raises(UserError, match="no bundle directory or archive"):
        run("engines", "verify", tmp_path / "nothing-here")
    with pytest.raises(UserError, match="works on a bundle directory"):
        run("engines", "sign", manifest, "--key", tmp_path / "k")
    (tmp_path / "fake.tar").write_bytes(b"not a tar at all" * 40)
    with pytest.raises(BundleError, match="fake.tar"):
        run("engines", "inspect", tmp_path / "fake.tar")


def test_targets_and_compare(tmp_path, spec, capsys):
    model, manifest = spec
    assert run("engines", "targets") == 0
    out = capsys.readouterr().out
    assert "tx2-jp46" in out and "8.2.1" in out and "pycuda" in out and "thor-jp7" in out
    assert run("engines", "targets", "--json") == 0
    assert json.loads(capsys.readouterr().out)["orin-jp6"]["dla_cores"] == 2
    run("engines", "pack", "--onnx", model, "--manifest", manifest, "--out", tmp_path / "b")
    assert run("engines", "compare", tmp_path / "b", "--backends", "onnxrt") == 0
    assert run("engines", "compare", tmp_path / "b") == 0  # the default: the backends that can run it (onnxrt)
    assert "reference" not in capsys.readouterr().out
    with pytest.raises(UserError, match="backend 'reference' cannot run bundle cloudmask v3: its manifest has no "
                                        "reference_op"):
        run("engines", "compare", tmp_path / "b", "--backends", "onnxrt,reference")
    with pytest.raises(UserError, match="PREC=VALUE"):
        run("engines", "compare", tmp_path / "b", "--tolerance", "int8")


@pytest.mark.skipif(gpu_present()[0], reason="this host has a GPU; the tensorrt-marked tests cover builds")
def test_build_without_tensorrt_says_where_builds_run(tmp_path, spec):
    model, manifest = spec
    run("engines", "pack", "--onnx", model, "--manifest", manifest, "--out", tmp_path / "b")
    with pytest.raises(UserError, match="TensorRT builds run on a Jetson or a GPU workstation with TensorRT; "
                                        "this host has none"):
        run("engines", "build", tmp_path / "b", "--target", "gpu-host")
    with pytest.raises(UserError, match="DLA runs fp16 and int8 only"):
        run("engines", "build", tmp_path / "b", "--target", "orin-jp6", "--dla-core", "0")
    with pytest.raises(UserError, match="2 DLA core"):
        run("engines", "build", tmp_path / "b", "--target", "orin-jp6", "--dla-core", "2", "--precision", "fp16")
    with pytest.raises(UserError, match="tx2-jp46 builds fp32, fp16, not int8"):
        run("engines", "build", tmp_path / "b", "--target", "tx2-jp46", "--precision", "int8")
