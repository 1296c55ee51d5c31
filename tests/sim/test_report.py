"""The run report: report.html with its PNGs from a synthetic run directory (real contact plan)."""
import html
import json
import os
import re

import pytest

from sim.contacts import run_contacts
from sim.report import PLOTS, main, write_report

EPOCH = "2026-11-21T00:00:00Z"
HOURS = 4.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 2000          # an empty 13-inch figure is already larger; a truncated file is not

FAULTS = [  # id, fault, sat, t, detail, recovered, t_recovered, recovery
    (1, "kill_restart", "W01-01", 3000.0, "SIGKILL daemon", True, 3012.5, "restarted, outbox intact"),
    (2, "missed_pass", "W02-01", 5000.0, "pass dropped", True, 7600.0, "next pass delivered"),
    (3, "bitflip_engine", "W02-01", 9000.0, "flipped a byte in slot B", False, None, "canary did not run"),
]


def _events(sats):
    ev = []
    for k, sat in enumerate(sats):
        for i, t in enumerate(range(0, int(HOURS * 3600), 120)):
            ev.append({"t": float(t), "kind": "heartbeat", "sat": sat, "outbox_depth": (i * 3) % 40,
                       "outbox_bytes": 1000 * i, "power_w": None if i == 5 else 9.0 + (i % 7),
                       "temperature_c": 30.0 + i % 5, "eclipse": 20 <= i % 48 < 35, "variant": "cloud-int8",
                       "engine_version": 1 if t < 8000 else 2, "frames_in": i, "frames_processed": i})
        for t, done, status, attempt in ((1300, 0, "sending", 1), (1500, 40000, "failed", 1),
                                        (2700, 40000, "sending", 2), (2900, 100000, "complete", 2)):
            ev.append({"t": t + 100.0 * k, "kind": "uplink", "sat": sat, "bytes_done": done, "size": 100000,
                       "status": status, "attempt": attempt, "version": 2})
        ev.append({"t": 3100.0, "kind": "install", "sat": sat, "version": 2, "ok": k == 0, "outcome": "active"})
        for j, t in enumerate(range(1400, 12000, 700)):
            ev.append({"t": float(t), "kind": "result", "sat": sat, "result_id": f"{sat}-{j}",
                       "duplicate": j % 4 == 3, "priority": j % 3, "bytes": 2048})
        ev.append({"t": 100.0, "kind": "image", "sat": sat, "frame_id": k, "lat": 10.0, "lon": 20.0, "sunlit": True})
        ev.append({"t": 0.0, "kind": "daemon", "sat": sat, "state": "started", "code": None})
    for fid, fault, sat, t, detail, ok, t_rec, rec in FAULTS:
        ev.append({"t": t, "kind": "fault", "sat": sat, "id": fid, "fault": fault, "detail": detail})
        ev.append({"t": t_rec or t + 600, "kind": "recovery", "sat": sat, "id": fid, "ok": ok, "detail": rec})
    ev.append({"t": 3000.0, "kind": "daemon", "sat": "W01-01", "state": "killed", "code": -9})
    return ev


def _summary(sats, faults=True):
    return {"scenario": "report <test> & co", "satellites": sats, "stations": ["Svalbard", "Singapore"],
            "duration_s": HOURS * 3600, "factor": 60.0, "wall_s": 240.5,
            "eclipse": {sats[0]: [[2400.0, 4200.0], [8200.0, 10000.0]]},
            "faults": [{"id": f[0], "fault": f[1], "sat": f[2], "t": f[3], "detail": f[4], "recovered": f[5],
                        "t_recovered": f[6], "recovery": f[7]} for f in FAULTS] if faults else [],
            "delivery": {"accepted": 30, "delivered_unique": 30, "duplicates_dropped": 6, "lost": 0, "unexpected": 0,
                         "exactly_once": True},
            "uplink": {s: {"ok": True, "bytes_sent": 140000, "size": 100000, "efficiency": 0.714} for s in sats},
            "notes": ["a note with <angle> brackets"]}


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    run_contacts("97.6:2/2/0@550", None, "Svalbard,Singapore", HOURS, 60.0, str(path), start=EPOCH)
    return path


def _run_dir(tmp_path, plan_path, events, summary):
    tmp_path.joinpath("plan.json").write_bytes(plan_path.read_bytes())
    tmp_path.joinpath("events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    tmp_path.joinpath("summary.json").write_text(json.dumps(summary))
    return str(tmp_path)


def _check_pngs(run_dir, page):
    refs = re.findall(r"<img src='([^']+)'", page)
    assert sorted(refs) == sorted(p[0] for p in PLOTS)
    for name in refs:
        data = open(os.path.join(run_dir, name), "rb").read()
        assert data[:8] == PNG_MAGIC and len(data) > MIN_PNG_BYTES, name


def test_report_has_every_plot_and_the_faults_with_their_recovery(tmp_path, plan_path):
    sats = ["W01-01", "W02-01"]
    run_dir = _run_dir(tmp_path, plan_path, _events(sats), _summary(sats))
    path = write_report(run_dir)
    assert path == os.path.join(run_dir, "report.html")
    page = open(path, encoding="utf-8").read()
    _check_pngs(run_dir, page)
    assert "report &lt;test&gt; &amp; co" in page and "<test>" not in page
    assert "a note with &lt;angle&gt; brackets" in page
    assert "PASS: exactly once held" in page and "duplicates dropped 6" in page
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S)
    for fid, fault, sat, t, _, ok, t_rec, rec in FAULTS:
        row = [r for r in rows if r.startswith(f"<td>{fid}</td><td>{fault}</td>")]
        assert len(row) == 1, (fid, fault)
        assert f"<td>{sat}</td>" in row[0] and html.escape(rec) in row[0]
        assert ("<td>OK</td>" if ok else "<td>FAILED</td>") in row[0]
        if t_rec is not None:
            s = int(round(t_rec))
            assert f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" in row[0]


def test_empty_events_still_make_a_report(tmp_path, plan_path):
    sats = ["W01-01", "W02-01"]
    summary = _summary(sats, faults=False)
    del summary["eclipse"], summary["uplink"]
    run_dir = _run_dir(tmp_path, plan_path, [], summary)
    page = open(write_report(run_dir), encoding="utf-8").read()
    _check_pngs(run_dir, page)
    assert "No faults injected." in page and "No uplink in this run." in page


def test_twelve_satellites_without_a_plan_and_with_a_bad_line(tmp_path, capsys):
    sats = ["W01-01", "W02-01"] + [f"S{i:02d}" for i in range(10)]
    ev = [e for e in _events(sats[:2]) if e["kind"] != "heartbeat" or e["t"] < 1200] + [
        {"t": 60.0 * i, "kind": "heartbeat", "sat": s, "outbox_depth": i, "power_w": 8.0, "temperature_c": None}
        for s in sats[2:] for i in range(3)]
    tmp_path.joinpath("events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ev) + "{not json\n")
    tmp_path.joinpath("summary.json").write_text(json.dumps({"scenario": "twelve", "satellites": sats}))
    assert main([str(tmp_path)]) == 0
    page = tmp_path.joinpath("report.html").read_text(encoding="utf-8")
    _check_pngs(str(tmp_path), page)
    assert "no plan.json" in page and "1 line(s) of events.jsonl" in page
    assert capsys.readouterr().out.strip().endswith("report.html")


def test_a_directory_without_summary_is_a_user_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "summary.json" in capsys.readouterr().err
