"""The typed manifest of an engine bundle (``manifest.json``), see ``docs/bundle.md``.

A manifest names the engine, pins every file of the bundle by SHA-256, describes the input
and output tensors and lists the TensorRT plans (``plans``, entries typed by
``engines.plan.PlanEntry``; absent when there are none). ``Manifest.canonical_bytes()`` is the exact byte string a signature covers:
JSON with sorted keys, no whitespace, UTF-8. Unknown top-level fields (written by a newer
satedge) are kept in ``Manifest.extra`` and written back unchanged, so they stay signed.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from engines.errors import BundleError
from engines.hashing import is_sha256_hex
from engines.plan import PlanEntry

FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16",
          "int32", "uint32", "int64", "bool")
MANIFEST_FILE = "manifest.json"
Dim = Union[int, str]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
_REQUIRED = ("format_version", "name", "version", "precision", "inputs", "outputs", "files")
_SPEC_FIELDS = ("name", "dtype", "shape", "normalization")


def _fail(where: str, problem: str, fix: str) -> BundleError:
    return BundleError("manifest field %r: %s. %s" % (where, problem, fix))


def _check_dtype(where: str, dtype: object) -> str:
    if dtype not in DTYPES:
        raise _fail(where, "dtype %r is not known" % (dtype,), "Use one of: %s." % ", ".join(DTYPES))
    return str(dtype)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of an engine.

    Parameters
    ----------
    name : str
        The tensor name, as in the ONNX graph.
    dtype : str
        A NumPy dtype name from ``DTYPES`` (``"float32"``, ``"uint16"``, ...).
    shape : tuple of int or str
        Static dims are positive ints; dynamic dims are strings such as ``"N"``.
    normalization : dict, optional
        For image inputs: ``{"source_dtype": "uint16", "scale": [...], "offset": [...]}`` with one
        value per band (channel, axis 1); the model input is ``source * scale + offset``.
    extra : dict, optional
        Unknown fields read from a newer manifest, kept for a lossless round trip.
    """

    name: str
    dtype: str
    shape: Tuple[Dim, ...]
    normalization: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = "tensor %r" % (self.name,)
        if not isinstance(self.name, str) or not self.name:
            raise _fail("name", "a tensor name must be a non-empty string, got %r" % (self.name,),
                        "Give every input and output its ONNX graph name.")
        _check_dtype(where + ".dtype", self.dtype)
        shape = tuple(self.shape) if isinstance(self.shape, (list, tuple)) else None
        if shape is None or not all(
                (isinstance(d, int) and not isinstance(d, bool) and d > 0) or (isinstance(d, str) and d)
                for d in shape):
            raise _fail(where + ".shape", "got %r" % (self.shape,),
                        "Use a list of positive ints for static dims and names such as \"N\" for dynamic ones.")
        object.__setattr__(self, "shape", shape)
        if self.normalization is not None:
            self._check_normalization(where + ".normalization")

    def _check_normalization(self, where: str) -> None:
        norm = self.normalization
        if not isinstance(norm, dict) or not {"source_dtype", "scale", "offset"} <= set(norm):
            raise _fail(where, "got %r" % (norm,),
                        "Use {\"source_dtype\": \"uint16\", \"scale\": [per band], \"offset\": [per band]}.")
        _check_dtype(where + ".source_dtype", norm["source_dtype"])
        for key in ("scale", "offset"):
            vals = norm[key]
            if not isinstance(vals, list) or not vals or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals):
                raise _fail(where + "." + key, "got %r" % (vals,), "Give a non-empty list of finite numbers, one per band.")
        if len(norm["scale"]) != len(norm["offset"]):
            raise _fail(where, "%d scales but %d offsets" % (len(norm["scale"]), len(norm["offset"])),
                        "Give one scale and one offset per band.")
        bands = self.shape[1] if len(self.shape) >= 2 else None
        if isinstance(bands, int) and len(norm["scale"]) not in (1, bands):
            raise _fail(where, "%d scales for %d bands (axis 1 of shape %r)" % (len(norm["scale"]), bands, self.shape),
                        "Give one value per band, or a single value for all bands.")

    def to_dict(self) -> Dict[str, Any]:
        """Return the JSON-ready dict (unknown fields included)."""
        out = dict(self.extra)
        out.update(name=self.name, dtype=self.dtype, shape=list(self.shape))
        if self.normalization is not None:
            out["normalization"] = self.normalization
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TensorSpec":
        """Build a spec from a dict, keeping unknown fields in ``extra``."""
        if not isinstance(data, Mapping):
            raise _fail("inputs/outputs", "each tensor must be an object, got %r" % (data,),
                        "Write {\"name\": ..., \"dtype\": ..., \"shape\": [...]}.")
        missing = [k for k in ("name", "dtype", "shape") if k not in data]
        if missing:
            raise _fail("tensor %r" % (data.get("name"),), "missing %s" % ", ".join(missing),
                        "Every tensor needs name, dtype and shape.")
        extra = {k: v for k, v in data.items() if k not in _SPEC_FIELDS}
        return cls(data["name"], data["dtype"], data["shape"], data.get("normalization"), extra)


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Manifest:
    """The typed content of ``manifest.json``; see ``docs/bundle.md`` for every field."""

    name: str
    version: int
    precision: str
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]
    files: Dict[str, str]
    metrics: Dict[str, float] = field(default_factory=dict)
    reference: Dict[str, Any] = field(default_factory=lambda: {"file": "reference.npz"})
    targets: List[str] = field(default_factory=list)
    min_runtime_version: str = "0.1.0"
    created: str = field(default_factory=_utc_now)
    format_version: int = FORMAT_VERSION
    plans: Optional[List[PlanEntry]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ``BundleError`` naming the field, the value and the fix."""
        if self.format_version != FORMAT_VERSION or isinstance(self.format_version, bool):
            raise _fail("format_version", "this runtime reads format %d, got %r" % (FORMAT_VERSION, self.format_version),
                        "Upgrade satedge to read newer bundles, or rebuild the bundle.")
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise _fail("name", "got %r" % (self.name,), "Use letters, digits, '.', '_' and '-', starting with a letter or digit.")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise _fail("version", "must be a positive int, got %r" % (self.version,), "Versions count up from 1.")
        if self.precision not in PRECISIONS:
            raise _fail("precision", "got %r" % (self.precision,), "Use one of: %s." % ", ".join(PRECISIONS))
        for key in ("inputs", "outputs"):
            specs = getattr(self, key)
            if not isinstance(specs, list) or not specs or not all(isinstance(s, TensorSpec) for s in specs):
                raise _fail(key, "must be a non-empty list of TensorSpec, got %r" % (specs,), "Describe every tensor.")
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise _fail(key, "duplicate tensor names in %r" % (names,), "Give every tensor a unique name.")
        if not isinstance(self.files, dict):
            raise _fail("files", "must map relative paths to sha256 hex", "Let pack_bundle write it.")
        for rel, digest in self.files.items():
            if (not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel
                    or any(p in ("", ".", "..") for p in rel.split("/")) or rel == MANIFEST_FILE):
                raise _fail("files", "bad path %r" % (rel,), "Paths are relative, '/'-separated, inside the bundle.")
            if not is_sha256_hex(digest):
                raise _fail("files[%r]" % rel, "not a lowercase sha256 hex digest: %r" % (digest,), "Let pack_bundle write it.")
        if not isinstance(self.metrics, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for k, v in self.metrics.items()):
            raise _fail("metrics", "got %r" % (self.metrics,), "Map metric names to finite numbers.")
        self.metrics = {k: float(v) for k, v in self.metrics.items()}
        if not isinstance(self.reference, dict):
            raise _fail("reference", "got %r" % (self.reference,), "Use {\"file\": \"reference.npz\"}.")
        if not isinstance(self.targets, list) or not all(isinstance(t, str) and t for t in self.targets):
            raise _fail("targets", "got %r" % (self.targets,), "Use a list of target profile names (may be empty).")
        if not isinstance(self.min_runtime_version, str) or not _SEMVER.match(self.min_runtime_version):
            raise _fail("min_runtime_version", "got %r" % (self.min_runtime_version,), "Use MAJOR.MINOR.PATCH, e.g. \"0.1.0\".")
        try:
            datetime.fromisoformat(self.created.replace("Z", "+00:00"))
        except (AttributeError, TypeError, ValueError):
            raise _fail("created", "not an ISO 8601 time: %r" % (self.created,), "Use e.g. \"2024-05-01T12:00:00Z\".") from None
        self._validate_plans()
        clash = sorted(set(self.extra) & set(_known_fields()))
        if clash:
            raise _fail("extra", "holds known field names %s" % clash, "Set those as attributes instead.")

    def _validate_plans(self) -> None:
        if self.plans is None:
            return
        if not isinstance(self.plans, list) or not all(isinstance(p, PlanEntry) for p in self.plans):
            raise _fail("plans", "must be a list of plan entries, got %r" % (self.plans,), "Let engines build write it.")
        seen: Dict[Any, str] = {}
        for plan in self.plans:
            if plan.file not in self.files:
                raise _fail("plans", "plan %s is not listed in files" % plan.file, "List it with its sha256.")
            if plan.key in seen:
                raise _fail("plans", "%s and %s have the same key (%s)" % (seen[plan.key], plan.file, plan.describe()),
                            "Keep one plan per (SM, TensorRT version, precision, DLA core).")
            seen[plan.key] = plan.file

    def input(self, name: str) -> TensorSpec:
        """Return the input spec called ``name`` (``BundleError`` listing the inputs if absent)."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise BundleError("engine %r has no input %r; its inputs are %s" % (self.name, name, [s.name for s in self.inputs]))

    def to_dict(self) -> Dict[str, Any]:
        """Return the JSON-ready dict; unknown fields from ``extra`` sit at the top level."""
        out = dict(self.extra)
        out.update(format_version=self.format_version, name=self.name, version=self.version,
                   precision=self.precision, inputs=[s.to_dict() for s in self.inputs],
                   outputs=[s.to_dict() for s in self.outputs], files=dict(self.files),
                   metrics=dict(self.metrics), reference=dict(self.reference), targets=list(self.targets),
                   min_runtime_version=self.min_runtime_version, created=self.created)
        if self.plans is not None:  # absent stays absent, so older manifests keep their canonical bytes
            out["plans"] = [p.to_dict() for p in self.plans]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        """Build a manifest from a dict; unknown fields go to ``extra``, missing ones raise."""
        if not isinstance(data, Mapping):
            raise BundleError("manifest must be a JSON object, got %s. Rebuild the bundle." % type(data).__name__)
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise BundleError("manifest is missing required field(s) %s; it has %s. Rebuild the bundle with "
                              "pack_bundle." % (", ".join(missing), sorted(data)))
        known = _known_fields()
        kwargs = {k: data[k] for k in known if k in data and k != "extra"}
        for key in ("inputs", "outputs"):
            if not isinstance(kwargs[key], list):
                raise _fail(key, "must be a list, got %r" % (kwargs[key],), "Describe every tensor.")
            kwargs[key] = [TensorSpec.from_dict(d) for d in kwargs[key]]
        if "plans" in kwargs:
            if not isinstance(kwargs["plans"], list):
                raise _fail("plans", "must be a list, got %r" % (kwargs["plans"],), "Let engines build write it.")
            kwargs["plans"] = [PlanEntry.from_dict(d) for d in kwargs["plans"]]
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs)

    def to_json(self, indent: Optional[int] = 2) -> str:
        """Return the manifest as JSON text with sorted keys (``indent=None``: canonical form)."""
        seps = (",", ":") if indent is None else (",", ": ")
        try:
            return json.dumps(self.to_dict(), sort_keys=True, indent=indent, separators=seps,
                              ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise BundleError("manifest cannot be written as JSON: %s. Keep extra fields to JSON "
                              "types (no NaN)." % exc) from None

    @classmethod
    def from_json(cls, text: Union[str, bytes]) -> "Manifest":
        """Parse manifest JSON text (``BundleError`` if it is not valid JSON or not a valid manifest)."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BundleError("manifest.json is not valid JSON (%s). Rebuild the bundle." % exc) from None
        return cls.from_dict(data)

    def canonical_bytes(self) -> bytes:
        """Return the canonical UTF-8 JSON (sorted keys, no whitespace) that a signature covers."""
        return self.to_json(indent=None).encode("utf-8")


def _known_fields() -> Tuple[str, ...]:
    return tuple(Manifest.__dataclass_fields__)
