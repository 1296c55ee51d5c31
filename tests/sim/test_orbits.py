"""Orbits against published references: SGP4 verification values, Walker geometry, eclipse, ISL.

Tolerances are physical: positions in km, angles in degrees, eclipse fraction in percentage points.
"""
import datetime as dt
import math
import os

import numpy as np
import pytest
import sgp4

from engines.errors import UserError
from sim.contacts import isl_clearance, isl_windows
from sim.eclipse import beta_angle, eclipse_fraction, sunlit_fraction
from sim.orbits import RE_WGS72, Constellation, GroundStation
from sim.timescale import Times

EPOCH = "2026-11-21T00:00:00Z"


@pytest.fixture(scope="module")
def verification(shared_data):
    """The SGP4-VER element sets and the published TEME results (tcppver.out, shipped with sgp4)."""
    path = os.path.join(os.path.dirname(sgp4.__file__), "tcppver.out")
    if not os.path.exists(path):
        pytest.skip(f"the sgp4 package has no tcppver.out at {path}")
    ref, current = {}, None
    with open(path) as fh:
        for line in fh:
            words = line.split()
            if len(words) == 2 and words[1] == "xx":
                current = ref.setdefault(words[0], [])
            elif words and current is not None:
                current.append([float(w) for w in words[:4]])
    return Constellation.from_tle_file(os.path.join(shared_data, "tle", "SGP4-VER.TLE")), ref


def _alone(constellation, name):
    i = constellation.names.index(name)
    return Constellation([constellation.satrecs[i]], [name])


def _epoch(sat):
    return dt.datetime(2000, 1, 1, 12, tzinfo=dt.timezone.utc) + dt.timedelta(
        days=(sat.jdsatepoch - 2451545.0) + sat.jdsatepochF)


@pytest.mark.parametrize("name", ["5", "6251", "28057"])
def test_sgp4_positions_match_verification_values_within_1_m(verification, name):
    tle, ref = verification
    one = _alone(tle, name)
    rows = np.array(ref[name])
    r = one.positions(Times(_epoch(one.satrecs[0]), rows[:, 0] * 60.0))[0]
    assert np.abs(r - rows[:, 1:4]).max() < 1e-3                   # km


def test_decayed_satellite_is_nan_with_a_message(verification):
    tle, _ = verification
    one = _alone(tle, "22312")                                     # decayed about 8 h after its epoch
    r = one.positions(Times(_epoch(one.satrecs[0]), np.arange(0, 1441, 20) * 60.0))[0]
    assert np.isfinite(r[:20]).all() and np.isnan(r[-1]).all()
    assert "22312" in one.invalid and "first at" in one.invalid["22312"]
    rejected = _alone(tle, "33334")                                # rejected by sgp4init
    assert np.isnan(rejected.positions(Times(EPOCH, [0.0, 60.0]))).all()
    assert "33334" in rejected.invalid


def test_walker_geometry_planes_phasing_altitude():
    c = Constellation.walker_delta(24, 3, 1, 550.0, 53.0, EPOCH)
    assert len(c) == 24 and c.names[0] == "W01-01" and c.epoch == dt.datetime(2026, 11, 21, tzinfo=dt.timezone.utc)
    t = Times.span(EPOCH, 24, 60)
    r, v = c.at(t)
    assert abs(np.linalg.norm(r, axis=-1).mean() - RE_WGS72 - 550.0) < 2.0          # km, mean altitude
    h = np.cross(r[:, 0], v[:, 0])
    raan = np.degrees(np.arctan2(h[:, 0], -h[:, 1])) % 360
    incl = np.degrees(np.arccos(h[:, 2] / np.linalg.norm(h, axis=1)))
    assert np.abs(incl - 53.0).max() < 0.1                                           # deg
    for p in range(3):
        in_plane = c.plane == p
        assert np.abs((raan[in_plane] - raan[0] - 120.0 * p + 180) % 360 - 180).max() < 0.1
    # in-plane spacing 45 deg; plane p is phased by f * 360 / t = 15 deg per plane
    u = r[:, 0] / np.linalg.norm(r[:, 0], axis=1)[:, None]
    assert abs(np.degrees(np.arccos(u[0] @ u[1])) - 45.0) < 0.3
    m = np.degrees([s.mo for s in c.satrecs])
    assert np.allclose(m[c.plane == 1][0], 15.0) and np.allclose(m[c.plane == 2][1], 45.0 + 30.0)


def test_walker_rejects_an_impossible_pattern():
    with pytest.raises(UserError, match="planes dividing total"):
        Constellation.walker_delta(10, 3, 1, 550, 53, EPOCH)


def test_eclipse_fraction_at_low_beta_matches_the_cylinder_within_0_3_points():
    epoch = "2026-03-20T12:00:00Z"                                  # equinox: equatorial orbit, beta ~ 0
    c = Constellation.walker_delta(1, 1, 0, 550.0, 0.0, epoch)
    period_s = 2 * math.pi / c.satrecs[0].no_kozai * 60.0
    t = Times(epoch, np.linspace(0.0, 10 * period_s, 2000))     # ten whole orbits
    beta = abs(beta_angle(c, t)).max()
    frac = eclipse_fraction(c, t)[0]
    a = np.linalg.norm(c.positions(t), axis=-1).mean()
    expected = math.acos(math.sqrt(a * a - 6378.137 ** 2) / (a * math.cos(math.radians(beta)))) / math.pi
    assert beta < 1.0
    assert 0.33 < frac < 0.39 and abs(frac - expected) < 0.003
    nu = sunlit_fraction(c, Times(epoch, np.arange(0.0, period_s, 1.0)))[0]
    penumbra_s = np.count_nonzero((nu > 0) & (nu < 1))
    assert nu.min() == 0.0 and nu.max() == 1.0 and 10 <= penumbra_s <= 30   # two crossings of ~8 s


def test_isl_line_of_sight_is_symmetric_and_physical():
    c = Constellation.walker_delta(12, 1, 0, 550.0, 53.0, EPOCH)   # 30 deg apart in one plane
    t = Times.span(EPOCH, 3, 30)
    r = c.positions(t)
    g_ab, g_ba = isl_clearance(r[0], r[1]), isl_clearance(r[1], r[0])
    assert np.array_equal(g_ab > 0, g_ba > 0) and np.abs(g_ab - g_ba).max() < 1e-6
    assert (g_ab > 0).all()                                        # 30 deg chord clears 80 km
    assert (isl_clearance(r[0], r[6]) < 0).all()                   # opposite sides of the Earth
    pairs = np.array([(i, j) for i in range(12) for j in range(i + 1, 12)])
    w1, w2 = isl_windows(c, t, pairs), isl_windows(c, t, pairs[:, ::-1])
    assert np.array_equal(w1.a, w2.a) and np.abs(w1.start - w2.start).max() < 1e-3
    assert np.abs(w1.end - w2.end).max() < 1e-3


def test_station_altaz_matches_skyfield():
    skyfield = pytest.importorskip("skyfield.api", reason="skyfield is not installed (pip install skyfield)")
    ts = skyfield.load.timescale(builtin=True)
    c = Constellation.walker_delta(6, 2, 1, 550.0, 97.6, EPOCH)
    s = GroundStation("Kiruna", 67.889, 21.065, 390)
    t = Times.span(EPOCH, 24, 120)
    el, az, rng = s.altaz(c, t)
    topo = skyfield.wgs84.latlon(s.lat_deg, s.lon_deg, s.alt_m)
    when = ts.from_datetimes([t.utc(i) for i in range(len(t))])
    for i, sat in enumerate(c.satrecs):
        alt, azi, dist = (skyfield.EarthSatellite.from_satrec(sat, ts) - topo).at(when).altaz()
        low = (alt.degrees > -5) & (alt.degrees < 80)
        assert np.abs(el[i] - alt.degrees).max() < 0.005                                # deg
        assert np.abs((az[i] - azi.degrees + 180) % 360 - 180)[low].max() < 0.05          # deg
        assert np.abs(rng[i] - dist.km).max() < 0.05                                     # km
