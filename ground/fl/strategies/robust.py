"""Robust aggregation against faulty or poisoned satellites.

* :class:`NormClipping` wraps any strategy and scales each update down to an L2 norm of at most
  ``clip_norm`` (absolute) or ``clip_factor ×`` the round's median norm before the inner strategy
  sees it (clipping keeps an outsized update's direction but bounds its influence; rejecting it
  instead is the validator's ``max_norm``).
* :class:`TrimmedMean`: per coordinate, drop the ``⌊β·n⌋`` largest and smallest values and average
  the rest (Yin et al., 2018). Unweighted: ``num_examples`` could itself be forged.
* :class:`Median`: per-coordinate median (Yin et al., 2018). Unweighted.

With ``f`` poisoned clients out of ``n``, the trimmed mean is unaffected by them when
``⌊β·n⌋ >= f``; the median tolerates ``f < n/2``.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from engines.errors import UserError
from ground.fl.strategies.base import AggregateResult, ClientResult, Strategy, scale
from ground.fl.strategies.validation import update_norm


class NormClipping(Strategy):
    """Clip every update's L2 norm, then aggregate with ``inner``.

    Parameters
    ----------
    inner : Strategy
        The strategy that aggregates the clipped updates (its validator checks them).
    clip_norm : float, optional
        Absolute norm bound.
    clip_factor : float, optional
        Relative bound: ``clip_factor ×`` median norm of the round's finite updates.
    """

    name = "clip"

    def __init__(self, inner: Strategy, *, clip_norm: Optional[float] = None, clip_factor: Optional[float] = None) -> None:
        if (clip_norm is None) == (clip_factor is None) or not (clip_norm or clip_factor) > 0:
            raise UserError("NormClipping: give exactly one of clip_norm (absolute) or clip_factor (× median norm), > 0")
        super().__init__(validator=inner.validator)
        self.inner, self.clip_norm, self.clip_factor = inner, clip_norm, clip_factor

    def configure(self, round: int) -> Dict[str, object]:
        """The inner strategy's configuration."""
        return self.inner.configure(round)

    def aggregate(self, round: int, results: Sequence[ClientResult], failures: Sequence = ()) -> AggregateResult:
        """Clip the finite updates, then delegate to the inner strategy."""
        norms = []
        for r in results:
            try:
                norms.append(update_norm(r.update))
            except Exception:  # noqa: BLE001 - malformed: the inner validator rejects it
                norms.append(float("nan"))
        finite = [n for n in norms if np.isfinite(n)]
        bound = self.clip_norm if self.clip_norm is not None else self.clip_factor * float(np.median(finite or [0.0]))
        clipped, count = [], 0
        for r, n in zip(results, norms):
            if np.isfinite(n) and n > bound > 0:
                r = dataclasses.replace(r, update=scale(r.update, bound / n))
                count += 1
            clipped.append(r)
        out = self.inner.aggregate(round, clipped, failures)
        out.metrics.update(num_clipped=float(count), clip_bound=float(bound))
        return out

    def _combine(self, round: int, accepted: List[ClientResult]):  # pragma: no cover - aggregate() delegates
        raise NotImplementedError


def _stack(accepted: List[ClientResult], name: str) -> np.ndarray:
    return np.stack([np.asarray(r.update[name], dtype=np.float64) for r in accepted])


class TrimmedMean(Strategy):
    """Coordinate-wise trimmed mean.

    Parameters
    ----------
    trim_ratio : float
        ``β`` in [0, 0.5): fraction trimmed at each end (at least one value always remains).
    **kwargs
        Validation and ``server_lr`` options of :class:`~ground.fl.strategies.base.Strategy`.
    """

    name = "trimmed_mean"

    def __init__(self, trim_ratio: float = 0.1, **kwargs) -> None:
        if not 0.0 <= trim_ratio < 0.5:
            raise UserError(f"TrimmedMean: trim_ratio must be in [0, 0.5), got {trim_ratio}")
        super().__init__(**kwargs)
        self.trim_ratio = float(trim_ratio)

    def _combine(self, round: int, accepted: List[ClientResult]) -> Tuple[Optional[Dict[str, np.ndarray]], Dict]:
        if not accepted:
            return None, {}
        n = len(accepted)
        cut = min(int(np.floor(self.trim_ratio * n)), (n - 1) // 2)
        delta = {}
        for name in accepted[0].update:
            ordered = np.sort(_stack(accepted, name), axis=0)
            delta[name] = ordered[cut: n - cut].mean(axis=0).astype(np.float32)
        return scale(delta, self.server_lr), {"trimmed_per_side": float(cut)}


class Median(Strategy):
    """Coordinate-wise median of the accepted updates."""

    name = "median"

    def _combine(self, round: int, accepted: List[ClientResult]) -> Tuple[Optional[Dict[str, np.ndarray]], Dict]:
        if not accepted:
            return None, {}
        delta = {name: np.median(_stack(accepted, name), axis=0).astype(np.float32) for name in accepted[0].update}
        return scale(delta, self.server_lr), {}
