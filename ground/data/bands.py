"""Landsat-7 ETM+ reflective bands and spectral resampling onto them.

The six reflective ETM+ bands are described by their band-pass edges (µm, roughly the
half-maximum points of the published response curves):

====  =============  ======================
band  edges (µm)     region
====  =============  ======================
B1    0.450-0.515    blue
B2    0.525-0.605    green
B3    0.630-0.690    red
B4    0.775-0.900    near infrared
B5    1.550-1.750    shortwave infrared 1
B7    2.080-2.350    shortwave infrared 2
====  =============  ======================

Each relative spectral response (RSR) is modelled as a smooth flat-top super-Gaussian whose
half-maximum points sit on the band edges. This *approximates*, and does not reproduce, the
published ETM+ RSRs (which have ripples and asymmetric shoulders); band-averaged reflectances
differ from the official ones by a few thousandths for smooth spectra.
"""
from __future__ import annotations

import numpy as np

from engines.errors import UserError

__all__ = ["ETM_BANDS", "BAND_EDGES_UM", "band_centers_um", "response", "resample"]

ETM_BANDS = ("B1", "B2", "B3", "B4", "B5", "B7")
BAND_EDGES_UM = {
    "B1": (0.450, 0.515),
    "B2": (0.525, 0.605),
    "B3": (0.630, 0.690),
    "B4": (0.775, 0.900),
    "B5": (1.550, 1.750),
    "B7": (2.080, 2.350),
}
_SUPER_GAUSS_ORDER = 4      # exponent 2p = 8: steep shoulders, flat top
_MIN_WEIGHT = 1e-3          # responses below this fraction of the peak are ignored


def band_centers_um() -> np.ndarray:
    """Centre wavelength of each band in :data:`ETM_BANDS` order.

    Returns
    -------
    numpy.ndarray
        (6,) float64 micrometres.
    """
    return np.array([sum(BAND_EDGES_UM[b]) / 2.0 for b in ETM_BANDS])


def response(wavelengths_um) -> np.ndarray:
    """Approximate relative spectral response of each band at the given wavelengths.

    Parameters
    ----------
    wavelengths_um : array_like
        (N,) wavelengths in micrometres.

    Returns
    -------
    numpy.ndarray
        (6, N) float64 in 0..1: 1 inside the band, 0.5 at the band edges, falling to 0 outside.
    """
    lam = _check_wavelengths(wavelengths_um)
    lo, hi = np.array([BAND_EDGES_UM[b] for b in ETM_BANDS]).T
    centre, half_width = (lo + hi) / 2.0, (hi - lo) / 2.0
    x = (lam[None, :] - centre[:, None]) / half_width[:, None]
    return np.exp(-np.log(2.0) * x ** (2 * _SUPER_GAUSS_ORDER))


def _check_wavelengths(wavelengths_um) -> np.ndarray:
    lam = np.asarray(wavelengths_um, dtype=np.float64)
    if lam.ndim != 1 or lam.size < 2:
        raise UserError(f"wavelengths must be a 1-D array of at least 2 values, got shape {lam.shape}")
    if np.nanmax(lam) > 20.0:
        raise UserError(
            f"wavelengths go up to {np.nanmax(lam):g}; they must be in micrometres "
            "(divide nanometres by 1000)"
        )
    return lam


def _quadrature_widths(lam: np.ndarray) -> np.ndarray:
    """Width each sample stands for: half the distance to each neighbour, not across gaps."""
    step = np.diff(lam)
    typical = np.median(step)
    step = np.minimum(step, typical)      # a gap (absorption band) counts as one ordinary step
    widths = np.empty_like(lam)
    widths[1:-1] = (step[:-1] + step[1:]) / 2.0
    widths[0], widths[-1] = step[0], step[-1]
    return widths


def resample(reflectance, wavelengths_um) -> np.ndarray:
    """Band-average spectra onto the six ETM+ bands.

    Each band value is the RSR-weighted mean of the available samples,
    ``sum(r_i * RSR_b(l_i) * dl_i) / sum(RSR_b(l_i) * dl_i)``, over the given wavelength grid.
    Gaps in the grid (the water-vapour bands of earthlib) and NaN samples get no weight, so
    the weights are renormalised over what is there.

    Parameters
    ----------
    reflectance : array_like
        (..., N) spectra on ``wavelengths_um``.
    wavelengths_um : array_like
        (N,) increasing wavelengths in micrometres.

    Returns
    -------
    numpy.ndarray
        (..., 6) float32 in :data:`ETM_BANDS` order. A band the grid does not reach (or whose
        samples are all NaN) is NaN.
    """
    lam = _check_wavelengths(wavelengths_um)
    spectra = np.asarray(reflectance, dtype=np.float32)
    if spectra.shape[-1] != lam.size:
        raise UserError(
            f"reflectance has {spectra.shape[-1]} samples on its last axis but {lam.size} wavelengths were given"
        )
    weights = response(lam)
    weights[weights < _MIN_WEIGHT] = 0.0
    weights *= _quadrature_widths(lam)[None, :]
    finite = np.isfinite(spectra)
    if finite.all():
        total = weights.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            normalised = np.where(total[:, None] > 0, weights / total[:, None], np.nan)
        return (spectra @ normalised.T.astype(np.float32)).astype(np.float32)
    w = weights.astype(np.float32)
    numerator = np.where(finite, spectra, 0.0).astype(np.float32) @ w.T
    denominator = finite.astype(np.float32) @ w.T
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(denominator > 0, numerator / denominator, np.nan)
    return out.astype(np.float32)
