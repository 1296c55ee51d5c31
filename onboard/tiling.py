"""Cutting a frame into model-sized tiles, with optional overlap, and putting tile masks back together.

Large scenes are split into ``tile``-sized windows that start every ``tile - overlap`` pixels.
Edge windows are zero-padded past the frame. :meth:`TileGrid.join` reassembles per-tile results
into a frame by giving each pixel to the tile whose *core* holds it: a tile's core drops
``overlap // 2`` pixels on each side that touches a neighbour (never at the frame border), so
the cores tile the frame exactly and every pixel is taken from the tile in which it lies
farthest from an edge. With ``overlap == 0`` this is the plain grid of earlier versions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from engines.errors import UserError


@dataclass(frozen=True)
class TileGrid:
    """The tiles of a (bands, height, width) frame.

    Attributes
    ----------
    height, width : int
        Frame size in pixels.
    tile : int
        Tile edge in pixels.
    overlap : int
        Pixels shared by neighbouring tiles (0 by default); must be below ``tile``.
    """

    height: int
    width: int
    tile: int
    overlap: int = 0

    def __post_init__(self) -> None:
        if self.tile < 1 or not 0 <= self.overlap < self.tile:
            raise UserError(f"tiling: need tile >= 1 and 0 <= overlap < tile; got tile {self.tile}, "
                            f"overlap {self.overlap}")

    @property
    def stride(self) -> int:
        """Pixels between the starts of neighbouring tiles."""
        return self.tile - self.overlap

    def _count(self, size: int) -> int:
        return 1 if size <= self.tile else 1 + -(-(size - self.tile) // self.stride)

    @property
    def rows(self) -> int:
        """Tiles down the frame."""
        return self._count(self.height)

    @property
    def cols(self) -> int:
        """Tiles across the frame."""
        return self._count(self.width)

    def __len__(self) -> int:
        return self.rows * self.cols

    @property
    def padded_shape(self) -> Tuple[int, int]:
        """(height, width) of the zero-padded frame the tiles are cut from."""
        return (self.rows - 1) * self.stride + self.tile, (self.cols - 1) * self.stride + self.tile

    def windows(self) -> List[Tuple[int, int, int, int]]:
        """(row0, col0, valid_height, valid_width) of every tile, row-major."""
        s, t = self.stride, self.tile
        return [(r * s, c * s, min(t, self.height - r * s), min(t, self.width - c * s))
                for r in range(self.rows) for c in range(self.cols)]

    def cut(self, frame: np.ndarray) -> np.ndarray:
        """Tiles of ``frame`` as an (n, bands, tile, tile) array in the frame's dtype."""
        bands = frame.shape[0]
        ph, pw = self.padded_shape
        if (ph, pw) != frame.shape[1:]:
            padded = np.zeros((bands, ph, pw), dtype=frame.dtype)
            padded[:, : self.height, : self.width] = frame
            frame = padded
        t = self.tile
        if self.overlap == 0:
            return (frame.reshape(bands, self.rows, t, self.cols, t)
                    .transpose(1, 3, 0, 2, 4).reshape(len(self), bands, t, t))
        view = np.lib.stride_tricks.sliding_window_view(frame, (t, t), axis=(1, 2))[:, ::self.stride, ::self.stride]
        return np.ascontiguousarray(view.transpose(1, 2, 0, 3, 4)).reshape(len(self), bands, t, t)

    def _core(self, index: int, count: int) -> Tuple[int, int]:
        """(start, stop) within a tile of the part it contributes along one axis."""
        lo = 0 if index == 0 else self.overlap // 2
        hi = self.tile if index == count - 1 else self.tile - (self.overlap - self.overlap // 2)
        return lo, hi

    def join(self, tiles: np.ndarray) -> np.ndarray:
        """Reassemble single-band tiles (n, tile, tile) into a (height, width) frame (see module doc)."""
        t = self.tile
        tiles = np.asarray(tiles).reshape(len(self), t, t)
        if self.overlap == 0:
            full = tiles.reshape(self.rows, self.cols, t, t).transpose(0, 2, 1, 3).reshape(self.rows * t, self.cols * t)
            return full[: self.height, : self.width]
        full = np.zeros(self.padded_shape, dtype=tiles.dtype)
        for i, (r0, c0, _, _) in enumerate(self.windows()):
            (y0, y1), (x0, x1) = self._core(i // self.cols, self.rows), self._core(i % self.cols, self.cols)
            full[r0 + y0: r0 + y1, c0 + x0: c0 + x1] = tiles[i, y0:y1, x0:x1]
        return full[: self.height, : self.width]

    def valid_mask(self) -> np.ndarray:
        """(n, tile, tile) bool: which pixels of each tile lie inside the frame."""
        t = self.tile
        out = np.zeros((len(self), t, t), dtype=bool)
        for i, (_, _, h, w) in enumerate(self.windows()):
            out[i, :h, :w] = True
        return out
