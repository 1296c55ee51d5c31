"""Top-k sparsification: per layer, send the k elements of largest magnitude.

``k = max(min_keep, ceil(ratio · layer size))``. With error feedback (the default) the elements
not sent are added to the next update, which is what makes top-k converge at high compression
(Stich et al. 2018, "Sparsified SGD with memory"). Ties are broken by ``numpy.argpartition``
(deterministic for a given input).
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from onboard.fl.compressors.base import Compressor, check_ratio, keep_count
from onboard.fl.update import LayerUpdate


def topk_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the ``k`` largest entries of ``values`` (unsorted), in O(n)."""
    flat = np.ravel(values)
    if k >= flat.size:
        return np.arange(flat.size)
    return np.argpartition(flat, flat.size - k)[flat.size - k:]


class TopKCompressor(Compressor):
    """Keep the ``ratio`` fraction of largest-magnitude elements of each layer.

    Parameters
    ----------
    ratio : float
        Kept fraction per layer, in (0, 1] (0.01 = 1 % of the elements, about 100× fewer bytes).
    min_keep : int
        Smallest number of elements sent per layer.
    value_format : str
        ``f16`` (default), ``f32`` or ``i8``.
    error_feedback : bool
        Keep and resend what was not sent (default True).
    """

    name = "topk"

    def __init__(self, ratio: float = 0.01, *, min_keep: int = 1, value_format: str = "f16",
                 error_feedback: bool = True, seed: int = 0) -> None:
        super().__init__(value_format=value_format, error_feedback=error_feedback, seed=seed)
        self.ratio = check_ratio("TopKCompressor", ratio)
        self.min_keep = int(min_keep)

    def _compress(self, grads: Dict[str, np.ndarray], step: int, meta: Dict[str, object]) -> List[LayerUpdate]:
        layers = []
        for name, g in grads.items():
            corrected = self._corrected(name, g)
            k = keep_count(corrected.size, self.ratio, self.min_keep)
            layers.append(self._sparse_layer(name, g.shape, corrected, topk_indices(np.abs(corrected), k)))
        return layers
