"""The ground station of a constellation run: engine rollout by uplink, results by downlink, monitoring.

One process (``python -m sim.ground_station --config gs.json``) serves every satellite of the run
through that satellite's link emulator (``sim.link``): it uplinks the rollout bundle archive with
:class:`ground.uplink.UplinkSender` (resumable, inside the uplink windows), receives and
acknowledges results with :class:`ground.receiver.GroundReceiver` (duplicates dropped by result
id), and listens to each daemon's heartbeats directly (simulator-side monitoring, not over the
emulated link) to know the active engine version, the outbox depth, power and temperature.

Rollout: while a satellite's heartbeat reports an engine version below the target, the bundle is
sent (again, under a new transaction id, when an earlier copy was delivered but the version is
still low, e.g. after a bit flip made the satellite fall back to its older slot). Every event goes
to ``events`` (JSON lines, ``t`` in sim seconds; the format is in ``sim/report.py``), and
``ground.json`` gets the per-satellite result ids at SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import zmq

from ground.receiver import GroundReceiver
from ground.uplink import UplinkSender, file_sha256
from onboard.transfer import TransferConfig
from onboard.wire import WireError, decode
from sim.clock import SimClock


class EventLog:
    """Thread-safe JSON-lines event writer stamped with sim time."""

    def __init__(self, path: str, clock: SimClock):
        self.clock = clock
        self._fh = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def emit(self, kind: str, sat: Optional[str] = None, t: Optional[float] = None, **fields: Any) -> None:
        """Write one event (``t`` defaults to the sim clock's now)."""
        row = {"t": round(self.clock.now() if t is None else t, 3), "kind": kind, "sat": sat, **fields}
        with self._lock:
            self._fh.write(json.dumps(row, default=str) + "\n")

    def close(self) -> None:
        """Flush and close the file."""
        with self._lock:
            self._fh.close()


class SatelliteLink:
    """The ground's view of one satellite: rollout state, receiver, last heartbeat."""

    def __init__(self, cfg: Dict[str, Any], ctx: zmq.Context, events: EventLog, clock: SimClock):
        self.name, self.cfg, self.events, self.clock = cfg["name"], cfg, events, clock
        self.received: Dict[str, int] = {}             # result id -> copies received
        self.rx = GroundReceiver(cfg["results"], ctx=ctx, ack_endpoint=cfg["acks"], on_result=self._on_result)
        self.hb = ctx.socket(zmq.SUB)
        self.hb.setsockopt(zmq.SUBSCRIBE, b"")
        self.hb.setsockopt(zmq.RCVHWM, 100)
        self.hb.connect(cfg["heartbeat"])
        self.version: Optional[int] = None
        self.uplink_received: Dict[str, Any] = {}
        self.installs_seen = 0

    def _on_result(self, header: Dict[str, Any], duplicate: bool, size: int) -> None:
        rid = str(header.get("result_id"))
        self.received[rid] = self.received.get(rid, 0) + 1
        self.events.emit("result", self.name, result_id=rid, duplicate=duplicate, priority=header.get("priority"),
                         bytes=size)

    def on_heartbeat(self, status: Dict[str, Any]) -> None:
        """Turn one heartbeat into events (heartbeat, uplink progress, install outcomes)."""
        eng = status.get("engine") or {}
        tel = (status.get("power") or {}).get("telemetry") or {}
        ob = status.get("outbox") or {}
        self.version = eng.get("version")
        self.events.emit("heartbeat", self.name, outbox_depth=ob.get("depth"), outbox_bytes=ob.get("bytes_queued"),
                         power_w=tel.get("power_w"), temperature_c=tel.get("temp_c"),
                         eclipse=None if "sunlit" not in tel else not tel["sunlit"],
                         variant=(status.get("power") or {}).get("variant"), engine_version=self.version,
                         frames_in=status.get("frames_in"), frames_processed=status.get("frames_processed"))
        for txn, tr in ((status.get("uplink") or {}).get("transfers") or {}).items():
            last = self.uplink_received.get(txn)
            now = (tr.get("received"), tr.get("status"))
            if last != now:
                self.uplink_received[txn] = now
                self.events.emit("uplink", self.name, txn=txn, bytes_done=tr.get("received"), size=tr.get("size"),
                                 status="complete" if tr.get("status") == "complete" else "sending",
                                 attempt=int(txn.rsplit("-", 1)[-1]) if "-" in txn else 1,
                                 version=self.cfg["version"], error=tr.get("error"))
        ops = status.get("engine_ops") or []
        for op in ops[self.installs_seen:] if len(ops) >= self.installs_seen else ops:
            self.events.emit("install", self.name, version=op.get("version") or op.get("active_version"),
                             ok=bool(op.get("ok")), outcome=op.get("outcome") or op.get("what"),
                             active_version=op.get("active_version"), reason=op.get("reason"))
        self.installs_seen = len(ops)

    def rollout(self, stop: threading.Event) -> None:
        """Send the bundle until the satellite reports the target version (thread body)."""
        target, path = self.cfg["version"], self.cfg["bundle_tar"]
        base = file_sha256(path)[:16]
        cfg = TransferConfig(**self.cfg.get("transfer", {}))
        sender = UplinkSender(self.cfg["uplink"], cfg, self.clock, self.cfg["windows_up"])
        attempt = 0
        try:
            while not stop.is_set():
                if self.version is None or self.version >= target:
                    stop.wait(0.2)
                    continue
                attempt += 1
                name = f"{self.cfg['engine']}-v{target}-{attempt}.tar"
                res = sender.send(path, name=name, txn=f"{base}-{attempt}", stop=stop)
                self.events.emit("uplink", self.name, txn=res.txn, bytes_done=res.size if res.ok else 0, size=res.size,
                                 status="complete" if res.ok else "failed", attempt=attempt, version=target,
                                 bytes_sent=res.bytes_sent, efficiency=round(res.efficiency, 4), sender_status=res.status)
                t_end = self.clock.now() + self.cfg.get("confirm_s", 3600.0)
                while not stop.is_set() and (self.version or 0) < target and self.clock.now() < t_end:
                    stop.wait(0.2)                       # the install (and its report) takes a while
        finally:
            sender.close()

    def close(self) -> None:
        """Close the sockets."""
        self.rx.close()
        self.hb.close(0)


STOP_DRAIN_S = 3.0        # wall seconds the station keeps receiving after SIGTERM before it writes --out


def serve(cfg: Dict[str, Any], stop: threading.Event) -> Dict[str, Any]:
    """Run the ground station until ``stop``; return what it received per satellite."""
    clock = SimClock.from_env(default=SimClock.wall())
    events = EventLog(cfg["events"], clock)
    ctx = zmq.Context()
    sats = [SatelliteLink(s, ctx, events, clock) for s in cfg["satellites"]]
    threads = [threading.Thread(target=s.rollout, args=(stop,), name=f"rollout-{s.name}", daemon=True) for s in sats]
    for t in threads:
        t.start()
    poller = zmq.Poller()
    for s in sats:
        poller.register(s.rx.sock, zmq.POLLIN)
        poller.register(s.hb, zmq.POLLIN)
    by_sock = {**{s.rx.sock: s for s in sats}, **{s.hb: s for s in sats}}
    stop_by = None
    try:
        while True:
            ready = dict(poller.poll(100))
            for sock in ready:
                s = by_sock[sock]
                if sock is s.hb:
                    _drain_heartbeats(s)
                else:
                    s.rx.poll(0)
            if stop.is_set():
                # drain what is queued, but for at most STOP_DRAIN_S: heartbeats of daemons still running
                # would otherwise keep the loop busy for ever and the station would ignore SIGTERM
                stop_by = stop_by or time.monotonic() + STOP_DRAIN_S
                if not ready or time.monotonic() > stop_by:
                    break
    finally:
        join_by = time.monotonic() + 5.0          # rollout threads see ``stop``; 5 s for all of them, not each
        for t in threads:
            t.join(max(0.0, join_by - time.monotonic()))
        out = {s.name: {"received": s.received, "duplicates": s.rx.duplicates, "malformed": s.rx.malformed,
                        "version": s.version} for s in sats}
        for s in sats:
            s.close()
        ctx.destroy(linger=0)
        events.close()
    return out


def _drain_heartbeats(s: SatelliteLink) -> None:
    latest = None
    while True:
        try:
            parts = s.hb.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            break
        try:
            latest = decode(parts).header.get("status")
        except WireError:
            continue
    if isinstance(latest, dict):
        s.on_heartbeat(latest)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m sim.ground_station --config gs.json``: serve until SIGTERM, then write ``--out``."""
    ap = argparse.ArgumentParser(prog="python -m sim.ground_station", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="JSON written by sim.runner")
    ap.add_argument("--out", required=True, help="where to write what was received (JSON)")
    a = ap.parse_args(argv)
    with open(a.config) as fh:
        cfg = json.load(fh)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(json.dumps({"ready": True}), flush=True)
    out = serve(cfg, stop)
    with open(a.out, "w") as fh:
        json.dump(out, fh)
    time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
