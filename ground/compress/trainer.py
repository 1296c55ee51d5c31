"""One training loop for every task and step: task loss, distillation, per-sample dynamics.

``loss = task_weight * mean(task loss) + logit_weight * KD_logits(student, teacher, T)
+ feature_weight * sum_i MSE(adapter_i(student feature i), teacher feature i) / mean(teacher feature i^2)``.

The feature term is relative (divided by the teacher feature's mean square) so one weight fits
features of any scale. Adapters (1x1 convolution for maps, linear for vectors) exist only in
training, as in STAD's stage-wise distillation, and start as the identity when the widths match
(QAT self-distillation: a random adapter would first pull the features apart); the teacher runs in eval mode without gradients. With ``record=True``
the per-sample task loss of *every* training sample is measured after each epoch (eval mode),
giving the ``(epochs, N)`` training dynamics TDDS scores. Optimiser: AdamW with a one-cycle
(or constant) learning rate. Torch runs on ``threads`` intra-op threads (1 by default: on a
shared two-core machine this is the fastest and the most repeatable).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from torch import nn

from ground.compress.tasks.base import Split, Task, one_thread_ctx

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is a ground requirement
    tqdm = None


@dataclass(frozen=True)
class KD:
    """Weights of the loss terms (see the module docstring)."""

    task_weight: float = 1.0
    logit_weight: float = 0.0
    feature_weight: float = 0.0
    temperature: float = 1.0


@dataclass
class FitResult:
    """A trained model (eval mode), wall time, per-epoch mean loss and the recorded dynamics."""

    model: nn.Module
    seconds: float
    losses: List[float] = field(default_factory=list)
    dynamics: Optional[np.ndarray] = None


def _adapters(student_feats, teacher_feats) -> nn.ModuleList:
    out = []
    for s, t in zip(student_feats, teacher_feats):
        a = nn.Conv2d(s.shape[1], t.shape[1], 1) if s.dim() == 4 else nn.Linear(s.shape[1], t.shape[1])
        if s.shape[1] == t.shape[1]:              # same width (QAT self-distillation): start as the identity
            with torch.no_grad():
                a.weight.copy_(torch.eye(s.shape[1]).reshape(a.weight.shape))
                a.bias.zero_()
        out.append(a)
    return nn.ModuleList(out)


def feature_loss(adapters, student_feats, teacher_feats) -> torch.Tensor:
    """Sum over features of ``MSE(adapter(s), t) / mean(t^2)``: relative, so scales do not matter."""
    return sum(nn.functional.mse_loss(a(s), t) / t.pow(2).mean().clamp_min(1e-8)
               for a, s, t in zip(adapters, student_feats, teacher_feats))


def per_sample_loss(task: Task, model: nn.Module, split: Split, batch: int = 256) -> np.ndarray:
    """Task loss of every sample of ``split`` (eval mode, no gradients)."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(split), batch):
            b = split.batch(np.arange(i, min(i + batch, len(split))))
            out.append(task.loss(task.forward(model, b), b).numpy())
    return np.concatenate(out)


def _bar(total: int, desc: str, progress: bool):
    if progress and tqdm is not None:
        return tqdm(total=total, desc=desc, unit="epoch", leave=False)
    return None


def fit(task: Task, model: nn.Module, split: Split, *, epochs: int, lr: float, batch_size: int, seed: int = 0,
        schedule: str = "onecycle", weight_decay: float = 1e-4, indices=None, teacher: Optional[nn.Module] = None,
        kd: Optional[KD] = None, record: bool = False, desc: str = "train", progress: bool = True,
        threads: int = 1) -> FitResult:
    """Train ``model`` in place on ``split`` (or on ``split[indices]``).

    Parameters
    ----------
    task : Task
    model : torch.nn.Module
    split : Split
    epochs, lr, batch_size, seed : int, float, int, int
    schedule : {"onecycle", "constant"}
    weight_decay : float
    indices : array_like, optional
        Training subset (a coreset); all samples by default.
    teacher : torch.nn.Module, optional
        Frozen teacher for distillation.
    kd : KD, optional
        Loss weights (default: task loss only).
    record : bool
        Record per-sample losses of all of ``split`` after each epoch.
    desc : str
        Progress-bar label.
    progress : bool
    threads : int

    Returns
    -------
    FitResult
    """
    kd = kd or KD()
    with one_thread_ctx(threads):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        idx_all = np.arange(len(split)) if indices is None else np.asarray(indices)
        if len(idx_all) == 0:
            raise ValueError("cannot train on an empty subset")
        distilling = teacher is not None and (kd.logit_weight > 0 or kd.feature_weight > 0)
        adapters = nn.ModuleList()
        if distilling:
            teacher.eval()
            if kd.feature_weight > 0:
                probe = split.batch(idx_all[:2])
                with torch.no_grad():
                    model.eval()
                    adapters = _adapters(task.forward(model, probe).features, task.forward(teacher, probe).features)
        params = list(model.parameters()) + list(adapters.parameters())
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        steps = epochs * -(-len(idx_all) // batch_size)
        sched = (torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.2)
                 if schedule == "onecycle" and steps >= 10 else None)     # one-cycle needs a few steps
        losses, dyn = [], []
        t0 = time.perf_counter()
        bar = _bar(epochs, desc, progress)
        for _ in range(epochs):
            model.train()
            adapters.train()
            total = 0.0
            order = idx_all[torch.randperm(len(idx_all), generator=gen).numpy()]
            for i in range(0, len(order), batch_size):
                batch = task.augment(split.batch(order[i:i + batch_size]), gen, distilling)
                out = task.forward(model, batch)
                loss = kd.task_weight * task.loss(out, batch).mean() if kd.task_weight else 0.0
                if distilling:
                    with torch.no_grad():
                        t_out = task.forward(teacher, batch)
                    if kd.logit_weight:
                        loss = loss + kd.logit_weight * task.kd_logit_loss(out, t_out, kd.temperature)
                    if kd.feature_weight:
                        loss = loss + kd.feature_weight * feature_loss(adapters, out.features, t_out.features)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += float(loss.detach()) * len(batch["index"])
            losses.append(total / len(order))
            if record:
                dyn.append(per_sample_loss(task, model, split))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if bar is not None:
            bar.close()
        return FitResult(model.eval(), time.perf_counter() - t0, losses, np.stack(dyn) if record else None)
