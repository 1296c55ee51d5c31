"""Reference runner, backend comparison, and the TensorRT runner's behaviour on a host without TensorRT."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.bundle import pack_bundle
from engines.compare import TOLERANCES, compare_backends
from engines.errors import RunnerError, UserError
from engines.manifest import TensorSpec
from engines.runners import runner_for
from engines.runners.devicebuf import gpu_present
from engines.runners.reference import reference_ops, register_reference_op

SCALE, OFFSET = [0.5, 2.0, -1.0], [0.1, 0.0, 3.0]


@pytest.fixture
def affine_bundle(tmp_path):
    """A bundle whose ONNX model is Mul+Add per band, declaring the numpy reference op affine_bands."""
    import onnx
    import onnxruntime as ort
    shape = (1, 3, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["t"]), helper.make_node("Add", ["t", "o"], ["y"])], "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])],
        initializer=[numpy_helper.from_array(np.array(SCALE, np.float32).reshape(shape), "s"),
                     numpy_helper.from_array(np.array(OFFSET, np.float32).reshape(shape), "o")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(tmp_path / "affine.onnx"))
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 4)).astype(np.float32)
    y = ort.InferenceSession(str(tmp_path / "affine.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return pack_bundle(tmp_path / "bundle", name="affine", version=1, model_path=tmp_path / "affine.onnx",
                       precision="fp32", inputs=[TensorSpec("x", "float32", ("N", 3, 4, 4))],
                       outputs=[TensorSpec("y", "float32", ("N", 3, 4, 4))], reference_inputs={"x": x},
                       reference_outputs={"y": y},
                       manifest_extra={"reference_op": {"name": "affine_bands", "attrs": {"scale": SCALE,
                                                                                         "offset": OFFSET}}})


def test_reference_runner_matches_onnxrt(affine_bundle):
    inputs, outputs = affine_bundle.reference()
    with runner_for(affine_bundle, "reference") as runner:
        assert runner.input_spec() == {"x": ("float32", (None, 3, 4, 4))}
        np.testing.assert_allclose(runner.infer(inputs)["y"], outputs["y"], atol=1e-6)
    report = compare_backends(affine_bundle, ("onnxrt", "reference"))
    assert report.passed, report.format()
    assert [(e.backend, e.output, e.tolerance) for e in report.errors] == [("onnxrt", "y", 1e-4), ("reference", "y", 1e-4)]


@register_reference_op("test_affine_shifted")
def _affine_shifted(inputs, scale, offset, shift):
    """affine_bands plus a constant: a deliberately wrong reference."""
    y = reference_ops()["affine_bands"](inputs, scale, offset)["y"]
    return {"y": y + np.float32(shift)}


def test_comparison_fails_beyond_tolerance(affine_bundle):
    affine_bundle.manifest.extra["reference_op"] = {"name": "test_affine_shifted",
                                                    "attrs": {"scale": SCALE, "offset": OFFSET, "shift": 0.02}}
    report = compare_backends(affine_bundle, ("onnxrt", "reference"))
    ort, ref = report.errors
    assert ort.passed and not ref.passed and not report.passed
    assert ref.max_abs == pytest.approx(0.02, abs=1e-6) and ref.mean_abs == pytest.approx(0.02, abs=1e-6)
    assert compare_backends(affine_bundle, ("reference",), tolerances={"fp32": 0.05}).passed
    assert "NO" in report.format() and TOLERANCES == {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}


def test_reference_refuses_bundles_without_an_op(make_bundle):
    bundle = make_bundle()
    with pytest.raises(RunnerError, match="names no reference op.*affine_bands.*onnxrt"):
        runner_for(bundle, "reference").activate()
    bundle.manifest.extra["reference_op"] = "nope"
    with pytest.raises(RunnerError, match="'nope' is not registered"):
        runner_for(bundle, "reference").activate()


def test_compare_reports_backends_that_cannot_run(make_bundle):
    report = compare_backends(make_bundle(), ("onnxrt", "reference", "tensorrt"))
    assert [e.backend for e in report.errors] == ["onnxrt"] and report.errors[0].passed
    assert set(report.failures) == {"reference", "tensorrt"} and not report.passed
    assert "did not run" in report.format()
    with pytest.raises(UserError, match="unknown backend"):
        compare_backends(make_bundle("c"), ("tflite",))


@pytest.mark.skipif(gpu_present()[0], reason="this host has a GPU; the tensorrt-marked tests cover it")
def test_tensorrt_runner_without_gpu_says_so(make_bundle):
    runner = runner_for(make_bundle(), "tensorrt")
    with pytest.raises(UserError, match="Jetson or a GPU workstation with TensorRT; this host has none"):
        runner.activate()
    assert not runner.is_active and runner._mem is None and runner._runtime is None


def test_runner_for_names_arguments_a_backend_does_not_take(make_bundle):
    with pytest.raises(UserError, match="'tensorrt' does not take intra_op_threads; it takes plan, precision"):
        runner_for(make_bundle(), "tensorrt", intra_op_threads=1)
