"""HIL: build DLA plans on every DLA core, report which layers fall back to the GPU, check their outputs."""
import pytest

pytestmark = pytest.mark.jetson


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_dla_placement_report(hil, record, precision):
    cores = hil.profile.dla_cores
    if cores == 0:
        pytest.skip("%s has no DLA (the TX2 and Orin Nano have none)" % hil.device.label)
    if not hil.profile.has("tensorrt"):
        pytest.skip("the placement report comes from satedge's builder (IBuilderConfig.can_run_on_DLA); the "
                    "satedge Python on %s has no TensorRT" % hil.device.label)
    names = sorted({name for name, _ in hil.zoo() if hil.can_build(name, precision)})
    if not names:
        pytest.skip("no zoo bundle for %s" % precision)
    report = {}
    for name in names:
        for core in range(cores):
            bundle, plan = hil.build(precision, dla_core=core, name=name)
            entry = next(p for p in bundle.manifest.plans if p.key == plan.plan.key)
            result = hil.compare(plan.remote, precision, core)
            report["%s-dla%d" % (name, core)] = {
                "plan": entry.file, "layers_on_gpu": (entry.built_with or {}).get("gpu_fallback_layers"),
                "passed": result["passed"], "compare": result["errors"], "failures": result["failures"]}
            assert entry.dla_core == core and "gpu_fallback_layers" in (entry.built_with or {}), entry
    record("dla-%s" % precision, report, hil)
    assert all(r["passed"] for r in report.values()), report
