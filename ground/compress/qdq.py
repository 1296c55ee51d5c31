"""ONNX export of a compressed variant in the symmetric per-channel Q/DQ form TensorRT reads.

:func:`export_float` writes the BN-folded float model with the legacy TorchScript exporter at a
target's opset (11..20; per-channel ``DequantizeLinear`` needs 13 or newer), pins the IR version
and runs ``onnx.checker``. :func:`write_qdq` then rewrites that graph with the variant's
precision plan:

* an INT8 ``Conv`` gets ``QuantizeLinear -> DequantizeLinear`` on its input (per tensor, int8
  zero point 0, the calibrated or QAT scale) and ``DequantizeLinear(axis=0)`` on an int8 weight
  initializer with one scale per output channel (``max|w_c| / 127``) and int8 zero points 0; the
  bias stays float (TensorRT 8.2's parser does not take an INT32 ``DequantizeLinear`` bias);
* an FP16 ``Conv`` keeps float32 storage with its weights rounded to float16 (TensorRT converts
  it at build time with the FP16 flag; ONNX Runtime on a CPU runs it in float32);
* everything else is untouched.

Q/DQ sit only on the inputs of weighted ops (the placement TensorRT's explicit-quantization
guide recommends); outputs stay float, so TensorRT decides where to fuse. Each layer's weight is
found by its initializer name (``<prefix><layer>.weight``: the folded model keeps parameter
names) or, failing that, by value. :func:`ground.quantize.check_qdq` is the gate afterwards.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from engines.errors import UserError
from ground.export import _inline_identity_initializers
from ground.compress.fakequant import QMAX, QMIN

#: Lowest opset with per-channel DequantizeLinear.
MIN_QDQ_OPSET = 13
#: Highest opset the legacy TorchScript exporter writes.
MAX_OPSET = 20


def export_float(module: torch.nn.Module, example: Sequence[torch.Tensor], path, input_names: Sequence[str],
                 output_names: Sequence[str], opset: int = 13, ir_version: int = 8, dynamic_batch: bool = True,
                 model_name: str = "") -> str:
    """Export an eval-mode module to ONNX (float) and check it.

    Parameters
    ----------
    module : torch.nn.Module
        Called as ``module(*example)``; fold BatchNorm beforehand to keep parameter names.
    example : sequence of torch.Tensor
    path : str or os.PathLike
    input_names, output_names : sequence of str
    opset : int
        Default-domain opset (13..20).
    ir_version : int
    dynamic_batch : bool
        Axis 0 of every input and output named ``N``.
    model_name : str
        Stored in ``metadata_props`` (``satedge.model``).

    Returns
    -------
    str
        ``path``.
    """
    if not MIN_QDQ_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"opset {opset} was asked; compressed models are written at opsets {MIN_QDQ_OPSET}.."
                        f"{MAX_OPSET} (per-channel Q/DQ needs 13). Choose targets whose max opset is in that range.")
    axes = {n: {0: "N"} for n in list(input_names) + list(output_names)} if dynamic_batch else None
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), tuple(example), buf, dynamo=False, opset_version=opset,
                          input_names=list(input_names), output_names=list(output_names), dynamic_axes=axes,
                          do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    _inline_identity_initializers(proto)
    proto.ir_version = ir_version
    helper.set_model_props(proto, {"satedge.exporter": "torchscript", "satedge.model": model_name})
    onnx.checker.check_model(proto, full_check=True)
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    onnx.save(proto, os.fspath(path))
    return os.fspath(path)


def _find_layers(proto: onnx.ModelProto, layers: Mapping[str, np.ndarray], prefix: str) -> Dict[str, onnx.NodeProto]:
    inits = {t.name: t for t in proto.graph.initializer}
    found = {}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    for layer in layers:
        node = next((n for n in convs if n.input[1] == f"{prefix}{layer}.weight"), None)
        if node is None:                                   # fall back to matching the weight's value
            for n in convs:
                t = inits.get(n.input[1])
                if t is not None and tuple(t.dims) == layers[layer].shape and n not in found.values() \
                        and np.array_equal(numpy_helper.to_array(t), layers[layer]):
                    node = n
                    break
        if node is None:
            raise RuntimeError(f"layer {layer}: no Conv node with its weight in the exported graph")
        found[layer] = node
    return found


def quantize_weight_np(w: np.ndarray):
    """Per-channel symmetric INT8 weight: ``(int8 values, float32 scales)``, as :mod:`fakequant` does."""
    w = np.asarray(w, dtype=np.float32)
    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = (np.maximum(amax, np.float32(1e-12)) / np.float32(QMAX)).astype(np.float32)
    q = np.clip(np.round(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), QMIN, QMAX).astype(np.int8)
    return q, scale


def write_qdq(float_path, out_path, precision: Mapping[str, str], act_scales: Mapping[str, float],
              weights: Mapping[str, np.ndarray], prefix: str = "net.") -> Dict[str, str]:
    """Rewrite a float ONNX model with Q/DQ (INT8 layers) and FP16-rounded weights (FP16 layers).

    Parameters
    ----------
    float_path, out_path : str or os.PathLike
    precision : dict
        Layer -> ``"fp32"``, ``"fp16"`` or ``"int8"``.
    act_scales : dict
        Layer -> input scale of each INT8 layer.
    weights : dict
        Layer -> folded float weight (to find a layer by value when its name was not kept).
    prefix : str
        Prefix of the layer names in the exported graph (the export wrapper's attribute).

    Returns
    -------
    dict
        Layer -> ONNX Conv node name.
    """
    proto = onnx.load(os.fspath(float_path))
    for i, n in enumerate(proto.graph.node):
        n.name = n.name or f"{n.op_type}_{i}"
    wanted = {n: weights[n] for n, p in precision.items() if p in ("int8", "fp16") and n in weights}
    nodes = _find_layers(proto, wanted, prefix)
    inits = {t.name: t for t in proto.graph.initializer}
    new_inits, before = [], {}
    for layer, node in nodes.items():
        w = numpy_helper.to_array(inits[node.input[1]])
        if precision[layer] == "fp16":
            t = numpy_helper.from_array(w.astype(np.float16).astype(np.float32), node.input[1])
            inits[node.input[1]].CopyFrom(t)
            continue
        q, scale = quantize_weight_np(w)
        s_a = np.float32(act_scales[layer])
        names = {k: f"{layer}.{k}" for k in ("input_scale", "input_zero_point", "input_q", "input_dq",
                                              "weight_int8", "weight_scale", "weight_zero_point", "weight_dq")}
        new_inits += [numpy_helper.from_array(np.array(s_a, dtype=np.float32), names["input_scale"]),
                      numpy_helper.from_array(np.array(0, dtype=np.int8), names["input_zero_point"]),
                      numpy_helper.from_array(q, names["weight_int8"]),
                      numpy_helper.from_array(scale, names["weight_scale"]),
                      numpy_helper.from_array(np.zeros(len(scale), np.int8), names["weight_zero_point"])]
        before[node.name] = [
            helper.make_node("QuantizeLinear", [node.input[0], names["input_scale"], names["input_zero_point"]],
                             [names["input_q"]], name=f"{layer}.input_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [names["input_q"], names["input_scale"], names["input_zero_point"]],
                             [names["input_dq"]], name=f"{layer}.input_DequantizeLinear"),
            helper.make_node("DequantizeLinear", [names["weight_int8"], names["weight_scale"],
                                                  names["weight_zero_point"]], [names["weight_dq"]],
                             name=f"{layer}.weight_DequantizeLinear", axis=0)]
        node.input[0], node.input[1] = names["input_dq"], names["weight_dq"]
    order = []
    for node in proto.graph.node:
        kept = onnx.NodeProto()
        kept.CopyFrom(node)
        order += before.get(node.name, []) + [kept]
    del proto.graph.node[:]
    proto.graph.node.extend(order)
    used = {i for n in proto.graph.node for i in n.input}
    keep = []
    for t in proto.graph.initializer:
        if t.name in used:
            keep.append(onnx.TensorProto())
            keep[-1].CopyFrom(t)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep + new_inits)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, os.fspath(out_path))
    return {layer: node.name for layer, node in nodes.items()}


def session(path, threads: int = 1):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and quiet logs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    return ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])


def compare(ort_out: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], atol: float, rtol: float,
            frac: float = 0.0, tolerant: Optional[Mapping[str, float]] = None, outlier: float = 5.0) -> Dict:
    """ONNX Runtime vs torch outputs against ``bound = atol + rtol * max|ref|``.

    An output passes when at most a fraction ``frac`` of its elements (``tolerant[name]`` for
    thresholded outputs such as a cloud fraction, where one near-threshold pixel flips) exceed
    ``bound`` and none exceeds ``outlier * bound`` (thresholded outputs: no outlier limit). For
    quantized graphs ``frac`` > 0 admits one-step rounding differences of intermediate INT8
    activations (ONNX Runtime requantizes in integer arithmetic, torch in float; the engine on
    the target differs in the same way), which a squared-error score can amplify locally.

    Returns
    -------
    dict
        ``ok`` and per output ``max_abs``, ``bound`` and ``frac_over``.
    """
    out, ok = {}, True
    for name, r in ref.items():
        a, r = np.asarray(ort_out[name], dtype=np.float64), np.asarray(r, dtype=np.float64)
        bound = atol + rtol * float(np.max(np.abs(r))) if r.size else atol
        diff = np.abs(a - r)
        over = float(np.mean(diff > bound)) if diff.size else 0.0
        thresholded = name in (tolerant or {})
        allowed = (tolerant or {}).get(name, frac)
        worst = float(diff.max()) if diff.size else 0.0
        ok &= over <= allowed and (thresholded or worst <= outlier * bound)
        out[name] = {"max_abs": worst, "bound": bound, "frac_over": over}
    return {"ok": bool(ok), "atol": atol, "rtol": rtol, "frac_allowed": frac, "outlier_factor": outlier,
            "outputs": out}
