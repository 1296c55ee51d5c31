"""Coreset selection from training dynamics (TDDS-like) against random selection of the same size.

TDDS scores a sample by how its contribution to training varies over time. Our documented
variant (TDDS's exact estimator is not reproduced):

* dynamics: the per-sample task loss ``L_t(i)`` of every training sample after each epoch ``t``
  of the FP32 baseline's training (recorded by :func:`ground.compress.trainer.fit`);
* contribution at epoch ``t``: ``c_t(i) = L_{t-1}(i) - L_t(i)``. To first order this is the
  projection of the sample's loss gradient on the epoch's parameter update, i.e. how much the
  update moved that sample (the quantity TDDS approximates);
* variability: the standard deviation of ``c_t(i)`` over a sliding window of ``window`` epochs,
  averaged across windows with an exponential moving average (factor ``ema``; later windows
  weigh more);
* selection: the highest scores. With ``stratify`` (classification tasks) every class keeps a
  share proportional to its frequency, so a 10 % coreset cannot drop a class; the random
  baseline is then stratified the same way (uniform otherwise).

Each coreset and its random counterpart train the same fresh model (same initial weights and
learning rate as the baseline) and are evaluated like every variant. ``budget: steps`` (default)
trains each subset for as many optimiser steps as the full-data baseline (epochs scaled by
``1 / fraction``): the subset's *content* is compared, not how little training 10 % of the
epochs' steps gives (with ``budget: epochs``, a 10 % subset at our small epoch counts is mostly
undertrained, and the comparison then measures that). These FP32 models are experiments on the fine-tuning set, not
deployable variants: they are evaluated in torch and not exported.
"""
from __future__ import annotations

import time
from typing import List, Optional

import numpy as np

from ground.compress.steps import TddsStep, fraction_tag
from ground.compress.tasks.base import predict_torch
from ground.compress.trainer import fit
from ground.compress.variant import Context, Variant


def tdds_scores(dynamics: np.ndarray, window: int = 3, ema: float = 0.8) -> np.ndarray:
    """TDDS-like score per sample from ``(epochs, N)`` per-sample losses (see the module docstring)."""
    d = np.asarray(dynamics, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] < 2:
        raise ValueError(f"need per-sample losses of at least 2 epochs, got shape {d.shape}")
    contrib = d[:-1] - d[1:]
    w = max(1, min(window, len(contrib)))
    score = None
    for end in range(w, len(contrib) + 1):
        v = contrib[end - w:end].std(axis=0)
        score = v if score is None else ema * score + (1 - ema) * v
    return score


def _quotas(labels: np.ndarray, k: int) -> dict:
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts / counts.sum() * k
    q = np.maximum(np.floor(exact).astype(int), 1)
    while q.sum() < k:
        q[np.argmax(exact - q)] += 1
    while q.sum() > k:
        q[np.argmax(q)] -= 1
    return {c: min(int(n), int(m)) for c, n, m in zip(classes, q, counts)}


def select_top(scores: np.ndarray, fraction: float, labels: Optional[np.ndarray] = None) -> np.ndarray:
    """Indices of the highest-scoring ``fraction`` of samples (per class when ``labels`` are given)."""
    k = max(1, int(round(fraction * len(scores))))
    if labels is None:
        return np.sort(np.argsort(-scores, kind="stable")[:k])
    out = [np.flatnonzero(labels == c)[np.argsort(-scores[labels == c], kind="stable")[:n]]
           for c, n in _quotas(labels, k).items()]
    return np.sort(np.concatenate(out))


def select_random(n: int, fraction: float, seed: int, labels: Optional[np.ndarray] = None) -> np.ndarray:
    """A random subset of the same size as :func:`select_top` (stratified likewise)."""
    rng = np.random.default_rng([seed, 29])
    return select_top(rng.random(n), fraction, labels)


def run_tdds(ctx: Context, step: TddsStep) -> List[Variant]:
    """Train on TDDS and random coresets at each fraction; one FP32 variant per subset.

    With ``seeds: k`` each subset is trained with ``k`` seeds (initial weights, data order and,
    for the random subset, the draw); per-seed metrics on the labelled evaluation splits go into
    ``info["per_seed"]``. The variants kept are those of the recipe's seed.
    """
    if not ctx.task.tdds_supported:
        return []
    if ctx.dynamics is None:
        raise RuntimeError("TDDS needs the baseline's recorded dynamics (the pipeline records them)")
    scores = tdds_scores(ctx.dynamics, step.window, step.ema)
    labels = ctx.task.labels(ctx.data.train) if step.stratify else None
    ts, n, base = ctx.settings.train, len(ctx.data.train), ctx.seed
    out = []
    for f in step.fractions:
        for kind in ("tdds", "random"):
            t0, per_seed, kept = time.perf_counter(), [], None
            try:
                for k in range(max(1, step.seeds)):
                    ctx.seed = base + k
                    idx = select_top(scores, f, labels) if kind == "tdds" else select_random(n, f, ctx.seed, labels)
                    epochs = step.epochs or ts.epochs
                    if step.budget == "steps":          # as many optimiser steps as the full-data training
                        epochs = max(1, int(round(epochs * n / len(idx))))
                    res = fit(ctx.task, ctx.build(ts.width), ctx.data.train, indices=idx, epochs=epochs, lr=ts.lr, batch_size=ts.batch_size, seed=ctx.seed,
                              schedule=ts.schedule, weight_decay=ts.weight_decay,
                              desc=f"{ctx.task.name} {kind} {fraction_tag(f)}% seed {ctx.seed}",
                              progress=ctx.progress, threads=ctx.threads)
                    per_seed.append({s: ctx.task.metrics(predict_torch(ctx.task, res.model, sp), sp)[ctx.task.primary]
                                     for s, sp in ctx.data.evals.items() if sp.labelled})
                    kept = kept or (res, idx)
            finally:
                ctx.seed = base
            out.append(Variant(f"{kind}-{fraction_tag(f)}", kind, kept[0].model, export=False,
                               seconds=time.perf_counter() - t0,
                               info={"fraction": f, "samples": int(len(kept[1])), "of": n, "budget": step.budget,
                                     "stratified": labels is not None, "window": step.window, "ema": step.ema,
                                     "seeds": list(range(base, base + max(1, step.seeds))), "per_seed": per_seed,
                                     "mean": {s: float(np.mean([r[s] for r in per_seed])) for s in per_seed[0]}}))
    return out
