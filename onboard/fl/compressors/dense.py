"""Dense updates: every element, in FP32 (the FedAvg baseline) or FP16.

FP16 halves the bytes at a relative error of about 2^-11 per element (values beyond ±65504
saturate). Error feedback is off by default for both: FP32 is exact, and FP16's rounding error
is far below the noise of local training; turn it on to carry the rounding into the next round.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from engines.errors import UserError
from onboard.fl.compressors.base import Compressor
from onboard.fl.update import LayerUpdate


class DenseCompressor(Compressor):
    """Send every element of every layer.

    Parameters
    ----------
    precision : str
        ``fp32`` (default, lossless) or ``fp16``.
    error_feedback : bool
        Carry rounding errors to the next update (only matters for ``fp16``).

    Examples
    --------
    >>> import numpy as np
    >>> c = DenseCompressor(precision="fp16")
    >>> u = c.compress({"w": np.ones((2, 3), np.float32)}, step=0)
    >>> u.layers[0].value_format, u.density()
    ('f16', 1.0)
    """

    name = "dense"

    def __init__(self, precision: str = "fp32", *, error_feedback: bool = False, seed: int = 0) -> None:
        formats = {"fp32": "f32", "fp16": "f16"}
        if precision not in formats:
            raise UserError(f"DenseCompressor: precision {precision!r} is not one of fp32, fp16")
        super().__init__(value_format=formats[precision], error_feedback=error_feedback, seed=seed)
        self.precision = precision

    def _compress(self, grads: Dict[str, np.ndarray], step: int, meta: Dict[str, object]) -> List[LayerUpdate]:
        return [self._dense_layer(name, g.shape, self._corrected(name, g)) for name, g in grads.items()]
