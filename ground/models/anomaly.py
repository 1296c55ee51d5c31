"""STAD-style hyperspectral anomaly detection: saliency-guided teacher, distilled CNN student,
small-target filter.

STAD's exact formulas are not public; this is our reading of its description, stated here:

* **Saliency** (:func:`rx_saliency`): the percentile rank (0..1) of each pixel's global RX score.
* **Teacher** (:class:`SpectralTeacher`): a fully connected autoencoder on per-pixel spectra
  (B -> h1 -> h2 -> h1 -> B, ReLU), trained to reconstruct the *background*: the loss is the
  squared reconstruction error weighted per pixel by ``clip((1 - s) / (1 - q), 0, 1)`` with
  ``s`` the saliency and ``q = 0.95``, so the 5 % most salient pixels (where targets hide)
  fade out of training. Anomaly score = mean squared reconstruction error over bands.
* **Student** (:class:`StudentCNN`): a small CNN for edge devices (Conv1x1 B->w1, Conv3x3
  w1->w2, Conv1x1 w2->w1, Conv1x1 w1->B; ReLU; all plain TensorRT layers), distilled stage by
  stage: MSE between each student stage (through a 1x1 adapter used only in training) and the
  matching teacher stage (h1, h2, h1), plus MSE between the two reconstructions. Each epoch
  10 % of the pixels get standard-normal "probe" noise before both networks see them, so the
  student learns the teacher off the background manifold too (without probes it matched the
  teacher on background but lost up to 10 AUC points on targets in some of our runs). Its score is its
  own reconstruction error, so onboard only the student runs.
* **Small-target filter** (:func:`small_target_filter`): ``max(0, s - mean of s over the ring
  between a 3x3 and a 9x9 box)``: a target narrower than the inner box keeps its peak, extended
  bright regions (a field of unusual but common material) are flattened.

Inputs are standardised per band with the training scenes' mean and std. Sizes:
``quick`` (h1=64, h2=12, w1=16, w2=8; 3 training scenes of 64 x 64) trains in 7-60 s on one
core (48 or 180 bands); ``full`` (h1=128, h2=24, w1=32, w2=16; 6 training scenes of 128 x 128)
in about 8 minutes at 180 bands (docs/models.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from ground.data.hsi import make_hsi_scene, roc_auc
from ground.models.landcover import one_thread
from ground.models.rx import global_rx, local_rx

__all__ = ["SIZES", "SpectralTeacher", "StudentCNN", "rx_saliency", "small_target_filter", "train_teacher",
           "distill_student", "score", "StadResult", "run_stad"]

SIZES = {"quick": dict(h1=64, h2=12, w1=16, w2=8, scenes=3, size=64, epochs=150, distill_epochs=150),
         "full": dict(h1=128, h2=24, w1=32, w2=16, scenes=6, size=128, epochs=100, distill_epochs=200)}


class SpectralTeacher(nn.Module):
    """Fully connected autoencoder on per-pixel spectra; works on (N, B) or (N, B, H, W)."""

    def __init__(self, bands: int, h1: int = 64, h2: int = 12):
        super().__init__()
        self.enc1, self.enc2 = nn.Linear(bands, h1), nn.Linear(h1, h2)
        self.dec1, self.dec2 = nn.Linear(h2, h1), nn.Linear(h1, bands)

    def stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Hidden stages (h1, h2, h1) and the reconstruction, in the input's layout."""
        image = x.dim() == 4
        v = x.permute(0, 2, 3, 1) if image else x
        f1 = torch.relu(self.enc1(v))
        f2 = torch.relu(self.enc2(f1))
        f3 = torch.relu(self.dec1(f2))
        out = [f1, f2, f3, self.dec2(f3)]
        return [t.permute(0, 3, 1, 2) for t in out] if image else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)[-1]


class StudentCNN(nn.Module):
    """Small convolutional student (see the module docstring)."""

    def __init__(self, bands: int, w1: int = 16, w2: int = 8):
        super().__init__()
        self.s1, self.s2 = nn.Conv2d(bands, w1, 1), nn.Conv2d(w1, w2, 3, padding=1, padding_mode="replicate")
        self.s3, self.out = nn.Conv2d(w2, w1, 1), nn.Conv2d(w1, bands, 1)

    def stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Stage features (w1, w2, w1) and the reconstruction, (N, C, H, W) each."""
        f1 = torch.relu(self.s1(x))
        f2 = torch.relu(self.s2(f1))
        f3 = torch.relu(self.s3(f2))
        return [f1, f2, f3, self.out(f3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)[-1]


def rx_saliency(cube) -> np.ndarray:
    """Percentile rank (0..1) of each pixel's global RX score; (H, W) float32."""
    rx = global_rx(cube).ravel()
    ranks = np.empty(rx.size)
    ranks[np.argsort(rx, kind="stable")] = np.arange(rx.size)
    return (ranks / max(rx.size - 1, 1)).reshape(np.shape(cube)[1:]).astype(np.float32)


def small_target_filter(score, inner: int = 3, outer: int = 9) -> np.ndarray:
    """Centre-surround filter ``max(0, s - ring mean)`` with the ring between two odd boxes."""
    s = np.asarray(score, dtype=np.float64)
    pad = outer // 2
    p = np.pad(s, pad, mode="reflect")
    ii = np.zeros((p.shape[0] + 1, p.shape[1] + 1))
    ii[1:, 1:] = p.cumsum(0).cumsum(1)
    h, w = s.shape

    def box(k):
        o = pad - k // 2
        r, c = np.arange(h) + o, np.arange(w) + o
        top, left = r[:, None], c[None]
        return ii[top + k, left + k] - ii[top, left + k] - ii[top + k, left] + ii[top, left]

    ring = (box(outer) - box(inner)) / (outer * outer - inner * inner)
    return np.maximum(s - ring, 0.0)


def _weights(saliency: np.ndarray, q: float = 0.95) -> np.ndarray:
    return np.clip((1.0 - saliency) / (1.0 - q), 0.0, 1.0).astype(np.float32)


def train_teacher(x: np.ndarray, weights: np.ndarray, h1: int, h2: int, epochs: int, seed: int = 0,
                  lr: float = 3e-3, batch: int = 2048) -> SpectralTeacher:
    """Fit the teacher on standardised pixels ``x`` (N, B) with per-pixel loss weights (N,)."""
    torch.manual_seed(seed)
    model = SpectralTeacher(x.shape[1], h1, h2)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, wt = torch.from_numpy(x), torch.from_numpy(weights)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(batch):
            err = ((model(xt[idx]) - xt[idx]) ** 2).mean(1)
            loss = (err * wt[idx]).sum() / wt[idx].sum().clamp_min(1e-6)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def distill_student(teacher: SpectralTeacher, cubes: torch.Tensor, w1: int, w2: int, epochs: int,
                    seed: int = 0, lr: float = 3e-3, probe: float = 0.1) -> StudentCNN:
    """Stage-wise MSE distillation of ``teacher`` into a :class:`StudentCNN` on (N, B, H, W) cubes.

    Each epoch a fraction ``probe`` of the pixels gets standard-normal noise added (in
    standardised units) before both networks see it, so the student also learns what the
    teacher does *off* the background manifold, where anomalies live.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    student = StudentCNN(cubes.shape[1], w1, w2)
    widths = [t.shape[1] for t in teacher.stages(cubes[:1, :, :1, :1])[:3]]
    adapters = nn.ModuleList(nn.Conv2d(s, t, 1) for s, t in zip((w1, w2, w1), widths))
    opt = torch.optim.Adam(list(student.parameters()) + list(adapters.parameters()), lr=lr)
    for _ in range(epochs):
        mask = (torch.rand(cubes.shape[0], 1, *cubes.shape[2:], generator=gen) < probe).float()
        x = cubes + mask * torch.randn(cubes.shape, generator=gen)
        with torch.no_grad():
            targets = teacher.stages(x)
        stages = student.stages(x)
        loss = sum(nn.functional.mse_loss(a(s), t) for a, s, t in zip(adapters, stages[:3], targets[:3]))
        loss = loss + nn.functional.mse_loss(stages[3], targets[3])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student.eval()


def score(model: nn.Module, cube: np.ndarray) -> np.ndarray:
    """Mean squared reconstruction error per pixel of a standardised (B, H, W) cube."""
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(cube, dtype=np.float32))[None]
        return ((model(x) - x) ** 2).mean(1)[0].numpy().astype(np.float64)


@dataclass
class StadResult:
    """AUCs (mean over test scenes) and what produced them."""

    auc: Dict[str, float]
    teacher: SpectralTeacher
    student: StudentCNN
    params: Dict[str, int] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)


def run_stad(size="quick", seed: int = 0, abundance: Sequence[float] = (0.05, 0.30), n_bands=None,
             test_scenes: int = 3, target: str = "roof", with_local_rx: bool = True) -> StadResult:
    """Train teacher and student on synthetic scenes of one region; compare with RX on held-out scenes.

    Parameters
    ----------
    size : str or dict
        A key of :data:`SIZES` or a dict with the same keys (h1, h2, w1, w2, scenes, size,
        epochs, distill_epochs).
    seed : int
        Region (background endmembers), scene layouts and weights.
    abundance : (float, float)
        Target abundance range.
    n_bands : int, optional
        Sensor bands (None: the 180 earthlib bands).
    test_scenes : int
    target : {"roof", "burned"}
    with_local_rx : bool
        Also score local RX (the slowest baseline).

    Returns
    -------
    StadResult
        ``auc`` keys: ``rx_global``, ``rx_local``, ``teacher``, ``student`` and each with
        ``+filter`` (after :func:`small_target_filter`).
    """
    with one_thread():
        cfg = SIZES[size] if isinstance(size, str) else dict(size)
        return _run(cfg, seed, abundance, n_bands, test_scenes, target, with_local_rx)


def _run(cfg, seed, abundance, n_bands, test_scenes, target, with_local_rx) -> StadResult:
    make = lambda s: make_hsi_scene(s, cfg["size"], n_bands, target, abundance, region_seed=seed)  # noqa: E731
    train = [make(1000 * seed + i) for i in range(cfg["scenes"])]
    test = [make(1000 * seed + 500 + i) for i in range(test_scenes)]
    cubes = np.stack([s.cube for s in train])
    mean, std = cubes.mean(axis=(0, 2, 3)), cubes.std(axis=(0, 2, 3)) + 1e-6
    norm = lambda c: ((c - mean[:, None, None]) / std[:, None, None]).astype(np.float32)  # noqa: E731
    t0 = time.perf_counter()
    weights = np.concatenate([_weights(rx_saliency(s.cube)).ravel() for s in train])
    pixels = np.concatenate([norm(s.cube).reshape(len(mean), -1).T for s in train])
    teacher = train_teacher(pixels, weights, cfg["h1"], cfg["h2"], cfg["epochs"], seed)
    t1 = time.perf_counter()
    student = distill_student(teacher, torch.from_numpy(np.stack([norm(s.cube) for s in train])),
                              cfg["w1"], cfg["w2"], cfg["distill_epochs"], seed)
    t2 = time.perf_counter()
    maps: Dict[str, List[float]] = {}
    for s in test:
        raw = {"rx_global": global_rx(s.cube), "teacher": score(teacher, norm(s.cube)),
               "student": score(student, norm(s.cube))}
        if with_local_rx:
            raw["rx_local"] = local_rx(s.cube)
        for name, m in raw.items():
            maps.setdefault(name, []).append(roc_auc(m, s.targets))
            maps.setdefault(name + "+filter", []).append(roc_auc(small_target_filter(m), s.targets))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return StadResult({k: float(np.mean(v)) for k, v in maps.items()}, teacher, student,
                      {"teacher": count(teacher), "student": count(student)},
                      {"teacher_train": t1 - t0, "student_distill": t2 - t1})
