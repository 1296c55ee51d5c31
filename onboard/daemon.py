"""The onboard daemon: sensor frames in over ZeroMQ, cloud screening, results out.

Threads, each owning its own sockets (ZeroMQ sockets are not thread-safe):

* ingest: receives on the sensor socket, validates (:mod:`onboard.wire`), rejects bad input
  into the dead-letter log with its reason, and queues good frames (a bounded queue: when it
  is full, ingest stops reading and ZeroMQ's high-water mark pushes back on the sensor);
* worker: screens queued frames with the engine and sends results;
* control: answers ``status``/``ping``/``shutdown`` on a ROUTER socket and publishes heartbeats,
  so a shutdown never queues behind work.

SIGTERM or a ``shutdown`` command drains: ingest reads what is already waiting on the socket,
the worker finishes every queued frame, results are flushed, and the process exits 0.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
from typing import Any, List, Optional

import zmq

from engines.bundle import Bundle
from engines.errors import UserError
from engines.runners import runner_for
from onboard import exitcodes
from onboard.counters import DaemonCounters
from onboard.deadletter import DeadLetterLog
from onboard.screening import CloudScreen
from onboard.settings import DaemonSettings
from onboard.wire import (Frame, ShapeMismatch, WireError, decode, encode, make_reply, parse_frame)

log = logging.getLogger("satedge.onboard")
_SENTINEL = object()
POLL_MS = 100


class Daemon:
    """One onboard daemon; :meth:`run` blocks until shutdown and returns an exit code."""

    def __init__(self, settings: DaemonSettings):
        self.settings = settings
        self.counters = DaemonCounters()
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=settings.queue_size)
        self._stop = threading.Event()          # shutdown requested
        self._ingest_done = threading.Event()
        self._worker_done = threading.Event()
        self._started = time.time()
        self._unsent = 0
        self.ctx: Optional[zmq.Context] = None

    # ----------------------------------------------------------------------------- lifecycle
    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT or a shutdown command, drain, and return the exit code."""
        s = self.settings
        os.makedirs(s.workdir, exist_ok=True)
        try:
            self.bundle = self._open_engine()
            kw = {"intra_op_threads": s.intra_op_threads} if s.backend == "onnxrt" else {}
            self.runner = runner_for(self.bundle, s.backend, **kw)
            self.runner.activate()
            self.screen = CloudScreen(self.runner, self.bundle.manifest, s.cloud_threshold, s.max_batch)
        except UserError as exc:                 # BundleError, SignatureError, StoreError, ...
            log.error("cannot load the engine: %s", exc)
            return exitcodes.BUNDLE
        self.deadletters = DeadLetterLog(os.path.join(s.workdir, "deadletter.sqlite"))
        self.ctx = zmq.Context()
        try:
            sensor, results, control, heartbeat = self._bind_sockets()
        except zmq.ZMQError as exc:
            log.error("cannot bind: %s", exc)
            self.ctx.destroy(linger=0)
            return exitcodes.BIND_FAILED
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        threads = [threading.Thread(target=self._guard, args=(fn, sock), name=fn.__name__, daemon=True)
                   for fn, sock in ((self._ingest, sensor), (self._work, results), (self._control, (control, heartbeat)))]
        for t in threads:
            t.start()
        log.info("serving %s v%s (%s) on %s", self.bundle.manifest.name, self.bundle.manifest.version,
                 self.bundle.manifest.precision, s.sensor_endpoint)
        self._write_ready()
        while not self._stop.wait(0.2):
            pass
        log.info("shutdown requested: draining")
        deadline = time.time() + s.drain_timeout_s
        for t in threads:
            t.join(max(0.1, deadline - time.time()))
        self.runner.deactivate()
        stats = self.status()
        with open(os.path.join(s.workdir, "stats.json"), "w") as fh:
            json.dump(stats, fh, indent=2)
        self.deadletters.close()
        self.ctx.destroy(linger=0)
        if any(t.is_alive() for t in threads) or self._unsent:
            log.error("drain timed out: %d result(s) unsent, %d frame(s) in flight", self._unsent, stats["in_flight"])
            return exitcodes.DRAIN_TIMEOUT
        log.info("drained: %s", {k: stats[k] for k in ("frames_in", "frames_processed", "frames_dropped", "frames_rejected")})
        return exitcodes.OK

    def _open_engine(self) -> Bundle:
        """The bundle to serve: the store's active engine (after recovery), or a bundle directory."""
        s = self.settings
        if s.store_root:
            from onboard.store import EngineStore
            store = EngineStore(s.store_root, trusted_keys=s.trusted_keys)
            actions = store.recover()
            if actions:
                log.info("engine store recovery: %s", actions)
            return store.active(s.engine)
        return Bundle.open(s.bundle, trusted_keys=s.trusted_keys or None)

    def status(self) -> dict:
        """Counters, queue depth, engine and uptime, as sent in status replies and heartbeats."""
        snap = self.counters.snapshot()
        snap.update(queue_depth=self._queue.qsize(), uptime_s=round(time.time() - self._started, 3),
                    draining=self._stop.is_set(), dead_letters=self.settings.workdir + "/deadletter.sqlite",
                    engine={"name": self.bundle.manifest.name, "version": self.bundle.manifest.version,
                            "precision": self.bundle.manifest.precision})
        return snap

    def _bind_sockets(self):
        s = self.settings
        if s.sensor_pattern == "sub":
            sensor = self.ctx.socket(zmq.SUB)
            sensor.setsockopt(zmq.SUBSCRIBE, b"")
        else:
            sensor = self.ctx.socket(zmq.PULL)
        sensor.setsockopt(zmq.RCVHWM, 16)
        sensor.bind(s.sensor_endpoint)
        results = self.ctx.socket(zmq.PUSH)
        results.setsockopt(zmq.SNDHWM, 10000)
        results.setsockopt(zmq.SNDTIMEO, 200)
        results.bind(s.results_endpoint)
        control = self.ctx.socket(zmq.ROUTER)
        control.bind(s.control_endpoint)
        heartbeat = self.ctx.socket(zmq.PUB)
        heartbeat.bind(s.heartbeat_endpoint)
        return sensor, results, control, heartbeat

    def _write_ready(self) -> None:
        with open(os.path.join(self.settings.workdir, "ready"), "w") as fh:
            fh.write(str(os.getpid()))

    def _guard(self, fn, sockets) -> None:
        """Run a thread body; an internal bug stops the daemon cleanly instead of hanging it."""
        try:
            fn(sockets)
        except Exception:
            log.error("internal error in %s:\n%s", fn.__name__, traceback.format_exc())
            self._stop.set()

    # ----------------------------------------------------------------------------- threads
    def _ingest(self, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while True:
            if not poller.poll(POLL_MS):
                if self._stop.is_set():
                    break                       # nothing more waiting: drained
                continue
            parts = sock.recv_multipart(copy=False)
            self.counters.received()
            try:
                frame = self._accept(parts)
            except WireError as exc:
                self.counters.rejected(exc.code)
                self.deadletters.add(exc.code, str(exc), parts)
                log.warning("rejected message (%s): %s", exc.code, exc)
                continue
            while True:
                try:
                    self._queue.put((frame, time.time()), timeout=0.1)
                    break
                except queue.Full:
                    continue                    # backpressure: stop reading until the worker catches up
        self._queue.put(_SENTINEL)
        sock.close(linger=0)

    def _accept(self, parts: List[Any]) -> Frame:
        frame = parse_frame(decode(parts), self.settings.max_payload_bytes)
        if frame.data.shape[0] != self.screen.bands:
            raise ShapeMismatch(f"frame has {frame.data.shape[0]} bands; the engine "
                                f"{self.bundle.manifest.name!r} expects {self.screen.bands}")
        return frame

    def _work(self, sock: zmq.Socket) -> None:
        manifest = self.bundle.manifest
        while True:
            item = self._queue.get()
            if item is _SENTINEL:
                break
            frame, t_recv = item
            deadline = frame.header.get("deadline")
            if isinstance(deadline, (int, float)) and time.time() > deadline:
                self.counters.dropped("deadline")
                continue
            try:
                res = self.screen.process(frame)
            except Exception:
                log.error("frame %s failed in the engine:\n%s", frame.frame_id, traceback.format_exc())
                self.counters.dropped("engine_error")
                continue
            bufs = res.buffers()
            parts = encode("result", {
                "stream": frame.stream, "frame_id": frame.frame_id, "sensor_ts": frame.header.get("ts"),
                "engine": {"name": manifest.name, "version": manifest.version, "precision": manifest.precision},
                "shape": list(frame.data.shape), "dtype": str(frame.data.dtype), "tile": res.grid.tile,
                "tiles": res.tiles_header(), "cloud_fraction": round(res.frame_cloud_fraction, 4),
                "threshold": self.screen.threshold, "buffers": ["mask_packbits", "kept_tiles_dn"],
            }, bufs)
            if not self._send(sock, parts):
                self._unsent += 1
                continue
            latency_ms = (time.time() - t_recv) * 1000.0
            self.counters.processed(tiles=len(res.keep), discarded=int((~res.keep).sum()), bytes_raw=frame.nbytes,
                                    bytes_downlink=sum(len(memoryview(b).cast("B")) for b in bufs) + len(parts[1]),
                                    latency_ms=latency_ms)
        self._worker_done.set()
        sock.close(linger=int(self.settings.drain_timeout_s * 1000))

    def _send(self, sock: zmq.Socket, parts: List[Any]) -> bool:
        """Send a result, retrying while no receiver is connected, until the drain deadline."""
        give_up = None
        while True:
            try:
                sock.send_multipart(parts, copy=False)
                return True
            except zmq.Again:
                if self._stop.is_set():
                    give_up = give_up or time.time() + self.settings.drain_timeout_s
                    if time.time() > give_up:
                        return False

    def _control(self, socks) -> None:
        control, heartbeat = socks
        poller = zmq.Poller()
        poller.register(control, zmq.POLLIN)
        next_beat = 0.0
        while not (self._worker_done.is_set()):
            if time.time() >= next_beat:
                heartbeat.send_multipart(encode("heartbeat", {"status": self.status()}))
                next_beat = time.time() + self.settings.heartbeat_interval_s
            if not poller.poll(POLL_MS):
                continue
            ident, *parts = control.recv_multipart()
            control.send_multipart([ident] + self._handle_command(parts))
        heartbeat.send_multipart(encode("heartbeat", {"status": self.status(), "final": True}))
        control.close(linger=0)
        heartbeat.close(linger=500)

    def _handle_command(self, parts: List[bytes]) -> List[Any]:
        try:
            msg = decode(parts)
        except WireError as exc:
            return make_reply(None, False, exc.code, str(exc))
        if msg.type != "command":
            return make_reply(msg.header, False, "E_TYPE", f"control socket takes commands, not {msg.type!r}")
        cmd = msg.header.get("cmd")
        if cmd == "ping":
            return make_reply(msg.header, True, message="pong")
        if cmd == "status":
            return make_reply(msg.header, True, status=self.status())
        if cmd == "shutdown":
            self._stop.set()
            return make_reply(msg.header, True, message="draining and shutting down")
        return make_reply(msg.header, False, "E_COMMAND", f"unknown command {cmd!r}; known: ping, status, shutdown")


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m onboard.daemon --config FILE``: run a daemon in this process."""
    import argparse

    from onboard.settings import load_settings
    parser = argparse.ArgumentParser(prog="satedge onboard run", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="daemon config file (.yaml or .toml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = load_settings(args.config)
    except UserError as exc:
        log.error("%s", exc)
        return exitcodes.CONFIG
    return Daemon(settings).run()


if __name__ == "__main__":
    sys.exit(main())
