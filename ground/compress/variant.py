"""Variants (a float model plus a precision plan) and the context steps work in.

A :class:`Variant` is what a step produces: a float torch model (possibly pruned, possibly with
BatchNorm folded), a per-layer precision plan (``fp32``/``fp16``/``int8``), the input scales of
its INT8 layers, and for GHOST-simulated variants the simulated weight widths. Its numerics in
torch are :meth:`Variant.simulated`; its engine is written by :mod:`ground.compress.qdq` from
the same plan, so the two agree up to float summation order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ground.compress.fakequant import simulate
from ground.compress.tasks.base import Split, Task, TrackData, predict_torch


@dataclass(eq=False)
class Variant:
    """One model variant of a track.

    Attributes
    ----------
    name, kind : str
        Unique name; kind is ``fp32``, ``distill``, ``distill-control``, ``ptq``, ``qat``,
        ``hybrid``, ``hybrid-sim``, ``prune``, ``tdds`` or ``random``.
    model : torch.nn.Module
        The float model.
    parent : str, optional
        The variant it was made from.
    precision : dict
        Layer -> precision (missing layers: fp32).
    act_scales : dict
        Layer -> input scale of INT8 layers.
    weight_bits : dict
        Layer -> simulated weight width (GHOST k-means; not deployable).
    clustered : list of str
        Layers whose weights were replaced by k-means centroids.
    deployable : bool
        False for simulated widths: never exported or bundled.
    export : bool
        Export to ONNX, measure latency and bundle (False for coreset experiments).
    seconds : float
        Wall time of the step that made it.
    info : dict
        Step details for the report (JSON-serialisable).
    """

    name: str
    kind: str
    model: nn.Module
    parent: Optional[str] = None
    precision: Dict[str, str] = field(default_factory=dict)
    act_scales: Dict[str, float] = field(default_factory=dict)
    weight_bits: Dict[str, int] = field(default_factory=dict)
    clustered: List[str] = field(default_factory=list)
    deployable: bool = True
    export: bool = True
    seconds: float = 0.0
    info: Dict = field(default_factory=dict)

    @property
    def quantized(self) -> bool:
        """True when some layer is not fp32 (or weights are simulated)."""
        return any(p != "fp32" for p in self.precision.values()) or bool(self.weight_bits)

    @property
    def label(self) -> str:
        """``fp32``, ``int8``, ``fp16``, ``int8+fp16`` or ``sim``."""
        if self.weight_bits:
            return "sim"
        used = sorted({p for p in self.precision.values() if p != "fp32"}, reverse=True)
        return "+".join(used) if used else "fp32"

    def simulated(self) -> nn.Module:
        """The torch model with this variant's numerics (eval mode)."""
        if not self.quantized:
            return self.model.eval()
        return simulate(self.model, self.precision, self.act_scales,
                        weights_done={n: True for n in self.clustered}).eval()


@dataclass(eq=False)
class Context:
    """What steps read: the task, its data, the recipe's track settings, and the variants so far."""

    task: Task
    data: TrackData
    track_name: str
    settings: object          # TrackSettings
    variants: Dict[str, Variant]
    seed: int = 0
    threads: int = 1
    progress: bool = True
    teacher: Optional[nn.Module] = None
    dynamics: Optional[np.ndarray] = None

    def build(self, width) -> nn.Module:
        """A freshly initialised model (seeded, so controls start from the same weights)."""
        torch.manual_seed(self.seed)
        return self.task.build(width, self.data)

    def calib_batches(self, samples: int, batch: int = 64) -> List[Dict[str, torch.Tensor]]:
        """``samples`` training samples, evenly spaced, in batches (the calibration set)."""
        n = len(self.data.train)
        idx = np.unique(np.linspace(0, n - 1, min(samples, n)).astype(np.int64))
        return [self.data.train.batch(idx[i:i + batch]) for i in range(0, len(idx), batch)]

    def forward(self, model: nn.Module, batch) -> object:
        """Run a model on a batch (what calibration hooks observe)."""
        return self.task.forward(model, batch)

    def val_metrics(self, model: nn.Module, split: Optional[Split] = None) -> Dict[str, float]:
        """Task metrics of a torch model on the validation split (or ``split``)."""
        split = split or self.data.val
        return self.task.metrics(predict_torch(self.task, model, split), split)
