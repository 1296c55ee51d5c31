"""Satellites and ground stations: SGP4 constellations and topocentric views.

A `Constellation` is a set of SGP4 element sets (from TLE files or built as a Walker-delta
pattern) propagated together with sgp4's array API; positions are TEME kilometres shaped
``(n_sat, n_time, 3)``. A propagation error (a decayed satellite, elements out of range) gives
NaN for that satellite and time and a message in ``Constellation.invalid``; nothing raises.
A `GroundStation` is a WGS84 site with an elevation mask; ``station.altaz(constellation, times)``
gives elevation, azimuth and range for every satellite and time.

Frames: TEME is rotated to the Earth-fixed frame by IAU-82 GMST with UT1 = UTC; polar motion
(< 0.5") and the equation of the equinoxes (< 1.2") are ignored. With |UT1 - UTC| < 0.9 s this is
a few hundred metres at LEO, i.e. below 0.1 s in a rise or set time.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
from sgp4.api import SGP4_ERRORS, WGS72, Satrec, SatrecArray

from engines.errors import UserError
from sim.timescale import Times, as_utc, julian_date, teme_to_itrf

MU_WGS72 = 398600.8                   # km^3/s^2, the constants SGP4 element sets are made with
RE_WGS72 = 6378.135                   # km
WGS84_A, WGS84_F = 6378.137, 1.0 / 298.257223563


class Constellation:
    """Satellites propagated together with SGP4.

    Parameters
    ----------
    satrecs : list of sgp4.api.Satrec
        Initialised element sets.
    names : list of str, optional
        One name per satellite (default: the catalogue numbers).
    plane, slot : array_like of int, optional
        Walker plane and slot of each satellite, when it has them.

    Attributes
    ----------
    invalid : dict
        Satellite name -> why its positions are NaN (first failure seen).
    """

    def __init__(self, satrecs, names=None, plane=None, slot=None):
        self.satrecs = list(satrecs)
        if not self.satrecs:
            raise UserError("a constellation needs at least one satellite")
        self.names = list(names) if names is not None else [str(s.satnum) for s in self.satrecs]
        self.plane = None if plane is None else np.asarray(plane)
        self.slot = None if slot is None else np.asarray(slot)
        self.invalid = {}
        for name, sat in zip(self.names, self.satrecs):
            if sat.error:
                self.invalid[name] = f"element set rejected at initialisation: {SGP4_ERRORS.get(sat.error, sat.error)}"

    def __len__(self) -> int:
        return len(self.satrecs)

    def __repr__(self) -> str:
        return f"<Constellation of {len(self)} satellites>"

    @property
    def epoch(self) -> dt.datetime:
        """The latest element-set epoch (UTC)."""
        s = max(self.satrecs, key=lambda s: s.jdsatepoch + s.jdsatepochF)
        return dt.datetime(2000, 1, 1, 12, tzinfo=dt.timezone.utc) + dt.timedelta(
            days=(s.jdsatepoch - 2451545.0) + s.jdsatepochF)

    @classmethod
    def walker_delta(cls, total: int, planes: int, phasing: int, altitude_km: float,
                     inclination_deg: float, epoch, prefix: str = "W") -> "Constellation":
        """A Walker-delta pattern i: t/p/f of circular orbits.

        Plane ``p`` has right ascension ``360 p / planes``; slot ``s`` of plane ``p`` has mean
        anomaly ``360 s / (t/p) + 360 f p / t``. ``altitude_km`` is the SGP4 mean semi-major axis
        minus the WGS72 equatorial radius; drag terms are zero.
        """
        if total < 1 or planes < 1 or total % planes:
            raise UserError(f"Walker t/p/f needs planes dividing total, got {total}/{planes}/{phasing}")
        if not 0 <= phasing < planes:
            raise UserError(f"Walker phasing f must be in 0..planes-1, got f={phasing} with p={planes}")
        if not 100 <= altitude_km <= 50000 or not 0 <= inclination_deg <= 180:
            raise UserError(f"altitude {altitude_km} km or inclination {inclination_deg} deg is out of range")
        jd, fr = julian_date(epoch)
        epoch_1949 = jd + fr - 2433281.5
        n_kozai = _mean_motion(altitude_km, inclination_deg, epoch_1949)
        per_plane = total // planes
        sats, names, plane, slot = [], [], [], []
        for p in range(planes):
            for s in range(per_plane):
                m = 360.0 * s / per_plane + 360.0 * phasing * p / total
                sat = Satrec()
                sat.sgp4init(WGS72, "i", len(sats) + 1, epoch_1949, 0.0, 0.0, 0.0, 0.0, 0.0,
                             math.radians(inclination_deg), math.radians(m % 360.0), n_kozai,
                             math.radians(360.0 * p / planes))
                sats.append(sat)
                names.append(f"{prefix}{p + 1:02d}-{s + 1:02d}")
                plane.append(p)
                slot.append(s)
        return cls(sats, names, plane, slot)

    @classmethod
    def from_tle_file(cls, path) -> "Constellation":
        """Read two- or three-line element sets; ``#`` lines and text after column 69 are ignored."""
        try:
            with open(path) as fh:
                lines = fh.read().splitlines()
        except UnicodeDecodeError:
            raise UserError(f"TLE file {path} is not a text file; give two- or three-line element sets "
                            "(lines starting with '1 ' and '2 ')") from None
        except OSError as e:
            raise UserError(f"cannot read TLE file {path}: {e.strerror or e}") from None
        return cls.from_tle_lines(lines, source=str(path))

    @classmethod
    def from_tle_lines(cls, lines, source: str = "<lines>") -> "Constellation":
        """Element sets from an iterable of text lines (see `from_tle_file`)."""
        sats, names, title = [], [], None
        lines = [ln.rstrip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        for i, line in enumerate(lines):
            if line.startswith("1 ") and i + 1 < len(lines) and lines[i + 1].startswith("2 "):
                sat = Satrec.twoline2rv(line[:69], lines[i + 1][:69])
                sats.append(sat)
                names.append(title or str(sat.satnum))
                title = None
            elif not line.startswith("2 "):
                title = line[2:].strip() if line.startswith("0 ") else line.strip()
        if not sats:
            raise UserError(f"no two-line element sets found in {source}; lines must start with '1 ' and '2 '")
        return cls(sats, names)

    def at(self, times: Times) -> tuple:
        """``(r, v)``: TEME position (km) and velocity (km/s), each ``(n_sat, n_time, 3)``."""
        e, r, v = SatrecArray(self.satrecs).sgp4(times.jd, times.fr)   # a private copy per call
        bad = e != 0
        if bad.any():
            r[bad], v[bad] = np.nan, np.nan
            for i in np.nonzero(bad.any(axis=1))[0]:
                name = self.names[i]
                if name not in self.invalid:
                    k = int(np.argmax(bad[i]))
                    self.invalid[name] = (f"{SGP4_ERRORS.get(int(e[i, k]), e[i, k])} "
                                          f"(first at {times.utc(k):%Y-%m-%dT%H:%M:%SZ})")
        return r, v

    def positions(self, times: Times) -> np.ndarray:
        """TEME positions, km, ``(n_sat, n_time, 3)``; NaN where SGP4 failed."""
        return self.at(times)[0]

    def itrf_positions(self, times: Times) -> np.ndarray:
        """Earth-fixed positions (ITRF without polar motion), km, ``(n_sat, n_time, 3)``."""
        return teme_to_itrf(self.positions(times), times.gmst())


def _mean_motion(altitude_km, inclination_deg, epoch_1949) -> float:
    """Kozai mean motion (rad/min) whose SGP4 mean semi-major axis is ``RE + altitude``."""
    a = RE_WGS72 + altitude_km
    n = math.sqrt(MU_WGS72 / a ** 3) * 60.0
    for _ in range(4):
        sat = Satrec()
        sat.sgp4init(WGS72, "i", 0, epoch_1949, 0.0, 0.0, 0.0, 0.0, 0.0, math.radians(inclination_deg), 0.0, n, 0.0)
        n *= (sat.a * RE_WGS72 / a) ** 1.5
    return n


@dataclass(frozen=True)
class GroundStation:
    """A ground station on the WGS84 ellipsoid with an elevation mask.

    Parameters
    ----------
    name : str
    lat_deg, lon_deg : float
        Geodetic latitude and longitude, degrees (east positive).
    alt_m : float
        Height above the ellipsoid, metres.
    min_elevation_deg : float
        Elevation mask: contact while the satellite is above it.
    """

    name: str
    lat_deg: float
    lon_deg: float
    alt_m: float = 0.0
    min_elevation_deg: float = 10.0

    def __post_init__(self):
        if not (-90 <= self.lat_deg <= 90 and -360 <= self.lon_deg <= 360 and -10 < self.min_elevation_deg < 90):
            raise UserError(f"station {self.name!r}: latitude, longitude or elevation mask out of range")

    def itrf(self) -> np.ndarray:
        """Earth-fixed position, km, shape (3,)."""
        lat, lon = math.radians(self.lat_deg), math.radians(self.lon_deg)
        e2 = WGS84_F * (2 - WGS84_F)
        n = WGS84_A / math.sqrt(1 - e2 * math.sin(lat) ** 2)
        h = self.alt_m / 1000.0
        return np.array([(n + h) * math.cos(lat) * math.cos(lon), (n + h) * math.cos(lat) * math.sin(lon),
                         (n * (1 - e2) + h) * math.sin(lat)])

    def enu(self) -> np.ndarray:
        """Rows: the east, north and up (ellipsoid normal) unit vectors in the Earth-fixed frame."""
        lat, lon = math.radians(self.lat_deg), math.radians(self.lon_deg)
        sl, cl, so, co = math.sin(lat), math.cos(lat), math.sin(lon), math.cos(lon)
        return np.array([[-so, co, 0.0], [-sl * co, -sl * so, cl], [cl * co, cl * so, sl]])

    def altaz(self, constellation: Constellation, times: Times) -> tuple:
        """``(elevation_deg, azimuth_deg, range_km)`` of every satellite, each ``(n_sat, n_time)``."""
        d = constellation.itrf_positions(times) - self.itrf()
        e, n, u = np.moveaxis(d @ self.enu().T, -1, 0)
        rng = np.sqrt(e * e + n * n + u * u)
        return np.degrees(np.arcsin(u / rng)), np.degrees(np.arctan2(e, n)) % 360.0, rng


def walker_spec(spec: str, epoch) -> Constellation:
    """A Walker-delta constellation from ``"INC:T/P/F@ALT_KM"``, e.g. ``"53:24/3/1@550"``."""
    try:
        inc, rest = spec.split(":")
        tpf, alt = rest.split("@")
        t, p, f = (int(x) for x in tpf.split("/"))
        return Constellation.walker_delta(t, p, f, float(alt), float(inc), as_utc(epoch))
    except ValueError:
        raise UserError(f"cannot read the Walker spec {spec!r}; write INC:T/P/F@ALT_KM, e.g. 97.6:24/3/1@550")


# Public ground-station sites (approximate coordinates; heights in metres).
_SITES = [
    ("Svalbard", 78.229, 15.408, 500), ("Kiruna", 67.889, 21.065, 390), ("Fairbanks", 64.859, -147.850, 300),
    ("Inuvik", 68.319, -133.549, 80), ("Tromso", 69.662, 18.940, 130), ("Troll", -72.012, 2.535, 1300),
    ("McMurdo", -77.839, 166.667, 150), ("Hartebeesthoek", -25.886, 27.707, 1550),
    ("Santiago", -33.151, -70.668, 730), ("Singapore", 1.396, 103.835, 20), ("Awarua", -46.528, 168.381, 10),
    ("Punta Arenas", -52.938, -70.857, 30), ("Wallops", 37.940, -75.466, 10), ("South Point", 19.014, -155.663, 370),
    ("Dongara", -29.046, 115.349, 250), ("Maspalomas", 27.763, -15.634, 200), ("Weilheim", 47.881, 11.078, 600),
    ("Kourou", 5.252, -52.805, 15), ("Malindi", -2.996, 40.195, 10), ("Alice Springs", -23.759, 133.882, 600),
]
DEFAULT_STATIONS = [GroundStation(n, lat, lon, alt) for n, lat, lon, alt in _SITES]


def load_stations(spec=None, min_elevation_deg: float = 10.0) -> list:
    """Ground stations from ``spec``.

    ``None`` or ``"all"``: the 20 built-in public sites; ``"default:N"``: the first N of them;
    a comma-separated list of built-in names; or a JSON file holding a list of objects with
    ``name, lat_deg, lon_deg`` and optional ``alt_m, min_elevation_deg``.
    """
    import json
    import os

    base = [GroundStation(s.name, s.lat_deg, s.lon_deg, s.alt_m, min_elevation_deg) for s in DEFAULT_STATIONS]
    if spec is None or spec == "all":
        return base
    if spec.startswith("default:"):
        return base[:int(spec.split(":", 1)[1])]
    if os.path.exists(spec):
        try:
            with open(spec) as fh:
                return [GroundStation(**{"min_elevation_deg": min_elevation_deg, **d}) for d in json.load(fh)]
        except (ValueError, TypeError) as e:
            raise UserError(f"cannot read stations from {spec}: {e}; expected a JSON list of "
                            "{name, lat_deg, lon_deg, alt_m, min_elevation_deg}") from e
    known = {s.name.lower(): s for s in base}
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    missing = [w for w in wanted if w.lower() not in known]
    if missing:
        raise UserError(f"unknown station(s) {missing}; built-in: {', '.join(s.name for s in base)}, "
                        "or give a JSON file")
    return [known[w.lower()] for w in wanted]
