"""What a constellation run prepares before its clock starts: orbits, bundles, stores, links.

* :func:`plan_orbits`: the constellation, the contact plan (written as ``plan.json``), each
  satellite's merged ground windows (any station) and eclipse intervals;
* :func:`prepare_bundles`: the quick cloud screen (built once and cached), signed as v1 (on
  board at launch) and as the rollout version, packed into a tar for the uplink;
* :func:`satellite_store`: a satellite's engine store with v1 installed;
* :func:`make_link`: the satellite's link emulator (transfer DEALERs, results and acks), with the
  scenario's impairments and the outages of its ``link_cut`` and ``missed_pass`` faults.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, List, Tuple

from engines.errors import UserError
from sim.scenario import Scenario

ENGINE = "cloudscreen"
CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "out", "sim-cache")


def plan_orbits(sc: Scenario, run_dir: str) -> Dict[str, Any]:
    """Propagate, find contacts and eclipses; write ``plan.json``. Returns names, windows, eclipses, tracks."""
    import numpy as np

    from sim.contacts import ContactPlan
    from sim.eclipse import eclipse_windows
    from sim.orbits import Constellation, load_stations, walker_spec
    from sim.timescale import Times
    const = walker_spec(sc.walker, sc.start) if sc.walker else Constellation.from_tle_file(sc.tle)
    times = Times.span(sc.start, sc.duration_h, sc.step_s)
    stations = load_stations(sc.stations, sc.min_elevation_deg)
    plan = ContactPlan.build(const, stations, times)
    plan.write(os.path.join(run_dir, "plan.json"))
    windows: Dict[str, List[Tuple[float, float, float, float]]] = {}
    for name in const.names:
        rows = sorted((c["start"], c["end"], c["rate_bps"], c["owlt"]) for c in plan.contacts
                      if c["dest"] == name and c["kind"] != "isl")
        merged: List[List[float]] = []
        for r in rows:                                # any station will do: merge overlapping passes
            if merged and r[0] <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], r[1])
            else:
                merged.append(list(r))
        windows[name] = [tuple(m) for m in merged]
    ecl = eclipse_windows(const, times)
    eclipses = {n: [] for n in const.names}
    for a, t0, t1 in zip(ecl.a.tolist(), ecl.start.tolist(), ecl.end.tolist()):
        eclipses[const.names[a]].append([round(t0, 1), round(t1, 1)])
    r = const.itrf_positions(times)                   # (sat, time, 3) km
    lat = np.degrees(np.arctan2(r[..., 2], np.hypot(r[..., 0], r[..., 1])))
    lon = np.degrees(np.arctan2(r[..., 1], r[..., 0]))
    return {"names": list(const.names), "stations": [s.name for s in stations], "windows": windows,
            "eclipses": eclipses, "track_t": np.asarray(times.seconds, float), "lat": lat, "lon": lon}


def prepare_bundles(sc: Scenario, run_dir: str, signing_key: str = "") -> Dict[str, str]:
    """v1 and the rollout version of the quick cloud screen, signed; the rollout one packed as a tar."""
    from engines.archive import pack_archive
    from engines.signing import generate_keypair, sign_bundle
    src = os.path.join(CACHE, "ground", "bundles", f"{ENGINE}-int8")
    if not os.path.isfile(os.path.join(src, "manifest.json")):
        from ground.cloudscreen import build_cloud_screen
        print("sim: building the quick cloud screen once (cached in out/sim-cache)", flush=True)
        src = str(build_cloud_screen(os.path.join(CACHE, "ground"), quick=True, progress=False).int8_bundle)
    keys = os.path.join(run_dir, "keys")
    if signing_key:
        private = signing_key
        public = signing_key[:-4] + ".pub" if signing_key.endswith(".key") else signing_key + ".pub"
        if not os.path.isfile(public):
            raise UserError(f"signing key {signing_key}: its public half {public} is missing")
    elif os.path.isfile(os.path.join(keys, "ground.key")):          # a rerun in the same directory
        private, public = os.path.join(keys, "ground.key"), os.path.join(keys, "ground.pub")
    else:
        private, public = (str(p) for p in generate_keypair(keys, name="ground"))
    out = {"public_key": public}
    for version in (1, sc.rollout_version):
        dst = os.path.join(run_dir, "bundles", f"{ENGINE}-v{version}")
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("manifest.sig"))
        with open(os.path.join(dst, "manifest.json")) as fh:
            manifest = json.load(fh)
        manifest["version"] = version
        with open(os.path.join(dst, "manifest.json"), "w") as fh:
            json.dump(manifest, fh, indent=2)
        sign_bundle(dst, private)
        out[f"v{version}"] = dst
    out["tar"] = str(pack_archive(out[f"v{sc.rollout_version}"],
                                  os.path.join(run_dir, "bundles", f"{ENGINE}-v{sc.rollout_version}.tar")))
    return out


def satellite_store(root: str, bundle_v1: str, public_key: str) -> None:
    """A fresh engine store at ``root`` with v1 installed (the engine the satellite launched with)."""
    from onboard.store import EngineStore
    shutil.rmtree(root, ignore_errors=True)
    rep = EngineStore(root, trusted_keys=[public_key]).install(bundle_v1)
    if not rep.ok:
        raise UserError(f"installing v1 into {root} failed: {rep.reason}")


def outages(sc: Scenario, sat: int, windows: List[tuple]) -> Tuple[List[Tuple[float, float]], List[Dict[str, Any]]]:
    """The link outages of satellite ``sat``'s faults, and those faults with their sim times resolved."""
    cuts, resolved = [], []
    for i, f in enumerate(sc.faults):
        if f.sat != sat or f.kind not in ("link_cut", "missed_pass"):
            continue
        if f.pass_index >= len(windows):
            raise UserError(f"faults[{i}]: satellite {sat} has {len(windows)} contact(s); pass_index "
                            f"{f.pass_index} does not exist (lower it or lengthen duration_h)")
        w0, w1 = windows[f.pass_index][:2]
        a, b = (w0 - 1.0, w1 + 1.0) if f.kind == "missed_pass" else (w0 + f.offset_s, w0 + f.offset_s + f.length_s)
        cuts.append((a, b))
        resolved.append({"id": i, "fault": f.kind, "t": a, "t_end": b})
    return cuts, resolved


def make_link(sc: Scenario, sat: int, windows: List[tuple], eps: Dict[str, str], external: bool, clock):
    """The satellite's :class:`sim.link.LinkEmulator` (not started)."""
    from sim.link import LinkEmulator, LinkParams, Schedule
    cuts, _ = outages(sc, sat, windows)
    params = {}
    for d in ("up", "down"):
        p = dict(sc.link.get(d, {}))
        p["outages"] = [tuple(o) for o in p.get("outages", [])] + cuts
        try:
            params[d] = LinkParams(**p)
        except TypeError as exc:
            raise UserError(f"scenario link.{d}: {exc}") from None
    sockets = {"res_in": ("PULL", eps["results"], False), "res_out": ("PUSH", "tcp://127.0.0.1:*", True),
               "ack_in": ("PULL", "tcp://127.0.0.1:*", True), "ack_out": ("PUSH", eps["acks"], False)}
    if external:                                      # the external daemon binds its uplink endpoint
        sockets["back"] = ("DEALER", eps["uplink"], False)
    routes = {"up": [("front", "back"), ("ack_in", "ack_out")], "down": [("back", "front"), ("res_in", "res_out")]}
    sched = Schedule([tuple(w) for w in windows]) if windows else Schedule([(-2.0, -1.0)])
    return LinkEmulator("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", {"up": sched, "down": sched}, params,
                        clock=clock, seed=sc.seed * 1000 + sat, sockets=sockets, routes=routes)
