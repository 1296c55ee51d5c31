"""Telemetry sources: what the power policy reads (power, temperature, battery, sunlight).

One interface, :class:`TelemetrySource` with ``read() -> Telemetry``, and three sources:

* :class:`JtopSource`: a real Jetson's rails and thermal zones through jetson-stats (``jtop``,
  imported lazily; off a Jetson it raises :class:`UserError`). A Jetson knows nothing of the
  satellite's battery or sunlight: those come from an optional ``eps`` source (the bus's
  electrical power subsystem) or are reported as unknown (``soc`` NaN, ``sunlit`` True);
* :class:`SimulatedPowerModel`: the simulator's power model of a small satellite with a Jetson
  payload (orbit with eclipse, solar array, battery, first-order thermal model);
* :class:`ScriptedSource`: a fixed list of readings, for tests.
"""
from __future__ import annotations

import abc
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Callable, Dict, Iterable, Mapping, Optional, Union

from engines.errors import UserError
from onboard.settings_check import Schema, convert


@dataclass(frozen=True)
class Telemetry:
    """One reading: payload power (W), hottest temperature (°C), battery state of charge (0–1),
    whether the spacecraft is in sunlight, and the time of the reading (s)."""

    power_w: float
    temp_c: float
    soc: float
    sunlit: bool
    t: float

    def to_dict(self) -> Dict[str, Any]:
        """The reading as a plain dict (for events, heartbeats and logs)."""
        return asdict(self)


READING = Annotated[Dict[str, Any], Schema(Telemetry, required=True)]   # one scripted reading in a config


class TelemetrySource(abc.ABC):
    """Anything that can be read for a :class:`Telemetry`."""

    @abc.abstractmethod
    def read(self) -> Telemetry:
        """Return the current reading."""

    def close(self) -> None:
        """Release what the source holds (nothing by default)."""


class ScriptedSource(TelemetrySource):
    """Returns a fixed list of readings in order, then repeats the last one.

    Parameters
    ----------
    readings : iterable of Telemetry or mapping
        Mappings must hold every :class:`Telemetry` field (checked and converted like a config key:
        a bad one raises :class:`onboard.settings_check.SettingsError` naming ``readings[i].<field>``).
    """

    def __init__(self, readings: Iterable[Union[Telemetry, Mapping[str, Any]]]):
        self._readings = [r if isinstance(r, Telemetry) else Telemetry(**convert(READING, r, f"readings[{i}]"))
                          for i, r in enumerate(readings)]
        if not self._readings:
            raise UserError("ScriptedSource needs at least one reading")
        self._i = 0

    def read(self) -> Telemetry:
        reading = self._readings[min(self._i, len(self._readings) - 1)]
        self._i += 1
        return reading


def is_jetson() -> bool:
    """Whether this host is an NVIDIA Jetson (L4T release file or device-tree model)."""
    if os.path.exists("/etc/nv_tegra_release"):
        return True
    try:
        with open("/proc/device-tree/model", "rb") as fh:
            return b"jetson" in fh.read().lower()
    except OSError:
        return False


class JtopSource(TelemetrySource):
    """A Jetson's total power and hottest thermal zone, read through jetson-stats.

    Parameters
    ----------
    eps : TelemetrySource, optional
        Source of ``soc`` and ``sunlit`` (the bus's power subsystem); without it they are NaN and True.
    clock : callable, optional
        Time stamp of each reading (``time.time``).

    Raises
    ------
    UserError
        Not a Jetson, jetson-stats missing, or its ``jtop`` service not running.
    """

    def __init__(self, eps: Optional[TelemetrySource] = None, clock: Callable[[], float] = time.time):
        if not is_jetson():
            raise UserError("JtopSource reads a Jetson's power rails, and this host is not a Jetson; use "
                            "SimulatedPowerModel (simulation) or ScriptedSource (tests) here")
        try:
            from jtop import jtop
        except ImportError:
            raise UserError("JtopSource needs jetson-stats: 'pip install satedge[jetson]' (or 'pip install "
                            "jetson-stats') and start its service ('sudo systemctl start jtop')") from None
        self.eps, self.clock = eps, clock
        self._jtop = jtop()
        try:
            self._jtop.start()
        except Exception as exc:    # jtop raises its own JtopException when the service is down
            raise UserError(f"jtop could not connect to the jetson-stats service ({exc}); start it with "
                            "'sudo systemctl restart jtop'") from None

    def read(self) -> Telemetry:
        power = self._jtop.power
        tot = power.get("tot", {}) if isinstance(power, dict) else {}
        milliwatts = tot.get("power", tot.get("cur", math.nan))            # jtop 4.x: "power"; 3.x: "cur"
        temps = []
        for value in (self._jtop.temperature or {}).values():
            temp = value.get("temp") if isinstance(value, dict) else value
            if isinstance(temp, (int, float)) and -40.0 < temp < 150.0:  # offline zones read -256
                temps.append(float(temp))
        bus = self.eps.read() if self.eps is not None else None
        return Telemetry(power_w=float(milliwatts) / 1000.0, temp_c=max(temps) if temps else math.nan,
                         soc=bus.soc if bus else math.nan, sunlit=bus.sunlit if bus else True, t=self.clock())

    def close(self) -> None:
        self._jtop.close()


@dataclass
class PowerModelParams:
    """Constants of :class:`SimulatedPowerModel`; defaults describe a 6U cubesat with an Orin-class payload.

    Attributes
    ----------
    orbit_period_s : float
        5700 s: about 95 min, a 550 km circular orbit.
    eclipse_fraction : float
        0.36 of each orbit in the Earth's shadow (about 34 min at 550 km with the Sun in the orbit
        plane, beta = 0; a dawn-dusk sun-synchronous orbit has almost none). Eclipse is the last
        part of each orbit.
    solar_w : float
        30 W from deployable arrays in sunlight, after the power tracker.
    bus_w : float
        6 W for the platform (computer, attitude control, idle radio), always drawn.
    battery_wh : float
        40 Wh battery; charge is clipped to [0, battery_wh].
    payload_idle_w, payload_active_w : float, dict
        Jetson power at idle (4 W) and when fully busy with each engine variant
        (fp32 14 W, int8 9 W, dla-int8 6.5 W); in between it scales with the utilization.
    thermal_resistance_k_per_w : float
        4.5 K/W from the module to the radiator, by conduction (no convection in vacuum), so a
        steady load ``P`` settles at ``sink + P * R``.
    thermal_tau_s : float
        300 s time constant of the module on its radiator (first order: heat capacity × R).
    sink_sunlit_c, sink_eclipse_c : float
        Radiator temperature in sunlight (20 °C) and in eclipse (-5 °C).
    """

    orbit_period_s: float = 5700.0
    eclipse_fraction: float = 0.36
    solar_w: float = 30.0
    bus_w: float = 6.0
    battery_wh: float = 40.0
    payload_idle_w: float = 4.0
    payload_active_w: Dict[str, float] = field(default_factory=lambda: {"fp32": 14.0, "int8": 9.0, "dla-int8": 6.5})
    thermal_resistance_k_per_w: float = 4.5
    thermal_tau_s: float = 300.0
    sink_sunlit_c: float = 20.0
    sink_eclipse_c: float = -5.0


class SimulatedPowerModel(TelemetrySource):
    """A satellite's power and the payload's temperature, integrated over simulated time.

    The daemon reports what it does with :meth:`set_activity` (utilization 0–1 and the engine
    variant); the simulator moves time with :meth:`advance`. Sunlight follows the orbit's phase,
    or ``sunlit_at(t)`` when given (e.g. eclipses from the simulator's real orbit). The battery
    integrates ``solar - bus - payload``; the temperature relaxes exponentially toward
    ``sink + payload * R`` with the time constant ``thermal_tau_s`` (exact for a constant load).

    Parameters
    ----------
    params : PowerModelParams, optional
    t0 : float, optional
        Start time (s); the orbit phase is ``t mod orbit_period_s``, sunlit first.
    soc0 : float, optional
        Initial state of charge (0–1).
    temp0_c : float, optional
        Initial temperature (default: the idle steady state in sunlight).
    sunlit_at : callable, optional
        ``sunlit_at(t) -> bool`` overriding the periodic eclipse.
    """

    def __init__(self, params: Optional[PowerModelParams] = None, t0: float = 0.0, soc0: float = 0.8,
                 temp0_c: Optional[float] = None, sunlit_at: Optional[Callable[[float], bool]] = None):
        self.p = params or PowerModelParams()
        if not 0.0 <= soc0 <= 1.0:
            raise UserError(f"soc0 must be within [0, 1]; got {soc0}")
        self.t = float(t0)
        self.energy_wh = soc0 * self.p.battery_wh
        self._sunlit_at = sunlit_at
        self.utilization, self.variant = 0.0, next(iter(self.p.payload_active_w))
        self.temp_c = (self.p.sink_sunlit_c + self.p.payload_idle_w * self.p.thermal_resistance_k_per_w
                       if temp0_c is None else float(temp0_c))

    def sunlit(self, t: Optional[float] = None) -> bool:
        """Whether the spacecraft is in sunlight at ``t`` (default: now)."""
        t = self.t if t is None else t
        if self._sunlit_at is not None:
            return bool(self._sunlit_at(t))
        return (t % self.p.orbit_period_s) < (1.0 - self.p.eclipse_fraction) * self.p.orbit_period_s

    def set_activity(self, utilization: float, variant: str) -> None:
        """What the payload does from now on: busy fraction (0–1) with the given engine variant."""
        if variant not in self.p.payload_active_w:
            raise UserError(f"unknown variant {variant!r}; the power model knows {sorted(self.p.payload_active_w)}")
        self.utilization, self.variant = min(1.0, max(0.0, float(utilization))), variant

    def payload_w(self) -> float:
        """Payload power now (W)."""
        active = self.p.payload_active_w[self.variant]
        return self.p.payload_idle_w + self.utilization * (active - self.p.payload_idle_w)

    def advance(self, dt_s: float, max_step_s: float = 10.0) -> Telemetry:
        """Move time on by ``dt_s`` in steps of at most ``max_step_s`` and return the reading then."""
        left = float(dt_s)
        while left > 1e-9:
            dt = min(left, max_step_s)
            sunlit = self.sunlit()
            load = self.payload_w()
            net_w = (self.p.solar_w if sunlit else 0.0) - self.p.bus_w - load
            self.energy_wh = min(self.p.battery_wh, max(0.0, self.energy_wh + net_w * dt / 3600.0))
            sink = self.p.sink_sunlit_c if sunlit else self.p.sink_eclipse_c
            steady = sink + load * self.p.thermal_resistance_k_per_w
            self.temp_c = steady + (self.temp_c - steady) * math.exp(-dt / self.p.thermal_tau_s)
            self.t += dt
            left -= dt
        return self.read()

    def read(self) -> Telemetry:
        return Telemetry(power_w=self.payload_w(), temp_c=self.temp_c, soc=self.energy_wh / self.p.battery_wh,
                         sunlit=self.sunlit(), t=self.t)
