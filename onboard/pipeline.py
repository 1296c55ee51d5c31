"""Per-stream pipelines: a DAG of engine stages over the tiles of each frame, with tile filters.

A stream's pipeline (``pipeline.<stream>`` in the daemon config) first tiles the frame (the
engines' tile edge, ``overlap`` pixels shared between neighbours), then runs its stages in
topological order. Each stage is an engine from the store (or a bundle folder) keyed by name, of
one of two kinds: ``cloud_screen`` (:mod:`onboard.screening`) or ``engine`` (any model: its
outputs are downlinked per tile and its per-tile scalar outputs become tile attributes). A stage
runs on the tiles on which all its parents (``after``) ran and that pass its filter ``when``, for
example ``cloud_fraction <= 0.3`` (comparisons joined by ``and``, over the attributes of earlier
stages, plain or as ``stage.attribute``). A batch of frames shares each stage's inference calls.

Every stage that ran on a frame gives one result message with its provenance: stream, frame id,
stage, engine name/version/precision, variant and device, and the tiles it ran on.
"""
from __future__ import annotations

import operator
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from engines.errors import UserError
from onboard.screening import CloudScreen, gather_tiles
from onboard.tiling import TileGrid
from onboard.wire import Frame, encode

_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt}
_TERM = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(<=|>=|==|!=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def streams_of(settings) -> Dict[str, Any]:
    """The ``pipeline`` section, or without one the pipeline of earlier versions: one cloud screen for any stream."""
    from onboard.settings import StageSettings, StreamSettings
    if settings.pipeline:
        return settings.pipeline
    stage = StageSettings(name="cloud", kind="cloud_screen", threshold=settings.cloud_threshold,
                          **({"engine": settings.engine} if settings.store_root else {"bundle": settings.bundle}))
    return {"*": StreamSettings(stages=[stage])}


class TileFilter:
    """A tile filter such as ``cloud_fraction <= 0.3 and kept == 1``; empty text passes every tile."""

    def __init__(self, text: str):
        self.text = text.strip()
        self.terms: List[Tuple[str, Any, float]] = []
        for part in re.split(r"\s+and\s+", self.text) if self.text else []:
            m = _TERM.match(part)
            if not m:
                raise UserError(f"tile filter {text!r}: cannot read {part!r}; write comparisons such as "
                                "'cloud_fraction <= 0.3' joined by 'and'")
            self.terms.append((m.group(1), _OPS[m.group(2)], float(m.group(3))))

    @property
    def names(self) -> List[str]:
        """Attributes the filter reads."""
        return [n for n, _, _ in self.terms]

    def __call__(self, attrs: Dict[str, np.ndarray], n: int) -> np.ndarray:
        """(n,) bool: tiles that pass; a NaN attribute (stage did not run there) fails every comparison."""
        out = np.ones(n, bool)
        for name, op, value in self.terms:
            with np.errstate(invalid="ignore"):
                out &= op(attrs[name], value) & ~np.isnan(attrs[name])
        return out


class EngineStage:
    """The ``engine`` stage kind: run the engine on the selected tiles and downlink its outputs."""

    kind = "engine"

    def __init__(self, outputs: Sequence[str] = ()):
        self.outputs = list(outputs)

    def check(self, engine) -> None:
        """Refuse ``outputs`` the engine does not have."""
        missing = sorted(set(self.outputs) - set(engine.output_names))
        if missing:
            raise UserError(f"stage outputs {missing} are not outputs of {engine.provenance['name']!r} "
                            f"(it has {engine.output_names})")

    @staticmethod
    def scalar_outputs(engine) -> List[str]:
        """Outputs with one value per tile (shape (N,) or (N, 1)): they become tile attributes."""
        return [o.name for o in engine.bundle.manifest.outputs
                if len(o.shape) <= 2 and all(d == 1 for d in o.shape[1:])]

    def run(self, works: Sequence[Any], selections: Sequence[np.ndarray], engine, max_batch: int) -> List[Any]:
        """Per frame ``(fields, buffers, attributes, stats)``, or None where no tile was selected."""
        counts = [int(s.sum()) for s in selections]
        if not sum(counts):
            return [None] * len(works)
        outs = engine.infer(gather_tiles(works, selections), max_batch)
        names = self.outputs or list(outs)
        scalars = [n for n in self.scalar_outputs(engine) if n in outs]
        results, start = [], 0
        for w, sel, k in zip(works, selections, counts):
            part = {n: v[start:start + k] for n, v in outs.items()}
            start += k
            if not k:
                results.append(None)
                continue
            idx = np.flatnonzero(sel)
            windows = w.grid.windows()
            attrs = {}
            for n in scalars:
                attrs[n] = np.full(len(sel), np.nan, np.float32)
                attrs[n][idx] = part[n].reshape(k)
            tiles = [dict(zip(("i", "r", "c", "h", "w"), (int(i), *windows[i])),
                          **{n: round(float(attrs[n][i]), 6) for n in scalars}) for i in idx]
            fields = {"tile": w.grid.tile, "overlap": w.grid.overlap, "tiles": tiles, "buffers": names,
                      "outputs": [{"name": n, "dtype": str(part[n].dtype), "shape": list(part[n].shape)} for n in names]}
            results.append((fields, [np.ascontiguousarray(part[n]) for n in names], attrs,
                            {"tiles": k, "discarded": 0}))
        return results


@dataclass
class FrameWork:
    """One frame on its way through a pipeline."""

    frame: Frame
    grid: TileGrid
    tiles: np.ndarray
    attrs: Dict[str, np.ndarray] = field(default_factory=dict)
    ran: Dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class StageResult:
    """One result message of one frame, ready for the outbox.

    ``build()`` makes the message parts; :attr:`parts` calls it once, on first use: the outbox
    writer's thread, so that the worker thread goes back to inference sooner.
    """

    result_id: str
    priority: int
    stage: str
    build: Callable[[], List[Any]]
    stats: Dict[str, int]
    variant: str = ""
    _parts: Optional[List[Any]] = field(default=None, repr=False)

    @property
    def parts(self) -> List[Any]:
        """The message as ZeroMQ parts ``[topic, header, *buffers]``."""
        if self._parts is None:
            self._parts = self.build()
        return self._parts


class Pipeline:
    """The stage DAG of one stream (see module doc); engines come from an :class:`onboard.engineset.EngineSet`.

    Parameters
    ----------
    name : str
        The stream key in the config (``"*"`` matches any stream).
    stream : onboard.settings.StreamSettings
    engines : onboard.engineset.EngineSet
        Stages are added to it as ``"<name>/<stage>"``.
    from_store : bool
        Whether stage ``engine`` names refer to the engine store.
    max_batch : int
        Tiles per inference call.
    """

    def __init__(self, name: str, stream, engines, max_batch: int):
        self.name, self.stream, self.engines, self.max_batch = name, stream, engines, int(max_batch)
        self.priority, self.overlap = int(stream.priority), int(stream.overlap)
        self.stages = {s.name: s for s in stream.stages}
        if not self.stages or len(self.stages) != len(stream.stages):
            raise UserError(f"pipeline {name!r}: needs at least one stage and unique stage names")
        self.order = self._toposort()
        self.kinds: Dict[str, Any] = {}
        self.filters = {n: TileFilter(s.when) for n, s in self.stages.items()}
        produced: Dict[str, set] = {}
        for n in self.order:
            s = self.stages[n]
            engines.add(self.key(n), s.engine or s.bundle, dict(s.variants), from_store=bool(s.engine))
            engine = engines.any(self.key(n))
            kind = CloudScreen(s.threshold) if s.kind == "cloud_screen" else EngineStage(s.outputs)
            kind.check(engine)
            self.kinds[n] = kind
            mine = set(kind.attributes if s.kind == "cloud_screen" else EngineStage.scalar_outputs(engine))
            visible = set().union(*(produced[a] for a in self._ancestors(n))) if s.after else set()
            unknown = sorted(set(self.filters[n].names) - visible)
            if unknown:
                raise UserError(f"pipeline {name!r}, stage {n!r}: filter {s.when!r} reads {unknown}, which no stage "
                                f"before it produces (available: {sorted(visible) or 'none'}); add the stage to 'after'")
            produced[n] = mine | {f"{n}.{a}" for a in mine}
        shapes = {(engines.any(self.key(n)).bands, engines.any(self.key(n)).tile) for n in self.order}
        if len(shapes) != 1:
            raise UserError(f"pipeline {name!r}: its stages take different tiles (bands, edge) {sorted(shapes)}; "
                            "all stages of one stream share the tiling")
        (self.bands, self.tile), = shapes
        TileGrid(self.tile, self.tile, self.tile, self.overlap)        # checks the overlap

    def key(self, stage: str) -> str:
        """The stage's name in the engine set."""
        return f"{self.name}/{stage}"

    def _toposort(self) -> List[str]:
        order: List[str] = []
        state: Dict[str, int] = {}

        def visit(n: str, path: Tuple[str, ...]) -> None:
            if state.get(n) == 2:
                return
            if state.get(n) == 1:
                raise UserError(f"pipeline {self.name!r}: stages form a cycle: {' -> '.join(path + (n,))}")
            state[n] = 1
            for parent in self.stages[n].after:
                if parent not in self.stages:
                    raise UserError(f"pipeline {self.name!r}: stage {n!r} comes after {parent!r}, which is not a "
                                    f"stage (stages: {sorted(self.stages)})")
                visit(parent, path + (n,))
            state[n] = 2
            order.append(n)

        for n in self.stages:
            visit(n, ())
        return order

    def _ancestors(self, n: str) -> set:
        seen, todo = set(), list(self.stages[n].after)
        while todo:
            a = todo.pop()
            if a not in seen:
                seen.add(a)
                todo.extend(self.stages[a].after)
        return seen

    def grid(self, frame: Frame) -> TileGrid:
        """The tiling of ``frame`` (its cost in the scheduler is ``len(grid)``)."""
        return TileGrid(frame.data.shape[1], frame.data.shape[2], self.tile, self.overlap)

    def cut(self, frame: Frame) -> np.ndarray:
        """The tiles of ``frame`` (n, bands, tile, tile): ingest cuts them ahead of the worker."""
        return self.grid(frame).cut(frame.data)

    def run(self, frames: Sequence[Frame], variant: str,
            tiles: Optional[Sequence[Optional[np.ndarray]]] = None) -> List[List[StageResult]]:
        """Run every stage on a batch of frames with the engines of ``variant``; results per frame.

        ``tiles`` are the frames' tiles from :meth:`cut` where they were cut ahead (None: cut here).
        """
        works = []
        for f, t in zip(frames, tiles or [None] * len(frames)):
            grid = self.grid(f)
            works.append(FrameWork(f, grid, t if t is not None and len(t) == len(grid) else grid.cut(f.data)))
        out: List[List[StageResult]] = [[] for _ in frames]
        for n in self.order:
            s = self.stages[n]
            sels = []
            for w in works:
                sel = np.ones(len(w.grid), bool)
                for parent in s.after:
                    sel &= w.ran[parent]
                sels.append(sel & self.filters[n](w.attrs, len(w.grid)))
            engine = self.engines.get(self.key(n), variant)
            for i, (w, sel, res) in enumerate(zip(works, sels, self.kinds[n].run(works, sels, engine, self.max_batch))):
                w.ran[n] = sel
                if res is None:
                    continue
                fields, buffers, attrs, stats = res       # fields may be a callable -> (fields, buffers)
                w.attrs.update(attrs)
                w.attrs.update({f"{n}.{a}": v for a, v in attrs.items()})
                out[i].append(self._message(w.frame, n, engine, fields, buffers, stats))
        return out

    def _message(self, frame: Frame, stage: str, engine, fields: Dict[str, Any],
                 buffers: List[Any], stats: Dict[str, int]) -> StageResult:
        s = self.stages[stage]
        src = str(frame.header.get("id") or uuid.uuid4().hex)[:32]
        rid = f"{frame.stream}:{frame.frame_id}:{stage}:{src}"
        prio = s.priority if s.priority >= 0 else self.priority
        header = {"id": rid, "result_id": rid, "stream": frame.stream, "frame_id": frame.frame_id,
                  "sensor_ts": frame.header.get("ts"), "stage": stage, "engine": engine.provenance,
                  "variant": engine.variant, "device": engine.device, "priority": prio,
                  "shape": list(frame.data.shape), "dtype": str(frame.data.dtype)}

        def build() -> List[Any]:
            f, b = fields() if callable(fields) else (fields, buffers)
            return encode("result", dict(header, **f), b)
        return StageResult(rid, prio, stage, build, stats, engine.variant)
