"""The satellite's federated-learning client: one round from a global-model package to an encoded update.

The ground uplinks a *round package* (``fl-round-<round>-<anything>.npz``, written by
:func:`write_round`) with the resumable file transfer: the trainable sub-network's global
parameters (``p:<name>`` arrays) and a JSON round configuration (``config``):

``{"round": int, "model": {"type": "mlp", "sizes": [in, hidden..., classes]},
"compressor": {"name": "rsdgc", ...options}, "local_steps": int, "lr": float, "batch_size": int,
"proximal_mu": float}``.

:class:`FLClient` trains that sub-network (the fusion layers and head; the frozen backbone runs as
an engine and its features are the client's local data, ``x`` and ``y`` in an ``.npz`` on board)
with :class:`onboard.fl.learner.TorchLearner`, compresses the delta with the configured compressor
(one per client, so error-feedback residuals carry across rounds while the process lives) and
encodes it with :mod:`onboard.fl.codec`: the bytes returned are the bytes that cross the link.
Torch is imported only here, when a round runs (the flight image must have it for FL; without it
the round fails with a message that says so).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from engines.errors import UserError
from onboard.fl import codec

ROUND_PREFIX = "fl-round-"


def write_round(path: str, round_no: int, params: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> str:
    """Write a round package (see module doc) to ``path`` (which should start with ``fl-round-``)."""
    arrays = {f"p:{k}": np.asarray(v, np.float32) for k, v in params.items()}
    cfg = dict(config, round=int(round_no))
    np.savez(path, config=np.frombuffer(json.dumps(cfg).encode(), np.uint8), **arrays)
    return path


def load_round(path: str) -> Tuple[int, Dict[str, np.ndarray], Dict[str, Any]]:
    """Read a round package: ``(round, params, config)``; a damaged or foreign file is a UserError."""
    try:
        with np.load(path, allow_pickle=False) as z:
            cfg = json.loads(bytes(z["config"]).decode())
            params = {k[2:]: z[k].astype(np.float32) for k in z.files if k.startswith("p:")}
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"FL round package {os.path.basename(path)} cannot be read ({exc}); the ground "
                        "writes them with onboard.fl.client.write_round") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("round"), int) or not params:
        raise UserError(f"FL round package {os.path.basename(path)}: needs an integer 'round' and parameters")
    return cfg["round"], params, cfg


def build_model(spec: Mapping[str, Any]):
    """The trainable sub-network named by ``spec`` (``{"type": "mlp", "sizes": [...]}``), as a torch module."""
    try:
        import torch
    except ImportError:
        raise UserError("this FL round needs torch on board (pip install torch in the flight image), or run "
                        "the daemon without fl.data") from None
    sizes = list(spec.get("sizes") or [])
    if spec.get("type") != "mlp" or len(sizes) < 2 or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise UserError(f"FL model spec {dict(spec)} is not supported; use {{'type': 'mlp', 'sizes': [in, ..., out]}}")
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


class FLClient:
    """Runs FL rounds on this satellite's local data (see module doc).

    Parameters
    ----------
    data_path : str
        ``.npz`` with ``x`` (n, features) float32 and ``y`` (n,) int labels.
    seed : int
        Seed of mini-batch sampling and compressor randomness.
    """

    def __init__(self, data_path: str, seed: int = 0):
        try:
            with np.load(data_path, allow_pickle=False) as z:
                self.x, self.y = z["x"].astype(np.float32), z["y"].astype(np.int64)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"fl.data {data_path!r} cannot be read ({exc}); it must be an .npz with 'x' "
                            "(n, features) and 'y' (n,)") from None
        if len(self.x) != len(self.y) or len(self.x) == 0:
            raise UserError(f"fl.data {data_path!r}: x has {len(self.x)} rows and y {len(self.y)}")
        self.seed = int(seed)
        self._compressor: Any = None
        self._compressor_key = ""

    def compressor(self, spec: Mapping[str, Any]):
        """The client's compressor for ``spec`` (kept across rounds while the spec stays the same)."""
        from onboard.fl.compressors import make_compressor
        key = json.dumps(dict(spec), sort_keys=True)
        if key != self._compressor_key:
            opts = {k: v for k, v in spec.items() if k != "name"}
            self._compressor, self._compressor_key = make_compressor(spec.get("name", "dense"), seed=self.seed, **opts), key
        return self._compressor

    def run_round(self, path: str) -> Tuple[Dict[str, Any], bytes]:
        """Train on local data from the package's global parameters; return (header fields, encoded update)."""
        from onboard.fl.learner import TorchLearner
        rnd, params, cfg = load_round(path)
        model = build_model(cfg.get("model") or {})
        learner = TorchLearner(model, lr=float(cfg.get("lr", 0.05)), batch_size=int(cfg.get("batch_size", 32)),
                               local_steps=int(cfg.get("local_steps", 10)), seed=self.seed)
        learner.set_params(params)
        fit = learner.fit(self.x, self.y, {"round": rnd, "proximal_mu": float(cfg.get("proximal_mu", 0.0))})
        comp = self.compressor(cfg.get("compressor") or {"name": "dense"})
        update = comp.compress(fit.update, step=rnd)
        payload = codec.encode(update)
        fields = {"round": rnd, "num_examples": fit.num_examples, "loss": float(fit.metrics.get("loss", float("nan"))),
                  "compressor": comp.name, "density": round(float(update.density()), 6), "update_bytes": len(payload),
                  "shapes": {k: list(v.shape) for k, v in fit.update.items()}}
        return fields, payload
