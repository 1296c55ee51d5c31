"""Cloud screening before downlink: the ``cloud_screen`` stage kind of a pipeline.

The engine's output ``mask`` is a per-pixel cloud probability; a pixel is cloudy above 0.5. Each
tile's cloud fraction is taken over its pixels inside the frame. The policy follows ESA Φsat-1's
practice: tiles whose cloud fraction is above a threshold (70 % by default) are not kept for
downlink; their cloud fraction still is. The result carries the whole frame's cloud mask
(reassembled from the tiles, see :meth:`onboard.tiling.TileGrid.join`) and the DN of kept tiles.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from engines.errors import UserError
from onboard.tiling import TileGrid


@dataclass
class ScreenResult:
    """What cloud screening made of one frame."""

    grid: TileGrid
    cloud_fraction: np.ndarray     # (n_tiles,) float32, over valid pixels; NaN where the stage did not run
    keep: np.ndarray               # (n_tiles,) bool: tile goes to the downlink
    cloud: np.ndarray              # (n_tiles, tile, tile) bool cloud mask of each tile
    kept_data: List[np.ndarray]    # DN of each kept tile, cropped to the frame

    @functools.cached_property
    def mask(self) -> np.ndarray:
        """(height, width) bool cloud mask of the frame, reassembled from the tiles (built on first use)."""
        return self.grid.join(self.cloud)

    @property
    def frame_cloud_fraction(self) -> float:
        """Cloud fraction of the whole frame."""
        return float(self.mask.mean())

    def buffers(self) -> List[Any]:
        """Result payload: [bit-packed frame mask, kept tiles' DN concatenated]."""
        packed = np.packbits(self.mask.reshape(-1))
        dtype = self.kept_data[0].dtype if self.kept_data else np.uint8
        data = np.empty(sum(t.size for t in self.kept_data), dtype)
        start = 0
        for t in self.kept_data:                      # one copy of each kept tile
            data[start:start + t.size].reshape(t.shape)[...] = t
            start += t.size
        return [packed, data]

    def tiles_header(self) -> List[Dict[str, Any]]:
        """Per-tile records for the result header: window, cloud fraction, kept or not."""
        return [{"r": r, "c": c, "h": h, "w": w, "cloud": None if np.isnan(f) else round(float(f), 4), "kept": bool(k)}
                for (r, c, h, w), f, k in zip(self.grid.windows(), self.cloud_fraction, self.keep)]


@functools.lru_cache(maxsize=64)
def _valid_mask(grid: TileGrid) -> np.ndarray:
    return grid.valid_mask()


def gather_tiles(works: Sequence[Any], selections: Sequence[np.ndarray]) -> np.ndarray:
    """The selected tiles of a batch of frames in one array (a single copy)."""
    parts = [w.tiles if s.all() else w.tiles[s] for w, s in zip(works, selections) if s.any()]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class CloudScreen:
    """The ``cloud_screen`` stage: per-pixel mask, per-tile cloud fraction, discard above ``threshold``.

    Parameters
    ----------
    threshold : float
        Tiles with a cloud fraction above this are discarded from the downlink.
    """

    kind = "cloud_screen"
    attributes = ("cloud_fraction", "kept")

    def __init__(self, threshold: float = 0.7):
        if not 0.0 <= threshold <= 1.0:
            raise UserError(f"cloud_screen threshold {threshold} must be within [0, 1]")
        self.threshold = float(threshold)

    def check(self, engine) -> None:
        """Refuse an engine this stage cannot use, saying why."""
        if engine.scale is None:
            raise UserError(f"bundle {engine.provenance['name']!r}: input {engine.input_name!r} has no normalization "
                            "(scale/offset); rebuild the bundle with `satedge ground` so the daemon knows how to scale DN")
        if "mask" not in engine.output_names:
            raise UserError(f"bundle {engine.provenance['name']!r} has no output 'mask' (outputs: "
                            f"{engine.output_names}); a cloud_screen stage needs the per-pixel cloud probability")

    def screen(self, grid: TileGrid, data: np.ndarray, tiles_cloud: np.ndarray,
               selected: Optional[np.ndarray] = None, kernels=None) -> ScreenResult:
        """Turn the cloud masks (probability > 0.5) of the selected tiles of one frame into a :class:`ScreenResult`.

        ``kernels`` (:class:`onboard.kernels.TileKernels`) computes the cloud fractions (numpy when omitted).
        """
        n, t = len(grid), grid.tile
        selected = np.ones(n, bool) if selected is None else selected
        cloud = np.zeros((n, t, t), bool)
        cloud[selected] = tiles_cloud.reshape(-1, t, t)
        valid = _valid_mask(grid)
        fraction = np.full(n, np.nan, np.float32)
        if kernels is not None:
            fraction[selected] = kernels.cloud_fraction(cloud[selected], valid[selected])
        else:
            fraction[selected] = ((cloud & valid).sum(axis=(1, 2)) / valid.sum(axis=(1, 2)))[selected]
        keep = selected & (np.nan_to_num(fraction, nan=1.0) <= self.threshold)
        kept = [data[:, r:r + h, c:c + w] for (r, c, h, w), k in zip(grid.windows(), keep) if k]
        return ScreenResult(grid=grid, cloud_fraction=fraction, keep=keep, cloud=cloud, kept_data=kept)

    def run(self, works: Sequence[Any], selections: Sequence[np.ndarray], engine, max_batch: int) -> List[Any]:
        """Screen the selected tiles of a batch of frames in shared inference calls.

        Returns, per frame, ``(fields, buffers, attributes, stats)`` for the result message.
        """
        counts = [int(s.sum()) for s in selections]
        tiles = gather_tiles(works, selections) if sum(counts) else None
        probs = engine.infer(tiles, max_batch, post=lambda o: {"mask": o["mask"] > 0.5})["mask"] \
            if tiles is not None else np.zeros((0, 1), bool)
        out, start = [], 0
        for w, sel, k in zip(works, selections, counts):
            res = self.screen(w.grid, w.frame.data, probs[start:start + k], sel, getattr(engine, "kernels", None))
            start += k
            attrs = {"cloud_fraction": res.cloud_fraction, "kept": res.keep.astype(np.float32)}
            stats = {"tiles": int(sel.sum()), "discarded": int((sel & ~res.keep).sum())}
            out.append((functools.partial(self.message, res), None, attrs, stats))
        return out

    def message(self, res: ScreenResult):
        """``(fields, buffers)`` of the result message of one frame (built off the worker thread)."""
        fields = {"tile": res.grid.tile, "overlap": res.grid.overlap, "tiles": res.tiles_header(),
                  "cloud_fraction": round(res.frame_cloud_fraction, 4), "threshold": self.threshold,
                  "buffers": ["mask_packbits", "kept_tiles_dn"]}
        return fields, res.buffers()
