"""HIL: build each zoo model's engine on the unit and compare its outputs with ONNX Runtime's reference.

Where the unit's satedge Python has TensorRT (JetPack 5/6), ``engines.compare`` runs the plan
through the TensorRT runner on the unit. Where it has not (a TX2: TensorRT's bindings are for
Python 3.6 only), ``trtexec`` runs the plan on the reference inputs and exports its outputs, which
are compared here with the same tolerances.
"""
import json
import shlex

import numpy as np
import pytest

from engines.compare import TOLERANCES

pytestmark = pytest.mark.jetson
CANARY_TOLERANCES = dict(TOLERANCES, fp32=1e-3)   # TF32 on Orin; the store's canary uses the same 1e-3


def _trtexec_outputs(hil, bundle, plan):
    """Run the plan with ``trtexec`` on the bundle's reference inputs; return its outputs as arrays."""
    inputs, _ = bundle.reference()
    local = hil.tmp / ("ref-%s-%s" % (bundle.manifest.name, plan.precision))
    local.mkdir(exist_ok=True)
    for name, arr in inputs.items():
        np.ascontiguousarray(arr).tofile(str(local / (name + ".bin")))
    rd, q = plan.remote + "/ref", shlex.quote
    hil.device.copy_dir(local, rd)
    load = ",".join("%s:%s/%s.bin" % (n, rd, n) for n in inputs)
    shapes = ",".join("%s:%s" % (n, "x".join(map(str, a.shape))) for n, a in inputs.items())
    hil.device.run("%s --loadEngine=%s/%s --loadInputs=%s --shapes=%s --exportOutput=%s/out.json" % (
        q(hil.profile.trtexec), q(plan.remote), plan.plan.file, q(load), q(shapes), q(rd)), timeout=600)
    exported = json.loads(hil.device.read_file(rd + "/out.json"))
    return {o["name"]: np.asarray(o["values"], np.float32).reshape([int(d) for d in o["dimensions"].split("x")])
            for o in exported}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_zoo_engines_match_onnx_runtime(hil, record, precision):
    names = sorted({name for name, _ in hil.zoo() if hil.can_build(name, precision)})
    if not names:
        pytest.skip("no zoo bundle for %s, or %s does not build %s" % (precision, hil.target.name, precision))
    tol, results = CANARY_TOLERANCES[precision], {}
    for name in names:
        bundle, plan = hil.build(precision, name=name)
        if hil.profile.has("tensorrt"):
            out = hil.compare(plan.remote, precision)
            results[name] = {"passed": out["passed"], "errors": out["errors"], "failures": out["failures"]}
        elif hil.profile.trtexec:
            got = _trtexec_outputs(hil, bundle, plan)
            _, want = bundle.reference()
            errors = {k: float(np.max(np.abs(got[k].astype(np.float64) - v))) for k, v in want.items()}
            results[name] = {"tool": "trtexec", "max_abs": errors, "tolerance": tol,
                             "passed": all(e <= tol for e in errors.values())}
        else:
            pytest.skip("%s has neither TensorRT for its satedge Python nor trtexec" % hil.device.label)
    record("engines-%s" % precision, results, hil)
    assert all(r["passed"] for r in results.values()), results
