"""Bad input to the real ``satedge`` command (``keys``, ``engines``, ``flash``): one error line, no traceback.

Each case runs ``python -m satedge_cli`` in a subprocess, as a user would, and checks the exit
status, that stderr ends in exactly one ``satedge: error: ...`` line naming the file at fault, and
that no Python traceback reached the user. Also: ``engines compare`` picks the backends that can
run a bundle, and refuses, in one line, a named backend that cannot.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from engines.runners.devicebuf import gpu_present

from cli_check import error_line, satedge  # tests/cli_check.py; conftest.py puts tests/ on sys.path

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def files(tmp_path, conv_model):
    """A good model, manifests with and without targets, and garbage files of several kinds."""
    model = conv_model(tmp_path / "m.onnx")
    base = {"name": "cloudmask", "version": 3, "precision": "fp32",
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 6, 8, 8]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": ["N", 4, 8, 8]}]}
    (tmp_path / "targets.json").write_text(json.dumps(dict(base, targets=["orin-jp6"])))
    (tmp_path / "plain.json").write_text(json.dumps(base))
    (tmp_path / "wrong-input.json").write_text(json.dumps(dict(base, inputs=[
        {"name": "q", "dtype": "float32", "shape": ["N", 6, 8, 8]}])))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{name: cloudmask")
    (tmp_path / "garbage.onnx").write_text("this is not an ONNX model\n" * 4)
    (tmp_path / "garbage.npz").write_text("this is not an npz\n")
    np.save(str(tmp_path / "single.npy"), np.zeros(3, np.float32))
    np.savez(str(tmp_path / "unnamed.npz"), x=np.zeros(3, np.float32))
    return tmp_path, model


PACK_CASES = {
    # id: (argv after "engines pack" with {d} the folder, the names the one line must hold)
    "missing-onnx-with-targets": (["--onnx", "{d}/nope.onnx", "--manifest", "{d}/targets.json"],
                                  ["--onnx", "{d}/nope.onnx", "no such file"]),
    "missing-onnx-without-targets": (["--onnx", "{d}/nope.onnx", "--manifest", "{d}/plain.json"],
                                     ["--onnx", "{d}/nope.onnx", "no such file"]),
    "onnx-is-a-directory": (["--onnx", "{d}", "--manifest", "{d}/plain.json"], ["--onnx", "is a directory"]),
    "garbage-onnx-with-targets": (["--onnx", "{d}/garbage.onnx", "--manifest", "{d}/targets.json"],
                                  ["--onnx", "{d}/garbage.onnx", "not an ONNX model"]),
    "garbage-onnx-without-targets": (["--onnx", "{d}/garbage.onnx", "--manifest", "{d}/plain.json"],
                                     ["--onnx", "{d}/garbage.onnx", "not an ONNX model"]),
    "missing-reference": (["--onnx", "{d}/m.onnx", "--manifest", "{d}/targets.json", "--reference", "{d}/nope.npz"],
                          ["--reference", "{d}/nope.npz", "no such file"]),
    "garbage-reference": (["--onnx", "{d}/m.onnx", "--manifest", "{d}/plain.json", "--reference", "{d}/garbage.npz"],
                          ["--reference", "{d}/garbage.npz", "numpy.savez"]),
    "npy-reference": (["--onnx", "{d}/m.onnx", "--manifest", "{d}/plain.json", "--reference", "{d}/single.npy"],
                      ["--reference", "{d}/single.npy", ".npy"]),
    "reference-without-in-arrays": (["--onnx", "{d}/m.onnx", "--manifest", "{d}/plain.json", "--reference",
                                     "{d}/unnamed.npz"], ["--reference", "{d}/unnamed.npz", "in/<name>"]),
    "missing-manifest": (["--onnx", "{d}/m.onnx", "--manifest", "{d}/nope.json"], ["--manifest", "{d}/nope.json"]),
    "manifest-not-json": (["--onnx", "{d}/m.onnx", "--manifest", "{d}/broken.json"], ["--manifest",
                                                                                      "{d}/broken.json"]),
    "manifest-a-list-with-override": (["--onnx", "{d}/m.onnx", "--manifest", "{d}/list.json", "--name", "x"],
                                      ["--manifest", "{d}/list.json", "not an object"]),
    "manifest-inputs-not-the-models": (["--onnx", "{d}/m.onnx", "--manifest", "{d}/wrong-input.json"],
                                       ["--onnx", "{d}/m.onnx", "{d}/wrong-input.json", "--reference"]),
    "missing-sign-key": (["--onnx", "{d}/m.onnx", "--manifest", "{d}/plain.json", "--sign", "{d}/nope.key"],
                         ["--sign", "{d}/nope.key", "keys gen"]),
}


@pytest.mark.parametrize("case", sorted(PACK_CASES))
def test_pack_bad_input_is_one_line_naming_the_file(files, case):
    folder, _ = files
    argv, names = PACK_CASES[case]
    result = satedge("engines", "pack", *[a.format(d=folder) for a in argv], "--out", folder / "out")
    error_line(result, *[n.format(d=folder) for n in names])
    assert not (folder / "out").exists(), "a refused pack left a bundle behind"


def test_pack_refuses_an_out_folder_that_does_not_exist(files):
    folder, model = files
    error_line(satedge("engines", "pack", "--onnx", model, "--manifest", folder / "plain.json", "--out",
                       folder / "no" / "such" / "b"), "--out", folder / "no" / "such")
    error_line(satedge("engines", "pack", "--from-dir", folder, "--out", folder / "no" / "b.tar.gz"),
               "--out", folder / "no")


def test_pack_into_a_non_empty_out_names_the_overwrite_flag(files):
    folder, model = files
    assert satedge("engines", "pack", "--onnx", model, "--manifest", folder / "plain.json", "--out",
                   folder / "b").returncode == 0
    error_line(satedge("engines", "pack", "--onnx", model, "--manifest", folder / "plain.json", "--out",
                       folder / "b"), folder / "b", "--overwrite")
    assert satedge("engines", "pack", "--onnx", model, "--manifest", folder / "plain.json", "--out", folder / "b",
                   "--overwrite").returncode == 0


@pytest.mark.parametrize("verb", ["verify", "inspect", "compare"])
def test_reading_verbs_on_a_garbage_file_say_so_in_one_line(files, verb):
    folder, _ = files
    error_line(satedge("engines", verb, folder / "garbage.onnx"), folder / "garbage.onnx", "bundle", code=3)
    error_line(satedge("engines", verb, folder / "nope"), folder / "nope")


def test_diff_with_a_garbage_side(files):
    folder, model = files
    assert satedge("engines", "pack", "--onnx", model, "--manifest", folder / "plain.json", "--out",
                   folder / "b").returncode == 0
    error_line(satedge("engines", "diff", folder / "b", folder / "garbage.onnx"), folder / "garbage.onnx", code=3)


def test_keys_gen_into_a_file(files):
    folder, _ = files
    error_line(satedge("keys", "gen", "--out", folder / "garbage.onnx"), folder / "garbage.onnx", "directory")
    error_line(satedge("keys", "gen", "--out", folder / "garbage.onnx", "--curve"), folder / "garbage.onnx")


def test_sign_and_verify_with_missing_or_garbage_keys(files):
    folder, model = files
    assert satedge("engines", "pack", "--onnx", model, "--manifest", folder / "plain.json", "--out",
                   folder / "b").returncode == 0
    error_line(satedge("engines", "sign", folder / "b", "--key", folder / "nope.key"), folder / "nope.key")
    error_line(satedge("engines", "sign", folder / "b", "--key", folder / "garbage.onnx"), folder / "garbage.onnx")
    error_line(satedge("engines", "verify", folder / "b", "--key", folder / "nope.pub"), folder / "nope.pub")
    error_line(satedge("engines", "verify", folder / "b", "--key", folder / "garbage.onnx"), folder / "garbage.onnx")


def test_build_checks_its_files_before_building(files):
    folder, model = files
    assert satedge("engines", "pack", "--onnx", model, "--manifest", folder / "plain.json", "--out",
                   folder / "b").returncode == 0
    error_line(satedge("engines", "build", folder / "nope", "--target", "gpu-host"), "bundle directory")
    error_line(satedge("engines", "build", folder / "b", "--target", "gpu-host", "--key", folder / "nope.key"),
               "--key", folder / "nope.key")
    error_line(satedge("engines", "build", folder / "b", "--target", "gpu-host", "--timing-cache", folder),
               "--timing-cache", folder)
    error_line(satedge("engines", "build", folder / "b", "--target", "gpu-host", "--workspace-mb", "0"),
               "--workspace-mb")


def test_flash_profile_file_with_wrong_types(files):
    folder, model = files
    assert satedge("engines", "pack", "--onnx", model, "--manifest", folder / "plain.json", "--out",
                   folder / "b").returncode == 0
    profile = json.loads((ROOT / "engines" / "profiles" / "orin-jp6.json").read_text())
    for key, value in (("dla_cores", "two"), ("tensorrt", 10.3), ("modules", ["tensorrt"]), ("notes", "one")):
        path = folder / ("profile-%s.json" % key)
        path.write_text(json.dumps(dict(profile, **{key: value})))
        error_line(satedge("flash", folder / "b", "--profile-file", path, "--dry-run"), path, repr(key))
    error_line(satedge("flash", folder / "b", "--profile-file", folder / "garbage.onnx", "--dry-run"),
               folder / "garbage.onnx")


# ----------------------------------------------------------------------------- engines compare backends

def test_compare_defaults_to_the_backends_that_can_run_a_packed_bundle(files):
    """The documented round trip: pack a plain ONNX model, then compare it with no --backends (exit 0)."""
    folder, model = files
    assert satedge("engines", "pack", "--onnx", model, "--manifest", folder / "targets.json", "--out",
                   folder / "b").returncode == 0
    assert satedge("engines", "pack", "--from-dir", folder / "b", "--out", folder / "b.tar.gz").returncode == 0
    for bundle in (folder / "b", folder / "b.tar.gz"):
        result = satedge("engines", "compare", bundle)
        assert result.returncode == 0, result.stdout + result.stderr
        rows = [line.split()[0] for line in result.stdout.splitlines()[1:]]
        assert rows == ["onnxrt"], result.stdout


def test_compare_refuses_a_named_backend_that_cannot_run_the_bundle(files):
    folder, model = files
    assert satedge("engines", "pack", "--onnx", model, "--manifest", folder / "plain.json", "--out",
                   folder / "b").returncode == 0
    line = error_line(satedge("engines", "compare", folder / "b", "--backends", "onnxrt,reference"),
                      "'reference'", "reference_op", "onnxrt")
    assert "cloudmask v3" in line
    error_line(satedge("engines", "compare", folder / "b", "--backends", "tensorrt"), "'tensorrt'",
               "no TensorRT plan", "engines build")
    error_line(satedge("engines", "compare", folder / "b", "--backends", "onnxrt,bogus"), "bogus", "onnxrt")
    error_line(satedge("engines", "compare", folder / "b", "--backends", ","), "no backend named")


def _affine_model(path):
    from onnx import TensorProto, helper, numpy_helper
    import onnx
    scale, offset = np.array([0.5, 2.0, -1.0], np.float32), np.array([0.1, 0.0, 3.0], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["t"]), helper.make_node("Add", ["t", "o"], ["y"])], "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])],
        initializer=[numpy_helper.from_array(scale.reshape(1, 3, 1, 1), "s"),
                     numpy_helper.from_array(offset.reshape(1, 3, 1, 1), "o")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return scale.tolist(), offset.tolist()


def test_compare_default_adds_reference_when_the_manifest_names_a_reference_op(tmp_path):
    scale, offset = _affine_model(tmp_path / "affine.onnx")
    spec = {"name": "affine", "version": 1, "precision": "fp32",
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 3, 4, 4]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": ["N", 3, 4, 4]}],
            "reference_op": {"name": "affine_bands", "attrs": {"scale": scale, "offset": offset}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert satedge("engines", "pack", "--onnx", tmp_path / "affine.onnx", "--manifest", tmp_path / "spec.json",
                   "--out", tmp_path / "b").returncode == 0
    result = satedge("engines", "compare", tmp_path / "b")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == ["onnxrt", "reference"], result.stdout


@pytest.mark.skipif(gpu_present()[0], reason="this host has a GPU; TensorRT may run the plan here")
def test_compare_default_leaves_tensorrt_out_where_it_cannot_import(make_bundle, plan_bytes):
    """A bundle with a plan on a host without TensorRT: the default runs onnxrt only; naming tensorrt reports it."""
    from engines.build import add_plan
    from engines.plan import PlanEntry
    bundle = make_bundle("b")
    entry = PlanEntry(file="plans/sm87_trt10.3.0_fp32_gpu.plan", sm="8.7", trt_version="10.3.0.30",
                      precision="fp32", dla_core=None, target="orin-jp6")
    bundle = add_plan(bundle, plan_bytes(10, 3, 0, 30), entry)
    result = satedge("engines", "compare", bundle.path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == ["onnxrt"], result.stdout
    result = satedge("engines", "compare", bundle.path, "--backends", "onnxrt,tensorrt")
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr, result.stderr
    assert "tensorrt   did not run" in result.stdout and "this host has none" in result.stdout, result.stdout


@pytest.mark.parametrize("tolerance", ["bogus=1", "fp32=inf", "fp32=nan", "fp32=-1", "fp32=0", "int8", "fp16=x"])
def test_compare_refuses_a_tolerance_that_is_not_a_known_precision_and_a_finite_positive_number(make_bundle,
                                                                                                tolerance):
    bundle = make_bundle("b")
    line = error_line(satedge("engines", "compare", bundle.path, "--tolerance", tolerance), tolerance)
    assert "fp32, fp16, int8" in line and "finite number > 0" in line


def test_verify_refuses_a_bundle_whose_model_is_not_onnx_even_with_matching_hashes(make_bundle):
    from engines.hashing import sha256_file
    bundle = make_bundle("b")
    model = bundle.path / "model.onnx"
    model.write_bytes(b"\x00garbage that is not a protobuf\xff" * 10)
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = sha256_file(model)      # as if packed from the garbage file
    (bundle.path / "manifest.json").write_text(json.dumps(manifest))
    line = error_line(satedge("engines", "verify", bundle.path), "cloudmask v3", code=3)
    assert "match their hashes" in line and "not an ONNX model" in line and "re-export" in line
