"""FedAvg (McMahan et al., 2017): the average of the client deltas weighted by their examples.

``Δ = server_lr · Σ n_i Δ_i / Σ n_i`` over the accepted updates. With ``server_lr = 1`` and
full participation this equals training on the union of the clients' data for one local epoch
in the IID limit; ``server_lr`` > 1 is the "server learning rate" of Reddi et al. (2021).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from ground.fl.strategies.base import ClientResult, Strategy, scale, weighted_average


class FedAvg(Strategy):
    """Example-weighted average of the accepted client deltas.

    Parameters
    ----------
    weighted : bool
        Weight by ``num_examples`` (True, FedAvg) or give every client the same weight.
    **kwargs
        Validation and ``server_lr`` options of :class:`~ground.fl.strategies.base.Strategy`.

    Examples
    --------
    >>> import numpy as np
    >>> from ground.fl.strategies.base import ClientResult
    >>> s = FedAvg()
    >>> r = s.aggregate(1, [ClientResult("a", 1, {"w": np.zeros(2)}), ClientResult("b", 3, {"w": np.ones(2)})], [])
    >>> r.params_delta["w"].tolist()
    [0.75, 0.75]
    """

    name = "fedavg"

    def __init__(self, *, weighted: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.weighted = bool(weighted)

    def _average(self, accepted: List[ClientResult]) -> Dict[str, np.ndarray]:
        weights = [r.num_examples if self.weighted else 1.0 for r in accepted]
        return weighted_average([r.update for r in accepted], weights)

    def _combine(self, round: int, accepted: List[ClientResult]) -> Tuple[Optional[Dict[str, np.ndarray]], Dict]:
        if not accepted:
            return None, {}
        delta = scale(self._average(accepted), self.server_lr)
        return delta, {"total_examples": float(sum(r.num_examples for r in accepted))}
