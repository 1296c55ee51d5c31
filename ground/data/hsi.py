"""Hyperspectral scenes with injected sub-pixel targets, from real earthlib spectra, and ROC AUC.

A scene (:func:`make_hsi_scene`) is built by linear mixing, deterministically by seed:

1. **Background**: a *region* (``region_seed``) fixes six endmembers drawn from earthlib:
   three vegetation canopies, two soils and one non-photosynthetic vegetation (litter, bark,
   wood). Per scene (``seed``) each pixel mixes them with abundances ``softmax(2 * g)`` of six
   smooth Gaussian random fields ``g`` (correlation ~6 px), times a smooth +-5 % illumination
   field. Scenes of one region share endmembers (a satellite revisiting one kind of land),
   layouts differ.
2. **Targets**: ``n_targets`` single pixels on an 8-px grid jittered by up to 2 px (at least
   4 px apart and 4 px from the border) get ``x = (1 - a) * background + a * target`` with abundance ``a`` uniform in
   ``abundance`` (e.g. 5-30 %) and the target spectrum drawn from earthlib roofs
   (composite/wood shingle, concrete tile, tile, metal) or burned char.
3. **Sensor**: the native 180 earthlib bands (0.40-2.45 µm, water-vapour bands absent) or
   ``n_bands`` Gaussian bands spaced evenly over the same windows (FWHM = spacing), then
   additive Gaussian noise of ``noise`` reflectance (0.002: on vegetation an SNR of ~25 in the
   visible and ~250 in the near infrared).

:func:`roc_auc` is the tie-aware area under the ROC curve (Mann-Whitney U with average ranks):
the probability that a random target pixel scores above a random background pixel, ties
counting one half.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from engines.errors import UserError
from ground.data.spectra import load_spectral_library

__all__ = ["ROOF_MATERIALS", "HsiScene", "sensor_bands", "resample_to_sensor", "make_hsi_scene", "roc_auc"]

ROOF_MATERIALS = ("comp_shingle", "wood_shingle", "concrete_tile", "tile", "metal")
_TARGETS = {"roof": dict(level2="built", level3=ROOF_MATERIALS), "burned": dict(level2="burned")}
_WINDOWS_UM = ((0.40, 1.35), (1.45, 1.80), (1.95, 2.45))      # earthlib's grid skips 1.36-1.45, 1.80-1.95


@dataclass(eq=False)
class HsiScene:
    """One hyperspectral scene.

    Attributes
    ----------
    cube : numpy.ndarray
        (bands, H, W) float32 reflectance with noise.
    wavelengths_um : numpy.ndarray
        (bands,) band centres.
    targets : numpy.ndarray
        (H, W) bool, True at target pixels.
    abundance : numpy.ndarray
        (H, W) float32 target abundance (0 off target).
    """

    cube: np.ndarray
    wavelengths_um: np.ndarray
    targets: np.ndarray
    abundance: np.ndarray


def sensor_bands(n_bands: int) -> Tuple[np.ndarray, np.ndarray]:
    """Centres and FWHM (µm) of ``n_bands`` bands spread evenly over the three atmospheric windows.

    Bands go to the windows in proportion to their widths (largest remainder); within a window
    they are evenly spaced and each band's FWHM equals the spacing.
    """
    if n_bands < 3:
        raise UserError(f"a hyperspectral sensor needs at least 3 bands, got {n_bands}")
    widths = np.array([hi - lo for lo, hi in _WINDOWS_UM])
    share = n_bands * widths / widths.sum()
    k = np.floor(share).astype(int)
    k[np.argsort(k - share)[: n_bands - k.sum()]] += 1
    centres, fwhm = [], []
    for (lo, hi), count in zip(_WINDOWS_UM, k):
        step = (hi - lo) / count
        centres.extend(lo + step * (np.arange(count) + 0.5))
        fwhm.extend([step] * count)
    return np.array(centres), np.array(fwhm)


def resample_to_sensor(spectra, wavelengths_um, n_bands: int) -> Tuple[np.ndarray, np.ndarray]:
    """Resample spectra to the Gaussian bands of :func:`sensor_bands` (weights renormalised
    over the samples present, so the water-vapour gaps get none).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        (..., n_bands) float32 spectra and the (n_bands,) centres.
    """
    lam = np.asarray(wavelengths_um, dtype=np.float64)
    centres, fwhm = sensor_bands(n_bands)
    w = np.exp(-4.0 * np.log(2.0) * ((lam[None, :] - centres[:, None]) / fwhm[:, None]) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    return (np.asarray(spectra, dtype=np.float32) @ w.T.astype(np.float32)), centres


def _smooth_fields(rng: np.random.Generator, count: int, size: int, sigma: float) -> np.ndarray:
    """``count`` periodic Gaussian-correlated fields (size, size), zero mean, unit std."""
    f2 = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2
    noise = rng.standard_normal((count, size, size))
    field = np.fft.irfft2(np.fft.rfft2(noise) * np.exp(-2 * np.pi ** 2 * sigma ** 2 * f2), s=(size, size))
    field -= field.mean(axis=(1, 2), keepdims=True)
    return field / np.maximum(field.std(axis=(1, 2), keepdims=True), 1e-12)


def make_hsi_scene(seed: int, size: int = 64, n_bands: Optional[int] = None, target: str = "roof",
                   abundance=(0.05, 0.30), n_targets: int = 24, region_seed: int = 0,
                   noise: float = 0.002) -> HsiScene:
    """Generate one hyperspectral scene with sub-pixel targets (see the module docstring).

    Parameters
    ----------
    seed : int
        Layout, target placement and noise.
    size : int
        Edge in pixels (>= 24).
    n_bands : int, optional
        Sensor bands; ``None`` keeps the native 180 earthlib bands.
    target : {"roof", "burned"}
    abundance : (float, float)
        Range of the target abundance (fraction of the pixel), inclusive.
    n_targets : int
        Upper bound on the target count (fewer when the grid has fewer cells).
    region_seed : int
        Choice of background endmembers.
    noise : float
        Standard deviation of the additive noise, reflectance units.

    Returns
    -------
    HsiScene
    """
    if target not in _TARGETS:
        raise UserError(f"unknown target {target!r}; choose from {sorted(_TARGETS)}")
    lo, hi = float(abundance[0]), float(abundance[1])
    if not 0.0 < lo <= hi <= 1.0 or size < 24:
        raise UserError(f"need 0 < abundance low <= high <= 1 and size >= 24; got {abundance}, {size}")
    lib = load_spectral_library()
    region = np.random.default_rng([region_seed, 7])
    pools = [(lib.select(level2="vegetation"), 3), (lib.select(level2="bare", level3="soil"), 2),
             (lib.select(level2="npv"), 1)]
    ends = np.concatenate([p.reflectance[region.choice(len(p), k, replace=False)] for p, k in pools])
    tpool = lib.select(**_TARGETS[target]).reflectance
    lam = lib.wavelengths_um
    if n_bands is not None:
        ends, lam = resample_to_sensor(ends, lib.wavelengths_um, n_bands)
        tpool, _ = resample_to_sensor(tpool, lib.wavelengths_um, n_bands)
    rng = np.random.default_rng([seed, 11])
    logits = 2.0 * _smooth_fields(rng, len(ends), size, 6.0)
    mix = np.exp(logits - logits.max(axis=0))
    mix /= mix.sum(axis=0)
    cube = np.einsum("eb,ehw->bhw", ends, mix) * (1.0 + 0.05 * _smooth_fields(rng, 1, size, 4.0))
    cells = np.arange(6, size - 6, 8)
    grid = np.stack(np.meshgrid(cells, cells, indexing="ij"), -1).reshape(-1, 2)
    chosen = grid[rng.permutation(len(grid))[:n_targets]] + rng.integers(-2, 3, size=(min(n_targets, len(grid)), 2))
    a = rng.uniform(lo, hi, size=len(chosen))
    spectra = tpool[rng.integers(len(tpool), size=len(chosen))]
    r, c = chosen[:, 0], chosen[:, 1]
    cube[:, r, c] = (1.0 - a) * cube[:, r, c] + a * spectra.T
    cube += noise * rng.standard_normal(cube.shape)
    targets = np.zeros((size, size), dtype=bool)
    targets[r, c] = True
    amap = np.zeros((size, size), dtype=np.float32)
    amap[r, c] = a
    return HsiScene(cube.astype(np.float32), np.asarray(lam, dtype=np.float64), targets, amap)


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve, tie-aware.

    Parameters
    ----------
    scores : array_like
        Any shape; higher means more anomalous.
    labels : array_like
        Same size; truthy for positives (targets).

    Returns
    -------
    float
        ``(sum of positive average ranks - n1 (n1 + 1) / 2) / (n1 n0)``; NaN when a class is absent.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.size != y.size:
        raise UserError(f"scores ({s.size}) and labels ({y.size}) differ in size")
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0           # 1-based mean rank of each tie group
    ranks = average_rank[inverse.ravel()]
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))
