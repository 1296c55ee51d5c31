"""The daemon's one typed settings object, loaded once from a YAML or TOML file.

``DaemonSettings`` holds the flat keys of earlier versions plus nested typed sections:
``pipeline`` (streams and their stage DAGs), ``scheduler``, ``outbox``, ``telemetry``, ``power``
(:class:`onboard.power.PowerSettings`) and ``health``. Every level refuses unknown keys with a
message that lists the known ones. ``docs/onboard.md`` documents every key.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping

from engines.errors import UserError
from onboard.power import PowerSettings
from onboard.wire import DEFAULT_MAX_PAYLOAD_BYTES

STAGE_KINDS = ("cloud_screen", "engine")
TELEMETRY_SOURCES = ("none", "simulated", "scripted", "jtop")
DEFAULT_STALL_S = {"default": 10.0, "worker": 60.0, "uplink": 120.0, "fl": 600.0}


@dataclass
class StageSettings:
    """One stage of a stream's pipeline: an engine run on the tiles that pass ``when``.

    ``engine`` names an engine of the store (``store_root``) or ``bundle`` is a bundle folder;
    ``variants`` maps power-policy variants (``int8``, ``dla-int8``) to other engines or bundle
    folders of the same kind. ``after`` lists parent stages (a DAG); ``when`` is a tile filter
    such as ``cloud_fraction <= 0.3`` over attributes of the parents.
    """

    name: str = ""
    kind: str = "engine"
    engine: str = ""
    bundle: str = ""
    variants: Dict[str, str] = field(default_factory=dict)
    after: List[str] = field(default_factory=list)
    when: str = ""
    threshold: float = 0.7            # cloud_screen: tiles above this cloud fraction are not downlinked
    priority: int = -1                # downlink priority of the stage's results; -1: the stream's
    outputs: List[str] = field(default_factory=list)   # engine outputs downlinked; empty: all


@dataclass
class StreamSettings:
    """How frames of one stream are handled: scheduling class, default deadline, tiling, stages."""

    priority: int = 2
    deadline_s: float = 3600.0
    overlap: int = 0
    stages: List[StageSettings] = field(default_factory=list)


@dataclass
class SchedulerSettings:
    """Queues (in tiles) per priority class, dynamic batching, and what ingest does when full."""

    capacities: List[int] = field(default_factory=lambda: [256, 256, 256, 256])
    total_capacity: int = 512
    max_batch_frames: int = 8
    max_wait_s: float = 0.002
    admission: str = "block"          # "block": stop reading (backpressure); "reject": drop, counted
    block_timeout_s: float = 0.0      # block at most this long, then drop (0: wait for room)


@dataclass
class OutboxSettings:
    """Durable outbox and downlink: leases, batch sizes, and how long shutdown waits for acks."""

    lease_s: float = 30.0
    batch_messages: int = 32
    batch_bytes: int = 8 * 1024 * 1024
    max_in_flight: int = 256
    drain_ack_s: float = 5.0
    purge_acked_s: float = 7 * 86400.0
    windows: List[List[float]] = field(default_factory=list)   # downlink passes [start, end], sim s; [] = always


@dataclass
class TelemetrySettings:
    """Where the power policy reads power, temperature, battery and sunlight."""

    source: str = "none"
    interval_s: float = 1.0
    time_scale: float = 1.0           # simulated: model seconds per wall-clock second
    t0: float = 0.0
    soc0: float = 0.8
    temp0_c: float = math.nan         # NaN: the model's idle steady state
    model: Dict[str, Any] = field(default_factory=dict)          # PowerModelParams overrides
    readings: List[Dict[str, Any]] = field(default_factory=list)  # scripted: Telemetry fields
    eclipses: List[List[float]] = field(default_factory=list)      # simulated: [start, end] model s in shadow


@dataclass
class FLSettings:
    """Federated-learning client (``onboard/fl/stage.py``): on with ``data`` (an .npz of local x, y)."""

    data: str = ""
    priority: int = 3                 # scheduler class of the work and downlink priority of the updates
    require_sunlit: bool = True
    client_id: str = "sat"            # the update's id is fl:<client_id>:round<k>
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
    transfer: Dict[str, Any] = field(default_factory=dict)       # onboard.transfer.TransferConfig overrides
    scrub_interval_s: float = 0.0


@dataclass
class HealthSettings:
    """Liveness monitoring, restart escalation and fault injection (tests, HIL)."""

    check_interval_s: float = 0.5
    stall_s: Dict[str, float] = field(default_factory=lambda: dict(DEFAULT_STALL_S))
    max_stage_restarts: int = 3
    max_daemon_restarts: int = 5
    restart_window_s: float = 3600.0
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
    workdir: str = "satedge-work"
    sensor_endpoint: str = "tcp://127.0.0.1:5555"
    sensor_pattern: str = "pull"          # "pull" (backpressure, lossless) or "sub"
    results_endpoint: str = "tcp://127.0.0.1:5556"
    control_endpoint: str = "tcp://127.0.0.1:5557"
    heartbeat_endpoint: str = "tcp://127.0.0.1:5558"
    ack_endpoint: str = ""                # "" = no acks: a result counts as delivered once sent
    control_secret_key: str = ""          # CurveZMQ server key (file or Z85); "" = unauthenticated (tests only)
    control_authorized_keys: List[str] = field(default_factory=list)   # operators' .curve.pub files or folders
    heartbeat_interval_s: float = 1.0
    backend: str = "onnxrt"
    kernels: str = "auto"                 # tile normalization / cloud fraction: "auto", "cuda" or "reference"
    dla_cores: int = 0
    intra_op_threads: int = 2
    max_batch: int = 16                   # tiles per inference call
    queue_size: int = 64                  # results between the worker and the outbox writer
    cloud_threshold: float = 0.7
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    drain_timeout_s: float = 30.0
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
        """Check values; raise :class:`UserError` naming the bad key and the fix."""
        if not self.bundle and not self.store_root and not self.pipeline:
            raise UserError("settings: neither 'bundle' nor 'store_root' is set; set 'bundle' to an engine bundle "
                            "directory, or 'store_root' and 'engine' to serve the active engine of a store")
        if self.store_root and not self.trusted_keys:
            raise UserError("settings: 'store_root' needs 'trusted_keys' (public keys from `satedge keys gen`)")
        if self.kernels not in ("auto", "cuda", "reference"):
            raise UserError(f"settings: kernels {self.kernels!r} is not 'auto', 'cuda' (the CUDA kernels of cuda/, "
                            "fails without a GPU) or 'reference' (numpy)")
        if self.sensor_pattern not in ("pull", "sub"):
            raise UserError(f"settings: sensor_pattern {self.sensor_pattern!r} is not 'pull' or 'sub'")
        if not 0.0 <= self.cloud_threshold <= 1.0:
            raise UserError(f"settings: cloud_threshold {self.cloud_threshold} must be within [0, 1]")
        for name in ("max_batch", "queue_size", "max_payload_bytes", "intra_op_threads"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"settings: {name} must be a positive integer; got {getattr(self, name)!r}")
        sc = self.scheduler
        if sc.admission not in ("block", "reject") or sc.max_batch_frames < 1 or not sc.capacities:
            raise UserError("settings: scheduler.admission must be 'block' or 'reject', max_batch_frames >= 1 and "
                            f"capacities a non-empty list; got {sc}")
        if self.telemetry.source not in TELEMETRY_SOURCES:
            raise UserError(f"settings: telemetry.source {self.telemetry.source!r} is not one of {TELEMETRY_SOURCES}")
        if self.telemetry.source == "scripted" and not self.telemetry.readings:
            raise UserError("settings: telemetry.source 'scripted' needs telemetry.readings (a list of "
                            "{power_w, temp_c, soc, sunlit, t})")
        if any(len(w) != 2 or not w[1] > w[0] for w in self.telemetry.eclipses):
            raise UserError(f"settings: telemetry.eclipses must be [start, end] pairs with end > start; got "
                            f"{self.telemetry.eclipses}")
        if self.fl.data and not 0 <= self.fl.priority < len(sc.capacities):
            raise UserError(f"settings: fl.priority {self.fl.priority} is not a scheduler class 0..{len(sc.capacities) - 1}")
        for stream, st in self.pipeline.items():
            if not 0 <= st.priority < len(sc.capacities):
                raise UserError(f"settings: pipeline.{stream}.priority {st.priority} is not a scheduler class "
                                f"0..{len(sc.capacities) - 1}")
            for stage in st.stages:
                if stage.kind not in STAGE_KINDS or not stage.name or bool(stage.engine) == bool(stage.bundle):
                    raise UserError(f"settings: pipeline.{stream}: stage {stage.name!r} needs a name, a kind in "
                                    f"{STAGE_KINDS} and exactly one of 'engine' (store) or 'bundle' (folder)")
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "DaemonSettings":
        """Build settings from a mapping; unknown keys are an error that lists the known ones."""
        return _build(cls, data, "settings").validate()

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


def _build(cls: type, data: Any, where: str) -> Any:
    """An instance of dataclass ``cls`` from a mapping, checking keys and converting each value by its type."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise UserError(f"{where} must be a mapping of settings; got {type(data).__name__}")
    if cls is PowerSettings:
        return PowerSettings.from_mapping(data)
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    return cls(**{name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()})


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is typing.Union:                       # Optional[X]
        return None if value is None else _convert(args[0], value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list; got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"{where} must be a mapping; got {value!r}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false; got {value!r}")
        return value
    try:
        if isinstance(value, bool) or (hint is int and isinstance(value, float) and not value.is_integer()):
            raise TypeError
        return hint(value)
    except (TypeError, ValueError):
        raise UserError(f"{where} must be {getattr(hint, '__name__', hint)}; got {value!r}") from None


def load_settings(path: str) -> DaemonSettings:
    """Read a ``.yaml``/``.yml`` or ``.toml`` daemon config file.

    Raises
    ------
    UserError
        The file is missing, cannot be parsed, or holds unknown or invalid keys.
    """
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


__all__ = ["DaemonSettings", "HealthSettings", "OutboxSettings", "SchedulerSettings", "StageSettings",
           "FLSettings", "StreamSettings", "TelemetrySettings", "UplinkSettings", "load_settings", "stall_timeout", "write_settings"]
