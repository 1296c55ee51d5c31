"""Contact windows against skyfield's find_events, and the HDTN contact plan they make."""
import datetime as dt
import json
import os

import numpy as np
import pytest

from engines.errors import UserError
from sim.contacts import ContactPlan, run_contacts, station_windows
from sim.orbits import Constellation, load_stations
from sim.timescale import Times

EPOCH = "2026-11-21T00:00:00Z"
RISE_SET_TOL_S = 2.0        # skyfield's find_events itself stops at 0.5 s
MASK_TOL_DEG = 0.01         # skyfield's elevation at our rise/set times vs the mask (~0.1-0.2 s)


@pytest.fixture(scope="module")
def skyfield():
    api = pytest.importorskip("skyfield.api", reason="skyfield is not installed (pip install skyfield)")
    return api, api.load.timescale(builtin=True)


@pytest.fixture(scope="module")
def leo_tles(shared_data):
    """Three LEO objects of SGP4-VER.TLE (epochs 2006-06-25/26): a start time near all of them."""
    full = Constellation.from_tle_file(os.path.join(shared_data, "tle", "SGP4-VER.TLE"))
    idx = [full.names.index(n) for n in ("6251", "28057", "29238")]
    return Constellation([full.satrecs[i] for i in idx], [full.names[i] for i in idx]), "2006-06-26T00:00:00Z"


def _compare(skyfield, constellation, start, step_s):
    """Max |our - skyfield| rise/set time (s) and max |elevation - mask| at our times (deg)."""
    api, ts = skyfield
    stations = load_stations("Svalbard,Singapore")
    times = Times.span(start, 24, step_s)
    w = station_windows(constellation, stations, times)
    t0, t1 = ts.from_datetime(times.utc(0)), ts.from_datetime(times.utc(len(times) - 1))
    worst_s, worst_deg, events = 0.0, 0.0, 0
    for b, st in enumerate(stations):
        topo = api.wgs84.latlon(st.lat_deg, st.lon_deg, st.alt_m)
        for a, sat in enumerate(constellation.satrecs):
            es = api.EarthSatellite.from_satrec(sat, ts)
            tt, kind = es.find_events(topo, t0, t1, altitude_degrees=st.min_elevation_deg)
            sec = np.array([(x - times.epoch).total_seconds() for x in tt.utc_datetime()])
            mine = (w.a == a) & (w.b == b)
            rise, sets = w.start[mine][w.start[mine] > 0], w.end[mine][w.end[mine] < times.seconds[-1]]
            assert len(rise) == np.count_nonzero(kind == 0), (constellation.names[a], st.name, "rises")
            assert len(sets) == np.count_nonzero(kind == 2), (constellation.names[a], st.name, "sets")
            ours = np.r_[rise, sets]
            events += len(ours)
            if len(ours):
                worst_s = max(worst_s, np.abs(ours - np.r_[sec[kind == 0], sec[kind == 2]]).max())
                at = ts.from_datetimes([times.epoch + dt.timedelta(seconds=float(x)) for x in ours])
                worst_deg = max(worst_deg, np.abs((es - topo).at(at).altaz()[0].degrees - st.min_elevation_deg).max())
    return worst_s, worst_deg, events


@pytest.mark.parametrize("step_s", [10.0, 60.0])
def test_walker_rise_and_set_agree_with_skyfield(skyfield, step_s):
    c = Constellation.walker_delta(6, 2, 1, 550.0, 97.6, EPOCH)
    worst_s, worst_deg, events = _compare(skyfield, c, EPOCH, step_s)
    assert events > 50
    assert worst_s < RISE_SET_TOL_S and worst_deg < MASK_TOL_DEG


def test_tle_rise_and_set_agree_with_skyfield(skyfield, leo_tles):
    c, start = leo_tles
    worst_s, worst_deg, events = _compare(skyfield, c, start, 30.0)
    assert events > 10
    assert worst_s < RISE_SET_TOL_S and worst_deg < MASK_TOL_DEG


def test_passes_shorter_than_the_step_are_found(skyfield):
    # at 300 s steps, passes that rise and set between two samples below the mask are found from
    # the samples' local maxima; the Hermite orbit error grows as step**4 (~200 m at 300 s)
    c = Constellation.walker_delta(6, 2, 1, 550.0, 97.6, EPOCH)
    w = station_windows(c, load_stations("Svalbard,Singapore"), Times.span(EPOCH, 24, 300.0))
    assert np.count_nonzero(w.duration < 300.0) >= 5
    worst_s, worst_deg, _ = _compare(skyfield, c, EPOCH, 300.0)
    assert worst_s < RISE_SET_TOL_S and worst_deg < 2 * MASK_TOL_DEG


def test_contact_plan_is_hdtn_json_and_round_trips(tmp_path):
    out = tmp_path / "plan.json"
    plan = run_contacts("97.6:6/2/1@550", None, "Svalbard,Singapore", 6.0, 30.0, str(out), start=EPOCH)
    doc = json.loads(out.read_text())
    contacts = doc["contacts"]
    assert len(contacts) > 10 and [c["contact"] for c in contacts] == list(range(len(contacts)))
    keys = {"contact", "source", "dest", "startTime", "endTime", "rateBitsPerSec", "owlt"}
    for c in contacts:
        assert set(c) == keys and all(isinstance(c[k], int) for k in keys)
        assert 0 <= c["startTime"] < c["endTime"] <= 6 * 3600 and c["owlt"] == 1
    assert plan.to_hdtn_json() == contacts
    nodes = doc["satedge"]["nodes"]
    assert nodes["Svalbard"] == 1 and nodes["W01-01"] == 1001
    down = [c for c in contacts if c["source"] > 1000]
    up = {(c["source"], c["dest"], c["startTime"]) for c in contacts if c["source"] < 1000}
    assert {(c["dest"], c["source"], c["startTime"]) for c in down} == up     # every window both ways
    back = ContactPlan.load(str(out))
    assert back.epoch == plan.epoch and back.to_hdtn_json() == contacts
    rows = back.summary()
    assert sum(r["contacts"] for r in rows) == len(contacts)
    assert {r["kind"] for r in rows} == {"down", "up"}
    text = plan.format_summary()
    assert "Svalbard" in text and "down" in text


def test_windows_cut_by_the_plan_ends_start_and_end_there():
    c = Constellation.walker_delta(6, 2, 1, 550.0, 97.6, EPOCH)
    st = load_stations("Svalbard")
    full = station_windows(c, st, Times.span(EPOCH, 2, 10))
    inside = full.start[(full.start > 0)][0]
    cut = station_windows(c, st, Times(EPOCH, np.arange(inside + 60, 7200, 10)))
    assert cut.start.min() == pytest.approx(inside + 60)


def test_plan_from_the_whole_tle_file_reports_bad_satellites(shared_data):
    plan = run_contacts(None, os.path.join(shared_data, "tle", "SGP4-VER.TLE"), "default:4", 2.0, 60.0, None)
    assert len(plan) > 0
    assert any(w.startswith("33334:") for w in plan.warnings)      # rejected element set, no exception


def test_isl_contacts_are_in_the_plan():
    plan = run_contacts("53:12/1/0@550", None, "Svalbard", 1.0, 60.0, None, start=EPOCH, isl=True)
    isl = [c for c in plan.contacts if c["kind"] == "isl"]
    assert len(isl) == 2 * 12                                       # a ring, both ways, always in view
    assert all(c["end"] - c["start"] == pytest.approx(3600.0) for c in isl)


def test_run_contacts_wants_exactly_one_source():
    with pytest.raises(UserError, match="exactly one"):
        run_contacts(None, None, None, 1.0, 60.0, None)
    with pytest.raises(UserError, match="Walker spec"):
        run_contacts("53-12-1", None, None, 1.0, 60.0, None, start=EPOCH)
