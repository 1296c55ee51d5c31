"""Run a recipe end to end: per track, baseline -> steps -> measure -> export -> bundles -> results.json.

For each track of the recipe the task loads its data, trains the FP32 baseline (recording the
per-sample dynamics when a ``tdds`` step follows; distilled from the task's teacher when the
track says ``baseline_kd``), then runs the steps in order, each adding variants. Every variant
is then costed (:mod:`ground.compress.flops`), exported and checked when deployable
(:mod:`ground.compress.measure`), evaluated on every evaluation split, timed in ONNX Runtime,
and bundled. Everything lands under the output folder::

    <out>/results.json                  what the report reads (one per recipe run)
    <out>/<track>/onnx/*.onnx           float and Q/DQ engines
    <out>/<track>/models/*.pt           state_dicts of the variants' float models
    <out>/<track>/bundles/<bundle>/     engine bundles (signed with --sign-key)
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from ground.compress.bundles import pack_variant
from ground.compress.distill import kd_from, run_distill
from ground.compress.hybrid import run_hybrid
from ground.compress.measure import cost_record, evaluate, export_variant, latency
from ground.compress.prune import run_prune
from ground.compress.ptq import run_ptq
from ground.compress.qat import run_qat
from ground.compress.recipe import Recipe
from ground.compress.steps import TddsStep, step_kind
from ground.compress.tasks import make_task
from ground.compress.tdds import run_tdds
from ground.compress.trainer import fit
from ground.compress.variant import Context, Variant

RUNNERS = {"distill": run_distill, "ptq": run_ptq, "qat": run_qat, "hybrid": run_hybrid, "prune": run_prune,
           "tdds": run_tdds}


def machine_info() -> Dict:
    """CPU model, core count and library versions (recorded with every result)."""
    import onnxruntime

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform()}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if dataclasses.is_dataclass(obj):
        return _jsonable(dataclasses.asdict(obj))
    return obj


def baseline(ctx: Context, record: bool) -> Variant:
    """Train the track's FP32 baseline (distilled from the task teacher when ``baseline_kd`` is set)."""
    ts = ctx.settings.train
    kd = kd_from(ts.baseline_kd) if ts.baseline_kd else None
    res = fit(ctx.task, ctx.build(ts.width), ctx.data.train, epochs=ts.epochs, lr=ts.lr, batch_size=ts.batch_size,
              seed=ctx.seed, schedule=ts.schedule, weight_decay=ts.weight_decay, teacher=ctx.teacher if kd else None,
              kd=kd, record=record, desc=f"{ctx.task.name} fp32", progress=ctx.progress, threads=ctx.threads)
    ctx.dynamics = res.dynamics
    return Variant("fp32", "fp32", res.model, seconds=res.seconds,
                   info={"losses": res.losses, "width": ts.width, "distilled_from_task_teacher": bool(kd)})


def run_track(recipe: Recipe, track_name: str, out_dir: Path, sign_key: Optional[str], log: Callable) -> Dict:
    """Run one track of a recipe; returns its JSON-ready record."""
    settings = recipe.tracks[track_name]
    task = make_task(recipe.model)
    t0 = time.perf_counter()
    data = task.load(track_name, settings.data, recipe.seed)
    ctx = Context(task, data, track_name, settings, {}, recipe.seed, recipe.threads, recipe.progress)
    log(f"[{recipe.name}/{track_name}] data: train {len(data.train)}, "
        + ", ".join(f"{k} {len(s)}" for k, s in data.evals.items()) + f" ({time.perf_counter() - t0:.1f} s)")
    if settings.train.teacher_width:
        t1 = time.perf_counter()
        ctx.teacher = task.teacher(data, settings.train, recipe.seed)
        log(f"[{recipe.name}/{track_name}] task teacher {settings.train.teacher_width}: {time.perf_counter() - t1:.1f} s")
    record = task.tdds_supported and any(isinstance(s, TddsStep) for s in recipe.steps)
    ctx.variants["fp32"] = baseline(ctx, record)
    log(f"[{recipe.name}/{track_name}] fp32 baseline: {ctx.variants['fp32'].seconds:.1f} s")
    for step in recipe.steps:
        t1 = time.perf_counter()
        new = RUNNERS[step_kind(step)](ctx, step)
        for v in new:
            ctx.variants[v.name] = v
        log(f"[{recipe.name}/{track_name}] {step_kind(step)}: {', '.join(v.name for v in new) or 'skipped'} "
            f"({time.perf_counter() - t1:.1f} s)")
    folder = out_dir / track_name
    (folder / "onnx").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    records, refs = [], {}
    for v in ctx.variants.values():
        rec = {"name": v.name, "kind": v.kind, "parent": v.parent, "label": v.label, "deployable": v.deployable,
               "exported": v.deployable and v.export, "precision": dict(v.precision), "weight_bits": dict(v.weight_bits),
               "seconds": v.seconds, "info": v.info, "cost": cost_record(ctx, v)}
        if rec["exported"]:
            rec.update(export_variant(ctx, v, folder / "onnx", recipe.targets))
        rec["metrics"] = evaluate(ctx, v, rec.get("onnx"), refs)
        torch.save(v.model.state_dict(), str(folder / "models" / f"{v.name}.pt"))
        records.append(rec)
        log(f"[{recipe.name}/{track_name}] measured {v.name}: "
            + "; ".join(f"{s} " + ", ".join(f"{k} {x:.4f}" for k, x in m.items()) for s, m in rec["metrics"].items()))
    exported = {r["name"]: r["onnx"] for r in records if r.get("onnx")}
    lat = latency(task, exported, next(iter(data.evals.values())), recipe.latency.runs, recipe.latency.warmup,
                  recipe.latency.threads)
    for r in records:
        r["latency"] = lat.get(r["name"])
    if recipe.bundle.enabled:
        for r in records:
            if r.get("onnx") and (not recipe.bundle.include or r["name"] in recipe.bundle.include):
                r["bundle"] = pack_variant(ctx, ctx.variants[r["name"]], r, folder / "bundles", recipe.model,
                                           recipe.name, recipe.bundle.version, sign_key or recipe.bundle.sign_key)
    splits = {k: {"n": len(s), "labelled": s.labelled, "note": s.note} for k, s in data.evals.items()}
    return _jsonable({"task": task.name, "primary": task.primary, "metric_names": list(task.metric_names),
                      "splits": splits, "train": {"n": len(data.train), "note": data.train.note},
                      "meta": {k: v for k, v in data.meta.items() if k != "normalization"},
                      "variants": records, "seconds": time.perf_counter() - t0})


def run_recipe(recipe: Recipe, out: Optional[str] = None, sign_key: Optional[str] = None,
               log: Callable = print) -> Dict:
    """Run every track of ``recipe`` and write ``<out>/results.json``.

    Parameters
    ----------
    recipe : Recipe
    out : str, optional
        Output folder (default: the recipe's ``out``, else ``out/compress/<name>``).
    sign_key : str, optional
        Private ed25519 key to sign the bundles with (overrides the recipe's).
    log : callable
        Receives one progress line per stage.

    Returns
    -------
    dict
        The results document.
    """
    out_dir = Path(out or recipe.out or f"out/compress/{recipe.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    doc = {"recipe": _jsonable(dataclasses.asdict(recipe)), "name": recipe.name, "model": recipe.model,
           "machine": machine_info(), "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "tracks": {}}
    for track in recipe.tracks:
        doc["tracks"][track] = run_track(recipe, track, out_dir, sign_key, log)
    doc["seconds"] = time.perf_counter() - t0
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1, default=float))
    log(f"[{recipe.name}] done in {doc['seconds']:.0f} s: {out_dir / 'results.json'}")
    return doc
