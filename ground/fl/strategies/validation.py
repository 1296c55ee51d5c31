"""Checks every client update passes before a strategy may use it; rejections carry a reason.

Reasons (stable strings, counted as ``rejected_<reason>`` in the round metrics):

``malformed``
    The update is not a mapping of layer name to numeric array.
``bad_num_examples``
    ``num_examples`` is not a positive integer (it is a FedAvg weight).
``missing_layer`` / ``unknown_layer`` / ``wrong_shape``
    The layers differ from the model's (the server's shapes, or when none were given, the shapes
    most clients of the round sent).
``non_finite``
    A NaN or an infinity anywhere in the update.
``norm_above_bound``
    The L2 norm of the whole update exceeds ``max_norm``, or ``max_norm_factor`` times the
    median norm of the round's otherwise valid updates.
``stale`` (buffered asynchronous strategies)
    The update was computed on a model more than ``max_staleness`` versions old.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from engines.errors import UserError

MALFORMED = "malformed"
BAD_NUM_EXAMPLES = "bad_num_examples"
MISSING_LAYER = "missing_layer"
UNKNOWN_LAYER = "unknown_layer"
WRONG_SHAPE = "wrong_shape"
NON_FINITE = "non_finite"
NORM_ABOVE_BOUND = "norm_above_bound"
STALE = "stale"
REASONS = (MALFORMED, BAD_NUM_EXAMPLES, MISSING_LAYER, UNKNOWN_LAYER, WRONG_SHAPE, NON_FINITE, NORM_ABOVE_BOUND, STALE)


def update_norm(update: Mapping[str, np.ndarray]) -> float:
    """L2 norm of a whole update (all layers together), computed in float64."""
    return float(np.sqrt(sum(float(np.sum(np.square(np.asarray(v, dtype=np.float64)))) for v in update.values())))


def _signature(update) -> Optional[Tuple[Tuple[str, Tuple[int, ...]], ...]]:
    if not isinstance(update, Mapping) or not update:
        return None
    try:
        arrays = {str(k): np.asarray(v) for k, v in update.items()}
    except Exception:  # noqa: BLE001 - anything that is not array-like is malformed
        return None
    if any(a.dtype.kind not in "fiu" for a in arrays.values()):
        return None
    return tuple(sorted((k, a.shape) for k, a in arrays.items()))


class UpdateValidator:
    """Split a round's client results into accepted and rejected ones.

    Parameters
    ----------
    shapes : mapping of str to tuple, optional
        The model's layer shapes. Without them, the most common layer signature of the round is
        the reference (so one odd client cannot impose its shapes on the others).
    max_norm : float, optional
        Absolute bound on the update's L2 norm.
    max_norm_factor : float, optional
        Relative bound: reject norms above ``factor × median`` of the round's valid updates
        (applied when at least 3 updates are valid).
    """

    def __init__(self, shapes: Optional[Mapping[str, Sequence[int]]] = None, *, max_norm: Optional[float] = None,
                 max_norm_factor: Optional[float] = None) -> None:
        if max_norm is not None and not max_norm > 0:
            raise UserError(f"max_norm must be positive (or None to disable), got {max_norm}")
        if max_norm_factor is not None and not max_norm_factor >= 1:
            raise UserError(f"max_norm_factor must be >= 1 (a multiple of the median norm), got {max_norm_factor}")
        self.shapes = None if shapes is None else {str(k): tuple(int(d) for d in v) for k, v in shapes.items()}
        self.max_norm = max_norm
        self.max_norm_factor = max_norm_factor

    def _reference(self, results: Sequence) -> Optional[Dict[str, Tuple[int, ...]]]:
        if self.shapes is not None:
            return self.shapes
        signatures = [s for s in (_signature(r.update) for r in results) if s is not None]
        if not signatures:
            return None
        best = Counter(signatures).most_common(1)[0][0]
        return dict(best)

    def reason(self, result, reference: Optional[Mapping[str, Tuple[int, ...]]]) -> Optional[str]:
        """The rejection reason of one result, or None when it passes the per-update checks."""
        if _signature(result.update) is None or reference is None:
            return MALFORMED
        n = result.num_examples
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            return BAD_NUM_EXAMPLES
        names = {str(k) for k in result.update}
        if set(reference) - names:
            return MISSING_LAYER
        if names - set(reference):
            return UNKNOWN_LAYER
        for key, value in result.update.items():
            if np.shape(value) != reference[str(key)]:
                return WRONG_SHAPE
        if not all(np.isfinite(np.asarray(v)).all() for v in result.update.values()):
            return NON_FINITE
        if self.max_norm is not None and update_norm(result.update) > self.max_norm:
            return NORM_ABOVE_BOUND
        return None

    def split(self, results: Sequence) -> Tuple[List, List[Tuple[str, str]]]:
        """Return ``(accepted results, [(client_id, reason), ...])`` in the input order."""
        reference = self._reference(results)
        accepted, rejected = [], []
        for result in results:
            why = self.reason(result, reference)
            if why is None:
                accepted.append(result)
            else:
                rejected.append((result.client_id, why))
        if self.max_norm_factor is not None and len(accepted) >= 3:
            norms = [update_norm(r.update) for r in accepted]
            bound = self.max_norm_factor * float(np.median(norms))
            rejected += [(r.client_id, NORM_ABOVE_BOUND) for r, nrm in zip(accepted, norms) if nrm > bound]
            accepted = [r for r, nrm in zip(accepted, norms) if nrm <= bound]
        return accepted, rejected
