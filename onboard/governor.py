"""The power governor: reads telemetry, asks the power policy, and publishes the decision the worker follows.

The telemetry source is chosen by ``telemetry.source`` in the daemon config, behind the one
interface of :mod:`onboard.telemetry`: ``jtop`` (a Jetson's rails and thermal zones),
``simulated`` (:class:`onboard.telemetry.SimulatedPowerModel`, moved on by ``time_scale`` model
seconds per wall second and fed the worker's measured utilization and the variant it runs),
``scripted`` (fixed readings, one per tick: tests) or ``none`` (no policy: the heaviest variant,
nothing deferred). Every ``telemetry.interval_s`` the governor reads once and calls
:meth:`onboard.power.PowerPolicy.decide`; the worker reads :attr:`Governor.decision` before each
batch: which engine variant to run and which priority classes to leave queued.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
from typing import Any, Dict, Mapping, Optional

from engines.errors import UserError
from onboard.power import PolicyDecision, PolicyEvent, PowerPolicy, PowerSettings
from onboard.telemetry import JtopSource, PowerModelParams, ScriptedSource, SimulatedPowerModel, TelemetrySource

log = logging.getLogger("satedge.onboard")


def make_source(tel) -> Optional[TelemetrySource]:
    """The telemetry source named by a :class:`onboard.settings.TelemetrySettings` (None for ``none``)."""
    if tel.source == "none":
        return None
    if tel.source == "scripted":
        return ScriptedSource(tel.readings)
    if tel.source == "jtop":
        return JtopSource()
    try:
        params = PowerModelParams(**tel.model)
    except TypeError as exc:
        known = [f.name for f in dataclasses.fields(PowerModelParams)]
        raise UserError(f"settings: telemetry.model has an unknown key ({exc}); known keys: {known}") from None
    eclipses = [tuple(w) for w in tel.eclipses]
    sunlit_at = (lambda t: not any(a <= t < b for a, b in eclipses)) if eclipses else None
    return SimulatedPowerModel(params, t0=tel.t0, soc0=tel.soc0,
                               temp0_c=None if math.isnan(tel.temp0_c) else tel.temp0_c, sunlit_at=sunlit_at)


class Governor:
    """Telemetry -> policy -> decision (see module doc).

    Parameters
    ----------
    settings : onboard.settings.DaemonSettings
        Its ``telemetry`` and ``power`` sections.
    queue_state : callable, optional
        Returns the scheduler's state, kept in policy events.
    """

    def __init__(self, settings, queue_state=None):
        self.tel_settings = settings.telemetry
        self.power_settings: PowerSettings = settings.power
        self.source = make_source(settings.telemetry)
        self.policy = PowerPolicy(settings.power, on_event=self._on_event) if self.source is not None else None
        variants = tuple(settings.power.variants)
        self.decision = PolicyDecision(variants[0], None, "no telemetry source: nominal" if self.policy is None
                                       else "nominal")
        self.telemetry: Optional[Dict[str, Any]] = None
        self.events: "collections.deque[Dict[str, Any]]" = collections.deque(maxlen=50)
        self.queue_state = queue_state or dict
        self._busy, self._lock = 0.0, threading.Lock()
        self._last = time.monotonic()

    def add_busy(self, seconds: float) -> None:
        """The worker spent ``seconds`` running engines (for the simulated utilization)."""
        with self._lock:
            self._busy += seconds

    def _on_event(self, ev: PolicyEvent) -> None:
        self.events.append({"t": ev.t, "kind": ev.kind, "old": ev.old, "new": ev.new, "reason": ev.reason})
        log.info("power policy: %s %s -> %s (%s)", ev.kind, ev.old, ev.new, ev.reason)

    def tick(self) -> PolicyDecision:
        """Read telemetry once and decide."""
        if self.policy is None:
            return self.decision
        now = time.monotonic()
        with self._lock:
            busy, self._busy = self._busy, 0.0
        elapsed, self._last = max(1e-6, now - self._last), now
        src = self.source
        if isinstance(src, SimulatedPowerModel):
            variant = self.decision.variant if self.decision.variant in src.p.payload_active_w \
                else next(iter(src.p.payload_active_w))
            src.set_activity(min(1.0, busy / elapsed), variant)
            reading = src.advance(elapsed * self.tel_settings.time_scale)
        else:
            reading = src.read()
        self.telemetry = reading.to_dict()
        self.decision = self.policy.decide(reading, self.queue_state())
        return self.decision

    def run(self, ctx) -> None:
        """Stage body: tick every ``telemetry.interval_s`` until the daemon stops."""
        next_tick = 0.0
        while not ctx.stopping:
            ctx.beat()
            if time.monotonic() >= next_tick:
                self.tick()
                next_tick = time.monotonic() + self.tel_settings.interval_s
            ctx.stop.wait(min(0.1, self.tel_settings.interval_s))

    def set_policy(self, changes: Mapping[str, Any]) -> PowerSettings:
        """Change policy settings at run time (``set_policy`` command); unknown keys or bad values raise
        ``UserError`` and change nothing. Without a telemetry source they are kept for the record only."""
        current = dataclasses.asdict(self.power_settings)
        current.update(changes)
        try:
            new = PowerSettings.from_mapping(current)
        except TypeError as exc:
            raise UserError(f"set_policy: {exc}") from None
        self.power_settings = new
        if self.policy is not None:
            self.policy.settings = new
        log.info("power policy settings changed: %s", dict(changes))
        return new

    def snapshot(self) -> Dict[str, Any]:
        """Decision, last reading and recent policy events, for heartbeats."""
        d = self.decision
        return {"source": self.tel_settings.source, "variant": d.variant, "defer_from": d.defer_priorities_at_or_below,
                "reason": d.reason, "telemetry": self.telemetry, "events": list(self.events)[-10:]}

    def close(self) -> None:
        """Release the telemetry source."""
        if self.source is not None:
            self.source.close()
