"""Sunlight and eclipse of satellites.

Sun: the Astronomical Almanac's low-precision solar coordinates (about 0.01 deg, 1950-2050),
referred to the mean equator and equinox of date, used as TEME (they differ by nutation, < 20").
Shadow: a conical model. Seen from the satellite, the Sun's disc (radius 696,000 km) and the
Earth's disc overlap; ``sunlit_fraction`` is the visible part of the solar disc (1 in sunlight,
0 in umbra, in between in the penumbra, which lasts about 10 s per crossing in LEO). Eclipse
windows run from the Sun's centre setting behind the Earth's limb to its rising. The limb radius
is the WGS84 ellipsoid's at the latitude of the terminator point under the satellite; the
atmosphere and refraction are ignored (the real edge is about 20-50 km higher, a few seconds).
With the Sun good to 0.01 deg, eclipse entry and exit are good to about 1 s in LEO.
"""
from __future__ import annotations

import numpy as np

from sim.orbits import WGS84_A, WGS84_F, Constellation
from sim.timescale import Times, Windows, find_windows, hermite

AU_KM = 149597870.7
SUN_RADIUS_KM = 696000.0


def sun_position(times: Times) -> np.ndarray:
    """Geocentric Sun, km, ``(n_time, 3)``, mean equator and equinox of date (used as TEME)."""
    n = (times.jd - 2451545.0) + times.fr
    g = np.radians(357.528 + 0.9856003 * n)
    lam = np.radians(280.460 + 0.9856474 * n + 1.915 * np.sin(g) + 0.020 * np.sin(2 * g))
    eps = np.radians(23.439 - 0.0000004 * n)
    dist = (1.00014 - 0.01671 * np.cos(g) - 0.00014 * np.cos(2 * g)) * AU_KM
    return np.stack([dist * np.cos(lam), dist * np.cos(eps) * np.sin(lam), dist * np.sin(eps) * np.sin(lam)], axis=-1)


def _discs(r, sun):
    """Apparent radii of the Sun (a) and Earth (b) and their separation (c), radians, from ``r``."""
    to_sun = sun - r
    ds, dr = np.linalg.norm(to_sun, axis=-1), np.linalg.norm(r, axis=-1)
    u = sun / np.linalg.norm(sun, axis=-1, keepdims=True)
    perp = r - np.sum(r * u, axis=-1, keepdims=True) * u                  # towards the limb point
    with np.errstate(invalid="ignore", divide="ignore"):
        sin2 = (perp[..., 2] / np.linalg.norm(perp, axis=-1)) ** 2
        radius = WGS84_A * (1.0 - WGS84_F * np.nan_to_num(sin2))
        cos_c = -np.sum(r * to_sun, axis=-1) / (dr * ds)
    return np.arcsin(SUN_RADIUS_KM / ds), np.arcsin(np.minimum(radius / dr, 1.0)), np.arccos(np.clip(cos_c, -1, 1))


def shadow_fraction(r, sun) -> np.ndarray:
    """Visible fraction of the solar disc (0..1) at TEME positions ``r (..., 3)`` with Sun ``sun``."""
    a, b, c = _discs(r, sun)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (c * c + a * a - b * b) / (2 * c)
        y = np.sqrt(np.maximum(a * a - x * x, 0.0))
        area = a * a * np.arccos(np.clip(x / a, -1, 1)) + b * b * np.arccos(np.clip((c - x) / b, -1, 1)) - c * y
        nu = 1.0 - area / (np.pi * a * a)
    nu = np.where(c >= a + b, 1.0, np.where(c <= b - a, 0.0, nu))
    return np.where(np.isnan(c), np.nan, np.clip(nu, 0.0, 1.0))


def sunlit_fraction(constellation: Constellation, times: Times) -> np.ndarray:
    """Visible fraction of the Sun for every satellite and time, ``(n_sat, n_time)``; NaN where invalid."""
    return shadow_fraction(constellation.positions(times), sun_position(times)[None])


def beta_angle(constellation: Constellation, times: Times) -> np.ndarray:
    """Angle between each orbit plane and the Sun direction, degrees, ``(n_sat, n_time)``."""
    r, v = constellation.at(times)
    h = np.cross(r, v)
    s = sun_position(times)[None]
    return np.degrees(np.arcsin(np.sum(h * s, -1) / (np.linalg.norm(h, axis=-1) * np.linalg.norm(s, axis=-1))))


def eclipse_windows(constellation: Constellation, times: Times, workers: int = 2) -> Windows:
    """Windows with the Sun's centre behind the Earth, per satellite (``a``; ``b`` is 0)."""

    def sample(tc):
        r, v = constellation.at(tc)
        sun = sun_position(tc)

        def evaluate(a, b, j, tau):
            h = tc.seconds[j + 1] - tc.seconds[j]
            x = hermite(r[a, j], v[a, j], r[a, j + 1], v[a, j + 1], h, tau)
            _, be, c = _discs(x, sun_position(Times(tc.epoch, tc.seconds[j] + tau * h)))
            return be - c
        _, be, c = _discs(r, sun[None])
        return (be - c)[..., None], evaluate

    return find_windows(sample, times, max(16, int(2e6 / len(constellation))), workers=workers)


def eclipse_fraction(constellation: Constellation, times: Times) -> np.ndarray:
    """Fraction of ``times``' span each satellite spends in eclipse (Sun centre hidden), ``(n_sat,)``."""
    w = eclipse_windows(constellation, times)
    total = np.bincount(w.a, weights=w.duration, minlength=len(constellation))
    return total / (times.seconds[-1] - times.seconds[0])
