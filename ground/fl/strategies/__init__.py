"""Aggregation strategies, one file each, behind :class:`~ground.fl.strategies.base.Strategy`.

``make_strategy("fedbuff", buffer_size=5)`` builds one by name; :data:`STRATEGIES` lists them.
:class:`~ground.fl.strategies.robust.NormClipping` wraps another strategy and is built directly.
"""
from __future__ import annotations

from typing import Dict, Type

from engines.errors import UserError
from ground.fl.strategies.base import AggregateResult, ClientResult, Strategy
from ground.fl.strategies.fedavg import FedAvg
from ground.fl.strategies.fedavgm import FedAvgM
from ground.fl.strategies.fedbuff import FedBuff, staleness_weight
from ground.fl.strategies.fedprox import FedProx
from ground.fl.strategies.robust import Median, NormClipping, TrimmedMean
from ground.fl.strategies.validation import REASONS, UpdateValidator

STRATEGIES: Dict[str, Type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedProx, FedAvgM, FedBuff, TrimmedMean, Median)
}

__all__ = ["AggregateResult", "ClientResult", "FedAvg", "FedAvgM", "FedBuff", "FedProx", "Median", "NormClipping",
           "REASONS", "STRATEGIES", "Strategy", "TrimmedMean", "UpdateValidator", "make_strategy",
           "staleness_weight"]


def make_strategy(name: str, **options) -> Strategy:
    """A strategy by name, e.g. ``make_strategy("trimmed_mean", trim_ratio=0.2)``."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise UserError(f"unknown strategy {name!r}; available: {', '.join(sorted(STRATEGIES))}") from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise UserError(f"strategy {name!r}: {exc}") from None
