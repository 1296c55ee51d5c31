"""File uplink, receiving end: a CFDP-class-2-like acknowledged transfer over the wire protocol.

PDUs are ``transfer`` messages (``docs/protocol.md``, section "transfer"; ``docs/transfer.md``):
``metadata``, ``data`` (one buffer), ``eof``, ``nak``, ``finished`` and ``ack``, each with a CRC-32
over its PDU fields and data, so a flipped bit anywhere is dropped and counted, never believed.
`TransferReceiver` writes data into ``<state_dir>/<txn>.part`` at its offset and keeps the received
byte ranges in ``<txn>.json``; every ``sync_every`` new chunks (and on EOF, inactivity and close)
it fsyncs the partial file *before* writing the ranges, so after a kill -9 the state never claims
bytes that are not on disk and the transfer resumes where it stood. After EOF it NAKs missing
ranges, again whenever the transaction has been quiet for ``nak_timer_s``; when every byte is in
and the sha256 matches it moves the file to ``out_dir``, calls ``on_complete(path)`` and sends
FINISHED until the sender ACKs it. Timers only run inside contact windows (``windows``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import msgpack
import zmq

from onboard import wire
from onboard.settings_check import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, SettingsError, build

PDU_KINDS = ("metadata", "data", "eof", "nak", "finished", "ack")
_REQUIRED = {"metadata": {"name": str, "size": int, "sha256": str, "chunk": int}, "data": {"offset": int},
             "eof": {"size": int, "sha256": str}, "nak": {"ranges": list}, "finished": {"status": str},
             "ack": {"of": str}}
_NOT_COVERED = ("v", "type", "id", "ts", "crc")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_TXN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class PduError(wire.WireError):
    """A transfer PDU that breaks the rules of its kind (missing field, unknown kind, bad txn)."""

    code = "E_PDU"


class CrcError(PduError):
    """A transfer PDU whose CRC-32 does not match its fields and data (bit errors on the link)."""

    code = "E_CRC"


@dataclass
class TransferConfig:
    """Timers (sim seconds), limits and sizes shared by sender and receiver (CFDP-like defaults).

    As a config section (``uplink.transfer`` of the daemon) it is read with :meth:`from_mapping`,
    which checks every key's type and bounds.
    """

    chunk_size: PositiveInt = 4096
    ack_timer_s: PositiveFloat = 3.0
    nak_timer_s: PositiveFloat = 3.0
    inactivity_s: PositiveFloat = 30.0
    ack_limit: NonNegativeInt = 4
    nak_limit: NonNegativeInt = 4
    max_file_size: PositiveInt = 256 << 20
    max_nak_ranges: PositiveInt = 128
    sync_every: PositiveInt = 16
    rate_bps: Optional[PositiveFloat] = None
    guard_s: NonNegativeFloat = 0.5

    @classmethod
    def from_mapping(cls, data: Dict[str, Any], where: str = "transfer") -> "TransferConfig":
        """Build from a config mapping of overrides.

        Parameters
        ----------
        data : mapping
            Some of the fields; the others keep their defaults.
        where : str, optional
            Key path of the mapping in messages (``settings.uplink.transfer``).

        Raises
        ------
        onboard.settings_check.SettingsError
            An unknown key (the known ones are listed) or a bad value, named by its key path.
        """
        return build(cls, data, where)


def pdu_crc(header: Dict[str, Any], data: bytes = b"") -> int:
    """CRC-32 of msgpack([[key, value], ...] sorted by key, envelope keys left out) then ``data``."""
    body = msgpack.packb(sorted([k, v] for k, v in header.items() if k not in _NOT_COVERED), use_bin_type=True)
    return zlib.crc32(data, zlib.crc32(body))


def make_pdu(kind: str, txn: str, data: bytes = b"", **fields: Any) -> List[Any]:
    """Encode one transfer PDU as a multipart message (``data`` only for ``data`` PDUs)."""
    h = {"pdu": kind, "txn": txn, **fields}
    h["crc"] = pdu_crc(h, data)
    return wire.encode("transfer", h, [data] if kind == "data" else [])


def parse_pdu(parts: Sequence[Any]) -> Tuple[Dict[str, Any], bytes]:
    """Decode and check a transfer PDU; returns ``(header, data)`` or raises a `wire.WireError`."""
    msg = wire.decode(parts)
    h = msg.header
    if msg.type != "transfer":
        raise wire.UnknownMessageType(f"expected a transfer message, got {msg.type!r}")
    if len(msg.buffers) > 1:
        raise wire.MalformedMessage(f"a transfer PDU has at most 1 buffer; got {len(msg.buffers)}")
    data = bytes(msg.buffers[0]) if msg.buffers else b""
    try:
        good = isinstance(h.get("crc"), int) and pdu_crc(h, data) == h["crc"]
    except (TypeError, ValueError):     # keys of mixed types after a bit flip
        good = False
    if not good:
        raise CrcError(f"transfer PDU fails its CRC-32 (pdu={h.get('pdu')!r})")
    kind, txn = h.get("pdu"), h.get("txn")
    if kind not in PDU_KINDS or not isinstance(txn, str) or not _TXN.match(txn):
        raise PduError(f"bad transfer PDU kind {kind!r} or txn {txn!r}")
    for key, typ in _REQUIRED[kind].items():
        if not isinstance(h.get(key), typ) or isinstance(h.get(key), bool):
            raise PduError(f"{kind} PDU needs {key!r} of type {typ.__name__}")
    if kind == "data" and not data:
        raise PduError("a data PDU carries at least one byte")
    return h, data


def add_range(ranges: List[List[int]], start: int, end: int) -> bool:
    """Merge ``[start, end)`` into sorted disjoint ``ranges``; True if any byte was new."""
    new = [start, end]
    out, grew = [], True
    for r in ranges:
        if r[1] < new[0] or r[0] > new[1]:
            out.append(r)
        else:
            grew = grew and not (r[0] <= start and end <= r[1])
            new = [min(r[0], new[0]), max(r[1], new[1])]
    out.append(new)
    ranges[:] = sorted(out)
    return grew


def missing(ranges: List[List[int]], size: int) -> List[List[int]]:
    """The gaps of ``ranges`` in ``[0, size)``."""
    gaps, at = [], 0
    for s, e in ranges:
        if s > at:
            gaps.append([at, min(s, size)])
        at = max(at, e)
    return gaps + ([[at, size]] if at < size else [])


class EnvClock:
    """Sim time from ``$SATEDGE_SIM_CLOCK`` (written by ``sim.clock.SimClock``), else wall time."""

    def __init__(self) -> None:
        d = json.loads(os.environ.get("SATEDGE_SIM_CLOCK") or "null") or {}
        self.factor = float(d.get("factor", 1.0))
        self._w0, self._s0 = float(d.get("wall_start", 0.0)), float(d.get("start_s", 0.0))

    def now(self) -> float:
        """Sim seconds since the plan epoch."""
        return self._s0 + (time.time() - self._w0) * self.factor


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_link(endpoint: str, ctx: Optional[zmq.Context] = None) -> zmq.Socket:
    """A DEALER socket on the space link: ``@tcp://...`` binds, anything else connects."""
    s = (ctx or zmq.Context.instance()).socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.bind(endpoint[1:]) if endpoint.startswith("@") else s.connect(endpoint)
    return s


def in_window(windows: Optional[Sequence[Sequence[float]]], t: float) -> Optional[Tuple[float, float]]:
    """The ``(start, end)`` window holding ``t`` (``(-inf, inf)`` when ``windows`` is None), or None."""
    if windows is None:
        return (float("-inf"), float("inf"))
    return next(((a, b) for a, b in windows if a <= t < b), None)


class TransferReceiver:
    """The satellite end of file uplinks (see the module docstring).

    Parameters
    ----------
    endpoint : str
        Link endpoint (`open_link`), e.g. the emulator's back socket.
    state_dir, out_dir : str
        Partial files and state (resumed on start); finished files.
    on_complete : callable, optional
        ``on_complete(path)`` once per finished file (again after a crash before it returned).
    config : TransferConfig, optional
    clock : object with ``now()`` and ``factor``, optional
        Default: ``$SATEDGE_SIM_CLOCK`` or wall time.
    windows : list of (start, end), optional
        Contact windows; timers are frozen outside them. None: always in contact.
    """

    def __init__(self, endpoint: str, state_dir: str, out_dir: str, on_complete: Optional[Callable[[str], Any]] = None,
                 config: Optional[TransferConfig] = None, clock: Any = None, windows: Optional[Sequence] = None,
                 ctx: Optional[zmq.Context] = None) -> None:
        self.cfg, self.clock, self.windows = config or TransferConfig(), clock or EnvClock(), windows
        self.state_dir, self.out_dir, self.on_complete = state_dir, out_dir, on_complete
        os.makedirs(state_dir, exist_ok=True)
        os.makedirs(out_dir, exist_ok=True)
        self.sock = open_link(endpoint, ctx)
        self.stats: Counter = Counter()
        self.txns: Dict[str, Dict[str, Any]] = {}
        self._fds: Dict[str, int] = {}
        self._up = False
        for fn in sorted(os.listdir(state_dir)):
            if fn.endswith(".json"):
                try:
                    with open(os.path.join(state_dir, fn)) as fh:
                        t = json.load(fh)
                    t.update(last_rx=self.clock.now(), last_nak=float("-inf"), retries=0, unsynced=0)
                    self.txns[t["txn"]] = t
                    self.stats["resumed"] += 1
                    if t["status"] == "complete" and not t.get("delivered"):
                        self._deliver(t)
                except (OSError, ValueError, KeyError):
                    self.stats["state_unreadable"] += 1

    # ------------------------------------------------------------------ persistence
    def _path(self, txn: str, ext: str) -> str:
        return os.path.join(self.state_dir, txn + ext)

    def _sync(self, t: Dict[str, Any]) -> None:
        fd = self._fds.get(t["txn"])
        if fd is not None:
            os.fsync(fd)                      # data first, then the ranges that claim it
        keep = ("txn", "name", "size", "sha256", "chunk", "ranges", "eof", "status", "path", "delivered", "fin_acked",
                "error")
        tmp = self._path(t["txn"], ".json.tmp")
        with open(tmp, "w") as fh:
            json.dump({k: t.get(k) for k in keep}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path(t["txn"], ".json"))
        _fsync_dir(self.state_dir)
        t["unsynced"] = 0
        self.stats["syncs"] += 1

    def _close_fd(self, txn: str) -> None:
        fd = self._fds.pop(txn, None)
        if fd is not None:
            os.close(fd)

    def _drop_part(self, txn: str) -> None:
        self._close_fd(txn)
        if os.path.exists(self._path(txn, ".part")):
            os.unlink(self._path(txn, ".part"))

    # ------------------------------------------------------------------ sending
    def _send(self, kind: str, t: Dict[str, Any], **fields: Any) -> None:
        try:
            self.sock.send_multipart(make_pdu(kind, t["txn"], **fields), flags=zmq.NOBLOCK)
            self.stats[f"sent_{kind}"] += 1
        except zmq.Again:
            self.stats["send_blocked"] += 1

    def _nak(self, t: Dict[str, Any], now: float) -> None:
        gaps = missing(t["ranges"], t["size"])[: self.cfg.max_nak_ranges]
        self._send("nak", t, ranges=gaps, meta=t.get("name") is None)
        t["last_nak"] = now

    def _finished(self, t: Dict[str, Any], now: float) -> None:
        self._send("finished", t, status="ok" if t["status"] == "complete" else t["status"], sha256=t["sha256"])
        t["fin_at"], t["fin_tries"] = now, t.get("fin_tries", 0) + 1

    # ------------------------------------------------------------------ receiving
    def poll(self, max_wait_s: float = 1.0) -> int:
        """Handle PDUs arriving within ``max_wait_s`` sim seconds, then run the timers; returns PDUs read."""
        n = 0
        if self.sock.poll(max(0, int(max_wait_s / self.clock.factor * 1000.0 + 0.999))):
            while n < 1000:
                try:
                    parts = self.sock.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                n += 1
                self._handle(parts, self.clock.now())
        self._tick(self.clock.now())
        return n

    def _handle(self, parts: List[bytes], now: float) -> None:
        self.stats["pdus_in"] += 1
        try:
            h, data = parse_pdu(parts)
        except wire.WireError as e:
            self.stats[f"rejected_{e.code}"] += 1
            return
        kind, txn = h["pdu"], h["txn"]
        self.stats[f"rx_{kind}"] += 1
        t = self.txns.get(txn)
        if t is not None and kind == "metadata" and t["status"] not in ("active", "complete"):
            self._drop_part(txn)            # a failed or refused transaction starts over
            t = None
        if t is None:
            if kind not in ("metadata", "data", "eof"):
                self.stats["unknown_txn"] += 1
                return
            t = self.txns[txn] = dict(txn=txn, name=None, size=None, sha256=None, chunk=None, ranges=[], eof=False,
                                      status="active", last_nak=float("-inf"), retries=0, unsynced=0)
        t["last_rx"], t["suspended"] = now, False
        if t["status"] != "active":
            if kind == "ack":
                t["fin_acked"] = True
                self._sync(t)
            elif now - t.get("fin_at", float("-inf")) >= self.cfg.ack_timer_s / 2:
                self._finished(t, now)
            return
        if kind in ("metadata", "eof") and not self._describe(t, h):
            self._drop_part(txn)            # refuse the whole transaction: the sender learns why
            t.update(status="refused", ranges=[])
            self._sync(t)
            return self._finished(t, now)
        if kind == "data":
            if self._data(t, h["offset"], data) and t["eof"] and not missing(t["ranges"], t["size"]):
                self._check(t, now)         # the last missing chunk came in
        elif kind == "eof":
            t["eof"] = True
            self._sync(t)
            self._send("ack", t, of="eof")
        if kind == "metadata" and t["eof"] or kind == "eof":
            self._check(t, now)

    def _describe(self, t: Dict[str, Any], h: Dict[str, Any]) -> bool:
        size, sha = h["size"], h["sha256"]
        name = h.get("name", t["name"])
        changed = t["size"] is not None and (size, sha) != (t["size"], t["sha256"])
        bad = (not 0 <= size <= self.cfg.max_file_size or changed
               or (name is not None and not _NAME.match(name)) or any(e > size for _, e in t["ranges"]))
        if bad:
            self.stats["refused"] += 1
            return False
        t.update(size=size, sha256=sha, name=name, chunk=h.get("chunk", t["chunk"]))
        return True

    def _data(self, t: Dict[str, Any], offset: int, data: bytes) -> bool:
        end = offset + len(data)
        if offset < 0 or end > (t["size"] if t["size"] is not None else self.cfg.max_file_size):
            self.stats["rejected_E_PDU"] += 1
            return False
        if not add_range(t["ranges"], offset, end):
            self.stats["duplicate_data"] += 1
            return False
        fd = self._fds.get(t["txn"])
        if fd is None:
            fd = self._fds[t["txn"]] = os.open(self._path(t["txn"], ".part"), os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(fd, data, offset)
        self.stats["data_bytes"] += len(data)
        t["retries"], t["unsynced"] = 0, t["unsynced"] + 1
        if t["unsynced"] >= self.cfg.sync_every:
            self._sync(t)
        return True

    def _check(self, t: Dict[str, Any], now: float) -> None:
        if t["size"] is None or missing(t["ranges"], t["size"]) or t["name"] is None:
            return self._nak(t, now)
        self._sync(t)
        self._close_fd(t["txn"])
        part, dest = self._path(t["txn"], ".part"), os.path.join(self.out_dir, t["name"])
        if not os.path.exists(part) and not (t["size"] and os.path.exists(dest)):
            open(part, "wb").close()        # an empty file (or a lost one: the checksum fails)
        src = part if os.path.exists(part) else dest      # dest: killed between the rename and the state write
        if src == part:
            os.truncate(part, t["size"])
        digest = hashlib.sha256()
        with open(src, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != t["sha256"]:
            self._drop_part(t["txn"])
            t.update(status="checksum_failure", ranges=[])
            self.stats["failed"] += 1
        else:
            if src == part:
                try:
                    os.replace(part, dest)
                except OSError:             # another file system: copy, then drop the partial file
                    shutil.copyfile(part, dest + ".tmp")
                    os.replace(dest + ".tmp", dest)
                    os.unlink(part)
                _fsync_dir(self.out_dir)
            t.update(status="complete", path=dest)
            self.stats["completed"] += 1
        self._sync(t)
        if t["status"] == "complete":
            self._deliver(t)
        self._finished(t, now)

    def _deliver(self, t: Dict[str, Any]) -> None:
        try:
            if self.on_complete is not None:
                self.on_complete(t["path"])
        except Exception as e:              # the hook's failure is its own (e.g. a bundle the store refuses)
            self.stats["on_complete_errors"] += 1
            t["error"] = f"{type(e).__name__}: {e}"
        t["delivered"] = True
        self._sync(t)

    def _tick(self, now: float) -> None:
        up = in_window(self.windows, now) is not None
        went_down, self._up = self._up and not up, up
        for t in self.txns.values():
            if not up:                      # timers are frozen between contact windows
                t["last_rx"] = max(t.get("last_rx", now), now)
                if went_down and t["status"] == "active" and t["unsynced"]:
                    self._sync(t)           # persist at the end of every pass
                continue
            quiet = now - max(t["last_rx"], t["last_nak"])
            if t["status"] != "active":
                if not t.get("fin_acked") and now - t.get("fin_at", now) >= self.cfg.ack_timer_s \
                        and t.get("fin_tries", 0) <= self.cfg.ack_limit:
                    self._finished(t, now)
            elif t["eof"] and not t.get("suspended") and quiet >= self.cfg.nak_timer_s:
                if t["retries"] < self.cfg.nak_limit:
                    t["retries"] += 1
                    self._check(t, now)     # NAKs what is missing (or finishes)
                else:
                    t["suspended"] = True
                    self.stats["nak_limit"] += 1
            if t["status"] == "active" and now - t["last_rx"] >= self.cfg.inactivity_s and t["txn"] in self._fds:
                self._sync(t)
                self._close_fd(t["txn"])
                self.stats["inactivity"] += 1

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set."""
        while not stop.is_set():
            self.poll(self.cfg.nak_timer_s / 10)

    def close(self) -> None:
        """Persist every active transaction and close the socket."""
        for t in self.txns.values():
            if t["status"] == "active":
                self._sync(t)
        for txn in list(self._fds):
            self._close_fd(txn)
        self.sock.close(0)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m onboard.transfer``: receive uplinked files until SIGTERM; print ``complete PATH`` lines."""
    ap = argparse.ArgumentParser(prog="python -m onboard.transfer", description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True, help="link endpoint (@ prefix binds)")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--windows", help="JSON list of [start, end] sim seconds (timers run only inside)")
    ap.add_argument("--config", default="{}", help="JSON of TransferConfig fields")
    ap.add_argument("--stats", help="write counters here (JSON) on exit")
    a = ap.parse_args(argv)
    try:
        cfg = TransferConfig.from_mapping(json.loads(a.config), "--config")
    except (ValueError, SettingsError) as exc:          # bad JSON, unknown key or bad value: exit 2
        ap.error(str(exc) if isinstance(exc, SettingsError) else f"--config is not JSON: {exc}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    rx = TransferReceiver(a.endpoint, a.state_dir, a.out_dir, lambda p: print("complete", p, flush=True),
                          cfg, windows=json.loads(a.windows) if a.windows else None)
    print(json.dumps({"ready": True, "config": asdict(rx.cfg), "resumed": rx.stats["resumed"]}), flush=True)
    rx.run(stop)
    rx.close()
    if a.stats:
        with open(a.stats, "w") as fh:
            json.dump(dict(rx.stats), fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
