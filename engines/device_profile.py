"""What a Jetson has (JetPack, TensorRT, SM, DLA cores, Pythons): probed over SSH or here, or read from a file.

``Device`` reaches a unit through the ``ssh`` binary, or this host; ``Device.probe`` runs
``PROBE_SCRIPT`` there (``/etc/nv_tegra_release``, ``dpkg-query nvidia-jetpack tensorrt``, the
device tree's SoC, DLA device nodes, ``nvpmodel -q``, and a find-only import check in the Python
that runs satedge: TensorRT is never imported) and returns a ``DeviceProfile``. The shipped
``engines/profiles/*.json`` stand in for absent units: documented JetPack values, not measurements.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tarfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from engines.errors import UserError
from engines.plan import parse_version
from engines.targets import PROFILES, TargetProfile

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
DAEMON_MIN_PYTHON = (3, 8)  # setup.py python_requires; engines use `from __future__ import annotations`
SOC_SM = {"tegra186": "6.2", "tegra194": "7.2", "tegra234": "8.7", "tegra264": "11.0"}  # tegra264 (Thor): unverified
# (key, module, distributions, distribution required): found, never imported. cuda-python needs its distribution,
# since any folder named cuda/ (ours holds CUDA sources) is found as a namespace package.
MODULES = (("tensorrt", "tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu11"), False),
           ("cuda-python", "cuda", ("cuda-python", "cuda-bindings"), True), ("pycuda", "pycuda", ("pycuda",), False),
           ("jtop", "jtop", ("jetson-stats",), False), ("satedge", "onboard", ("satedge",), False),
           ("onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime-gpu"), False))
_MODULES_PY = r'''
import importlib.util, os, platform, sys
sys.path[:] = [p for p in sys.path if p not in ("", ".", os.getcwd())]  # what is installed, not this folder
print("python=" + platform.python_version())
def version(dists):
    try:
        from importlib.metadata import version as get
    except ImportError:  # Python 3.6 and 3.7
        get = lambda d: __import__("pkg_resources").get_distribution(d).version
    for d in dists:
        try:
            return get(d)
        except Exception:
            pass
    return "?"
for key, mod, dists, need_dist in %r:
    try:
        found = importlib.util.find_spec(mod) is not None
    except Exception:
        found = False
    v = version(dists) if found else ""
    print("module.%%s=%%s" %% (key, "" if need_dist and v == "?" else v))
''' % (MODULES,)
# The script Device.install feeds to the unit's Python over ssh: its "from onboard.control import ..." is text
# run there, by the satedge installed on the unit, never an import of onboard by engines (imports point
# engines <- onboard; tests/engines/test_imports.py checks that importing engines loads no onboard module).
_INSTALL_PY = r'''import json, sys
from onboard.control import ControlClient
endpoint, bundle, server_key, client_key, timeout = sys.argv[1:6]
keys = dict(server_public_key=server_key, client_secret_key=client_key) if server_key else {}
with ControlClient(endpoint, timeout_s=float(timeout), **keys) as client:
    reply = client.request("install", bundle=bundle)
    print(json.dumps({"reply": reply, "engine": client.status().get("engine")}, default=str))
'''
PROBE_SCRIPT = r"""PY="${SATEDGE_PY:-python3}"
kv() { printf '%s=%s\n' "$1" "$2"; }
kv model "$(tr -d '\000' < /proc/device-tree/model 2>/dev/null)"
kv compatible "$(tr '\000' ' ' < /proc/device-tree/compatible 2>/dev/null)"
kv tegra_release "$(head -n 1 /etc/nv_tegra_release 2>/dev/null)"
kv jetpack "$(dpkg-query -W -f='${Version}' nvidia-jetpack 2>/dev/null)"
v=""; for p in tensorrt libnvinfer10 libnvinfer8 libnvinfer7; do
  v="$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null)"; [ -n "$v" ] && break; done
kv tensorrt_deb "$v"
kv cuda "$(readlink -f /usr/local/cuda 2>/dev/null)"
kv smi_compute_cap "$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1)"
kv dla "$(ls /sys/bus/platform/devices /dev 2>/dev/null | grep nvdla | tr '\n' ' ')"
kv trtexec "$(command -v trtexec || ls /usr/src/tensorrt/bin/trtexec 2>/dev/null)"
kv nvpmodel "$(nvpmodel -q 2>/dev/null | tr '\n' ' ')"
kv system_python "$(python3 -c 'import platform; print(platform.python_version())' 2>/dev/null)"
kv python_path "$(command -v "$PY")"
"$PY" - <<'EOF' 2>/dev/null
""" + _MODULES_PY + "EOF\n"


@dataclass(frozen=True)
class DeviceProfile:
    """The facts about one unit that decide how an engine is built and installed there.

    ``tensorrt`` is the full version (``"10.3.0.30"``), ``sm`` the compute capability (``"8.7"``),
    ``python`` the version of ``python_path`` (which runs satedge and the daemon) and ``modules``
    what it can import (a version, ``"?"`` if unknown, None if absent); ``source``: probe or file.
    """

    name: str
    description: str = ""
    model: str = ""
    soc: Optional[str] = None
    l4t: Optional[str] = None
    jetpack: Optional[str] = None
    tensorrt: Optional[str] = None
    cuda: Optional[str] = None
    sm: Optional[str] = None
    dla_cores: int = 0
    system_python: Optional[str] = None
    python_path: str = "python3"
    python: Optional[str] = None
    modules: Dict[str, Optional[str]] = field(default_factory=dict)
    trtexec: Optional[str] = None
    nvpmodel: Optional[str] = None
    source: str = ""
    notes: Tuple[str, ...] = ()

    def has(self, key: str) -> bool:
        """Whether the Python that runs satedge here can import ``key`` (a ``MODULES`` key)."""
        return bool(self.modules.get(key))

    def to_dict(self) -> Dict[str, Any]:
        """The profile as JSON-ready data (the format of ``engines/profiles/*.json``)."""
        return dict(asdict(self), notes=list(self.notes))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "device profile") -> "DeviceProfile":
        """Build a profile from a mapping; ``UserError`` names unknown keys or a missing ``name``."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known)) if isinstance(data, Mapping) else ["(not a JSON object)"]
        if unknown or not data.get("name"):
            raise UserError("%s: %s; the keys are %s and 'name' is required." % (
                where, "unknown keys %s" % unknown if unknown else "no 'name'", ", ".join(known)))
        for key, value in data.items():
            why = _field_problem(key, value)
            if why:
                raise UserError("%s: %r must be %s, got %r; fix the file (the shipped engines/profiles/*.json show "
                                "the format)." % (where, key, why, value))
        return cls(**dict(data, notes=tuple(data.get("notes") or ()), modules={
            str(k): (str(v) if v else None) for k, v in (data.get("modules") or {}).items()}))


_STR_FIELDS = ("name", "description", "model", "python_path", "source")


def _field_problem(key: str, value: Any) -> Optional[str]:
    """What ``value`` should be for the ``DeviceProfile`` field ``key`` when it is not, else None."""
    if key == "dla_cores":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return None if ok else "an integer >= 0"
    if key == "modules":
        ok = value is None or isinstance(value, Mapping)
        return None if ok else "an object of module name -> version string (or null when absent)"
    if key == "notes":
        ok = value is None or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))
        return None if ok else "a list of strings"
    if key in _STR_FIELDS:
        return None if isinstance(value, str) else "a string"
    return None if value is None or isinstance(value, str) else "a string or null"


def daemon_python_ok(version: Optional[str]) -> bool:
    """Whether a Python version string (``"3.6.9"``) is new enough for satedge and its daemon."""
    try:
        return tuple(int(p) for p in (version or "").split(".")[:2]) >= DAEMON_MIN_PYTHON
    except ValueError:
        return False


def shipped_profiles() -> List[str]:
    """Names of the profiles in ``engines/profiles/``."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile_file(path: Union[str, "Path"]) -> DeviceProfile:
    """Read a device profile JSON file (``UserError`` when unreadable or malformed)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError("cannot read device profile %s: %s." % (path, exc)) from None
    return DeviceProfile.from_dict(data, "device profile %s" % path)


def load_profile(name: str) -> DeviceProfile:
    """Read the shipped profile ``name`` (``UserError`` listing the shipped ones if unknown)."""
    if name not in shipped_profiles():
        raise UserError("no shipped device profile %r; shipped: %s. Use --profile-file PATH for your own."
                        % (name, ", ".join(shipped_profiles()) or "none"))
    return load_profile_file(PROFILE_DIR / (name + ".json"))


def match_target(device: DeviceProfile) -> TargetProfile:
    """Return the target profile (``engines.targets``) with this unit's SM and TensorRT release (else ``UserError``)."""
    if not device.sm or not device.tensorrt:
        raise UserError("%s: SM %s, TensorRT %s -- both must be known to pick a target (is TensorRT installed? "
                        "'dpkg -l tensorrt')." % (device.name, device.sm or "unknown", device.tensorrt or "unknown"))
    release = parse_version(device.tensorrt)[:3]
    for prof in PROFILES.values():
        if prof.sm == device.sm and prof.trt_version and parse_version(prof.trt_version)[:3] == release:
            return prof
    have = ", ".join("%s (SM %s, TensorRT %s)" % (p.name, p.sm, p.trt_version) for p in PROFILES.values() if p.sm)
    raise UserError("%s has SM %s and TensorRT %s, which no target profile describes; targets: %s. Flash a JetPack "
                    "of a listed target, or add a target (docs/targets.md, 'Adding a target')."
                    % (device.name, device.sm, device.tensorrt, have))


def parse_tegra_release(line: str) -> Optional[str]:
    """``"# R32 (release), REVISION: 7.1, ..."`` -> ``"32.7.1"``; None when it is not that line."""
    m = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", line or "")
    return "%s.%s" % (m.group(1), m.group(2)) if m else None


def _lead_version(text: str) -> Optional[str]:
    return (re.findall(r"^\s*(\d+(?:\.\d+)+)", text or "") or [None])[0]


def parse_probe(text: str, name: str, source: str) -> DeviceProfile:
    """Turn ``PROBE_SCRIPT``'s ``key=value`` lines into a ``DeviceProfile``."""
    kv: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            kv[key.strip()] = value.strip()
    soc = next((s for s in SOC_SM if s in kv.get("compatible", "")), None)
    smi = kv.get("smi_compute_cap", "")
    sm = smi if re.match(r"^\d+\.\d+$", smi) else SOC_SM.get(soc or "")
    modules = {k[len("module."):]: (v or None) for k, v in kv.items() if k.startswith("module.")}
    cuda = re.search(r"cuda-(\d+\.\d+)", kv.get("cuda", ""))
    notes = [n for n, bad in (("not a Jetson: no Tegra SoC in the device tree, no /etc/nv_tegra_release",
                               soc is None and not kv.get("tegra_release")),
                              ("nvidia-jetpack is not installed; JetPack is known through L4T only",
                               kv.get("tegra_release") and not kv.get("jetpack"))) if bad]
    return DeviceProfile(
        name=name, model=kv.get("model", ""), soc=soc,
        l4t=parse_tegra_release(kv.get("tegra_release", "")), jetpack=_lead_version(kv.get("jetpack", "")),
        tensorrt=_lead_version(kv.get("tensorrt_deb", "")) or _lead_version(modules.get("tensorrt") or ""),
        cuda=cuda.group(1) if cuda else None, sm=sm,
        dla_cores=len(set(re.findall(r"nvdla(\d+)", kv.get("dla", "")))),
        system_python=kv.get("system_python") or None, python_path=kv.get("python_path") or "python3",
        python=kv.get("python") or None, modules=modules, trtexec=kv.get("trtexec") or None,
        nvpmodel=kv.get("nvpmodel") or None, source=source, notes=tuple(notes))


class Device:
    """A unit reached through the ``ssh`` binary, or this host when ``host`` is None.

    Parameters
    ----------
    host : str or None
        ``[user@]host`` as ``ssh`` takes it (``~/.ssh/config`` aliases work).
    ssh_options : sequence of str, optional
        Extra ``ssh`` arguments, e.g. ``("-p", "2222")``; ``BatchMode`` is on, so a missing key fails.
    """

    def __init__(self, host: Optional[str], ssh_options: Tuple[str, ...] = ()) -> None:
        self.host, self.ssh_options, self.label = host, tuple(ssh_options), host or "this host"
        if host is not None and not shutil.which("ssh"):
            raise UserError("flashing over SSH needs the 'ssh' binary (openssh-client); it is not on PATH.")

    def _argv(self, command: str) -> List[str]:
        if self.host is None:
            return ["sh", "-c", command]
        return ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", *self.ssh_options, self.host, command]

    def run(self, command: str, stdin: Optional[bytes] = None, timeout: float = 600.0,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell command there; ``UserError`` with its output when it fails and ``check`` is true."""
        try:
            out = subprocess.run(self._argv(command), input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError("%s: %r did not finish in %.0f s." % (self.label, command[:200], timeout)) from None
        if check and out.returncode != 0:
            tail = (out.stderr or out.stdout).decode("utf-8", "replace")[-2000:]
            raise UserError("%s: %r failed (exit %d): %s" % (self.label, command[:200], out.returncode, tail))
        return out

    def copy_dir(self, local: Union[str, Path], remote: str) -> None:
        """Replace the folder ``remote`` there with a copy of ``local`` (a tar stream through ssh)."""
        local = Path(local)
        if self.host is None:
            if Path(remote).resolve() != local.resolve():
                shutil.rmtree(remote, ignore_errors=True)
                shutil.copytree(str(local), remote)
            return
        q = shlex.quote(remote)
        proc = subprocess.Popen(self._argv("rm -rf %s && mkdir -p %s && tar -xf - -C %s" % (q, q, q)),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
            for child in sorted(local.iterdir()):
                tar.add(str(child), arcname=child.name)
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise UserError("copying %s to %s:%s failed: %s" % (local, self.host, remote, err.decode()[-2000:]))

    def read_file(self, remote: str) -> bytes:
        """The bytes of the file ``remote`` there."""
        return self.run("cat %s" % shlex.quote(remote)).stdout

    def probe(self, python: Optional[str] = None) -> DeviceProfile:
        """Run ``PROBE_SCRIPT`` there; ``python`` is the interpreter that runs satedge (default ``python3``)."""
        env = "SATEDGE_PY=%s " % shlex.quote(python) if python else ""
        out = self.run("%ssh -c %s" % (env, shlex.quote(PROBE_SCRIPT)), timeout=120)
        return parse_probe(out.stdout.decode("utf-8", "replace"), self.label, "probed %s" % self.label)

    def install(self, python: str, bundle: str, control: str, keys: Tuple[str, str] = ("", ""),
                timeout: float = 900.0) -> Dict[str, Any]:
        """Install the staged ``bundle`` there with ``onboard.control.ControlClient`` run by ``python`` there.

        ``control`` is the endpoint and ``keys`` the Curve key files as the device sees them; the
        ``install`` reply (docs/protocol.md) comes once verify, stage, canary, activate and health
        have run. Returns ``{"reply", "report", "engine"}``, ``report`` holding ``ok``, ``outcome``,
        ``version``, ``reason``; ``UserError`` when the daemon refuses the bundle outright.
        """
        argv = " ".join(shlex.quote(a) for a in (python, "-", control, bundle, keys[0], keys[1], str(timeout)))
        out = self.run(argv, stdin=_INSTALL_PY.encode(), timeout=timeout + 60).stdout.decode().strip()
        result = json.loads(out.splitlines()[-1])
        reply = result["reply"]
        if "outcome" not in reply:
            raise UserError("install of %s on %s: the daemon refused it: %s: %s" % (bundle, self.label,
                                                                                    reply.get("code"), reply.get("message")))
        fields = ("ok", "engine", "version", "outcome", "slot", "active_version", "reason", "failed_phase")
        result["report"] = {k: reply.get(k) for k in fields}
        return result
