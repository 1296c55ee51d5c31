"""The one interface every update compressor follows, and the error feedback they share.

A compressor belongs to one client: it keeps that client's state across rounds (error-feedback
residuals, DGC velocities, RS-DGC layer importances). Subclasses implement :meth:`Compressor._compress`
only; :meth:`Compressor.compress` checks the input and wraps the layers in a
:class:`~onboard.fl.update.CompressedUpdate`.

Error feedback (Seide et al. 2014; Stich et al. 2018): before selecting, a compressor adds what it
did not send before, ``c = g + r``; after sending ``s`` (as the ground will decode it, quantization
included), it keeps ``r = c - s``. Hence ``sum(sent) + r == sum(g)`` over any number of steps: no
part of an update is lost, only delayed.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, List, Mapping, Sequence

import numpy as np

from engines.errors import UserError
from onboard.fl.update import CompressedUpdate, LayerUpdate, decompress_update, quantize_values


class Compressor(ABC):
    """Compress a client's model update (or gradient) layer by layer.

    Parameters
    ----------
    value_format : str
        Wire format of the sent values: ``f32``, ``f16`` or ``i8`` (see :mod:`onboard.fl.update`).
    error_feedback : bool
        Keep what was not sent and add it to the next update.
    seed : int
        Seed of any randomness; a compressor's output depends only on (seed, step, inputs, state).
    """

    name = "base"

    def __init__(self, *, value_format: str = "f16", error_feedback: bool = True, seed: int = 0) -> None:
        if value_format not in ("f32", "f16", "i8"):
            raise UserError(f"{type(self).__name__}: value_format {value_format!r} is not one of f32, f16, i8")
        self.value_format = value_format
        self.error_feedback = bool(error_feedback)
        self.seed = int(seed)
        self._residual: Dict[str, np.ndarray] = {}
        self._shapes: Dict[str, tuple] = {}

    # -- public API -------------------------------------------------------------------------
    def compress(self, grads: Mapping[str, np.ndarray], step: int) -> CompressedUpdate:
        """Compress one update.

        Parameters
        ----------
        grads : mapping of str to numpy.ndarray
            Layer name to gradient or model delta (any float dtype; computed in float32).
        step : int
            The client's step or round number (drives warm-up schedules and random seeds).

        Returns
        -------
        CompressedUpdate
            Encode it with :func:`onboard.fl.codec.encode` to get the bytes to send.
        """
        if not isinstance(grads, Mapping) or not grads:
            raise UserError(f"{self.name}: compress() wants a non-empty mapping of layer name to array")
        if int(step) < 0:
            raise UserError(f"{self.name}: step must be >= 0, got {step}")
        arrays = {}
        for key, value in grads.items():
            arr = np.asarray(value)
            if not np.issubdtype(arr.dtype, np.floating):
                raise UserError(f"{self.name}: layer {key!r} has dtype {arr.dtype}; updates must be floating point")
            arrays[str(key)] = arr.astype(np.float32, copy=False)
            self._shapes[str(key)] = arr.shape
        meta: Dict[str, object] = {}
        layers = self._compress(arrays, int(step), meta)
        update = CompressedUpdate(self.name, int(step), layers, meta)
        update.meta["density"] = update.density()
        return update

    def decompress(self, update: CompressedUpdate, shapes: Mapping[str, Sequence[int]]) -> Dict[str, np.ndarray]:
        """Dense float32 arrays of an update (the ground side does the same with any compressor)."""
        return decompress_update(update, shapes)

    def reset(self) -> None:
        """Forget all per-client state (residuals, momenta, importances)."""
        self._residual.clear()
        self._shapes.clear()
        self._reset_state()

    def residuals(self) -> Dict[str, np.ndarray]:
        """Copies of the error-feedback residuals (what has not been sent yet), in layer shapes."""
        return {k: v.reshape(self._shapes[k]).copy() for k, v in self._residual.items()}

    # -- for subclasses ----------------------------------------------------------------------
    @abstractmethod
    def _compress(self, grads: Dict[str, np.ndarray], step: int, meta: Dict[str, object]) -> List[LayerUpdate]:
        """Return one :class:`LayerUpdate` per layer; may add figures to ``meta``."""

    def _reset_state(self) -> None:
        """Subclasses with more state than residuals clear it here."""

    def _corrected(self, name: str, grad: np.ndarray) -> np.ndarray:
        """``grad`` plus the residual of the layer (a new flat float32 array)."""
        flat = grad.ravel().astype(np.float32, copy=True)
        if self.error_feedback and name in self._residual:
            if self._residual[name].shape != flat.shape:
                raise UserError(f"{self.name}: layer {name!r} changed size from {self._residual[name].size} "
                                f"to {flat.size}; call reset() after changing the model")
            flat += self._residual[name]
        return flat

    def _sparse_layer(self, name: str, shape: Sequence[int], corrected: np.ndarray,
                      indices: np.ndarray) -> LayerUpdate:
        """Send ``corrected[indices]`` in :attr:`value_format` and keep the rest as the residual."""
        idx = np.unique(np.asarray(indices, dtype=np.int64))
        payload, scale = quantize_values(corrected[idx], self.value_format)
        layer = LayerUpdate(name, tuple(int(d) for d in shape), payload, self.value_format, idx, scale,
                            bits={"f32": 32, "f16": 16, "i8": 8}[self.value_format])
        if self.error_feedback:
            residual = corrected.copy()
            residual[idx] -= layer.dequantized()
            self._residual[name] = residual
        return layer

    def _dense_layer(self, name: str, shape: Sequence[int], corrected: np.ndarray) -> LayerUpdate:
        """Send every element of ``corrected`` in :attr:`value_format`."""
        payload, scale = quantize_values(corrected, self.value_format)
        layer = LayerUpdate(name, tuple(int(d) for d in shape), payload, self.value_format, None, scale,
                            bits={"f32": 32, "f16": 16, "i8": 8}[self.value_format])
        if self.error_feedback:
            self._residual[name] = corrected - layer.dequantized()
        return layer


def keep_count(size: int, ratio: float, min_keep: int = 1) -> int:
    """Number of elements a layer of ``size`` keeps at density ``ratio`` (at least ``min_keep``)."""
    return int(min(size, max(min_keep, int(np.ceil(ratio * size)))))


def check_ratio(owner: str, ratio: float) -> float:
    """Validate a density in (0, 1]."""
    ratio = float(ratio)
    if not 0.0 < ratio <= 1.0:
        raise UserError(f"{owner}: ratio is the kept fraction and must be in (0, 1], got {ratio} "
                        f"(for 100x compression use 0.01)")
    return ratio


def rng_for(seed: int, step: int, layer_index: int) -> np.random.Generator:
    """A generator that depends only on (seed, step, layer), so compression is reproducible."""
    return np.random.default_rng([int(seed), int(step), int(layer_index)])
