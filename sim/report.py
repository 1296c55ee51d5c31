"""HTML report of a constellation run: ``python -m sim.report RUN_DIR`` writes ``RUN_DIR/report.html``.

A run directory (written by the constellation runner) holds ``plan.json`` (the contact plan,
`sim.contacts.ContactPlan.write`), ``events.jsonl`` (one event a line: ``{"t", "kind", "sat", ...}``
with ``t`` in sim seconds from the plan epoch; kinds heartbeat, uplink, result, install, fault,
recovery, daemon, image) and ``summary.json`` (scenario, satellites, stations, timing, eclipse
windows, faults with their recoveries, delivery counts, uplink per satellite, notes).

The report is one HTML page with tables (summary, delivery verdict, faults, uplink, per satellite,
notes) and six PNGs next to it (`sim.report_plots`), referenced by relative path, so the folder can
be copied or attached as it is. Only ``summary.json`` is required; a missing plan or event file,
or unreadable event lines, give empty plots that say "no data" and a note in the report.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

from engines.errors import UserError

FAULT_KINDS = ("kill_restart", "power_loss_install", "bitflip_engine", "link_cut", "missed_pass")


class RunData:
    """The parsed contents of one run directory, with views the tables and plots need.

    Parameters
    ----------
    run_dir : str
    summary : dict
        ``summary.json``.
    events : list of dict
        ``events.jsonl``, each with a numeric ``t`` (any order; sorted here).
    contacts : list of dict
        `sim.contacts.ContactPlan.contacts` (``source, dest, start, end, rate_bps, owlt, kind``).
    problems : list of str, optional
        What could not be read (shown as notes).
    """

    def __init__(self, run_dir: str, summary: Dict, events: List[Dict], contacts: List[Dict],
                 problems: Optional[List[str]] = None):
        self.run_dir, self.summary, self.contacts = run_dir, summary, contacts
        self.events = sorted(events, key=lambda e: e["t"])
        self.problems = list(problems or [])
        self._by: Dict[Tuple, List[Dict]] = defaultdict(list)
        for e in self.events:
            self._by[(e.get("kind"), e.get("sat"))].append(e)
        sats = [str(s) for s in summary.get("satellites") or []]
        seen = {e["sat"] for e in self.events if isinstance(e.get("sat"), str)}
        self.satellites: List[str] = sats + sorted(seen - set(sats))
        stas = [str(s) for s in summary.get("stations") or []]
        ends = {n for c in contacts if c.get("kind") != "isl" for n in (c["source"], c["dest"])}
        self.stations: List[str] = stas + sorted(ends - set(stas) - set(self.satellites))
        last = max([e["t"] for e in self.events] + [c["end"] for c in contacts], default=0.0)
        self.duration_s = float(summary.get("duration_s") or last or 3600.0)

    def of(self, kind: str, sat: Optional[str] = None) -> List[Dict]:
        """Events of ``kind`` for ``sat`` in time order (``sat=None``: events that name no satellite)."""
        return self._by.get((kind, sat), [])

    def all_of(self, kind: str) -> List[Dict]:
        """Events of ``kind`` for every satellite, in time order."""
        return [e for e in self.events if e.get("kind") == kind]

    def ground_passes(self, sat: Optional[str] = None) -> List[Tuple[str, str, float, float]]:
        """``(satellite, station, start_s, end_s)`` of each ground window (up and down merged), by start."""
        sats, out = set(self.satellites), set()
        for c in self.contacts:
            if c.get("kind") == "isl" or (c["source"] in sats) == (c["dest"] in sats):
                continue
            s, st = (c["source"], c["dest"]) if c["source"] in sats else (c["dest"], c["source"])
            if sat is None or s == sat:
                out.add((s, st, float(c["start"]), float(c["end"])))
        return sorted(out, key=lambda p: (p[2], p[0], p[1]))

    @property
    def faults(self) -> List[Dict]:
        """``summary["faults"]``, or, where the summary has none, faults rebuilt from fault/recovery events."""
        if self.summary.get("faults"):
            return list(self.summary["faults"])
        rec = {e.get("id"): e for e in self.all_of("recovery")}
        out = []
        for e in self.all_of("fault"):
            r = rec.get(e.get("id")) or {}
            out.append({"id": e.get("id"), "fault": e.get("fault"), "sat": e.get("sat"), "t": e["t"],
                        "detail": e.get("detail", ""), "recovered": bool(r.get("ok")),
                        "t_recovered": r["t"] if r.get("ok") else None, "recovery": r.get("detail", "")})
        return out

    def eclipse(self, sat: str) -> List[Tuple[float, float]]:
        """Eclipse windows (s) of ``sat``: from the summary, else spans of heartbeats flagged ``eclipse``."""
        given = (self.summary.get("eclipse") or {}).get(sat)
        if given:
            return [(float(a), float(b)) for a, b in given]
        spans, start = [], None
        for h in self.of("heartbeat", sat):
            if h.get("eclipse") and start is None:
                start = h["t"]
            elif not h.get("eclipse") and start is not None:
                spans.append((start, h["t"]))
                start = None
        return spans + ([(start, self.of("heartbeat", sat)[-1]["t"])] if start is not None else [])


def load_run(run_dir: str) -> RunData:
    """Read a run directory; raises `UserError` when ``summary.json`` is missing or unreadable."""
    path = os.path.join(run_dir, "summary.json")
    try:
        with open(path) as fh:
            summary = json.load(fh)
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}; give the directory a constellation run wrote "
                        "(summary.json, events.jsonl, plan.json)") from e
    problems, events, contacts = [], [], []
    plan = os.path.join(run_dir, "plan.json")
    if os.path.exists(plan):
        from sim.contacts import ContactPlan
        try:
            contacts = ContactPlan.load(plan).contacts
        except UserError as e:
            problems.append(str(e))
    else:
        problems.append("no plan.json: the contact timeline is empty")
    ev = os.path.join(run_dir, "events.jsonl")
    bad = 0
    if os.path.exists(ev):
        with open(ev, errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    e = json.loads(line)
                    e["t"] = float(e["t"])
                    events.append(e)
                except (ValueError, TypeError, KeyError):
                    bad += 1
    else:
        problems.append("no events.jsonl: the time series are empty")
    if bad:
        problems.append(f"{bad} line(s) of events.jsonl were not events with a numeric 't' and were skipped")
    return RunData(run_dir, summary, events, contacts, problems)


def _esc(x) -> str:
    return html.escape("" if x is None else str(x))


def _hms(t) -> str:
    """Sim seconds as ``H:MM:SS`` (empty for None)."""
    if t is None:
        return ""
    s = int(round(float(t)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _table(head: List[str], rows: List[List], classes: Optional[List[str]] = None) -> str:
    out = ["<table>" + ("<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>" if head else "")]
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_esc(v)}</td>" for v in r) + "</tr>")
    return "\n".join(out) + "</table>"


def _verdict(d: Dict) -> Tuple[str, str]:
    """(text, css class) of the exactly-once delivery verdict."""
    if not d:
        return "no delivery figures in summary.json", ""
    nums = ", ".join(f"{k.replace('_', ' ')} {d.get(k, 'n/a')}" for k in
                     ("accepted", "delivered_unique", "duplicates_dropped", "lost", "unexpected"))
    ok = d.get("exactly_once")
    return (f"{'PASS' if ok else 'FAIL'}: exactly once {'held' if ok else 'did not hold'} ({nums})",
            "ok" if ok else "bad")


def _per_satellite(run: RunData) -> List[List]:
    rows = []
    for s in run.satellites:
        hb, img, res = run.of("heartbeat", s), run.of("image", s), run.of("result", s)
        ins = run.of("install", s)
        last = hb[-1] if hb else {}
        rows.append([s, len(hb), f"{len(img)} ({sum(bool(i.get('sunlit')) for i in img)} sunlit)",
                     last.get("frames_processed", ""), sum(not r.get("duplicate") for r in res),
                     sum(bool(r.get("duplicate")) for r in res), f"{sum(bool(i.get('ok')) for i in ins)}/{len(ins)}",
                     last.get("variant", ""), last.get("engine_version", ""),
                     sum(d.get("state") == "killed" for d in run.of("daemon", s))])
    return rows


# (file, title, caption: what to look at)
PLOTS = [
    ("contacts.png", "Contact timeline", "Ground passes per satellite, coloured by station; symbols mark fault "
     "injections and hatched spans the missed passes and link cuts: look for satellites left without a pass."),
    ("uplink.png", "Uplink progress", "Fraction of each engine uplink sent; a step back or a red cross is a failed "
     "attempt, dotted lines installs: every satellite should end at 1 with a green install."),
    ("queue.png", "Downlink queue", "Outbox depth from heartbeats, passes shaded: the queue should fall during "
     "passes, and after a daemon kill (red line) pick up where it was, not at zero."),
    ("results.png", "Results delivered", "Cumulative unique results at the ground per satellite (top) and "
     "duplicates the ground dropped (bottom): flat stretches are outages, duplicates follow retries."),
    ("power.png", "Power and eclipse", "Power draw (blue) and temperature (red, right axis) per satellite, eclipse "
     "shaded: power should drop in eclipse and stay within the 7-15 W envelope."),
    ("faults.png", "Faults and recoveries", "One bar per fault from injection to recovery, green when it "
     "recovered and red (to the end of the run) when not: a short green bar is a quick recovery."),
]

_CSS = ("body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left;font-size:90%}th{background:#eee}"
        ".ok{background:#e3f6e3}.bad{background:#fbe0e0}figure{margin:1em 0 2em}img{max-width:100%}"
        "figcaption{color:#444;font-size:90%}")


def render_html(run: RunData, plots: List[Tuple[str, str, str]]) -> str:
    """The report page; ``plots`` are ``(file, title, caption)`` with files relative to the page."""
    s = run.summary
    name = s.get("scenario", os.path.basename(os.path.abspath(run.run_dir)))
    verdict, vcls = _verdict(s.get("delivery") or {})
    wall = s.get("wall_s")
    summary_rows = [["scenario", name], ["satellites", f"{len(run.satellites)}: " + ", ".join(run.satellites)],
                    ["stations", f"{len(run.stations)}: " + ", ".join(run.stations)],
                    ["sim duration", f"{_hms(run.duration_s)} ({run.duration_s / 3600:.2f} h)"],
                    ["time factor", f"{s.get('factor', 'n/a')} sim s per wall s"],
                    ["wall time", f"{wall:.1f} s" if isinstance(wall, (int, float)) else "n/a"],
                    ["ground passes", len(run.ground_passes())], ["events", len(run.events)],
                    ["exactly-once delivery", verdict]]
    faults = run.faults
    fault_rows = [[f.get("id"), f.get("fault"), f.get("sat") or "(all)", _hms(f.get("t")),
                   _hms(f.get("t_recovered")), f.get("recovery") or f.get("detail", ""),
                   "OK" if f.get("recovered") else "FAILED"] for f in faults]
    up = s.get("uplink") or {}
    up_rows = [[sat, "OK" if u.get("ok") else "FAILED", f"{u.get('bytes_sent') or 0:,}", f"{u.get('size') or 0:,}",
                "" if u.get("efficiency") is None else f"{u['efficiency']:.3f}"] for sat, u in up.items()]
    notes = [str(n) for n in s.get("notes") or []] + run.problems
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>satedge run: {_esc(name)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>satedge constellation run: {_esc(name)}</h1>",
             "<h2>Summary</h2>", _table([], summary_rows, [""] * 8 + [vcls]),
             f"<h2>Faults ({len(faults)})</h2>",
             _table(["id", "fault", "satellite", "injected at", "recovered at", "recovery", "status"], fault_rows,
                    ["ok" if f.get("recovered") else "bad" for f in faults])
             if faults else "<p>No faults injected.</p>",
             "<h2>Uplink</h2>",
             _table(["satellite", "status", "bytes sent", "size", "efficiency"], up_rows,
                    ["ok" if u.get("ok") else "bad" for u in up.values()]) if up else "<p>No uplink in this run.</p>",
             "<h2>Per satellite</h2>",
             _table(["satellite", "heartbeats", "images", "frames processed", "unique results", "duplicates dropped",
                     "installs ok", "variant", "engine", "daemon kills"], _per_satellite(run)),
             "<h2>Notes</h2>", "<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>" if notes
             else "<p>None.</p>", "<h2>Plots</h2>"]
    for fname, title, caption in plots:
        parts.append(f"<figure><h3>{_esc(title)}</h3><img src='{_esc(fname)}' alt='{_esc(title)}'>"
                     f"<figcaption>{_esc(caption)}</figcaption></figure>")
    parts.append("<p><small>times are H:MM:SS of sim time from the contact plan's epoch</small></p></body></html>")
    return "\n".join(parts)


def write_report(run_dir: str) -> str:
    """Write ``report.html`` and its PNGs into ``run_dir``.

    Parameters
    ----------
    run_dir : str
        A run directory (see the module docstring); only ``summary.json`` must exist.

    Returns
    -------
    str
        The path of ``report.html``.
    """
    from sim import report_plots
    run = load_run(run_dir)
    plots = []
    for fname, title, caption in PLOTS:
        getattr(report_plots, "plot_" + fname[:-4])(run, os.path.join(run_dir, fname))
        plots.append((fname, title, caption))
    path = os.path.join(run_dir, "report.html")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render_html(run, plots))
    return path


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m sim.report RUN_DIR``: write the report and print its path."""
    ap = argparse.ArgumentParser(prog="python -m sim.report", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="directory with summary.json, events.jsonl and plan.json")
    a = ap.parse_args(argv)
    try:
        print(write_report(a.run_dir))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
