"""Knowledge distillation on logits and features, with the same student trained without a teacher.

The student (a narrower model of the same family, or for the anomaly task the STAD student
against the fully connected teacher) is trained by :func:`ground.compress.trainer.fit` with

``loss = w_task * task loss + w_logit * KD_logits(T) + w_feat * sum MSE(adapter(student feature), teacher feature)``

where KD_logits is the task's: KL divergence of temperature-softened class distributions for
land cover (Hinton et al.), BCE against the teacher's softened per-pixel probabilities for the
cloud mask, MSE of the reconstructions for the anomaly student (STAD's stage-wise MSE being the
feature term). Both logit losses are multiplied by T^2 so their gradients keep their scale.

The teacher is an existing variant (``teacher: fp32``), the task's own teacher (``task``), or a
wider model trained here first (``teacher_width``; added as ``NAME-teacher``).

The control (``NAME-noteacher``) is the same architecture from the same initial weights, trained
with the task loss alone, same epochs, learning rate and data order. With ``seeds: k`` both are
trained for ``k`` seeds (initial weights and data order) and their metrics on every labelled
evaluation split are recorded per seed (``info["per_seed"]``): one seed's difference is mostly
noise at these sizes (0.5 points between seeds in our runs). The variants kept are those of the
recipe's seed.
"""
from __future__ import annotations

from typing import List

import numpy as np

from engines.errors import UserError
from ground.compress.steps import DistillStep
from ground.compress.tasks.base import predict_torch
from ground.compress.trainer import KD, fit
from ground.compress.variant import Context, Variant


def kd_from(settings) -> KD:
    """The trainer's :class:`~ground.compress.trainer.KD` from recipe :class:`~ground.compress.steps.KDSettings`."""
    return KD(settings.task_weight, settings.logit_weight, settings.feature_weight, settings.temperature)


def _labelled_metrics(ctx: Context, model) -> dict:
    out = {}
    for name, split in ctx.data.evals.items():
        if split.labelled:
            out[name] = ctx.task.metrics(predict_torch(ctx.task, model, split), split)[ctx.task.primary]
    return out


def _teacher(ctx: Context, step: DistillStep, args: dict) -> tuple:
    if step.teacher_width is not None:
        res = fit(ctx.task, ctx.build(step.teacher_width), ctx.data.train, desc=f"{ctx.task.name} {step.name}-teacher",
                  **{**args, "epochs": step.teacher_epochs or args["epochs"]})
        v = Variant(f"{step.name}-teacher", "distill-teacher", res.model, seconds=res.seconds,
                    info={"width": step.teacher_width, "losses": res.losses})
        return res.model, [v], v.name
    if step.teacher == "task":
        if ctx.teacher is None:
            raise UserError(f"distill step {step.name!r}: teacher 'task' needs train.teacher_width in the track")
        return ctx.teacher, [], "task"
    return ctx.variants[step.teacher].simulated(), [], step.teacher


def run_distill(ctx: Context, step: DistillStep) -> List[Variant]:
    """Train the distilled student and (``control``) the same student without a teacher.

    Parameters
    ----------
    ctx : Context
    step : DistillStep

    Returns
    -------
    list of Variant
        ``NAME-teacher`` (when trained here), ``NAME`` and ``NAME-noteacher``.
    """
    ts = ctx.settings.train
    args = dict(epochs=step.epochs or ts.epochs, lr=step.lr or ts.lr, batch_size=ts.batch_size, seed=ctx.seed,
                schedule=ts.schedule, weight_decay=ts.weight_decay, progress=ctx.progress, threads=ctx.threads)
    teacher, out, teacher_name = _teacher(ctx, step, args)
    base_seed, per_seed = ctx.seed, {"kd": [], "noteacher": []}
    kept = {}
    try:
        for k in range(max(1, step.seeds)):
            ctx.seed = base_seed + k
            args["seed"] = ctx.seed
            res = fit(ctx.task, ctx.build(step.student_width), ctx.data.train, teacher=teacher, kd=kd_from(step.kd),
                      desc=f"{ctx.task.name} {step.name} seed {ctx.seed}", **args)
            per_seed["kd"].append(_labelled_metrics(ctx, res.model))
            ctl = None
            if step.control:
                ctl = fit(ctx.task, ctx.build(step.student_width), ctx.data.train,
                          desc=f"{ctx.task.name} {step.name}-noteacher seed {ctx.seed}", **args)
                per_seed["noteacher"].append(_labelled_metrics(ctx, ctl.model))
            if k == 0:
                kept = {"kd": res, "noteacher": ctl}
    finally:
        ctx.seed = base_seed
    seeds = list(range(base_seed, base_seed + max(1, step.seeds)))
    mean = {kind: {s: float(np.mean([r[s] for r in rows])) for s in (rows[0] if rows else {})}
            for kind, rows in per_seed.items()}
    info = {"student_width": step.student_width, "teacher": teacher_name, "kd": vars(kd_from(step.kd)),
            "teacher_params": int(sum(p.numel() for p in teacher.parameters())), "seeds": seeds,
            "per_seed": per_seed, "mean": mean, "losses": kept["kd"].losses}
    out.append(Variant(step.name, "distill", kept["kd"].model, parent=teacher_name, seconds=kept["kd"].seconds,
                       info=info))
    if step.control:
        out.append(Variant(f"{step.name}-noteacher", "distill-control", kept["noteacher"].model, parent=None,
                           seconds=kept["noteacher"].seconds,
                           info={"student_width": step.student_width, "control_of": step.name,
                                 "losses": kept["noteacher"].losses}))
    return out
