"""Shared fixtures of the engines tests: a tiny real ONNX model packed into a real bundle."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def write_conv_model(path, opset=13, ir_version=7, seed=0, weight_scale=1.0):
    """Write a Conv(6->4, 3x3, pad 1) + Relu model on (N, 6, 8, 8) float32 input to ``path``."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((weight_scale * rng.standard_normal((4, 6, 3, 3))).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])],
        "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    onnx.save(model, str(path))
    return path


@pytest.fixture
def make_bundle(tmp_path):
    """Return ``make(name="b", **overrides) -> Bundle`` packing the conv model with ORT reference outputs."""
    import onnxruntime as ort

    from engines.bundle import pack_bundle
    from engines.manifest import TensorSpec

    def make(name="b", extra_files=None, **kw):
        model = write_conv_model(tmp_path / (name + "-src.onnx"))
        x = np.random.default_rng(1).standard_normal((2, 6, 8, 8)).astype(np.float32)
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        args = dict(name="cloudmask", version=3, model_path=model, precision="fp32",
                    inputs=[TensorSpec("x", "float32", ("N", 6, 8, 8))],
                    outputs=[TensorSpec("y", "float32", ("N", 4, 8, 8))],
                    reference_inputs={"x": x}, reference_outputs={"y": sess.run(["y"], {"x": x})[0]},
                    metrics={"miou": 0.81}, targets=["orin-jp6"],
                    extra_files={"labels/classes.txt": b"clear\ncloud\n"} if extra_files is None else extra_files)
        args.update(kw)
        return pack_bundle(tmp_path / name, **args)

    return make


@pytest.fixture
def keypair(tmp_path):
    """A fresh ed25519 key pair ``(private_path, public_path)``."""
    from engines.signing import generate_keypair
    return generate_keypair(tmp_path / "keys", name="lab")


def fake_plan(major=10, minor=3, patch=0, build=26, payload=b"\x00" * 64):
    """Bytes laid out like a serialized TensorRT plan header (see docs/bundle.md, "Plan header").

    The layout (uint32 tag 0x74727466 at 0, uint32 container version 0 at 4, version bytes at
    24..27) is taken from NVIDIA's trtexec source (printPlanVersion); it was not checked against
    a real plan on this host. These bytes are not a loadable engine and are never given to TensorRT.
    """
    import struct
    head = struct.pack("<II", 0x74727466, 0) + b"\x00" * 16 + bytes([major, minor, patch, build])
    return head + payload


@pytest.fixture
def plan_bytes():
    """The ``fake_plan`` helper, as a fixture (test modules do not import conftest)."""
    return fake_plan


@pytest.fixture
def conv_model():
    """The ``write_conv_model(path, opset=13, ir_version=7)`` helper, as a fixture."""
    return write_conv_model
