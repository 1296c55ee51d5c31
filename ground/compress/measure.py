"""Measuring a variant: cost, ONNX export and checks, accuracy on every split, CPU latency.

For each deployable variant the engine file is what gets measured: the float graph is exported
at the opset its targets read, rewritten to Q/DQ (:mod:`ground.compress.qdq`), gated by
:func:`ground.quantize.check_qdq` (zero points 0, per-channel INT8 weights), checked against
the torch model with the same numerics within the task's tolerances, and its accuracy is
measured in ONNX Runtime. Simulated and coreset variants are measured in torch.

Opset and IR version per variant: the lowest ``max_opset`` / ``max_ir_version`` among the
recipe's targets that support the variant's precisions (INT8 needs a target with INT8; TX2 has
none), so one file serves all of them; each such target's check (:func:`engines.targets.check_onnx_for_target`)
must pass. A variant no target supports is still exported (opset 13) for evaluation, with no target.

Latency: ONNX Runtime, CPU, ``threads`` intra-op threads; all variants' sessions run the same
input in interleaved rounds (so a shared machine's drift hits all alike); median and 90th
percentile per call in milliseconds.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import onnx
from torch import nn

from engines.targets import check_onnx_for_target, get_profile
from ground.compress.fakequant import fold_bn
from ground.compress.flops import model_cost, trained_parameters
from ground.compress.qdq import MAX_OPSET, MIN_QDQ_OPSET, compare, export_float, session, write_qdq
from ground.compress.tasks.base import predict_onnx, predict_torch
from ground.compress.variant import Context, Variant
from ground.quantize import check_qdq


def export_plan(variant: Variant, targets: List[str]) -> Dict:
    """Opset, IR version and targets of a variant's ONNX (see the module docstring)."""
    need = {p for p in variant.precision.values() if p != "fp32"}
    eligible = [t for t in targets if need <= set(get_profile(t).precisions)]
    profiles = [get_profile(t) for t in eligible]
    opset = min([p.max_opset for p in profiles] or [MIN_QDQ_OPSET])
    opset = int(np.clip(opset, MIN_QDQ_OPSET, MAX_OPSET))
    ir = min([p.max_ir_version for p in profiles] or [8])
    ir = max(ir, onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)]))
    note = "" if eligible else f"no recipe target runs {sorted(need)}; exported for evaluation only"
    return {"opset": opset, "ir_version": int(ir), "targets": eligible, "note": note}


def export_variant(ctx: Context, v: Variant, folder: Path, targets: List[str]) -> Dict:
    """Export, rewrite to Q/DQ, check and compare with torch; returns the record's ONNX part."""
    task, split = ctx.task, next(iter(ctx.data.evals.values()))
    plan = export_plan(v, targets)
    folded = fold_bn(v.model)
    float_path = folder / f"{v.name}-float.onnx"
    export_float(task.deploy(folded), task.example(split, 2), float_path, task.input_names, task.output_names,
                 plan["opset"], plan["ir_version"], model_name=f"{task.name}:{v.name}")
    path = float_path
    rec: Dict = {**plan, "float_onnx": str(float_path)}
    if v.quantized:
        path = folder / f"{v.name}.onnx"
        weights = {n: m.weight.detach().numpy() for n, m in folded.named_modules() if isinstance(m, nn.Conv2d)}
        write_qdq(float_path, path, v.precision, v.act_scales, weights)
        rep = check_qdq(path)
        rec["qdq"] = {"ok": True, "quantize_nodes": rep.quantize_nodes, "dequantize_nodes": rep.dequantize_nodes,
                      "per_channel_convs": len(rep.per_channel_convs), "float_convs": len(rep.float_convs)}
    rec["target_checks"] = {}
    for t in plan["targets"]:
        check_onnx_for_target(path, t)
        rec["target_checks"][t] = "ok"
    n = max(4, task.latency_samples) if task.latency_samples > 1 else 4
    sample = split.subset(np.arange(min(n, len(split))))
    ref = predict_torch(task, v.simulated(), sample)
    got = predict_onnx(task, session(path), sample)
    atol, rtol, frac = task.tolerance["quantized" if v.quantized else "float"]
    rec["verify"] = compare(got, ref, atol, rtol, frac, task.tolerant_outputs)
    if not rec["verify"]["ok"]:          # recorded and reported (and the command exits 1), not hidden
        import logging
        logging.getLogger(__name__).warning("%s: ONNX Runtime output differs from torch beyond tolerance: %s",
                                            v.name, rec["verify"])
    rec.update(onnx=str(path), file_bytes=path.stat().st_size)
    return rec


def evaluate(ctx: Context, v: Variant, onnx_path: Optional[str], references: Dict) -> Dict:
    """Metrics of a variant on every evaluation split (ONNX Runtime when exported, else torch).

    ``references`` holds the FP32 outputs of unlabelled splits (filled when ``v`` is ``fp32``).
    """
    task, out = ctx.task, {}
    sess = session(onnx_path) if onnx_path else None
    model = None if sess else v.simulated()
    for name, split in ctx.data.evals.items():
        pred = predict_onnx(task, sess, split) if sess else predict_torch(task, model, split)
        if not split.labelled and v.name == "fp32":
            references[name] = pred
        out[name] = task.metrics(pred, split, references.get(name))
    return out


def latency(task, paths: Dict[str, str], split, runs: int = 40, warmup: int = 3, threads: int = 1) -> Dict:
    """Median and p90 ONNX Runtime CPU latency (ms per call) of each model, interleaved rounds."""
    feed = {k: np.ascontiguousarray(split.inputs[k][:task.latency_samples], dtype=np.float32)
            for k in task.input_names}
    sessions = {name: session(p, threads) for name, p in paths.items()}
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, feed)
    times = {name: [] for name in sessions}
    names = list(sessions)
    for r in range(runs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            sessions[name].run(None, feed)
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {name: {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
                   "samples_per_call": int(len(next(iter(feed.values())))), "threads": threads}
            for name, t in times.items()}


def cost_record(ctx: Context, v: Variant) -> Dict:
    """Parameters (trained and folded), MACs, FLOPs, BOPs, theoretical size and per-layer widths."""
    c = model_cost(v.model, ctx.task.run_one(next(iter(ctx.data.evals.values()))), v.precision, v.weight_bits)
    c["trained_params"] = trained_parameters(v.model)
    return c
