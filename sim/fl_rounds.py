"""Contact-aware FL rounds in orbit time: the round schedule follows the contact plan.

A satellite fetches the global model or delivers an update only during a ground-station
:class:`Pass` (:func:`sim.fl.passes_from_plan`). Between passes its updates wait, store-and-forward,
in its own :class:`onboard.outbox.Outbox` (SQLite, a file per satellite in a temporary folder). At a pass
the queue drains in order; an update larger than the rest of the window (``rate × remaining
time``) is shrunk to fit by :func:`fit_to_budget` (what is cut joins the satellite's next update:
delayed, not lost), or waits for the next pass when the window holds too little of it.
:class:`OrbitRounds` simulates one run, event by event, in one of two modes:

``sync``
    FedAvg rounds: the ground opens round r (model version r); each satellite fetches it at its
    next pass, trains for ``train_s`` orbit seconds, queues and delivers its update; once every
    satellite has delivered, the ground aggregates and opens round r + 1 (the slowest sets the pace).
``async``
    Buffered asynchronous (FedBuff): each update goes to the strategy as it lands, with its
    staleness (versions since the one it was trained on); the version advances when the strategy
    flushes its buffer. A satellite fetches whenever the ground has a newer model than its last.

Directions as in FL: *uplink* is satellite → ground (the plan's ``down`` contacts), *broadcast*
is the model ground → satellite (``up`` contacts).
"""
from __future__ import annotations

import heapq
import itertools
import os
import tempfile
from collections import Counter, namedtuple
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import msgpack
import numpy as np

from engines.errors import UserError
from ground.fl.strategies.base import ClientResult, Strategy
from onboard.fl import codec
from onboard.fl.update import CompressedUpdate, LayerUpdate, decompress_update, quantize_values
from onboard.outbox import Outbox

Pass = namedtuple("Pass", "sat station start end to_ground_bps to_sat_bps owlt")
Pass.__doc__ = "One pass of satellite ``sat`` over ``station``: plan seconds, rates in bit/s, one-way light time."
Record = namedtuple("Record", "time_s version uplink_bytes broadcast_bytes accuracy loss")
Record.__doc__ = "The global model after an aggregation: orbit time, version, cumulative bytes, test figures."


def _sparse_top(full: Dict[str, np.ndarray], order: np.ndarray, offsets: np.ndarray, m: int,
                method: str, step: int) -> CompressedUpdate:
    """The ``m`` largest-magnitude elements over all layers, FP16, as a sparse update."""
    chosen = np.sort(order[:m])
    layers = []
    for k, (name, arr) in enumerate(full.items()):
        idx = chosen[(chosen >= offsets[k]) & (chosen < offsets[k + 1])] - offsets[k]
        if len(idx):
            values, _ = quantize_values(arr.ravel()[idx], "f16")
            layers.append(LayerUpdate(name, arr.shape, values, "f16", idx.astype(np.int64), bits=16))
    return CompressedUpdate(f"{method}+fit", step, layers)


def fit_to_budget(update: CompressedUpdate, shapes: Mapping[str, Sequence[int]],
                  budget: int) -> Tuple[Optional[CompressedUpdate], Dict[str, np.ndarray]]:
    """Shrink ``update`` to at most ``budget`` encoded bytes.

    First every FP32/FP16 layer is narrowed (FP32 → FP16 → INT8, i.e. fewer bits per value);
    if that is not enough, only the largest-magnitude values of the whole update are kept (FP16,
    sparse), as many as fit (binary search on :func:`onboard.fl.codec.encoded_size`).

    Returns
    -------
    (CompressedUpdate or None, dict)
        The fitted update (``update`` itself if it fits, ``None`` if not one value does) and the
        leftover ``original - fitted`` per layer, which the sender adds to its next update.
    """
    if codec.encoded_size(update) <= budget:
        return update, {}
    full = decompress_update(update, shapes)
    for fmt in ("f16", "i8"):
        layers = []
        for layer in update.layers:
            if layer.value_format in ("f32", "f16") and layer.value_format != fmt:
                with np.errstate(invalid="ignore"):         # a diverged (NaN) update stays NaN
                    values, scale = quantize_values(layer.dequantized(), fmt)
                layer = LayerUpdate(layer.name, layer.shape, values, fmt, layer.indices, scale,
                                    {"f16": 16, "i8": 8}[fmt])
            layers.append(layer)
        candidate = CompressedUpdate(f"{update.method}+{fmt}", update.step, layers)
        if codec.encoded_size(candidate) <= budget:
            return candidate, _minus(full, candidate, shapes)
    flat = np.concatenate([a.ravel() for a in full.values()])
    offsets = np.concatenate(([0], np.cumsum([a.size for a in full.values()])))
    order = np.argsort(-np.abs(flat), kind="stable")[: int(np.count_nonzero(flat))]
    lo, hi = 0, len(order)                      # largest m whose encoding fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        fits = codec.encoded_size(_sparse_top(full, order, offsets, mid, update.method, update.step)) <= budget
        lo, hi = (mid, hi) if fits else (lo, mid - 1)
    if lo == 0:
        return None, {}
    fitted = _sparse_top(full, order, offsets, lo, update.method, update.step)
    return fitted, _minus(full, fitted, shapes)


def _minus(full: Mapping[str, np.ndarray], sent: CompressedUpdate, shapes) -> Dict[str, np.ndarray]:
    got = decompress_update(sent, shapes)
    return {k: (full[k] - got[k]).astype(np.float32) for k in full}


@dataclass
class RunLog:
    """What :meth:`OrbitRounds.run` returns: the records, event counters and the staleness seen."""

    records: List[Record] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)
    staleness: List[int] = field(default_factory=list)
    finished: bool = False


class _Sat:
    def __init__(self, index: int, name: str, outbox: Outbox) -> None:
        self.index, self.name, self.outbox, self.params = index, name, outbox, None
        self.version, self.busy, self.steps = -1, False, 0      # version: the one it trains / trained on
        self.carry: Dict[str, np.ndarray] = {}                  # cut from an update to fit a window
        self.current: Optional[Pass] = None
        self.tx_free = self.rx_free = 0.0


class OrbitRounds:
    """Discrete-event FL over contact windows; see the module docstring.

    Parameters
    ----------
    passes, sat_names : list of list of Pass, sequence of str
        Each satellite's passes, and its name.
    params : dict of str to numpy.ndarray
        Initial global parameters.
    strategy, compressors : Strategy, sequence of Compressor
        Ground aggregation (``fedbuff`` for ``async``); one compressor per satellite (it keeps state).
    train, evaluate : callable
        ``train(sat_index, params, step) -> (delta, num_examples)``; ``evaluate(params) -> (accuracy, loss)``.
    mode : {"sync", "async"}
    rounds : int
        ``sync``: rounds to run; ``async``: model versions at most.
    train_s, horizon_s : float
        Orbit seconds from receiving the model to queueing the update; the plan time to stop at.
    min_fit_fraction : float
        An update is shrunk to a window only if the window holds at least this fraction of its
        bytes; otherwise it waits for the next pass.
    """

    def __init__(self, passes, sat_names, params, *, strategy: Strategy, compressors, train: Callable,
                 evaluate: Callable, mode: str = "sync", rounds: int = 20, train_s: float = 300.0,
                 horizon_s: float = float("inf"), min_fit_fraction: float = 0.25) -> None:
        if mode not in ("sync", "async"):
            raise UserError(f"round mode {mode!r} is not one of sync, async")
        if len(passes) != len(sat_names) or len(compressors) != len(sat_names):
            raise UserError("need one pass list and one compressor per satellite")
        self.passes, self.names, self.params = passes, list(sat_names), {k: v.copy() for k, v in params.items()}
        self.shapes = {k: v.shape for k, v in params.items()}
        self.strategy, self.compressors, self.train, self.evaluate = strategy, list(compressors), train, evaluate
        self.mode, self.rounds, self.train_s, self.horizon = mode, int(rounds), float(train_s), float(horizon_s)
        self.min_fit_fraction = float(min_fit_fraction)
        self.model_bytes = len(codec.encode(CompressedUpdate("model", 0, [
            LayerUpdate(k, v.shape, v.ravel().astype(np.float32)) for k, v in self.params.items()])))
        self.version, self.now, self.uplink, self.broadcast = 0, 0.0, 0, 0
        self.pending: Dict[int, ClientResult] = {}
        self.log = RunLog()
        self._heap: list = []
        self._seq = itertools.count()

    def _push(self, t: float, kind: int, *data) -> None:
        heapq.heappush(self._heap, (t, kind, next(self._seq), data))

    def run(self, workdir: Optional[str] = None) -> RunLog:
        """Simulate until the rounds are done, the horizon or the end of the plan."""
        ram = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None     # durability is not what is simulated
        with tempfile.TemporaryDirectory(prefix="satedge-fl-", dir=workdir or ram) as tmp:
            self.sats = [_Sat(i, n, Outbox(os.path.join(tmp, f"{n}.db"), clock=lambda: self.now))
                         for i, n in enumerate(self.names)]
            try:
                for p in itertools.chain.from_iterable(self.passes):
                    self._push(p.start, 1, p)
                    self._push(p.end, 0, p)
                self._record()
                while self._heap and not self.log.finished:
                    t, kind, _, data = heapq.heappop(self._heap)
                    if t > self.horizon:
                        break
                    self.now = t
                    (self._pass_end, self._pass_start, self._trained, self._arrive)[kind](*data)
            finally:
                for sat in self.sats:
                    sat.outbox.close()
        return self.log

    # -- satellites ------------------------------------------------------------------------
    def _pass_start(self, p: Pass) -> None:
        sat = self.sats[p.sat]
        if sat.current is None or p.end > sat.current.end:
            sat.current = p
        self._send(sat)
        self._fetch(sat)

    def _pass_end(self, p: Pass) -> None:
        if self.sats[p.sat].current is p:
            self.sats[p.sat].current = None

    def _fetch(self, sat: _Sat) -> None:
        p = sat.current
        wants = sat.version < self.version if self.mode == "async" else sat.version != self.version
        if sat.busy or p is None or not wants or p.to_sat_bps <= 0:
            return
        start = max(self.now, sat.rx_free)
        done = start + self.model_bytes * 8.0 / p.to_sat_bps
        if done > p.end:
            self.log.counters["fetch_deferred"] += 1
            return
        sat.rx_free, sat.busy, sat.version = done, True, self.version
        sat.params = {k: v.copy() for k, v in self.params.items()}
        self.broadcast += self.model_bytes
        self._push(done + p.owlt + self.train_s, 2, sat.index)

    def _trained(self, index: int) -> None:
        sat = self.sats[index]
        delta, examples = self.train(index, sat.params, sat.steps)
        delta, sat.carry = {k: v + sat.carry.get(k, 0.0) for k, v in delta.items()}, {}
        payload = codec.encode(self.compressors[index].compress(delta, step=sat.steps))
        header = msgpack.packb({"version": sat.version, "examples": int(examples), "step": sat.steps})
        sat.outbox.put(f"{sat.name}-{sat.steps}", 0, [b"fl-update", header, payload])
        sat.steps, sat.busy = sat.steps + 1, False
        self.log.counters["updates_made"] += 1
        self._send(sat)
        self._fetch(sat)

    def _send(self, sat: _Sat) -> None:
        while sat.current is not None:
            p = sat.current
            start = max(self.now, sat.tx_free)
            budget = int((p.end - start) * p.to_ground_bps / 8.0)
            items = sat.outbox.next_batch(1)
            if not items:
                return
            item = items[0]
            payload = item.buffers[0]
            if len(payload) > budget:
                fitted = None
                if budget >= self.min_fit_fraction * len(payload):
                    fitted, leftover = fit_to_budget(codec.decode(payload), self.shapes, budget)
                if fitted is None:
                    sat.outbox.nack([item.msg_id])
                    self.log.counters["upload_deferred"] += 1
                    return
                payload = codec.encode(fitted)
                for k, v in leftover.items():
                    sat.carry[k] = sat.carry.get(k, 0.0) + v
                self.log.counters["upload_resized"] += 1
            sat.tx_free = start + len(payload) * 8.0 / p.to_ground_bps
            sat.outbox.ack([item.msg_id])
            self.uplink += len(payload)
            self.log.counters["uploads"] += 1
            self._push(sat.tx_free + p.owlt, 3, sat.index, item.header, payload)

    # -- ground ----------------------------------------------------------------------------
    def _arrive(self, index: int, header: bytes, payload: bytes) -> None:
        meta = msgpack.unpackb(header)
        update = decompress_update(codec.decode(payload), self.shapes)     # the CRC is checked here
        result = ClientResult(self.names[index], meta["examples"], update, staleness=self.version - meta["version"],
                              meta={"bytes": len(payload)})
        if self.mode == "async":
            self.log.staleness.append(result.staleness)
            self._aggregate([result])
            return
        if meta["version"] != self.version:
            self.log.counters["late"] += 1
            return
        self.pending[index] = result
        if len(self.pending) == len(self.sats):
            results = [self.pending.pop(i) for i in sorted(self.pending)]
            self._aggregate(results)

    def _aggregate(self, results: List[ClientResult]) -> None:
        out = self.strategy.aggregate(self.version, results, [])
        for _, reason in out.rejected:
            self.log.counters[f"rejected_{reason}"] += 1
        if out.metrics.get("num_clipped"):
            self.log.counters["clipped"] += int(out.metrics["num_clipped"])
        if out.params_delta is None and self.mode == "async":
            return                               # buffering (or all rejected): same version
        if out.params_delta is not None:
            self.params = {k: (v + out.params_delta[k]).astype(np.float32) for k, v in self.params.items()}
        self.version += 1
        self._record()
        self.log.finished = self.version >= self.rounds
        for sat in self.sats:                    # satellites in contact may fetch the new model now
            self._fetch(sat)

    def _record(self) -> None:
        accuracy, loss = self.evaluate(self.params)
        self.log.records.append(Record(round(self.now, 3), self.version, self.uplink, self.broadcast,
                                       float(accuracy), float(loss)))
