"""Time for the simulator: UTC instants, Earth rotation, and searching a time grid for windows.

`Times` holds instants as a UTC epoch plus offsets in seconds, which is what contact plans are
written in and what the sgp4 array API wants (``jd`` + ``fr``). `gmst` is the IAU-82 Greenwich
mean sidereal time that SGP4's TEME frame is defined against. `find_windows` turns a sampled
function of time (positive = "in contact", "in sunlight", ...) into refined windows: sign changes
between samples, and sub-step bumps above zero that no sample caught, are solved for on a cubic
Hermite interpolation of the orbit, so times come out to a millisecond whatever the step.
"""
from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from engines.errors import UserError

DAY_S = 86400.0
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def as_utc(when) -> dt.datetime:
    """A timezone-aware UTC datetime from a datetime (naive means UTC) or an ISO 8601 string."""
    if isinstance(when, str):
        try:
            when = dt.datetime.fromisoformat(when.strip().replace("Z", "+00:00"))
        except ValueError:
            raise UserError(f"cannot read the time {when!r}; write it as ISO 8601, e.g. 2026-11-21T00:00:00Z")
    if not isinstance(when, dt.datetime):
        raise UserError(f"expected a UTC datetime or ISO 8601 string, got {type(when).__name__}")
    return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)


def julian_date(when) -> tuple:
    """``(jd, fr)``: the Julian date of the UTC midnight starting ``when``'s day, and the day fraction."""
    when = as_utc(when)
    days = (when.date() - dt.date(2000, 1, 1)).days
    sod = when.hour * 3600 + when.minute * 60 + when.second + when.microsecond * 1e-6
    return 2451544.5 + days, sod / DAY_S


class Times:
    """UTC instants: an ``epoch`` and ``seconds`` after it (a 1-D array).

    Parameters
    ----------
    epoch : datetime or str
        Reference instant (UTC); contact plans count seconds from it.
    seconds : array_like
        Offsets from ``epoch`` in SI seconds (leap seconds inside the span are ignored).
    """

    def __init__(self, epoch, seconds=0.0):
        self.epoch = as_utc(epoch)
        self.seconds = np.atleast_1d(np.asarray(seconds, dtype=float))
        jd0, fr0 = julian_date(self.epoch)
        self.jd = np.full(self.seconds.shape, jd0)
        self.fr = fr0 + self.seconds / DAY_S

    @classmethod
    def span(cls, epoch, hours: float, step_s: float) -> "Times":
        """A uniform grid from ``epoch`` over ``hours`` (both ends included) every ``step_s`` seconds."""
        if not (step_s > 0 and hours > 0):
            raise UserError(f"need hours > 0 and step_s > 0, got hours={hours}, step_s={step_s}")
        n = int(np.floor(hours * 3600.0 / step_s + 1e-9)) + 1
        return cls(epoch, np.arange(n) * float(step_s))

    def __len__(self) -> int:
        return len(self.seconds)

    def __getitem__(self, index) -> "Times":
        return Times(self.epoch, self.seconds[index])

    def utc(self, i: int = 0) -> dt.datetime:
        """The i-th instant as a UTC datetime."""
        return self.epoch + dt.timedelta(seconds=float(self.seconds[i]))

    def gmst(self) -> np.ndarray:
        """Greenwich mean sidereal time (IAU-82, UT1 taken as UTC), radians in [0, 2 pi)."""
        return gmst(self.jd, self.fr)


def gmst(jd, fr) -> np.ndarray:
    """IAU-82 GMST in radians for UT1 Julian dates split as ``jd + fr``."""
    t = ((np.asarray(jd) - 2451545.0) + np.asarray(fr)) / 36525.0
    sec = 67310.54841 + (876600.0 * 3600.0 + 8640184.812866) * t + 0.093104 * t * t - 6.2e-6 * t ** 3
    return np.mod(sec % DAY_S * (2.0 * np.pi / DAY_S), 2.0 * np.pi)


def teme_to_itrf(r, theta) -> np.ndarray:
    """Rotate TEME vectors ``(..., n_time, 3)`` to the Earth-fixed frame by GMST ``theta (n_time,)``.

    Polar motion (< 0.5 arcsec) and the equation of the equinoxes that TEME keeps are ignored.
    """
    c, s = np.cos(theta)[..., None], np.sin(theta)[..., None]
    x, y, z = r[..., 0:1], r[..., 1:2], r[..., 2:3]
    return np.concatenate((c * x + s * y, c * y - s * x, z), axis=-1)


def hermite(r0, v0, r1, v1, h, tau) -> np.ndarray:
    """Cubic Hermite position at fraction ``tau`` of a step of ``h`` seconds (km, km/s; broadcasts).

    For LEO the error is below a metre for steps up to 60 s (it scales as h**4).
    """
    tau, h = np.asarray(tau)[..., None], np.asarray(h)[..., None]
    t2, t3 = tau * tau, tau * tau * tau
    return ((2 * t3 - 3 * t2 + 1) * r0 + (t3 - 2 * t2 + tau) * h * v0
            + (3 * t2 - 2 * t3) * r1 + (t3 - t2) * h * v1)


@dataclass
class Windows:
    """Intervals found by `find_windows`: item indices ``a``, ``b`` and ``start``/``end`` seconds."""

    a: np.ndarray
    b: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    @property
    def duration(self) -> np.ndarray:
        return self.end - self.start


def _bisect(g, lo, hi, rising, tol):
    """Roots of ``g(tau)`` in ``[lo, hi]`` (per item) that change sign in the direction ``rising``."""
    for _ in range(int(np.ceil(np.log2(max(float(np.max(hi - lo, initial=0)), 1e-12) / tol))) + 1):
        mid = 0.5 * (lo + hi)
        upper = (g(mid) > 0) == rising
        hi, lo = np.where(upper, mid, hi), np.where(upper, lo, mid)
    return 0.5 * (lo + hi)


def _golden_max(g, lo, hi, tol):
    """Maximum of a unimodal ``g(tau)`` on ``[lo, hi]`` per item: ``(tau, value)``."""
    c, d = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fc, fd = g(c), g(d)
    while np.max(hi - lo, initial=0) > tol:
        left = fc > fd                                   # the maximum lies in [lo, d]
        hi, lo = np.where(left, d, hi), np.where(left, lo, c)
        x = np.where(left, hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo))
        fx = g(x)
        c, d, fc, fd = np.where(left, x, d), np.where(left, c, x), np.where(left, fx, fd), np.where(left, fc, fx)
    tau = 0.5 * (lo + hi)
    return tau, g(tau)


def _nonzero(mask):
    """``np.nonzero`` of a 3-D boolean array, through its flat index (faster)."""
    return np.unravel_index(np.flatnonzero(mask), mask.shape)


def _chunk_events(sample, times, lo, hi, tol_s):
    """Sign changes and sub-step bumps for segments starting at grid indices ``lo..hi-1``."""
    first, last = max(lo - 1, 0), min(hi + 1, len(times))
    f, evaluate = sample(times[first:last])
    t = times.seconds[first:last]
    above = f > 0
    own = slice(lo - first, min(hi, len(times) - 1) - first)       # segments j -> j+1 owned here
    ia, j, ib = _nonzero(above[:, own.start + 1:own.stop + 1] != above[:, own])
    j = j + own.start
    rising = above[ia, j + 1, ib]
    h = t[j + 1] - t[j]
    tol = tol_s / max(h.max(initial=1.0), 1e-9)                     # in units of the longest step
    tau = _bisect(lambda x: evaluate(ia, ib, j, x), np.zeros(len(j)), np.ones(len(j)), rising, tol)
    ev = [(ia, ib, t[j] + tau * h, rising)]
    # bumps: a sample that is a local maximum below zero, whose parabola through its neighbours
    # comes within the parabola's own curvature of zero, is maximised on the interpolated orbit
    up = f[:, 1:] > f[:, :-1]
    peak = (up[:, :-1] > up[:, 1:]) > above[:, 1:-1]
    ka, k, kb = _nonzero(peak[:, max(own.start, 1) - 1:own.stop - 1])
    k = k + max(own.start, 1)
    y0, y1, y2 = f[ka, k - 1, kb], f[ka, k, kb], f[ka, k + 1, kb]
    curv = y0 - 2 * y1 + y2
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = y1 - (y2 - y0) ** 2 / (8 * curv) > curv
    ka, k, kb = ka[keep], k[keep], kb[keep]
    if len(k):
        best = []
        for seg in (k - 1, k):
            hs = t[seg + 1] - t[seg]
            g = lambda x, seg=seg: evaluate(ka, kb, seg, x)                # noqa: E731
            x, val = _golden_max(g, np.zeros(len(seg)), np.ones(len(seg)), tol_s / hs.max())
            best.append((seg, x, val, hs))
        right = best[1][2] > best[0][2]
        seg, xm, val, hs = (np.where(right, r, l) for l, r in zip(best[0], best[1]))
        hit = val > 0
        ka, kb, seg, xm, hs = ka[hit], kb[hit], seg[hit], xm[hit], hs[hit]
        g = lambda x: evaluate(ka, kb, seg, x)                              # noqa: E731
        tol = tol_s / hs.max(initial=1.0)
        t_rise = t[seg] + hs * _bisect(g, np.zeros(len(seg)), xm, np.ones(len(seg), bool), tol)
        t_set = t[seg] + hs * _bisect(g, xm, np.ones(len(seg)), np.zeros(len(seg), bool), tol)
        ev.append((ka, kb, t_rise, np.ones(len(ka), bool)))
        ev.append((ka, kb, t_set, np.zeros(len(ka), bool)))
    edges = {}
    if lo == 0:
        edges["first"] = above[:, 0]
    if hi >= len(times) - 1:
        edges["last"] = above[:, -1]
    return ev, edges


def find_windows(sample, times: Times, chunk: int, tol_s: float = 1e-3, workers: int = 2) -> Windows:
    """Intervals where a sampled function of time is positive, refined between samples.

    Parameters
    ----------
    sample : callable
        ``sample(times_chunk) -> (f, evaluate)``: ``f`` has shape ``(A, m, B)`` with time on axis 1
        (NaN counts as outside), and ``evaluate(a, b, j, tau)`` returns the function for items
        ``(a, b)`` at ``tau`` (0..1) of the way from local sample ``j`` to ``j + 1``.
    times : Times
        The grid; windows cut by its ends start or end there.
    chunk : int
        Grid points per chunk (bounds memory); chunks run on ``workers`` threads.
    tol_s : float
        Time tolerance of the refined rise and set times, seconds.
    """
    n = len(times)
    bounds = [(lo, min(lo + chunk, n)) for lo in range(0, max(n - 1, 1), max(int(chunk), 2))]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        parts = list(pool.map(lambda b: _chunk_events(sample, times, b[0], b[1], tol_s), bounds))
    ev = [e for p, _ in parts for e in p]
    first, last = parts[0][1]["first"], parts[-1][1]["last"]
    for edge, t_edge, rising in ((first, times.seconds[0], True), (last, times.seconds[-1], False)):
        ia, ib = np.nonzero(edge)
        ev.append((ia, ib, np.full(len(ia), t_edge), np.full(len(ia), rising)))
    a, b, t, r = (np.concatenate([e[i] for e in ev]) for i in range(4))
    order = np.lexsort((~r, t, b, a))            # by item, then time; a rise first at a tie
    a, b, t, r = a[order], b[order], t[order], r[order]
    ok = r[:-1] & ~r[1:] & (a[:-1] == a[1:]) & (b[:-1] == b[1:])
    i = np.nonzero(ok)[0]
    return Windows(a[i], b[i], t[i], t[i + 1])
