"""FedFusion-style multimodal land-cover classification: spectral + elevation, low-rank fusion.

Patch classification: the ``p x p`` patch around a pixel gets the centre pixel's class.

Data. Synthetic (:func:`make_multimodal_set`): clear ETM+ scenes of :mod:`ground.data.scenes`
(6 classes) plus a DSM (:func:`synthetic_elevation`) tied to the class as terrain is: rolling
ground (Gaussian fields, 30 m and 8 m), +25 m under vegetation (forested hills), -20 m around
water, graded flat under built land, water one flat surface at the scene's lake level; on top
what a LiDAR DSM sees: canopy 12 +- 4 m, 2 x 2 px buildings of 4-15 m (40 % streets at 0 m),
< 1 m litter on npv, sparse 0-5 m snags on burned land; 0.3 m noise. Elevation separates
water, vegetation, built and bare land but not bare / npv / burned. Real: Olinda (optical +
DEM, no labels: :func:`olinda_sanity`) and Itaipu (B2-B4 labelled pixels, no DEM:
:func:`itaipu_spectral`, spectral branch only).

Model (:class:`FusionNet`). A shallow encoder per modality (2 x Conv3x3-BN-ReLU, width w) ->
:func:`lowrank` -> additive branch (element-wise sum) and cascading branch (concatenation,
Conv1x1) -> Conv3x3-BN-ReLU (2w) + global average pool each -> one shared linear classifier.
Loss: CE(additive) + MSE(cascade pooled, additive pooled.detach()) + KL(additive.detach() ||
cascade); predictions come from the additive branch. Single-modality variants: one encoder,
the same low-rank step, the additive trunk only.

Low rank. Shallow features (B, C, H, W) form the (B*C) x (H*W) matrix M. Its row means mu are
kept (post-ReLU features have a large mean, which alone would hold > 75 % of the energy and
leave rank 1), and the truncated SVD of ``M - mu`` keeps the smallest rank r whose singular
values hold ``energy`` (75 %) of sum(s^2). We return ``mu + (M - mu) V_r V_r^T`` with ``V_r``
(eigenvectors of the Gram matrix, float64) under ``no_grad``: a stop-gradient on the basis, as
SVD backward is unstable for close singular values; gradients flow through M. The basis is
shared by the batch, so outputs depend on the batch: evaluation runs in fixed batches of 128.
The FL payload is mu, U_r S_r and V_r: ``B*C + (B*C + H*W) * r`` values, not ``B*C*H*W``.

Sizes: ``quick`` (w=16, p=7, 12 epochs, 4,000 patches) trains in 5-12 s per variant on one
core; ``full`` (w=32, p=11, 40 epochs, 24,000 patches) in 7-15 minutes (docs/models.md).
"""
from __future__ import annotations

import contextlib
import time
from typing import Dict, Iterator, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ground.data.scenes import LANDCOVER_CLASSES, make_scene

__all__ = ["SIZES", "synthetic_elevation", "make_multimodal_set", "lowrank", "lowrank_payload", "FusionNet",
           "train_landcover", "predict", "classification_metrics", "itaipu_spectral", "olinda_sanity"]

SIZES = {"quick": dict(width=16, patch=7, epochs=12, scenes=16, size=64, per_scene=250),
         "full": dict(width=32, patch=11, epochs=40, scenes=48, size=96, per_scene=500)}
BATCH = 128


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread (restored after): these tensors are tiny, and on a shared
    2-core machine two threads are several times slower as soon as another process competes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (FFT on a reflect-padded image)."""
    pad = int(3 * sigma) + 1
    p = np.pad(img, pad, mode="reflect")
    f2 = np.fft.fftfreq(p.shape[0])[:, None] ** 2 + np.fft.rfftfreq(p.shape[1])[None, :] ** 2
    out = np.fft.irfft2(np.fft.rfft2(p) * np.exp(-2 * np.pi ** 2 * sigma ** 2 * f2), s=p.shape)
    return out[pad:-pad, pad:-pad]


def synthetic_elevation(landcover: np.ndarray, seed: int) -> np.ndarray:
    """DSM in metres (H, W) float32 correlated with ``landcover`` (see the module docstring)."""
    rng = np.random.default_rng([seed, 3])
    h, w = landcover.shape
    field = lambda s: (lambda f: (f - f.mean()) / max(f.std(), 1e-9))(_blur(rng.standard_normal((h, w)), s))  # noqa
    is_ = {name: (landcover == k).astype(np.float64) for k, name in enumerate(LANDCOVER_CLASSES)}
    ground = 30 * field(20.0) + 8 * field(5.0) + 25 * _blur(is_["vegetation"], 4) - 20 * _blur(is_["water"], 4)
    built = np.clip(_blur(is_["built"], 3) * 1.5, 0, 1)
    ground = (1 - built) * ground + built * _blur(ground, 8)
    if is_["water"].any():
        ground[landcover == 0] = np.percentile(ground[landcover == 0], 20)
    blocks = np.kron(rng.uniform(4, 15, (h // 2 + 1, w // 2 + 1)) * (rng.random((h // 2 + 1, w // 2 + 1)) > 0.4),
                     np.ones((2, 2)))[:h, :w]
    objects = (is_["vegetation"] * np.clip(12 + 4 * field(2.0) + 2 * rng.standard_normal((h, w)), 0, None)
               + is_["built"] * blocks + is_["npv"] * rng.uniform(0, 1, (h, w))
               + is_["burned"] * (rng.random((h, w)) < 0.15) * rng.uniform(0, 5, (h, w)))
    return (ground + objects + 0.3 * rng.standard_normal((h, w))).astype(np.float32)


def _zscore(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (x - x.mean(axis=(1, 2), keepdims=True)) / (x.std(axis=(1, 2), keepdims=True) + 1e-6)


def _patches(image: np.ndarray, rows, cols, p: int) -> np.ndarray:
    """(N, C, p, p) patches of a (C, H, W) image centred on (rows, cols), reflect-padded."""
    padded = np.pad(image, ((0, 0), (p // 2, p // 2), (p // 2, p // 2)), mode="reflect")
    view = np.lib.stride_tricks.sliding_window_view(padded, (p, p), axis=(1, 2))   # (C, H, W, p, p)
    return np.ascontiguousarray(view[:, rows, cols].transpose(1, 0, 2, 3))


def _relief(elevation: np.ndarray, rows, cols, p: int) -> np.ndarray:
    """(N, 1, p, p) elevation patches relative to their centre pixel (m)."""
    x = _patches(np.asarray(elevation, dtype=np.float32)[None], rows, cols, p)
    return x - x[:, :, p // 2: p // 2 + 1, p // 2: p // 2 + 1]


def make_multimodal_set(n_scenes: int, seed: int, size: int = 64, per_scene: int = 250, patch: int = 7,
                        stats=None) -> Dict:
    """Synthetic spectral + elevation patches with labels.

    Spectral input is reflectance (DN / 4095); elevation is the local relief, the DSM minus the
    DSM at the patch centre (m), so the branch does not depend on the terrain's absolute level
    (absolute heights generalised worse across scenes in our runs). Both are then standardised
    per channel with ``stats`` (``{modality: (mean, std)}``), by default this set's own: build
    the training set first and pass its ``stats`` to the test set.

    Returns
    -------
    dict
        ``spectral`` (N, 6, p, p), ``elevation`` (N, 1, p, p) float32, ``labels`` (N,) int64,
        ``scene`` (N,) scene index, ``rowcol`` (N, 2), ``stats``.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for i, s in enumerate(rng.integers(0, 2 ** 62, n_scenes)):
        scene = make_scene(int(s), size, size, cloud_cover=0.0)
        dsm = synthetic_elevation(scene.landcover, int(s))
        r, c = rng.integers(0, size, per_scene), rng.integers(0, size, per_scene)
        parts.append((_patches(scene.dn.astype(np.float32) / 4095.0, r, c, patch), _relief(dsm, r, c, patch),
                      scene.landcover[r, c].astype(np.int64), np.full(per_scene, i), np.stack([r, c], 1)))
    keys = ("spectral", "elevation", "labels", "scene", "rowcol")
    out = {k: np.concatenate([p[j] for p in parts]) for j, k in enumerate(keys)}
    stats = stats or {m: (out[m].mean(axis=(0, 2, 3)), out[m].std(axis=(0, 2, 3)) + 1e-6) for m in keys[:2]}
    for m in keys[:2]:
        out[m] = ((out[m] - stats[m][0][:, None, None]) / stats[m][1][:, None, None]).astype(np.float32)
    out["stats"] = stats
    return out


def lowrank(features: torch.Tensor, energy: float = 0.75) -> Tuple[torch.Tensor, int]:
    """Mean-centred truncated SVD of the (B*C) x (H*W) feature matrix, basis under stop-gradient.

    Returns
    -------
    (torch.Tensor, int)
        ``mu + (M - mu) V_r V_r^T`` reshaped to (B, C, H, W), and the rank r.
    """
    b, c, h, w = features.shape
    m = features.reshape(b * c, h * w)
    mu = m.mean(dim=1, keepdim=True)
    centred = m - mu
    with torch.no_grad():                   # right singular vectors = eigenvectors of the Gram matrix
        gram = centred.double().T @ centred.double()
        s2, v = torch.linalg.eigh(gram)
        s2, v = s2.flip(0).clamp_min(0), v.flip(1)
        kept = torch.cumsum(s2, 0) / s2.sum().clamp_min(1e-30)
        r = min(int((kept < energy).sum()) + 1, h * w)
        basis = v[:, :r].to(m.dtype)
    return (mu + (centred @ basis) @ basis.T).reshape(b, c, h, w), r


def lowrank_payload(features: torch.Tensor, energy: float = 0.75, bytes_per_value: int = 4) -> Dict:
    """Bytes of the low-rank factors (row means, U_r S_r, V_r) vs the full shallow features (the FL payload)."""
    b, c, h, w = features.shape
    _, r = lowrank(features, energy)
    full, low = b * c * h * w * bytes_per_value, (b * c + (b * c + h * w) * r) * bytes_per_value
    return {"rank": r, "full_bytes": full, "lowrank_bytes": low, "ratio": full / low}


def _block(c_in: int, c_out: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class FusionNet(nn.Module):
    """Dual-branch (or single-modality) land-cover classifier; see the module docstring.

    Parameters
    ----------
    channels : dict
        Input channels per modality, e.g. ``{"spectral": 6, "elevation": 1}`` (insertion order).
    classes : int
    width : int
    energy : float
        Kept singular-value energy of the low-rank step (None: no compression).
    """

    def __init__(self, channels: Dict[str, int], classes: int, width: int = 16, energy=0.75):
        super().__init__()
        self.modalities, self.energy = tuple(channels), energy
        self.encoders = nn.ModuleDict({m: nn.Sequential(_block(c, width), _block(width, width))
                                       for m, c in channels.items()})
        self.additive = _block(width, 2 * width)
        self.cascade = nn.Sequential(_block(len(channels) * width, width, 1), _block(width, 2 * width)) \
            if len(channels) > 1 else None
        self.classifier = nn.Linear(2 * width, classes)
        self.ranks: Dict[str, int] = {}
        self.patch, self.stats = None, None                # patch edge and input statistics of training

    def shallow(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Low-rank shallow features per modality (ranks recorded in ``self.ranks``)."""
        out = {}
        for m in self.modalities:
            f = self.encoders[m](inputs[m])
            out[m], self.ranks[m] = lowrank(f, self.energy) if self.energy else (f, f.shape[2] * f.shape[3])
        return out

    def forward(self, inputs: Dict[str, torch.Tensor]):
        """``(logits_additive, pooled_additive, logits_cascade or None, pooled_cascade or None)``."""
        f = self.shallow(inputs)
        add = self.additive(sum(f.values())).mean(dim=(2, 3))
        if self.cascade is None:
            return self.classifier(add), add, None, None
        cat = self.cascade(torch.cat([f[m] for m in self.modalities], 1)).mean(dim=(2, 3))
        return self.classifier(add), add, self.classifier(cat), cat


def _tensors(data: Dict, modalities: Sequence[str], idx=slice(None)) -> Dict[str, torch.Tensor]:
    return {m: torch.from_numpy(data[m][idx]) for m in modalities}


def train_landcover(data: Dict, modalities=("spectral", "elevation"), size: str = "quick", seed: int = 0,
                    classes: int = len(LANDCOVER_CLASSES), epochs=None, lr: float = 3e-3,
                    energy=0.75) -> Tuple[FusionNet, Dict]:
    """Train a :class:`FusionNet` on ``data`` (dict of arrays as from :func:`make_multimodal_set`).

    Returns
    -------
    (FusionNet, dict)
        The eval-mode model and ``{"loss": [per-epoch mean], "seconds": float}``.
    """
    with one_thread():
        return _train(data, modalities, SIZES[size], seed, classes, epochs, lr, energy)


def _train(data, modalities, cfg, seed, classes, epochs, lr, energy):
    torch.manual_seed(seed)
    model = FusionNet({m: data[m].shape[1] for m in modalities}, classes, cfg["width"], energy)
    model.patch, model.stats = int(data[modalities[0]].shape[-1]), data.get("stats")
    epochs = epochs or cfg["epochs"]
    n = len(data["labels"])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * -(-n // BATCH), pct_start=0.2)
    gen, y_all, history = torch.Generator().manual_seed(seed), torch.from_numpy(data["labels"]), []
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        total = 0.0
        for idx in torch.randperm(n, generator=gen).split(BATCH):
            logits, add, logits_cat, cat = model(_tensors(data, modalities, idx.numpy()))
            loss = nn.functional.cross_entropy(logits, y_all[idx])
            if cat is not None:
                loss = loss + nn.functional.mse_loss(cat, add.detach()) + nn.functional.kl_div(
                    logits_cat.log_softmax(1), logits.detach().log_softmax(1), log_target=True, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / n)
    return model.eval(), {"loss": history, "seconds": time.perf_counter() - t0}


def predict(model: FusionNet, data: Dict, branch: str = "additive") -> np.ndarray:
    """Class predictions in fixed batches of :data:`BATCH` (data order), additive or cascade branch."""
    out = []
    with torch.no_grad(), one_thread():
        for i in range(0, len(data[model.modalities[0]]), BATCH):
            logits, _, logits_cat, _ = model(_tensors(data, model.modalities, slice(i, i + BATCH)))
            out.append((logits if branch == "additive" else logits_cat).argmax(1).numpy())
    return np.concatenate(out)


def classification_metrics(y_true, y_pred, classes: int) -> Dict:
    """Overall accuracy, average (per-class recall) accuracy, Cohen's kappa and the confusion matrix."""
    cm = np.bincount(np.asarray(y_true) * classes + np.asarray(y_pred), minlength=classes * classes)
    cm = cm.reshape(classes, classes).astype(np.float64)
    n = cm.sum()
    oa = np.trace(cm) / n
    present = cm.sum(1) > 0
    aa = float(np.mean(np.diag(cm)[present] / cm.sum(1)[present]))
    pe = float((cm.sum(0) * cm.sum(1)).sum() / (n * n))
    return {"OA": float(oa), "AA": aa, "kappa": float((oa - pe) / (1 - pe)) if pe < 1 else 1.0,
            "confusion": cm.astype(np.int64)}


def itaipu_spectral(scene, size: str = "quick", seed: int = 0) -> Dict:
    """Spectral-only classifier on the Itaipu labelled pixels, spatially split.

    Each class's pixels are split by column: the western half trains, the eastern half tests
    (patches near the cut share context, up to ``p // 2`` px). Itaipu has no DEM, so the
    elevation branch cannot be evaluated here.

    Returns
    -------
    dict
        ``classification_metrics`` of the test half plus ``train``/``test`` sizes and ``seconds``.
    """
    _, y, rc = scene.labelled_pixels()
    p = SIZES[size]["patch"]
    r0, r1 = rc[:, 0].min() - p, rc[:, 0].max() + p + 1          # crop around the labels, then z-score
    c0, c1 = rc[:, 1].min() - p, rc[:, 1].max() + p + 1
    crop = _zscore(scene.optical[:, max(r0, 0):r1, max(c0, 0):c1])
    x = _patches(crop, rc[:, 0] - max(r0, 0), rc[:, 1] - max(c0, 0), p)
    train = np.zeros(len(y), bool)
    for k in np.unique(y):
        members = np.flatnonzero(y == k)
        train[members[rc[members, 1] <= np.median(rc[members, 1])]] = True
    split = lambda m: {"spectral": x[m], "labels": y[m]}  # noqa: E731
    model, hist = train_landcover(split(train), ("spectral",), size, seed, classes=len(scene.class_names), epochs=30)
    metrics = classification_metrics(y[~train], predict(model, split(~train)), len(scene.class_names))
    return {**metrics, "train": int(train.sum()), "test": int((~train).sum()), "seconds": hist["seconds"]}


def olinda_sanity(model: FusionNet, pair, stride: int = 4) -> Dict:
    """Unsupervised checks of a dual-branch model (trained on synthetic data) on the real Olinda pair.

    The elevation branch gets the DEM's local relief in metres, standardised with the training
    statistics (a physical quantity, comparable; the DEM is bare-earth, the synthetic DSM has
    canopy and buildings). The spectral branch gets the uint8 DN z-scored per band with the
    scene's own statistics: DN are not reflectance, so this is a domain shift, not a test.

    Returns
    -------
    dict
        ``branch_agreement`` (additive vs cascade predictions), ``class_fractions``,
        ``water_at_sea_level`` (fraction of pixels predicted water whose DEM is <= 1 m),
        ``ranks`` and ``payload`` (spectral features of the first batch).
    """
    h, w = pair.elevation.shape
    r, c = [a.ravel() for a in np.meshgrid(np.arange(0, h, stride), np.arange(0, w, stride), indexing="ij")]
    p, (mean, std) = model.patch, model.stats["elevation"]
    data = {"spectral": _patches(_zscore(pair.optical), r, c, p),
            "elevation": ((_relief(pair.elevation, r, c, p) - mean[:, None, None]) / std[:, None, None])
            .astype(np.float32)}
    add, cat = predict(model, data), predict(model, data, "cascade")
    with torch.no_grad():
        payload = lowrank_payload(model.encoders["spectral"](torch.from_numpy(data["spectral"][:BATCH])))
    water = add == 0
    return {"branch_agreement": float((add == cat).mean()),
            "class_fractions": {n: float((add == k).mean()) for k, n in enumerate(LANDCOVER_CLASSES)},
            "water_at_sea_level": float((pair.elevation[r, c][water] <= 1.0).mean()) if water.any() else float("nan"),
            "ranks": dict(model.ranks), "payload": payload}
