"""HIL: power per nvpmodel mode, read from the board's rails through jtop while the engine runs.

Needs jetson-stats (the jtop service) for the unit's satedge Python, and passwordless ``sudo
nvpmodel`` for the HIL user (``docs/hil.md``). The original mode is restored afterwards. Modes that
need a reboot to take effect are reported, not measured.
"""
import math
import os
import re

import pytest

pytestmark = pytest.mark.jetson
SECONDS = float(os.environ.get("SATEDGE_HIL_POWER_SECONDS", "20"))
POWER_PY = r'''import json, sys, threading, time
from engines.bundle import Bundle
from engines.runners import runner_for
from onboard.telemetry import JtopSource
bundle, backend, seconds = Bundle.open(sys.argv[1]), sys.argv[2], float(sys.argv[3])
source, busy, stop, calls = JtopSource(), [], threading.Event(), [0]
idle = []
for _ in range(6):
    idle.append(source.read())
    time.sleep(0.5)
def watch():
    while not stop.is_set():
        busy.append(source.read())
        time.sleep(0.5)
inputs, _ = bundle.reference()
with runner_for(bundle, backend) as runner:
    runner.infer(inputs)
    watcher, end = threading.Thread(target=watch), time.time() + seconds
    watcher.start()
    while time.time() < end:
        runner.infer(inputs)
        calls[0] += 1
    stop.set()
    watcher.join()
source.close()
mean = lambda rs: sum(r.power_w for r in rs) / max(1, len(rs))
print(json.dumps({"backend": backend, "idle_w": mean(idle), "busy_w": mean(busy), "samples": len(busy),
                  "max_temp_c": max(r.temp_c for r in idle + busy), "inferences_per_s": calls[0] / seconds}))
'''


def _mode(hil):
    m = re.search(r"NV Power Mode:\s*(\S+)\s+(\d+)", hil.device.run("nvpmodel -q", check=False).stdout.decode()
                  .replace("\n", " "))
    return (int(m.group(2)), m.group(1)) if m else None


def test_power_per_nvpmodel_mode(hil, record):
    if not hil.profile.has("jtop"):
        pytest.skip("jetson-stats is not installed for %s on %s" % (hil.python, hil.device.label))
    if _mode(hil) is None or hil.device.run("sudo -n nvpmodel -q", check=False).returncode != 0:
        pytest.skip("nvpmodel is missing, or 'sudo nvpmodel' needs a password for the HIL user (docs/hil.md)")
    conf = hil.device.run("cat /etc/nvpmodel.conf").stdout.decode()
    modes = [(int(i), n) for i, n in re.findall(r"POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+?)\s*>", conf)]
    bundle, plan = hil.build("fp16" if "fp16" in hil.target.precisions else "fp32")
    backend = "tensorrt" if hil.profile.has("tensorrt") else "onnxrt"
    original, report = _mode(hil), {}
    try:
        for mode_id, name in modes:
            hil.device.run("echo NO | sudo -n nvpmodel -m %d" % mode_id, check=False, timeout=120)
            if _mode(hil) != (mode_id, name):
                report[name] = {"id": mode_id, "measured": False, "why": "did not take effect (reboot needed?)"}
                continue
            out = hil.py(POWER_PY, plan.remote, backend, SECONDS, timeout=SECONDS + 120)
            report[name] = dict(out, id=mode_id, measured=True)
            assert math.isfinite(out["busy_w"]) and out["busy_w"] > 0 and out["samples"] > 0, out
    finally:
        hil.device.run("echo NO | sudo -n nvpmodel -m %d" % original[0], check=False, timeout=120)
        record("power-%s" % bundle.manifest.name, {"seconds": SECONDS, "modes": report,
                                                   "restored": original}, hil)
    assert any(r["measured"] for r in report.values()), report
