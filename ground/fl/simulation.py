"""A small synchronous FL simulation: real learners, real compressors, real bytes, one strategy.

Every round, each client starts from the global parameters, trains locally
(:class:`onboard.fl.learner.TorchLearner`), compresses its delta with its own compressor (which
keeps that client's error-feedback state), encodes it with :mod:`onboard.fl.codec` (``len`` of
the bytes is the uplink cost), and the ground decodes it, builds a
:class:`~ground.fl.strategies.base.ClientResult` and lets the strategy aggregate. Links and
contact windows are the simulator's business (``sim/``); this harness is for comparing methods
on the same split, the same seeds and the same byte accounting.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from engines.errors import UserError
from ground.fl.strategies.base import ClientResult, Strategy
from onboard.fl import codec
from onboard.fl.compressors.base import Compressor
from onboard.fl.compressors.dense import DenseCompressor
from onboard.fl.learner import TorchLearner
from onboard.fl.update import decompress_update


@dataclass
class RoundRecord:
    """Figures of one round: ``accuracy`` and ``loss`` on the test set after aggregation,
    ``uplink_bytes`` summed over the clients, ``accepted`` and ``rejected`` counts."""

    round: int
    accuracy: float
    loss: float
    uplink_bytes: int
    accepted: int
    rejected: int


@dataclass
class SimulationReport:
    """Result of :func:`run_simulation`.

    Attributes
    ----------
    rounds : list of RoundRecord
    dense_bytes_per_update : int
        Encoded size of one dense FP32 update of the same model (the FedAvg baseline's cost).
    seconds : float
        Wall time of the simulation.
    """

    rounds: List[RoundRecord] = field(default_factory=list)
    dense_bytes_per_update: int = 0
    seconds: float = 0.0

    @property
    def final_accuracy(self) -> float:
        """Test accuracy after the last round."""
        return self.rounds[-1].accuracy if self.rounds else float("nan")

    @property
    def uplink_bytes(self) -> int:
        """Total bytes sent by all clients over all rounds."""
        return sum(r.uplink_bytes for r in self.rounds)

    def compression_vs_dense(self) -> float:
        """Dense FP32 bytes of the same updates divided by the bytes actually sent."""
        updates = sum(r.accepted + r.rejected for r in self.rounds)
        return self.dense_bytes_per_update * updates / max(1, self.uplink_bytes)


def run_simulation(model, clients: Sequence[Tuple[np.ndarray, np.ndarray]], test: Tuple[np.ndarray, np.ndarray], *,
                   strategy: Strategy, compressor_factory: Callable[[int], Compressor], rounds: int,
                   lr: float = 0.05, local_steps: int = 10, batch_size: int = 32, seed: int = 0,
                   trainable: Optional[Sequence[str]] = None,
                   progress: Optional[Callable[[RoundRecord], None]] = None) -> SimulationReport:
    """Run ``rounds`` synchronous rounds with every client taking part.

    Parameters
    ----------
    model : torch.nn.Module
        The global model (trained in place; its initial state is the starting point).
    clients : sequence of (x, y)
        Each client's local data.
    test : (x, y)
        Held-out data for the accuracy after every round.
    strategy : Strategy
        Ground aggregation.
    compressor_factory : callable
        ``f(client_index) -> Compressor``; called once per client (the compressor keeps state).
    rounds, lr, local_steps, batch_size, seed
        Training settings; client ``i`` samples its mini-batches with seed ``seed * 1000 + i``.
    trainable : sequence of str, optional
        Parameters trained and exchanged (default: all).
    progress : callable, optional
        Called with each :class:`RoundRecord`.
    """
    if not clients or rounds < 1:
        raise UserError("run_simulation needs at least one client and one round")
    start = time.perf_counter()
    learners = [TorchLearner(model, trainable=trainable, lr=lr, batch_size=batch_size, local_steps=local_steps,
                             seed=seed * 1000 + i) for i in range(len(clients))]
    compressors = [compressor_factory(i) for i in range(len(clients))]
    params = learners[0].get_params()
    shapes = {k: v.shape for k, v in params.items()}
    report = SimulationReport(dense_bytes_per_update=len(codec.encode(DenseCompressor("fp32").compress(params, 0))))
    for rnd in range(rounds):
        config = strategy.configure(rnd)
        results, sent = [], 0
        for i, (learner, (x, y)) in enumerate(zip(learners, clients)):
            learner.set_params(params)
            fit = learner.fit(x, y, config)
            payload = codec.encode(compressors[i].compress(fit.update, step=rnd))
            sent += len(payload)
            update = decompress_update(codec.decode(payload), shapes)
            results.append(ClientResult(f"client{i}", fit.num_examples, update, meta={"bytes": len(payload)}))
        outcome = strategy.aggregate(rnd, results, [])
        if outcome.params_delta is not None:
            params = {k: params[k] + outcome.params_delta[k] for k in params}
        learners[0].set_params(params)
        metrics = learners[0].evaluate(*test)
        record = RoundRecord(rnd, metrics["accuracy"], metrics["loss"], sent, len(outcome.accepted),
                             len(outcome.rejected))
        report.rounds.append(record)
        if progress is not None:
            progress(record)
    report.seconds = time.perf_counter() - start
    return report


def summarize(reports: Mapping[str, SimulationReport]) -> str:
    """A text table: method, final accuracy, uplink bytes and compression against dense FP32."""
    lines = [f"{'method':<12} {'accuracy':>8} {'uplink bytes':>13} {'vs dense':>9} {'seconds':>8}"]
    for name, rep in reports.items():
        lines.append(f"{name:<12} {rep.final_accuracy:>8.4f} {rep.uplink_bytes:>13d} "
                     f"{rep.compression_vs_dense():>8.1f}x {rep.seconds:>8.2f}")
    return "\n".join(lines)
