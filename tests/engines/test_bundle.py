"""Bundle and manifest: pack, open, verify hashes, refuse tampering, keep unknown fields."""
import json

import numpy as np
import pytest

from engines.bundle import Bundle, pack_bundle
from engines.errors import BundleError, UserError
from engines.manifest import Manifest, TensorSpec
from engines.runners import BACKENDS, runner_for

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

NORM = {"source_dtype": "uint16", "scale": [1e-4] * 6, "offset": [0.0] * 6}


def conv_relu_model(path, seed=0):
    """Write a tiny Conv(6->4, 3x3, pad 1) + Relu model on (N, 6, 8, 8) float32 input."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((4, 6, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])],
        "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def reference_outputs(model_path, x):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return {"y": sess.run(["y"], {"x": x})[0]}


@pytest.fixture
def bundle(tmp_path):
    model = conv_relu_model(tmp_path / "src.onnx")
    x = np.random.default_rng(1).standard_normal((2, 6, 8, 8)).astype(np.float32)
    return pack_bundle(
        tmp_path / "b", name="cloudmask", version=3, model_path=model, precision="fp32",
        inputs=[TensorSpec("x", "float32", ("N", 6, 8, 8), NORM)],
        outputs=[{"name": "y", "dtype": "float32", "shape": ["N", 4, 8, 8]}],
        reference_inputs={"x": x}, reference_outputs=reference_outputs(model, x),
        metrics={"miou": 0.81}, extra_files={"labels/classes.txt": b"clear\ncloud\n"}, targets=["orin-jp6"])


def test_pack_open_infer_matches_reference(bundle):
    opened = Bundle.open(bundle.path)
    m = opened.manifest
    assert (m.name, m.version, m.precision, m.targets) == ("cloudmask", 3, "fp32", ["orin-jp6"])
    assert set(m.files) == {"model.onnx", "reference.npz", "labels/classes.txt"}
    assert m.inputs[0].normalization == NORM and m.inputs[0].shape == ("N", 6, 8, 8)
    ins, outs = opened.reference()
    with runner_for(opened, intra_op_threads=1) as runner:
        assert runner.input_spec() == {"x": ("float32", ("N", 6, 8, 8))}
        got = runner.infer(ins)
    np.testing.assert_allclose(got["y"], outs["y"], rtol=1e-5, atol=1e-6)
    assert "cloudmask" in repr(opened) and "version=3" in repr(opened)


@pytest.mark.parametrize("rel", ["model.onnx", "reference.npz", "labels/classes.txt"])
def test_flipped_byte_names_the_file(bundle, rel):
    path = bundle.path / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        Bundle.open(bundle.path)
    msg = str(err.value)
    assert rel in msg and bundle.manifest.files[rel] in msg and "sha256" in msg
    Bundle.open(bundle.path, verify=False)  # layout is fine, only the hash differs


def test_unlisted_and_missing_files_refused(bundle):
    (bundle.path / "evil.so").write_bytes(b"\x7fELF")
    with pytest.raises(BundleError, match="not listed.*evil.so"):
        Bundle.open(bundle.path, verify=False)
    (bundle.path / "evil.so").unlink()
    (bundle.path / "labels" / "classes.txt").unlink()
    with pytest.raises(BundleError, match="missing.*labels/classes.txt"):
        Bundle.open(bundle.path)


def test_manifest_keeps_unknown_fields(bundle):
    mpath = bundle.path / "manifest.json"
    data = json.loads(mpath.read_text())
    data["future_field"] = {"plans": [1, 2]}
    data["inputs"][0]["layout"] = "NCHW"
    m = Manifest.from_json(json.dumps(data))
    assert m.extra == {"future_field": {"plans": [1, 2]}}
    assert m.inputs[0].extra == {"layout": "NCHW"}
    assert m.to_dict() == data
    assert Manifest.from_json(m.to_json()).canonical_bytes() == m.canonical_bytes()
    assert m.canonical_bytes() == json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    mpath.write_text(m.to_json())
    assert Bundle.open(bundle.path).manifest.extra["future_field"] == {"plans": [1, 2]}


@pytest.mark.parametrize("field,value,match", [
    ("version", 0, "version"), ("version", "2", "version"), ("precision", "fp8", "precision.*int8"),
    ("format_version", 2, "format_version.*Upgrade"), ("name", "", "name"),
    ("min_runtime_version", "1.0", "MAJOR.MINOR.PATCH"), ("created", "yesterday", "ISO"),
])
def test_manifest_validation(bundle, field, value, match):
    data = bundle.manifest.to_dict()
    data[field] = value
    with pytest.raises(BundleError, match=match):
        Manifest.from_dict(data)


def test_manifest_missing_field_and_bad_dtype(bundle):
    data = bundle.manifest.to_dict()
    del data["precision"]
    with pytest.raises(BundleError, match="missing required field.*precision"):
        Manifest.from_dict(data)
    with pytest.raises(BundleError, match="float33.*float32"):
        TensorSpec("x", "float33", (1, 6))
    with pytest.raises(BundleError, match="2 scales for 6 bands"):
        TensorSpec("x", "float32", ("N", 6, 8, 8), {"source_dtype": "uint16", "scale": [1, 2], "offset": [0, 0]})


def test_pack_refuses_non_empty_dir_and_bad_reference(tmp_path, bundle):
    model = conv_relu_model(tmp_path / "m.onnx")
    x = np.zeros((1, 6, 8, 8), np.float32)
    kw = dict(name="m", version=1, model_path=model, precision="fp32",
              inputs=[TensorSpec("x", "float32", ("N", 6, 8, 8))], outputs=[TensorSpec("y", "float32", ("N", 4, 8, 8))],
              reference_inputs={"x": x}, reference_outputs={"y": np.zeros((1, 4, 8, 8), np.float32)})
    with pytest.raises(BundleError, match="overwrite=True"):
        pack_bundle(bundle.path, **kw)
    again = pack_bundle(bundle.path, overwrite=True, **kw)
    assert set(again.manifest.files) == {"model.onnx", "reference.npz"}
    (tmp_path / "notabundle").mkdir()
    (tmp_path / "notabundle" / "thesis.tex").write_text("x")
    with pytest.raises(BundleError, match="not a bundle"):
        pack_bundle(tmp_path / "notabundle", overwrite=True, **kw)
    with pytest.raises(BundleError, match="float64.*float32"):
        pack_bundle(tmp_path / "c", **dict(kw, reference_inputs={"x": x.astype(np.float64)}))
    with pytest.raises(BundleError, match="bad path"):
        pack_bundle(tmp_path / "d", extra_files={"../escape.txt": b"x"}, **kw)
    assert not (tmp_path / "escape.txt").exists()


def test_runner_for_backends(bundle):
    assert BACKENDS == ("onnxrt", "tensorrt", "reference")
    with pytest.raises(UserError, match="unknown runner backend 'tflite'.*onnxrt"):
        runner_for(bundle, backend="tflite")
    trt_runner = runner_for(bundle, backend="tensorrt")
    assert not trt_runner.is_active and trt_runner._mem is None  # nothing touched before activate()
    runner = runner_for(str(bundle.path))
    assert runner.name == "cloudmask:v3" and not runner.is_active
