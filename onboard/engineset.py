"""The engines a daemon serves: for each pipeline stage and power variant, an active runner on a device.

A stage names one engine (in the store, or a bundle folder) and optionally other engines for the
lighter variants of the power policy (``int8``, ``dla-int8``). :meth:`EngineSet.get` returns the
engine for the variant the policy asks for, or the nearest lighter one the stage has, or else the
nearest heavier one (a stage with one engine runs it for every variant). Each engine is placed on
a device once, at load, by :class:`onboard.scheduler.DeviceAssigner`: the CPU with ONNX Runtime,
or on a Jetson (backend ``tensorrt``) the GPU, and for ``dla-int8`` a DLA core.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from engines.bundle import Bundle
from engines.errors import UserError
from engines.runners import runner_for
from onboard.kernels import normalize_tiles
from onboard.scheduler import DeviceAssigner, allowed_devices

log = logging.getLogger("satedge.onboard")


@dataclass
class LoadedEngine:
    """An active runner with what the pipeline needs to feed it DN tiles."""

    ref: str
    variant: str
    bundle: Bundle
    runner: Any
    device: str
    kernels: Any = None            # onboard.kernels.TileKernels: normalizes the DN tiles (numpy or CUDA)

    def __post_init__(self) -> None:
        m = self.bundle.manifest
        spec = m.inputs[0]
        self.input_name, self.bands, self.tile = spec.name, int(spec.shape[1]), int(spec.shape[-1])
        norm = spec.normalization or {}
        self.scale = np.asarray(norm["scale"], np.float32).reshape(-1, 1, 1) if "scale" in norm else None
        self.offset = np.asarray(norm.get("offset", 0.0), np.float32).reshape(-1, 1, 1)
        self.output_names = [o.name for o in m.outputs]

    @property
    def provenance(self) -> Dict[str, Any]:
        """``{name, version, precision}`` of the engine, as carried by results."""
        m = self.bundle.manifest
        return {"name": m.name, "version": m.version, "precision": m.precision}

    def infer(self, tiles: np.ndarray, max_batch: int, post=None) -> Dict[str, np.ndarray]:
        """Normalize DN tiles (n, bands, t, t) with the bundle's scale/offset and run them in chunks.

        ``post(outputs) -> outputs`` is applied to each chunk's outputs before they are joined
        (e.g. thresholding a probability map to a smaller boolean one).
        """
        chunks: List[Dict[str, np.ndarray]] = []
        for i in range(0, len(tiles), max_batch):
            if self.scale is None:
                x = tiles[i:i + max_batch].astype(np.float32)
            else:
                x = (self.kernels.normalize if self.kernels is not None else normalize_tiles)(
                    tiles[i:i + max_batch], self.scale, self.offset)
            out = self.runner.infer({self.input_name: x}, check_inputs=not chunks)
            chunks.append(post(out) if post is not None else out)
        if len(chunks) <= 1:
            return chunks[0] if chunks else {}
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


class EngineSet:
    """Loads, places and hands out the engines of every stage; reloads store engines on request.

    Parameters
    ----------
    settings : onboard.settings.DaemonSettings
        Backend, threads, DLA cores, trusted keys and the variant order (``power.variants``).
    store : onboard.store.EngineStore, optional
        Where engine names are looked up (their active slot); bundle folders need none.
    kernels : onboard.kernels.TileKernels, optional
        How DN tiles are normalized before inference (numpy when omitted).
    """

    def __init__(self, settings, store=None, kernels=None):
        self.settings, self.store, self.kernels = settings, store, kernels
        self.order: Tuple[str, ...] = tuple(settings.power.variants)
        devices = ["CPU"] if settings.backend != "tensorrt" else \
            ["GPU"] + ["DLA%d" % k for k in range(settings.dla_cores)] + ["CPU"]
        self.assigner = DeviceAssigner(devices)
        self._stages: Dict[str, Dict[str, LoadedEngine]] = {}
        self._refs: Dict[str, Dict[str, Tuple[str, bool]]] = {}
        self._dirty: set = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    def _open(self, ref: str, from_store: bool) -> Bundle:
        if from_store:
            if self.store is None:
                raise UserError(f"engine {ref!r} is a store engine, but no 'store_root' is set; set it, or give the "
                                "stage a 'bundle' folder instead")
            return self.store.active(ref)
        return Bundle.open(ref, trusted_keys=self.settings.trusted_keys or None)

    def _load(self, ref: str, from_store: bool, variant: str) -> LoadedEngine:
        s = self.settings
        bundle = self._open(ref, from_store)
        allowed = allowed_devices(bundle.manifest.precision, bundle.manifest.plans or (),
                                  has_gpu=s.backend == "tensorrt", dla_cores=s.dla_cores)
        dla = [d for d in allowed if d.startswith("DLA")]
        allowed = dla if variant.startswith("dla") and dla else [d for d in allowed if not d.startswith("DLA")]
        key = f"{ref}:{variant}"
        self.assigner.register(key, allowed)
        device = self.assigner.assign(key)
        if device == "CPU" or s.backend == "onnxrt":
            runner = runner_for(bundle, "onnxrt", intra_op_threads=s.intra_op_threads)
        elif device.startswith("DLA"):
            runner = runner_for(bundle, s.backend, dla_core=int(device[3:]))
        else:
            runner = runner_for(bundle, s.backend)
        runner.activate()
        return LoadedEngine(ref, variant, bundle, runner, device, self.kernels)

    def add(self, stage: str, ref: str, variants: Dict[str, str], from_store: bool) -> None:
        """Load and activate the engines of one stage (raises ``UserError`` subclasses on bad bundles)."""
        base = self._open(ref, from_store)
        base_variant = "int8" if base.manifest.precision == "int8" else "fp32"
        refs = {base_variant: (ref, from_store)}
        refs.update({v: (r, from_store) for v, r in variants.items()})
        self._refs[stage] = refs
        self._stages[stage] = {v: self._load(r, fs, v) for v, (r, fs) in refs.items()}
        shapes = {(e.bands, e.tile) for e in self._stages[stage].values()}
        if len(shapes) > 1:
            raise UserError(f"stage {stage!r}: its variants take different tiles (bands, edge) {sorted(shapes)}; "
                            "build every variant for the same input shape")

    def candidates(self, stage: str, wanted: str) -> List[str]:
        """Variants of ``stage`` to try for ``wanted``: itself, lighter ones, then heavier ones."""
        order = list(self.order) + sorted(set(self._stages[stage]) - set(self.order))
        i = order.index(wanted) if wanted in order else 0
        return [v for v in order[i:] + order[:i][::-1] if v in self._stages[stage]]

    def get(self, stage: str, wanted: str) -> LoadedEngine:
        """The engine of ``stage`` for the policy's variant ``wanted`` (see module doc)."""
        return self._stages[stage][self.candidates(stage, wanted)[0]]

    def any(self, stage: str) -> LoadedEngine:
        """One engine of ``stage`` (for shape checks)."""
        return next(iter(self._stages[stage].values()))

    # ------------------------------------------------------------------ reloading
    def stages_using(self, engine: str) -> List[str]:
        """Stages that serve the store engine ``engine`` in any variant."""
        return [st for st, refs in self._refs.items() if any(r == engine and fs for r, fs in refs.values())]

    def reload(self, engine: str) -> List[str]:
        """Ask for ``engine`` (a store name) to be reopened before the next batch; return the stages affected."""
        with self._lock:
            self._dirty.add(engine)
        return self.stages_using(engine)

    def refresh(self) -> List[str]:
        """Reopen engines marked by :meth:`reload` (worker thread, between batches); return what changed."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        changed = []
        for stage, refs in self._refs.items():
            for variant, (ref, from_store) in refs.items():
                if ref in dirty and from_store:
                    old = self._stages[stage][variant]
                    new = self._load(ref, True, variant)
                    self._stages[stage][variant] = new
                    old.runner.deactivate()
                    self.assigner.release(old.device)
                    changed.append(f"{stage}/{variant}: {old.provenance['version']} -> {new.provenance['version']}")
        for line in changed:
            log.info("engine reloaded: %s", line)
        return changed

    def describe(self) -> Dict[str, Dict[str, Any]]:
        """Per stage and variant: engine provenance and device."""
        return {st: {v: dict(e.provenance, device=e.device) for v, e in engines.items()}
                for st, engines in self._stages.items()}

    def close(self, stages: Optional[Sequence[str]] = None) -> None:
        """Deactivate every runner."""
        for st in stages or list(self._stages):
            for e in self._stages.get(st, {}).values():
                e.runner.deactivate()
