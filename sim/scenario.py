"""A constellation scenario: the one typed settings object of ``satedge sim run SCENARIO.yaml``.

A scenario names the orbits (a Walker-delta pattern or a TLE file), the ground stations, the sim
clock, the radio link in each direction, what the satellites image, which engine version is
rolled out, the faults to inject and how long the end-of-run downlink lasts. Every level refuses
unknown keys with a message listing the known ones (``docs/sim.md``, "Constellation runs").

Fault kinds (``faults[].kind``):

* ``kill_restart``: SIGKILL the satellite's daemon at ``at_s`` and start it again ``down_s`` later;
* ``power_loss_install``: the satellite loses power in the middle of installing the uplinked
  engine (its daemon is killed at the store's ``phase`` boundary) and boots ``down_s`` later;
* ``bitflip_engine``: flip one bit of the active engine's model file in the satellite's store at ``at_s``;
* ``link_cut``: the link to the satellite is cut ``offset_s`` into its ``pass``-th contact (0-based),
  for ``length_s``, in both directions (mid-transfer when the uplink is running);
* ``missed_pass``: the ground station misses the satellite's ``pass``-th contact entirely.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from engines.errors import UserError
from onboard.settings import _build

SCENARIOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios")
FAULT_KINDS = ("kill_restart", "power_loss_install", "bitflip_engine", "link_cut", "missed_pass")


@dataclass
class FaultSettings:
    """One injected fault (see module doc for the fields each kind uses)."""

    kind: str = ""
    sat: int = 0                      # satellite index in the constellation (0-based)
    at_s: float = 0.0
    down_s: float = 300.0
    phase: str = "activate:before"   # power_loss_install: the store phase boundary
    pass_index: int = 0
    offset_s: float = 60.0
    length_s: float = 120.0


@dataclass
class ImagingSettings:
    """What each satellite's sensor emulator sends: a frame every ``interval_s`` of sunlit sim time."""

    interval_s: float = 600.0
    size: int = 128
    sunlit_only: bool = True


@dataclass
class Scenario:
    """A whole constellation run (see module doc)."""

    name: str = "scenario"
    seed: int = 0
    start: str = "2026-11-21T00:00:00Z"
    duration_h: float = 6.0
    factor: float = 300.0             # sim seconds per wall second
    step_s: float = 10.0
    walker: str = ""                  # "INC:T/P/F@ALT_KM", or
    tle: str = ""                     # a TLE file (relative to the scenario file)
    stations: str = "Svalbard,Kiruna,Fairbanks"
    min_elevation_deg: float = 10.0
    link: Dict[str, Dict[str, Any]] = field(default_factory=dict)     # {"up": LinkParams, "down": LinkParams}
    imaging: ImagingSettings = field(default_factory=ImagingSettings)
    rollout_version: int = 2          # the engine version uplinked to every satellite (v1 is on board at launch)
    daemon: Dict[str, Any] = field(default_factory=dict)              # DaemonSettings overrides for every satellite
    faults: List[FaultSettings] = field(default_factory=list)
    external: Dict[int, Dict[str, Any]] = field(default_factory=dict)  # HIL: satellite index -> its endpoints
    drain_wall_s: float = 30.0        # wall seconds of open downlink at the end (results still on board)

    def validate(self) -> "Scenario":
        """Check values; raise :class:`UserError` naming the bad key and the fix."""
        if bool(self.walker) == bool(self.tle):
            raise UserError(f"scenario {self.name!r}: give exactly one of 'walker' (INC:T/P/F@ALT_KM) or 'tle'")
        if not (0 < self.duration_h <= 48 and self.factor > 0 and self.step_s > 0):
            raise UserError(f"scenario {self.name!r}: duration_h must be in (0, 48], factor and step_s positive")
        if set(self.link) - {"up", "down"}:
            raise UserError(f"scenario {self.name!r}: link has keys {sorted(self.link)}; use 'up' and 'down'")
        for d, params in self.link.items():
            _check_link(self.name, d, params)
        for i, f in enumerate(self.faults):
            if f.kind not in FAULT_KINDS:
                raise UserError(f"scenario {self.name!r}: faults[{i}].kind {f.kind!r} is not one of {FAULT_KINDS}")
            for key in ("sat", "pass_index", "at_s", "down_s", "offset_s", "length_s"):
                value = getattr(f, key)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                    raise UserError(f"scenario {self.name!r}: faults[{i}].{key} is {value!r}; give a number >= 0")
        need = {"sensor", "results", "acks", "heartbeat", "control", "uplink"}
        for i, ext in self.external.items():
            if not isinstance(ext, dict) or need - set(ext):
                raise UserError(f"scenario {self.name!r}: external[{i}] needs the daemon's endpoints {sorted(need)} "
                                "(its uplink endpoint bound with '@' in the daemon's config) and optionally 'workdir'")
        for i, f in enumerate(self.faults):
            if f.sat in self.external and f.kind in ("kill_restart", "power_loss_install", "bitflip_engine"):
                raise UserError(f"scenario {self.name!r}: faults[{i}] ({f.kind}) targets external satellite {f.sat}; "
                                "the runner cannot kill or edit a daemon it did not start (use link faults)")
        if self.rollout_version < 2:
            raise UserError(f"scenario {self.name!r}: rollout_version must be at least 2 (v1 flies at launch)")
        return self

    def check_satellites(self, names: List[str]) -> "Scenario":
        """Check the satellite indices (``faults[].sat``, ``external``) against the constellation's ``names``."""
        n = len(names)
        for i, f in enumerate(self.faults):
            if not 0 <= f.sat < n:
                raise UserError(f"scenario {self.name!r}: faults[{i}].sat is {f.sat}, but the constellation has {n} "
                                f"satellite(s); give an index from 0 to {n - 1} ({names[0]} .. {names[-1]})")
        bad = sorted(i for i in self.external if not (isinstance(i, int) and 0 <= i < n))
        if bad:
            raise UserError(f"scenario {self.name!r}: external has satellite index(es) {bad}, but the constellation "
                            f"has {n} satellite(s); give indices from 0 to {n - 1}")
        return self

    @property
    def duration_s(self) -> float:
        """Sim seconds the scenario lasts."""
        return self.duration_h * 3600.0


def _check_link(name: str, direction: str, params: Any) -> None:
    """``link.<direction>``: a mapping of :class:`sim.link.LinkParams` fields with valid values."""
    from sim.link import LinkParams
    where = f"scenario {name!r}: link.{direction}"
    known = [k for k in LinkParams.__dataclass_fields__]
    if not isinstance(params, dict):
        raise UserError(f"{where} is {params!r}; give a mapping of link settings ({', '.join(known)})")
    unknown = sorted(set(map(str, params)) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; known: {', '.join(known)}")
    outages = params.get("outages", [])
    if not isinstance(outages, list) or not all(
            isinstance(o, (list, tuple)) and len(o) == 2 and all(
                isinstance(t, (int, float)) and not isinstance(t, bool) for t in o) for o in outages):
        raise UserError(f"{where}.outages is {outages!r}; give a list of [start_s, end_s] pairs")
    for key, value in params.items():
        if key == "outages":
            continue
        try:
            LinkParams(**{key: value})
        except UserError as exc:
            text = str(exc)
            raise UserError(text.replace(f"LinkParams.{key}", f"{where}.{key}", 1) if f"LinkParams.{key}" in text
                            else f"{where}.{key}: {text}") from None


def load_scenario(path: str) -> Scenario:
    """Read a scenario YAML file; relative ``tle`` paths are taken from the file's folder."""
    if not os.path.isfile(path):
        shipped = os.path.join(SCENARIOS, path if path.endswith(".yaml") else path + ".yaml")
        if not os.path.isfile(shipped):
            raise UserError(f"scenario {path!r} not found; give a YAML path or a shipped name: "
                            f"{sorted(f[:-5] for f in os.listdir(SCENARIOS) if f.endswith('.yaml'))}")
        path = shipped
    import yaml
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except UnicodeDecodeError:
        raise UserError(f"scenario {path!r} is not a text file; give a YAML scenario (see sim/scenarios)") from None
    except yaml.YAMLError as exc:
        raise UserError(f"scenario {path!r} cannot be parsed: {' '.join(str(exc).split())}") from None
    except OSError as exc:
        raise UserError(f"cannot read scenario {path!r}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"scenario {path!r} must hold a mapping of settings, not a {type(data).__name__}")
    sc: Scenario = _build(Scenario, data, f"scenario {os.path.basename(path)}")
    if sc.tle and not os.path.isabs(sc.tle):
        sc.tle = os.path.join(os.path.dirname(os.path.abspath(path)), sc.tle)
    sc.validate()
    from sim.orbits import Constellation, walker_spec
    const = walker_spec(sc.walker, sc.start) if sc.walker else Constellation.from_tle_file(sc.tle)
    return sc.check_satellites(list(const.names))


def fault_label(f: FaultSettings, sat_name: Optional[str] = None) -> str:
    """A short human description of a fault."""
    who = sat_name or f"sat {f.sat}"
    return {"kill_restart": f"{who}: SIGKILL, back after {f.down_s:.0f} s",
            "power_loss_install": f"{who}: power loss during engine install ({f.phase})",
            "bitflip_engine": f"{who}: bit flip in the stored active engine",
            "link_cut": f"{who}: link cut {f.offset_s:.0f} s into pass {f.pass_index} for {f.length_s:.0f} s",
            "missed_pass": f"{who}: ground station misses pass {f.pass_index}"}[f.kind]
