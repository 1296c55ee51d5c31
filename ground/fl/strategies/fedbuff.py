"""FedBuff (Nguyen et al., AISTATS 2022): buffered asynchronous aggregation with staleness weights.

Satellites upload whenever they meet a ground station, each on the model version it last
received; ``staleness`` is how many server versions came out since. Every arriving update that
passes validation goes into a buffer, discounted by ``s(τ) = 1 / (1 + sqrt(τ))``; once ``K``
updates are buffered the server applies::

    Δ = server_lr · Σ_i n_i · s(τ_i) · Δ_i / Σ_i n_i       (n_i = 1 when weight_by_examples is False)

and empties the buffer. The normalisation is by the examples, not by the discounted weights, so
stale updates move the model less rather than being renormalised back to full size (as FedBuff
divides by K). Updates staler than ``max_staleness`` are rejected with reason ``stale``.
Each call to :meth:`aggregate` adds its results to the buffer and flushes everything buffered
when there are at least ``K``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from engines.errors import UserError
from ground.fl.strategies.base import ClientResult, Strategy
from ground.fl.strategies.validation import MALFORMED, STALE


def staleness_weight(staleness: float) -> float:
    """``1 / (1 + sqrt(staleness))``: 1 for a fresh update, 0.5 at staleness 1, 1/3 at 4."""
    return 1.0 / (1.0 + math.sqrt(max(0.0, float(staleness))))


class FedBuff(Strategy):
    """Buffered asynchronous aggregation.

    Parameters
    ----------
    buffer_size : int
        ``K``: updates buffered before the server model changes.
    max_staleness : int
        Updates with a larger staleness are rejected (reason ``stale``).
    weight_by_examples : bool
        Weight buffered updates by ``num_examples`` as well as by staleness.
    **kwargs
        Validation and ``server_lr`` options of :class:`~ground.fl.strategies.base.Strategy`.
    """

    name = "fedbuff"

    def __init__(self, buffer_size: int = 10, *, max_staleness: int = 10, weight_by_examples: bool = True,
                 **kwargs) -> None:
        if buffer_size < 1 or max_staleness < 0:
            raise UserError(f"FedBuff: buffer_size must be >= 1 and max_staleness >= 0, got "
                            f"{buffer_size} and {max_staleness}")
        super().__init__(**kwargs)
        self.buffer_size = int(buffer_size)
        self.max_staleness = int(max_staleness)
        self.weight_by_examples = bool(weight_by_examples)
        self._buffer: List[ClientResult] = []

    @property
    def pending(self) -> int:
        """Updates waiting in the buffer."""
        return len(self._buffer)

    def reset(self) -> None:
        """Drop the buffered updates."""
        self._buffer = []

    def _admit(self, round: int, accepted: List[ClientResult]) -> Tuple[List[ClientResult], List[Tuple[str, str]]]:
        kept, refused = [], []
        for r in accepted:
            if isinstance(r.staleness, bool) or not isinstance(r.staleness, (int, np.integer)) or r.staleness < 0:
                refused.append((r.client_id, MALFORMED))
            elif r.staleness > self.max_staleness:
                refused.append((r.client_id, STALE))
            else:
                kept.append(r)
        return kept, refused

    def _combine(self, round: int, accepted: List[ClientResult]) -> Tuple[Optional[Dict[str, np.ndarray]], Dict]:
        if self._buffer and accepted and set(self._buffer[0].update) != set(accepted[0].update):
            raise UserError("FedBuff: buffered and new updates have different layers; reset() after a model change")
        self._buffer.extend(accepted)
        metrics = {"buffered": float(len(self._buffer)), "flushed": 0.0}
        if len(self._buffer) < self.buffer_size:
            return None, metrics
        examples = np.array([r.num_examples if self.weight_by_examples else 1.0 for r in self._buffer], np.float64)
        discount = np.array([staleness_weight(r.staleness) for r in self._buffer])
        coeff = self.server_lr * examples * discount / examples.sum()
        delta = {}
        for name in self._buffer[0].update:
            acc = np.zeros(np.shape(self._buffer[0].update[name]), dtype=np.float64)
            for c, r in zip(coeff, self._buffer):
                acc += c * np.asarray(r.update[name], dtype=np.float64)
            delta[name] = acc.astype(np.float32)
        metrics.update(flushed=1.0, mean_staleness=float(np.mean([r.staleness for r in self._buffer])),
                       mean_staleness_weight=float(discount.mean()))
        self._buffer = []
        return delta, metrics
