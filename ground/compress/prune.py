"""Structured filter pruning with a learned, global importance criterion (PIC-PQ-like), then fine-tuning.

Filters are removed in *groups* (a task's :meth:`~ground.compress.tasks.base.Task.prune_spec`):
output channels that must go together (a convolution and its BatchNorm; convolutions whose
outputs are added, e.g. CloudNet's stem and fusion) and the input channels of the layers that
consume them (with concatenation offsets).

Criterion (our reading of PIC-PQ's "global, learnable filter importance, linear in a filter
property with a learnable scale and shift"; its exact training objective is not public):

* property ``p_f``: the L2 norm of filter ``f`` after BatchNorm folding, divided by the mean over
  its group (averaged over tied producers), so groups are comparable;
* importance ``I_f = exp(a_g) * p_f + b_g`` with a learnable log-scale ``a_g`` and shift ``b_g``
  per group (the scale keeps the order inside a group, the pair sets how groups compare);
* learning: the network is frozen; each group's outputs are multiplied by soft masks
  ``sigmoid(I_f / 0.1)``; ``(a, b)`` minimise ``task loss + cost_weight * (MACs(masks) /
  (keep_macs * MACs) - 1)^2`` where MACs(masks) counts each layer's MACs times its kept input and
  output fractions. Start: ``a = 0`` and ``b_g`` at the group's ``1 - sqrt(keep_macs)`` quantile;
* selection: all filters of all groups ranked by ``I_f``; the least important are removed one by
  one, each group keeping at least ``min_keep`` of its filters, until the exact MACs reach
  ``keep_macs`` of the parent's. The channels are cut out of the weights (a smaller dense
  model) and the model is fine-tuned, distilled from the unpruned parent by default.

Pruning then quantization (compose a ``qat`` or ``ptq`` step ``from`` the pruned variant) is the
"pruning + INT8" variant whose BOPs reduction the report states.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Dict, List

import numpy as np
import torch
from torch import nn

from ground.compress.distill import kd_from
from ground.compress.fakequant import fold_bn
from ground.compress.flops import layer_macs
from ground.compress.steps import PruneStep
from ground.compress.tasks.base import one_thread_ctx
from ground.compress.trainer import fit
from ground.compress.variant import Context, Variant

TAU = 0.1


def group_properties(model: nn.Module, groups: Dict) -> Dict[str, np.ndarray]:
    """Normalised filter norms (folded) per group, averaged over tied producers."""
    mods = dict(fold_bn(model).named_modules())
    out = {}
    for g, producers in groups.items():
        acc = 0.0
        for conv, _ in producers:
            norms = mods[conv].weight.detach().reshape(mods[conv].weight.shape[0], -1).norm(dim=1).numpy()
            acc = acc + norms / max(norms.mean(), 1e-12)
        out[g] = np.asarray(acc / len(producers), dtype=np.float64)
    return out


def cost_model(model: nn.Module, run, groups: Dict, consumers: Dict):
    """``cost(kept) -> MACs`` with ``kept`` = group -> kept filter count (floats or tensors) and the full MACs."""
    macs = layer_macs(fold_bn(model), run)
    size = {g: dict(model.named_modules())[prods[0][0]].weight.shape[0] for g, prods in groups.items()}
    out_of = {conv: g for g, prods in groups.items() for conv, _ in prods}

    def cost(kept):
        total = 0.0
        for layer, m in macs.items():
            f = kept[out_of[layer]] / size[out_of[layer]] if layer in out_of else 1.0
            if layer in consumers:
                f = f * sum(kept[g] for g in consumers[layer]) / sum(size[g] for g in consumers[layer])
            total = total + m * f
        return total
    return cost, float(sum(macs.values())), size


def _mask_hooks(model: nn.Module, groups: Dict, masks: Dict):
    mods = dict(model.named_modules())
    hooks = []
    for g, producers in groups.items():
        for conv, bn in producers:
            target = mods[bn] if bn and isinstance(mods.get(bn), nn.BatchNorm2d) else mods[conv]
            hooks.append(target.register_forward_hook(
                lambda m, i, o, g=g: o * masks[g].reshape((1, -1) + (1,) * (o.dim() - 2))))
    return hooks


def learn_importance(ctx: Context, model: nn.Module, step: PruneStep, groups, cost, full, props):
    """Learn ``(a_g, b_g)`` on frozen weights; returns importance per group (numpy)."""
    names = list(groups)
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    props_t = {g: torch.tensor(props[g], dtype=torch.float32) for g in names}
    r = math.sqrt(step.keep_macs)
    log_a = nn.Parameter(torch.zeros(len(names)))
    b = nn.Parameter(torch.tensor([-float(np.quantile(props[g], 1 - r)) for g in names]))
    opt = torch.optim.Adam([log_a, b], lr=step.criterion_lr)
    masks: Dict[str, torch.Tensor] = {}
    hooks = _mask_hooks(frozen, groups, masks)
    train, bs = ctx.data.train, ctx.settings.train.batch_size
    gen = torch.Generator().manual_seed(ctx.seed)
    try:
        for _ in range(step.criterion_epochs):
            order = torch.randperm(len(train), generator=gen).numpy()
            for i in range(0, len(order), bs):
                batch = train.batch(order[i:i + bs])
                for k, g in enumerate(names):
                    masks[g] = torch.sigmoid((log_a[k].exp() * props_t[g] + b[k]) / TAU)
                loss = ctx.task.loss(ctx.task.forward(frozen, batch), batch).mean()
                frac = cost({g: masks[g].sum() for g in names}) / full
                loss = loss + step.cost_weight * (frac / step.keep_macs - 1.0) ** 2
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        imp = {g: (log_a[k].exp() * props_t[g] + b[k]).numpy().astype(np.float64) for k, g in enumerate(names)}
    return imp, {g: {"scale": float(log_a[k].detach().exp()), "shift": float(b[k].detach())} for k, g in enumerate(names)}


def select(importance: Dict[str, np.ndarray], cost, full: float, keep_macs: float, min_keep: float):
    """Global greedy removal of the least important filters until MACs <= ``keep_macs * full``."""
    keep = {g: np.ones(len(v), bool) for g, v in importance.items()}
    floor = {g: max(1, math.ceil(min_keep * len(v))) for g, v in importance.items()}
    for _, g, f in sorted((float(v[f]), g, f) for g, v in importance.items() for f in range(len(v))):
        if cost({k: float(m.sum()) for k, m in keep.items()}) <= keep_macs * full:
            break
        if keep[g].sum() > floor[g]:
            keep[g][f] = False
    return {g: np.flatnonzero(m) for g, m in keep.items()}


def apply_pruning(model: nn.Module, groups: Dict, consumers: Dict, keep: Dict[str, np.ndarray]) -> nn.Module:
    """A copy of ``model`` with the unkept output channels (and matching input channels) cut out."""
    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    size = {g: mods[prods[0][0]].weight.shape[0] for g, prods in groups.items()}
    with torch.no_grad():
        for g, producers in groups.items():
            idx = torch.from_numpy(keep[g])
            for conv, bn in producers:
                c = mods[conv]
                c.weight = nn.Parameter(c.weight[idx].clone())
                if c.bias is not None:
                    c.bias = nn.Parameter(c.bias[idx].clone())
                c.out_channels = len(idx)
                norm = mods.get(bn) if bn else None
                if isinstance(norm, nn.BatchNorm2d):
                    norm.weight, norm.bias = nn.Parameter(norm.weight[idx].clone()), nn.Parameter(norm.bias[idx].clone())
                    norm.running_mean, norm.running_var = norm.running_mean[idx].clone(), norm.running_var[idx].clone()
                    norm.num_features = len(idx)
        for layer, gs in consumers.items():
            offsets = np.cumsum([0] + [size[g] for g in gs])
            idx = torch.from_numpy(np.concatenate([o + keep[g] for o, g in zip(offsets, gs)]))
            m = mods[layer]
            m.weight = nn.Parameter(m.weight[:, idx].clone())
            if isinstance(m, nn.Conv2d):
                m.in_channels = len(idx)
            else:
                m.in_features = len(idx)
    return out


def run_prune(ctx: Context, step: PruneStep) -> List[Variant]:
    """Learn the criterion, cut the filters, fine-tune; returns the pruned FP32 variant."""
    t0 = time.perf_counter()
    parent = ctx.variants[step.from_]
    groups, consumers = ctx.task.prune_spec(parent.model)
    run = ctx.task.run_one(ctx.data.train)
    cost, full, size = cost_model(parent.model, run, groups, consumers)
    props = group_properties(parent.model, groups)
    with one_thread_ctx(ctx.threads):
        importance, params = learn_importance(ctx, parent.model, step, groups, cost, full, props)
    keep = select(importance, cost, full, step.keep_macs, step.min_keep)
    pruned = apply_pruning(parent.model, groups, consumers, keep)
    t1 = time.perf_counter()
    ts = ctx.settings.train
    res = fit(ctx.task, pruned, ctx.data.train, epochs=step.finetune_epochs or ts.epochs, lr=step.lr or ts.lr,
              batch_size=ts.batch_size, seed=ctx.seed, schedule=ts.schedule, weight_decay=ts.weight_decay,
              teacher=parent.simulated() if step.distill else None, kd=kd_from(step.kd) if step.distill else None,
              desc=f"{ctx.task.name} {step.name} fine-tune", progress=ctx.progress, threads=ctx.threads)
    kept = {g: f"{len(keep[g])}/{size[g]}" for g in groups}
    after = cost({g: float(len(keep[g])) for g in groups})
    info = {"keep_macs_target": step.keep_macs, "macs_before": full, "macs_after": after, "kept_filters": kept,
            "criterion": params, "criterion_seconds": t1 - t0, "finetune_seconds": res.seconds,
            "finetune_losses": res.losses, "distilled_from_parent": step.distill}
    return [Variant(step.name, "prune", res.model, parent=step.from_, seconds=time.perf_counter() - t0, info=info)]
