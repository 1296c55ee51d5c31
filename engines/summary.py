"""Human-readable views of bundles: ``describe_bundle`` (for ``inspect``) and ``manifest_diff`` (for ``diff``)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from engines.bundle import Bundle
from engines.manifest import Manifest, TensorSpec

_SCALARS = ("format_version", "name", "version", "precision", "targets", "min_runtime_version", "created")


def _size(nbytes: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return ("%d %s" % (nbytes, unit)) if unit == "B" else ("%.1f %s" % (nbytes, unit))
        nbytes /= 1000.0
    return ""


def _spec(s: TensorSpec) -> str:
    text = "%s %s(%s)" % (s.name, s.dtype, ", ".join(str(d) for d in s.shape))
    if s.normalization:
        text += "  <- %s * scale + offset (%d band values)" % (s.normalization["source_dtype"],
                                                              len(s.normalization["scale"]))
    return text


def describe_bundle(bundle: Bundle, signer: Optional[str] = None, verified: bool = False) -> str:
    """Return a multi-line summary: name, version, precision, I/O, files, plans, signature, metrics.

    Parameters
    ----------
    bundle : Bundle
        An opened bundle.
    signer : str, optional
        The key id in ``manifest.sig`` (None: unsigned).
    verified : bool, optional
        Whether that signature was checked against trusted keys.
    """
    m = bundle.manifest
    lines = ["bundle     %s v%d (%s)  %s" % (m.name, m.version, m.precision, bundle.path),
             "created    %s   min runtime %s   format %d" % (m.created, m.min_runtime_version, m.format_version),
             "targets    %s" % (", ".join(m.targets) or "(none)")]
    lines += ["input      " + _spec(s) for s in m.inputs]
    lines += ["output     " + _spec(s) for s in m.outputs]
    for rel, digest in sorted(m.files.items()):
        lines.append("file       %-40s %9s  sha256 %s..." % (rel, _size((bundle.path / rel).stat().st_size), digest[:12]))
    for plan in m.plans or []:
        lines.append("plan       %-40s %s%s" % (plan.file, plan.describe(), "  target %s" % plan.target if plan.target else ""))
    if not m.plans:
        lines.append("plans      (none: ONNX only; build with 'satedge engines build')")
    if signer is None:
        lines.append("signature  none (unsigned)")
    else:
        lines.append("signature  ed25519 key id %s (%s)" % (signer, "verified" if verified else "not verified: no --key"))
    metrics = ", ".join("%s=%g" % kv for kv in sorted(m.metrics.items()))
    lines.append("metrics    %s" % (metrics or "(none)"))
    extra = sorted(m.extra)
    if extra:
        lines.append("other      %s" % ", ".join(extra))
    return "\n".join(lines)


def _by(items: List[Dict[str, Any]], key: str) -> Dict[Any, Dict[str, Any]]:
    return {item.get(key): item for item in items}


def _keyed_diff(label: str, a: Dict[Any, Any], b: Dict[Any, Any], show=str) -> List[str]:
    out = ["%s: - %s" % (label, k) for k in sorted(set(a) - set(b), key=str)]
    out += ["%s: + %s" % (label, k) for k in sorted(set(b) - set(a), key=str)]
    out += ["%s: ~ %s (%s -> %s)" % (label, k, show(a[k]), show(b[k]))
            for k in sorted(set(a) & set(b), key=str) if a[k] != b[k]]
    return out


def manifest_diff(a: Manifest, b: Manifest) -> List[str]:
    """Return one line per manifest-level difference from ``a`` to ``b`` (empty when equal).

    Lines read ``field: old -> new``, ``files: + path`` (added), ``- path`` (removed) or
    ``~ path (sha -> sha)`` (changed), and likewise for tensors, plans, metrics and other fields.
    """
    da, db = a.to_dict(), b.to_dict()
    out = ["%s: %s -> %s" % (k, da.get(k), db.get(k)) for k in _SCALARS if da.get(k) != db.get(k)]
    for kind in ("inputs", "outputs"):
        out += _keyed_diff(kind, _by(da[kind], "name"), _by(db[kind], "name"))
    out += _keyed_diff("files", da["files"], db["files"], show=lambda h: h[:12])
    out += _keyed_diff("plans", _by(da.get("plans") or [], "file"), _by(db.get("plans") or [], "file"),
                       show=lambda p: "%s %s %s dla=%s" % (p["sm"], p["trt_version"], p["precision"], p["dla_core"]))
    ma, mb = da["metrics"], db["metrics"]
    out += ["metrics: - %s" % k for k in sorted(set(ma) - set(mb))]
    out += ["metrics: + %s = %g" % (k, mb[k]) for k in sorted(set(mb) - set(ma))]
    out += ["metrics: ~ %s %g -> %g (%+g)" % (k, ma[k], mb[k], mb[k] - ma[k])
            for k in sorted(set(ma) & set(mb)) if ma[k] != mb[k]]
    if da["reference"] != db["reference"]:
        out.append("reference: %s -> %s" % (da["reference"], db["reference"]))
    out += _keyed_diff("other", a.extra, b.extra)
    return out
