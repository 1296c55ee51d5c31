"""The daemon's one typed settings object, loaded once from a YAML or TOML file.

``DaemonSettings`` holds the flat keys of earlier versions plus nested typed sections:
``pipeline`` (streams and their stage DAGs), ``scheduler``, ``outbox``, ``telemetry``, ``power``
(:class:`onboard.power.PowerSettings`), ``health``, ``uplink`` and ``fl``. Every key of every level,
nested mappings and lists included, is checked and converted at load by
:func:`onboard.settings_check.build` from the field's type hint and its ``Annotated`` bounds: an
unknown key or a bad value is a :class:`~onboard.settings_check.SettingsError` (a ``UserError``:
daemon exit status 2) naming the key path and the fix. ``docs/onboard.md`` documents every key.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Dict, List, Mapping

from engines.errors import UserError
from onboard.power import PowerSettings
from onboard.settings_check import (FRACTION, Interval, NonEmpty, NonNegativeFloat, NonNegativeInt, OneOf,
                                    PositiveFloat, PositiveInt, Range, Schema, SettingsError, build, fail)
from onboard.telemetry import READING, PowerModelParams
from onboard.transfer import TransferConfig
from onboard.wire import DEFAULT_MAX_PAYLOAD_BYTES

_ENDPOINT = re.compile(r"^(tcp://[^:/\s]+:(\d+|\*)|ipc://\S+|inproc://\S+|(e?pgm|wss?|vmci|udp)://\S+)$")
STAGE_KINDS = ("cloud_screen", "engine")
TELEMETRY_SOURCES = ("none", "simulated", "scripted", "jtop")
DEFAULT_STALL_S = {"default": 10.0, "worker": 60.0, "uplink": 120.0, "fl": 600.0}
STAGES = ("ingest", "worker", "outbox", "downlink", "governor", "control", "uplink", "fl")   # the daemon's threads


@dataclass
class StageSettings:
    """One stage of a stream's pipeline: an engine run on the tiles that pass ``when``.

    ``engine`` names an engine of the store (``store_root``) or ``bundle`` is a bundle folder;
    ``variants`` maps power-policy variants (``int8``, ``dla-int8``) to other engines or bundle
    folders of the same kind. ``after`` lists parent stages (a DAG); ``when`` is a tile filter
    such as ``cloud_fraction <= 0.3`` over attributes of the parents.
    """

    name: str = ""
    kind: Annotated[str, OneOf(STAGE_KINDS)] = "engine"
    engine: str = ""
    bundle: str = ""
    variants: Dict[str, str] = field(default_factory=dict)
    after: List[str] = field(default_factory=list)
    when: str = ""
    threshold: Annotated[float, FRACTION] = 0.7   # cloud_screen: tiles above this cloud fraction are not downlinked
    priority: Annotated[int, Range(-1)] = -1      # downlink priority of the stage's results; -1: the stream's
    outputs: List[str] = field(default_factory=list)   # engine outputs downlinked; empty: all

    def check_settings(self, where: str) -> None:
        """A name, and exactly one of ``engine`` (store) and ``bundle`` (folder)."""
        if not self.name:
            raise fail(f"{where}.name", "set: every stage needs a name", self.name, "name the stage, e.g. name: cloud")
        if bool(self.engine) == bool(self.bundle):
            raise SettingsError(where, f"{where} ({self.name!r}) needs exactly one of 'engine' (an engine of the "
                                f"store) or 'bundle' (a bundle folder); got engine={self.engine!r}, "
                                f"bundle={self.bundle!r}")


@dataclass
class StreamSettings:
    """How frames of one stream are handled: scheduling class, default deadline, tiling, stages."""

    priority: NonNegativeInt = 2
    deadline_s: PositiveFloat = 3600.0
    overlap: NonNegativeInt = 0
    stages: List[StageSettings] = field(default_factory=list)


@dataclass
class SchedulerSettings:
    """Queues (in tiles) per priority class, dynamic batching, and what ingest does when full."""

    capacities: Annotated[List[PositiveInt], NonEmpty()] = field(default_factory=lambda: [256, 256, 256, 256])
    total_capacity: NonNegativeInt = 512          # 0: the sum of capacities
    max_batch_frames: PositiveInt = 8
    max_wait_s: Annotated[float, Range(0, 10)] = 0.002   # a batch waits at most this long for more tiles
    admission: Annotated[str, OneOf(("block", "reject"))] = "block"   # "block": backpressure; "reject": drop
    block_timeout_s: NonNegativeFloat = 0.0       # block at most this long, then drop (0: wait for room)


@dataclass
class OutboxSettings:
    """Durable outbox and downlink: leases, batch sizes, and how long shutdown waits for acks."""

    lease_s: PositiveFloat = 30.0
    batch_messages: PositiveInt = 32
    batch_bytes: PositiveInt = 8 * 1024 * 1024
    max_in_flight: PositiveInt = 256
    drain_ack_s: NonNegativeFloat = 5.0
    purge_acked_s: NonNegativeFloat = 7 * 86400.0
    windows: List[Annotated[List[float], Interval(strict=False)]] = field(default_factory=list)  # [start, end] sim s


@dataclass
class TelemetrySettings:
    """Where the power policy reads power, temperature, battery and sunlight."""

    source: Annotated[str, OneOf(TELEMETRY_SOURCES)] = "none"
    interval_s: PositiveFloat = 1.0
    time_scale: PositiveFloat = 1.0           # simulated: model seconds per wall-clock second
    t0: float = 0.0
    soc0: Annotated[float, FRACTION] = 0.8
    temp0_c: float = math.nan                 # NaN: the model's idle steady state
    model: Annotated[Dict[str, Any], Schema(PowerModelParams)] = field(default_factory=dict)   # overrides
    readings: List[READING] = field(default_factory=list)        # scripted: every Telemetry field, one per tick
    eclipses: List[Annotated[List[float], Interval()]] = field(default_factory=list)  # simulated: shadow, model s


@dataclass
class FLSettings:
    """Federated-learning client (``onboard/fl/stage.py``): on with ``data`` (an .npz of local x, y)."""

    data: str = ""
    priority: NonNegativeInt = 3      # scheduler class of the work and downlink priority of the updates
    require_sunlit: bool = True
    client_id: Annotated[str, NonEmpty()] = "sat"   # the update's id is fl:<client_id>:round<k>
    seed: int = 0


@dataclass
class UplinkSettings:
    """Files uplinked to the satellite (``onboard.transfer``) and engine-store upkeep.

    With ``endpoint`` set, the ``uplink`` stage runs a transfer receiver on it (a DEALER that
    connects, or binds with a leading ``@``); every finished ``.tar`` bundle archive is unpacked
    safely and installed into the engine store like a control ``install``. ``scrub_interval_s`` > 0
    re-hashes the store's engines that often, so a corrupted active slot is replaced by the
    intact other slot without waiting for a restart.
    """

    endpoint: str = ""
    state_dir: str = ""                   # default: <workdir>/uplink
    transfer: Annotated[Dict[str, Any], Schema(TransferConfig)] = field(default_factory=dict)  # overrides
    scrub_interval_s: NonNegativeFloat = 0.0


@dataclass
class HealthSettings:
    """Liveness monitoring, restart escalation and fault injection (tests, HIL)."""

    check_interval_s: PositiveFloat = 0.5
    stall_s: Annotated[Dict[str, PositiveFloat], OneOf(("default",) + STAGES)] = field(   # keys: stage names
        default_factory=lambda: dict(DEFAULT_STALL_S))
    max_stage_restarts: NonNegativeInt = 3
    max_daemon_restarts: PositiveInt = 5
    restart_window_s: NonNegativeFloat = 3600.0
    allow_fault_injection: bool = False


@dataclass
class DaemonSettings:
    """Everything the onboard daemon reads from its configuration file.

    Endpoints are ZeroMQ addresses the daemon *binds*: sensors connect to ``sensor_endpoint``,
    the ground receiver to ``results_endpoint`` (and, for acknowledged delivery, to
    ``ack_endpoint``), operators to ``control_endpoint`` and monitors to ``heartbeat_endpoint``.
    """

    bundle: str = ""                      # a bundle directory, or
    store_root: str = ""                  # an engine store (onboard/store.py) and the engine to serve
    engine: str = "cloudscreen"
    trusted_keys: List[str] = field(default_factory=list)  # ed25519 public keys bundles must be signed with
    workdir: Annotated[str, NonEmpty()] = "satedge-work"
    sensor_endpoint: str = "tcp://127.0.0.1:5555"
    sensor_pattern: Annotated[str, OneOf(("pull", "sub"))] = "pull"   # "pull" (backpressure, lossless) or "sub"
    results_endpoint: str = "tcp://127.0.0.1:5556"
    control_endpoint: str = "tcp://127.0.0.1:5557"
    heartbeat_endpoint: str = "tcp://127.0.0.1:5558"
    ack_endpoint: str = ""                # "" = no acks: a result counts as delivered once sent
    control_secret_key: str = ""          # CurveZMQ server key (file or Z85); "" = unauthenticated (tests only)
    control_authorized_keys: List[str] = field(default_factory=list)   # operators' .curve.pub files or folders
    heartbeat_interval_s: PositiveFloat = 1.0
    backend: Annotated[str, OneOf(("onnxrt", "tensorrt"))] = "onnxrt"
    kernels: str = "auto"                 # tile normalization / cloud fraction: "auto", "cuda" or "reference"
    dla_cores: NonNegativeInt = 0
    intra_op_threads: PositiveInt = 2
    max_batch: PositiveInt = 16           # tiles per inference call
    queue_size: PositiveInt = 64          # results between the worker and the outbox writer
    cloud_threshold: Annotated[float, FRACTION] = 0.7
    max_payload_bytes: PositiveInt = DEFAULT_MAX_PAYLOAD_BYTES
    drain_timeout_s: NonNegativeFloat = 30.0
    pipeline: Dict[str, StreamSettings] = field(default_factory=dict)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    power: PowerSettings = field(default_factory=PowerSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    uplink: UplinkSettings = field(default_factory=UplinkSettings)
    fl: FLSettings = field(default_factory=FLSettings)
    extra: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "DaemonSettings":
        """Check and convert every value again (also of settings built in code), in place.

        Returns
        -------
        DaemonSettings
            ``self``.

        Raises
        ------
        SettingsError
            A :class:`UserError` naming the bad key (``settings.power.temp_soft_c``) and the fix.
        """
        return build(DaemonSettings, self, "settings")

    def check_settings(self, where: str) -> None:
        """Rules across keys and sections (each value's own type and bounds are checked by then)."""
        if not self.bundle and not self.store_root and not self.pipeline:
            raise SettingsError(f"{where}.bundle", f"{where}: neither 'bundle' nor 'store_root' is set; set "
                                "'bundle' to an engine bundle directory, or 'store_root' and 'engine' to serve a "
                                "store's engine")
        if self.store_root and not self.trusted_keys:
            raise fail(f"{where}.trusted_keys", "set with 'store_root'", [], "list public keys from `satedge keys gen`")
        for key, value in [(k, getattr(self, k)) for k in ("sensor_endpoint", "results_endpoint", "control_endpoint",
                                                            "heartbeat_endpoint", "ack_endpoint")] + \
                [("uplink.endpoint", self.uplink.endpoint[1:] if self.uplink.endpoint.startswith("@")
                  else self.uplink.endpoint)]:
            if value and not _ENDPOINT.match(value):
                raise fail(f"{where}.{key}", "a ZeroMQ endpoint", value, "write tcp://HOST:PORT or ipc:///PATH")
        if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise fail(f"{where}.workdir", "a folder (created when missing)", self.workdir,
                       "it names a file; choose a folder path for the daemon's state")
        if self.kernels not in ("auto", "cuda", "reference"):
            raise SettingsError(f"{where}.kernels", f"{where}: kernels {self.kernels!r} is not 'auto', 'cuda' "
                                "(the CUDA kernels of cuda/, fails without a GPU) or 'reference' (numpy)")
        if self.telemetry.source == "scripted" and not self.telemetry.readings:
            raise fail(f"{where}.telemetry.readings", "a non-empty list with telemetry.source 'scripted'", [],
                       "give a list of {power_w, temp_c, soc, sunlit, t}, one per tick")
        classes = len(self.scheduler.capacities)
        prios = [(f"{where}.fl.priority", self.fl.priority)] if self.fl.data else []
        for key, prio in prios + [(f"{where}.pipeline.{n}.priority", st.priority) for n, st in self.pipeline.items()]:
            if prio >= classes:
                raise SettingsError(key, f"{key} {prio} is not a scheduler class 0..{classes - 1}. Fix: use a "
                                    "class of scheduler.capacities (one class per entry) or add classes there")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "DaemonSettings":
        """Build settings from a mapping, checking and converting every key of every section.

        Raises
        ------
        SettingsError
            An unknown key (the message lists the known ones) or a bad value, named by its key path.
        """
        return build(cls, data, "settings")

    def to_mapping(self) -> Dict[str, Any]:
        """The settings as a plain dict (for writing a config file)."""
        data = _plain(dataclasses.asdict(self))
        data.pop("extra")
        return data


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively (YAML's safe dumper writes no tuples)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_build = build          # the former private name (onboard/commands.py, sim/scenario.py)


def load_settings(path: str) -> DaemonSettings:
    """Read a ``.yaml``/``.yml`` or ``.toml`` daemon config file.

    Raises
    ------
    UserError
        The file is missing or cannot be parsed; a :class:`SettingsError` (a ``UserError``) for an
        unknown or invalid key, named by its path (``settings.power.temp_soft_c``). The daemon exits
        with status 2 (``exitcodes.CONFIG``) on either.
    """
    if os.path.isdir(path):
        raise UserError(f"config file {path!r} is a folder; pass the .yaml or .toml file in it")
    if not os.path.isfile(path):
        raise UserError(f"config file {path!r} does not exist; write one (see docs/onboard.md) or pass another path")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".yaml", ".yml"):
            import yaml
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
        elif ext == ".toml":
            import tomllib
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        else:
            raise UserError(f"config file {path!r}: use a .yaml, .yml or .toml file")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"config file {path!r} cannot be parsed: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path!r} must hold a mapping of settings")
    return DaemonSettings.from_mapping(data.get("daemon", data))


def write_settings(settings: DaemonSettings, path: str) -> str:
    """Write settings as YAML (used by the demo and the tests to start a daemon process)."""
    import yaml
    with open(path, "w") as fh:
        yaml.safe_dump({"daemon": settings.to_mapping()}, fh, sort_keys=True)
    return path


def stall_timeout(health: HealthSettings, stage: str) -> float:
    """Seconds without a liveness beat after which ``stage`` counts as stalled."""
    limits = {**DEFAULT_STALL_S, **health.stall_s}
    return float(limits.get(stage, limits["default"]))


__all__ = ["DaemonSettings", "HealthSettings", "OutboxSettings", "SchedulerSettings", "SettingsError", "StageSettings",
           "FLSettings", "StreamSettings", "TelemetrySettings", "UplinkSettings", "load_settings", "stall_timeout",
           "write_settings"]
