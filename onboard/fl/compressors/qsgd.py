"""Stochastic quantization: QSGD with ``s`` levels (Alistarh et al., NeurIPS 2017) and 8-bit.

Per layer, with ``scale = norm / s`` and ``l = |x| / scale`` in [0, s]::

    code = sign(x) · (floor(l) + Bernoulli(l - floor(l)))        stochastic rounding
    x̂    = code · scale

so ``E[x̂] = x`` (unbiased) for every element. ``norm`` is the layer's L2 norm (QSGD) or its
largest magnitude (``max``, the usual 8-bit quantizer, lower variance). Codes lie in [-s, s]
and take ``b = ceil(log2(2s + 1))`` bits: ``s = 127`` is sent as ``i8`` (8 bits), smaller ``s``
as ``packed`` codes (``s = 1``: 2 bits, ``s = 7``: 4 bits, ``s = 63``: 7 bits). QSGD proper adds
Elias coding of the codes; this codec packs them at a fixed width instead (simpler, exact to
count, at most a few bits a value more than Elias coding at very small ``s``).

The rounding draws come from a generator seeded by ``(seed, step, layer index)``, so a result is
reproducible. Error feedback is off by default (the quantizer is already unbiased).
"""
from __future__ import annotations

import math
from typing import Dict, List

import numpy as np

from engines.errors import UserError
from onboard.fl.compressors.base import Compressor, rng_for
from onboard.fl.update import LayerUpdate


def stochastic_levels(x: np.ndarray, levels: int, norm: str, rng: np.random.Generator):
    """Quantize ``x`` to signed integer codes in [-levels, levels] by unbiased stochastic rounding.

    Returns
    -------
    codes, scale : numpy.ndarray of int8, float
        ``codes * scale`` is an unbiased estimate of ``x``.
    """
    flat = np.asarray(x, dtype=np.float32).ravel()
    magnitude = np.abs(flat)
    ref = float(np.sqrt(np.dot(flat.astype(np.float64), flat))) if norm == "l2" else float(magnitude.max(initial=0))
    if ref == 0.0 or not np.isfinite(ref):
        return np.zeros(flat.size, dtype=np.int8), 1.0
    scale = np.float32(ref / levels)
    level = np.minimum(magnitude / scale, levels)
    low = np.floor(level)
    up = rng.random(flat.size, dtype=np.float32) < (level - low)
    codes = (low + up) * np.sign(flat)
    return np.clip(codes, -levels, levels).astype(np.int8), float(scale)


class QSGDCompressor(Compressor):
    """Unbiased stochastic quantization of every element of every layer.

    Parameters
    ----------
    levels : int
        ``s``, the number of positive levels, 1..127 (127 = 8-bit codes).
    norm : str
        ``l2`` (QSGD) or ``max`` (8-bit style).
    error_feedback : bool
        Carry the quantization error into the next update (default False: unbiased already).
    seed : int
        Seed of the stochastic rounding.
    """

    name = "qsgd"

    def __init__(self, levels: int = 127, *, norm: str = "l2", error_feedback: bool = False, seed: int = 0) -> None:
        super().__init__(value_format="f32", error_feedback=error_feedback, seed=seed)
        if not 1 <= int(levels) <= 127:
            raise UserError(f"QSGDCompressor: levels must be in 1..127 (codes are at most 8 bits), got {levels}")
        if norm not in ("l2", "max"):
            raise UserError(f"QSGDCompressor: norm must be 'l2' or 'max', got {norm!r}")
        self.levels = int(levels)
        self.norm = norm
        self.bits = max(2, math.ceil(math.log2(2 * self.levels + 1)))

    def _compress(self, grads: Dict[str, np.ndarray], step: int, meta: Dict[str, object]) -> List[LayerUpdate]:
        layers = []
        fmt = "i8" if self.bits == 8 else "packed"
        for i, (name, g) in enumerate(grads.items()):
            corrected = self._corrected(name, g)
            codes, scale = stochastic_levels(corrected, self.levels, self.norm, rng_for(self.seed, step, i))
            layer = LayerUpdate(name, tuple(g.shape), codes, fmt, None, scale, self.bits)
            if self.error_feedback:
                self._residual[name] = corrected - layer.dequantized()
            layers.append(layer)
        meta["bits_per_value"] = self.bits
        return layers


class Int8Compressor(QSGDCompressor):
    """8-bit stochastic quantization: 127 levels scaled by each layer's largest magnitude."""

    name = "int8"

    def __init__(self, *, error_feedback: bool = False, seed: int = 0) -> None:
        super().__init__(127, norm="max", error_feedback=error_feedback, seed=seed)
