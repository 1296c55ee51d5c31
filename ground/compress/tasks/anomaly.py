"""Hyperspectral anomaly detection (STAD-style student, :mod:`ground.models.anomaly`) as a task.

The deployable model is the small CNN student; its graph outputs the per-pixel anomaly
``score`` = mean squared reconstruction error over bands. The FP32 baseline is the student
distilled from the fully connected teacher (stage-wise feature MSE through 1x1 adapters plus
reconstruction MSE, with probe noise on 10 % of the pixels), as in ``run_stad``; trained
*without* a teacher, the student minimises the saliency-weighted reconstruction error the
teacher itself is trained on. When distillation also keeps the task loss (``task_weight > 0``),
its target is the clean cube, so probe pixels teach the student to reconstruct the background
(a denoising term), never the noise. Metric: ROC AUC of the score against the target pixels, averaged
over test scenes, and after the small-target filter (``AUC+filter``).

Tracks:

* ``synthetic``: scenes of :func:`ground.data.hsi.make_hsi_scene` (one region per seed;
  training ``1000 * seed + i``, test ``+ 500 + i``, validation ``+ 900``), all bands or ``n_bands``.
* ``olinda``: the real Olinda ETM+ scene (6 bands, uint8 DN) as background. Rows 0-127 train,
  rows 128-191 validate, rows 192-319 test (64 x 64 tiles). Olinda has no anomaly labels, so
  sub-pixel targets are *implanted* into the validation and test tiles, as in
  ``make_hsi_scene``: ``x = (1 - a) x + a t`` at 24 jittered grid cells per tile, ``a`` uniform
  in the abundance range, ``t`` an earthlib roof spectrum resampled to the ETM+ bands and mapped
  to DN by a per-band gain and offset that match the mean and standard deviation of a synthetic
  clear ETM+ scene's reflectance to Olinda's DN (a crude radiometric model: no path radiance).
  Real background, synthetic targets: a semi-real test, labelled as such in the report.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from torch import nn

from ground.compress.tasks.base import Out, Split, Task, TrackData, normalization_dict, standardise
from ground.data.hsi import make_hsi_scene, roc_auc
from ground.models.anomaly import SpectralTeacher, StudentCNN, rx_saliency, small_target_filter, train_teacher

TILE = 64


def _implant(cube: np.ndarray, spectra: np.ndarray, rng, abundance, n: int = 24):
    size = cube.shape[1]
    cells = np.arange(6, size - 6, 8)
    grid = np.stack(np.meshgrid(cells, cells, indexing="ij"), -1).reshape(-1, 2)
    pos = grid[rng.permutation(len(grid))[:n]] + rng.integers(-2, 3, size=(min(n, len(grid)), 2))
    a = rng.uniform(abundance[0], abundance[1], len(pos))
    t = spectra[rng.integers(len(spectra), size=len(pos))]
    r, c = pos[:, 0], pos[:, 1]
    cube = cube.copy()
    cube[:, r, c] = (1 - a) * cube[:, r, c] + a * t.T
    mask = np.zeros(cube.shape[1:], bool)
    mask[r, c] = True
    return cube, mask


def olinda_scenes(abundance=(0.05, 0.30), seed: int = 0):
    """Olinda tiles: training cubes, and validation/test cubes with implanted roof targets (float32 DN)."""
    from ground.data.bands import resample
    from ground.data.hsi import ROOF_MATERIALS
    from ground.data.real import load_olinda
    from ground.data.scenes import make_scene
    from ground.data.spectra import load_spectral_library

    opt = load_olinda().optical.astype(np.float32)
    tiles = lambda r0, r1: [opt[:, r:r + TILE, c:c + TILE] for r in range(r0, r1, TILE)  # noqa: E731
                            for c in range(0, opt.shape[2] - TILE + 1, TILE)]
    lib = load_spectral_library()
    roofs = resample(lib.select(level2="built", level3=ROOF_MATERIALS).reflectance, lib.wavelengths_um)
    synth = make_scene(12345, 128, 128, cloud_cover=0.0).reflectance.reshape(6, -1)
    gain = opt.reshape(6, -1).std(1) / synth.std(1)
    offset = opt.reshape(6, -1).mean(1) - gain * synth.mean(1)
    spectra = roofs * gain + offset
    rng = np.random.default_rng([seed, 17])
    val = [_implant(t, spectra, rng, abundance) for t in tiles(128, 192)]
    test = [_implant(t, spectra, rng, abundance) for t in tiles(192, 320)]
    return np.stack(tiles(0, 128)), val, test


class AnomalyTask(Task):
    """STAD-style anomaly student; see the module docstring."""

    name = "anomaly"
    input_names = ("cube",)
    output_names = ("score",)
    metric_names = ("AUC", "AUC+filter")
    primary = "AUC"
    data_defaults = {"scenes": 3, "size": 64, "n_bands": 48, "test_scenes": 3, "abundance": [0.05, 0.30],
                     "target": "roof"}
    tracks = ("synthetic", "olinda")
    tdds_supported = False

    def load(self, track: str, data: Dict, seed: int) -> TrackData:
        ab = tuple(float(a) for a in data["abundance"])
        if track == "olinda":
            train_raw, val, test = olinda_scenes(ab, seed)
            val_raw, val_t = np.stack([v[0] for v in val]), np.stack([v[1] for v in val])
            test_raw, test_t = np.stack([t[0] for t in test]), np.stack([t[1] for t in test])
            source, note = "uint8", "Olinda ETM+ rows 192-319, real background + implanted roof targets"
        else:
            nb = None if data["n_bands"] in (None, 0) else int(data["n_bands"])
            make = lambda s: make_hsi_scene(s, int(data["size"]), nb, data["target"], ab, region_seed=seed)  # noqa
            train_raw = np.stack([make(1000 * seed + i).cube for i in range(int(data["scenes"]))])
            tests = [make(1000 * seed + 500 + i) for i in range(int(data["test_scenes"]))]
            v = make(1000 * seed + 900)
            val_raw, val_t = v.cube[None], v.targets[None]
            test_raw, test_t = np.stack([t.cube for t in tests]), np.stack([t.targets for t in tests])
            source, note = "float32", "synthetic held-out scenes (earthlib mixtures + roof targets)"
        mean, std = train_raw.mean(axis=(0, 2, 3)), train_raw.std(axis=(0, 2, 3)) + 1e-6
        weights = np.stack([np.clip((1.0 - rx_saliency(c)) / 0.05, 0, 1) for c in train_raw]).astype(np.float32)
        train = Split("train", {"cube": standardise(train_raw, mean, std)}, {"weights": weights},
                      note=f"{len(train_raw)} cubes of {train_raw.shape[1]} bands")
        mk = lambda x, t, name, nt: Split(name, {"cube": standardise(x, mean, std)}, {"targets": t}, note=nt)  # noqa
        name = "olinda" if track == "olinda" else "test"
        return TrackData(train, mk(val_raw, val_t, "val", "validation"), {name: mk(test_raw, test_t, name, note)},
                         {"normalization": {"cube": normalization_dict(mean, std, source)},
                          "bands": int(train_raw.shape[1])})

    def build(self, width, data: TrackData) -> nn.Module:
        w1, w2 = (int(w) for w in width)
        return StudentCNN(data.train.inputs["cube"].shape[1], w1, w2)

    def teacher(self, data: TrackData, settings, seed: int):
        h1, h2 = (int(w) for w in settings.teacher_width)
        x = data.train.inputs["cube"]
        pixels = x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])
        return train_teacher(np.ascontiguousarray(pixels), data.train.targets["weights"].ravel(), h1, h2,
                             int(settings.teacher_epochs), seed)

    def forward(self, model, batch) -> Out:
        st = model.stages(batch["cube"])
        return Out(st[-1], list(st[:-1]))

    def loss(self, out: Out, batch) -> torch.Tensor:
        err = ((out.logits - batch.get("clean", batch["cube"])) ** 2).mean(1)
        w = batch["weights"]
        return (err * w).sum((1, 2)) / w.sum((1, 2)).clamp_min(1e-6)

    def kd_logit_loss(self, student: Out, teacher: Out, temperature: float) -> torch.Tensor:
        return nn.functional.mse_loss(student.logits, teacher.logits)

    def augment(self, batch, gen, distilling: bool):
        if not distilling:
            return batch
        x = batch["cube"]
        mask = (torch.rand(x.shape[0], 1, *x.shape[2:], generator=gen) < 0.1).float()
        return {**batch, "cube": x + mask * torch.randn(x.shape, generator=gen), "clean": x}

    def deploy_fn(self, net, x):
        return (((net(x) - x) ** 2).mean(dim=1, keepdim=True),)

    def metrics(self, outputs, split: Split, reference=None) -> Dict[str, float]:
        score, truth = outputs["score"][:, 0].astype(np.float64), split.targets["targets"]
        return {"AUC": float(np.mean([roc_auc(s, t) for s, t in zip(score, truth)])),
                "AUC+filter": float(np.mean([roc_auc(small_target_filter(s), t) for s, t in zip(score, truth)]))}

    def prune_spec(self, model):
        groups = {"s1": [("s1", None)], "s2": [("s2", None)], "s3": [("s3", None)]}
        return groups, {"s2": ["s1"], "s3": ["s2"], "out": ["s3"]}

    def specs(self, data: TrackData):
        """Bundle tensor specs."""
        from engines.manifest import TensorSpec
        _, b, h, w = next(iter(data.evals.values())).inputs["cube"].shape
        return ([TensorSpec("cube", "float32", ("N", b, h, w), data.meta["normalization"]["cube"])],
                [TensorSpec("score", "float32", ("N", 1, h, w))])


__all__ = ["AnomalyTask", "olinda_scenes", "SpectralTeacher"]
