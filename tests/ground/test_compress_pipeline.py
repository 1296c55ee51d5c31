"""End to end at tiny sizes: recipe -> steps -> Q/DQ ONNX -> checks -> signed bundles -> report.

Training here is deliberately tiny (one or two epochs on a few dozen samples): these tests check
the machinery, not accuracy; the measured figures come from the quick/full recipes
(docs/compress.md).
"""
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")
yaml = pytest.importorskip("yaml")

from engines.bundle import Bundle  # noqa: E402
from ground.compress import summary  # noqa: E402
from ground.compress.pipeline import run_recipe  # noqa: E402
from ground.compress.recipe import recipe_from_dict  # noqa: E402
from ground.quantize import check_qdq  # noqa: E402
from satedge_cli import main  # noqa: E402

CLOUD = {
    "name": "cloud-tiny", "model": "cloud", "progress": False, "targets": ["tx2-jp46", "orin-jp6"],
    "tracks": {"synthetic": {"data": {"train": 32, "val": 16, "test": 16, "olinda": True},
                             "train": {"width": 4, "epochs": 2, "batch_size": 16, "lr": 0.01}}},
    "latency": {"runs": 3, "warmup": 1},
    "steps": [{"step": "distill", "name": "kd", "student_width": 2, "teacher_width": 6, "seeds": 2},
              {"step": "ptq", "calibrators": ["minmax", "percentile", "entropy"], "samples": 16},
              {"step": "qat", "epochs": 1, "samples": 16},
              {"step": "hybrid", "samples": 16},
              {"step": "prune", "keep_macs": 0.5, "criterion_epochs": 1, "finetune_epochs": 1},
              {"step": "qat", "name": "pruned-int8", "from": "pruned", "epochs": 1, "samples": 16},
              {"step": "tdds", "fractions": [0.25, 0.5], "epochs": 1}]}


def test_cloud_recipe_through_the_cli_with_signed_bundles_and_report(tmp_path, shared_data):
    from engines.signing import generate_keypair

    key, pub = generate_keypair(tmp_path / "keys")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(CLOUD))
    out, rep = tmp_path / "run", tmp_path / "report"
    assert main(["ground", "compress", "--recipe", str(recipe), "--out", str(out), "--sign-key", str(key),
                 "--report", str(rep), "--no-progress"]) == 0
    doc = json.loads((out / "results.json").read_text())
    track = doc["tracks"]["synthetic"]
    names = [v["name"] for v in track["variants"]]
    assert names[:4] == ["fp32", "kd-teacher", "kd", "kd-noteacher"] and "hybrid-sim" in names
    assert set(track["splits"]) == {"test", "olinda"} and not track["splits"]["olinda"]["labelled"]
    for v in track["variants"]:
        if not v.get("onnx"):
            assert v["label"] == "sim" or v["kind"] in ("tdds", "random")
            continue
        assert v["verify"]["ok"], v["name"]
        if v["label"] == "int8":
            check_qdq(v["onnx"])
            assert v["targets"] == ["orin-jp6"] and v["opset"] == 20       # TX2 has no INT8
        b = Bundle.open(v["bundle"]["path"], trusted_keys=[pub])
        assert b.manifest.precision == ("int8" if v["label"] == "int8" else "fp32")
        assert b.manifest.extra["compression"]["variant"] == v["name"]
    fp32 = summary.variants(track)["fp32"]
    assert fp32["metrics"]["olinda"]["agreement"] == 1.0
    assert fp32["targets"] == ["tx2-jp46", "orin-jp6"] and fp32["opset"] == 13
    kd = summary.distillation(track)
    assert kd and kd[0]["seeds"] == 2 and len(kd[0]["kd_seeds"]) == 2
    pr = {r["variant"]: r for r in summary.pruning(track) if r["split"] == "test"}
    assert pr["pruned-int8"]["bops_reduction"] > 16 * pr["pruned"]["bops_reduction"] * 0.99
    assert [r["fraction"] for r in summary.tdds(track)] == [0.25, 0.5]
    assert set(summary.int8_drops(track)["variants"]) == {"ptq-minmax", "ptq-percentile", "ptq-entropy", "qat",
                                                          "hybrid"}
    text = (rep / "REPORT.md").read_text()
    assert "## cloud / synthetic" in text and "BOPs" in text and "TDDS" in text
    assert len(list(rep.glob("*.png"))) == 4
    assert main(["ground", "report", str(out), "--out", str(tmp_path / "r2")]) == 0
    assert (tmp_path / "r2" / "REPORT.md").is_file()


def test_landcover_and_anomaly_tracks_run(tmp_path, shared_data):
    lc = {"name": "lc-tiny", "model": "landcover", "progress": False, "bundle": {"enabled": False},
          "latency": {"runs": 2, "warmup": 1},
          "tracks": {"synthetic": {"data": {"scenes": 2, "size": 32, "per_scene": 60, "test_scenes": 1,
                                            "val_scenes": 1},
                                   "train": {"width": 8, "epochs": 2, "batch_size": 32}}},
          "steps": [{"step": "ptq", "calibrators": ["percentile"], "samples": 32},
                    {"step": "prune", "keep_macs": 0.5, "criterion_epochs": 1, "finetune_epochs": 1},
                    {"step": "tdds", "fractions": [0.5], "epochs": 1}]}
    doc = run_recipe(recipe_from_dict(lc), out=str(tmp_path / "lc"), log=lambda s: None)
    track = doc["tracks"]["synthetic"]
    assert {v["name"] for v in track["variants"]} == {"fp32", "ptq-percentile", "pruned", "tdds-50", "random-50"}
    assert all(v["verify"]["ok"] for v in track["variants"] if v.get("onnx"))
    an = {"name": "an-tiny", "model": "anomaly", "progress": False, "bundle": {"enabled": False},
          "latency": {"runs": 2, "warmup": 1},
          "tracks": {"synthetic": {"data": {"scenes": 2, "size": 32, "n_bands": 16, "test_scenes": 1},
                                   "train": {"width": [8, 8], "epochs": 5, "batch_size": 4, "schedule": "constant",
                                             "teacher_width": [16, 4], "teacher_epochs": 5,
                                             "baseline_kd": {"task_weight": 0, "logit_weight": 1,
                                                             "feature_weight": 1}}}},
          "steps": [{"step": "distill", "name": "kd", "student_width": [8, 8], "teacher": "task", "epochs": 3},
                    {"step": "qat", "epochs": 2, "samples": 4},
                    {"step": "hybrid", "samples": 4}]}
    doc = run_recipe(recipe_from_dict(an), out=str(tmp_path / "an"), log=lambda s: None)
    track = doc["tracks"]["synthetic"]
    aucs = [v["metrics"]["test"]["AUC"] for v in track["variants"]]
    assert all(0.0 <= a <= 1.0 for a in aucs) and np.isfinite(aucs).all()
    assert summary.variants(track)["qat"]["verify"]["ok"]
