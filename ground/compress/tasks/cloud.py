"""Cloud screening (CloudNet, :mod:`ground.models.cloudnet`) as a compressible task.

Track ``synthetic``: training, validation and test tiles from :func:`ground.data.scenes.make_tiles`
with different seeds (``2 * seed``, ``2 * seed + 1`` as in :mod:`ground.cloudscreen`, and
``2 * seed + 1001`` for validation); loss = the distribution-aware weighted BCE of
:mod:`ground.train`. Metrics per pixel (cloud vs clear): OA, AA, kappa, mIoU.

Evaluation split ``olinda`` (real Landsat-7 ETM+, no cloud mask): the scene's 25 full 64 x 64
tiles. Olinda is 8-bit DN without calibration metadata; each band is mapped linearly onto the
12-bit DN scale of the training data so that its 2nd and 50th percentiles match those of two
synthetic *clear* scenes (a radiometric normalisation, not a calibration; bright pixels stay
bright relative to the scene). The scene is cloud-free by visual inspection, so every pixel
called cloud is a false positive: ``false_positive_rate`` is the weak label this scene allows.
Variants are also compared with the FP32 model: ``agreement`` (fraction of pixels with the same
cloud/clear call, the primary figure for this split).

Knowledge distillation: logits through a temperature-scaled BCE against the teacher's
probabilities (times T^2), features = the fused map before the head.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from torch import nn

from ground.compress.tasks.base import Out, Split, Task, TrackData, confusion_metrics
from ground.data.scenes import make_tiles
from ground.models.cloudnet import CloudNet
from ground.train import apply_normalization, cloud_pixel_weight, fit_normalization

TILE = 64


def olinda_tiles(tile: int = TILE, root=None) -> np.ndarray:
    """The Olinda scene's full tiles as (N, 6, tile, tile) uint16 DN, normalised to the 12-bit scale.

    Per band, ``dn12 = a * dn8 + b`` maps Olinda's 2nd and 50th percentiles onto those of two
    synthetic clear scenes (see the module docstring).
    """
    from ground.data.real import load_olinda
    from ground.data.scenes import make_scene

    raw = load_olinda(root).optical.astype(np.float64)
    ref = np.concatenate([make_scene(s, 128, 128, cloud_cover=0.0).dn.reshape(6, -1) for s in (7, 8)], 1)
    lo_r, mid_r = np.percentile(ref, 2, axis=1), np.percentile(ref, 50, axis=1)
    lo_o, mid_o = np.percentile(raw.reshape(6, -1), 2, axis=1), np.percentile(raw.reshape(6, -1), 50, axis=1)
    gain = (mid_r - lo_r) / np.maximum(mid_o - lo_o, 1.0)
    opt = np.clip(np.rint(gain[:, None, None] * (raw - lo_o[:, None, None]) + lo_r[:, None, None]), 0, 4095)
    opt = opt.astype(np.uint16)
    rows, cols = opt.shape[1] // tile, opt.shape[2] // tile
    crop = opt[:, :rows * tile, :cols * tile].reshape(6, rows, tile, cols, tile)
    return np.ascontiguousarray(crop.transpose(1, 3, 0, 2, 4).reshape(rows * cols, 6, tile, tile))


class CloudTask(Task):
    """CloudNet cloud screen; see the module docstring."""

    name = "cloud"
    input_names = ("dn_norm",)
    output_names = ("mask", "cloud_fraction")
    metric_names = ("OA", "AA", "kappa", "mIoU")
    primary = "OA"
    data_defaults = {"train": 512, "val": 64, "test": 256, "olinda": True}
    tracks = ("synthetic",)
    tolerant_outputs = {"cloud_fraction": 0.05}
    threshold = 0.5

    def load(self, track: str, data: Dict, seed: int) -> TrackData:
        dn, mask = make_tiles(int(data["train"]), seed=2 * seed)
        norm = fit_normalization(dn)
        self.w_cloud = cloud_pixel_weight(mask)
        p = float(np.mean(mask > 0))
        self.w_norm = 1.0 / (p * self.w_cloud + (1.0 - p))

        def split(name, n, s, note):
            d, m = make_tiles(n, seed=s)
            return Split(name, {"dn_norm": apply_normalization(d, norm)}, {"mask": (m > 0).astype(np.float32)},
                         note=note)
        train = Split("train", {"dn_norm": apply_normalization(dn, norm)}, {"mask": (mask > 0).astype(np.float32)},
                      note=f"{len(dn)} synthetic tiles")
        evals = {"test": split("test", int(data["test"]), 2 * seed + 1, "synthetic held-out tiles")}
        if data.get("olinda"):
            evals["olinda"] = Split("olinda", {"dn_norm": apply_normalization(olinda_tiles(), norm)}, {},
                                    labelled=False, note="Olinda ETM+ (real, cloud-free by inspection: every cloud "
                                    "call is a false positive; radiometrically normalised 8-bit DN)")
        val = split("val", int(data["val"]), 2 * seed + 1001, "synthetic validation tiles")
        return TrackData(train, val, evals, {"normalization": {"dn_norm": norm}, "cloud_weight": self.w_cloud,
                                             "cloud_pixels": p})

    def build(self, width, data: TrackData) -> nn.Module:
        return CloudNet(bands=6, width=int(width))

    def forward(self, model, batch) -> Out:
        x = batch["dn_norm"]
        s = model.stem(x)
        f = model.fuse(torch.cat([model.high(s), model.context(s)], dim=1)) + s
        return Out(model.head(f), [f])

    def loss(self, out: Out, batch) -> torch.Tensor:
        y = batch["mask"][:, None]
        weight = (1.0 + (self.w_cloud - 1.0) * y) * self.w_norm
        bce = nn.functional.binary_cross_entropy_with_logits(out.logits, y, reduction="none")
        return (bce * weight).mean(dim=(1, 2, 3))

    def kd_logit_loss(self, student: Out, teacher: Out, temperature: float) -> torch.Tensor:
        t = temperature
        soft = torch.sigmoid(teacher.logits / t)
        return nn.functional.binary_cross_entropy_with_logits(student.logits / t, soft) * t * t

    def deploy_fn(self, net, x):
        s = net.stem(x)
        mask = torch.sigmoid(net.head(net.fuse(torch.cat([net.high(s), net.context(s)], 1)) + s))
        return mask, (mask > self.threshold).to(mask.dtype).mean(dim=(2, 3))

    def metrics(self, outputs, split: Split, reference=None) -> Dict[str, float]:
        pred = outputs["mask"][:, 0] > self.threshold
        if split.labelled:
            return confusion_metrics(split.targets["mask"] > 0.5, pred, 2)
        out = {"false_positive_rate": float(np.mean(pred))}
        if reference is not None:
            out["agreement"] = float(np.mean(pred == (reference["mask"][:, 0] > self.threshold)))
        return out

    def prune_spec(self, model):
        groups = {"stem+fuse": [("stem.0", "stem.1"), ("fuse.0", "fuse.1")], "high": [("high.0", "high.1")],
                  "context1": [("context.1.0", "context.1.1")], "context3": [("context.3.0", "context.3.1")],
                  "context4": [("context.4.0", "context.4.1")]}
        consumers = {"high.0": ["stem+fuse"], "context.1.0": ["stem+fuse"], "head": ["stem+fuse"],
                     "context.3.0": ["context1"], "context.4.0": ["context3"], "fuse.0": ["high", "context4"]}
        return groups, consumers

    def specs(self, data: TrackData):
        """Bundle tensor specs (inputs with the training normalization)."""
        from engines.manifest import TensorSpec
        return ([TensorSpec("dn_norm", "float32", ("N", 6, TILE, TILE), data.meta["normalization"]["dn_norm"])],
                [TensorSpec("mask", "float32", ("N", 1, TILE, TILE)), TensorSpec("cloud_fraction", "float32", ("N", 1))])
