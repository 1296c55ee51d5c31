"""Local training of a client's model: the only FL module that uses torch, imported lazily.

A :class:`TorchLearner` wraps a ``torch.nn.Module`` that the caller built. It trains the
*trainable* parameters (all of them, or a named subset such as the classifier head) for a few
local steps and returns the model delta ``new - old`` as numpy arrays, ready for a compressor.
With ``proximal_mu > 0`` (FedProx, sent by the ground in the round configuration) the local loss
gains ``μ/2 · ||w - w_global||²``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, Mapping, Optional

import numpy as np

from engines.errors import UserError


@dataclass
class FitResult:
    """What :meth:`TorchLearner.fit` returns.

    Attributes
    ----------
    update : dict of str to numpy.ndarray
        Trainable parameter deltas ``new - old`` (float32).
    num_examples : int
        Local training examples (the FedAvg weight).
    metrics : dict
        ``loss`` (mean training loss of the last local step), ``steps``.
    """

    update: Dict[str, np.ndarray]
    num_examples: int
    metrics: Dict[str, float] = field(default_factory=dict)


class TorchLearner:
    """Train a torch module locally for FL rounds.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits.
    trainable : iterable of str, optional
        Names of the parameters trained and exchanged (default: all parameters).
    lr : float
        Local SGD learning rate.
    batch_size : int
        Mini-batch size (sampled with replacement from the local set).
    local_steps : int
        SGD steps per round (a round's ``config`` may override it).
    seed : int
        Seed of the mini-batch sampling; a round's draws depend on (seed, round).
    """

    def __init__(self, model, *, trainable: Optional[Iterable[str]] = None, lr: float = 0.05,
                 batch_size: int = 32, local_steps: int = 10, seed: int = 0) -> None:
        names = [n for n, _ in model.named_parameters()]
        self.trainable = list(names if trainable is None else trainable)
        unknown = sorted(set(self.trainable) - set(names))
        if unknown:
            raise UserError(f"trainable parameters {unknown} are not in the model (it has: {', '.join(names)})")
        self.model = model
        self.lr, self.batch_size, self.local_steps, self.seed = float(lr), int(batch_size), int(local_steps), int(seed)

    def _params(self):
        named = dict(self.model.named_parameters())
        return {name: named[name] for name in self.trainable}

    def get_params(self) -> Dict[str, np.ndarray]:
        """Trainable parameters as float32 numpy arrays (copies)."""
        return {n: p.detach().cpu().numpy().astype(np.float32, copy=True) for n, p in self._params().items()}

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Overwrite trainable parameters from numpy arrays (names and shapes must match)."""
        import torch
        with torch.no_grad():
            for name, p in self._params().items():
                if name not in params:
                    raise UserError(f"set_params: parameter {name!r} is missing from the given params")
                value = np.asarray(params[name], dtype=np.float32)
                if value.shape != tuple(p.shape):
                    raise UserError(f"set_params: {name!r} has shape {value.shape}, the model wants {tuple(p.shape)}")
                p.copy_(torch.from_numpy(value))

    def fit(self, x: np.ndarray, y: np.ndarray, config: Optional[Mapping[str, float]] = None) -> FitResult:
        """Train locally from the current parameters; returns the delta.

        Parameters
        ----------
        x, y : numpy.ndarray
            Local inputs (float32) and integer labels.
        config : mapping, optional
            Round configuration from the ground: ``round``, ``local_steps``, ``lr``, ``proximal_mu``.
        """
        import torch
        config = dict(config or {})
        if len(x) == 0 or len(x) != len(y):
            raise UserError(f"fit: need as many labels as inputs and at least one example, got {len(x)} and {len(y)}")
        steps = int(config.get("local_steps", self.local_steps))
        lr = float(config.get("lr", self.lr))
        mu = float(config.get("proximal_mu", 0.0))
        params = self._params()
        start = {n: p.detach().clone() for n, p in params.items()}
        frozen = [(p, p.requires_grad) for n, p in self.model.named_parameters() if n not in params]
        for p, _ in frozen:
            p.requires_grad_(False)
        xt, yt = torch.as_tensor(np.asarray(x, dtype=np.float32)), torch.as_tensor(np.asarray(y, dtype=np.int64))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(config.get("round", 0)))
        self.model.train()
        loss_value = float("nan")
        try:
            for _ in range(steps):
                batch = torch.randint(0, len(xt), (min(self.batch_size, len(xt)),), generator=gen)
                loss = torch.nn.functional.cross_entropy(self.model(xt[batch]), yt[batch])
                if mu > 0:
                    loss = loss + 0.5 * mu * sum(((p - start[n]) ** 2).sum() for n, p in params.items())
                for p in params.values():
                    p.grad = None
                loss.backward()
                with torch.no_grad():           # plain SGD (torch.optim costs ~2 s of imports on first use)
                    for p in params.values():
                        if p.grad is not None:
                            p.sub_(p.grad, alpha=lr)
                loss_value = float(loss.detach())
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)
        update = {n: (p.detach() - start[n]).cpu().numpy().astype(np.float32) for n, p in params.items()}
        return FitResult(update, int(len(x)), {"loss": loss_value, "steps": float(steps)})

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> Dict[str, float]:
        """``loss`` and ``accuracy`` of the current parameters on a labelled set."""
        import torch
        self.model.eval()
        with torch.no_grad():
            logits = self.model(torch.as_tensor(np.asarray(x, dtype=np.float32)))
            target = torch.as_tensor(np.asarray(y, dtype=np.int64))
            loss = float(torch.nn.functional.cross_entropy(logits, target))
            accuracy = float((logits.argmax(dim=1) == target).float().mean())
        return {"loss": loss, "accuracy": accuracy}
