"""Health and safety, after NASA cFS practice: liveness counters, stage restarts, escalation, reset counter.

Every stage of the daemon (ingest, worker, outbox, downlink, control, governor) runs in a
:class:`Stage` thread and calls :meth:`StageContext.beat` on every pass of its loop (loops wait
at most a fraction of a second, so an idle stage still beats). The :class:`HealthMonitor`, run by
the daemon's main thread every ``health.check_interval_s``:

* restarts a stage whose thread died of an exception (a fresh thread; the stage re-creates its
  sockets), at most ``max_stage_restarts`` times per stage;
* restarts a *stalled* stage (no beat for its ``stall_s``) when the stage allows it (the worker
  and the outbox writer: they own no socket). The stalled thread cannot be killed; it is
  abandoned, and work it had claimed is released (:meth:`StageContext.take_claim`);
* otherwise escalates: the daemon exits with ``exitcodes.HEALTH_RESTART`` so that its supervisor
  (systemd, the simulator) restarts the process.

:class:`RestartCounter` keeps, in ``<workdir>/health.json``, every health restart and every
start after an unclean exit (kill -9, power cut). When ``max_daemon_restarts`` of them fall within
``restart_window_s`` the daemon refuses to start (``exitcodes.RESTART_LIMIT``): it cannot loop.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

log = logging.getLogger("satedge.onboard.health")
FAULT_KINDS = ("crash", "stall")


class Abandoned(Exception):
    """Raised in a stage thread that the monitor has replaced; the thread then ends quietly."""


class StageContext:
    """What one run of a stage sees: its liveness counter, the daemon's stop flag, injected faults."""

    def __init__(self, name: str, stop: threading.Event, generation: int):
        self.name, self.stop, self.generation = name, stop, generation
        self.beats, self.last_beat = 0, time.monotonic()
        self.fault: Optional[str] = None
        self.abandoned = False
        self.tid: Optional[int] = None
        self._claim: Any = None
        self._lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        """Whether the daemon is draining."""
        return self.stop.is_set()

    def beat(self) -> None:
        """Advance the liveness counter; also the point where injected faults and abandonment act."""
        if self.abandoned:
            raise Abandoned(self.name)
        fault, self.fault = self.fault, None
        if fault == "crash":
            raise RuntimeError(f"fault injected into stage {self.name!r}: crash")
        if fault == "stall":
            log.warning("fault injected into stage %r: stalling", self.name)
            while not self.abandoned:
                time.sleep(0.05)
            raise Abandoned(self.name)
        self.beats += 1
        self.last_beat = time.monotonic()

    def claim(self, work: Any) -> None:
        """Record the work this run is doing (released by the monitor if the run is abandoned)."""
        with self._lock:
            self._claim = work

    def take_claim(self) -> Any:
        """Take the claimed work (once): the thread when it finishes, or the monitor when it abandons."""
        with self._lock:
            work, self._claim = self._claim, None
            return work


class Stage:
    """A named, restartable thread running ``body(ctx)``.

    Parameters
    ----------
    name : str
    body : callable
        ``body(ctx: StageContext)``; returns when the stage is done (draining finished).
    stop : threading.Event
        The daemon's stop flag, passed to every run.
    stall_s : float
        Seconds without a beat after which the stage is stalled.
    restart_on_stall : bool
        Whether a stalled run may be abandoned and replaced (stages that own no socket).
    on_abandon : callable, optional
        ``on_abandon(claimed_work, why)`` when a run is abandoned (stalled or dead) holding claimed work.
    """

    def __init__(self, name: str, body: Callable[[StageContext], None], stop: threading.Event, stall_s: float,
                 restart_on_stall: bool = False, on_abandon: Optional[Callable[[Any], None]] = None):
        self.name, self.body, self.stop, self.stall_s = name, body, stop, float(stall_s)
        self.restart_on_stall, self.on_abandon = restart_on_stall, on_abandon
        self.restarts, self.finished, self.error = 0, False, None
        self.ctx: Optional[StageContext] = None
        self.thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Start a new run in a fresh thread."""
        self.ctx = StageContext(self.name, self.stop, 0 if self.ctx is None else self.ctx.generation + 1)
        self.error = None
        self.thread = threading.Thread(target=self._main, args=(self.ctx,), name=self.name, daemon=True)
        self.thread.start()

    def _main(self, ctx: StageContext) -> None:
        ctx.tid = threading.get_native_id()          # for `top -H`, `py-spy` and the like
        try:
            self.body(ctx)
            if ctx is self.ctx:
                self.finished = True
        except Abandoned:
            pass
        except BaseException:
            if ctx is self.ctx:
                self.error = traceback.format_exc()
                log.error("stage %s died:\n%s", self.name, self.error)

    @property
    def alive(self) -> bool:
        """Whether the current run's thread is running."""
        return self.thread is not None and self.thread.is_alive()

    def restart(self, why: str) -> None:
        """Abandon the current run (releasing its claimed work) and start a new one."""
        old = self.ctx
        old.abandoned = True
        work = old.take_claim()
        if work is not None and self.on_abandon is not None:
            self.on_abandon(work, why)
        self.restarts += 1
        log.warning("restarting stage %s (%s); restart %d", self.name, why, self.restarts)
        self.start()

    def snapshot(self) -> Dict[str, Any]:
        """Liveness counter, seconds since the last beat, restarts and state."""
        ctx = self.ctx
        state = "finished" if self.finished else ("running" if self.alive else "dead")
        return {"beats": ctx.beats if ctx else 0, "age_s": round(time.monotonic() - ctx.last_beat, 3) if ctx else None,
                "restarts": self.restarts, "state": state, "tid": ctx.tid if ctx else None}


class HealthMonitor:
    """Checks stages and restarts or escalates (see module doc); :meth:`check` returns a reason to escalate."""

    def __init__(self, max_stage_restarts: int = 3):
        self.max_stage_restarts = int(max_stage_restarts)
        self.stages: Dict[str, Stage] = {}
        self.events: List[Dict[str, Any]] = []

    def add(self, stage: Stage) -> Stage:
        """Register and start a stage."""
        self.stages[stage.name] = stage
        stage.start()
        return stage

    def check(self) -> Optional[str]:
        """One health pass; None when all is well or was repaired, else why the daemon must restart."""
        now = time.monotonic()
        for st in self.stages.values():
            if st.finished:
                continue
            if not st.alive:
                problem, can_restart = f"stage {st.name} died: {(st.error or '').strip().splitlines()[-1:]}", True
            elif now - st.ctx.last_beat > st.stall_s:
                problem = f"stage {st.name} stalled: no beat for {now - st.ctx.last_beat:.1f} s (limit {st.stall_s} s)"
                can_restart = st.restart_on_stall
            else:
                continue
            self.events.append({"t": time.time(), "stage": st.name, "problem": problem})
            if not can_restart or st.restarts >= self.max_stage_restarts:
                return problem + ("" if can_restart else "; it owns sockets, so only a daemon restart clears it") + \
                    (f"; already restarted {st.restarts} times" if can_restart else "")
            st.restart(problem)
        return None

    def snapshot(self) -> Dict[str, Any]:
        """Per-stage liveness for heartbeats."""
        return {name: st.snapshot() for name, st in self.stages.items()}


class RestartCounter:
    """Persistent count of health restarts and unclean exits (``<workdir>/health.json``)."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path) as fh:
                self.state = json.load(fh)
        except (OSError, ValueError):
            self.state = {}
        self.state.setdefault("restarts", [])
        self.state.setdefault("boots", 0)

    def _save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(self.state, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def boot(self) -> None:
        """Count this start; a previous run that did not exit cleanly counts as a restart."""
        if self.state["boots"] and self.state.get("running"):
            self.state["restarts"].append({"t": time.time(), "reason": "previous run did not exit cleanly"})
        self.state["boots"] += 1
        self.state["running"] = True
        self._save()

    def record(self, reason: str) -> None:
        """Count a health restart about to happen."""
        self.state["restarts"].append({"t": time.time(), "reason": reason})
        self.state["running"] = False
        self._save()

    def clean_exit(self) -> None:
        """Mark the run as ended cleanly."""
        self.state["running"] = False
        self._save()

    def recent(self, window_s: float) -> List[Dict[str, Any]]:
        """Restarts within the last ``window_s`` seconds."""
        return [r for r in self.state["restarts"] if r["t"] >= time.time() - window_s]

    def clear(self) -> int:
        """Forget every restart (operator command); return how many there were."""
        n = len(self.state["restarts"])
        self.state["restarts"] = []
        self._save()
        return n
