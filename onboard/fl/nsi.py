"""Neighbourhood Statistical Indicator (NSI): the numpy reference of RS-DGC's scoring op.

RS-DGC (Xie, Wang, Ma et al., 2023) scores each gradient with statistics of its p×p
neighbourhood instead of its magnitude alone, so that small gradients inside a consistent region
are kept and isolated spikes of random noise are delayed. **The paper's exact formula is not
public.** This module implements the variant satedge uses, stated here and in ``docs/fl.md``:

For a layer reshaped to 2-D (:func:`as_matrix`), with ``μ`` and ``σ`` the mean and standard
deviation of the ``p × p`` window centred on each element (windows are cut at the borders and
average only the elements inside the layer)::

    ρ     = |μ| / (|μ| + σ)   (0 when both are 0)   neighbourhood coherence, in [0, 1]
    score = |g| · (1 - β + β · ρ)            NSI score; selection keeps the largest scores

``ρ = SNR / (1 + SNR)`` is the bounded form of the local signal-to-noise ratio ``|μ| / σ``
suggested by the method description. It is close to 1 where the neighbours agree in sign and
size and small where they cancel (zero-mean noise) or where one element dominates an otherwise
empty window (an isolated spike: ``ρ = 1 / (1 + sqrt(p² - 1))``, 0.26 for p = 3). Multiplying
by ``|g|`` keeps the selection on elements that carry signal (an element of value 0 next to a
spike scores 0), and ``β`` blends between plain top-k (``β = 0``) and full neighbourhood
weighting (``β = 1``). ``p = 1`` gives ``σ = 0``, ``ρ = 1`` and reduces NSI to top-k exactly.

The other variant named in the method notes, ``|μ| + λσ``, is available as
``variant="mean_std"`` for comparison; it scores the zero neighbours of a spike as high as the
spike (``σ`` is large around it), so it spends its budget on them.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from engines.errors import UserError


def as_matrix(shape: Tuple[int, ...]) -> Tuple[int, int]:
    """2-D view of a layer: ``(out, prod(rest))``; 1-D layers are one row, scalars ``(1, 1)``.

    A conv kernel ``(out, in, kh, kw)`` becomes ``out × (in · kh · kw)``: a row holds one filter,
    with the taps of one input channel contiguous, so a window spans neighbouring filters and
    neighbouring taps (and, at a kernel's edge, the next input channel's taps). A linear layer
    ``(out, in)`` is its own matrix; a bias of n elements is ``1 × n`` (its windows are 1 × p).
    """
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))


def _window_sums(x: np.ndarray, p: int) -> np.ndarray:
    """Sum of each ``p × p`` window centred on every element (cut at the borders).

    Separable shifted sums (``2p`` vector additions) rather than integral images: the latter
    subtract large running totals and lose the small windows of a big layer to rounding.
    """
    r = p // 2
    rows, cols = x.shape
    padded = np.pad(x, r)
    vertical = padded[0:rows].copy()
    for i in range(1, p):
        vertical += padded[i: i + rows]
    out = vertical[:, 0:cols].copy()
    for j in range(1, p):
        out += vertical[:, j: j + cols]
    return out


def neighbourhood_stats(x: np.ndarray, p: int) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the ``p × p`` window around each element of a 2-D array.

    Parameters
    ----------
    x : numpy.ndarray
        2-D array.
    p : int
        Odd window side, >= 1.

    Returns
    -------
    mean, std : numpy.ndarray
        float64 arrays of the shape of ``x``.
    """
    if p < 1 or p % 2 == 0:
        raise UserError(f"NSI window side p must be odd and >= 1 (the window is centred), got {p}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise UserError(f"neighbourhood_stats wants a 2-D array, got shape {x.shape}; reshape with as_matrix()")
    count = _window_sums(np.ones_like(x), p)
    mean = _window_sums(x, p) / count
    var = _window_sums(x * x, p) / count - mean * mean
    return mean, np.sqrt(np.maximum(var, 0.0))


def nsi_score(grad: np.ndarray, p: int = 3, *, beta: float = 0.5, lam: float = 1.0,
              variant: str = "coherence") -> np.ndarray:
    """NSI score of every element of a layer's gradient (larger = send first).

    Parameters
    ----------
    grad : numpy.ndarray
        The layer's gradient in its own shape (reshaped with :func:`as_matrix` internally).
    p : int
        Odd neighbourhood side.
    beta : float
        Weight of the coherence term, in [0, 1] (``coherence`` variant).
    lam : float
        Weight of ``σ`` (``mean_std`` variant).
    variant : str
        ``coherence`` (default, see the module docstring) or ``mean_std`` (``|μ| + λσ``).

    Returns
    -------
    numpy.ndarray
        float64 scores, flat, in the C order of ``grad``.
    """
    g = np.asarray(grad, dtype=np.float64).reshape(as_matrix(np.shape(grad)))
    mean, std = neighbourhood_stats(g, p)
    if variant == "coherence":
        if not 0.0 <= beta <= 1.0:
            raise UserError(f"NSI beta must be in [0, 1], got {beta}")
        denom = np.abs(mean) + std
        rho = np.divide(np.abs(mean), denom, out=np.zeros_like(denom), where=denom > 0)
        return (np.abs(g) * (1.0 - beta + beta * rho)).ravel()
    if variant == "mean_std":
        return (np.abs(mean) + lam * std).ravel()
    raise UserError(f"NSI variant {variant!r} is not one of coherence, mean_std")
