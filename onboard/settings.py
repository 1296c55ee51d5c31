"""The daemon's one typed settings object, loaded once from a YAML or TOML file."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping

from engines.errors import UserError
from onboard.wire import DEFAULT_MAX_PAYLOAD_BYTES


@dataclass
class DaemonSettings:
    """Everything the onboard daemon reads from its configuration file.

    Endpoints are ZeroMQ addresses the daemon *binds*: sensors connect to ``sensor_endpoint``,
    the ground receiver to ``results_endpoint``, operators to ``control_endpoint`` and monitors
    to ``heartbeat_endpoint``.
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
    heartbeat_interval_s: float = 1.0
    backend: str = "onnxrt"
    intra_op_threads: int = 2
    max_batch: int = 16
    queue_size: int = 32
    cloud_threshold: float = 0.7
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    drain_timeout_s: float = 30.0
    extra: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "DaemonSettings":
        """Check values; raise :class:`UserError` naming the bad key and the fix."""
        if not self.bundle and not self.store_root:
            raise UserError("settings: neither 'bundle' nor 'store_root' is set; set 'bundle' to an engine bundle "
                            "directory, or 'store_root' and 'engine' to serve the active engine of a store")
        if self.store_root and not self.trusted_keys:
            raise UserError("settings: 'store_root' needs 'trusted_keys' (public keys from `satedge keys gen`)")
        if self.sensor_pattern not in ("pull", "sub"):
            raise UserError(f"settings: sensor_pattern {self.sensor_pattern!r} is not 'pull' or 'sub'")
        if not 0.0 <= self.cloud_threshold <= 1.0:
            raise UserError(f"settings: cloud_threshold {self.cloud_threshold} must be within [0, 1]")
        for name in ("max_batch", "queue_size", "max_payload_bytes", "intra_op_threads"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"settings: {name} must be a positive integer; got {getattr(self, name)!r}")
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "DaemonSettings":
        """Build settings from a mapping; unknown keys are an error that lists the known ones."""
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UserError(f"settings: unknown key(s) {unknown}; known keys: {sorted(known)}")
        values = {}
        for name, value in data.items():
            default = known[name].default
            if default is dataclasses.MISSING:          # list fields
                default = known[name].default_factory()
            try:
                values[name] = value if isinstance(value, type(default)) else type(default)(value)
            except (TypeError, ValueError):
                raise UserError(f"settings: {name} must be {type(default).__name__}; got {value!r}") from None
        return cls(**values).validate()

    def to_mapping(self) -> Dict[str, Any]:
        """The settings as a plain dict (for writing a config file)."""
        data = dataclasses.asdict(self)
        data.pop("extra")
        return data


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
