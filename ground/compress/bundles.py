"""Engine bundles of compressed variants (:func:`engines.bundle.pack_bundle`), signed on request.

One bundle per exported variant: ``bundles/<model>-<track>-<variant>`` with the variant's ONNX
(Q/DQ for INT8), input specs carrying the normalization the onboard preprocessing applies,
reference vectors computed by ONNX Runtime from the first evaluation samples, validation
metrics (finite numbers only), the targets whose precisions and opset match, and a
``compression`` manifest field: variant, kind, parent, per-layer precision, opset, recipe and
the BOPs convention. The manifest precision is ``int8`` when any layer is INT8 (TensorRT then
builds with the INT8 and FP16 flags for a hybrid plan), ``fp16`` when only FP16 layers are
present, else ``fp32``. With a private key (``sign_key``) the manifest is signed with ed25519
(:func:`engines.signing.sign_bundle`).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from engines.bundle import pack_bundle
from ground.compress.qdq import session
from ground.compress.variant import Context, Variant

BOPS_CONVENTION = "BOPs = sum over Conv/Linear of MACs x weight bits x activation bits, per input sample"


def manifest_precision(v: Variant) -> str:
    """``int8``, ``fp16`` or ``fp32`` for the manifest (see the module docstring)."""
    used = set(v.precision.values())
    return "int8" if "int8" in used else "fp16" if "fp16" in used else "fp32"


def _metrics(record: Dict) -> Dict[str, float]:
    out = {}
    for split, ms in record.get("metrics", {}).items():
        for k, val in ms.items():
            if isinstance(val, (int, float)) and math.isfinite(val):
                out[f"{split}.{k}"] = float(val)
    for k in ("params", "macs", "bops", "size_bytes"):
        out[k] = float(record["cost"][k])
    out["file_bytes"] = float(record["file_bytes"])
    lat = record.get("latency") or {}
    if "median_ms" in lat:
        out["cpu_latency_median_ms"], out["cpu_latency_p90_ms"] = lat["median_ms"], lat["p90_ms"]
    return out


def pack_variant(ctx: Context, v: Variant, record: Dict, folder: Path, model_name: str, recipe_name: str,
                 version: int = 1, sign_key: Optional[str] = None) -> Dict:
    """Pack (and sign) the bundle of an exported variant; returns ``{"path", "key_id"}``."""
    task, split = ctx.task, next(iter(ctx.data.evals.values()))
    inputs, outputs = task.specs(ctx.data)
    ref_in = {k: np.ascontiguousarray(split.inputs[k][:2], dtype=np.float32) for k in task.input_names}
    ref_out = dict(zip(task.output_names, session(record["onnx"]).run(list(task.output_names), ref_in)))
    name = re.sub(r"[^A-Za-z0-9._-]", "-", f"{model_name}-{ctx.track_name}-{v.name}")
    extra = {"compression": {"variant": v.name, "kind": v.kind, "parent": v.parent, "track": ctx.track_name,
                             "layer_precision": dict(v.precision), "opset": record["opset"],
                             "ir_version": record["ir_version"], "recipe": recipe_name,
                             "bops_convention": BOPS_CONVENTION}}
    files = {"compression.json": json.dumps({"record": {k: record[k] for k in ("metrics", "cost")
                                                        if k in record}}, default=float, indent=1).encode()}
    bundle = pack_bundle(folder / name, name=name, version=version, model_path=record["onnx"],
                         precision=manifest_precision(v), inputs=inputs, outputs=outputs, reference_inputs=ref_in,
                         reference_outputs={k: np.asarray(a, dtype=np.float32) for k, a in ref_out.items()},
                         metrics=_metrics(record), extra_files=files, targets=record["targets"], overwrite=True,
                         manifest_extra=extra)
    key_id = None
    if sign_key:
        from engines.signing import sign_bundle
        key_id = sign_bundle(bundle.path, sign_key)
    return {"path": str(bundle.path), "key_id": key_id}
