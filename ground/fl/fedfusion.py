"""FedFusion across two satellites of different modalities: low-rank feature exchange, shared layers averaged.

After the description of FedFusion (Li, Wang et al., "FedFusion: Manifold-driven federated
learning for multi-satellite and multi-modal fusion", 2023); no code of the authors was used, and
the exact protocol of the paper is not public, so this is satedge's documented variant.

Two satellites image the same ground at nearly the same time: one carries the spectral imager,
the other the elevation sensor (LiDAR / DSM). Each holds a :class:`ground.models.landcover.FusionNet`
with *its own* modality encoder (private: it never leaves the satellite) and a copy of the shared
layers (additive branch, cascading branch, classifier). While their inter-satellite link is up
(one ISL window = one round):

1. Each computes the shallow features of the co-registered batch with its own encoder and
   compresses them to a low-rank subspace (:func:`ground.models.landcover.lowrank`: truncated SVD
   of the (B·C) × (H·W) matrix, rank chosen by kept energy). The factors ``(M - μ) V_r``, ``V_r``
   and the row means ``μ`` cross the ISL: ``(B·C + (B·C + H·W)·r)`` values instead of ``B·C·H·W``
   (:func:`exchange_bytes`). The simulation uses the sender's reconstruction ``μ + (M - μ) V_r V_rᵀ``,
   which is what the receiver rebuilds from the factors.
2. Each trains its encoder and its copy of the shared layers on its own features plus the
   partner's received ones (no gradient crosses the link): cross-entropy on the additive branch,
   MSE and KL pulling the cascading branch toward it (the loss of ``ground.models.landcover``).
3. At the end of the window both send their shared layers (FP32) and average them.

A step costs ``compute_s`` of orbit time plus the transfer of one exchange at ``link_bps`` (both
directions at once, full duplex); a window holds as many steps as fit after the averaging, up to
``max_steps``. A single-modality variant is one satellite alone: same windows, no exchange.
"""
from __future__ import annotations

import copy
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from engines.errors import UserError
from ground.models.landcover import BATCH, FusionNet, classification_metrics, lowrank, one_thread, predict

__all__ = ["exchange_bytes", "fusion_loss", "shared_names", "average_shared", "train_fedfusion", "evaluate"]


def exchange_bytes(shape: Sequence[int], rank: int, bytes_per_value: int = 4) -> Tuple[int, int]:
    """``(low-rank bytes, full bytes)`` of one batch of shallow features of ``shape`` (B, C, H, W)."""
    b, c, h, w = (int(s) for s in shape)
    return (b * c + (b * c + h * w) * int(rank)) * bytes_per_value, b * c * h * w * bytes_per_value


def fusion_loss(model: FusionNet, features: Dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Loss of the shared layers on given shallow features (one per modality of ``model``)."""
    add = model.additive(sum(features[m] for m in model.modalities)).mean(dim=(2, 3))
    logits = model.classifier(add)
    loss = nn.functional.cross_entropy(logits, labels)
    if model.cascade is not None:
        cat = model.cascade(torch.cat([features[m] for m in model.modalities], 1)).mean(dim=(2, 3))
        loss = loss + nn.functional.mse_loss(cat, add.detach()) + nn.functional.kl_div(
            model.classifier(cat).log_softmax(1), logits.detach().log_softmax(1), log_target=True,
            reduction="batchmean")
    return loss


def shared_names(model: FusionNet) -> list:
    """State-dict entries of the shared layers (everything but the encoders), in model order."""
    return [k for k in model.state_dict() if not k.startswith("encoders.")]


def average_shared(models: Sequence[FusionNet]) -> int:
    """Average the shared layers (parameters and BatchNorm statistics) in place; return FP32 bytes sent per model."""
    names = shared_names(models[0])
    states = [m.state_dict() for m in models]
    sent = 0
    with torch.no_grad():
        for k in names:
            if states[0][k].is_floating_point():
                mean = sum(s[k] for s in states) / len(states)
                for s in states:
                    s[k].copy_(mean)
                sent += 4 * states[0][k].numel()
    return sent


def _batches(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(n, generator=gen).split(BATCH)


def train_fedfusion(data: Dict, windows_s: Sequence[float], *, modalities=("spectral", "elevation"),
                    classes: int = 6, width: int = 16, energy=0.75, lr: float = 3e-3, seed: int = 0,
                    link_bps: float = 2e6, compute_s: float = 0.5, max_steps: int = 40) -> Tuple[FusionNet, Dict]:
    """Train FedFusion (two modalities) or a single-modality satellite over ISL windows.

    Parameters
    ----------
    data : dict
        Co-registered patches as from :func:`ground.models.landcover.make_multimodal_set`.
    windows_s : sequence of float
        Durations of the ISL windows (seconds), in order; each is one round.
    modalities : tuple of str
        Two modalities (one per satellite, FedFusion) or one (a satellite alone).
    energy : float or None
        Kept singular-value energy of the exchanged features (``None``: full features).
    lr : float
        AdamW learning rate of the first window, cosine-decayed over the windows.
    link_bps, compute_s, max_steps
        ISL rate, orbit seconds of compute per step, and the step cap per window.

    Returns
    -------
    (FusionNet, dict)
        The assembled eval-mode model (each modality's encoder from its satellite, the averaged
        shared layers) and ``steps`` per window, ``sent_bytes`` / ``full_bytes`` of the feature
        exchange (both directions, all steps; equal with ``energy=None``), ``shared_bytes``, mean
        ``ranks`` and ``ratio`` = full / sent (None for a satellite alone).
    """
    if len(modalities) not in (1, 2) or not windows_s:
        raise UserError("train_fedfusion wants one or two modalities and at least one ISL window")
    with one_thread():
        torch.manual_seed(seed)
        template = FusionNet({m: data[m].shape[1] for m in modalities}, classes, width, energy)
        clients = [copy.deepcopy(template) for _ in modalities]
        params = [list(c.encoders[m].parameters())
                  + [p for n, p in c.named_parameters() if not n.startswith("encoders.")]
                  for c, m in zip(clients, modalities)]
        opts = [torch.optim.AdamW(p, lr=lr, weight_decay=1e-4) for p in params]
        shared = 4 * sum(v.numel() for k, v in template.state_dict().items()
                         if not k.startswith("encoders.") and v.is_floating_point())
        info = {"steps": [], "sent_bytes": 0, "full_bytes": 0, "shared_bytes": 0, "ranks": {m: [] for m in modalities}}
        labels, batches = torch.from_numpy(data["labels"]), _batches(len(data["labels"]), seed)
        for w, window in enumerate(windows_s):
            for o in opts:                          # cosine decay of the learning rate over the windows
                o.param_groups[0]["lr"] = lr * 0.5 * (1.0 + np.cos(np.pi * w / len(windows_s)))
            left, steps = float(window) - (shared * 8.0 / link_bps if len(clients) > 1 else 0.0), 0
            for c in clients:
                c.train()
            while steps < max_steps:
                idx = next(batches)
                feats = {}
                for c, m in zip(clients, modalities):
                    raw = c.encoders[m](torch.from_numpy(data[m][idx.numpy()]))
                    feats[m], rank = lowrank(raw, energy) if energy else (raw, raw.shape[2] * raw.shape[3])
                    info["ranks"][m].append(rank)
                cost = compute_s
                if len(clients) > 1:
                    sizes = [exchange_bytes(feats[m].shape, info["ranks"][m][-1]) for m in modalities]
                    sizes = [(low if energy else full, full) for low, full in sizes]
                    cost += max(sent for sent, _ in sizes) * 8.0 / link_bps
                if cost > left:
                    break
                loss = sum(fusion_loss(c, {k: (v if k == m else v.detach()) for k, v in feats.items()}, labels[idx])
                           for c, m in zip(clients, modalities))
                for o in opts:
                    o.zero_grad()
                loss.backward()
                for o in opts:
                    o.step()
                if len(clients) > 1:
                    info["sent_bytes"] += sum(sent for sent, _ in sizes)
                    info["full_bytes"] += sum(full for _, full in sizes)
                left -= cost
                steps += 1
            if len(clients) > 1:
                info["shared_bytes"] += len(clients) * average_shared(clients)
            info["steps"].append(steps)
        model = clients[0]
        for c, m in zip(clients[1:], modalities[1:]):
            model.encoders[m].load_state_dict(c.encoders[m].state_dict())
        model.patch = int(data[modalities[0]].shape[-1])
    info["ranks"] = {m: float(np.mean(r)) if r else float("nan") for m, r in info["ranks"].items()}
    info["ratio"] = info["full_bytes"] / info["sent_bytes"] if info["sent_bytes"] else None
    return model.eval(), info


def evaluate(model: FusionNet, data: Dict, classes: int = 6) -> Dict[str, float]:
    """OA, AA and Cohen's κ of the additive branch on ``data`` (fixed batches; no confusion matrix)."""
    metrics = classification_metrics(data["labels"], predict(model, data), classes)
    return {k: float(metrics[k]) for k in ("OA", "AA", "kappa")}
