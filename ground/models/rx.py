"""RX anomaly detection (Reed-Xiaoli): global and local Mahalanobis scores, in numpy.

These are the numpy reference ops of the RX custom op (ARCHITECTURE: one reference, an ONNX
form, a CUDA kernel and a TensorRT plugin, all compared with it). The deployable op is
:func:`rx_score`: per-pixel ``(x - mu)^T C^-1 (x - mu)`` with the background statistics
``mu, C^-1`` computed beforehand (:func:`background_stats`), registered with the reference
runner as ``"rx_score"``.

Global RX (:func:`global_rx`) takes ``mu, C`` over the whole scene. Local RX (:func:`local_rx`)
takes them, for every pixel, over a dual window: the ``outer`` x ``outer`` square around the
pixel minus the ``inner`` x ``inner`` guard square (so a small target does not contaminate its
own background), clipped at the scene border. A local covariance needs more samples than
dimensions, so the cube is first reduced by global PCA to ``n_components`` and whitened (unit
global variance per component; otherwise the ridge below would swamp the low-variance
components where sub-pixel targets show). Window sums come from 2-D integral images of ``x`` and
``x x^T``, computed in blocks of rows to bound memory; per-pixel systems are solved in batch.

Covariances are regularised with a ridge ``eps * trace(C) / d * I`` (``eps`` 1e-6 global,
1e-3 local); all arithmetic is float64.
"""
from __future__ import annotations

from typing import Dict, Mapping, Tuple

import numpy as np

from engines.errors import UserError
from engines.runners.reference import register_reference_op, reference_ops

__all__ = ["background_stats", "rx_score", "global_rx", "pca_whiten", "local_rx"]


def _pixels(cube) -> Tuple[np.ndarray, Tuple[int, int]]:
    cube = np.asarray(cube, dtype=np.float64)
    if cube.ndim != 3:
        raise UserError(f"expected a (bands, rows, cols) cube, got shape {cube.shape}")
    return cube.reshape(cube.shape[0], -1).T, cube.shape[1:]


def background_stats(pixels, regularization: float = 1e-6) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and regularised inverse covariance of background pixels.

    Parameters
    ----------
    pixels : array_like
        (N, B) spectra.
    regularization : float
        Ridge ``eps``: ``C + eps * trace(C) / B * I`` is inverted.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``mu`` (B,) and ``C^-1`` (B, B), float64.
    """
    x = np.asarray(pixels, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise UserError(f"need (N >= 2, B) background pixels, got shape {x.shape}")
    mu = x.mean(axis=0)
    c = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])
    c += regularization * max(np.trace(c) / len(c), 1e-30) * np.eye(len(c))
    return mu, np.linalg.inv(c)


def rx_score(pixels, mean, inv_cov) -> np.ndarray:
    """RX score ``(x - mu)^T C^-1 (x - mu)`` of each pixel.

    Parameters
    ----------
    pixels : array_like
        (N, B).
    mean : array_like
        (B,).
    inv_cov : array_like
        (B, B), symmetric.

    Returns
    -------
    numpy.ndarray
        (N,) float64, >= 0 for a positive definite ``inv_cov``.
    """
    d = np.asarray(pixels, dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    return ((d @ np.asarray(inv_cov, dtype=np.float64)) * d).sum(axis=1)


def _rx_score_op(inputs: Mapping[str, np.ndarray], mean, inv_cov, input_name: str = "pixels",
                 output_name: str = "score", dtype: str = "float32") -> Dict[str, np.ndarray]:
    """Reference-op form of :func:`rx_score` over the last axis of ``inputs[input_name]``."""
    x = np.asarray(inputs[input_name])
    score = rx_score(x.reshape(-1, x.shape[-1]), mean, inv_cov)
    return {output_name: score.reshape(x.shape[:-1]).astype(dtype)}


if "rx_score" not in reference_ops():
    register_reference_op("rx_score", _rx_score_op)


def global_rx(cube, regularization: float = 1e-6) -> np.ndarray:
    """Global RX map of a (bands, rows, cols) cube; (rows, cols) float64."""
    x, shape = _pixels(cube)
    mu, inv = background_stats(x, regularization)
    return rx_score(x, mu, inv).reshape(shape)


def pca_whiten(cube, n_components: int) -> np.ndarray:
    """Project a cube on its first ``n_components`` principal components, each scaled to unit variance.

    Returns
    -------
    numpy.ndarray
        (n_components, rows, cols) float64.
    """
    x, shape = _pixels(cube)
    x = x - x.mean(axis=0)
    k = min(int(n_components), x.shape[1])
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]))
    values, vectors = values[::-1][:k], vectors[:, ::-1][:, :k]
    z = (x @ vectors) / np.sqrt(np.maximum(values, values.max() * 1e-12))
    return z.T.reshape((k,) + tuple(shape))


def _integral(a: np.ndarray) -> np.ndarray:
    """Zero-padded 2-D integral image over axes 0, 1: ``I[i, j] = sum(a[:i, :j])``."""
    out = np.zeros((a.shape[0] + 1, a.shape[1] + 1) + a.shape[2:], dtype=np.float64)
    out[1:, 1:] = a.cumsum(0).cumsum(1)
    return out


def local_rx(cube, outer: int = 15, inner: int = 5, n_components: int = 20, regularization: float = 1e-3,
             block_rows: int = 16) -> np.ndarray:
    """Local (dual-window) RX map.

    Parameters
    ----------
    cube : array_like
        (bands, rows, cols).
    outer, inner : int
        Odd window edges in pixels, ``inner < outer``; background = outer square minus inner square.
    n_components : int
        PCA components kept (whitened); the local covariance is (n_components x n_components).
    regularization : float
        Ridge ``eps`` (see :func:`background_stats`).
    block_rows : int
        Output rows per block (memory ~ (block_rows + outer) * cols * n_components^2 * 16 bytes).

    Returns
    -------
    numpy.ndarray
        (rows, cols) float64 scores.
    """
    if outer % 2 == 0 or inner % 2 == 0 or not 0 < inner < outer:
        raise UserError(f"windows must be odd with 0 < inner < outer, got outer={outer}, inner={inner}")
    z = np.moveaxis(pca_whiten(cube, n_components), 0, -1)            # (H, W, d)
    h, w, d = z.shape
    if (outer * outer - inner * inner) <= d:
        raise UserError(f"a {outer}/{inner} window holds {outer * outer - inner * inner} background pixels, not more "
                        f"than the {d} dimensions; enlarge outer or lower n_components")
    ho, hi = outer // 2, inner // 2
    out = np.empty((h, w))
    cols = np.arange(w)
    for r0 in range(0, h, block_rows):
        r1 = min(r0 + block_rows, h)
        a, b = max(r0 - ho, 0), min(r1 + ho, h)
        zb = z[a:b]
        s1, s2 = _integral(zb), _integral(zb[..., :, None] * zb[..., None, :])
        rows = np.arange(r0, r1)

        def window(half):
            top, bottom = np.maximum(rows - half, 0) - a, np.minimum(rows + half + 1, h) - a
            left, right = np.maximum(cols - half, 0), np.minimum(cols + half + 1, w)
            t, bo, le, ri = top[:, None], bottom[:, None], left[None, :], right[None, :]
            count = (bo - t) * (ri - le)
            return ([s[bo, ri] - s[t, ri] - s[bo, le] + s[t, le] for s in (s1, s2)], count)

        (so1, so2), no = window(ho)
        (si1, si2), ni = window(hi)
        n = (no - ni).astype(np.float64)
        mu = (so1 - si1) / n[..., None]
        cov = (so2 - si2) / n[..., None, None] - mu[..., :, None] * mu[..., None, :]
        ridge = regularization * np.trace(cov, axis1=-2, axis2=-1) / d
        cov += ridge[..., None, None] * np.eye(d)
        diff = z[r0:r1] - mu
        sol = np.linalg.solve(cov, diff[..., None])[..., 0]
        out[r0:r1] = (diff * sol).sum(-1)
    return out
