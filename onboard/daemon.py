"""The onboard daemon: sensor frames in over ZeroMQ, per-stream engine pipelines, durable results out.

Stages, each a thread watched by the health monitor (:mod:`onboard.health`) and owning its sockets
(ZeroMQ sockets are not thread-safe):

* ``ingest`` (:mod:`onboard.ingest`): reads and validates frames, dead-letters bad input, offers
  good frames to the scheduler (priority classes, deadlines, bounded queues, backpressure);
* ``worker`` (:mod:`onboard.worker`): dynamic batches through the stream's stage DAG
  (:mod:`onboard.pipeline`) with the engine variant the power policy chose;
* ``outbox`` (:class:`onboard.worker.OutboxWriter`) and ``downlink`` (:mod:`onboard.downlink`):
  results committed to SQLite, sent in priority order, re-sent until the ground acknowledges them;
* ``governor`` (:mod:`onboard.governor`): telemetry -> power policy -> variant and deferral;
* ``control`` (:mod:`onboard.commands`): authenticated commands and heartbeats, so a shutdown
  never queues behind work.

SIGTERM, SIGINT or ``shutdown`` drains: ingest reads what is already waiting, every accepted frame
is processed, every result committed and sent (with acks: acknowledged, or left in the outbox for
the next start), ``stats.json`` is written, and the process exits 0 (other codes: ``exitcodes``).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Dict, List, Optional

import zmq

from engines.errors import UserError
from onboard import exitcodes
from onboard.commands import CommandHandler, control_stage
from onboard.counters import DaemonCounters
from onboard.deadletter import DeadLetterLog
from onboard.downlink import Downlink
from onboard.engineset import EngineSet
from onboard.governor import Governor
from onboard.health import HealthMonitor, RestartCounter, Stage
from onboard.ingest import Ingest
from onboard.kernels import TileKernels
from onboard.outbox import Outbox
from onboard.pipeline import Pipeline, streams_of
from onboard.scheduler import Scheduler
from onboard.settings import DaemonSettings, stall_timeout
from onboard.uplink import UplinkStage
from onboard.wire import MAX_HEADER_BYTES
from onboard.worker import OutboxWriter, Worker

log = logging.getLogger("satedge.onboard")


class Daemon:
    """One onboard daemon; :meth:`run` blocks until shutdown and returns an exit code."""

    def __init__(self, settings: DaemonSettings):
        self.settings = settings
        self.counters = DaemonCounters()
        self.stop = threading.Event()           # drain requested
        self.finished = threading.Event()       # everything drained and downlinked
        self._started = time.time()
        self.store: Any = None
        self.ctx: Optional[zmq.Context] = None
        self._initial: Dict[str, Any] = {}
        self._ready = self._signalled = False
        self.restarts: Any = None

    # ----------------------------------------------------------------------------- lifecycle
    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT or a shutdown command, drain, and return the exit code."""
        s, h = self.settings, self.settings.health
        os.makedirs(s.workdir, exist_ok=True)
        self.restarts = RestartCounter(os.path.join(s.workdir, "health.json"))
        self.restarts.boot()
        recent = self.restarts.recent(h.restart_window_s)
        if len(recent) >= h.max_daemon_restarts:
            log.critical("%d restarts within %.0f s (limit %d): refusing to start; last: %s. See "
                         "`satedge onboard exit-codes`.", len(recent), h.restart_window_s, h.max_daemon_restarts,
                         recent[-1]["reason"])
            self.restarts.clean_exit()
            return exitcodes.RESTART_LIMIT
        try:
            code = self._serve()
        except Exception:
            log.error("internal error:\n%s", traceback.format_exc())
            code = exitcodes.INTERNAL
        self.restarts.clean_exit()
        return code

    def _setup(self) -> Optional[int]:
        """Engines, pipelines, outbox, policy; an exit code when one of them cannot start."""
        s = self.settings
        self.scheduler = Scheduler(s.scheduler.capacities, s.scheduler.total_capacity or None,
                                   on_shed=lambda item, reason: self.counters.dropped(reason))
        try:
            self.kernels = TileKernels(s.kernels)
        except UserError as exc:
            log.error("%s", exc)
            return exitcodes.CONFIG
        try:
            if s.store_root:
                from onboard.store import EngineStore
                self.store = EngineStore(s.store_root, trusted_keys=s.trusted_keys)
                actions = self.store.recover()
                if any(actions.values()):
                    log.info("engine store recovery: %s", actions)
            self.engines = EngineSet(s, self.store, self.kernels)
            self.pipelines = {name: Pipeline(name, st, self.engines, s.max_batch)
                              for name, st in streams_of(s).items()}
        except UserError as exc:                 # BundleError, SignatureError, StoreError, bad pipeline ...
            log.error("cannot load the engines: %s", exc)
            return exitcodes.BUNDLE
        try:
            self.outbox = Outbox(os.path.join(s.workdir, "outbox.sqlite"))
        except UserError as exc:
            log.error("%s", exc)
            return exitcodes.OUTBOX
        try:
            self.governor = Governor(s, lambda: {"depth": [c["queued"] for c in self.scheduler.stats()["classes"]]})
        except UserError as exc:
            log.error("telemetry: %s", exc)
            return exitcodes.TELEMETRY
        return None

    def _serve(self) -> int:
        s = self.settings
        code = self._setup()
        if code is not None:
            return code
        self.deadletters = DeadLetterLog(os.path.join(s.workdir, "deadletter.sqlite"))
        self.handler = CommandHandler(self)
        self.ctx = zmq.Context()
        try:
            for name in ("sensor", "results", "acks", "heartbeat", "control"):
                if name != "acks" or s.ack_endpoint:
                    self._initial[name] = self._make(name)
        except (zmq.ZMQError, UserError) as exc:
            log.error("cannot bind: %s", exc)
            for sock in self._initial.values():
                sock.close()
            self.ctx.destroy(linger=0)
            return exitcodes.BIND_FAILED
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self._start_stages()
        self._write_ready()
        log.info("serving %s on %s", self.engines.describe(), s.sensor_endpoint)
        return self._supervise()

    def _start_stages(self) -> None:
        s = self.settings
        self.ingest = Ingest(s, self.pipelines, self.scheduler, self.counters, self.deadletters, self.governor)
        self.downlink = Downlink(s, self.outbox, self.counters)
        self.writer = OutboxWriter(self.outbox, self.scheduler, self.counters, s.queue_size, self.downlink)
        self.worker = Worker(s, self.scheduler, self.pipelines, self.engines, self.governor, self.writer, self.ingest)
        self.ingest.work_ready = self.worker.work_ready
        self.monitor = HealthMonitor(s.health.max_stage_restarts)
        self.uplink = UplinkStage(self)
        self.fl = None
        if s.fl.data:
            from onboard.fl.stage import FLStage
            self.fl = FLStage(self)

        def downlink(ctx):
            self.downlink.run(ctx, self.socket("results"), self.socket("acks") if s.ack_endpoint else None)
            self.finished.set()

        def writer(ctx):
            self.writer.run(ctx)
            self.downlink.writer_done.set()

        bodies = [("ingest", lambda ctx: self.ingest.run(ctx, self.socket("sensor")), False, None),
                  ("worker", self.worker.run, True, self.worker.release),
                  ("outbox", writer, True, lambda items, why: self.writer.release(items, "stage_restart")),
                  ("downlink", downlink, False, None),
                  ("governor", self.governor.run, True, None),
                  ("control", control_stage(self), False, None)]
        if s.uplink.endpoint or s.uplink.scrub_interval_s > 0:
            bodies.append(("uplink", self.uplink.run, True, None))
        if self.fl is not None:
            bodies.append(("fl", self.fl.run, True, None))
        for name, body, on_stall, on_abandon in bodies:
            self.monitor.add(Stage(name, body, self.stop, stall_timeout(s.health, name), on_stall, on_abandon))

    def _supervise(self) -> int:
        """Health checks until everything is drained; then close down and pick the exit code."""
        s = self.settings
        deadline = None
        while not self.finished.wait(s.health.check_interval_s):
            if self._signalled:
                self.stop.set()
            problem = self.monitor.check()
            if problem:
                self._escalate(problem)
            if self.stop.is_set():
                deadline = deadline or time.time() + s.drain_timeout_s + s.outbox.drain_ack_s + 5.0
                if time.time() > deadline:
                    break
        log.info("shutdown requested: drained" if self.finished.is_set() else "drain timed out")
        self.finished.set()
        self.monitor.stages["control"].thread.join(2.0)
        self.engines.close()
        self.kernels.close()
        self.governor.close()
        stats = self.status()
        self._write_stats(stats)
        self.deadletters.close()
        self.outbox.close()
        self.ctx.destroy(linger=0)
        if self.downlink.unsent or stats["in_flight"]:
            log.error("drain timed out: %d result(s) unsent (kept in the outbox), %d frame(s) in flight",
                      self.downlink.unsent, stats["in_flight"])
            return exitcodes.DRAIN_TIMEOUT
        log.info("drained: %s", {k: stats[k] for k in ("frames_in", "frames_processed", "frames_dropped",
                                                        "frames_rejected")})
        return exitcodes.OK

    def _on_signal(self, *_: Any) -> None:
        """SIGTERM/SIGINT: only a flag (a handler calling Event.set could deadlock on a second signal)."""
        self._signalled = True

    def _escalate(self, problem: str) -> None:
        """A stage cannot be repaired in place: count it, leave a trace, and exit for the supervisor."""
        log.critical("health: %s; exiting with code %d so that the supervisor restarts the daemon",
                     problem, exitcodes.HEALTH_RESTART)
        self.restarts.record(problem)
        try:
            self._write_stats(self.status())
        finally:
            logging.shutdown()
            os._exit(exitcodes.HEALTH_RESTART)

    # ----------------------------------------------------------------------------- sockets
    def _make(self, name: str):
        """Create and bind one of the daemon's sockets (again after its stage restarted)."""
        s = self.settings
        if name == "control":
            from onboard.control_server import ControlServer
            keyed = bool(s.control_secret_key)
            return ControlServer(None, s.control_endpoint, handler=self.handler,
                                 server_secret_key=s.control_secret_key or None,
                                 authorized_client_keys=s.control_authorized_keys if keyed else (),
                                 state_path=os.path.join(s.workdir, "control_state.json"), insecure=not keyed)
        kind, endpoint, opts = {
            # MAXMSGSIZE bounds each received part at the transport, so a runaway sender cannot make the daemon
            # hold gigabytes: a part over twice max_payload_bytes gets its sender disconnected (not counted;
            # it reconnects); parts up to that size arrive and are refused and counted as E_OVERSIZE.
            "sensor": (zmq.SUB if s.sensor_pattern == "sub" else zmq.PULL, s.sensor_endpoint,
                       {zmq.RCVHWM: 16, zmq.MAXMSGSIZE: 2 * s.max_payload_bytes + MAX_HEADER_BYTES}),
            "results": (zmq.PUSH, s.results_endpoint, {zmq.SNDHWM: 64, zmq.SNDTIMEO: 200}),
            "acks": (zmq.PULL, s.ack_endpoint, {zmq.MAXMSGSIZE: 2 * MAX_HEADER_BYTES}),
            "heartbeat": (zmq.PUB, s.heartbeat_endpoint, {}),
        }[name]
        sock = self.ctx.socket(kind)
        for opt, value in opts.items():
            sock.setsockopt(opt, value)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        for attempt in range(40):                # a socket closed by a dead stage frees its port asynchronously
            try:
                sock.bind(endpoint)
                return sock
            except zmq.ZMQError:
                if not self._ready or attempt == 39:
                    sock.close(linger=0)
                    raise
                time.sleep(0.05)

    def socket(self, name: str):
        """The socket (or control server) ``name`` bound at start-up, or a new one after its stage restarted."""
        return self._initial.pop(name, None) or self._make(name)

    def _write_ready(self) -> None:
        self._ready = True
        with open(os.path.join(self.settings.workdir, "ready"), "w") as fh:
            fh.write(str(os.getpid()))

    def _write_stats(self, stats: Dict[str, Any]) -> None:
        with open(os.path.join(self.settings.workdir, "stats.json"), "w") as fh:
            json.dump(stats, fh, indent=2, default=str)

    # ----------------------------------------------------------------------------- status
    def status(self) -> dict:
        """Counters, queues, outbox, power, health and engines, as sent in status replies and heartbeats."""
        snap = self.counters.snapshot()
        first = next(iter(self.pipelines.values()))
        engine = self.engines.get(first.key(first.order[0]), self.governor.decision.variant).provenance
        h = self.settings.health
        snap.update(queue_depth=self.scheduler.depth(), uptime_s=round(time.time() - self._started, 3),
                    draining=self.stop.is_set() or self.ingest.paused, dead_letters=os.path.join(self.settings.workdir, "deadletter.sqlite"),
                    engine=engine, engines=self.engines.describe(), scheduler=self.scheduler.stats(),
                    outbox=self.downlink.snapshot(), power=self.governor.snapshot(), ingest=self.ingest.snapshot(),
                    worker=self.worker.snapshot(), engine_ops=list(self.handler.jobs), kernels=self.kernels.snapshot(),
                    uplink=self.uplink.snapshot(), fl=None if self.fl is None else self.fl.snapshot(),
                    health={"stages": self.monitor.snapshot(), "events": self.monitor.events[-10:],
                            "restarts_recent": len(self.restarts.recent(h.restart_window_s)),
                            "boots": self.restarts.state["boots"]})
        return snap


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
