"""Compare backends on a bundle's reference vectors, against tolerances named per precision.

Each backend runs the bundle's reference inputs; each output is compared with the bundle's
reference output (what the ground produced) as max and mean absolute error. An output passes
when its max absolute error is within the tolerance of the precision it ran at:

- ``fp32``: 1e-4 -- two float32 implementations of the same graph (summation order only).
- ``fp16``: 1e-2 -- about ten half-precision ulps at 1.0 (fp16 has an 11-bit significand).
- ``int8``: 5e-2 -- two INT8 implementations of the same Q/DQ graph may round one intermediate
  value to the neighbouring quantization step; for outputs in [0, 1] or logits of a few units this
  is one to two output steps of a symmetric 8-bit scale (range/127 ~ 0.024 for +-3).

Integer and boolean outputs (class maps, flags) must match exactly. Torch-vs-ONNX-Runtime
comparison belongs to the ground side, not here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from engines.bundle import Bundle
from engines.errors import SatedgeError, UserError
from engines.runners import BACKENDS, runner_for

TOLERANCES: Dict[str, float] = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}


@dataclass
class OutputError:
    """How far one output of one backend is from the bundle's reference output."""

    backend: str
    output: str
    max_abs: float
    mean_abs: float
    tolerance: float
    passed: bool


@dataclass
class CompareReport:
    """Result of ``compare_backends``: one ``OutputError`` per (backend, output), and failures by backend."""

    bundle: str
    precision: str
    errors: List[OutputError] = field(default_factory=list)
    failures: Dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every backend ran and every output was within tolerance."""
        return not self.failures and all(e.passed for e in self.errors)

    def format(self) -> str:
        """A plain-text table, one line per (backend, output), then the backends that failed to run."""
        lines = ["%-10s %-20s %12s %12s %10s  %s" % ("backend", "output", "max_abs", "mean_abs", "tolerance", "ok")]
        for e in self.errors:
            lines.append("%-10s %-20s %12.3e %12.3e %10.1e  %s" % (e.backend, e.output, e.max_abs, e.mean_abs,
                                                                   e.tolerance, "yes" if e.passed else "NO"))
        for backend, why in self.failures.items():
            lines.append("%-10s did not run: %s" % (backend, why))
        return "\n".join(lines)


def _errors(backend: str, got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], tol: float) -> List[OutputError]:
    out = []
    for name, ref in want.items():
        if name not in got:
            out.append(OutputError(backend, name, float("inf"), float("inf"), tol, False))
            continue
        value = np.asarray(got[name])
        if value.shape != ref.shape:
            out.append(OutputError(backend, name, float("inf"), float("inf"), tol, False))
            continue
        exact = ref.dtype.kind in "biu"
        diff = np.abs(value.astype(np.float64) - ref.astype(np.float64))
        max_abs = float(diff.max()) if diff.size else 0.0
        mean_abs = float(diff.mean()) if diff.size else 0.0
        limit = 0.0 if exact else tol
        out.append(OutputError(backend, name, max_abs, mean_abs, limit, bool(max_abs <= limit)))
    return out


def compare_backends(bundle: Bundle, backends: Sequence[str] = ("onnxrt", "reference"),
                     tolerances: Optional[Mapping[str, float]] = None, precision: Optional[str] = None,
                     runner_kw: Optional[Mapping[str, Mapping[str, Any]]] = None) -> CompareReport:
    """Run ``backends`` on the bundle's reference inputs and compare each output with the reference.

    Parameters
    ----------
    bundle : Bundle
        An opened bundle.
    backends : sequence of str
        Backend names from ``engines.runners.BACKENDS``.
    tolerances : dict, optional
        Overrides of ``TOLERANCES`` by precision name.
    precision : str, optional
        Precision whose tolerance applies; the manifest's ``precision`` by default (a TensorRT run
        uses the precision of the plan it picked).
    runner_kw : dict, optional
        Extra keyword arguments per backend, e.g. ``{"tensorrt": {"dla_core": 0}}``.

    Returns
    -------
    CompareReport
        A backend that cannot run here (no TensorRT, no reference op) is listed in ``failures``
        with the reason rather than raising, so one run reports on every backend.
    """
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise UserError("unknown backend(s) %s; choose from %s." % (unknown or "(none given)", ", ".join(BACKENDS)))
    tols = dict(TOLERANCES)
    tols.update(tolerances or {})
    inputs, want = bundle.reference()
    report = CompareReport(bundle=str(bundle.path), precision=precision or bundle.manifest.precision)
    for backend in backends:
        try:
            with runner_for(bundle, backend, **dict((runner_kw or {}).get(backend, {}))) as runner:
                got = runner.infer(inputs)
                entry = getattr(runner, "entry", None)
        except SatedgeError as exc:
            report.failures[backend] = str(exc)
            continue
        prec = precision or (entry.precision if entry is not None else bundle.manifest.precision)
        if prec not in tols:
            raise UserError("no tolerance for precision %r; give one with tolerances={%r: ...}." % (prec, prec))
        report.errors.extend(_errors(backend, got, want, tols[prec]))
    return report
