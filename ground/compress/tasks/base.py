"""The small interface every compressible model implements, and what it shares.

A :class:`Task` knows its data (:meth:`Task.load` gives a :class:`TrackData`: train, validation
and evaluation splits), how to build and train its model, its loss per sample (for TDDS), its
distillation loss on logits, its features for feature distillation, its deployable graph (named
inputs and outputs, exported to ONNX) and its metrics. Steps and the pipeline only talk to
this interface; evaluation runs the same deployable graph in torch or in ONNX Runtime.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ground.models.landcover import classification_metrics


@dataclass(eq=False)
class Split:
    """One data split.

    Attributes
    ----------
    name : str
    inputs : dict
        Input name -> (N, ...) float32 array, as the deployable graph takes it.
    targets : dict
        Labels, masks, per-sample weights (N-first arrays).
    labelled : bool
        False for real scenes without labels: metrics then compare with the FP32 model.
    note : str
        What the split is (shown in the report).
    """

    name: str
    inputs: Dict[str, np.ndarray]
    targets: Dict[str, np.ndarray] = field(default_factory=dict)
    labelled: bool = True
    note: str = ""

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batch(self, idx) -> Dict[str, torch.Tensor]:
        """Inputs and targets at ``idx`` as torch tensors, plus ``index``."""
        idx = np.asarray(idx)
        out = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in {**self.inputs, **self.targets}.items()}
        out["index"] = torch.from_numpy(idx.astype(np.int64))
        return out

    def subset(self, idx, name: Optional[str] = None) -> "Split":
        """The samples at ``idx`` as a new split."""
        idx = np.asarray(idx)
        return Split(name or self.name, {k: v[idx] for k, v in self.inputs.items()},
                     {k: v[idx] for k, v in self.targets.items()}, self.labelled, self.note)


@dataclass(eq=False)
class TrackData:
    """Everything one track (training set + evaluation sets) needs.

    Attributes
    ----------
    train, val : Split
        Training data; validation data for hybrid-precision sensitivity (never a test split).
    evals : dict
        Evaluation split name -> split (the synthetic test split first).
    meta : dict
        ``normalization`` per input (for bundle specs), ``classes``, sizes, notes.
    """

    train: Split
    val: Split
    evals: Dict[str, Split]
    meta: Dict = field(default_factory=dict)


@dataclass
class Out:
    """A forward pass: what distillation reads."""

    logits: torch.Tensor
    features: List[torch.Tensor]


class Deploy(nn.Module):
    """Wraps a model as the deployable graph: ``forward(*inputs) -> tuple of outputs``."""

    def __init__(self, net: nn.Module, fn: Callable):
        super().__init__()
        self.net = net
        self._fn = fn

    def forward(self, *inputs):  # noqa: D102
        return self._fn(self.net, *inputs)


class Task:
    """Base class of a compressible model (see the module docstring)."""

    name = "task"
    input_names: Tuple[str, ...] = ()
    output_names: Tuple[str, ...] = ()
    metric_names: Tuple[str, ...] = ()
    primary = ""
    #: Keys of the recipe's per-track ``data`` mapping, with defaults.
    data_defaults: Dict = {}
    #: Track names this task knows.
    tracks: Tuple[str, ...] = ()
    #: Samples per ONNX Runtime call in the latency measurement.
    latency_samples = 1
    #: Tolerances of the ONNX Runtime vs torch check (:func:`ground.compress.qdq.compare`):
    #: (atol, rtol, fraction of elements allowed beyond) for float and for quantized graphs.
    tolerance = {"float": (1e-4, 1e-4, 0.0), "quantized": (1e-3, 1e-2, 0.005)}
    #: Outputs allowed a fraction of elements beyond the tolerance (thresholded outputs).
    tolerant_outputs: Dict[str, float] = {}
    tdds_supported = True

    def load(self, track: str, data: Dict, seed: int) -> TrackData:
        raise NotImplementedError

    def build(self, width, data: TrackData) -> nn.Module:
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: Dict[str, torch.Tensor]) -> Out:
        raise NotImplementedError

    def loss(self, out: Out, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-sample task loss (N,)."""
        raise NotImplementedError

    def kd_logit_loss(self, student: Out, teacher: Out, temperature: float) -> torch.Tensor:
        raise NotImplementedError

    def augment(self, batch: Dict[str, torch.Tensor], gen: torch.Generator, distilling: bool):
        """Batch transform before the forward passes (default: none)."""
        return batch

    def deploy_fn(self, net: nn.Module, *inputs):
        raise NotImplementedError

    def metrics(self, outputs: Dict[str, np.ndarray], split: Split, reference=None) -> Dict[str, float]:
        raise NotImplementedError

    def prune_spec(self, model: nn.Module) -> Tuple[Dict[str, List[Tuple[str, Optional[str]]]], Dict[str, List[str]]]:
        """``(groups, consumers)`` for structured pruning (see :mod:`ground.compress.prune`)."""
        raise NotImplementedError

    def teacher(self, data: TrackData, settings, seed: int):
        """A task-specific teacher (anomaly: the FC autoencoder); None uses the FP32 variant."""
        return None

    def labels(self, split: Split) -> Optional[np.ndarray]:
        """Class labels for stratified coreset selection (None: no classes)."""
        return None

    # -- shared -----------------------------------------------------------------------------
    def deploy(self, model: nn.Module) -> Deploy:
        """The deployable graph of ``model``."""
        return Deploy(model, self.deploy_fn)

    def example(self, split: Split, n: int = 1) -> Tuple[torch.Tensor, ...]:
        """The first ``n`` samples' inputs as torch tensors, in input order."""
        return tuple(torch.from_numpy(np.ascontiguousarray(split.inputs[k][:n])) for k in self.input_names)

    def run_one(self, split: Split) -> Callable[[nn.Module], object]:
        """A callable that runs a model's deployable graph on one sample (for MAC counting)."""
        ex = self.example(split, 1)
        return lambda m: self.deploy(m)(*ex)


def predict_torch(task: Task, model: nn.Module, split: Split, batch: int = 256) -> Dict[str, np.ndarray]:
    """Outputs of the deployable graph of a torch model over a split, in batches."""
    dep = task.deploy(model).eval()
    outs: Dict[str, List[np.ndarray]] = {k: [] for k in task.output_names}
    with torch.no_grad():
        for i in range(0, len(split), batch):
            res = dep(*(torch.from_numpy(np.ascontiguousarray(split.inputs[k][i:i + batch])) for k in task.input_names))
            for k, v in zip(task.output_names, res):
                outs[k].append(v.numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def predict_onnx(task: Task, sess, split: Split, batch: int = 256) -> Dict[str, np.ndarray]:
    """Outputs of an ONNX Runtime session over a split, in batches."""
    outs: Dict[str, List[np.ndarray]] = {k: [] for k in task.output_names}
    for i in range(0, len(split), batch):
        feed = {k: np.ascontiguousarray(split.inputs[k][i:i + batch], dtype=np.float32) for k in task.input_names}
        for k, v in zip(task.output_names, sess.run(list(task.output_names), feed)):
            outs[k].append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}


def confusion_metrics(y_true, y_pred, classes: int) -> Dict[str, float]:
    """OA, AA, Cohen's kappa and mIoU (mean over classes present in truth or prediction)."""
    m = classification_metrics(np.asarray(y_true).ravel(), np.asarray(y_pred).ravel(), classes)
    cm = m["confusion"].astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    present = union > 0
    miou = float(np.mean(np.diag(cm)[present] / union[present])) if present.any() else float("nan")
    return {"OA": m["OA"], "AA": m["AA"], "kappa": m["kappa"], "mIoU": miou}


def one_thread_ctx(threads: int = 1):
    """Context manager running torch on ``threads`` intra-op threads (restored after)."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)
    return ctx()


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per-channel (axis 1) standardisation to float32."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return ((x - np.reshape(mean, shape)) / np.reshape(std, shape)).astype(np.float32)


def normalization_dict(mean: Sequence[float], std: Sequence[float], source_dtype: str, unit: float = 1.0) -> Dict:
    """Bundle ``normalization`` for ``model_input = source * scale + offset`` with ``source * unit`` standardised."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return {"source_dtype": source_dtype, "scale": [float(v) for v in unit / std],
            "offset": [float(v) for v in -mean / std]}
