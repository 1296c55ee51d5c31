"""Physically grounded synthetic Landsat-7 ETM+ scenes with land-cover and cloud truth.

Every draw comes from ``numpy.random.default_rng(seed)``: same seed, identical arrays.

1. **Land cover**: argmax of one low-pass Gaussian field per class (correlation 8-24 px, so
   patches are tens of pixels wide) plus per-scene class biases (Dirichlet around
   ``_CLASS_PRIOR``); near a boundary a pixel takes up to 35 % of the runner-up class.
2. **Spectra**: per scene, four real earthlib spectra of each LEVEL_2 class (resampled once to
   the bands) are linearly mixed with abundances = 70 % smooth logistic-normal field + 30 %
   per-pixel flat Dirichlet. earthlib has no water, so ``water`` uses the analytic model
   :func:`ground.data.spectra.analytic_water_spectra` (~0.05 visible, ~0.005 NIR/SWIR) at 16
   turbidities. A smooth +-6 % illumination field stands in for topographic shading.
3. **Atmosphere** (crude): ``toa = path + T * ground``, path reflectance ~0.06 in the blue
   falling to ~0.001 in B7, transmittance 0.80-0.97.
4. **Clouds**: a fractal field (power ~ 1/f^beta, beta 2.2-3, numpy FFT) becomes an opacity ramp
   0..1 placed so that the fraction of pixels above :data:`CLOUD_OPACITY_THRESHOLD` equals the
   cover; the ramp width varies, giving thin semi-transparent and thick clouds, and 30 % of
   scenes peak below opacity 1 (thin cloud only). Cloud reflectance is flat, 0.6-0.9 in B1-B4,
   lower in B5 (x0.70-0.90) and B7 (x0.50-0.75) as for water/ice droplets, brighter in thick
   cores, plus 30 % of the path reflectance (air above the top).
   ``pixel = (1 - opacity) * toa + opacity * cloud``; haze below the threshold counts as clear.
5. **Sensor**: Gaussian read noise 1.5 DN + shot noise (variance 0.05 DN per DN), then 12-bit
   quantization (:func:`reflectance_to_dn`) into uint16.

No cloud shadows, adjacency effect or BRDF: data for cloud-screening and land-cover models,
not a radiative-transfer simulation.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from engines.errors import UserError
from ground.data.bands import ETM_BANDS, resample
from ground.data.spectra import analytic_water_spectra, default_data_root, load_spectral_library

__all__ = ["BANDS", "DN_BITS", "DN_MAX", "REFLECTANCE_MAX", "LANDCOVER_CLASSES", "CLOUD_OPACITY_THRESHOLD", "Scene",
           "make_scene", "make_tiles", "reflectance_to_dn", "dn_to_reflectance", "class_band_spectra"]

BANDS = ETM_BANDS
DN_BITS = 12
DN_MAX = 2 ** DN_BITS - 1
REFLECTANCE_MAX = 1.0
LANDCOVER_CLASSES = ("water", "vegetation", "bare", "built", "npv", "burned")
CLOUD_OPACITY_THRESHOLD = 0.3

_CLASS_PRIOR = np.array([0.15, 0.35, 0.25, 0.13, 0.08, 0.04])
_ENDMEMBERS = 4
_EDGE_MIX_MAX, _EDGE_WIDTH = 0.35, 0.15
_PATH = np.array([0.06, 0.04, 0.025, 0.012, 0.003, 0.001], dtype=np.float32)
_TRANSMITTANCE = np.array([0.80, 0.86, 0.90, 0.93, 0.96, 0.97], dtype=np.float32)
_PATH_ABOVE_CLOUD = np.float32(0.3)
_READ_NOISE_DN, _SHOT_VARIANCE_PER_DN = 1.5, 0.05


@dataclass(eq=False)
class Scene:
    """One synthetic ETM+ scene of H x W pixels.

    Attributes
    ----------
    dn : numpy.ndarray
        (6, H, W) uint16 digital numbers 0..:data:`DN_MAX`, bands in :data:`BANDS` order.
    reflectance : numpy.ndarray
        (6, H, W) float32 top-of-atmosphere-like reflectance before noise and quantization.
    landcover : numpy.ndarray
        (H, W) uint8 indices into :data:`LANDCOVER_CLASSES` (under the cloud too).
    cloud : numpy.ndarray
        (H, W) bool cloud truth, ``cloud_optical > CLOUD_OPACITY_THRESHOLD``.
    cloud_optical : numpy.ndarray
        (H, W) float32 cloud opacity 0 (clear) .. 1 (opaque).
    """

    dn: np.ndarray
    reflectance: np.ndarray
    landcover: np.ndarray
    cloud: np.ndarray
    cloud_optical: np.ndarray

    @property
    def cloud_fraction(self) -> float:
        """Fraction of pixels that are cloud (0..1)."""
        return float(self.cloud.mean())


def reflectance_to_dn(reflectance) -> np.ndarray:
    """Quantize reflectance to 12-bit DN: ``round(clip(r, 0, REFLECTANCE_MAX) / REFLECTANCE_MAX * DN_MAX)``."""
    r = np.clip(np.asarray(reflectance, dtype=np.float32), 0.0, REFLECTANCE_MAX)
    return np.rint(r * np.float32(DN_MAX / REFLECTANCE_MAX)).astype(np.uint16)


def dn_to_reflectance(dn) -> np.ndarray:
    """Inverse of :func:`reflectance_to_dn` (up to quantization), float32."""
    return np.asarray(dn, dtype=np.float32) * np.float32(REFLECTANCE_MAX / DN_MAX)


def class_band_spectra() -> tuple[np.ndarray, ...]:
    """Endmember pool of each class in :data:`LANDCOVER_CLASSES`, resampled to the six bands.

    Returns
    -------
    tuple of numpy.ndarray
        One (N_k, 6) float32 array per class (read-only, cached per data folder).
    """
    return _class_band_spectra(str(default_data_root()))


@functools.lru_cache(maxsize=2)
def _class_band_spectra(root: str) -> tuple[np.ndarray, ...]:
    library = load_spectral_library(root)
    pools = []
    for name in LANDCOVER_CLASSES:
        spectra = (analytic_water_spectra(library.wavelengths_um, np.linspace(0.0, 1.0, 16)) if name == "water"
                   else library.select(level2=name).reflectance)
        pool = resample(spectra, library.wavelengths_um)
        pool.setflags(write=False)
        pools.append(pool)
    return tuple(pools)


def _frequencies(height: int, width: int) -> np.ndarray:
    """Squared spatial frequency (cycles/px) of each rfft2 coefficient."""
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    return fy * fy + fx * fx


def _standardise(fields: np.ndarray) -> np.ndarray:
    fields = fields - fields.mean(axis=(-2, -1), keepdims=True)
    return fields / np.maximum(fields.std(axis=(-2, -1), keepdims=True), 1e-12)


def _upsample(low: np.ndarray, height: int, width: int, factor: int) -> np.ndarray:
    """Periodic bilinear interpolation of (C, h, w) fields to (C, H, W); plain numpy, no BLAS."""
    def neighbours(size: int, n_low: int):
        position = (np.arange(size) + 0.5) / factor - 0.5
        left = np.floor(position).astype(np.intp)
        return left % n_low, (left + 1) % n_low, (position - left).astype(np.float32)
    left, right, frac = neighbours(height, low.shape[1])
    rows = low[:, left, :] * (1.0 - frac)[:, None] + low[:, right, :] * frac[:, None]
    left, right, frac = neighbours(width, low.shape[2])
    return rows[:, :, left] * (1.0 - frac) + rows[:, :, right] * frac


def _smooth_fields(rng: np.random.Generator, count: int, height: int, width: int,
                   sigma_px: float, factor: int) -> np.ndarray:
    """``count`` Gaussian-correlated fields (H, W), zero mean, unit std.

    White noise is low-pass filtered (periodic FFT) on a grid ``factor`` times coarser and
    linearly interpolated up; with ``sigma_px / factor >= 1`` the result is as smooth as
    filtering at full resolution, at a fraction of the cost.
    """
    low_h, low_w = -(-height // factor), -(-width // factor)
    noise = rng.standard_normal((count, low_h, low_w), dtype=np.float32)
    gain = np.exp(-2.0 * np.pi ** 2 * np.float32(sigma_px / factor) ** 2 * _frequencies(low_h, low_w))
    low = _standardise(np.fft.irfft2(np.fft.rfft2(noise) * gain, s=(low_h, low_w)).astype(np.float32))
    return _upsample(low, height, width, factor)


def _fractal_field(rng: np.random.Generator, height: int, width: int, beta: float) -> np.ndarray:
    """Gaussian random field with power spectrum ~ 1/f^beta; zero mean, unit std."""
    f2 = _frequencies(height, width)
    f2[0, 0] = np.inf
    amplitude = f2 ** np.float32(-beta / 4.0)          # |F| ~ f^(-beta/2) = (f^2)^(-beta/4)
    noise = rng.standard_normal((height, width), dtype=np.float32)
    return _standardise(np.fft.irfft2(np.fft.rfft2(noise) * amplitude, s=(height, width)))


def _draw_cover(rng: np.random.Generator) -> float:
    """Random cloud cover: 35 % nearly clear (<5 %), 30 % broken, 35 % overcast (>70 %)."""
    u = rng.random()
    low, high = (0.0, 0.05) if u < 0.35 else (0.05, 0.70) if u < 0.65 else (0.70, 1.0)
    return float(rng.uniform(low, high))


def _ground(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Surface reflectance (6, H, W) float32 and land-cover labels (H, W) uint8."""
    pools = class_band_spectra()
    k, m, pixels = len(LANDCOVER_CLASSES), _ENDMEMBERS, height * width
    endmembers = np.stack([pool[rng.choice(len(pool), m, replace=False)] for pool in pools])  # (K, M, 6)
    score = _smooth_fields(rng, k, height, width, rng.uniform(8.0, 24.0), 4).reshape(k, pixels)
    score += 0.8 * np.log(rng.dirichlet(_CLASS_PRIOR * 6.0) + 1e-3).astype(np.float32)[:, None]
    flat, columns, first = score.reshape(-1), np.arange(pixels), score.argmax(axis=0)
    at_first = first * pixels + columns
    best = flat[at_first]
    flat[at_first] = -np.inf
    at_second = score.argmax(axis=0) * pixels + columns                    # runner-up class
    w_second = _EDGE_MIX_MAX * np.exp((flat[at_second] - best) / _EDGE_WIDTH)
    weights = np.zeros(k * pixels, dtype=np.float32)                       # class weight per pixel
    weights[at_first], weights[at_second] = 1.0 - w_second, w_second
    weights = weights.reshape(k, pixels)

    logits = 1.5 * _smooth_fields(rng, m, height, width, rng.uniform(2.0, 6.0), 2).reshape(m, pixels)
    coarse = np.exp(logits - logits.max(axis=0))
    coarse /= coarse.sum(axis=0)
    fine = rng.standard_exponential((m, pixels), dtype=np.float32)        # flat Dirichlet draw
    abundance = 0.7 * coarse + 0.3 * fine / fine.sum(axis=0)               # (M, HW) on the simplex
    mixing = (weights[:, None, :] * abundance[None, :, :]).reshape(k * m, pixels)
    surface = np.einsum("jb,jp->bp", endmembers.reshape(k * m, 6), mixing)  # (6, HW); einsum: no BLAS threads
    surface *= 1.0 + 0.06 * _smooth_fields(rng, 1, height, width, 4.0, 2).reshape(1, pixels)
    return surface.reshape(6, height, width).astype(np.float32), first.reshape(height, width).astype(np.uint8)


def _clouds(rng: np.random.Generator, height: int, width: int, cover: float) -> tuple[np.ndarray, np.ndarray]:
    """Cloud opacity (H, W) float32 and cloud reflectance (6, H, W) float32."""
    field = _fractal_field(rng, height, width, rng.uniform(2.2, 3.0))
    peak = 1.0 if rng.random() < 0.7 else rng.uniform(0.45, 1.0)   # some scenes: thin cloud only
    ramp = rng.uniform(0.3, 1.6)                                     # edge width, field std units
    start = np.quantile(field, 1.0 - cover) - (CLOUD_OPACITY_THRESHOLD / peak) * ramp
    depth = (field - start) / ramp
    opacity = (peak * np.clip(depth, 0.0, 1.0)).astype(np.float32)
    spectrum = rng.uniform(0.6, 0.9) * np.array([1.0, 1.0, 1.0, 1.0, rng.uniform(0.70, 0.90), rng.uniform(0.50, 0.75)])
    core = 0.88 + 0.06 * np.clip(depth - 1.0, 0.0, 2.0)                          # thick cores brighter
    return opacity, (spectrum[:, None, None] * core[None]).astype(np.float32)


def make_scene(seed: int, height: int = 256, width: int = 256, cloud_cover: float | None = None) -> Scene:
    """Generate one synthetic ETM+ scene, deterministic by ``seed``.

    Parameters
    ----------
    seed : int
        Seed of ``numpy.random.default_rng``; the same seed gives identical arrays.
    height, width : int
        Scene size in pixels (at least 8 each).
    cloud_cover : float, optional
        Fraction (0..1) of pixels whose opacity exceeds :data:`CLOUD_OPACITY_THRESHOLD`.
        ``None`` draws one: 35 % of scenes nearly clear (< 0.05), 30 % broken (0.05-0.7),
        35 % overcast (> 0.7).

    Returns
    -------
    Scene

    Raises
    ------
    engines.errors.UserError
        On a size below 8 px, a cover outside 0..1, or a missing spectral library.
    """
    height, width = int(height), int(width)
    if height < 8 or width < 8:
        raise UserError(f"scene size must be at least 8 x 8 pixels, got {height} x {width}")
    if cloud_cover is not None and not 0.0 <= float(cloud_cover) <= 1.0:
        raise UserError(f"cloud_cover must be in 0..1 (a fraction, not a percentage), got {cloud_cover}")
    rng = np.random.default_rng(seed)
    cover = _draw_cover(rng) if cloud_cover is None else float(cloud_cover)
    surface, landcover = _ground(rng, height, width)
    path = _PATH[:, None, None] * np.float32(rng.uniform(0.7, 1.4))               # aerosol load
    toa = path + _TRANSMITTANCE[:, None, None] * surface
    opacity, cloud_reflectance = _clouds(rng, height, width, cover)
    cloud_toa = cloud_reflectance + _PATH_ABOVE_CLOUD * path           # the air above a cloud top
    reflectance = ((1.0 - opacity) * toa + opacity * cloud_toa).astype(np.float32)
    signal = reflectance * np.float32(DN_MAX / REFLECTANCE_MAX)
    sigma = np.sqrt(_READ_NOISE_DN ** 2 + _SHOT_VARIANCE_PER_DN * np.maximum(signal, 0.0))
    noisy = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    dn = np.rint(np.clip(noisy, 0.0, DN_MAX)).astype(np.uint16)                  # = reflectance_to_dn
    return Scene(dn, reflectance, landcover, opacity > CLOUD_OPACITY_THRESHOLD, opacity)


def make_tiles(n: int, seed: int, tile: int = 64, scene_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``n`` square tiles (DN and cloud mask) from as many synthetic scenes as needed.

    Scenes are ``scene_size`` square with a random cover each (see :func:`make_scene`); each
    gives ``(scene_size // tile) ** 2`` non-overlapping tiles in row-major order, and tiles
    come out in scene order (shuffle them yourself for training batches).

    Parameters
    ----------
    n : int
        Number of tiles (>= 0).
    seed : int
        Seed; the scene seeds are drawn from ``numpy.random.default_rng(seed)``.
    tile, scene_size : int
        Tile and scene edge in pixels, ``8 <= tile <= scene_size``.

    Returns
    -------
    dn : numpy.ndarray
        (n, 6, tile, tile) uint16.
    cloud : numpy.ndarray
        (n, tile, tile) uint8, 1 where cloud.
    """
    n, tile, scene_size = int(n), int(tile), int(scene_size)
    if n < 0 or not 8 <= tile <= scene_size:
        raise UserError(f"need n >= 0 and 8 <= tile <= scene_size; got {n=}, {tile=}, {scene_size=}")
    per_side = scene_size // tile
    per_scene, crop = per_side * per_side, per_side * tile
    n_scenes = -(-n // per_scene)
    seeds = np.random.default_rng(seed).integers(0, 2 ** 63 - 1, size=n_scenes)
    dn = np.empty((n_scenes * per_scene, 6, tile, tile), dtype=np.uint16)
    cloud = np.empty((n_scenes * per_scene, tile, tile), dtype=np.uint8)
    for i, scene_seed in enumerate(seeds):
        scene = make_scene(int(scene_seed), scene_size, scene_size)
        blocks = scene.dn[:, :crop, :crop].reshape(6, per_side, tile, per_side, tile)
        dn[i * per_scene:(i + 1) * per_scene] = blocks.transpose(1, 3, 0, 2, 4).reshape(per_scene, 6, tile, tile)
        mask = scene.cloud[:crop, :crop].reshape(per_side, tile, per_side, tile).transpose(0, 2, 1, 3)
        cloud[i * per_scene:(i + 1) * per_scene] = mask.reshape(per_scene, tile, tile)
    return dn[:n], cloud[:n]
