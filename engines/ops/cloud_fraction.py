"""Per-tile cloud fraction of a cloud mask: numpy reference and ONNX-function form.

A mask of ``n_tiles`` tiles of ``tile_pixels`` bytes each (any nonzero byte is cloud) reduces to
``fraction[t] = count_nonzero(tile t) / tile_pixels``, the exact quotient rounded once to float32.
This is the contract of ``satedge_cloud_fraction`` (``cuda/include/satedge_kernels.h``); the
reference, the ONNX function (counting in float64, exact below 2**53 pixels) and the kernel agree
bit for bit.

The daemon's cloud screen (:mod:`onboard.screening`) takes the fraction over the tile's pixels
inside the frame; give this op only those pixels (or a mask that is 0 outside the frame and the
count of valid pixels) to get the same number.
"""
from __future__ import annotations

import numpy as np

from engines.errors import UserError
from engines.ops.graph import Body, function_model, make_function, run_model


def _tiles(mask: np.ndarray, tile_pixels=None) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype not in (np.uint8, np.bool_):
        raise UserError("cloud mask must be uint8 or bool, got %s; threshold a probability mask first" % mask.dtype)
    if tile_pixels is None:
        if mask.ndim < 2:
            raise UserError("give a (n_tiles, ...) mask or tile_pixels, got shape %s" % (mask.shape,))
        return mask.reshape(mask.shape[0], -1)
    tile_pixels = int(tile_pixels)
    if tile_pixels < 1 or mask.size % tile_pixels:
        raise UserError("mask of %d bytes is not a whole number of %d-pixel tiles" % (mask.size, tile_pixels))
    return mask.reshape(-1, tile_pixels)


def cloud_fraction(mask: np.ndarray, tile_pixels=None) -> np.ndarray:
    """Fraction of nonzero pixels per tile (the reference of the op).

    Parameters
    ----------
    mask : numpy.ndarray
        uint8 or bool; ``(n_tiles, ...)`` with one tile per leading index, or any shape holding
        ``n_tiles * tile_pixels`` values when ``tile_pixels`` is given.
    tile_pixels : int, optional
        Pixels per tile.

    Returns
    -------
    numpy.ndarray
        ``(n_tiles,)`` float32 in [0, 1].
    """
    tiles = _tiles(mask, tile_pixels)
    if tiles.shape[1] < 1:
        raise UserError("tiles must hold at least one pixel")
    return (np.count_nonzero(tiles, axis=1) / float(tiles.shape[1])).astype(np.float32)


def build_function(tile_pixels: int):
    """ONNX function ``satedge.ops::CloudFraction``: ``mask`` ``(N, tile_pixels)`` uint8 -> ``fraction`` ``(N,)``."""
    from onnx import TensorProto
    tile_pixels = int(tile_pixels)
    if tile_pixels < 1:
        raise UserError("tile_pixels must be >= 1, got %d" % tile_pixels)
    b = Body("cf")
    cloudy = b.op("Cast", ["mask"], "cloudy", to=TensorProto.BOOL)
    ones = b.op("Cast", [cloudy], "ones", to=TensorProto.DOUBLE)
    count = b.op("ReduceSum", [ones, b.ints([1])], "count", keepdims=0)
    frac = b.op("Div", [count, b.const(np.float64(tile_pixels))], "fraction64")
    b.op("Cast", [frac], out="fraction", to=TensorProto.FLOAT)
    return make_function("CloudFraction", ["mask"], ["fraction"], b,
                         doc="satedge per-tile cloud fraction, %d pixels per tile" % tile_pixels,
                         fields=dict(tile_pixels=tile_pixels))


def build_model(tile_pixels: int, inline: bool = False):
    """A model calling :func:`build_function`; the number of tiles is a dynamic dimension ``N``."""
    fn = build_function(tile_pixels)
    return function_model(fn, [("mask", "uint8", ["N", int(tile_pixels)])], [("fraction", "float32", ["N"])],
                          inline=inline)


def run_onnx(mask: np.ndarray, tile_pixels=None, inline: bool = False) -> np.ndarray:
    """Build the model and run it with ONNX Runtime (CPU); same arguments as :func:`cloud_fraction`."""
    tiles = _tiles(mask, tile_pixels).astype(np.uint8, copy=False)
    return run_model(build_model(tiles.shape[1], inline), {"mask": tiles})["fraction"]
