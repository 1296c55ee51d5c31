"""Compression recipes: one typed, validated settings object per YAML file.

A recipe names the model, its tracks (training data + evaluation sets + baseline training),
the deployment targets (which fix the ONNX opset of each variant) and a list of composable
steps; each step reads an existing variant (``from``, ``fp32`` by default) and adds variants
that later steps may read. Example (``ground/recipes/cloud-quick.yaml``)::

    name: cloud-quick
    model: cloud
    tracks:
      synthetic:
        data: {train: 512, val: 64, test: 256, olinda: true}
        train: {width: 8, epochs: 6, batch_size: 32, lr: 0.01}
    targets: [tx2-jp46, xavier-jp5, orin-jp6]
    steps:
      - {step: distill, name: kd, student_width: 4}
      - {step: ptq, from: fp32, calibrators: [minmax, percentile, entropy]}
      - {step: prune, name: pruned, keep_macs: 0.5}
      - {step: qat, name: pruned-int8, from: pruned}

Every mistake (unknown key, wrong type, unknown step, model, track or target, a ``from`` that no
earlier step produces, a duplicate name) is a :class:`~engines.errors.UserError` naming the
file, the place in it and what is allowed. The step classes and their defaults are in
:mod:`ground.compress.steps`.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from engines.errors import UserError
from ground.compress.steps import STEPS, KDSettings, Step, produced_names

__all__ = ["TrainSettings", "TrackSettings", "LatencySettings", "BundleSettings", "Recipe", "load_recipe",
           "recipe_from_dict", "KDSettings"]


@dataclass(frozen=True)
class TrainSettings:
    """Baseline training of a track (and the defaults of later training steps)."""

    width: Union[int, List[int]]
    epochs: int
    batch_size: int = 64
    lr: float = 3e-3
    schedule: str = "onecycle"
    weight_decay: float = 1e-4
    teacher_width: Optional[List[int]] = None
    teacher_epochs: int = 0
    baseline_kd: Optional[KDSettings] = None


@dataclass(frozen=True)
class TrackSettings:
    """One track: task data settings (merged with the task's defaults) and baseline training."""

    train: TrainSettings
    data: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LatencySettings:
    """ONNX Runtime CPU latency: interleaved rounds over all variants, ``runs`` calls each."""

    runs: int = 40
    warmup: int = 3
    threads: int = 1


@dataclass(frozen=True)
class BundleSettings:
    """Engine bundles of the deployable variants (signed when ``sign_key`` names a private key)."""

    enabled: bool = True
    sign_key: Optional[str] = None
    version: int = 1
    include: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class Recipe:
    """A whole recipe (see the module docstring)."""

    name: str
    model: str
    tracks: Dict[str, TrackSettings]
    steps: List[Step]
    seed: int = 0
    out: str = ""
    targets: List[str] = field(default_factory=lambda: ["tx2-jp46", "xavier-jp5", "orin-jp6"])
    latency: LatencySettings = LatencySettings()
    bundle: BundleSettings = BundleSettings()
    threads: int = 1
    progress: bool = True
    source: str = ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value, tp, where: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _convert(value, a, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(f"{where}: {value!r} is not one of {' | '.join(_type_name(a) for a in args)}")
    if origin in (list, List):
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, args[0] if args else Any, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, args[1] if args else Any, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise UserError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def build(cls, mapping, where: str):
    """Build dataclass ``cls`` from a mapping: unknown keys, missing keys and wrong types are ``UserError``."""
    if not isinstance(mapping, dict):
        raise UserError(f"{where}: expected a mapping of {cls.__name__} settings, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for key, f in fields.items():
        if key in mapping:
            kwargs[f.name] = _convert(mapping[key], hints[f.name], f"{where}.{key}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{where}: missing required key {key!r}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{where}: {exc}") from None


CALIBRATORS = ("minmax", "percentile", "entropy")       # as ground.compress.ptq.CALIBRATORS (no torch import here)
SCHEDULES = ("onecycle", "constant")

# Value ranges of numeric settings, by key, wherever they appear (train, steps, kd, latency, bundle):
# key -> (lowest, lowest allowed itself, highest or None, what to say).
_RANGES = {
    "width": (1, True, None, "a whole number >= 1 (or a list of them)"),
    "student_width": (1, True, None, "a whole number >= 1 (or a list of them)"),
    "teacher_width": (1, True, None, "a whole number >= 1 (or a list of them)"),
    "epochs": (1, True, None, "a whole number >= 1"),
    "criterion_epochs": (1, True, None, "a whole number >= 1"),
    "teacher_epochs": (0, True, None, "a whole number >= 0"),
    "finetune_epochs": (0, True, None, "a whole number >= 0"),
    "batch_size": (1, True, None, "a whole number >= 1"),
    "samples": (1, True, None, "a whole number >= 1"),
    "seeds": (1, True, None, "a whole number >= 1"),
    "window": (1, True, None, "a whole number >= 1"),
    "runs": (1, True, None, "a whole number >= 1"),
    "warmup": (0, True, None, "a whole number >= 0"),
    "threads": (1, True, None, "a whole number >= 1"),
    "seed": (0, True, None, "a whole number >= 0"),
    "version": (1, True, None, "a whole number >= 1"),
    "min_bits": (1, True, 8, "a whole number from 1 to 8"),
    "max_bits": (1, True, 8, "a whole number from 1 to 8"),
    "lr": (0, False, None, "a number > 0"),
    "criterion_lr": (0, False, None, "a number > 0"),
    "weight_decay": (0, True, None, "a number >= 0"),
    "keep_macs": (0, False, 1, "a fraction in (0, 1]"),
    "min_keep": (0, False, 1, "a fraction in (0, 1]"),
    "percentile": (0, False, 100, "a percentile in (0, 100]"),
    "temperature": (0, False, None, "a number > 0"),
    "task_weight": (0, True, None, "a number >= 0"),
    "logit_weight": (0, True, None, "a number >= 0"),
    "feature_weight": (0, True, None, "a number >= 0"),
    "cost_weight": (0, True, None, "a number >= 0"),
    "budget_points": (0, True, None, "a number >= 0"),
    "total_budget_points": (0, True, None, "a number >= 0"),
    "max_rel_error": (0, False, None, "a number > 0"),
    "kmeans_threshold": (0, False, None, "a number > 0"),
    "ema": (0, True, 1, "a number in [0, 1)"),
}


def _in_range(value, low, low_ok, high) -> bool:
    import math
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if value < low or (value == low and not low_ok):
        return False
    return high is None or value <= high


def check_values(obj, where: str) -> None:
    """Ranges of the numeric settings of a built settings object (recursively), ``UserError`` naming the key."""
    for f in dataclasses.fields(obj):
        key = f.metadata.get("key", f.name)
        value = getattr(obj, f.name)
        path = f"{where}.{key}"
        if dataclasses.is_dataclass(value):
            check_values(value, path)
            continue
        if key in ("calibrators", "calibrator"):
            names = value if isinstance(value, list) else [value]
            bad = [c for c in names if c not in CALIBRATORS]
            if bad or not names:
                raise UserError(f"{path}: {value!r}: choose {'one' if key == 'calibrator' else 'one or more'} "
                                f"of {list(CALIBRATORS)}")
            if len(set(names)) != len(names):
                raise UserError(f"{path}: {value!r} names a calibrator twice")
            continue
        if key == "schedule" and value not in SCHEDULES:
            raise UserError(f"{path}: {value!r}: choose one of {list(SCHEDULES)}")
        if key not in _RANGES or value is None:
            continue
        low, low_ok, high, what = _RANGES[key]
        if key == "ema" and value == 1:
            raise UserError(f"{path}: {value!r}: give {what}")
        for v in (value if isinstance(value, list) else [value]):
            if not _in_range(v, low, low_ok, high):
                raise UserError(f"{path}: {value!r}: give {what}")
        if isinstance(value, list) and not value:
            raise UserError(f"{path}: an empty list; give {what}")
    if hasattr(obj, "min_bits") and hasattr(obj, "max_bits") and obj.min_bits > obj.max_bits:
        raise UserError(f"{where}: min_bits {obj.min_bits} is above max_bits {obj.max_bits}")


_DATA_MIN = {"n_bands": 0}        # task data counts that may be 0 (n_bands 0 or null: all bands)


def _check_data(data: Dict, defaults: Dict, where: str) -> None:
    """Task data settings: the type of each default, whole counts >= 1."""
    for key, value in data.items():
        default = defaults.get(key)
        path = f"{where}.{key}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise UserError(f"{path}: {value!r}: give true or false")
        elif isinstance(default, int):
            low = _DATA_MIN.get(key, 1)
            if key in _DATA_MIN and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{path}: {value!r}: give a whole number >= {low} (default {default})")
        elif isinstance(default, str) and not isinstance(value, str):
            raise UserError(f"{path}: {value!r}: give a string (default {default!r})")
        elif isinstance(default, list):
            if not isinstance(value, list) or len(value) != len(default) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise UserError(f"{path}: {value!r}: give a list of {len(default)} numbers (default {default})")


def recipe_from_dict(doc: Dict, source: str = "<recipe>") -> Recipe:
    """Validate a parsed recipe document and return the :class:`Recipe`."""
    from engines.targets import get_profile
    from ground.compress.tasks import make_task

    if not isinstance(doc, dict):
        raise UserError(f"{source}: a recipe is a YAML mapping, got {type(doc).__name__}")
    steps_doc = doc.get("steps", [])
    if not isinstance(steps_doc, list):
        raise UserError(f"{source}: steps: expected a list of steps")
    steps = []
    for i, s in enumerate(steps_doc):
        kind = s.get("step") if isinstance(s, dict) else None
        if kind not in STEPS:
            raise UserError(f"{source}: steps[{i}]: 'step' is {kind!r}; choose one of {sorted(STEPS)}")
        steps.append(build(STEPS[kind], {k: v for k, v in s.items() if k != "step"}, f"{source}: steps[{i}] ({kind})"))
    recipe = build(Recipe, {**{k: v for k, v in doc.items() if k != "steps"}, "steps": []}, source)
    task = make_task(recipe.model)
    tracks = {}
    for name, tr in recipe.tracks.items():
        if name not in task.tracks:
            raise UserError(f"{source}: tracks.{name}: model {recipe.model!r} has tracks {list(task.tracks)}")
        unknown = sorted(set(tr.data) - set(task.data_defaults))
        if unknown:
            raise UserError(f"{source}: tracks.{name}.data: unknown key(s) {unknown}; allowed: "
                            f"{sorted(task.data_defaults)}")
        _check_data(tr.data, task.data_defaults, f"{source}: tracks.{name}.data")
        check_values(tr.train, f"{source}: tracks.{name}.train")
        tracks[name] = dataclasses.replace(tr, data={**task.data_defaults, **tr.data})
    if not tracks:
        raise UserError(f"{source}: tracks: give at least one of {list(task.tracks)}")
    for t in recipe.targets:
        get_profile(t)
    for key in ("latency", "bundle"):
        check_values(getattr(recipe, key), f"{source}: {key}")
    for key in ("seed", "threads"):
        low, low_ok, high, what = _RANGES[key]
        if not _in_range(getattr(recipe, key), low, low_ok, high):
            raise UserError(f"{source}: {key}: {getattr(recipe, key)!r}: give {what}")
    for i, st in enumerate(steps):
        check_values(st, f"{source}: steps[{i}] ({type(st).__name__[:-4].lower()})")
    if any(type(st).__name__ == "TddsStep" for st in steps):
        short = [n for n, tr in tracks.items() if tr.train.epochs < 2]
        if short:
            raise UserError(f"{source}: a tdds step scores training dynamics over epochs, but track(s) {short} "
                            "train for fewer than 2 epochs; raise train.epochs")
    known = ["fp32"]
    for i, step in enumerate(steps):
        src = getattr(step, "from_", "fp32")
        if src not in known:
            raise UserError(f"{source}: steps[{i}]: from {src!r} is not produced by an earlier step; known: {known}")
        for n in produced_names(step):
            if n in known:
                raise UserError(f"{source}: steps[{i}]: variant name {n!r} is used twice; rename the step")
            known.append(n)
    return dataclasses.replace(recipe, tracks=tracks, steps=steps, source=source)


def load_recipe(path) -> Recipe:
    """Read and validate a recipe YAML file.

    Parameters
    ----------
    path : str or os.PathLike
        A recipe file, or a bare name such as ``cloud-quick`` for ``ground/recipes/cloud-quick.yaml``.

    Returns
    -------
    Recipe
    """
    import yaml

    p = Path(path)
    if not p.is_file() and p.suffix == "" and not p.parent.name:
        p = Path(__file__).resolve().parent.parent / "recipes" / f"{path}.yaml"
    if not p.is_file():
        shipped = sorted(x.stem for x in (Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))
        raise UserError(f"no recipe file at {path}; pass a YAML path or one of the shipped recipes: {shipped}")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a text file; a recipe is a YAML file (see ground/recipes/*.yaml)") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML: {' '.join(str(exc).split())}") from None
    except OSError as exc:
        raise UserError(f"cannot read recipe {p}: {exc.strerror or exc}") from None
    return recipe_from_dict(doc, str(p))
