"""Contact windows and contact plans.

`station_windows` finds when each satellite is above each station's elevation mask, and
`isl_windows` when two satellites see each other past the Earth plus a grazing height; both are
vectorised over all satellites, stations and times in chunks and refined between samples to a
millisecond (see `sim.timescale.find_windows`). A `ContactPlan` holds the directed contacts and
writes them in HDTN's contact-plan JSON (``{"contacts": [{contact, source, dest, startTime,
endTime, rateBitsPerSec, owlt}, ...]}``) with times in whole seconds from the plan epoch.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections import defaultdict

import numpy as np

from engines.errors import UserError
from sim.orbits import Constellation, load_stations, walker_spec
from sim.timescale import DAY_S, Times, as_utc, find_windows, gmst, hermite, teme_to_itrf

C_KM_S = 299792.458
EARTH_RADIUS_KM = 6378.137
RATES_BPS = {"down": 150e6, "up": 1e6, "isl": 1e9}      # X-band down, S-band up, optical ISL
_BUDGET = 4e6                                           # values per chunk (memory bound)


def station_windows(constellation: Constellation, stations, times: Times, workers: int = 2):
    """Windows with each satellite above each station's mask.

    Returns `sim.timescale.Windows` with ``a`` the satellite index and ``b`` the station index.
    """
    site = np.array([s.itrf() for s in stations])
    up = np.array([s.enu()[2] for s in stations])
    smask = np.sin(np.radians([s.min_elevation_deg for s in stations]))
    su, ss = np.sum(site * up, axis=1), np.sum(site * site, axis=1)

    # Samples in float32 (elevation noise ~1e-6 rad; refinement is float64): with p = (x, y, z,
    # |p|^2, 1), sin(el) = p @ w_num / sqrt(p @ w_d2) where d = p - site.
    w_num = np.vstack([up.T, np.zeros(len(stations)), -su]).astype(np.float32)
    w_d2 = np.vstack([-2.0 * site.T, np.ones(len(stations)), ss]).astype(np.float32)

    def sample(tc):
        r, v = constellation.at(tc)
        x = teme_to_itrf(r, tc.gmst()).reshape(-1, 3)
        p = np.empty((len(x), 5), np.float32)
        p[:, :3], p[:, 3], p[:, 4] = x, np.einsum("ij,ij->i", x, x), 1.0
        sin_el, d2 = (np.einsum("ik,kb->ib", p, w) for w in (w_num, w_d2))   # no BLAS threads
        sin_el /= np.sqrt(d2, out=d2)
        sin_el -= smask.astype(np.float32)

        def evaluate(a, b, j, tau):
            h = tc.seconds[j + 1] - tc.seconds[j]
            x = hermite(r[a, j], v[a, j], r[a, j + 1], v[a, j + 1], h, tau)
            d = teme_to_itrf(x, gmst(tc.jd[j], tc.fr[j] + tau * h / DAY_S)) - site[b]
            return np.sum(d * up[b], axis=1) / np.linalg.norm(d, axis=1) - smask[b]
        return sin_el.reshape(len(constellation), len(tc), len(stations)), evaluate

    chunk = max(16, int(_BUDGET / (len(constellation) * len(stations))))
    return find_windows(sample, times, chunk, workers=workers)


def isl_clearance(ra, rb, grazing_km: float = 80.0, max_range_km=None) -> np.ndarray:
    """Height (km) by which the segment ``ra``-``rb`` clears the Earth plus ``grazing_km``.

    Positive means line of sight; with ``max_range_km`` the result is also capped by
    ``max_range_km - range``. Symmetric in ``ra`` and ``rb``. Spherical Earth of 6378.137 km.
    """
    d = rb - ra
    dd = np.sum(d * d, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.clip(-np.sum(ra * d, axis=-1) / dd, 0.0, 1.0)
    g = np.linalg.norm(ra + t[..., None] * d, axis=-1) - (EARTH_RADIUS_KM + grazing_km)
    return g if max_range_km is None else np.minimum(g, max_range_km - np.sqrt(dd))


def isl_pairs(constellation: Constellation, max_all: int = 200) -> np.ndarray:
    """Default ISL pairs: the Walker grid (next slot in plane, same slot in the next plane) or all pairs."""
    n = len(constellation)
    if constellation.plane is not None:
        key = {(p, s): i for i, (p, s) in enumerate(zip(constellation.plane, constellation.slot))}
        n_p, n_s = constellation.plane.max() + 1, constellation.slot.max() + 1
        pairs = {tuple(sorted((i, key[(p, (s + 1) % n_s)]))) for (p, s), i in key.items()}
        pairs |= {tuple(sorted((i, key[((p + 1) % n_p, s)]))) for (p, s), i in key.items()}
        return np.array(sorted(q for q in pairs if q[0] != q[1]), dtype=int).reshape(-1, 2)
    if n > max_all:
        raise UserError(f"{n} satellites make {n * (n - 1) // 2} ISL pairs; pass pairs= explicitly")
    return np.array([(i, j) for i in range(n) for j in range(i + 1, n)], dtype=int).reshape(-1, 2)


def isl_windows(constellation, times, pairs=None, grazing_km=80.0, max_range_km=None, workers=2):
    """Line-of-sight windows between satellite pairs; ``a`` indexes ``pairs`` (default `isl_pairs`)."""
    pairs = isl_pairs(constellation) if pairs is None else np.asarray(pairs, dtype=int).reshape(-1, 2)
    i, j = pairs[:, 0], pairs[:, 1]

    def sample(tc):
        r, v = constellation.at(tc)

        def evaluate(a, b, k, tau):
            h = tc.seconds[k + 1] - tc.seconds[k]
            xa, xb = (hermite(r[s, k], v[s, k], r[s, k + 1], v[s, k + 1], h, tau) for s in (i[a], j[a]))
            return isl_clearance(xa, xb, grazing_km, max_range_km)
        return isl_clearance(r[i], r[j], grazing_km, max_range_km)[..., None], evaluate

    return find_windows(sample, times, max(16, int(_BUDGET / max(len(pairs), 1))), workers=workers)


def _positions_at(constellation, sat, seconds, epoch):
    """TEME positions of satellites ``sat[k]`` at ``seconds[k]`` after ``epoch`` (one sgp4 call per satellite)."""
    t = Times(epoch, seconds)
    out = np.full((len(sat), 3), np.nan)
    order = np.argsort(sat, kind="stable")
    cuts = np.flatnonzero(np.diff(sat[order])) + 1
    for idx in np.split(order, cuts) if len(order) else []:
        e, r, _ = constellation.satrecs[sat[idx[0]]].sgp4_array(t.jd[idx], t.fr[idx])
        out[idx] = np.where((e == 0)[:, None], r, np.nan)
    return out, t


def _contact(source, dest, start, end, rate_bps, owlt, kind) -> dict:
    return dict(source=source, dest=dest, start=start, end=end, rate_bps=rate_bps, owlt=owlt, kind=kind)


def _owlt(range_km) -> np.ndarray:
    """One-way light time in whole seconds, rounded up (at least 1)."""
    return np.maximum(1, np.ceil(np.nan_to_num(range_km, nan=0.0) / C_KM_S)).astype(int)


class ContactPlan:
    """Directed contacts between named nodes, times in seconds from ``epoch``.

    Parameters
    ----------
    epoch : datetime or str
    contacts : list of dict
        Each with ``source, dest, start, end`` (seconds), ``rate_bps``, ``owlt`` (s) and ``kind``.
    nodes : dict, optional
        Node name -> HDTN node number (default: numbered in order of appearance from 1).
    """

    def __init__(self, epoch, contacts, nodes=None, warnings=None):
        self.epoch = as_utc(epoch)
        self.contacts = sorted(contacts, key=lambda c: (c["start"], c["source"], c["dest"]))
        self.nodes = dict(nodes or {})
        free = max(self.nodes.values(), default=0) + 1
        for name in sorted({n for c in self.contacts for n in (c["source"], c["dest"])} - set(self.nodes)):
            self.nodes[name], free = free, free + 1
        self.warnings = list(warnings or [])

    def __len__(self) -> int:
        return len(self.contacts)

    @classmethod
    def build(cls, constellation, stations, times, rates=None, isl=False, pairs=None,
              grazing_km=80.0, isl_max_range_km=5000.0, workers=2) -> "ContactPlan":
        """Station contacts (down and up for each window) and, with ``isl``, inter-satellite ones.

        ``rates`` overrides `RATES_BPS` (``down``, ``up``, ``isl``); ``pairs`` the default
        `isl_pairs`. OWLT is the larger range at the window's ends (and middle, for ISL) over c.
        """
        rates = {**RATES_BPS, **(rates or {})}
        sats, stas = constellation.names, [s.name for s in stations]
        nodes = {name: k + 1 for k, name in enumerate(stas)}
        nodes.update({name: 1001 + k for k, name in enumerate(sats)})
        w = station_windows(constellation, stations, times, workers)
        site = np.array([s.itrf() for s in stations])
        rng = []
        for tt in (w.start, w.end):
            r, t = _positions_at(constellation, w.a, tt, times.epoch)
            rng.append(np.linalg.norm(teme_to_itrf(r, t.gmst()) - site[w.b], axis=1))
        contacts = []
        for a, b, t0, t1, ow in zip(w.a.tolist(), w.b.tolist(), w.start.tolist(), w.end.tolist(),
                                    _owlt(np.fmax(*rng)).tolist()):
            contacts.append(_contact(sats[a], stas[b], t0, t1, rates["down"], ow, "down"))
            contacts.append(_contact(stas[b], sats[a], t0, t1, rates["up"], ow, "up"))
        if isl:
            pairs = isl_pairs(constellation) if pairs is None else np.asarray(pairs, dtype=int).reshape(-1, 2)
            wi = isl_windows(constellation, times, pairs, grazing_km, isl_max_range_km, workers)
            i, j = pairs[wi.a, 0], pairs[wi.a, 1]
            far = np.fmax.reduce([np.linalg.norm(_positions_at(constellation, i, tt, times.epoch)[0]
                                                 - _positions_at(constellation, j, tt, times.epoch)[0], axis=1)
                                  for tt in (wi.start, 0.5 * (wi.start + wi.end), wi.end)])
            for x, y, t0, t1, ow in zip(i.tolist(), j.tolist(), wi.start.tolist(), wi.end.tolist(),
                                        _owlt(far).tolist()):
                contacts.append(_contact(sats[x], sats[y], t0, t1, rates["isl"], ow, "isl"))
                contacts.append(_contact(sats[y], sats[x], t0, t1, rates["isl"], ow, "isl"))
        warnings = [f"{name}: {msg}" for name, msg in constellation.invalid.items()]
        return cls(times.epoch, contacts, nodes, warnings)

    def to_hdtn_json(self) -> list:
        """HDTN contacts: integer node numbers, start rounded up and end rounded down (whole seconds)."""
        out = []
        for c in self.contacts:
            t0, t1 = math.ceil(c["start"] - 1e-6), math.floor(c["end"] + 1e-6)
            if t1 > t0:
                out.append({"contact": len(out), "source": self.nodes[c["source"]],
                            "dest": self.nodes[c["dest"]], "startTime": t0, "endTime": t1,
                            "rateBitsPerSec": int(c["rate_bps"]), "owlt": int(c["owlt"])})
        return out

    def write(self, path) -> None:
        """Write ``{"contacts": [...], "satedge": {epoch, nodes, kinds}}`` (HDTN reads ``contacts``)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        kinds = {f"{self.nodes[c['source']]}>{self.nodes[c['dest']]}": c["kind"] for c in self.contacts}
        meta = {"version": 1, "epoch": self.epoch.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "nodes": self.nodes,
                "kinds": kinds, "warnings": self.warnings}
        with open(path, "w") as fh:
            json.dump({"contacts": self.to_hdtn_json(), "satedge": meta}, fh, separators=(",", ":"))

    @classmethod
    def load(cls, path, epoch=None) -> "ContactPlan":
        """Read a plan written by `write` (or any HDTN contact plan, with ``epoch`` given)."""
        try:
            with open(path) as fh:
                doc = json.load(fh)
            meta = doc.get("satedge", {})
            names = {v: k for k, v in meta.get("nodes", {}).items()}
            kinds = meta.get("kinds", {})
            contacts = [dict(source=names.get(c["source"], str(c["source"])), dest=names.get(c["dest"], str(c["dest"])),
                             start=float(c["startTime"]), end=float(c["endTime"]), rate_bps=float(c["rateBitsPerSec"]),
                             owlt=int(c.get("owlt", 0)), kind=kinds.get(f"{c['source']}>{c['dest']}", ""))
                        for c in doc["contacts"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read contact plan {path}: {e!r}; expected HDTN JSON with a 'contacts' list") from e
        epoch = epoch or meta.get("epoch")
        if epoch is None:
            raise UserError(f"{path} has no satedge epoch; pass epoch= (the instant startTime counts from)")
        nodes = meta.get("nodes") or {n: int(n) for c in contacts for n in (c["source"], c["dest"])}
        return cls(epoch, contacts, nodes, meta.get("warnings"))

    def summary(self) -> list:
        """One row per directed pair: source, dest, kind, contacts, total_s, mean_s, longest_s, first_start_s."""
        groups = defaultdict(list)
        for c in self.contacts:
            groups[(c["source"], c["dest"], c["kind"])].append(c)
        rows = []
        for (s, d, k), cs in groups.items():
            dur = [c["end"] - c["start"] for c in cs]
            rows.append(dict(source=s, dest=d, kind=k, contacts=len(cs), total_s=sum(dur), mean_s=sum(dur) / len(dur),
                             longest_s=max(dur), first_start_s=min(c["start"] for c in cs)))
        return sorted(rows, key=lambda r: (r["kind"], r["source"], r["dest"]))

    def format_summary(self, limit: int = 20) -> str:
        """A text table: totals per kind, then the first ``limit`` downlink pairs."""
        rows = self.summary()
        lines = [f"contact plan from {self.epoch:%Y-%m-%dT%H:%M:%SZ}: {len(self)} directed contacts"]
        for kind in ("down", "up", "isl"):
            ks = [r for r in rows if r["kind"] == kind]
            if ks:
                tot = sum(r["total_s"] for r in ks)
                lines.append(f"  {kind:5s} {sum(r['contacts'] for r in ks):7d} contacts  {len(ks):6d} pairs  "
                             f"{tot / 3600:9.2f} h  mean {tot / max(sum(r['contacts'] for r in ks), 1) / 60:6.2f} min")
        lines.append(f"{'source':>14s} {'dest':>14s} {'n':>4s} {'total min':>10s} {'mean min':>9s} {'longest':>8s}")
        down = [r for r in rows if r["kind"] == "down"]
        for r in down[:limit]:
            lines.append(f"{r['source']:>14s} {r['dest']:>14s} {r['contacts']:4d} {r['total_s'] / 60:10.1f} "
                         f"{r['mean_s'] / 60:9.2f} {r['longest_s'] / 60:8.2f}")
        if len(down) > limit:
            lines.append(f"... {len(down) - limit} more pairs")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def run_contacts(walker, tle, stations, hours: float, step_s: float, out, start=None, isl: bool = False,
                 workers: int = 2) -> ContactPlan:
    """Build a contact plan and write it as HDTN JSON to ``out``; the entry of ``satedge sim contacts``.

    Parameters
    ----------
    walker : str or None
        ``"INC:T/P/F@ALT_KM"`` (e.g. ``"53:24/3/1@550"``); its elements have the plan's start as epoch.
    tle : str or None
        A TLE file (exactly one of ``walker`` and ``tle``).
    stations : str or None
        See `sim.orbits.load_stations` (default: 20 built-in public sites).
    hours, step_s : float
        Plan length and sampling step (rise and set are refined to 1 ms whatever the step).
    out : str or None
        Where the JSON goes (``None``: not written).
    start : datetime or str, optional
        Plan epoch; default: the latest TLE epoch, or today 00:00 UTC for a Walker pattern.
    """
    if (walker is None) == (tle is None):
        raise UserError("give exactly one of a Walker spec (INC:T/P/F@ALT_KM) or a TLE file")
    if out:
        from engines.outpaths import output_file
        output_file(out, "--out")                   # before the propagation, not after it
    if start is None and walker is not None:
        start = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    const = walker_spec(walker, start) if walker is not None else Constellation.from_tle_file(tle)
    times = Times.span(start if start is not None else const.epoch, hours, step_s)
    plan = ContactPlan.build(const, load_stations(stations), times, isl=isl, workers=workers)
    if out:
        plan.write(out)
    return plan
