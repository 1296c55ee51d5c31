"""INT8 post-training quantization into the symmetric Q/DQ form TensorRT reads.

:func:`quantize_int8` runs ONNX Runtime's static quantization with explicit
QuantizeLinear/DequantizeLinear pairs (``QuantFormat.QDQ``), signed INT8 for weights and
activations, *symmetric* ranges (zero point 0: TensorRT 8.x rejects non-zero zero points) and
per-channel weights (axis 0 of each Conv weight). Only ``Conv`` is quantized: the convolutions
hold almost all the arithmetic, and the rest of the graph (MaxPool, Resize, Concat, Add, Sigmoid
and the ``cloud_fraction`` reduction) stays in float, which TensorRT fuses or runs in FP16/FP32
around the INT8 convolutions. Conv biases stay float (``QuantizeBias=False``): an INT32
DequantizeLinear on a bias is not something TensorRT 8.2's parser accepts.

:func:`check_qdq` is the gate before a bundle is packed: every Q/DQ zero point must be 0, every
quantized tensor signed 8-bit, and every Conv weight per-channel on axis 0.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import List

import numpy as np
import onnx
from onnx import numpy_helper

from engines.errors import UserError

#: Calibration methods by name.
METHODS = ("minmax", "entropy", "percentile")
#: Op types that get Q/DQ.
QUANTIZED_OPS = ("Conv",)


class _DropPreprocessHint(logging.Filter):
    """Drop ONNX Runtime's "consider pre-processing" hint: the exporter already folded constants and BN."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


class ArrayCalibrationReader:
    """ONNX Runtime calibration data reader over a numpy array.

    Parameters
    ----------
    data : numpy.ndarray
        Normalized float32 (N, bands, H, W) calibration tiles.
    input_name : str
        The model's input name.
    batch : int
        Tiles per calibration batch.
    """

    def __init__(self, data: np.ndarray, input_name: str = "dn_norm", batch: int = 32):
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.input_name, self.batch, self._pos = input_name, int(batch), 0

    def get_next(self):
        """Return the next ``{input_name: batch}`` dict, or None when the array is exhausted."""
        if self._pos >= len(self.data):
            return None
        out = {self.input_name: self.data[self._pos:self._pos + self.batch]}
        self._pos += self.batch
        return out

    def rewind(self) -> None:
        """Start again from the first tile."""
        self._pos = 0


def quantize_int8(fp32_path, int8_path, calibration: np.ndarray, *, method: str = "minmax"):
    """Quantize an FP32 ONNX model to symmetric per-channel INT8 Q/DQ.

    Parameters
    ----------
    fp32_path : str or os.PathLike
        The FP32 model (for example from :func:`ground.export.export_onnx`).
    int8_path : str or os.PathLike
        Where to write the Q/DQ model; opset and IR version are kept from the FP32 model.
    calibration : numpy.ndarray
        Normalized float32 (N, bands, H, W) tiles from the training distribution.
    method : {"minmax", "entropy", "percentile"}
        Calibration method of ONNX Runtime.

    Returns
    -------
    str or os.PathLike
        ``int8_path``, after :func:`check_qdq` passed on it.

    Raises
    ------
    UserError
        On an unknown method or empty or wrongly shaped calibration data.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in METHODS:
        raise UserError(f"calibration method {method!r} is unknown; choose one of {METHODS}.")
    calibration = np.asarray(calibration)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise UserError(f"calibration must be a non-empty (N, bands, H, W) array, got shape {calibration.shape}.")
    fp32 = onnx.load(os.fspath(fp32_path))
    input_name = fp32.graph.input[0].name
    calib_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile}[method]
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(int8_path))), exist_ok=True)
    hint = _DropPreprocessHint()
    logging.getLogger().addFilter(hint)
    try:
        quantize_static(
            os.fspath(fp32_path), os.fspath(int8_path), ArrayCalibrationReader(calibration, input_name),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=calib_method,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
    finally:
        logging.getLogger().removeFilter(hint)
    q = onnx.load(os.fspath(int8_path))
    opsets = {o.domain: o.version for o in fp32.opset_import}
    q_opset = {o.domain: o.version for o in q.opset_import}.get("", opsets.get(""))
    if q_opset != opsets.get(""):
        raise UserError(f"the quantizer changed the opset from {opsets.get('')} to {q_opset}; the target needs "
                        f"the original. Quantize with an onnxruntime that keeps it.")
    q.ir_version = fp32.ir_version
    onnx.checker.check_model(q, full_check=True)
    onnx.save(q, os.fspath(int8_path))
    check_qdq(int8_path)
    return int8_path


@dataclass
class QdqReport:
    """What :func:`check_qdq` found in a Q/DQ model.

    Attributes
    ----------
    quantize_nodes, dequantize_nodes : int
        Numbers of QuantizeLinear and DequantizeLinear nodes.
    per_channel_convs : list of str
        Conv nodes whose weight is per-channel INT8.
    float_convs : list of str
        Conv nodes left in float (no DequantizeLinear on the weight).
    """

    quantize_nodes: int = 0
    dequantize_nodes: int = 0
    per_channel_convs: List[str] = field(default_factory=list)
    float_convs: List[str] = field(default_factory=list)


def _const(model: onnx.ModelProto, name: str):
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def check_qdq(path) -> QdqReport:
    """Check that a Q/DQ model is in the symmetric per-channel form TensorRT accepts.

    Parameters
    ----------
    path : str or os.PathLike
        The quantized ONNX model.

    Returns
    -------
    QdqReport
        Counts and the per-channel Conv nodes.

    Raises
    ------
    UserError
        Naming the offending nodes when a zero point is not 0, a quantized type is not INT8, a
        zero point or scale is not a constant, or a Conv weight is not per-channel on axis 0.
    """
    model = onnx.load(os.fspath(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    report, problems = QdqReport(), []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type == "QuantizeLinear":
            report.quantize_nodes += 1
        else:
            report.dequantize_nodes += 1
        zp = _const(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is None:
            problems.append(f"{node.name}: no constant zero point (INT8 needs an explicit int8 zero point 0)")
        elif zp.dtype != np.int8 or np.any(zp != 0):
            problems.append(f"{node.name}: zero point {zp.ravel()[:4].tolist()} of type {zp.dtype} (needs int8 0)")
        if _const(model, node.input[1]) is None:
            problems.append(f"{node.name}: scale is not a constant")
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            report.float_convs.append(node.name)
            continue
        weight, scale = _const(model, dq.input[0]), _const(model, dq.input[1])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        out_ch = None if weight is None else weight.shape[0]
        if weight is None or scale is None or scale.ndim != 1 or axis != 0 or scale.shape[0] != out_ch:
            problems.append(f"{node.name}: weight not per-channel on axis 0 (DequantizeLinear {dq.name}: axis {axis}, "
                            f"scale shape {None if scale is None else scale.shape}, out channels {out_ch})")
        else:
            report.per_channel_convs.append(node.name)
    if problems:
        raise UserError(f"{path} is not symmetric per-channel INT8 Q/DQ as TensorRT needs: " + "; ".join(problems)
                        + ". Re-quantize with ground.quantize.quantize_int8 (symmetric, per_channel=True).")
    return report
