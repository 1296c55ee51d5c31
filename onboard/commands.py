"""The daemon's control commands (``docs/protocol.md``, Control channel) and its control stage.

:class:`CommandHandler` is the ``handler(cmd, args, header)`` of
:class:`onboard.control_server.ControlServer` (CurveZMQ, replay protection). Besides the commands
of the protocol (``ping``, ``status``, ``shutdown``, ``drain``, ``install``, ``activate``,
``rollback``, ``set_policy``) it answers ``resume`` (undo ``drain``), ``health_reset`` (forget
the persistent restart counter) and, only with ``health.allow_fault_injection`` (tests, HIL),
``inject_fault {stage, kind: crash|stall}``. Engine operations run the store's own phases
(verify, stage, canary, activate, health) while the control stage keeps beating; the stages
that serve the engine switch to it between batches.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict

from engines.errors import UserError
from onboard.control_server import CommandError, UnknownCommand
from onboard.health import FAULT_KINDS
from onboard.wire import encode

log = logging.getLogger("satedge.onboard")
KNOWN = ("activate", "drain", "health_reset", "inject_fault", "install", "ping", "resume", "rollback", "set_policy",
         "shutdown", "status")
SCHEDULER_LIVE = ("max_batch_frames", "max_wait_s", "admission", "block_timeout_s")   # set_policy may change these


class CommandHandler:
    """Runs control commands against a :class:`onboard.daemon.Daemon` (see module doc)."""

    def __init__(self, daemon):
        self.d = daemon
        self.jobs: list = []                       # recent engine operations, for status
        self._busy = threading.Lock()

    def __call__(self, cmd: str, args: Dict[str, Any], header: Dict[str, Any]) -> Dict[str, Any]:
        fn = getattr(self, "_cmd_" + cmd, None) if cmd in KNOWN else None
        if fn is None:
            raise UnknownCommand(cmd, KNOWN)
        log.info("control: %s %s from %s", cmd, sorted(args), header.get("client_key"))
        return fn(args)

    def _cmd_ping(self, args):
        return {"message": "pong"}

    def _cmd_status(self, args):
        return {"status": self.d.status()}

    def _cmd_shutdown(self, args):
        self.d.stop.set()
        return {"message": "draining and shutting down"}

    def _cmd_drain(self, args):
        self.d.ingest.paused = True
        return {"message": "sensor input stopped; accepted frames finish and results go down ('resume' to restart)",
                "queue_depth": self.d.scheduler.depth()}

    def _cmd_resume(self, args):
        self.d.ingest.paused = False
        return {"message": "sensor input resumed"}

    def _cmd_set_policy(self, args):
        sched = {k: v for k, v in args.items() if k in SCHEDULER_LIVE}
        power = {k: v for k, v in args.items() if k not in SCHEDULER_LIVE}
        if sched:
            from onboard.settings import SchedulerSettings, _build
            merged = _build(SchedulerSettings, {**vars(self.d.settings.scheduler), **sched}, "set_policy")
            if merged.admission not in ("block", "reject") or merged.max_batch_frames < 1:
                raise CommandError(f"set_policy: bad scheduler values {sched}")
        if power:
            self.d.governor.set_policy(power)        # validates; raises UserError naming the bad key
        if sched:
            self.d.settings.scheduler = merged
        policy = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.d.governor.power_settings).items()}
        policy.update({k: getattr(self.d.settings.scheduler, k) for k in SCHEDULER_LIVE})
        return {"message": f"policy updated: {sorted(args)}", "policy": policy}

    def _cmd_health_reset(self, args):
        return {"message": f"forgot {self.d.restarts.clear()} restart(s)"}

    def _cmd_inject_fault(self, args):
        if not self.d.settings.health.allow_fault_injection:
            raise CommandError("fault injection is off; set health.allow_fault_injection in the config (tests and "
                               "hardware-in-the-loop only)")
        stage, kind = args.get("stage"), args.get("kind")
        st = self.d.monitor.stages.get(stage)
        if st is None or kind not in FAULT_KINDS:
            raise CommandError(f"inject_fault needs stage in {sorted(self.d.monitor.stages)} and kind in "
                               f"{FAULT_KINDS}; got {stage!r}, {kind!r}")
        st.ctx.fault = kind
        return {"message": f"{kind} injected into {stage}"}

    # ------------------------------------------------------------------ engine store
    def _store(self):
        if self.d.store is None:
            raise CommandError("this daemon serves bundle folders, not an engine store; set 'store_root' in its "
                               "config to install, activate or roll back engines")
        return self.d.store

    def _engine_op(self, what: str, fn: Callable[[], Any]) -> Dict[str, Any]:
        """Run a store operation in a helper thread while the control stage keeps beating; reply with its report."""
        if not self._busy.acquire(blocking=False):
            raise CommandError("another engine operation is running; retry when it has finished")
        box: Dict[str, Any] = {}

        def run() -> None:
            try:
                box["report"] = fn()
            except Exception as exc:                 # a refused bundle or command is an error reply
                box["error"] = exc

        try:
            helper = threading.Thread(target=run, name="engine-op", daemon=True)
            helper.start()
            control = self.d.monitor.stages.get("control")
            while helper.is_alive():
                helper.join(0.1)
                if control is not None and control.ctx is not None:
                    control.ctx.beat()
        finally:
            self._busy.release()
        if "error" in box:
            exc = box["error"]
            self._record(what, False, {"reason": f"{type(exc).__name__}: {exc}"})
            if isinstance(exc, UserError):
                raise CommandError(f"{what} refused: {exc}") from None
            raise exc
        rep = box["report"]
        reloaded = self.d.engines.reload(rep.engine) if rep.ok else []
        fields = {k: getattr(rep, k) for k in ("engine", "version", "outcome", "slot", "active_version", "reason",
                                              "failed_phase")}
        self._record(what, rep.ok, dict(fields, stages_reloaded=reloaded))
        return dict(fields, ok=rep.ok, code="OK" if rep.ok else "E_COMMAND", stages_reloaded=reloaded,
                    message=f"{what}: {rep.outcome}" + ("" if rep.ok else f" ({rep.reason})"))

    def _record(self, what: str, ok: bool, fields: Dict[str, Any]) -> None:
        self.jobs = (self.jobs + [dict(fields, what=what, ok=ok, t=time.time())])[-20:]
        log.info("engine operation %s: ok=%s %s", what, ok, fields.get("reason"))

    def _cmd_install(self, args):
        bundle = args.get("bundle")
        if not isinstance(bundle, str) or not bundle:
            raise CommandError("install needs 'bundle': the path of a signed bundle folder on board")
        return self.install_bundle(bundle)

    def install_bundle(self, bundle: str) -> Dict[str, Any]:
        """Install a bundle folder on board into the store (the ``install`` command; also the uplink's)."""
        store = self._store()
        return self._engine_op(f"install {bundle}", lambda: store.install(bundle))

    def scrub_engine(self, name: str):
        """Re-hash engine ``name``; on a slot switch reload its stages. None when another operation runs."""
        store = self._store()
        if not self._busy.acquire(blocking=False):
            return None
        try:
            rep = store.scrub(name)
        finally:
            self._busy.release()
        if rep.switched_to:
            reloaded = self.d.engines.reload(name)
            self._record(f"scrub {name}", False, {"engine": name, "slot": rep.switched_to,
                                                  "active_version": store.versions(name)["active"],
                                                  "reason": "; ".join(e["detail"] for e in rep.events),
                                                  "stages_reloaded": reloaded})
        return rep

    def _cmd_rollback(self, args):
        from onboard.store import RollbackCommand
        engine, text = args.get("engine"), args.get("command")
        if not isinstance(engine, str) or not isinstance(text, str):
            raise CommandError("rollback needs 'engine' (name) and 'command' (a signed RollbackCommand as JSON)")
        store = self._store()
        command = RollbackCommand.from_json(text)
        return self._engine_op(f"rollback {engine} to v{command.version}", lambda: store.rollback(engine, command))

    def _cmd_activate(self, args):
        if "command" in args:                        # going back on a signed order: same as rollback
            return self._cmd_rollback(args)
        engine, store = args.get("engine"), self._store()
        if not isinstance(engine, str):
            raise CommandError("activate needs 'engine' and 'slot' (A or B) or 'version'")
        v = store.versions(engine)
        want = args.get("slot") or next((s for s, i in v["slots"].items() if i["version"] == args.get("version")), None)
        if want is None or want not in v["slots"]:
            raise CommandError(f"engine {engine!r} has no slot {args.get('slot')!r} / version {args.get('version')!r}; "
                               f"slots: {v['slots']}")
        if want != v["active_slot"]:
            raise CommandError(f"engine {engine!r}: slot {want} (v{v['slots'][want]['version']}) is not above the "
                               f"highest version ever activated (v{v['highest_activated']}); rollback protection "
                               "needs a signed order: send 'rollback' (or 'activate' with 'command')")
        reloaded = self.d.engines.reload(engine)
        return {"message": f"{engine} v{v['active']} in slot {want} is active", "engine": engine,
                "version": v["active"], "slot": want, "stages_reloaded": reloaded}


def control_stage(daemon):
    """The control stage body: serve commands and publish heartbeats until everything is downlinked.

    ``daemon.socket("control")`` is the :class:`onboard.control_server.ControlServer` (a fresh
    one after a restart of this stage), ``daemon.socket("heartbeat")`` the heartbeat PUB socket.
    """
    def body(ctx) -> None:
        server = daemon.socket("control")
        heartbeat = daemon.socket("heartbeat")
        next_beat = 0.0
        try:
            while not daemon.finished.is_set():
                ctx.beat()
                if time.time() >= next_beat:
                    heartbeat.send_multipart(encode("heartbeat", {"status": daemon.status()}))
                    next_beat = time.time() + daemon.settings.heartbeat_interval_s
                server.serve_once(50)
            heartbeat.send_multipart(encode("heartbeat", {"status": daemon.status(), "final": True}))
        finally:
            server.close()
            heartbeat.close(linger=500)
    return body
