"""What a compressor produces: a :class:`CompressedUpdate` of per-layer payloads.

A layer payload is either dense (every element, C order) or sparse (sorted flat indices plus one
value per index). Values travel in one of four *value formats*:

``f32``
    IEEE float32, 4 bytes a value.
``f16``
    IEEE float16, 2 bytes a value (values beyond ±65504 saturate to ±65504, never to inf).
``i8``
    signed 8-bit codes in [-127, 127] with one float32 ``scale`` per layer: value = code · scale.
``packed``
    signed codes in [-(2^(b-1) - 1), 2^(b-1) - 1] packed at ``bits`` = b bits each (2 ≤ b ≤ 7),
    with one float32 ``scale`` per layer: value = code · scale (QSGD with few levels).

Compressors quantize their values with :func:`quantize_values` *before* they update their
error-feedback residuals, so a residual holds exactly what the ground will not see.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from engines.errors import UserError

VALUE_FORMATS = ("f32", "f16", "i8", "packed")
F16_MAX = float(np.finfo(np.float16).max)


@dataclass
class LayerUpdate:
    """One layer of a compressed update.

    Attributes
    ----------
    name : str
        Parameter name (``fc1.weight``).
    shape : tuple of int
        Shape of the full layer.
    values : numpy.ndarray
        The payload in its wire dtype: float32 (``f32``), float16 (``f16``) or int8 codes
        (``i8`` and ``packed``); one per index when sparse, else ``prod(shape)`` in C order.
    value_format : str
        One of :data:`VALUE_FORMATS`.
    indices : numpy.ndarray or None
        Sorted, unique flat int64 indices (sparse), or ``None`` (dense).
    scale : float
        Dequantization step of ``i8`` and ``packed`` codes (1.0 otherwise).
    bits : int
        Bits per code of ``packed`` values (8 for ``i8``, 16/32 for floats).
    """

    name: str
    shape: Tuple[int, ...]
    values: np.ndarray
    value_format: str = "f32"
    indices: Optional[np.ndarray] = None
    scale: float = 1.0
    bits: int = 32

    @property
    def size(self) -> int:
        """Number of elements of the full layer."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def sparse(self) -> bool:
        """True when the payload carries indices."""
        return self.indices is not None

    def dequantized(self) -> np.ndarray:
        """The transmitted values as float32 (one per index, or the whole flat layer)."""
        if self.value_format in ("i8", "packed"):
            return self.values.astype(np.float32) * np.float32(self.scale)
        return self.values.astype(np.float32)

    def dense(self) -> np.ndarray:
        """The layer as the receiver sees it: a float32 array of :attr:`shape`."""
        if not self.sparse:
            return self.dequantized().reshape(self.shape)
        out = np.zeros(self.size, dtype=np.float32)
        out[self.indices] = self.dequantized()
        return out.reshape(self.shape)


@dataclass
class CompressedUpdate:
    """A compressed model update, as encoded by :mod:`onboard.fl.codec`.

    Attributes
    ----------
    method : str
        Compressor name (``topk``, ``rsdgc``, ...), informative only.
    step : int
        Client step (round) the update was made at.
    layers : list of LayerUpdate
        One entry per layer, in the order the client sent them.
    meta : dict
        Local, never encoded: figures a compressor reports (``density``, per-layer ratios).
    """

    method: str
    step: int
    layers: List[LayerUpdate]
    meta: Dict[str, object] = field(default_factory=dict)

    def density(self) -> float:
        """Fraction of the elements that were sent (1.0 for dense updates)."""
        total = sum(layer.size for layer in self.layers)
        sent = sum(layer.size if not layer.sparse else len(layer.indices) for layer in self.layers)
        return sent / total if total else 1.0


def quantize_values(values: np.ndarray, value_format: str) -> Tuple[np.ndarray, float]:
    """Round-to-nearest quantization of float values into a wire format.

    Parameters
    ----------
    values : numpy.ndarray
        Float values (any shape; flattened).
    value_format : str
        ``f32``, ``f16`` or ``i8`` (``packed`` codes are made by the QSGD compressor).

    Returns
    -------
    payload, scale : numpy.ndarray, float
        Wire-dtype payload and the per-layer scale (1.0 for float formats).
    """
    flat = np.asarray(values, dtype=np.float32).ravel()
    if value_format == "f32":
        return flat.copy(), 1.0
    if value_format == "f16":
        return np.clip(flat, -F16_MAX, F16_MAX).astype(np.float16), 1.0
    if value_format == "i8":
        peak = float(np.max(np.abs(flat))) if flat.size else 0.0
        scale = peak / 127.0 if peak > 0 and np.isfinite(peak) else 1.0
        codes = np.clip(np.rint(flat / np.float32(scale)), -127, 127).astype(np.int8)
        return codes, float(np.float32(scale))
    raise UserError(f"value format {value_format!r} cannot be made by rounding; use one of f32, f16, i8")


def decompress_update(update: CompressedUpdate, shapes: Mapping[str, Sequence[int]]) -> Dict[str, np.ndarray]:
    """Expand a compressed update into dense float32 arrays, one per name in ``shapes``.

    Layers absent from the update come back as zeros (nothing was sent for them).

    Raises
    ------
    UserError
        A layer whose name is not in ``shapes`` or whose shape differs from it.
    """
    out = {name: np.zeros(tuple(shape), dtype=np.float32) for name, shape in shapes.items()}
    for layer in update.layers:
        if layer.name not in out:
            raise UserError(f"update has layer {layer.name!r} that the model does not have "
                            f"(model layers: {', '.join(sorted(out)) or 'none'})")
        if tuple(layer.shape) != out[layer.name].shape:
            raise UserError(f"layer {layer.name!r} has shape {tuple(layer.shape)} in the update but "
                            f"{out[layer.name].shape} in the model; client and server models differ")
        out[layer.name] = layer.dense()
    return out
