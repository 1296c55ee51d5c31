"""Random-k sparsification: per layer, send k elements drawn uniformly without replacement.

The baseline that shows what magnitude-based selection buys. Two modes:

* error feedback (default): send the chosen elements as they are and keep the rest;
* unbiased (``error_feedback=False``): scale the chosen elements by ``size / k`` so that the
  expectation of the decoded update equals the input (high variance; no state).

The indices are drawn from a generator seeded by ``(seed, step, layer index)``; a ground station
that knew the seed could regenerate them, but the codec sends them like any sparse layer so that
every sparsifier is charged the same way.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from onboard.fl.compressors.base import Compressor, check_ratio, keep_count, rng_for
from onboard.fl.update import LayerUpdate


class RandomKCompressor(Compressor):
    """Keep a random ``ratio`` fraction of each layer.

    Parameters
    ----------
    ratio : float
        Kept fraction per layer, in (0, 1].
    min_keep : int
        Smallest number of elements sent per layer.
    value_format : str
        ``f16`` (default), ``f32`` or ``i8``.
    error_feedback : bool
        True: keep what was not sent. False: rescale by ``size / k`` (unbiased).
    seed : int
        Seed of the index draws.
    """

    name = "randomk"

    def __init__(self, ratio: float = 0.01, *, min_keep: int = 1, value_format: str = "f16",
                 error_feedback: bool = True, seed: int = 0) -> None:
        super().__init__(value_format=value_format, error_feedback=error_feedback, seed=seed)
        self.ratio = check_ratio("RandomKCompressor", ratio)
        self.min_keep = int(min_keep)

    def _compress(self, grads: Dict[str, np.ndarray], step: int, meta: Dict[str, object]) -> List[LayerUpdate]:
        layers = []
        for i, (name, g) in enumerate(grads.items()):
            corrected = self._corrected(name, g)
            k = keep_count(corrected.size, self.ratio, self.min_keep)
            idx = rng_for(self.seed, step, i).choice(corrected.size, size=k, replace=False)
            if not self.error_feedback:
                corrected = corrected * np.float32(corrected.size / k)
            layers.append(self._sparse_layer(name, g.shape, corrected, idx))
        return layers
