"""FedAvgM (Hsu et al., 2019): FedAvg with momentum on the server.

With ``Δ̄_t`` the FedAvg average of round t, the server keeps ``m_t = β · m_{t-1} + Δ̄_t`` and
applies ``server_lr · m_t``. Momentum damps the oscillation that non-IID clients cause; with
``β = 0.9`` the steady-state step is about 10× ``Δ̄``, so ``server_lr`` is usually lowered
(Hsu et al. use ``server_lr = 1 - β`` style settings or tune it). A round in which every update is
rejected leaves the momentum unchanged and applies nothing.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from engines.errors import UserError
from ground.fl.strategies.base import ClientResult, scale
from ground.fl.strategies.fedavg import FedAvg


class FedAvgM(FedAvg):
    """FedAvg plus server momentum.

    Parameters
    ----------
    server_momentum : float
        ``β`` in [0, 1).
    server_lr : float
        Step applied to the momentum buffer.
    **kwargs
        Options of :class:`~ground.fl.strategies.fedavg.FedAvg`.
    """

    name = "fedavgm"

    def __init__(self, server_momentum: float = 0.9, *, server_lr: float = 1.0, **kwargs) -> None:
        if not 0.0 <= server_momentum < 1.0:
            raise UserError(f"FedAvgM: server_momentum must be in [0, 1), got {server_momentum}")
        super().__init__(server_lr=server_lr, **kwargs)
        self.server_momentum = float(server_momentum)
        self._momentum: Optional[Dict[str, np.ndarray]] = None

    def reset(self) -> None:
        """Forget the momentum buffer."""
        self._momentum = None

    def _combine(self, round: int, accepted: List[ClientResult]) -> Tuple[Optional[Dict[str, np.ndarray]], Dict]:
        if not accepted:
            return None, {}
        average = self._average(accepted)
        if self._momentum is None or set(self._momentum) != set(average):
            self._momentum = {k: v.copy() for k, v in average.items()}
        else:
            b = np.float32(self.server_momentum)
            self._momentum = {k: b * self._momentum[k] + average[k] for k in average}
        return scale(self._momentum, self.server_lr), {"total_examples": float(sum(r.num_examples for r in accepted))}
