"""Bad input to the real ``satedge`` command (``demo``, ``sim ...``): one error line, no traceback, found
before the run (training, propagation, processes) starts.

CLI cases run ``python -m satedge_cli`` in a subprocess and check the exit status, that stderr ends
in exactly one ``satedge: error: ...`` line naming what is wrong, and that no traceback reached the
user. The many FL scenario value checks run in-process (cheap). Also: ``stop_all`` kills a child
that ignores SIGTERM after its grace period.
"""
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from engines.errors import UserError

from cli_check import error_line, satedge  # tests/cli_check.py; conftest.py puts tests/ on sys.path

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "sim" / "scenarios"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "binary").write_bytes(bytes(range(256)) * 4)
    return tmp_path


@pytest.mark.parametrize("argv", [["demo", "--seed", "-1"], ["demo", "--frames", "0"], ["demo", "--frames", "-3"],
                                  ["sim", "sensor", "--endpoint", "tcp://127.0.0.1:9", "--seed", "-1"],
                                  ["sim", "fl", "fl-quick", "--seeds", "0", "-1"]])
def test_negative_seeds_and_frames_are_argument_errors(argv):
    error_line(satedge(*argv), argv[-2], argv[-1])


def test_demo_checks_its_outputs_before_the_run(files):
    error_line(satedge("demo", "--quick", "--out", files / "o", "--json", files), "--json", files, "is a folder")
    error_line(satedge("demo", "--quick", "--out", files / "afile"), "--out", files / "afile", "is a file")
    assert not (files / "o").exists(), "the demo started although --json was refused"


def test_run_demo_refuses_frames_below_one(tmp_path):
    from sim.demo import run_demo
    for frames in (0, -3):
        with pytest.raises(UserError, match="--frames"):
            run_demo(str(tmp_path / "o"), quick=True, frames=frames)
    assert not (tmp_path / "o").exists()


def test_contacts_bad_tle_and_out(files):
    error_line(satedge("sim", "contacts", "--tle", files / "binary"), files / "binary", "not a text file")
    walker = ["sim", "contacts", "--walker", "53:4/2/1@550", "--hours", "1"]
    error_line(satedge(*walker, "--out", files), "--out", files, "is a folder")
    error_line(satedge(*walker, "--out", files / "afile" / "plan.json"), "--out", files / "afile", "is a file")


def _scenario(tmp_path, base, edit):
    doc = yaml.safe_load((SCENARIOS / base).read_text())
    edit(doc)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _fault(doc, i, **kw):
    doc["faults"][i].update(kw)


RUN_CASES = {
    "fault-sat-99": (lambda d: _fault(d, 1, sat=99), ["faults[1].sat", "99", "3 satellite"]),
    "link-loss-5": (lambda d: d["link"]["up"].update(loss=5), ["link.up.loss", "[0, 1]"]),
    "link-unknown-key": (lambda d: d["link"]["up"].update(speed=3), ["link.up", "'speed'", "reorder_delay_s"]),
    "link-outages-not-pairs": (lambda d: d["link"]["down"].update(outages=[1, 2]), ["link.down.outages"]),
    "external-index-out-of-range": (lambda d: d.update(external={7: {}}), ["external"]),
}


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_sim_run_scenario_is_checked_at_load(tmp_path, case):
    edit, names = RUN_CASES[case]
    path = _scenario(tmp_path, "constellation-quick.yaml", edit)
    error_line(satedge("sim", "run", path, "--out", tmp_path / "run"), *names)
    assert not (tmp_path / "run").exists(), "the run started although the scenario was refused"


def test_sim_run_binary_scenario_and_out_under_a_file(files):
    error_line(satedge("sim", "run", files / "binary"), "not a text file")
    error_line(satedge("sim", "run", "constellation-quick", "--out", files / "afile" / "run"), "--out",
               files / "afile")


def _fl(tmp_path, edit=None, text=None):
    path = tmp_path / "fl.yaml"
    if text is not None:
        path.write_text(text)
    else:
        doc = yaml.safe_load((SCENARIOS / "fl-quick.yaml").read_text())
        edit(doc)
        path.write_text(yaml.safe_dump(doc))
    return path


FL_CASES = {
    "empty": (None, "", "is empty"),
    "scalar": (None, "foo\n", "not a mapping"),
    "lr-fast": (lambda d: d["training"].update(lr="fast"), None, "training.lr"),
    "rounds-many": (lambda d: d.update(rounds="many"), None, "rounds"),
    "rounds-negative": (lambda d: d.update(rounds=-1), None, "rounds"),
    "poison-kind": (lambda d: d["poison"].update(kinds=["meteor"]), None, "poison.kinds"),
    "poison-satellite": (lambda d: d["poison"].update(satellite=6), None, "poison.satellite"),
    "section-not-a-mapping": (lambda d: d.update(task=3), None, "task"),
    "unknown-compressor": (lambda d: d["compressors"].update(x={"name": "nope"}), None, "compressors.x"),
}


@pytest.mark.parametrize("case", sorted(FL_CASES))
def test_fl_scenario_is_checked_at_load(tmp_path, case):
    from sim.fl import load_scenario
    edit, text, expect = FL_CASES[case]
    with pytest.raises(UserError) as info:
        load_scenario(str(_fl(tmp_path, edit, text)))
    assert expect in str(info.value), str(info.value)


def test_shipped_fl_scenarios_still_load():
    from sim.fl import load_scenario
    for name in ("fl-quick", "fl-full"):
        assert load_scenario(name)["name"] == name


def test_sim_fl_cli_refuses_bad_scenarios(files, tmp_path):
    error_line(satedge("sim", "fl", files / "binary"), "not a text file")
    path = _fl(tmp_path, lambda d: d.update(rounds=-1))
    error_line(satedge("sim", "fl", path, "--out", tmp_path / "o"), "rounds", "-1")


def test_stop_all_kills_a_child_that_ignores_sigterm(tmp_path):
    from sim.processes import ManagedProcess, stop_all
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    stubborn = ManagedProcess("stubborn", [sys.executable, "-c", code], str(tmp_path / "s.log"))
    polite = ManagedProcess("polite", [sys.executable, "-c", "import time; time.sleep(60)"], str(tmp_path / "p.log"))
    deadline = time.time() + 10
    while "up" not in (tmp_path / "s.log").read_text() and time.time() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    stop_all([stubborn, None, polite], grace_s=1.0)
    assert time.monotonic() - t0 < 5
    assert stubborn.proc.returncode == -signal.SIGKILL
    assert polite.proc.returncode == -signal.SIGTERM
