"""TensorRT plans in a bundle: manifest entries, the plan header, and the compatibility check.

A plan runs only on the TensorRT version and GPU architecture (SM) it was built for, so every plan
is listed in the manifest under ``plans`` with the key (SM, TensorRT version, precision, DLA core).
``check_plan_compatible`` compares that entry with the runtime and raises ``PlanIncompatible``
before anything is deserialized. ``read_plan_header`` reads the TensorRT version from the plan's
own first bytes without TensorRT; it is the second line of defence (see ``docs/bundle.md``, "Plan
header", for what is known about that layout and where it comes from).
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from engines.errors import BundleError, PlanIncompatible

PLAN_PRECISIONS = ("fp32", "fp16", "int8")  # same as engines.manifest.PRECISIONS (a test checks)
PLAN_MAGIC = struct.pack("<I", 0x74727466)  # b"ftrt": NVIDIA trtexec's kPLAN_FILE_TAG, little-endian
HEADER_BYTES = 28
VERSION_OFFSET = 24
VERSION_COMPATIBLE_SINCE = (8, 6)
_VERSION = re.compile(r"^\d+(\.\d+){1,3}$")
_REQUIRED = ("file", "sm", "trt_version", "precision", "dla_core")
_OPTIONAL = {"target": None, "version_compatible": False, "built_with": None}


def parse_version(text: str) -> Tuple[int, ...]:
    """Return ``"10.3.0.26"`` as ``(10, 3, 0, 26)``; ``BundleError`` if it is not dotted numbers."""
    if not isinstance(text, str) or not _VERSION.match(text):
        raise BundleError("TensorRT version %r is not MAJOR.MINOR[.PATCH[.BUILD]]; write it as "
                          "tensorrt.__version__ prints it, e.g. \"8.2.1.8\"." % (text,))
    return tuple(int(p) for p in text.split("."))


def normalize_sm(value: Union[str, int, Sequence[int]]) -> str:
    """Return a GPU architecture as ``"MAJOR.MINOR"``: accepts ``"8.7"``, ``"sm_87"``, ``87``, ``(8, 7)``, ``110``."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return "%d.%d" % (value[0], value[1])
    text = str(value).strip().lower().replace("sm_", "").replace("sm", "")
    if re.match(r"^\d+\.\d$", text):
        return text
    if text.isdigit() and len(text) >= 2:
        return "%d.%d" % (int(text) // 10, int(text) % 10)
    raise BundleError("GPU architecture %r is not understood; write it as \"8.7\" (compute capability), "
                      "\"sm_87\" or 87." % (value,))


def same_release(a: str, b: str) -> bool:
    """Tell whether two TensorRT versions are the same release (MAJOR.MINOR.PATCH; BUILD ignored)."""
    return parse_version(a)[:3] == parse_version(b)[:3]


@dataclass(frozen=True)
class PlanEntry:
    """One ``plans`` entry of the manifest; see ``docs/bundle.md`` for every field.

    Parameters
    ----------
    file : str
        Path of the plan inside the bundle, under ``plans/``.
    sm : str
        GPU compute capability it was built on, ``"MAJOR.MINOR"`` (normalized on creation).
    trt_version : str
        ``tensorrt.__version__`` of the builder, e.g. ``"8.2.1.8"``.
    precision : str
        ``"fp32"``, ``"fp16"`` or ``"int8"``.
    dla_core : int or None
        DLA core the plan targets (with GPU fallback), or None for the GPU.
    target : str, optional
        Target profile name (``docs/targets.md``) it was built for.
    version_compatible : bool, optional
        Built with TensorRT's version-compatible flag (runs on later runtimes, 8.6 and up).
    built_with : dict, optional
        Free-form build facts: host, device name, CUDA version, layers that fell back to the GPU.
    """

    file: str
    sm: str
    trt_version: str
    precision: str
    dla_core: Optional[int]
    target: Optional[str] = None
    version_compatible: bool = False
    built_with: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    present: FrozenSet[str] = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        where = "plans[%r]" % (self.file,)
        if not isinstance(self.file, str) or not self.file.startswith("plans/") or ".." in self.file.split("/"):
            raise BundleError("%s: plan files live under plans/ in the bundle, got %r." % (where, self.file))
        object.__setattr__(self, "sm", normalize_sm(self.sm))
        parse_version(self.trt_version)
        if self.precision not in PLAN_PRECISIONS:
            raise BundleError("%s: precision %r; use one of %s." % (where, self.precision, ", ".join(PLAN_PRECISIONS)))
        if self.dla_core is not None and (isinstance(self.dla_core, bool) or not isinstance(self.dla_core, int)
                                          or self.dla_core < 0):
            raise BundleError("%s: dla_core must be null (GPU) or a core index >= 0, got %r." % (where, self.dla_core))
        if not isinstance(self.version_compatible, bool):
            raise BundleError("%s: version_compatible must be true or false." % where)
        if self.built_with is not None and not isinstance(self.built_with, dict):
            raise BundleError("%s: built_with must be an object." % where)

    @property
    def key(self) -> Tuple[str, Tuple[int, ...], str, Optional[int]]:
        """The identity of a plan: (SM, TensorRT MAJOR.MINOR.PATCH, precision, DLA core)."""
        return (self.sm, parse_version(self.trt_version)[:3], self.precision, self.dla_core)

    def describe(self) -> str:
        """A short human label, e.g. ``"SM 8.7, TensorRT 10.3.0.26, int8, DLA 0"``."""
        return "SM %s, TensorRT %s, %s, %s%s" % (self.sm, self.trt_version, self.precision,
                                                 "GPU" if self.dla_core is None else "DLA %d" % self.dla_core,
                                                 ", version-compatible" if self.version_compatible else "")

    def to_dict(self) -> Dict[str, Any]:
        """Return the JSON-ready dict; optional fields appear when set or when they were read."""
        out = dict(self.extra)
        out.update(file=self.file, sm=self.sm, trt_version=self.trt_version, precision=self.precision,
                   dla_core=self.dla_core)
        for name, default in _OPTIONAL.items():
            value = getattr(self, name)
            if value != default or name in self.present:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PlanEntry":
        """Build an entry from a manifest dict, keeping unknown fields in ``extra``."""
        if not isinstance(data, Mapping):
            raise BundleError("each plans entry must be an object, got %r." % (data,))
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise BundleError("plans entry %r is missing %s; every plan needs %s." %
                              (data.get("file"), ", ".join(missing), ", ".join(_REQUIRED)))
        known = set(_REQUIRED) | set(_OPTIONAL)
        kwargs = {k: data[k] for k in known if k in data}
        return cls(extra={k: v for k, v in data.items() if k not in known},
                   present=frozenset(k for k in _OPTIONAL if k in data), **kwargs)


@dataclass(frozen=True)
class PlanHeader:
    """What the first bytes of a serialized plan say (``read_plan_header``).

    ``recognised`` is true only for the layout documented in ``docs/bundle.md``; then
    ``trt_version`` is ``"MAJOR.MINOR.PATCH.BUILD"``. Otherwise ``trt_version`` is None and
    ``note`` says why.
    """

    recognised: bool
    trt_version: Optional[str]
    magic: bytes
    container_version: Optional[int]
    note: str


def read_plan_header(path_or_bytes: Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]) -> PlanHeader:
    """Read the TensorRT version from a serialized plan's header, without TensorRT.

    Parameters
    ----------
    path_or_bytes : bytes or path
        The plan bytes (only the first 28 are looked at) or the path of a plan file.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        head = bytes(path_or_bytes[:HEADER_BYTES])
    else:
        with open(path_or_bytes, "rb") as fh:
            head = fh.read(HEADER_BYTES)
    magic = head[:4]
    if len(head) < HEADER_BYTES:
        return PlanHeader(False, None, magic, None, "only %d bytes; a plan header has %d" % (len(head), HEADER_BYTES))
    if magic != PLAN_MAGIC:
        return PlanHeader(False, None, magic, None, "first bytes %r are not the plan tag %r (not a plan, or an "
                          "older layout this reader does not know)" % (magic, PLAN_MAGIC))
    container = struct.unpack_from("<I", head, 4)[0]
    if container != 0:
        return PlanHeader(False, None, magic, container, "plan container version %d; only version 0 has a "
                          "known version field" % container)
    major, minor, patch, build = head[VERSION_OFFSET:VERSION_OFFSET + 4]
    if not 8 <= major <= 99:
        return PlanHeader(False, None, magic, container, "version bytes %d.%d.%d.%d are not a TensorRT release "
                          "this reader knows" % (major, minor, patch, build))
    return PlanHeader(True, "%d.%d.%d.%d" % (major, minor, patch, build), magic, container, "plan container v0")


def _trt_ok(built: str, runtime: str, version_compatible: bool) -> bool:
    b, r = parse_version(built)[:3], parse_version(runtime)[:3]
    if not version_compatible:
        return b == r
    return b[:2] >= VERSION_COMPATIBLE_SINCE and r[:2] >= VERSION_COMPATIBLE_SINCE and r >= b


def check_plan_compatible(entry: PlanEntry, runtime_trt_version: str, runtime_sm: Union[str, int, Sequence[int]],
                          header: Optional[PlanHeader] = None) -> None:
    """Refuse a plan that cannot run here, before it is deserialized.

    The manifest entry is checked first (SM must match exactly; TensorRT MAJOR.MINOR.PATCH must
    match, or for a version-compatible plan the runtime must be the same or newer and 8.6 or up).
    When ``header`` is given and recognised, its TensorRT version must agree with the entry.

    Raises
    ------
    PlanIncompatible
        Naming the plan's and the runtime's TensorRT versions and SMs.
    """
    sm = normalize_sm(runtime_sm)
    here = "this device has SM %s and TensorRT %s" % (sm, runtime_trt_version)
    if entry.sm != sm:
        raise PlanIncompatible("plan %s was built for SM %s (TensorRT %s) but %s; a plan only runs on the GPU "
                               "architecture it was built for. Build one on a unit with SM %s ('satedge engines "
                               "build BUNDLE --target PROFILE')." % (entry.file, entry.sm, entry.trt_version, here, sm))
    if not _trt_ok(entry.trt_version, runtime_trt_version, entry.version_compatible):
        rule = ("needs a runtime of the same or a newer release, 8.6 or up" if entry.version_compatible
                else "needs exactly that TensorRT release")
        raise PlanIncompatible("plan %s was built with TensorRT %s (SM %s) but %s; it %s. Rebuild it with TensorRT "
                               "%s on the target's JetPack." % (entry.file, entry.trt_version, entry.sm, here, rule,
                                                                runtime_trt_version))
    if header is not None and header.recognised and not same_release(header.trt_version, entry.trt_version):
        raise PlanIncompatible("plan %s: its header says TensorRT %s but its manifest entry says TensorRT %s (%s); "
                               "the file does not match its entry. Rebuild the plan." %
                               (entry.file, header.trt_version, entry.trt_version, here))


def select_plan(plans: Iterable[PlanEntry], runtime_trt_version: str, runtime_sm: Union[str, int, Sequence[int]],
                precision: Optional[str] = None, dla_core: Optional[int] = None) -> PlanEntry:
    """Pick the plan that runs here (exact release before version-compatible); ``PlanIncompatible`` lists them all."""
    plans = list(plans)
    wanted = [p for p in plans if p.dla_core == dla_core and (precision is None or p.precision == precision)]
    ok: List[PlanEntry] = []
    for plan in wanted:
        try:
            check_plan_compatible(plan, runtime_trt_version, runtime_sm)
        except PlanIncompatible:
            continue
        ok.append(plan)
    ok.sort(key=lambda p: (p.version_compatible, p.file))
    if ok:
        return ok[0]
    listed = "; ".join("%s (%s)" % (p.file, p.describe()) for p in plans) or "none"
    raise PlanIncompatible("no plan in this bundle runs here: this device has SM %s and TensorRT %s, asked for "
                           "precision %s on %s. Plans: %s. Build one with 'satedge engines build'." %
                           (normalize_sm(runtime_sm), runtime_trt_version, precision or "any",
                            "GPU" if dla_core is None else "DLA %d" % dla_core, listed))
