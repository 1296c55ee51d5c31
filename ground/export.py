"""ONNX export of CloudNet at the opset a Jetson target reads (TX2 / TensorRT 8.2: opset <= 13).

torch 2.13's default exporter is the dynamo one, which writes opset 18 or newer, and
``onnx.version_converter`` has no downward adapters for common ops (``Relu`` 14 -> 13 fails), so
a dynamo export cannot be lowered to 13. The exporter therefore tries, in order:

1. the legacy TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) at the requested
   opset; it writes opsets 11..20 directly (path ``"torchscript"``);
2. the dynamo exporter at ``max(opset, 18)``, lowered with ``onnx.version_converter`` when the
   requested opset is below 18 (path ``"dynamo"`` or ``"dynamo+version_converter"``).

If neither produces the requested opset a :class:`~engines.errors.UserError` names both what was
asked and what this toolchain can write. The model is exported in eval mode, so BatchNorm is
folded into the convolutions. The IR version is pinned (8 by default: ONNX Runtime >= 1.10 and
TensorRT 8.x read it), ``onnx.checker`` runs with ``full_check``, and ONNX Runtime's outputs are
compared with torch's (``mask`` within ``atol=1e-4``; ``cloud_fraction`` may differ only by the
pixels whose probability lies within 1e-4 of the threshold). The path used is recorded in the
model's ``metadata_props`` (``satedge.exporter``).
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from typing import Optional

import numpy as np
import onnx
import torch

from engines.errors import UserError

#: Lowest opset the exporter agrees to write (ReduceMean/Resize semantics used by CloudNet).
MIN_OPSET = 11
#: Highest opset the legacy TorchScript exporter writes.
LEGACY_MAX_OPSET = 20
#: Opset the dynamo exporter starts from.
DYNAMO_MIN_OPSET = 18
#: Tolerance of the ONNX Runtime vs torch check on ``mask``.
MASK_ATOL = 1e-4


def _legacy_export(model, x, opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    axes = {"dn_norm": {0: "N"}, "mask": {0: "N"}, "cloud_fraction": {0: "N"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=opset, input_names=["dn_norm"],
                          output_names=["mask", "cloud_fraction"], dynamic_axes=axes, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def _dynamo_export(model, x, opset: int) -> onnx.ModelProto:
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)  # "torchvision is not installed" notes: irrelevant here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prog = torch.onnx.export(model, (x,), None, dynamo=True, opset_version=max(opset, DYNAMO_MIN_OPSET),
                                     input_names=["dn_norm"], output_names=["mask", "cloud_fraction"],
                                     dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False)
        finally:
            registry_log.setLevel(level)
    proto = prog.model_proto
    if opset < DYNAMO_MIN_OPSET:
        from onnx import version_converter
        proto = version_converter.convert_version(proto, opset)
    return proto


def _inline_identity_initializers(proto: onnx.ModelProto) -> None:
    """Replace ``Identity(initializer)`` nodes (deduplicated constants) by copies of the initializer."""
    inits = {t.name: t for t in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    keep = []
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            proto.graph.initializer.append(copy)
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)


def _opset_of(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def verify_against_torch(model, path, sample: np.ndarray) -> float:
    """Run the exported model in ONNX Runtime and compare it with torch.

    Parameters
    ----------
    model : CloudNet
        The eval-mode torch model that was exported.
    path : str or os.PathLike
        The ONNX file.
    sample : numpy.ndarray
        float32 (N, bands, H, W) normalized input.

    Returns
    -------
    float
        The largest absolute difference on ``mask``.

    Raises
    ------
    RuntimeError
        When the outputs differ beyond :data:`MASK_ATOL` (an exporter bug, not a user error).
    """
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UserError(f"ONNX Runtime {ort.__version__} cannot load the exported {path}: {exc}. "
                        "Export at a lower opset (13 for TX2).") from exc
    mask, frac = sess.run(["mask", "cloud_fraction"], {"dn_norm": sample})
    with torch.no_grad():
        t_mask, t_frac = (t.numpy() for t in model(torch.from_numpy(sample)))
    err = float(np.max(np.abs(mask - t_mask)))
    near = np.mean(np.abs(t_mask - model.threshold) < MASK_ATOL, axis=(2, 3))
    if err > MASK_ATOL or np.any(np.abs(frac - t_frac) > near + 1e-6):
        raise RuntimeError(f"ONNX Runtime output of {path} differs from torch: max |mask diff| {err:.2e} "
                           f"(atol {MASK_ATOL}), cloud_fraction {frac.ravel()} vs {t_frac.ravel()}")
    return err


def export_onnx(model, path, *, tile: int = 64, bands: int = 6, opset: int = 13, ir_version: int = 8,
                sample: Optional[np.ndarray] = None):
    """Export a CloudNet to ONNX with a dynamic batch and check it against torch.

    Parameters
    ----------
    model : CloudNet
        The model; it is put in eval mode (BatchNorm folds into the convolutions).
    path : str or os.PathLike
        Output ``.onnx`` file; its folder is created.
    tile : int
        Tile height and width of the exported input.
    bands : int
        Input bands.
    opset : int
        ONNX opset of the default domain to write (13 for TX2 / TensorRT 8.2).
    ir_version : int
        ONNX IR version pinned in the file.
    sample : numpy.ndarray, optional
        float32 (N, bands, tile, tile) input for the ONNX Runtime check; a seeded random batch
        of 3 tiles when omitted.

    Returns
    -------
    str or os.PathLike
        ``path``. Input ``dn_norm`` float32 (N, bands, tile, tile); outputs ``mask``
        (N, 1, tile, tile) and ``cloud_fraction`` (N, 1).

    Raises
    ------
    UserError
        When the opset or IR version cannot be produced, naming what was asked and what is possible.
    """
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= max_opset:
        raise UserError(f"ONNX opset {opset} was asked; this exporter writes opsets {MIN_OPSET}..{max_opset} "
                        f"(TX2 / TensorRT 8.2 needs 13). Pass opset=13 or a value in that range.")
    min_ir = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
    if not min_ir <= ir_version <= onnx.IR_VERSION:
        raise UserError(f"IR version {ir_version} was asked for opset {opset}; it needs IR {min_ir}.."
                        f"{onnx.IR_VERSION} (onnx {onnx.__version__}). Pass ir_version={max(min_ir, 8)}.")
    model.eval()
    x = torch.zeros(2, bands, tile, tile)
    errors = []
    proto = None
    if opset <= LEGACY_MAX_OPSET:
        try:
            proto, how = _legacy_export(model, x, opset), "torchscript"
        except Exception as exc:  # the legacy exporter may be gone in a newer torch
            errors.append(f"legacy TorchScript exporter: {type(exc).__name__}: {exc}")
    if proto is None:
        try:
            proto = _dynamo_export(model, x, opset)
            how = "dynamo+version_converter" if opset < DYNAMO_MIN_OPSET else "dynamo"
        except Exception as exc:
            errors.append(f"dynamo exporter at opset {max(opset, DYNAMO_MIN_OPSET)}"
                          f"{' + onnx.version_converter' if opset < DYNAMO_MIN_OPSET else ''}: "
                          f"{type(exc).__name__}: {exc}")
            raise UserError(f"ONNX opset {opset} was asked but torch {torch.__version__} cannot produce it "
                            f"here (the dynamo exporter writes opset >= {DYNAMO_MIN_OPSET}); tried: "
                            + "; ".join(errors) + f". Use opset >= {DYNAMO_MIN_OPSET} or a torch with the "
                            "legacy exporter.") from exc
    _inline_identity_initializers(proto)
    if _opset_of(proto) != opset:
        raise UserError(f"ONNX opset {opset} was asked but the {how} exporter wrote opset {_opset_of(proto)}.")
    proto.ir_version = ir_version
    onnx.helper.set_model_props(proto, {"satedge.exporter": how, "satedge.model": type(model).__name__})
    onnx.checker.check_model(proto, full_check=True)
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    onnx.save(proto, os.fspath(path))
    if sample is None:
        sample = np.random.default_rng(0).standard_normal((3, bands, tile, tile)).astype(np.float32)
    verify_against_torch(model, path, np.ascontiguousarray(sample, dtype=np.float32))
    return path
