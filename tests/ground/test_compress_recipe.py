"""Recipe loading: the shipped recipes validate, and every mistake is a UserError that says what to fix."""
import copy

import pytest

pytest.importorskip("yaml")

from engines.errors import UserError  # noqa: E402
from ground.compress.recipe import load_recipe, recipe_from_dict  # noqa: E402
from ground.compress.steps import DistillStep, PruneStep, PtqStep, produced_names  # noqa: E402

BASE = {"name": "t", "model": "cloud",
        "tracks": {"synthetic": {"data": {"train": 8}, "train": {"width": 4, "epochs": 1}}},
        "steps": [{"step": "ptq", "calibrators": ["minmax"]},
                  {"step": "prune", "name": "p"},
                  {"step": "qat", "name": "p-int8", "from": "p"}]}


@pytest.mark.parametrize("name", ["cloud-quick", "cloud-full", "landcover-quick", "landcover-full",
                                  "anomaly-quick", "anomaly-full"])
def test_shipped_recipes_load(name):
    r = load_recipe(name)
    assert r.name == name and r.steps and r.tracks
    assert all(t.train.epochs >= 2 for t in r.tracks.values())


def test_a_valid_recipe_is_typed():
    r = recipe_from_dict(copy.deepcopy(BASE))
    assert isinstance(r.steps[0], PtqStep) and r.steps[0].calibrators == ["minmax"]
    assert isinstance(r.steps[1], PruneStep) and r.steps[1].keep_macs == 0.5
    assert r.steps[2].from_ == "p" and r.tracks["synthetic"].data["test"] == 256      # task default merged
    assert r.tracks["synthetic"].train.lr == pytest.approx(3e-3)
    assert produced_names(DistillStep(name="kd", teacher_width=8)) == ["kd-teacher", "kd", "kd-noteacher"]


@pytest.mark.parametrize("patch, message", [
    (lambda d: d.update(model="yolo"), "unknown model 'yolo'"),
    (lambda d: d.update(colour="red"), "unknown key"),
    (lambda d: d["tracks"].update(itaipu=d["tracks"]["synthetic"]), "has tracks"),
    (lambda d: d["tracks"]["synthetic"]["data"].update(tiles=3), "allowed: \\['olinda', 'test', 'train', 'val'\\]"),
    (lambda d: d["tracks"]["synthetic"]["train"].update(epochs="many"), "epochs: expected int"),
    (lambda d: d["tracks"]["synthetic"]["train"].pop("width"), "missing required key 'width'"),
    (lambda d: d["steps"].append({"step": "sparsify"}), "choose one of"),
    (lambda d: d["steps"].append({"step": "qat", "from": "nothing"}), "from 'nothing' is not produced"),
    (lambda d: d["steps"].append({"step": "prune", "name": "p"}), "used twice"),
    (lambda d: d["steps"].append({"step": "tdds", "fractions": [0.1, 2.0]}), "fractions must lie in"),
    (lambda d: d["steps"].append({"step": "ptq", "name": "x", "percentile": "high"}), "percentile: expected float"),
    (lambda d: d.update(targets=["nano"]), "unknown target profile"),
    (lambda d: d["steps"].append({"step": "tdds"}), "fewer than 2 epochs"),
])
def test_mistakes_are_user_errors(patch, message):
    doc = copy.deepcopy(BASE)
    patch(doc)
    with pytest.raises(UserError, match=message):
        recipe_from_dict(doc, "my.yaml")


def test_missing_file_lists_the_shipped_recipes(tmp_path):
    with pytest.raises(UserError, match="cloud-quick"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(bad)
