"""Settings of the composable compression steps (what a recipe's ``steps`` entries hold).

Each step reads one variant (``from``, default ``fp32``) and adds variants:

=========  ==========================================  =========================================
step       adds                                        implemented in
=========  ==========================================  =========================================
distill    ``NAME`` (student from the teacher),        :mod:`ground.compress.distill`
           ``NAME-noteacher`` (same student, no KD)
           and ``NAME-teacher`` (with teacher_width)
ptq        ``NAME-<calibrator>`` per calibrator        :mod:`ground.compress.ptq`
qat        ``NAME`` (INT8, GHOST self-distillation)    :mod:`ground.compress.qat`
hybrid     ``NAME`` (INT8/FP16 per layer) and          :mod:`ground.compress.hybrid`
           ``NAME-sim`` (GHOST k-means widths,
           simulated only, never exported)
prune      ``NAME`` (FP32, filters removed, tuned)     :mod:`ground.compress.prune`
tdds       ``tdds-<f>`` and ``random-<f>`` per         :mod:`ground.compress.tdds`
           fraction (FP32, trained on the subset)
=========  ==========================================  =========================================

Epoch and learning-rate fields left empty take the track's baseline training settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Union


@dataclass(frozen=True)
class KDSettings:
    """Loss weights of distillation: task loss, logits (at ``temperature``) and features."""

    task_weight: float = 1.0
    logit_weight: float = 0.5
    feature_weight: float = 1.0
    temperature: float = 4.0


@dataclass(frozen=True)
class DistillStep:
    """Knowledge distillation of a smaller student, and the same student without a teacher."""

    name: str = "kd"
    student_width: Union[int, List[int]] = 4
    teacher: str = "fp32"
    teacher_width: Optional[Union[int, List[int]]] = None
    teacher_epochs: Optional[int] = None
    kd: KDSettings = KDSettings()
    epochs: Optional[int] = None
    lr: Optional[float] = None
    control: bool = True
    seeds: int = 1
    from_: str = field(default="fp32", metadata={"key": "from"})


@dataclass(frozen=True)
class PtqStep:
    """Post-training INT8 with each calibrator."""

    name: str = "ptq"
    calibrators: List[str] = field(default_factory=lambda: ["minmax", "percentile", "entropy"])
    percentile: float = 99.99
    samples: int = 256
    from_: str = field(default="fp32", metadata={"key": "from"})


@dataclass(frozen=True)
class QatStep:
    """Quantization-aware training from a calibrated start, self-distilled from the FP32 model."""

    name: str = "qat"
    calibrator: str = "percentile"
    percentile: float = 99.99
    samples: int = 256
    epochs: int = 2
    lr: float = 5e-4
    kd: KDSettings = KDSettings(task_weight=0.5, logit_weight=1.0, feature_weight=1.0, temperature=1.0)
    from_: str = field(default="fp32", metadata={"key": "from"})


@dataclass(frozen=True)
class HybridStep:
    """Per-layer INT8 or FP16 from measured sensitivity and the GHOST k-means criterion."""

    name: str = "hybrid"
    calibrator: str = "percentile"
    percentile: float = 99.99
    samples: int = 256
    budget_points: float = 0.25
    total_budget_points: float = 0.5
    max_rel_error: Optional[float] = None
    kmeans_threshold: float = 0.1
    min_bits: int = 2
    max_bits: int = 8
    simulate: bool = True
    from_: str = field(default="fp32", metadata={"key": "from"})


@dataclass(frozen=True)
class PruneStep:
    """Structured filter pruning with a learned global importance, then fine-tuning."""

    name: str = "pruned"
    keep_macs: float = 0.5
    min_keep: float = 0.25
    criterion_epochs: int = 2
    criterion_lr: float = 0.05
    cost_weight: float = 5.0
    finetune_epochs: Optional[int] = None
    lr: Optional[float] = None
    distill: bool = True
    kd: KDSettings = KDSettings(task_weight=1.0, logit_weight=0.5, feature_weight=0.0, temperature=2.0)
    from_: str = field(default="fp32", metadata={"key": "from"})


@dataclass(frozen=True)
class TddsStep:
    """Coresets from training dynamics (TDDS-like) against random subsets of the same size."""

    name: str = "tdds"
    fractions: List[float] = field(default_factory=lambda: [0.1, 0.3, 0.5])
    window: int = 3
    ema: float = 0.8
    stratify: bool = True
    epochs: Optional[int] = None
    budget: str = "steps"
    seeds: int = 1

    def __post_init__(self):
        if self.budget not in ("steps", "epochs"):
            raise ValueError(f"budget must be 'steps' or 'epochs', got {self.budget!r}")
        if not all(0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must lie in (0, 1], got {self.fractions}")


Step = Union[DistillStep, PtqStep, QatStep, HybridStep, PruneStep, TddsStep]
STEPS = {"distill": DistillStep, "ptq": PtqStep, "qat": QatStep, "hybrid": HybridStep, "prune": PruneStep,
         "tdds": TddsStep}


def step_kind(step) -> str:
    """The ``step`` key of a settings object."""
    return next(k for k, v in STEPS.items() if isinstance(step, v))


def fraction_tag(f: float) -> str:
    """``0.1`` -> ``"10"`` (percent, as in variant names)."""
    return f"{round(100 * f):d}"


def produced_names(step) -> List[str]:
    """Variant names a step adds (in order)."""
    if isinstance(step, DistillStep):
        return ([f"{step.name}-teacher"] if step.teacher_width is not None else []) + [step.name] + \
            ([f"{step.name}-noteacher"] if step.control else [])
    if isinstance(step, PtqStep):
        return [f"{step.name}-{c}" for c in step.calibrators]
    if isinstance(step, HybridStep):
        return [step.name] + ([f"{step.name}-sim"] if step.simulate else [])
    if isinstance(step, TddsStep):
        return [f"{p}-{fraction_tag(f)}" for f in step.fractions for p in ("tdds", "random")]
    return [step.name]
