"""FedProx (Li et al., MLSys 2020): FedAvg on the server, a proximal term on the clients.

The server side is FedAvg; what differs is the local objective, ``F_k(w) + μ/2 · ||w - w_t||²``,
which keeps heterogeneous clients near the global model. :meth:`FedProx.configure` sends
``proximal_mu`` to the clients; :class:`onboard.fl.learner.TorchLearner` adds the term when it is
positive.
"""
from __future__ import annotations

from typing import Dict

from engines.errors import UserError
from ground.fl.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg whose round configuration carries the proximal coefficient ``μ``.

    Parameters
    ----------
    proximal_mu : float
        ``μ >= 0`` (0 is FedAvg; 0.001–1 are usual).
    **kwargs
        Options of :class:`~ground.fl.strategies.fedavg.FedAvg`.
    """

    name = "fedprox"

    def __init__(self, proximal_mu: float = 0.01, **kwargs) -> None:
        if not proximal_mu >= 0:
            raise UserError(f"FedProx: proximal_mu must be >= 0, got {proximal_mu}")
        super().__init__(**kwargs)
        self.proximal_mu = float(proximal_mu)

    def _config(self, round: int) -> Dict[str, object]:
        return {"proximal_mu": self.proximal_mu}
