"""Runner protocol on a real ONNX Runtime session: lifecycle, input checks, helpful errors."""
import numpy as np
import pytest

from engines.errors import RunnerError
from engines.runners.base import Runner

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from engines.runners.onnxrt import OnnxRuntimeRunner  # noqa: E402


def conv_relu_bytes():
    """A tiny Conv(6->4, 1x1) + Relu model on (N, 6, 8, 8) float32, serialized."""
    w = numpy_helper.from_array(np.ones((4, 6, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
        "conv_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture
def runner():
    return OnnxRuntimeRunner(conv_relu_bytes(), intra_op_threads=1, name="conv")


def test_infer_from_bytes_and_path(runner, tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 6, 8, 8)).astype(np.float32)
    want = np.maximum(x.sum(axis=1, keepdims=True), 0).repeat(4, axis=1)
    with runner:
        np.testing.assert_allclose(runner.infer({"x": x})["y"], want, rtol=1e-5, atol=1e-5)
        assert runner.last_infer_s is not None and runner.providers_in_use == ["CPUExecutionProvider"]
    path = tmp_path / "m.onnx"
    path.write_bytes(conv_relu_bytes())
    with OnnxRuntimeRunner(path) as r2:
        assert set(r2.infer({"x": x[:1]})) == {"y"}


def test_nothing_before_activate(runner):
    assert not runner.is_active and runner._session is None
    with pytest.raises(RunnerError, match="before activate.*with runner"):
        runner.infer({"x": np.zeros((1, 6, 8, 8), np.float32)})
    with pytest.raises(RunnerError, match="before activate"):
        runner.input_spec()


def test_context_manager_deactivates_even_on_error(runner):
    with pytest.raises(RunnerError):
        with runner:
            assert runner.is_active and runner.input_spec() == {"x": ("float32", ("N", 6, 8, 8))}
            runner.infer({})
    assert not runner.is_active and runner._session is None
    runner.deactivate()  # idempotent


@pytest.mark.parametrize("inputs,match", [
    ({"x": np.zeros((1, 6, 8, 8), np.float64)}, r"dtype float64 but the engine expects float32.*astype"),
    ({"x": np.zeros((1, 5, 8, 8), np.float32)}, r"shape \(1, 5, 8, 8\).*\('N', 6, 8, 8\)"),
    ({"x": np.zeros((6, 8, 8), np.float32)}, r"shape \(6, 8, 8\)"),
    ({}, r"missing: \['x'\].*Expected: x: float32\('N', 6, 8, 8\)"),
    ({"x": np.zeros((1, 6, 8, 8), np.float32), "z": np.zeros(1)}, r"unexpected: \['z'\].*Given: .*z: float64"),
    ({"x": [[0.0]]}, r"not a numpy array"),
])
def test_bad_inputs_are_explained(runner, inputs, match):
    with runner:
        with pytest.raises(RunnerError, match=match):
            runner.infer(inputs)


def test_bad_provider_and_model(tmp_path):
    with pytest.raises(RunnerError, match="not available.*CPUExecutionProvider"):
        with OnnxRuntimeRunner(conv_relu_bytes(), providers=["NoSuchExecutionProvider"]):
            pass
    with pytest.raises(RunnerError, match="no ONNX model at"):
        OnnxRuntimeRunner(tmp_path / "absent.onnx").activate()
    with pytest.raises(RunnerError, match="could not load"):
        OnnxRuntimeRunner(b"not a model").activate()


def test_subclass_only_overrides_hooks():
    class Doubler(Runner):
        def _activate_impl(self):
            self.loaded = True

        def _deactivate_impl(self):
            self.loaded = False

        def _input_spec_impl(self):
            return {"a": ("int32", (None, 2))}

        def _infer_impl(self, inputs):
            return {"b": inputs["a"] * 2}

    with Doubler() as r:
        assert r.infer({"a": np.array([[1, 2]], np.int32)})["b"].tolist() == [[2, 4]]
        with pytest.raises(RunnerError, match="int64"):
            r.infer({"a": np.array([[1, 2]], np.int64)})
    assert not r.loaded and r.name.startswith("Doubler-")
