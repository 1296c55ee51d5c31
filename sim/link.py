"""The space link emulator: a ZeroMQ proxy that behaves like a lossy radio link in sim time.

`LinkEmulator` binds two DEALER sockets: the ground side connects a DEALER to ``front``, the
satellite side a DEALER to ``back``; multipart messages go front -> back ("up") and back -> front
("down"), each direction with its own `Schedule` and `LinkParams`. A message offered outside a
contact window or inside an outage is dropped; otherwise it waits in a token-bucket shaper (rate
in sim time, a modem queue of ``queue_bytes``), may be lost, gets bit errors flipped into any of
its parts, may be duplicated or held back (reordered), and comes out ``latency_s`` later. DEALER on
both ends gives datagram-like behaviour: no replies are expected, a peer that restarts simply
reconnects, and a message for a side with no connected peer is dropped (counted ``no_peer``).

Every message's fate is drawn from its own generator, seeded by ``(seed, direction, k)`` for the
k-th message offered in that direction, so the same message sequence gives the same losses,
duplicates, delays and flipped bits whatever the wall-clock timing. Counters (see `stats`):
``offered = passed + sum(dropped)`` and ``passed + duplicated = delivered + no_peer + in_flight``.
Run it in a thread (`start`/`stop`) or as a process: ``python -m sim.link --help``.
"""
from __future__ import annotations

import argparse
import bisect
import heapq
import json
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import zmq

from engines.errors import UserError
from sim.clock import SimClock

DIRECTIONS = ("up", "down")
DROP_REASONS = ("no_contact", "outage", "queue_full", "loss")


class Schedule:
    """Contact windows of one direction: ``(start, end[, rate_bps[, owlt]])`` in sim seconds.

    ``None`` means always in contact. Windows are sorted; overlapping ones are not merged.
    """

    def __init__(self, windows: Optional[Sequence[Sequence[float]]] = None) -> None:
        self.always = windows is None
        rows = [tuple(w) + (None,) * (4 - len(w)) for w in (windows or [])]
        if any(len(r) != 4 or not r[1] > r[0] for r in rows):
            raise UserError(f"contact windows are (start, end[, rate_bps[, owlt]]) with end > start; got {windows!r}")
        self.rows = sorted(rows, key=lambda r: r[0])
        self._starts = [r[0] for r in self.rows]

    @classmethod
    def from_plan(cls, plan: Any, source: str, dest: str) -> "Schedule":
        """The contacts ``source -> dest`` of a `sim.contacts.ContactPlan` (rate and OWLT included)."""
        rows = [(c["start"], c["end"], c["rate_bps"], c["owlt"]) for c in plan.contacts
                if c["source"] == source and c["dest"] == dest]
        if not rows:
            raise UserError(f"the contact plan has no contact {source} -> {dest}; its nodes: {sorted(plan.nodes)}")
        return cls(rows)

    @property
    def windows(self) -> List[Tuple[float, float]]:
        """``(start, end)`` pairs (what `ground.uplink` and `onboard.transfer` take)."""
        return [(r[0], r[1]) for r in self.rows]

    def window_at(self, t: float) -> Optional[tuple]:
        """The window ``(start, end, rate_bps, owlt)`` containing ``t``, or None."""
        if self.always:
            return (-np.inf, np.inf, None, None)
        i = bisect.bisect_right(self._starts, t) - 1
        return self.rows[i] if i >= 0 and self.rows[i][0] <= t < self.rows[i][1] else None


@dataclass
class LinkParams:
    """Impairments of one direction (times in sim seconds, probabilities per message).

    ``rate_bps`` and ``latency_s`` of None take the window's rate and OWLT (unlimited / 0 without
    them). ``burst_bytes`` is the token bucket's depth, ``queue_bytes`` the modem queue behind it.
    ``ber`` is the probability that each bit of every part is flipped.
    """

    rate_bps: Optional[float] = None
    latency_s: Optional[float] = None
    jitter_s: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay_s: float = 0.5
    ber: float = 0.0
    burst_bytes: int = 16384
    queue_bytes: int = 262144
    outages: Sequence[Tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("rate_bps", "latency_s", "jitter_s", "loss", "duplicate", "reorder", "reorder_delay_s", "ber",
                     "burst_bytes", "queue_bytes"):
            value = getattr(self, name)
            if value is None and name in ("rate_bps", "latency_s"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise UserError(f"LinkParams.{name} must be a number >= 0; got {value!r}")
            if name in ("loss", "duplicate", "reorder", "ber") and value > 1:
                raise UserError(f"LinkParams.{name} is a probability in [0, 1]; got {value!r}")


class _Direction:
    """One direction's shaper, random fate and delay line (no sockets: `offer` and `due` only)."""

    def __init__(self, name: str, index: int, schedule: Schedule, params: LinkParams, seed: int) -> None:
        self.name, self.index, self.schedule, self.p, self.seed = name, index, schedule, params, seed
        self.k = self.seq = 0
        self.tokens, self.tok_t, self.last_dep = float(params.burst_bytes), -np.inf, -np.inf
        self.queue: deque = deque()     # (departure, nbytes) still in the shaper
        self.heap: list = []            # (arrival, seq, parts)
        self.c: Dict[str, Any] = {k: 0 for k in ("offered_msgs", "offered_bytes", "passed_msgs", "passed_bytes",
                                                "delivered_msgs", "delivered_bytes", "duplicated", "reordered",
                                                "corrupted_msgs", "bits_flipped", "no_peer_msgs", "no_peer_bytes")}
        self.c["dropped"] = {r: {"msgs": 0, "bytes": 0} for r in DROP_REASONS}

    def _drop(self, reason: str, n: int) -> None:
        self.c["dropped"][reason]["msgs"] += 1
        self.c["dropped"][reason]["bytes"] += n

    def offer(self, parts: List[bytes], now: float, out: str = "") -> None:
        """A message entered the link at sim time ``now`` (``out``: the socket it leaves by)."""
        n = sum(len(p) for p in parts)
        rng = np.random.default_rng([self.seed, self.index, self.k])
        self.k += 1
        self.c["offered_msgs"] += 1
        self.c["offered_bytes"] += n
        u = rng.random(6)
        win = self.schedule.window_at(now)
        if win is None:
            return self._drop("no_contact", n)
        if any(a <= now < b for a, b in self.p.outages):
            return self._drop("outage", n)
        rate = self.p.rate_bps if self.p.rate_bps is not None else win[2]
        dep = now
        if rate:
            bps, burst = rate / 8.0, float(self.p.burst_bytes)
            while self.queue and self.queue[0][0] <= now:
                self.queue.popleft()
            if sum(q[1] for q in self.queue) + n > self.p.queue_bytes:
                return self._drop("queue_full", n)
            t0 = max(now, self.last_dep)
            tok = min(burst, self.tokens + (t0 - self.tok_t) * bps)
            need = min(n, burst)
            if tok < need:
                t0, tok = t0 + (need - tok) / bps, need
            if t0 + n / bps > win[1]:
                return self._drop("no_contact", n)      # the window closes before it is on the air
            dep, self.tokens, self.tok_t, self.last_dep = t0, tok - n, t0, t0
            self.queue.append((dep, n))
        if u[0] < self.p.loss:
            return self._drop("loss", n)
        self.c["passed_msgs"] += 1
        self.c["passed_bytes"] += n
        if self.p.ber > 0:
            parts = self._flip(parts, n, rng)
        latency = self.p.latency_s if self.p.latency_s is not None else (win[3] or 0.0)
        arrival = dep + latency + self.p.jitter_s * u[1]
        if u[2] < self.p.reorder:
            arrival += self.p.reorder_delay_s * (0.5 + u[3])
            self.c["reordered"] += 1
        self._push(arrival, parts, out)
        if u[4] < self.p.duplicate:
            self.c["duplicated"] += 1
            self._push(arrival + 0.01 + self.p.reorder_delay_s * u[5], list(parts), out)

    def _flip(self, parts: List[bytes], n: int, rng: np.random.Generator) -> List[bytes]:
        flips = int(rng.binomial(8 * n, self.p.ber))
        if flips == 0:
            return parts
        bufs = [bytearray(p) for p in parts]
        ends = np.cumsum([len(b) for b in bufs])
        for bit in rng.choice(8 * n, size=flips, replace=False).tolist():
            i = int(np.searchsorted(ends, bit // 8, side="right"))
            bufs[i][bit // 8 - (int(ends[i - 1]) if i else 0)] ^= 1 << (bit % 8)
        self.c["corrupted_msgs"] += 1
        self.c["bits_flipped"] += flips
        return [bytes(b) for b in bufs]

    def _push(self, arrival: float, parts: List[bytes], out: str = "") -> None:
        self.seq += 1
        heapq.heappush(self.heap, (arrival, self.seq, parts, out))

    def next_due(self) -> float:
        """Sim time of the next delivery (inf when nothing is in flight)."""
        return self.heap[0][0] if self.heap else np.inf

    def due(self, now: float) -> List[List[bytes]]:
        """Pop the messages whose arrival time has come, in arrival order."""
        return [parts for parts, _ in self.due_routed(now)]

    def due_routed(self, now: float) -> List[Tuple[List[bytes], str]]:
        """Like `due`, with the name of the socket each message leaves by."""
        out = []
        while self.heap and self.heap[0][0] <= now:
            item = heapq.heappop(self.heap)
            out.append((item[2], item[3]))
        return out

    def stats(self) -> Dict[str, Any]:
        """A copy of the counters, with ``in_flight``."""
        return json.loads(json.dumps({**self.c, "in_flight": len(self.heap)}))


class LinkEmulator:
    """A two-way emulated space link between a bound front (ground) and back (satellite) socket.

    Parameters
    ----------
    front_endpoint, back_endpoint : str
        Endpoints to bind (``tcp://127.0.0.1:*`` picks a port; read `front` / `back` after `start`).
    schedule : None, list of windows, Schedule, ContactPlan, or dict
        Contact windows: None (always up), ``[(start, end), ...]`` for both directions, a
        `sim.contacts.ContactPlan` (with ``ground`` and ``satellite`` node names) or
        ``{"up": ..., "down": ...}``.
    params : LinkParams or dict, optional
        Impairments for both directions, or ``{"up": LinkParams, "down": LinkParams}``.
    clock : SimClock, optional
        Default: ``$SATEDGE_SIM_CLOCK``, else wall time.
    seed : int
    sockets : dict, optional
        More sockets than the two DEALERs, for peers that are not DEALERs (e.g. a daemon's
        PUSH results and PULL acks): ``{name: (zmq_type_name, endpoint, bind)}``; read the bound
        endpoints from `endpoints_bound` after `start`.
    routes : dict, optional
        ``{"up" | "down": [(in_name, out_name), ...]}``: messages read on ``in_name`` travel in that
        direction (its shaper and impairments) and leave by ``out_name``. Default: up front->back,
        down back->front.
    """

    def __init__(self, front_endpoint: str, back_endpoint: str, schedule: Any = None, params: Any = None,
                 clock: Optional[SimClock] = None, seed: int = 0, *, ground: Optional[str] = None,
                 satellite: Optional[str] = None, ctx: Optional[zmq.Context] = None,
                 sockets: Optional[Dict[str, Tuple[str, str, bool]]] = None,
                 routes: Optional[Dict[str, Sequence[Tuple[str, str]]]] = None) -> None:
        self.endpoints = (front_endpoint, back_endpoint)
        self.specs: Dict[str, Tuple[str, str, bool]] = {"front": ("DEALER", front_endpoint, True),
                                                        "back": ("DEALER", back_endpoint, True), **(sockets or {})}
        self.routes = {"up": [("front", "back")], "down": [("back", "front")], **(routes or {})}
        for d, pairs in self.routes.items():
            bad = [n for pair in pairs for n in pair if n not in self.specs]
            if d not in DIRECTIONS or bad:
                raise UserError(f"link routes: direction {d!r} must be one of {DIRECTIONS} and its sockets "
                                f"{bad} must be in {sorted(self.specs)}")
        self.endpoints_bound: Dict[str, str] = {}
        self.clock = clock or SimClock.from_env(default=SimClock.wall())
        self.ctx = ctx or zmq.Context.instance()
        self.seed = int(seed)
        if hasattr(schedule, "contacts"):
            if not (ground and satellite):
                raise UserError("a ContactPlan schedule needs ground= and satellite= node names")
            schedule = {"up": Schedule.from_plan(schedule, ground, satellite),
                        "down": Schedule.from_plan(schedule, satellite, ground)}
        scheds = schedule if isinstance(schedule, dict) else {d: schedule for d in DIRECTIONS}
        pars = params if isinstance(params, dict) else {d: params for d in DIRECTIONS}
        self.dirs = {}
        for i, d in enumerate(DIRECTIONS):
            s = scheds.get(d)
            p = pars.get(d) or LinkParams()
            p = LinkParams(**p) if isinstance(p, dict) else replace(p)
            self.dirs[d] = _Direction(d, i, s if isinstance(s, Schedule) else Schedule(s), p, self.seed)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self.front = self.back = ""

    def _bind(self) -> None:
        self._socks: Dict[str, zmq.Socket] = {}
        for name, (kind, ep, bind) in self.specs.items():
            s = self.ctx.socket(getattr(zmq, kind.upper()))
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 100000)
            s.setsockopt(zmq.RCVHWM, 100000)
            if bind:
                s.bind(ep)
                self.endpoints_bound[name] = s.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                s.connect(ep)
                self.endpoints_bound[name] = ep
            self._socks[name] = s
        self.front, self.back = self.endpoints_bound["front"], self.endpoints_bound["back"]

    def start(self) -> "LinkEmulator":
        """Bind and run the proxy in a background thread."""
        self._bind()
        self._thread = threading.Thread(target=self._loop, name="link-emulator", daemon=True)
        self._thread.start()
        return self

    def run(self, ready: Optional[Callable[["LinkEmulator"], Any]] = None) -> None:
        """Bind, call ``ready(self)``, and run the proxy in this thread until `stop` (or a signal handler) ends it."""
        self._bind()
        if ready is not None:
            ready(self)
        self._loop()

    def stop(self) -> Dict[str, Any]:
        """Stop the proxy, close its sockets and return `stats`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        return self.stats()

    def __enter__(self) -> "LinkEmulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stats(self) -> Dict[str, Any]:
        """Counters per direction (see the module docstring), plus the seed and clock factor."""
        with self._lock:
            out = {d: self.dirs[d].stats() for d in DIRECTIONS}
        return {**out, "seed": self.seed, "factor": self.clock.factor}

    def _loop(self) -> None:
        route = {self._socks[i]: (self.dirs[d], o) for d, pairs in self.routes.items() for i, o in pairs}
        poller = zmq.Poller()
        for s in route:
            poller.register(s, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                with self._lock:
                    now = self.clock.now()
                    for d in self.dirs.values():
                        for parts, out in d.due_routed(now):
                            n = sum(len(p) for p in parts)
                            try:
                                self._socks[out].send_multipart(parts, flags=zmq.NOBLOCK)
                                d.c["delivered_msgs"] += 1
                                d.c["delivered_bytes"] += n
                            except zmq.Again:
                                d.c["no_peer_msgs"] += 1
                                d.c["no_peer_bytes"] += n
                    nxt = min(d.next_due() for d in self.dirs.values())
                wait_ms = 20.0 if nxt == np.inf else min(20.0, max(0.0, (self.clock.wall_at(nxt) - time.time()) * 1e3))
                for sock, _ in poller.poll(wait_ms):
                    d, out = route[sock]
                    for _ in range(1000):
                        try:
                            parts = sock.recv_multipart(flags=zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        with self._lock:
                            d.offer(parts, self.clock.now(), out)
        finally:
            for s in self._socks.values():
                s.close(0)


def _pairs(text: str) -> List[Tuple[float, float]]:
    try:
        return [tuple(float(x) for x in w.split(":")) for w in text.split(",") if w.strip()]
    except ValueError:
        raise UserError(f"windows are START:END[,START:END...] in sim seconds; got {text!r}") from None


def _params(text: str) -> Dict[str, "LinkParams"]:
    """``--params`` JSON -> LinkParams per direction; UserError naming the bad field."""
    try:
        params = json.loads(text)
    except ValueError as exc:
        raise UserError(f"--params is not JSON ({exc}); e.g. '{{\"loss\": 0.01}}'") from None
    if not isinstance(params, dict):
        raise UserError(f"--params is a JSON object of LinkParams fields; got {text!r}")
    if not set(params) <= set(DIRECTIONS):
        params = {d: params for d in DIRECTIONS}
    known = [f for f in LinkParams.__dataclass_fields__]
    out = {}
    for d in DIRECTIONS:
        fields = params.get(d, {})
        unknown = sorted(set(fields) - set(known)) if isinstance(fields, dict) else ["(not an object)"]
        if unknown:
            raise UserError(f"--params {d}: unknown field(s) {unknown}; LinkParams fields: {known}")
        out[d] = LinkParams(**fields)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m sim.link``: run the emulator until SIGTERM, then write its counters as JSON."""
    ap = argparse.ArgumentParser(prog="python -m sim.link", description=__doc__.splitlines()[0])
    ap.add_argument("--front", required=True, help="endpoint to bind for the ground side")
    ap.add_argument("--back", required=True, help="endpoint to bind for the satellite side")
    ap.add_argument("--plan", help="contact plan JSON (sim.contacts.ContactPlan.write); needs --ground/--satellite")
    ap.add_argument("--ground")
    ap.add_argument("--satellite")
    ap.add_argument("--windows", help="START:END,... sim seconds (both directions); default: always up")
    ap.add_argument("--params", default="{}", help='JSON: LinkParams fields, or {"up": {...}, "down": {...}}')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stats", help="write the counters here (JSON) on exit")
    a = ap.parse_args(argv)
    from sim.contacts import ContactPlan
    try:
        schedule = ContactPlan.load(a.plan) if a.plan else (_pairs(a.windows) if a.windows else None)
        link = LinkEmulator(a.front, a.back, schedule, _params(a.params), seed=a.seed, ground=a.ground,
                            satellite=a.satellite)
    except (UserError, OSError, ValueError, TypeError, zmq.ZMQError) as exc:
        print(f"python -m sim.link: error: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: link._stop.set())
    link.run(lambda lk: print(json.dumps({"ready": True, "front": lk.front, "back": lk.back, "params": {
        d: asdict(lk.dirs[d].p) for d in DIRECTIONS}}), flush=True))
    if a.stats:
        with open(a.stats, "w") as fh:
            json.dump(link.stats(), fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
