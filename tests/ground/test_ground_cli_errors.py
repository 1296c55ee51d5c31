"""Bad input to the real ``satedge`` command (``ground ...``, ``data ...``): one error line, no traceback,
found before any training.

Each CLI case runs ``python -m satedge_cli`` in a subprocess, as a user would, and checks the exit
status, that stderr ends in exactly one ``satedge: error: ...`` line naming what is wrong, and that no
Python traceback reached the user. Recipe value checks run in-process too (they are many and cheap).
"""
import json
from pathlib import Path

import pytest
import yaml

from engines.errors import UserError

from cli_check import error_line, satedge  # tests/cli_check.py; conftest.py puts tests/ on sys.path

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "ground" / "recipes" / "cloud-quick.yaml"


@pytest.fixture
def files(tmp_path):
    """A plain file (to put things under), a binary file, and broken results files."""
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "binary").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "notjson.json").write_text("this is not JSON\n")
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "list.json").write_text("[1]")
    return tmp_path


@pytest.mark.parametrize("argv", [["ground", "cloudscreen", "--seed", "-1"], ["data", "splits", "--seed", "-1"],
                                  ["data", "splits", "--clients", "0"], ["ground", "cloudscreen", "--seed", "x"]])
def test_negative_or_bad_seed_is_an_argument_error(argv):
    error_line(satedge(*argv), argv[-2], argv[-1])


def test_cloudscreen_refuses_an_out_under_a_file_before_training(files):
    line = error_line(satedge("ground", "cloudscreen", "--quick", "--out", files / "afile" / "cs"), "--out",
                      files / "afile")
    assert "is a file" in line


@pytest.mark.parametrize("name, expect", [("notjson.json", "not JSON"), ("empty.json", "'name'"),
                                          ("list.json", "not an object"), ("binary", "not a text file")])
def test_report_refuses_results_that_are_not_compress_results(files, name, expect):
    error_line(satedge("ground", "report", files / name, "--out", files / "rep"), files / name, expect)
    assert not (files / "rep").exists(), "a refused report left its folder behind"


def test_report_refuses_an_out_that_is_a_file(files):
    results = files / "r" / "results.json"
    results.parent.mkdir()
    results.write_text(json.dumps({"name": "x", "started": "now", "seconds": 1.0, "tracks": {},
                                   "machine": {"cpu": "c", "cores": 1, "torch": "t", "onnxruntime": "o"}}))
    error_line(satedge("ground", "report", results, "--out", files / "afile"), "--out", files / "afile")
    assert satedge("ground", "report", results, "--out", files / "rep").returncode == 0


def _recipe(tmp_path, edit):
    doc = yaml.safe_load(RECIPE.read_text())
    edit(doc)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _train(doc):
    return doc["tracks"]["synthetic"]["train"]


def _step(doc, kind):
    return next(s for s in doc["steps"] if s["step"] == kind)


RECIPE_CASES = {
    # id: (edit of cloud-quick, the key path the message must name)
    "batch-size-0": (lambda d: _train(d).update(batch_size=0), "tracks.synthetic.train.batch_size"),
    "data-train-0": (lambda d: d["tracks"]["synthetic"]["data"].update(train=0), "tracks.synthetic.data.train"),
    "width-0": (lambda d: _train(d).update(width=0), "tracks.synthetic.train.width"),
    "epochs-negative": (lambda d: _train(d).update(epochs=-1), "tracks.synthetic.train.epochs"),
    "unknown-calibrator": (lambda d: _step(d, "ptq").update(calibrators=["nope"]), "steps[1] (ptq).calibrators"),
    "keep-macs-5": (lambda d: _step(d, "prune").update(keep_macs=5.0), "(prune).keep_macs"),
    "samples-0": (lambda d: _step(d, "ptq").update(samples=0), "(ptq).samples"),
    "latency-runs-0": (lambda d: d["latency"].update(runs=0), "latency.runs"),
    "olinda-not-bool": (lambda d: d["tracks"]["synthetic"]["data"].update(olinda=3), "data.olinda"),
}


@pytest.mark.parametrize("case", sorted(RECIPE_CASES))
def test_recipe_values_are_checked_at_load(tmp_path, case):
    from ground.compress.recipe import load_recipe
    edit, where = RECIPE_CASES[case]
    with pytest.raises(UserError) as info:
        load_recipe(_recipe(tmp_path, edit))
    assert where in str(info.value), str(info.value)


def test_shipped_recipes_still_load():
    from ground.compress.recipe import load_recipe
    for path in sorted((ROOT / "ground" / "recipes").glob("*.yaml")):
        load_recipe(path)


def test_compress_refuses_bad_recipes_before_training(tmp_path, files):
    error_line(satedge("ground", "compress", "--recipe", files / "binary"), files / "binary", "not a text file")
    path = _recipe(tmp_path, lambda d: _train(d).update(batch_size=0))
    error_line(satedge("ground", "compress", "--recipe", path, "--out", tmp_path / "o"), path,
               "tracks.synthetic.train.batch_size")
    assert not (tmp_path / "o").exists()


def test_data_fetch_list_needs_no_dest_and_archives_must_hold_archives(files):
    listed = satedge("data", "fetch", "--list")
    assert listed.returncode == 0 and "sgp4" in listed.stdout, listed.stderr
    error_line(satedge("data", "fetch"), "--dest")
    error_line(satedge("data", "fetch", "--dest", files / "afile"), "--dest", files / "afile")
    (files / "empty").mkdir()
    error_line(satedge("data", "fetch", "--dest", files / "d", "--archives", files / "nope"), "--archives",
               files / "nope", "no such folder")
    error_line(satedge("data", "fetch", "--dest", files / "d", "--archives", files / "empty", "--only", "sgp4"),
               "--archives", files / "empty", "nothing is downloaded")


def test_fetch_with_archives_never_downloads_a_missing_package(tmp_path):
    """With --archives, a package whose archive is not there is an error for it, not a download."""
    import zipfile

    from ground.data import fetch as fetch_mod
    archives = tmp_path / "archives"
    archives.mkdir()
    with zipfile.ZipFile(archives / "sgp4-2.27-cp311-abi3-manylinux.whl", "w") as zf:
        zf.writestr("sgp4/x.txt", "x")
    report = fetch_mod.fetch(tmp_path / "dest", ["sgp4", "earthlib"], archives=archives,
                             run=lambda *a, **k: pytest.fail("downloaded although --archives was given"))
    assert "earthlib" in report.errors and "--archives" in report.errors["earthlib"], report.errors
