"""TensorRT builds and the TensorRT runner against ONNX Runtime (``-m tensorrt``; needs TensorRT and a GPU).

These tests skip with the reason on a host without a GPU or without the ``tensorrt`` module. The
GPU check uses nvidia-smi / the Jetson device nodes and never creates a TensorRT runtime (the
lean runtime aborts the process when no GPU exists). Nothing here fakes TensorRT.
"""
import importlib.util

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.build import add_plan, build_plan
from engines.bundle import Bundle, pack_bundle
from engines.compare import compare_backends
from engines.errors import PlanIncompatible
from engines.manifest import TensorSpec
from engines.plan import PlanEntry, read_plan_header, same_release
from engines.runners import runner_for
from engines.runners.devicebuf import gpu_present

_GPU, _WHY = gpu_present()
pytestmark = [
    pytest.mark.tensorrt,
    pytest.mark.skipif(not _GPU, reason="no NVIDIA GPU on this host (%s)" % _WHY),
    pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="the tensorrt module is not installed"),
]


def qdq_conv_model(path, seed=0):
    """Conv(6->4, 3x3) + Relu with symmetric INT8 Q/DQ: per-tensor activations, per-channel weights."""
    import onnx
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 6, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(4.0 / 127, np.float32), "sx"),
             numpy_helper.from_array(np.array(0, np.int8), "zx"),
             numpy_helper.from_array((np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32), "sw"),
             numpy_helper.from_array(np.zeros(4, np.int8), "zw")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("QuantizeLinear", ["w", "sw", "zw"], ["wq"], axis=0),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "qdq_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def _bundle(tmp_path, model, precision):
    import onnxruntime as ort
    x = np.random.default_rng(1).standard_normal((2, 6, 8, 8)).astype(np.float32)
    y = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return pack_bundle(tmp_path / ("b-" + precision), name="conv", version=1, model_path=model, precision=precision,
                       inputs=[TensorSpec("x", "float32", ("N", 6, 8, 8))],
                       outputs=[TensorSpec("y", "float32", ("N", 4, 8, 8))], reference_inputs={"x": x},
                       reference_outputs={"y": y})


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_and_run_matches_onnxruntime(tmp_path, conv_model, precision, keypair):
    import tensorrt as trt
    # weights scaled so outputs are O(1): the fp16 tolerance (1e-2) is absolute
    bundle = _bundle(tmp_path, conv_model(tmp_path / "m.onnx", weight_scale=0.1), "fp32")
    cache = tmp_path / "timing.cache"
    report = build_plan(bundle, "gpu-host", precision=precision, timing_cache=cache, key=keypair[0])
    assert cache.stat().st_size > 0 and report.signed_by
    opened = Bundle.open(bundle.path, trusted_keys=[keypair[1]])
    plan = opened.file_path(report.entry.file).read_bytes()
    header = read_plan_header(plan)
    if tuple(int(v) for v in trt.__version__.split(".")[:2]) >= (8, 6):  # the documented layout; check it for real
        assert header.recognised and same_release(header.trt_version, trt.__version__), header
    result = compare_backends(opened, ("onnxrt", "tensorrt"), precision=precision)
    assert result.passed, result.format()
    with runner_for(opened, "tensorrt") as runner:
        for batch in (1, 3):
            out = runner.infer({"x": np.ones((batch, 6, 8, 8), np.float32)})
            assert out["y"].shape == (batch, 4, 8, 8)


def test_int8_from_qdq_matches_onnxruntime(tmp_path):
    bundle = _bundle(tmp_path, qdq_conv_model(tmp_path / "q.onnx"), "int8")
    report = build_plan(bundle, "gpu-host", precision="int8")
    result = compare_backends(Bundle.open(bundle.path), ("onnxrt", "tensorrt"))
    assert report.entry.precision == "int8" and result.passed, result.format()


def test_plan_for_another_sm_is_refused_before_deserializing(tmp_path, conv_model, plan_bytes):
    import tensorrt as trt
    bundle = _bundle(tmp_path, conv_model(tmp_path / "m.onnx"), "fp32")
    major, minor, patch = (int(v) for v in trt.__version__.split(".")[:3])
    alien = PlanEntry("plans/alien.plan", "5.0", trt.__version__, "fp32", None)
    bundle = add_plan(bundle, plan_bytes(major, minor, patch, 0, payload=b"not an engine"), alien)
    with pytest.raises(PlanIncompatible, match=r"SM 5\.0"):
        runner_for(bundle, "tensorrt", plan="plans/alien.plan").activate()
