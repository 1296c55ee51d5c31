"""The checks an engine in the store must pass: intact, runnable on this unit, canary, health.

A slot is *intact* when its bundle opens with a trusted signature and every SHA-256 matching. A
bundle with TensorRT plans must carry at least one that this unit's TensorRT and GPU can load
(``RuntimeInfo``). The *canary* runs the bundle's reference inputs and compares the outputs with
its reference outputs, within the tolerance of its precision (``TOLERANCES``). The *health*
checks run on the newly active engine: a hook, or the canary again. ``docs/store.md`` describes
where each check sits in an install.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from engines.bundle import Bundle
from engines.errors import BundleError, PlanIncompatible

# Max abs error of the canary, per precision. engines.compare.TOLERANCES has the same fp16 and
# int8 values but fp32 1e-4, and is not used here on purpose: compare measures two backends on
# one lab machine, where fp32 differs by summation order only. The canary is a go/no-go gate on
# the flight unit against reference outputs the ground recorded with another build (other CPU
# ISA, kernels, fused multiply-adds); a false failure there keeps a good engine from flying.
TOLERANCES = {"fp32": 1e-3, "fp16": 1e-2, "int8": 5e-2}
__all__ = ["RuntimeInfo", "SlotChecks", "TOLERANCES"]


@dataclass(frozen=True)
class RuntimeInfo:
    """What this unit can run: TensorRT version (``"8.6.2"``) and GPU SM (``"87"``); None if absent."""

    trt_version: Optional[str] = None
    sm: Optional[str] = None


@dataclass(frozen=True)
class SlotChecks:
    """The store's checks, with what they need: trusted keys, this unit's runtime, canary and health settings.

    Parameters
    ----------
    keys : sequence of Ed25519PublicKey
        Loaded public keys whose signatures are accepted.
    runtime : RuntimeInfo
        The TensorRT version and SM of this unit, for the plan compatibility check.
    canary_backend : str
        Runner backend for the canary and the default health check.
    health_check : callable or None
        ``health_check(bundle) -> bool``; None runs the canary instead.
    health_checks : int
        How many health checks must pass.
    """

    keys: Sequence[Any]
    runtime: RuntimeInfo
    canary_backend: str
    health_check: Optional[Callable[[Bundle], Any]]
    health_checks: int

    def open(self, path: Path) -> Bundle:
        """Open the bundle at ``path`` with its signature and every SHA-256 verified."""
        return Bundle.open(path, verify=True, trusted_keys=list(self.keys))

    def intact(self, engine_dir: Path, slot: str) -> Tuple[Optional[Bundle], str]:
        """Return ``(bundle, "ok")`` if ``slot`` verifies, else ``(None, why)``."""
        try:
            return self.open(engine_dir / slot), "ok"
        except BundleError as exc:
            return None, str(exc)

    def check_plans(self, bundle: Bundle) -> None:
        """Refuse a bundle with TensorRT plans none of which runs on this unit (checked before loading)."""
        m, trt, sm = bundle.manifest, self.runtime.trt_version, self.runtime.sm
        raw = getattr(m, "plans", None) or m.extra.get("plans") or []
        if not raw or trt is None or sm is None:  # no plans, or no TensorRT here: the ONNX model is used
            return
        from engines.plan import PlanEntry, check_plan_compatible, read_plan_header

        problems = []
        for entry in [p if isinstance(p, PlanEntry) else PlanEntry.from_dict(p) for p in raw]:
            try:
                check_plan_compatible(entry, trt, sm, header=read_plan_header(bundle.file_path(entry.file)))
                return
            except PlanIncompatible as exc:
                problems.append(str(exc))
        raise PlanIncompatible("engine %r v%d: none of its TensorRT plans runs on this unit (TensorRT %s, SM %s): "
                               "%s" % (m.name, m.version, trt, sm, " | ".join(problems)))

    def canary(self, bundle: Bundle) -> Tuple[bool, str, float]:
        """Run the reference inputs and compare with the reference outputs within the precision's tolerance.

        Returns
        -------
        (bool, str, float)
            Passed, a sentence saying why, and the max absolute error (inf when it could not be measured).
        """
        from engines.runners import runner_for

        tol = TOLERANCES[bundle.manifest.precision]
        # intra_op_threads=1 for onnxrt only: the other runners do not take it, and runner_for
        # refuses a keyword its backend does not take.
        kw: Dict[str, Any] = {"intra_op_threads": 1} if self.canary_backend == "onnxrt" else {}
        try:
            inputs, expected = bundle.reference()
            with runner_for(bundle, backend=self.canary_backend, **kw) as runner:
                got = runner.infer(inputs)
        except Exception as exc:  # whatever the engine raises is a failed canary, not a store crash
            return False, "the %s runner failed on the reference inputs (%s: %s)" % (
                self.canary_backend, type(exc).__name__, exc), float("inf")
        worst = 0.0
        for out, ref in expected.items():
            a, b = np.asarray(got.get(out, np.nan), np.float64), np.asarray(ref, np.float64)
            if a.shape != b.shape or np.any(np.isnan(a) != np.isnan(b)):
                return False, "output %r is %s%s, the reference %s%s (shape or NaN mismatch)" % (
                    out, a.dtype, a.shape, b.dtype, b.shape), float("inf")
            worst = max(worst, float(np.max(np.abs(np.nan_to_num(a - b)), initial=0.0)))
            if worst > tol:
                return False, "output %r differs from the reference by %.3g > %g (%s tolerance)" % (
                    out, worst, tol, bundle.manifest.precision), worst
        return True, "max abs error %.3g <= %g" % (worst, tol), worst

    def health(self, path: Path) -> Tuple[bool, str]:
        """Verify the slot at ``path``, then run ``health_checks`` checks on it; return ``(passed, why)``."""
        bundle, msg = self.intact(path.parent, path.name)
        if bundle is None:
            return False, "slot %s failed verification: %s" % (path.name, msg)
        for i in range(self.health_checks):
            try:
                passed = (self.health_check(bundle) if self.health_check else self.canary(bundle)[0])
            except Exception as exc:  # a raising hook is a failed check
                return False, "health check %d/%d raised %s: %s" % (i + 1, self.health_checks, type(exc).__name__, exc)
            if not passed:
                return False, "health check %d/%d failed" % (i + 1, self.health_checks)
        return True, "%d health checks passed" % self.health_checks
