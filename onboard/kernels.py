"""The daemon's tile kernels: normalization of DN tiles and per-tile cloud fractions.

Two paths with the same results, chosen once at start by ``kernels`` in the daemon config:

- ``reference`` (and ``auto`` on a host without a GPU): numpy in the worker thread, the
  computation of :mod:`engines.ops` (``((dn - 0) * 1) * scale + offset`` in float32 is
  ``dn * scale + offset``, rounded the same way);
- ``cuda`` (and ``auto`` where a GPU, the kernel library and a device-memory library load): the
  fused preprocessing kernel of ``cuda/`` normalizes a whole batch of tiles in one launch (the
  tiles are a frame of ``n * bands`` bands with per-band scale and offset repeated ``n`` times),
  and the cloud-fraction kernel counts cloudy pixels per tile.

Per-tile cloud fractions are taken over the pixels inside the frame (edge tiles are
zero-padded): the kernel gives ``count / tile_pixels`` rounded to float32, from which the count is
recovered exactly (below 2**23 pixels per tile) and divided by the valid-pixel count, as numpy does.
``cuda`` fails at start, with the reason, where the kernels cannot run; ``auto`` then falls back
and says why in the log and in ``status`` (``kernels``).
"""
from __future__ import annotations

import logging
from typing import Any, Dict

import numpy as np

from engines.errors import SatedgeError, UserError

log = logging.getLogger("satedge.onboard")

KERNEL_CHOICES = ("auto", "cuda", "reference")


def normalize_tiles(tiles: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The numpy path: float32 ``tiles * scale + offset`` (two roundings, as the CUDA kernel)."""
    x = tiles.astype(np.float32)
    x *= scale
    x += offset
    return x


class TileKernels:
    """Normalization and cloud fraction of tile batches (see module doc).

    Parameters
    ----------
    prefer : str
        ``auto``, ``cuda`` or ``reference``.
    ops : object, optional
        An op set with ``preprocess_u16`` and ``cloud_fraction`` (:mod:`engines.ops.cuda_ops`);
        chosen by :func:`engines.ops.cuda_ops.open_ops` when omitted.
    """

    def __init__(self, prefer: str = "auto", ops: Any = None):
        if prefer not in KERNEL_CHOICES:
            raise UserError(f"settings: kernels {prefer!r} is not one of {KERNEL_CHOICES}")
        if ops is None and prefer == "reference":
            self.ops, self.why = None, "reference requested"
        elif ops is None:
            from engines.ops.cuda_ops import open_ops
            try:
                opened, self.why = open_ops(prefer)
            except SatedgeError as exc:
                raise UserError(f"kernels: cuda was asked for but cannot run here: {exc}; set kernels to 'auto' "
                                "or 'reference', or build the library (cmake -S cuda -B cuda/build/cmake)") from exc
            self.ops = opened if getattr(opened, "backend", "") == "cuda" else None
        else:
            self.ops, self.why = ops, f"{getattr(ops, 'backend', type(ops).__name__)} op set given"
        self.backend = "cuda" if self.ops is not None else "reference"
        log.info("tile kernels: %s (%s)", self.backend, self.why)

    def normalize(self, tiles: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """(n, bands, t, t) DN tiles -> float32 ``dn * scale[b] + offset[b]`` (scale, offset: (bands, 1, 1))."""
        if self.ops is None:
            return normalize_tiles(tiles, scale, offset)
        n, bands, th, tw = tiles.shape
        if n == 0:
            return np.empty(tiles.shape, np.float32)
        flat = np.ascontiguousarray(tiles, dtype=np.uint16).reshape(n * bands, th, tw)
        out = self.ops.preprocess_u16(flat, scale=np.tile(np.asarray(scale, np.float32).reshape(-1), n),
                                      offset=np.tile(np.asarray(offset, np.float32).reshape(-1), n), dtype="float32")
        return out.reshape(n, bands, th, tw)

    def cloud_fraction(self, cloud: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Per-tile fraction of cloudy pixels among the valid ones: cloud (n, t, t) bool, valid (t, t) or (n, t, t)."""
        inside = cloud & valid
        n_valid = np.broadcast_to(valid, cloud.shape).sum(axis=(1, 2))
        if self.ops is None or len(cloud) == 0:
            return (inside.sum(axis=(1, 2)) / n_valid).astype(np.float32)
        pixels = int(np.prod(cloud.shape[1:]))
        if pixels >= 1 << 23:
            raise UserError(f"kernels: tiles of {pixels} pixels are too large for an exact cloud count (< 2**23)")
        frac = self.ops.cloud_fraction(inside.reshape(len(cloud), pixels).view(np.uint8))
        counts = np.rint(frac.astype(np.float64) * pixels)
        return (counts / n_valid).astype(np.float32)

    def snapshot(self) -> Dict[str, str]:
        """``{backend, why}`` for status and heartbeats."""
        return {"backend": self.backend, "why": self.why}

    def close(self) -> None:
        """Release the device memory of the CUDA path."""
        if self.ops is not None:
            self.ops.close()
