"""Power and thermal policy: which engine variant to run, and which priority classes to defer.

:meth:`PowerPolicy.decide` turns one :class:`onboard.telemetry.Telemetry` reading into a
:class:`PolicyDecision`:

* **variant** (heaviest to lightest: ``fp32``, ``int8``, ``dla-int8``): one step lighter when the
  payload draws more than its power budget or is hotter than the soft thermal limit; the lightest
  at once above the hard thermal limit or in eclipse with a low battery. One step heavier only
  when the heavier variant's predicted power (measured power × the variants' power ratio) fits
  the budget with a margin *and* its predicted temperature (now + ``thermal_resistance_k_per_w``
  × the extra watts; exact from a steady state, conservative while cooling) stays a margin below
  the soft limit *and* the current variant has run ``min_dwell_s``. Without that prediction a soft
  limit between two variants' steady temperatures makes the policy cycle between them. A lighter
  step waits ``settle_s`` after the last change, so that the power reading reflects the new
  variant before another step.
* **defer_priorities_at_or_below**: priority classes numbered this or higher (0 is the most
  urgent) wait; ``None`` defers nothing. Above the hard thermal limit only class 0 runs
  (``defer_thermal_from``, 1); in eclipse with the battery under ``soc_low``, classes from
  ``defer_eclipse_from`` (2) wait. Each condition clears with its own hysteresis.

Every change of variant or deferral is a :class:`PolicyEvent` with its reason, kept in
``PowerPolicy.events`` and passed to ``on_event``.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Deque, Dict, Mapping, Optional, Tuple, Union

from onboard.settings_check import (NonEmpty, NonNegativeFloat, NonNegativeInt, PositiveFloat, Range, build,
                                    fail)
from onboard.telemetry import Telemetry

VARIANTS = ("fp32", "int8", "dla-int8")


@dataclass
class PowerSettings:
    """Limits and margins of the power policy (the ``power`` section of the daemon config).

    Built by :meth:`from_mapping` (or :func:`onboard.settings.load_settings`), every key is checked
    and converted by its type hint and bounds; :meth:`check_settings` adds the rules across keys.
    """

    variants: Annotated[Tuple[str, ...], NonEmpty()] = VARIANTS          # available ones, heaviest first
    power_scale: Dict[str, PositiveFloat] = field(default_factory=lambda: {"fp32": 1.0, "int8": 0.64, "dla-int8": 0.46})
    power_budget_w: PositiveFloat = 10.0
    power_margin_w: NonNegativeFloat = 1.0
    temp_soft_c: float = 75.0
    temp_hard_c: float = 90.0
    temp_margin_c: NonNegativeFloat = 10.0
    thermal_resistance_k_per_w: NonNegativeFloat = 4.5     # steady temperature rise per watt (thermal-vacuum test)
    soc_low: Annotated[float, Range(0.0, 1.0, hi_open=True)] = 0.30
    soc_margin: NonNegativeFloat = 0.05
    defer_eclipse_from: NonNegativeInt = 2
    defer_thermal_from: NonNegativeInt = 1
    min_dwell_s: NonNegativeFloat = 60.0
    settle_s: NonNegativeFloat = 5.0

    def validate(self, where: str = "power") -> "PowerSettings":
        """Check and convert every value in place; raise :class:`SettingsError` naming the key and the fix.

        Parameters
        ----------
        where : str, optional
            Key path of the section in messages (``settings.power`` in a daemon config).

        Returns
        -------
        PowerSettings
            ``self``.
        """
        return build(PowerSettings, self, where)

    def check_settings(self, where: str) -> None:
        """Rules across keys: every variant has a ``power_scale`` entry; ``temp_soft_c < temp_hard_c``."""
        for i, v in enumerate(self.variants):
            if v not in self.power_scale:
                raise fail(f"{where}.variants[{i}]", f"a variant with a power_scale entry (have "
                           f"{sorted(self.power_scale)})", v,
                           f"add {v!r} to {where}.power_scale or remove it from {where}.variants")
        if not self.temp_soft_c < self.temp_hard_c:
            raise fail(f"{where}.temp_soft_c", f"below temp_hard_c ({self.temp_hard_c})", self.temp_soft_c,
                       "lower temp_soft_c or raise temp_hard_c")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "power") -> "PowerSettings":
        """Build from a config mapping; unknown keys or bad values raise :class:`SettingsError`.

        Parameters
        ----------
        data : mapping
            The ``power`` section.
        where : str, optional
            Key path of the section in messages.
        """
        return build(cls, data, where)


@dataclass(frozen=True)
class PolicyDecision:
    """What to run now: the engine variant, the first deferred priority class (or None), and why."""

    variant: str
    defer_priorities_at_or_below: Optional[int]
    reason: str

    def defers(self, priority: int) -> bool:
        """Whether work of ``priority`` should wait."""
        return self.defer_priorities_at_or_below is not None and priority >= self.defer_priorities_at_or_below


@dataclass(frozen=True)
class PolicyEvent:
    """One change of the decision: ``kind`` is ``"variant"`` or ``"defer"``."""

    t: float
    kind: str
    old: Any
    new: Any
    reason: str
    telemetry: Dict[str, Any]
    queue_state: Dict[str, Any]


class PowerPolicy:
    """Decides variant and deferral from telemetry, with hysteresis; records every change.

    Parameters
    ----------
    settings : PowerSettings or mapping, optional
    on_event : callable, optional
        ``on_event(PolicyEvent)`` for every change.
    max_events : int, optional
        Events kept in ``events`` (oldest dropped).
    """

    def __init__(self, settings: Union[PowerSettings, Mapping[str, Any], None] = None,
                 on_event: Optional[Callable[[PolicyEvent], None]] = None, max_events: int = 1000):
        if settings is None:
            settings = PowerSettings()
        self.settings = (PowerSettings.from_mapping(settings) if isinstance(settings, Mapping)
                         else settings.validate())
        self.on_event = on_event
        self.events: Deque[PolicyEvent] = collections.deque(maxlen=max_events)
        self._level = 0                          # index into variants; 0 = heaviest
        self._hot = self._dark = False           # latched: above hard limit; eclipse with low battery
        self._changed_t: Optional[float] = None
        self._defer: Optional[int] = None
        self._reason = "nominal"

    def decide(self, tel: Telemetry, queue_state: Optional[Mapping[str, Any]] = None) -> PolicyDecision:
        """Decide from one reading; ``queue_state`` (e.g. scheduler depths) is kept in events."""
        s = self.settings
        if tel.temp_c >= s.temp_hard_c:
            self._hot = True
        elif tel.temp_c < s.temp_hard_c - s.temp_margin_c:
            self._hot = False
        if not tel.sunlit and tel.soc < s.soc_low:
            self._dark = True
        elif tel.sunlit or tel.soc >= s.soc_low + s.soc_margin:
            self._dark = False
        events = []
        level, why = self._next_level(tel)
        if level != self._level:
            events.append(("variant", s.variants[self._level], s.variants[level], why))
            self._level, self._changed_t = level, tel.t
        defer, defer_why = None, (f"resumed: {'in sunlight' if tel.sunlit else f'battery at {tel.soc:.0%}'}, "
                                  f"temperature {tel.temp_c:.1f} °C")
        if self._dark:
            defer, defer_why = s.defer_eclipse_from, f"eclipse with battery at {tel.soc:.0%} < {s.soc_low:.0%}"
        if self._hot:
            defer = min(defer if defer is not None else s.defer_thermal_from, s.defer_thermal_from)
            defer_why = f"temperature {tel.temp_c:.1f} °C at or above the hard limit {s.temp_hard_c} °C"
        if defer != self._defer:
            events.append(("defer", self._defer, defer, defer_why))
            self._defer = defer
        for kind, old, new, reason in events:
            self._reason = reason
            event = PolicyEvent(tel.t, kind, old, new, reason, tel.to_dict(), dict(queue_state or {}))
            self.events.append(event)
            if self.on_event is not None:
                self.on_event(event)
        return PolicyDecision(s.variants[self._level], self._defer, self._reason)

    def _next_level(self, tel: Telemetry) -> Tuple[int, str]:
        s, level = self.settings, self._level
        lightest = len(s.variants) - 1
        since = float("inf") if self._changed_t is None else tel.t - self._changed_t
        if self._hot or self._dark:
            why = ("above the hard thermal limit" if self._hot else "eclipse with low battery")
            return lightest, f"{why}: most efficient variant"
        if level < lightest and since >= s.settle_s:
            if tel.power_w > s.power_budget_w:
                return level + 1, f"power {tel.power_w:.1f} W over the budget {s.power_budget_w} W"
            if tel.temp_c > s.temp_soft_c:
                return level + 1, f"temperature {tel.temp_c:.1f} °C over the soft limit {s.temp_soft_c} °C"
        if level > 0 and since >= s.min_dwell_s:
            predicted = tel.power_w * s.power_scale[s.variants[level - 1]] / s.power_scale[s.variants[level]]
            temp = tel.temp_c + s.thermal_resistance_k_per_w * (predicted - tel.power_w)
            if predicted <= s.power_budget_w - s.power_margin_w and temp <= s.temp_soft_c - s.temp_margin_c:
                return level - 1, (f"headroom: {s.variants[level - 1]} predicted at {predicted:.1f} W "
                                   f"(budget {s.power_budget_w} W) and {temp:.1f} °C (soft limit {s.temp_soft_c} °C)")
        return level, self._reason

    @property
    def decision(self) -> PolicyDecision:
        """The last decision (the heaviest variant, nothing deferred, before the first reading)."""
        return PolicyDecision(self.settings.variants[self._level], self._defer, self._reason)
