"""Cutting a frame into model-sized tiles and putting per-tile masks back together."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    """The tiles of a (bands, height, width) frame: ``tile``-sized, no overlap, edges zero-padded.

    Attributes
    ----------
    height, width : int
        Frame size in pixels.
    tile : int
        Tile edge in pixels.
    """

    height: int
    width: int
    tile: int

    @property
    def rows(self) -> int:
        """Tiles down the frame."""
        return -(-self.height // self.tile)

    @property
    def cols(self) -> int:
        """Tiles across the frame."""
        return -(-self.width // self.tile)

    def __len__(self) -> int:
        return self.rows * self.cols

    def windows(self) -> List[Tuple[int, int, int, int]]:
        """(row0, col0, valid_height, valid_width) of every tile, row-major."""
        t = self.tile
        return [(r * t, c * t, min(t, self.height - r * t), min(t, self.width - c * t))
                for r in range(self.rows) for c in range(self.cols)]

    def cut(self, frame: np.ndarray) -> np.ndarray:
        """Tiles of ``frame`` as an (n, bands, tile, tile) array in the frame's dtype."""
        bands = frame.shape[0]
        ph, pw = self.rows * self.tile, self.cols * self.tile
        if (ph, pw) != frame.shape[1:]:
            padded = np.zeros((bands, ph, pw), dtype=frame.dtype)
            padded[:, : self.height, : self.width] = frame
            frame = padded
        t = self.tile
        return (frame.reshape(bands, self.rows, t, self.cols, t)
                .transpose(1, 3, 0, 2, 4).reshape(len(self), bands, t, t))

    def join(self, tiles: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`cut` for single-band tiles (n, tile, tile) -> (height, width)."""
        t = self.tile
        full = tiles.reshape(self.rows, self.cols, t, t).transpose(0, 2, 1, 3).reshape(self.rows * t, self.cols * t)
        return full[: self.height, : self.width]

    def valid_mask(self) -> np.ndarray:
        """(n, tile, tile) bool: which pixels of each tile lie inside the frame."""
        t = self.tile
        yy = np.arange(self.rows * t)[:, None] < self.height
        xx = np.arange(self.cols * t)[None, :] < self.width
        full = (yy & xx).astype(np.uint8)
        return full.reshape(self.rows, t, self.cols, t).transpose(0, 2, 1, 3).reshape(len(self), t, t).astype(bool)
