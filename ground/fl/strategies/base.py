"""The one small interface of every aggregation strategy, and the records it works on.

Like Flower's strategies, failures are part of the contract: ``aggregate(round, results,
failures)`` gets the clients that answered and those that did not, and the result says which
updates were used and which were rejected and why. Subclasses implement :meth:`Strategy._combine`
(and optionally :meth:`Strategy._admit` and :meth:`Strategy._config`); the base validates every
update (:mod:`ground.fl.strategies.validation`) and does the counting.

Updates and deltas are model *deltas* (``new - old``): the server applies ``params += params_delta``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from engines.errors import UserError
from ground.fl.strategies.validation import UpdateValidator, update_norm


@dataclass
class ClientResult:
    """One client's answer to a round.

    Attributes
    ----------
    client_id : str
        Satellite or client name.
    num_examples : int
        Local training examples (the weight of FedAvg-style averages).
    update : dict of str to numpy.ndarray
        Decoded model delta.
    staleness : int
        Server model versions between the one the client trained on and the current one.
    meta : dict
        Anything else (uplink bytes, training loss, ...).
    """

    client_id: str
    num_examples: int
    update: Dict[str, np.ndarray]
    staleness: int = 0
    meta: Dict[str, object] = field(default_factory=dict)


@dataclass
class AggregateResult:
    """What a strategy returns for a round.

    Attributes
    ----------
    params_delta : dict of str to numpy.ndarray or None
        What to add to the global parameters; None when nothing is to be applied (every update
        rejected, or a buffered strategy still filling its buffer).
    accepted : list of str
        Client ids whose updates were used (or buffered).
    rejected : list of (str, str)
        ``(client_id, reason)`` for each update refused; reasons are listed in
        :mod:`ground.fl.strategies.validation`.
    metrics : dict of str to float
        ``num_results``, ``num_accepted``, ``num_rejected``, ``num_failures``,
        ``rejected_<reason>`` counts, ``delta_norm`` and strategy-specific figures.
    failures : list of (str, str)
        ``(client_id, description)`` of the failures passed in.
    """

    params_delta: Optional[Dict[str, np.ndarray]]
    accepted: List[str]
    rejected: List[Tuple[str, str]]
    metrics: Dict[str, float] = field(default_factory=dict)
    failures: List[Tuple[str, str]] = field(default_factory=list)


def describe_failure(failure) -> Tuple[str, str]:
    """``(client_id, description)`` of a failure: a ClientResult, a (client_id, reason) pair or an exception."""
    if isinstance(failure, ClientResult):
        return failure.client_id, str(failure.meta.get("error", "failed"))
    if isinstance(failure, tuple) and len(failure) == 2:
        return str(failure[0]), str(failure[1])
    if isinstance(failure, BaseException):
        return "?", f"{type(failure).__name__}: {failure}"
    return "?", repr(failure)


def weighted_average(updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> Dict[str, np.ndarray]:
    """``Σ w_i u_i / Σ w_i`` per layer, accumulated in float64, returned as float32."""
    w = np.asarray(weights, dtype=np.float64)
    if len(updates) == 0 or w.sum() <= 0:
        raise UserError("weighted_average needs at least one update and a positive total weight")
    out = {}
    for name in updates[0]:
        acc = np.zeros(np.shape(updates[0][name]), dtype=np.float64)
        for wi, u in zip(w, updates):
            acc += wi * np.asarray(u[name], dtype=np.float64)
        out[name] = (acc / w.sum()).astype(np.float32)
    return out


def scale(update: Mapping[str, np.ndarray], factor: float) -> Dict[str, np.ndarray]:
    """Every layer times ``factor`` (float32)."""
    return {k: (np.asarray(v, dtype=np.float32) * np.float32(factor)) for k, v in update.items()}


class Strategy(ABC):
    """Aggregate client updates into a global model delta.

    Parameters
    ----------
    shapes : mapping of str to tuple, optional
        Model layer shapes for validation (default: the round's majority).
    max_norm, max_norm_factor : float, optional
        Bounds of :class:`~ground.fl.strategies.validation.UpdateValidator`.
    server_lr : float
        Multiplies the aggregated delta (1.0 = plain averaging).
    validator : UpdateValidator, optional
        Replaces the validator built from the arguments above.
    """

    name = "base"

    def __init__(self, *, shapes: Optional[Mapping[str, Sequence[int]]] = None, max_norm: Optional[float] = None,
                 max_norm_factor: Optional[float] = None, server_lr: float = 1.0,
                 validator: Optional[UpdateValidator] = None) -> None:
        if not server_lr > 0:
            raise UserError(f"{type(self).__name__}: server_lr must be positive, got {server_lr}")
        self.validator = validator or UpdateValidator(shapes, max_norm=max_norm, max_norm_factor=max_norm_factor)
        self.server_lr = float(server_lr)

    def configure(self, round: int) -> Dict[str, object]:
        """Configuration sent to the clients of ``round`` (the base sends ``{"round": round}``)."""
        return {"round": int(round), **self._config(int(round))}

    def aggregate(self, round: int, results: Sequence[ClientResult], failures: Sequence = ()) -> AggregateResult:
        """Validate, admit and combine a round's results.

        Parameters
        ----------
        round : int
            Server round (or model version).
        results : list of ClientResult
            Updates that arrived.
        failures : list
            Clients that did not deliver: ClientResults, ``(client_id, reason)`` pairs or exceptions.
        """
        accepted, rejected = self.validator.split(list(results))
        accepted, refused = self._admit(int(round), accepted)
        rejected = rejected + refused
        delta, extra = self._combine(int(round), accepted)
        failed = [describe_failure(f) for f in failures]
        metrics: Dict[str, float] = {"num_results": float(len(results)), "num_accepted": float(len(accepted)),
                                     "num_rejected": float(len(rejected)), "num_failures": float(len(failed))}
        for reason, count in Counter(reason for _, reason in rejected).items():
            metrics[f"rejected_{reason}"] = float(count)
        if delta is not None:
            metrics["delta_norm"] = update_norm(delta)
        metrics.update(extra)
        return AggregateResult(delta, [r.client_id for r in accepted], rejected, metrics, failed)

    # -- for subclasses -----------------------------------------------------------------------
    @abstractmethod
    def _combine(self, round: int, accepted: List[ClientResult]) -> Tuple[Optional[Dict[str, np.ndarray]], Dict]:
        """Return ``(params_delta or None, extra metrics)`` from the validated results."""

    def _admit(self, round: int, accepted: List[ClientResult]) -> Tuple[List[ClientResult], List[Tuple[str, str]]]:
        """Further admission rules (staleness); returns ``(kept, [(client_id, reason)])``."""
        return accepted, []

    def _config(self, round: int) -> Dict[str, object]:
        """Extra per-round client configuration."""
        return {}
