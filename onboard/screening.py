"""Cloud screening of a frame before downlink: tile, normalize, run the engine, discard cloudy tiles.

The policy follows ESA Φsat-1's practice: tiles whose cloud fraction is above a threshold
(70 % by default) are not kept for downlink; their cloud fraction still is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np

from engines.errors import UserError
from onboard.tiling import TileGrid
from onboard.wire import Frame


@dataclass
class ScreenResult:
    """What cloud screening made of one frame."""

    grid: TileGrid
    cloud_fraction: np.ndarray     # (n_tiles,) float32, over valid pixels
    keep: np.ndarray               # (n_tiles,) bool: tile goes to the downlink
    mask: np.ndarray               # (height, width) bool cloud mask of the frame
    kept_data: List[np.ndarray]    # DN of each kept tile, cropped to the frame

    @property
    def frame_cloud_fraction(self) -> float:
        """Cloud fraction of the whole frame."""
        return float(self.mask.mean())

    def buffers(self) -> List[Any]:
        """Result payload: [bit-packed frame mask, kept tiles' DN concatenated]."""
        packed = np.packbits(self.mask.reshape(-1))
        data = b"".join(np.ascontiguousarray(t).tobytes() for t in self.kept_data)
        return [packed, data]

    def tiles_header(self) -> List[Dict[str, Any]]:
        """Per-tile records for the result header: window, cloud fraction, kept or not."""
        return [{"r": r, "c": c, "h": h, "w": w, "cloud": round(float(f), 4), "kept": bool(k)}
                for (r, c, h, w), f, k in zip(self.grid.windows(), self.cloud_fraction, self.keep)]


class CloudScreen:
    """Runs a cloud-screening engine over frames.

    Parameters
    ----------
    runner : engines.runners.base.Runner
        An active runner of a bundle whose input carries ``normalization`` (per-band scale and
        offset applied to the DN) and whose output ``mask`` is a per-pixel cloud probability.
    manifest : engines.manifest.Manifest
        The bundle's manifest.
    threshold : float
        Tiles with a cloud fraction above this are discarded from the downlink.
    max_batch : int
        Tiles per inference call.
    """

    def __init__(self, runner, manifest, threshold: float = 0.7, max_batch: int = 16):
        spec = manifest.inputs[0]
        norm = spec.normalization or {}
        if "scale" not in norm or "offset" not in norm:
            raise UserError(f"bundle {manifest.name!r}: input {spec.name!r} has no normalization (scale/offset); "
                            "rebuild the bundle with `satedge ground` so the daemon knows how to scale DN")
        self.runner = runner
        self.input_name = spec.name
        self.tile = int(spec.shape[-1])
        self.bands = int(spec.shape[1])
        self.scale = np.asarray(norm["scale"], dtype=np.float32).reshape(-1, 1, 1)
        self.offset = np.asarray(norm["offset"], dtype=np.float32).reshape(-1, 1, 1)
        self.threshold = float(threshold)
        self.max_batch = int(max_batch)

    def process(self, frame: Frame) -> ScreenResult:
        """Screen one frame; raises :class:`UserError` if its band count does not fit the engine."""
        data = frame.data
        if data.shape[0] != self.bands:
            raise UserError(f"frame {frame.frame_id} of stream {frame.stream!r} has {data.shape[0]} bands; "
                            f"the engine expects {self.bands}")
        grid = TileGrid(data.shape[1], data.shape[2], self.tile)
        tiles = grid.cut(data)
        x = tiles.astype(np.float32) * self.scale + self.offset
        probs = np.concatenate([self.runner.infer({self.input_name: x[i:i + self.max_batch]})["mask"]
                                for i in range(0, len(x), self.max_batch)])
        cloud = probs.reshape(len(x), self.tile, self.tile) > 0.5
        valid = grid.valid_mask()
        fraction = ((cloud & valid).sum(axis=(1, 2)) / valid.sum(axis=(1, 2))).astype(np.float32)
        keep = fraction <= self.threshold
        kept = [data[:, r:r + h, c:c + w] for (r, c, h, w), k in zip(grid.windows(), keep) if k]
        return ScreenResult(grid=grid, cloud_fraction=fraction, keep=keep, mask=grid.join(cloud), kept_data=kept)
