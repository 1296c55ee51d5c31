"""Helpers for the daemon tests: more tiny real ONNX engines, and starting a daemon with any settings.

The engines are real ONNX Runtime models built with ``onnx.helper`` (no fakes):

* ``landcover``: a 1x1 convolution to 4 classes, softmax, per-tile class fractions and their
  maximum (``confidence``, one value per tile: a tile attribute in a pipeline);
* ``cloudscreen-int8``: the conftest's tiny cloud model with symmetric INT8 Q/DQ on its input and
  weights (precision ``int8``), a stand-in for the lighter variant of the power policy.
"""
import atexit
import os
import signal
import time

import numpy as np
import zmq

from engines.bundle import pack_bundle
from engines.manifest import TensorSpec

TILE = 64
SCALE = [1.0 / 4095.0] * 6
_STARTED = []


@atexit.register
def _kill_leftovers():
    """Daemons of tests that failed before stopping them must not outlive the test session."""
    for proc in _STARTED:
        if proc.alive():
            proc.stop(timeout=5, sig=signal.SIGKILL)


def _save(graph, path):
    import onnx
    from onnx import helper
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _pack(root, name, model, precision, outputs, version=1):
    import onnxruntime as ort
    x = np.random.default_rng(1).random((2, 6, TILE, TILE), dtype=np.float32)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in outputs], sess.run(None, {"dn_norm": x})))
    return str(pack_bundle(
        os.path.join(root, f"{name}-v{version}"), name=name, version=version, model_path=model, precision=precision,
        inputs=[TensorSpec("dn_norm", "float32", ("N", 6, TILE, TILE),
                           {"source_dtype": "uint16", "scale": SCALE, "offset": [0.0] * 6})],
        outputs=outputs, reference_inputs={"dn_norm": x}, reference_outputs=ref).path)


def landcover_bundle(root):
    """A tiny 4-class land-cover engine (name ``landcover``, fp32)."""
    from onnx import TensorProto, helper
    w = np.array([[1, -1, 0, 0, 0, 0], [-1, 1, 0, 0, 0, 0], [0, 0, 1, -1, 0, 0], [0, 0, 0, 0, 1, -1]],
                 np.float32).reshape(4, 6, 1, 1) * 4.0
    nodes = [helper.make_node("Conv", ["dn_norm", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
             helper.make_node("ReduceMean", ["probs"], ["class_fraction"], axes=[2, 3], keepdims=0),
             helper.make_node("ReduceMax", ["class_fraction"], ["confidence"], axes=[1], keepdims=1)]
    graph = helper.make_graph(
        nodes, "tiny_landcover", [helper.make_tensor_value_info("dn_norm", TensorProto.FLOAT, ["N", 6, TILE, TILE])],
        [helper.make_tensor_value_info("class_fraction", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("confidence", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    model = os.path.join(root, "landcover.onnx")
    _save(graph, model)
    return _pack(root, "landcover", model, "fp32", [TensorSpec("class_fraction", "float32", ("N", 4)),
                                                     TensorSpec("confidence", "float32", ("N", 1))])


def cloud_bundle(root, name="cloudscreen-int8", version=1, int8=True):
    """The tiny cloud model, with INT8 Q/DQ on its input and weights (precision int8) or plain (fp32)."""
    from onnx import TensorProto, helper
    q = [helper.make_node("QuantizeLinear", ["dn_norm", "xs", "xz"], ["xq"]),
         helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
         helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0)] if int8 else []
    nodes = q + [helper.make_node("Conv", ["xd" if int8 else "dn_norm", "w", "b"], ["logit"]),
                 helper.make_node("Sigmoid", ["logit"], ["mask"]),
                 helper.make_node("ReduceMean", ["mask"], ["cloud_fraction"], axes=[2, 3], keepdims=0)]
    weights = [helper.make_tensor("xs", TensorProto.FLOAT, [], [1.0 / 127]),
               helper.make_tensor("xz", TensorProto.INT8, [], [0]),
               helper.make_tensor("wq", TensorProto.INT8, [1, 6, 1, 1], [127] * 6),
               helper.make_tensor("ws", TensorProto.FLOAT, [1], [2.0 / 127]),
               helper.make_tensor("wz", TensorProto.INT8, [1], [0])] if int8 else \
        [helper.make_tensor("w", TensorProto.FLOAT, [1, 6, 1, 1], [2.0] * 6)]
    graph = helper.make_graph(
        nodes, "tiny_cloud", [helper.make_tensor_value_info("dn_norm", TensorProto.FLOAT, ["N", 6, TILE, TILE])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, TILE, TILE]),
         helper.make_tensor_value_info("cloud_fraction", TensorProto.FLOAT, ["N", 1])],
        weights + [helper.make_tensor("b", TensorProto.FLOAT, [1], [-1.0])])
    model = os.path.join(root, f"{name}-v{version}.onnx")
    _save(graph, model)
    return _pack(root, name, model, "int8" if int8 else "fp32", [TensorSpec("mask", "float32", ("N", 1, TILE, TILE)),
                                                                  TensorSpec("cloud_fraction", "float32", ("N", 1))],
                 version=version)


def cloud_int8_bundle(root):
    """The tiny cloud model with INT8 Q/DQ (name ``cloudscreen-int8``, int8)."""
    return cloud_bundle(root)


def start_daemon(tmp_path, name="daemon", **kw):
    """Start a daemon process on fresh ports with test-friendly defaults overridden by ``kw``.

    A port found free can be taken by another process before the daemon binds it; then the
    daemon exits with ``BIND_FAILED`` and is started again on new ports.
    """
    from engines.errors import UserError
    from onboard.settings import DaemonSettings
    from sim.processes import DaemonProcess, free_tcp_endpoint
    for attempt in range(3):
        base = dict(workdir=str(tmp_path / name), sensor_endpoint=free_tcp_endpoint(),
                    results_endpoint=free_tcp_endpoint(), control_endpoint=free_tcp_endpoint(),
                    heartbeat_endpoint=free_tcp_endpoint(), ack_endpoint=free_tcp_endpoint(),
                    max_payload_bytes=4 * 1024 * 1024, intra_op_threads=1, heartbeat_interval_s=0.2,
                    drain_timeout_s=20)
        base.update(kw)
        proc = DaemonProcess(DaemonSettings.from_mapping(base), str(tmp_path / f"{name}.yaml"))
        _STARTED.append(proc)
        try:
            proc.wait_ready(60)
            return proc
        except UserError:
            if proc.proc.returncode != 11 or attempt == 2:       # exitcodes.BIND_FAILED
                raise


def restart(proc, tmp_path, name="daemon"):
    """Start the same settings again (same workdir and endpoints) after ``proc`` exited."""
    from sim.processes import DaemonProcess
    new = DaemonProcess(proc.settings, str(tmp_path / f"{name}.yaml"))
    _STARTED.append(new)
    new.wait_ready(60)
    return new


def frame(i, size=128, stream="msi", value=None, **fields):
    """A uint16 frame: random DN, or ``value`` everywhere (0: clear for the tiny cloud model, 4095: cloudy)."""
    from onboard.wire import make_frame
    if value is None:
        data = np.random.default_rng(i).integers(0, 4096, (6, size, size), dtype=np.uint16)
    else:
        data = np.full((6, size, size), value, np.uint16)
    return make_frame(data, stream=stream, frame_id=i, **fields)


def push_socket(endpoint):
    """A PUSH socket connected to a daemon's sensor endpoint."""
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(endpoint)
    return sock


def wait_for(pred, timeout=30.0, every=0.1, what="condition"):
    """Poll ``pred()`` until it returns a truthy value; return it, or fail with ``what``."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what} not reached within {timeout} s; last value {last!r}")
