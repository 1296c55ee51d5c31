"""File uplink, sending end: the ground station's half of the CFDP-class-2-like transfer.

`UplinkSender.send` sends metadata, the file in ``chunk_size`` data PDUs paced at ``rate_bps``
(sim time) and only inside contact windows (stopping ``guard_s`` before a window ends), then EOF.
It re-sends EOF every ``ack_timer_s`` until the receiver ACKs it (``ack_limit`` times, then it
waits ``inactivity_s`` and probes again), re-sends what each NAK lists (except chunks it sent less
than ``nak_timer_s`` ago: they are still in flight), re-sends metadata when a NAK asks for it,
probes with EOF at the start of every contact window, and ACKs FINISHED. The transaction id is
derived from the file's sha256, so a restarted sender resumes the same transaction on the
receiver. PDUs and timers: ``onboard.transfer`` and ``docs/transfer.md``.
"""
from __future__ import annotations

import hashlib
import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import zmq

from engines.errors import UserError
from onboard.transfer import EnvClock, TransferConfig, in_window, make_pdu, open_link, parse_pdu
from onboard.wire import WireError


@dataclass
class UplinkResult:
    """Outcome of one file uplink; ``efficiency`` = file bytes / bytes this sender put on the link."""

    txn: str
    ok: bool
    status: str
    size: int
    bytes_sent: int
    pdus_sent: int
    data_bytes_sent: int
    retransmitted_bytes: int
    naks_received: int
    eof_sent: int
    duration_s: float

    @property
    def efficiency(self) -> float:
        """Useful bytes (the file) over every byte sent (headers, retransmissions, EOF, metadata)."""
        return self.size / self.bytes_sent if self.bytes_sent else 0.0


def file_sha256(path: str) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Upload:
    """State of one file upload: what is due, what was sent when, and the counters."""

    def __init__(self, cfg: TransferConfig, path: str, name: str, txn: Optional[str], now: float,
                 resume: bool = False) -> None:
        self.cfg, self.path, self.name = cfg, path, name
        self.size, self.sha = os.path.getsize(path), file_sha256(path)
        self.txn = txn or self.sha[:16]
        offsets = range(0, 0 if resume else self.size, cfg.chunk_size)     # resume: the first NAK says what
        self.queue, self.queued, self.sent_at = deque(offsets), set(offsets), {}
        self.meta_due, self.eof_due, self.eof_at, self.eof_acked, self.tries = True, False, None, False, 0
        self.t0 = self.last_rx = now
        self.status: Optional[str] = None
        self.n = dict(bytes=0, pdus=0, data=0, retx=0, naks=0, eofs=0)

    def on_pdu(self, h: Dict[str, Any], now: float) -> None:
        """React to a PDU from the receiver."""
        self.last_rx = now
        if h["pdu"] == "finished":               # "ok" for another file under this txn id is a conflict
            self.status = "conflict" if h["status"] == "ok" and h.get("sha256") not in (None, self.sha) else h["status"]
        elif h["pdu"] == "ack" and h["of"] == "eof":
            self.eof_acked = True
        elif h["pdu"] == "nak":                     # a NAK also acknowledges the EOF
            self.n["naks"] += 1
            self.eof_acked, self.meta_due = True, self.meta_due or bool(h.get("meta"))
            step = self.cfg.chunk_size
            for r in h["ranges"]:
                if not (isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r)):
                    continue
                for off in range(max(0, r[0] - r[0] % step), min(r[1], self.size), step):
                    recent = now - self.sent_at.get(off, float("-inf")) < self.cfg.nak_timer_s   # still in flight
                    if off not in self.queued and not recent:
                        self.queue.append(off)
                        self.queued.add(off)

    def timers(self, now: float, window_opened: bool) -> None:
        """EOF ACK timer and limit, inactivity probe, and the EOF probe at the start of a window."""
        if self.eof_at is None or self.eof_due:
            return
        since = now - self.eof_at
        if window_opened:
            self.eof_due, self.tries = True, 0
        elif not self.eof_acked and since >= self.cfg.ack_timer_s:
            if self.tries < self.cfg.ack_limit or since >= self.cfg.inactivity_s:
                self.tries = self.tries + 1 if self.tries < self.cfg.ack_limit else 0
                self.eof_due = True
        elif not self.queue and now - max(self.last_rx, self.eof_at) >= self.cfg.inactivity_s:
            self.eof_due = True                     # the receiver went quiet: ask where it stands

    def next_pdu(self, fh: Any) -> Optional[tuple]:
        """``(kind, offset, data_len, parts)`` of the next PDU due, or None."""
        if self.meta_due:
            return "metadata", None, 0, make_pdu("metadata", self.txn, name=self.name, size=self.size,
                                                 sha256=self.sha, chunk=self.cfg.chunk_size)
        if self.queue:
            fh.seek(self.queue[0])
            data = fh.read(self.cfg.chunk_size)
            return "data", self.queue[0], len(data), make_pdu("data", self.txn, data, offset=self.queue[0])
        if self.eof_due or self.eof_at is None:
            return "eof", None, 0, make_pdu("eof", self.txn, size=self.size, sha256=self.sha)
        return None

    def sent(self, kind: str, off: Optional[int], data_len: int, nbytes: int, now: float) -> None:
        """Account for a PDU that went out."""
        self.n["bytes"] += nbytes
        self.n["pdus"] += 1
        if kind == "metadata":
            self.meta_due = False
        elif kind == "data":
            self.queue.popleft()
            self.queued.discard(off)
            self.n["data"] += data_len
            self.n["retx"] += data_len if off in self.sent_at else 0
            self.sent_at[off] = now
        else:
            self.eof_due, self.eof_at, self.eof_acked = False, now, False
            self.n["eofs"] += 1

    def result(self, now: float) -> UplinkResult:
        """The outcome so far."""
        n = self.n
        return UplinkResult(self.txn, self.status == "ok", self.status or "stopped", self.size, n["bytes"], n["pdus"],
                            n["data"], n["retx"], n["naks"], n["eofs"], now - self.t0)


class UplinkSender:
    """The ground end of file uplinks (see the module docstring).

    Parameters
    ----------
    endpoint : str
        Link endpoint (``onboard.transfer.open_link``: ``@`` binds), e.g. the emulator's front.
    config : TransferConfig, optional
        ``rate_bps`` paces data (None: as fast as the socket takes it).
    clock : object with ``now()`` and ``factor``, optional
        Default: ``$SATEDGE_SIM_CLOCK`` or wall time.
    windows : list of (start, end), optional
        Uplink contact windows (sim s); nothing is sent outside them. None: always in contact.
    """

    def __init__(self, endpoint: str, config: Optional[TransferConfig] = None, clock: Any = None,
                 windows: Optional[Sequence[Sequence[float]]] = None, ctx: Optional[zmq.Context] = None) -> None:
        self.cfg, self.clock, self.windows = config or TransferConfig(), clock or EnvClock(), windows
        self.sock = open_link(endpoint, ctx)
        self.finished: Dict[str, str] = {}          # txn -> status, to ACK a repeated FINISHED
        self.rejected = 0
        self._free_at = float("-inf")

    def close(self) -> None:
        """Close the socket."""
        self.sock.close(0)

    def send(self, path: str, name: Optional[str] = None, txn: Optional[str] = None,
             timeout_s: Optional[float] = None, stop: Any = None, resume: bool = False) -> UplinkResult:
        """Uplink one file; return when the receiver says FINISHED, ``timeout_s`` sim s pass or ``stop`` is set.

        Parameters
        ----------
        path : str
            The file (for example a bundle tar from ``engines.archive.pack_archive``).
        name : str, optional
            Name on the satellite (default: the file's base name).
        txn : str, optional
            Transaction id (default: the first 16 hex digits of the file's sha256).
        stop : threading.Event, optional
            Give up when set (the result then says ``stopped``).
        resume : bool, optional
            Send metadata and EOF first and only what the receiver's NAK lists (after a ground
            station restart: the satellite keeps what it has). Costs a round trip on a new file.
        """
        if os.path.getsize(path) > self.cfg.max_file_size:
            raise UserError(f"{path} is {os.path.getsize(path)} bytes; max_file_size is {self.cfg.max_file_size} "
                            "(raise it in TransferConfig on both ends)")
        up = _Upload(self.cfg, path, name or os.path.basename(path), txn, self.clock.now(), resume)
        was_up = False
        with open(path, "rb") as fh:
            while up.status is None and not (stop is not None and stop.is_set()):
                now = self.clock.now()
                if timeout_s is not None and now - up.t0 > timeout_s:
                    up.status = "timeout"
                    break
                for h in self._receive():
                    if h["txn"] == up.txn:
                        up.on_pdu(h, now)
                if up.status is not None:
                    self.finished[up.txn] = up.status
                    ack = make_pdu("ack", up.txn, of="finished")
                    if self._try_send(ack):
                        up.n["bytes"] += sum(len(p) for p in ack)
                        up.n["pdus"] += 1
                    break
                win = in_window(self.windows, now)
                idle = 0.1 * self.cfg.ack_timer_s
                if win is not None:
                    up.timers(now, window_opened=not was_up)
                    idle = self._pump(up, fh, win[1], idle)
                was_up = win is not None
                self.sock.poll(max(1, int(1000 * idle / self.clock.factor)) if idle > 0 else 0)
        return up.result(self.clock.now())

    def _pump(self, up: _Upload, fh: Any, window_end: float, idle: float) -> float:
        """Send due PDUs while the paced link is free and the window stays open; sim seconds to wait next."""
        rate = self.cfg.rate_bps
        for _ in range(10000 if rate else 64):
            nxt = up.next_pdu(fh)
            if nxt is None:
                return idle                         # nothing due: wait for the receiver or a timer
            kind, off, data_len, parts = nxt
            n, now = sum(len(p) for p in parts), self.clock.now()
            if rate:
                start = max(self._free_at, now - 4 * self.cfg.chunk_size * 8 / rate)   # small catch-up allowance
                if start + n * 8 / rate > window_end - self.cfg.guard_s:
                    return idle                     # would not be on the air before the window closes
                if start > now:
                    return start - now              # the link is busy until then
            if not self._try_send(parts):
                return idle / 10                    # the socket is full (no connection yet)
            if rate:
                self._free_at = start + n * 8 / rate
            up.sent(kind, off, data_len, n, now)
        return 0.0

    def _receive(self) -> List[Dict[str, Any]]:
        out = []
        while True:
            try:
                parts = self.sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return out
            try:
                h, _ = parse_pdu(parts)
            except WireError:
                self.rejected += 1
                continue
            if h["pdu"] == "finished" and h["txn"] in self.finished:
                self._try_send(make_pdu("ack", h["txn"], of="finished"))
            out.append(h)

    def _try_send(self, parts: List[Any]) -> bool:
        try:
            self.sock.send_multipart(parts, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False
