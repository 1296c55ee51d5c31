"""Multimodal land cover (FusionNet, :mod:`ground.models.landcover`) as a compressible task.

The deployable model is FusionNet's *additive* branch without the low-rank step
(``energy=None``, ``cascade=None``): the low-rank exchange is the federated-learning payload
(its SVD basis is shared by a batch, so it is not a per-sample inference op) and the cascading
branch is a training-time regularizer; predictions use the additive branch in any case. The
model is trained with cross-entropy only.

Tracks:

* ``synthetic``: spectral (6 ETM+ bands, reflectance) + elevation (local relief, m) patches
  from :func:`ground.models.landcover.make_multimodal_set`; training scenes seed
  ``3 * seed + 1``, test ``3 * seed + 2`` (held-out scenes), validation ``3 * seed + 3``.
* ``itaipu``: the real Itaipu Landsat-8 B2-B4 labelled pixels (4 classes), spectral branch only
  (no DEM there); each class's pixels split by column, the western half trains, the eastern half
  tests, as in :func:`ground.models.landcover.itaipu_spectral`. Validation = the training half
  (there is too little data for a third split; it only steers hybrid precision).

Metrics: OA, AA, kappa, mIoU over the classes. Distillation: KL on temperature-scaled logits
(times T^2) and MSE on the pooled additive features (through a linear adapter).
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from torch import nn

from ground.compress.tasks.base import Out, Split, Task, TrackData, confusion_metrics, normalization_dict
from ground.data.scenes import LANDCOVER_CLASSES
from ground.models import landcover as lc


class LandcoverTask(Task):
    """FusionNet land-cover classifier; see the module docstring."""

    name = "landcover"
    output_names = ("logits",)
    metric_names = ("OA", "AA", "kappa", "mIoU")
    primary = "OA"
    data_defaults = {"scenes": 16, "size": 64, "per_scene": 250, "patch": 7, "test_scenes": 8, "val_scenes": 4}
    tracks = ("synthetic", "itaipu")
    latency_samples = 256

    def load(self, track: str, data: Dict, seed: int) -> TrackData:
        if track == "itaipu":
            return self._itaipu(int(data["patch"]))
        self.input_names, self.classes = ("spectral", "elevation"), len(LANDCOVER_CLASSES)
        args = (int(data["size"]), int(data["per_scene"]), int(data["patch"]))
        tr = lc.make_multimodal_set(int(data["scenes"]), 3 * seed + 1, *args)
        test = lc.make_multimodal_set(int(data["test_scenes"]), 3 * seed + 2, *args, stats=tr["stats"])
        val = lc.make_multimodal_set(int(data["val_scenes"]), 3 * seed + 3, *args, stats=tr["stats"])
        split = lambda d, name, note: Split(name, {m: d[m] for m in self.input_names},  # noqa: E731
                                            {"labels": d["labels"]}, note=note)
        (sm, ss), (em, es) = tr["stats"]["spectral"], tr["stats"]["elevation"]
        norm = {"spectral": normalization_dict(sm, ss, "uint16", 1 / 4095.0), "elevation": normalization_dict(em, es, "float32")}
        return TrackData(split(tr, "train", f"{len(tr['labels'])} synthetic patches"), split(val, "val", "validation scenes"),
                         {"test": split(test, "test", "synthetic held-out scenes")},
                         {"normalization": norm, "classes": list(LANDCOVER_CLASSES), "patch": args[2]})

    def _itaipu(self, p: int) -> TrackData:
        from ground.data.real import load_itaipu

        self.input_names = ("spectral",)
        scene = load_itaipu()
        self.classes = len(scene.class_names)
        _, y, rc = scene.labelled_pixels()
        r0, c0 = max(rc[:, 0].min() - p, 0), max(rc[:, 1].min() - p, 0)
        crop = scene.optical[:, r0:rc[:, 0].max() + p + 1, c0:rc[:, 1].max() + p + 1].astype(np.float32)
        mean, std = crop.mean(axis=(1, 2)), crop.std(axis=(1, 2)) + 1e-6
        x = lc._patches(((crop - mean[:, None, None]) / std[:, None, None]).astype(np.float32),
                        rc[:, 0] - r0, rc[:, 1] - c0, p)
        west = np.zeros(len(y), bool)
        for k in np.unique(y):
            members = np.flatnonzero(y == k)
            west[members[rc[members, 1] <= np.median(rc[members, 1])]] = True
        mk = lambda m, name, note: Split(name, {"spectral": x[m]}, {"labels": y[m]}, note=note)  # noqa: E731
        train = mk(west, "train", f"Itaipu west half ({west.sum()} labelled pixels)")
        return TrackData(train, mk(west, "val", "= training half"),
                         {"itaipu": mk(~west, "itaipu", f"Itaipu east half, real Landsat-8 ({(~west).sum()} pixels)")},
                         {"normalization": {"spectral": normalization_dict(mean, std, "uint16")},
                          "classes": list(scene.class_names), "patch": p})

    def build(self, width, data: TrackData) -> nn.Module:
        channels = {m: data.train.inputs[m].shape[1] for m in self.input_names}
        model = lc.FusionNet(channels, self.classes, int(width), energy=None)
        model.cascade = None
        return model

    def forward(self, model, batch) -> Out:
        logits, pooled, _, _ = model({m: batch[m] for m in self.input_names})
        return Out(logits, [pooled])

    def loss(self, out: Out, batch) -> torch.Tensor:
        return nn.functional.cross_entropy(out.logits, batch["labels"], reduction="none")

    def kd_logit_loss(self, student: Out, teacher: Out, temperature: float) -> torch.Tensor:
        t = temperature
        return nn.functional.kl_div((student.logits / t).log_softmax(1), (teacher.logits / t).log_softmax(1),
                                    log_target=True, reduction="batchmean") * t * t

    def deploy_fn(self, net, *inputs):
        return (net(dict(zip(self.input_names, inputs)))[0],)

    def metrics(self, outputs, split: Split, reference=None) -> Dict[str, float]:
        return confusion_metrics(split.targets["labels"], outputs["logits"].argmax(1), self.classes)

    def labels(self, split: Split):
        return split.targets["labels"]

    def prune_spec(self, model):
        mods = model.modalities
        groups = {f"enc-{m}-0": [(f"encoders.{m}.0.0", f"encoders.{m}.0.1")] for m in mods}
        groups["enc-out"] = [(f"encoders.{m}.1.0", f"encoders.{m}.1.1") for m in mods]   # summed: tied
        groups["additive"] = [("additive.0", "additive.1")]
        consumers = {f"encoders.{m}.1.0": [f"enc-{m}-0"] for m in mods}
        consumers.update({"additive.0": ["enc-out"], "classifier": ["additive"]})
        return groups, consumers

    def specs(self, data: TrackData):
        """Bundle tensor specs."""
        from engines.manifest import TensorSpec
        p = data.meta["patch"]
        ins = [TensorSpec(m, "float32", ("N", data.train.inputs[m].shape[1], p, p), data.meta["normalization"][m])
               for m in self.input_names]
        return ins, [TensorSpec("logits", "float32", ("N", self.classes))]
