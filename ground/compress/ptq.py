"""Post-training quantization: activation calibrators and the INT8 variant they give.

Each INT8 convolution quantizes its *input* per tensor, symmetrically: ``scale = amax / 127``.
The calibrators choose ``amax`` from what the float (BN-folded) model sees on calibration data:

* ``minmax``: the largest ``|x|`` seen;
* ``percentile``: the ``p``-th percentile of ``|x|`` (default 99.99), read from a 2048-bin
  histogram of ``|x|`` over ``[0, max|x|]``;
* ``entropy``: the clip that minimises the KL divergence between the histogram clipped at a
  candidate edge (outliers folded into the last bin) and its 128-level quantized version: the
  procedure TensorRT's entropy calibrator is documented to follow (our implementation: every
  candidate from 128 to 2048 bins, quantized bins spread evenly over the nonzero source bins).

Two passes over the data: maxima first, then histograms (only for percentile and entropy).
Weights are quantized per output channel by :mod:`ground.compress.fakequant`.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Sequence

import numpy as np
import torch
from torch import nn

from engines.errors import UserError
from ground.compress.fakequant import QMAX, conv_layers, fold_bn

CALIBRATORS = ("minmax", "percentile", "entropy")
BINS = 2048
QUANT_LEVELS = 128


def _observe(model: nn.Module, layers: Sequence[str], batches: Iterable, forward: Callable, fn) -> None:
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_pre_hook(lambda m, inp, n=n: fn(n, inp[0].detach())) for n in layers]
    try:
        with torch.no_grad():
            for batch in batches:
                forward(model, batch)
    finally:
        for h in hooks:
            h.remove()


def input_histograms(model: nn.Module, batches: List, forward: Callable, layers=None, bins: int = BINS) -> Dict:
    """Maximum and histogram of ``|x|`` at the input of each convolution.

    Parameters
    ----------
    model : torch.nn.Module
        Float model; BatchNorm is folded here.
    batches : list
        Calibration batches, each passed as ``forward(model, batch)``.
    forward : callable
    layers : list of str, optional
        Convolutions to observe (default all).
    bins : int

    Returns
    -------
    dict
        Layer -> ``{"amax": float, "hist": numpy.ndarray (bins,)}``.
    """
    model = fold_bn(model)
    layers = list(layers or conv_layers(model))
    amax = {n: 0.0 for n in layers}
    _observe(model, layers, batches, forward, lambda n, x: amax.__setitem__(n, max(amax[n], float(x.abs().max()))))
    hist = {n: np.zeros(bins) for n in layers}

    def add(n, x):
        top = max(amax[n], 1e-12)
        hist[n] += torch.histc(x.abs().float(), bins=bins, min=0.0, max=top).double().numpy()
    _observe(model, layers, batches, forward, add)
    return {n: {"amax": amax[n], "hist": hist[n]} for n in layers}


def percentile_amax(hist: np.ndarray, top: float, percentile: float) -> float:
    """``amax`` at a percentile of a ``|x|`` histogram over ``[0, top]`` (upper edge of the bin)."""
    cdf = np.cumsum(hist) / max(hist.sum(), 1e-30)
    idx = int(np.searchsorted(cdf, percentile / 100.0))
    return float(top * min(idx + 1, len(hist)) / len(hist))


def entropy_amax(hist: np.ndarray, top: float, levels: int = QUANT_LEVELS) -> float:
    """``amax`` minimising KL(clipped reference || quantized) over candidate clip edges."""
    hist = np.asarray(hist, dtype=np.float64)
    n = len(hist)
    if hist.sum() <= 0 or n <= levels:
        return float(top)
    best, best_i = np.inf, n
    for i in range(levels, n + 1):
        ref = hist[:i].copy()
        ref[-1] += hist[i:].sum()
        nonzero = (hist[:i] > 0).astype(np.float64)
        group = (np.arange(i) * levels) // i                 # i source bins -> `levels` near-equal groups
        sums = np.bincount(group, weights=hist[:i], minlength=levels)
        counts = np.bincount(group, weights=nonzero, minlength=levels)
        q = np.where(nonzero > 0, sums[group] / np.maximum(counts[group], 1), 0.0)
        p, qn = ref / ref.sum(), q / max(q.sum(), 1e-30)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(qn[mask], 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return float(top * best_i / n)


def calibrate(model: nn.Module, batches: List, forward: Callable, method: str = "minmax",
              percentile: float = 99.99, layers=None, stats=None) -> Dict[str, float]:
    """Input scales (``amax / 127``) of each convolution.

    Parameters
    ----------
    model : torch.nn.Module
    batches : list
    forward : callable
        ``forward(model, batch)``.
    method : {"minmax", "percentile", "entropy"}
    percentile : float
        For ``percentile``.
    layers : list of str, optional
    stats : dict, optional
        Output of :func:`input_histograms` to reuse (one pass serves all three methods).

    Returns
    -------
    dict
        Layer -> scale.
    """
    if method not in CALIBRATORS:
        raise UserError(f"calibrator {method!r} is unknown; choose one of {CALIBRATORS}.")
    if not batches and stats is None:
        raise UserError("calibration needs at least one batch of data; the calibration set is empty.")
    stats = stats or input_histograms(model, batches, forward, layers)
    out = {}
    for name, st in stats.items():
        top = st["amax"]
        if method == "minmax" or top <= 0:
            amax = top
        elif method == "percentile":
            amax = percentile_amax(st["hist"], top, percentile)
        else:
            amax = entropy_amax(st["hist"], top)
        out[name] = max(amax, 1e-8) / QMAX
    return out


def run_ptq(ctx, step) -> list:
    """One INT8 variant per calibrator of ``step`` (a :class:`~ground.compress.steps.PtqStep`).

    The parent's model is shared (PTQ changes no weight); one histogram pass serves all
    calibrators.
    """
    import time

    from ground.compress.fakequant import all_int8
    from ground.compress.variant import Variant

    parent = ctx.variants[step.from_]
    t0 = time.perf_counter()
    stats = input_histograms(parent.model, ctx.calib_batches(step.samples), ctx.forward)
    out = []
    for method in step.calibrators:
        scales = calibrate(parent.model, [], ctx.forward, method, step.percentile, stats=stats)
        out.append(Variant(f"{step.name}-{method}", "ptq", parent.model, parent=step.from_,
                           precision=all_int8(parent.model), act_scales=scales, seconds=time.perf_counter() - t0,
                           info={"calibrator": method, "samples": step.samples,
                                 "percentile": step.percentile if method == "percentile" else None}))
    return out
