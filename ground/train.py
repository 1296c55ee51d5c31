"""Training of the CloudNet cloud segmenter on 12-bit DN tiles.

The loss is binary cross-entropy on the logits with a *distribution-aware* pixel weight
against class imbalance (DIAnet's motivation; its exact loss is not public, this is our
choice): with ``p`` the cloud-pixel frequency of the training set, cloud pixels weigh
``sqrt((1 - p) / p)`` times clear pixels (square-root inverse frequency), and the weights are
rescaled so that their mean over the training pixels is 1. The square root keeps the rare class
visible without trading away much overall pixel accuracy, which full inverse-frequency
weighting does.

Inputs are normalized per band from the training DN statistics: ``x = dn * scale + offset``
with ``scale = 1 / std`` and ``offset = -mean / std``; the same dict goes into the engine
manifest (``TensorSpec.normalization``) so onboard preprocessing matches training exactly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ground.models.cloudnet import CloudNet


@dataclass
class TrainResult:
    """What :func:`train_cloudnet` returns.

    Attributes
    ----------
    model : CloudNet
        The trained model, in eval mode.
    normalization : dict
        ``{"source_dtype": "uint16", "scale": [6 floats], "offset": [6 floats]}``.
    history : list of dict
        One entry per epoch: ``epoch``, ``loss``, ``accuracy`` (training pixels), ``seconds``.
    cloud_weight : float
        Weight of a cloud pixel relative to a clear pixel in the loss.
    seconds : float
        Wall time of the training loop.
    """

    model: CloudNet
    normalization: Dict
    history: List[Dict] = field(default_factory=list)
    cloud_weight: float = 1.0
    seconds: float = 0.0


def fit_normalization(dn: np.ndarray) -> Dict:
    """Per-band scale and offset that map training DNs to zero mean and unit variance.

    Parameters
    ----------
    dn : numpy.ndarray
        Training DNs, uint16 (N, bands, H, W).

    Returns
    -------
    dict
        ``{"source_dtype": "uint16", "scale": [...], "offset": [...]}`` with
        ``model_input = dn * scale + offset`` per band.
    """
    dn = np.asarray(dn)
    mean, std = np.empty(dn.shape[1]), np.empty(dn.shape[1])
    for b in range(dn.shape[1]):
        band = dn[:, b].astype(np.float32)
        mean[b] = band.mean(dtype=np.float64)
        std[b] = max(float(band.std(dtype=np.float64)), 1.0)
    return {
        "source_dtype": "uint16",
        "scale": [float(v) for v in 1.0 / std],
        "offset": [float(v) for v in -mean / std],
    }


def apply_normalization(dn: np.ndarray, normalization: Dict) -> np.ndarray:
    """Apply a normalization dict to DN tiles.

    Parameters
    ----------
    dn : numpy.ndarray
        DNs (N, bands, H, W), any numeric dtype.
    normalization : dict
        Dict with ``scale`` and ``offset`` lists, one value per band.

    Returns
    -------
    numpy.ndarray
        float32 (N, bands, H, W) model input.
    """
    scale = np.asarray(normalization["scale"], dtype=np.float32)[None, :, None, None]
    offset = np.asarray(normalization["offset"], dtype=np.float32)[None, :, None, None]
    return np.asarray(dn, dtype=np.float32) * scale + offset


def cloud_pixel_weight(mask: np.ndarray) -> float:
    """Square-root inverse-frequency weight of a cloud pixel relative to a clear one.

    Parameters
    ----------
    mask : numpy.ndarray
        Cloud masks (0 clear, 1 cloud).

    Returns
    -------
    float
        ``sqrt((1 - p) / p)`` with ``p`` the cloud-pixel frequency (clipped to [1e-3, 1 - 1e-3]).
    """
    p = float(np.clip(np.mean(mask > 0), 1e-3, 1 - 1e-3))
    return float(np.sqrt((1.0 - p) / p))


def train_cloudnet(dn: np.ndarray, mask: np.ndarray, *, epochs: int, batch_size: int = 64,
                   lr: float = 1e-2, seed: int = 0, width="quick", progress: bool = True) -> TrainResult:
    """Train a :class:`CloudNet` on DN tiles and their cloud masks.

    Parameters
    ----------
    dn : numpy.ndarray
        Training DNs, uint16 (N, 6, H, W), 12-bit values.
    mask : numpy.ndarray
        Cloud masks, uint8 (N, H, W), 1 for cloud.
    epochs : int
        Passes over the training set (one-cycle learning-rate schedule over all of them).
    batch_size : int
        Tiles per optimizer step.
    lr : float
        Peak learning rate of AdamW.
    seed : int
        Seed of weights and shuffling; the run is deterministic for a given seed.
    width : str or int
        CloudNet width (``"quick"``, ``"full"`` or an int).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    TrainResult
        The eval-mode model, the normalization dict and the per-epoch history.
    """
    if dn.ndim != 4 or mask.shape != (dn.shape[0],) + dn.shape[2:]:
        raise ValueError(f"expected dn (N,C,H,W) and mask (N,H,W), got {dn.shape} and {mask.shape}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    torch.manual_seed(seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    normalization = fit_normalization(dn)
    x = torch.from_numpy(apply_normalization(dn, normalization))
    y = torch.from_numpy((np.asarray(mask) > 0).astype(np.float32))[:, None]
    w_cloud = cloud_pixel_weight(mask)
    p = float(y.mean())
    w_norm = 1.0 / (p * w_cloud + (1.0 - p))  # mean pixel weight becomes 1

    model = CloudNet(bands=dn.shape[1], width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.25)
    loss_fn = nn.BCEWithLogitsLoss(reduction="none")
    gen = torch.Generator().manual_seed(seed)
    history: List[Dict] = []
    t0 = time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, desc="train cloudnet", unit="step", disable=not progress,
               leave=False)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        tot_loss = tot_correct = tot_pix = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            xb, yb = x[idx], y[idx]
            logits = model.forward_logits(xb)
            weight = (1.0 + (w_cloud - 1.0) * yb) * w_norm
            loss = (loss_fn(logits, yb) * weight).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                tot_loss += float(loss.detach()) * len(idx)
                tot_correct += float(((logits > 0).float() == yb).sum())
            tot_pix += yb.numel()
            bar.update(1)
        history.append({"epoch": epoch + 1, "loss": tot_loss / len(x), "accuracy": tot_correct / tot_pix,
                        "seconds": time.perf_counter() - t0})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", acc=f"{history[-1]['accuracy']:.3f}")
    bar.close()
    model.eval()
    return TrainResult(model=model, normalization=normalization, history=history, cloud_weight=w_cloud,
                       seconds=time.perf_counter() - t0)
