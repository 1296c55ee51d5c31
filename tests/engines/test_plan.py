"""Plans: manifest entries, the header read without TensorRT, and refusal before any load.

The plan bytes here follow the header layout in docs/bundle.md ("Plan header"): a uint32 tag
0x74727466 at offset 0, a uint32 container version 0 at offset 4, and the TensorRT major, minor,
patch and build as single bytes at offsets 24..27. That layout is taken from NVIDIA's trtexec
source (printPlanVersion in samples/common/sampleEngines.cpp) and NVIDIA/TensorRT#3073; it is
ASSUMED here, not checked against a real plan (this host has no TensorRT). The tensorrt-marked
test in test_tensorrt.py checks it on a real build.
"""
import json
import struct

import pytest

from engines.build import add_plan, plan_filename
from engines.bundle import Bundle
from engines.errors import BundleError, PlanIncompatible, UserError
from engines.manifest import PRECISIONS, Manifest
from engines.plan import (PLAN_PRECISIONS, PlanEntry, check_plan_compatible, normalize_sm, read_plan_header,
                          select_plan)


def entry(sm="8.7", trt="10.3.0.26", precision="int8", dla=None, **kw):
    return PlanEntry(plan_filename(sm, trt, precision, dla), sm, trt, precision, dla, **kw)


def test_header_read_without_tensorrt(plan_bytes, tmp_path):
    header = read_plan_header(plan_bytes(8, 6, 2, 3))
    assert header.recognised and header.trt_version == "8.6.2.3" and header.magic == b"ftrt"
    path = tmp_path / "x.plan"
    path.write_bytes(plan_bytes(10, 3, 0, 26))
    assert read_plan_header(path).trt_version == "10.3.0.26"
    for data, why in [(b"ftrt", "only 4 bytes"), (b"\x08\x00\x00\x00" + b"\x00" * 40, "not the plan tag"),
                      (struct.pack("<II", 0x74727466, 3) + b"\x00" * 24, "container version 3"),
                      (plan_bytes(0, 0, 0, 0), "not a TensorRT release")]:
        header = read_plan_header(data)
        assert not header.recognised and header.trt_version is None and why in header.note


def test_plan_for_another_tensorrt_refused_naming_both():
    with pytest.raises(PlanIncompatible) as err:
        check_plan_compatible(entry(trt="10.3.0.26"), "8.6.2.3", "8.7")
    assert "TensorRT 10.3.0.26" in str(err.value) and "TensorRT 8.6.2.3" in str(err.value)
    check_plan_compatible(entry(trt="10.3.0.26"), "10.3.0.30", (8, 7))  # same release, other build: fine


def test_plan_for_another_sm_refused_naming_both():
    with pytest.raises(PlanIncompatible, match=r"SM 7\.2 .*SM 8\.7"):
        check_plan_compatible(entry(sm="7.2", trt="8.5.2.2"), "8.5.2.2", "sm_87")


def test_header_of_another_version_refused_even_if_entry_matches(plan_bytes):
    """A plan file whose header disagrees with its (matching) manifest entry is refused before load."""
    header = read_plan_header(plan_bytes(8, 5, 2, 2))
    with pytest.raises(PlanIncompatible, match=r"header says TensorRT 8\.5\.2\.2.*entry says TensorRT 10\.3\.0\.26"):
        check_plan_compatible(entry(), "10.3.0.26", "8.7", header)
    unknown = read_plan_header(b"\x00" * 64)  # unrecognised header: the manifest entry decides
    check_plan_compatible(entry(), "10.3.0.26", "8.7", unknown)


def test_version_compatible_plans():
    vc = entry(trt="8.6.1.6", version_compatible=True)
    check_plan_compatible(vc, "10.3.0.26", "8.7")
    with pytest.raises(PlanIncompatible, match="same or a newer release, 8.6 or up"):
        check_plan_compatible(vc, "8.5.2.2", "8.7")
    with pytest.raises(PlanIncompatible):
        check_plan_compatible(entry(trt="8.5.2.2", version_compatible=True), "10.3.0", "8.7")


def test_select_plan_prefers_exact_release_and_lists_all_when_none_fits():
    plans = [entry(trt="8.6.1.6", version_compatible=True), entry(trt="10.3.0.26"), entry(sm="7.2", trt="10.3.0.26"),
             entry(trt="10.3.0.26", dla=0)]
    assert select_plan(plans, "10.3.0.26", "8.7").file == plans[1].file
    assert select_plan(plans, "10.4.0.1", "8.7").file == plans[0].file
    assert select_plan(plans, "10.3.0.26", "8.7", dla_core=0).dla_core == 0
    with pytest.raises(PlanIncompatible) as err:
        select_plan(plans, "8.2.1.8", "6.2", precision="int8")
    msg = str(err.value)
    assert "SM 6.2 and TensorRT 8.2.1.8" in msg and all(p.file in msg for p in plans)


def test_entry_validation_and_lossless_round_trip():
    with pytest.raises(BundleError, match="under plans/"):
        PlanEntry("model.plan", "8.7", "10.3", "fp16", None)
    with pytest.raises(BundleError, match="MAJOR.MINOR"):
        entry(trt="ten")
    with pytest.raises(BundleError, match="dla_core"):
        entry(dla=-1)
    with pytest.raises(BundleError, match="missing dla_core"):
        PlanEntry.from_dict({"file": "plans/a.plan", "sm": "8.7", "trt_version": "10.3", "precision": "fp16"})
    assert normalize_sm(110) == "11.0" and normalize_sm("sm_62") == "6.2" and normalize_sm([7, 2]) == "7.2"
    raw = {"file": "plans/a.plan", "sm": "8.7", "trt_version": "10.3.0", "precision": "fp16", "dla_core": None,
           "target": None, "future": {"x": 1}}
    assert PlanEntry.from_dict(raw).to_dict() == raw
    assert PLAN_PRECISIONS == PRECISIONS


def test_add_plan_updates_manifest_drops_stale_signature_and_resigns(make_bundle, keypair, plan_bytes):
    from engines.signing import sign_bundle, verify_bundle_signature
    bundle = make_bundle()
    before = bundle.manifest.canonical_bytes()
    assert b'"plans"' not in before  # manifests without plans keep their canonical bytes
    sign_bundle(bundle.path, keypair[0])
    first = add_plan(bundle, plan_bytes(), entry(precision="fp16"))
    assert not (bundle.path / "manifest.sig").exists()  # the old signature no longer covers the manifest
    assert [p.file for p in first.manifest.plans] == ["plans/sm87_trt10.3.0_fp16_gpu.plan"]
    with pytest.raises(UserError, match="already has plans/sm87_trt10.3.0_fp16_gpu.plan.*replace"):
        add_plan(first, plan_bytes(), entry(precision="fp16"))
    with pytest.raises(UserError, match="header says TensorRT 8.6.2.3 but the entry says 10.3.0.26"):
        add_plan(first, plan_bytes(8, 6, 2, 3), entry(precision="int8"))
    second = add_plan(first, plan_bytes(), entry(precision="int8", dla=1), key=keypair[0])
    assert verify_bundle_signature(second.path, [keypair[1]])
    data = json.loads((second.path / "manifest.json").read_text())
    assert [p["dla_core"] for p in data["plans"]] == [None, 1]
    assert Manifest.from_dict(data).canonical_bytes() == second.manifest.canonical_bytes()
    third = add_plan(second, plan_bytes(payload=b"new"), entry(precision="fp16"), replace=True)
    assert len(third.manifest.plans) == 2 and Bundle.open(third.path).manifest.plans[-1].precision == "fp16"


def test_manifest_refuses_unlisted_or_duplicate_plans(make_bundle):
    data = make_bundle().manifest.to_dict()
    data["plans"] = [entry().to_dict()]
    with pytest.raises(BundleError, match="not listed in files"):
        Manifest.from_dict(data)
    data["files"][entry().file] = "0" * 64
    data["plans"] = [entry().to_dict(), dict(entry().to_dict(), trt_version="10.3.0.99")]
    with pytest.raises(BundleError, match="same key"):
        Manifest.from_dict(data)
