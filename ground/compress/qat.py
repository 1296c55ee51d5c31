"""Quantization-aware training with GHOST-style self-distillation from the full-precision model.

Start: the parent variant (FP32, or a pruned one) with BatchNorm folded, input scales from a
calibrator (:mod:`ground.compress.ptq`) and per-channel weight fake quantization
(:class:`~ground.compress.fakequant.QuantConv2d`, straight-through estimator). The input scales
stay fixed during QAT and the weight scales follow the weights (``max|w_c| / 127``), so the
trained model exports exactly to the Q/DQ graph.

Loss (GHOST's "quantization guided by the full-precision model", our reading): the frozen
full-precision parent is the teacher of its own quantized copy,
``w_task * task loss + w_logit * KD_logits(T) + w_feat * feature MSE``, with the same KD terms
as :mod:`ground.compress.distill` (defaults 0.5 / 1 / 1, T = 1). Training is short (2 epochs
at a small learning rate): the weights only move to absorb quantization error.
"""
from __future__ import annotations

from typing import List

from ground.compress.distill import kd_from
from ground.compress.fakequant import all_int8, simulate, strip
from ground.compress.ptq import calibrate
from ground.compress.steps import QatStep
from ground.compress.trainer import fit
from ground.compress.variant import Context, Variant


def run_qat(ctx: Context, step: QatStep) -> List[Variant]:
    """Fine-tune the fake-quantized parent against its float self; returns the INT8 variant."""
    parent = ctx.variants[step.from_]
    scales = calibrate(parent.model, ctx.calib_batches(step.samples), ctx.forward, step.calibrator, step.percentile)
    precision = all_int8(parent.model)
    qmodel = simulate(parent.model, precision, scales, ste=True)
    ts = ctx.settings.train
    res = fit(ctx.task, qmodel, ctx.data.train, epochs=step.epochs, lr=step.lr, batch_size=ts.batch_size,
              seed=ctx.seed, schedule="onecycle", weight_decay=0.0, teacher=parent.simulated(), kd=kd_from(step.kd),
              desc=f"{ctx.task.name} {step.name}", progress=ctx.progress, threads=ctx.threads)
    model = strip(res.model)
    return [Variant(step.name, "qat", model, parent=step.from_, precision=precision, act_scales=scales,
                    seconds=res.seconds, info={"calibrator": step.calibrator, "epochs": step.epochs, "lr": step.lr,
                                               "kd": vars(kd_from(step.kd)), "losses": res.losses})]
