"""Hybrid precision: per convolution INT8 or FP16, and GHOST k-means widths reported as simulated.

Two criteria per convolution ``l`` of the parent (BatchNorm folded):

1. **Measured sensitivity**: the parent with only ``l`` in INT8 (calibrated input, per-channel
   weights) is evaluated on the *validation* split; ``drop_l`` is the primary metric's loss in
   points against the float parent. We also record the output's relative squared error.
2. **GHOST k-means criterion** (our reading of GHOST's hybrid bit-widths): the layer's weights
   are clustered by 1-D k-means into ``2^n`` groups for ``n = min_bits..max_bits``; the layer's
   width is the smallest ``n`` whose mean clustering error ``mean|w - c(w)| / mean|w|`` (relative
   to the mean weight magnitude: the paper's normalisation is not public) is below
   ``kmeans_threshold`` (0.1). No ``n <= 8`` passing means the layer needs more than 8 bits.

A layer runs INT8 when ``drop_l <= budget_points``, its GHOST width is at most 8 and (with
``max_rel_error`` set) its output relative squared error is at most that (1e-4 = 40 dB SQNR),
FP16 otherwise; then, while the whole plan loses more than ``total_budget_points`` on validation,
the INT8 layer with the largest ``drop_l`` moves to FP16. Deployable precisions are what
TensorRT builds (INT8 and FP16; the DLA runs INT8/FP16 only).

The ``NAME-sim`` variant replaces each layer's weights by its ``2^n`` k-means centroids with
INT8 inputs: a *simulated* model (no Jetson engine runs sub-8-bit weights), evaluated in torch
only and reported with ``n``-bit weights in size and BOPs, flagged as simulated.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ground.compress.fakequant import conv_layers, fold_bn, simulate
from ground.compress.ptq import calibrate
from ground.compress.steps import HybridStep
from ground.compress.tasks.base import predict_torch
from ground.compress.variant import Context, Variant


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 30) -> Tuple[np.ndarray, np.ndarray]:
    """1-D k-means (Lloyd, quantile start); returns ``(centroids (k,), assignment (N,))``."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    k = max(1, min(k, len(np.unique(v))))
    c = np.quantile(v, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        edges = (c[1:] + c[:-1]) / 2
        a = np.searchsorted(edges, v)
        sums, counts = np.bincount(a, v, minlength=k), np.bincount(a, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        if np.allclose(new, c):
            break
        c = np.sort(new)
    flat = np.asarray(values, dtype=np.float64).ravel()
    return c, np.searchsorted((c[1:] + c[:-1]) / 2, flat)


def ghost_bits(weight: np.ndarray, threshold: float = 0.1, min_bits: int = 2,
               max_bits: int = 8) -> Tuple[Optional[int], Dict[int, float]]:
    """Smallest ``n`` whose ``2^n``-cluster k-means has mean relative error under ``threshold``.

    Returns
    -------
    (int or None, dict)
        The width (None when none up to ``max_bits`` passes) and the error of every ``n`` tried.
    """
    w = np.asarray(weight, dtype=np.float64).ravel()
    scale = max(float(np.mean(np.abs(w))), 1e-12)
    errors = {}
    for n in range(min_bits, max_bits + 1):
        c, a = kmeans_1d(w, 2 ** n)
        errors[n] = float(np.mean(np.abs(w - c[a])) / scale)
        if errors[n] < threshold:
            return n, errors
    return None, errors


def cluster_weights(model: torch.nn.Module, bits: Dict[str, int]) -> torch.nn.Module:
    """Folded copy of ``model`` with each listed layer's weights replaced by ``2^n`` k-means centroids."""
    out = fold_bn(model)
    modules = dict(out.named_modules())
    with torch.no_grad():
        for name, n in bits.items():
            w = modules[name].weight
            c, a = kmeans_1d(w.numpy(), 2 ** n)
            modules[name].weight.copy_(torch.from_numpy(c[a].reshape(w.shape)).to(w.dtype))
    return out


def _rel_error(task, model, ref, split) -> float:
    out = predict_torch(task, model, split)[task.output_names[0]]
    r = ref[task.output_names[0]]
    return float(np.sum((out - r) ** 2) / max(np.sum(r ** 2), 1e-30))


def run_hybrid(ctx: Context, step: HybridStep) -> List[Variant]:
    """The hybrid INT8/FP16 variant and (``simulate``) the GHOST-width simulated variant."""
    t0 = time.perf_counter()
    parent, task, val = ctx.variants[step.from_], ctx.task, ctx.data.val
    scales = calibrate(parent.model, ctx.calib_batches(step.samples), ctx.forward, step.calibrator, step.percentile)
    base = parent.simulated()
    ref = predict_torch(task, base, val)
    m0 = task.metrics(ref, val)[task.primary]
    folded = dict(fold_bn(parent.model).named_modules())
    table, plan, bits = {}, {}, {}
    for name in conv_layers(parent.model):
        one = simulate(parent.model, {name: "int8"}, scales)
        drop = 100 * (m0 - ctx.val_metrics(one)[task.primary])
        rel = _rel_error(task, one, ref, val)
        n, errors = ghost_bits(folded[name].weight.detach().numpy(), step.kmeans_threshold, step.min_bits,
                               step.max_bits)
        ok_err = step.max_rel_error is None or rel <= step.max_rel_error
        plan[name] = "int8" if drop <= step.budget_points and n is not None and ok_err else "fp16"
        if n is not None:
            bits[name] = n
        table[name] = {"drop_points": drop, "rel_error": rel, "ghost_bits": n,
                       "kmeans_error": errors, "params": int(folded[name].weight.numel())}
    total = 100 * (m0 - ctx.val_metrics(simulate(parent.model, plan, scales))[task.primary])
    while total > step.total_budget_points and any(p == "int8" for p in plan.values()):
        worst = max((n for n, p in plan.items() if p == "int8"), key=lambda n: table[n]["drop_points"])
        plan[worst] = "fp16"
        total = 100 * (m0 - ctx.val_metrics(simulate(parent.model, plan, scales))[task.primary])
    for name, p in plan.items():
        table[name]["decision"] = p
    info = {"val_metric": m0, "val_drop_points": total, "layers": table, "calibrator": step.calibrator,
            "budget_points": step.budget_points, "kmeans_threshold": step.kmeans_threshold,
            "max_rel_error": step.max_rel_error}
    out = [Variant(step.name, "hybrid", parent.model, parent=step.from_, precision=plan, act_scales=scales,
                   seconds=time.perf_counter() - t0, info=info)]
    if step.simulate:
        sim_bits = {n: b for n, b in bits.items()}
        clustered = cluster_weights(parent.model, sim_bits)
        precision = {n: ("int8" if n in sim_bits else "fp16") for n in conv_layers(parent.model)}
        out.append(Variant(f"{step.name}-sim", "hybrid-sim", clustered, parent=step.from_, precision=precision,
                           act_scales=scales, weight_bits=sim_bits, clustered=list(sim_bits), deployable=False,
                           export=False, seconds=time.perf_counter() - t0,
                           info={"simulated": True, "weight_bits": sim_bits,
                                 "note": "k-means weights at GHOST widths, INT8 inputs; simulated in torch only"}))
    return out
