"""``satedge onboard doctor``: what the daemon can use on this host, and what it falls back to.

Nothing here imports TensorRT, CUDA or jetson-stats or creates a runtime: the GPU is found with
``gpu_present`` (``nvidia-smi`` or the Tegra device nodes), Python packages with
``importlib.util.find_spec`` and their package metadata (``engines.device_profile.PROBE_SCRIPT``,
run on this host with this interpreter, which also reads the L4T release, the TensorRT package,
the DLA device nodes and ``nvpmodel -q``), power rails from the INA3221 monitors in sysfs. The
report ends with the choices the daemon's config should make: the ``tensorrt`` backend or the
``onnxrt`` CPU fallback, and jtop telemetry or the simulated power model.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

JTOP_SOCKET = "/run/jtop.sock"  # the jetson-stats 4.x service socket
_RAIL_FILES = ("bus/i2c/drivers/ina3221*/*/hwmon/hwmon*/in*_label",       # JetPack 5 and 6
               "bus/i2c/drivers/ina3221*/*/iio:device*/rail_name_*")      # JetPack 4 (ina3221x, iio)


@dataclass
class Finding:
    """One thing the daemon could use: ``found``, with what was seen or why not."""

    name: str
    found: bool
    detail: str


@dataclass
class Choice:
    """What the daemon will use for one role (``backend`` or ``power``) and whether that is the fallback."""

    use: str
    setting: str
    fallback: bool
    why: str


@dataclass
class DoctorReport:
    """Findings about this host and the daemon's choices; ``format()`` for people, ``to_dict()`` for ``--json``."""

    python: str
    jetson: Dict[str, Optional[str]]
    findings: List[Finding] = field(default_factory=list)
    choices: Dict[str, Choice] = field(default_factory=dict)

    def finding(self, name: str) -> Finding:
        """The finding called ``name``."""
        return next(f for f in self.findings if f.name == name)

    def to_dict(self) -> dict:
        """JSON-ready: ``python``, ``jetson``, ``findings`` (name -> found, detail), ``choices``."""
        return {"python": self.python, "jetson": self.jetson,
                "findings": {f.name: {"found": f.found, "detail": f.detail} for f in self.findings},
                "choices": {k: asdict(v) for k, v in self.choices.items()}}

    def format(self) -> str:
        """A plain-text report: one line per finding, then what the daemon will use."""
        lines = ["satedge onboard doctor: Python %s" % self.python]
        if self.jetson.get("l4t"):
            lines.append("Jetson: %s, L4T %s, JetPack %s" % (self.jetson.get("model") or "?", self.jetson["l4t"],
                                                             self.jetson.get("jetpack") or "?"))
        lines += ["  %-4s %-12s %s" % ("yes" if f.found else "no", f.name, f.detail) for f in self.findings]
        lines.append("the daemon will use:")
        lines += ["  %-8s %s%s  (%s)  %s" % (k, c.use, " [fallback]" if c.fallback else "", c.setting, c.why)
                  for k, c in self.choices.items()]
        return "\n".join(lines)


def power_rails(sys_root: str = "/sys") -> Tuple[List[str], Optional[str]]:
    """Names of the INA3221 power rails under ``sys_root`` and the folder they were read from (None if none).

    JetPack 5/6 expose them as hwmon ``in*_label`` files of the ``ina3221`` driver, JetPack 4
    as iio ``rail_name_*`` files of ``ina3221x``; any hwmon device named ``ina3221`` counts too.
    """
    files = [f for pattern in _RAIL_FILES for f in glob.glob(os.path.join(sys_root, pattern))]
    for name_file in glob.glob(os.path.join(sys_root, "class/hwmon/hwmon*/name")):
        with open(name_file) as fh:
            if fh.read().strip() == "ina3221":
                files += glob.glob(os.path.join(os.path.dirname(name_file), "in*_label"))
    labels = set()
    for path in files:
        try:
            with open(path) as fh:
                labels.add(fh.read().strip())
        except OSError:
            continue
    return sorted(x for x in labels if x), (os.path.dirname(os.path.dirname(sorted(files)[0])) if files else None)


def diagnose(sys_root: str = "/sys", jtop_socket: str = JTOP_SOCKET) -> DoctorReport:
    """Look at this host and return the report (``sys_root`` and ``jtop_socket`` move for tests only)."""
    from engines.device_profile import Device
    from engines.runners.devicebuf import gpu_present
    from onboard.telemetry import is_jetson

    dev = Device(None).probe(sys.executable)
    mods = dev.modules
    report = DoctorReport(python="%s (%s)" % (sys.version.split()[0], sys.executable),
                          jetson={"model": dev.model or None, "l4t": dev.l4t, "jetpack": dev.jetpack, "sm": dev.sm})
    add = report.findings.append
    gpu, gpu_why = gpu_present()
    add(Finding("gpu", gpu, gpu_why))
    trt = mods.get("tensorrt")
    add(Finding("tensorrt", bool(trt), ("Python bindings %s (package metadata; found, not imported)" % trt) if trt
                else "no 'tensorrt' module for this Python%s" % (
                    "; the %s package is installed for another Python" % dev.tensorrt if dev.tensorrt else "")))
    nodes = "nvdla device nodes" if dev.dla_cores else "no nvdla device node"
    add(Finding("dla", dev.dla_cores > 0, "%d DLA core(s) (%s%s)" % (
        dev.dla_cores, nodes, "" if dev.l4t else "; not a Jetson: no /etc/nv_tegra_release, and discrete GPUs "
        "have no DLA")))
    for lib in ("cuda-python", "pycuda"):
        add(Finding(lib, bool(mods.get(lib)), ("version %s" % mods[lib]) if mods.get(lib) else "not installed"))
    jtop = mods.get("jtop")
    service = os.path.exists(jtop_socket)
    add(Finding("jetson-stats", bool(jtop) and service, "jtop %s, service socket %s %s" % (
        jtop or "not installed", jtop_socket, "present" if service else "absent")))
    rails, where = power_rails(sys_root)
    add(Finding("power-rails", bool(rails), "%s (%s)" % (", ".join(rails), where) if rails else
                "no INA3221 rails under %s (bus/i2c/drivers/ina3221*, class/hwmon)" % sys_root))
    mode = re.search(r"NV Power Mode:\s*(\S+)\s*(\d+)?", dev.nvpmodel or "")
    add(Finding("nvpmodel", bool(mode), ("%s (mode %s)" % mode.groups()) if mode else
                "no 'nvpmodel' command, or 'nvpmodel -q' printed no mode"))
    ort = mods.get("onnxruntime")
    add(Finding("onnxruntime", bool(ort), ("version %s: the CPU backend" % ort) if ort else
                "not installed: 'pip install satedge[onboard]'"))

    lib = next((name for name in ("cuda-python", "pycuda") if mods.get(name)), None)
    if gpu and trt and lib:
        report.choices["backend"] = Choice("tensorrt", "backend: tensorrt", False, "GPU, TensorRT %s, %s" % (trt, lib))
    else:
        missing = [what for what, ok in (("no GPU", gpu), ("no TensorRT", trt), ("no cuda-python or pycuda", lib))
                   if not ok]
        report.choices["backend"] = Choice("onnxrt CPU" if ort else "none", "backend: onnxrt", True,
                                           ", ".join(missing) + ("" if ort else "; and no onnxruntime either"))
    if is_jetson() and jtop and service:
        report.choices["power"] = Choice("jtop rails", "telemetry.source: jtop", False,
                                         "jetson-stats reads %s" % (", ".join(rails) or "the board's rails"))
    else:
        why = [what for what, ok in (("not a Jetson", is_jetson()), ("no jetson-stats", jtop),
                                     ("jtop service not running", service)) if not ok]
        report.choices["power"] = Choice("simulated power model", "telemetry.source: simulated", True, ", ".join(why))
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m onboard.doctor [--json]``: print the report; exit 1 when the daemon can run no model here."""
    parser = argparse.ArgumentParser(prog="satedge onboard doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return _doctor(parser.parse_args(argv))


def _doctor(args) -> int:
    report = diagnose()
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.choices["backend"].use != "none" else 1


def add_doctor_parser(verbs) -> None:
    """Add the ``doctor`` verb to the ``onboard`` side's ``verbs`` (the lead wires it into ``onboard/cli.py``)."""
    doctor = verbs.add_parser("doctor", help="what the daemon can use here (GPU, TensorRT, DLA, buffers, jtop, "
                              "power rails, nvpmodel) and what it falls back to")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=_doctor)


if __name__ == "__main__":
    sys.exit(main())
