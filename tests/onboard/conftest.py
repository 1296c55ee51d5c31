"""Fixtures for the onboard tests: a tiny but real cloud-screen bundle and a running daemon."""
import os

import numpy as np
import pytest

from engines.bundle import pack_bundle
from engines.manifest import TensorSpec

TILE = 64


def _tiny_cloud_model(path):
    """A real ONNX model: cloud probability = sigmoid(mean brightness contrast), per pixel."""
    import onnx
    from onnx import TensorProto, helper
    w = np.full((1, 6, 1, 1), 2.0, dtype=np.float32)
    b = np.array([-1.0], dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["dn_norm", "w", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["mask"]),
        helper.make_node("Greater", ["mask", "half"], ["is_cloud"]),
        helper.make_node("Cast", ["is_cloud"], ["is_cloud_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["is_cloud_f"], ["frac4"], axes=[2, 3], keepdims=0),
        helper.make_node("Identity", ["frac4"], ["cloud_fraction"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cloud",
        [helper.make_tensor_value_info("dn_norm", TensorProto.FLOAT, ["N", 6, TILE, TILE])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, TILE, TILE]),
         helper.make_tensor_value_info("cloud_fraction", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
         helper.make_tensor("b", TensorProto.FLOAT, b.shape, b),
         helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A cloud-screen bundle (name "cloudscreen", v1, fp32) around a tiny real ONNX model."""
    import onnxruntime as ort
    root = tmp_path_factory.mktemp("bundle")
    model = str(root / "model.onnx")
    _tiny_cloud_model(model)
    scale = [1.0 / 4095.0] * 6
    x = np.random.default_rng(0).random((2, 6, TILE, TILE), dtype=np.float32)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    mask, frac = sess.run(None, {"dn_norm": x})
    bundle = pack_bundle(
        str(root / "cloudscreen"), name="cloudscreen", version=1, model_path=model, precision="fp32",
        inputs=[TensorSpec("dn_norm", "float32", ("N", 6, TILE, TILE),
                           {"source_dtype": "uint16", "scale": scale, "offset": [0.0] * 6})],
        outputs=[TensorSpec("mask", "float32", ("N", 1, TILE, TILE)),
                 TensorSpec("cloud_fraction", "float32", ("N", 1))],
        reference_inputs={"dn_norm": x}, reference_outputs={"mask": mask, "cloud_fraction": frac})
    return str(bundle.path)


@pytest.fixture
def daemon(tiny_bundle, tmp_path):
    """A daemon process serving the tiny bundle on fresh ports; stopped after the test."""
    from onboard.settings import DaemonSettings
    from sim.processes import DaemonProcess, free_tcp_endpoint
    settings = DaemonSettings(bundle=tiny_bundle, workdir=str(tmp_path / "daemon"),
                              sensor_endpoint=free_tcp_endpoint(), results_endpoint=free_tcp_endpoint(),
                              control_endpoint=free_tcp_endpoint(), heartbeat_endpoint=free_tcp_endpoint(),
                              max_payload_bytes=4 * 1024 * 1024, intra_op_threads=1,
                              heartbeat_interval_s=0.2, drain_timeout_s=20).validate()
    proc = DaemonProcess(settings, str(tmp_path / "daemon.yaml"))
    proc.wait_ready(60)
    yield proc
    if proc.alive():
        proc.stop(timeout=10)
