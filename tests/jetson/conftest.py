"""Hardware in the loop: the Jetson under test is this host, or the one named by ``SATEDGE_HIL_HOST``.

Environment (``docs/hil.md``): ``SATEDGE_HIL_HOST`` ([user@]host for ssh; unset: this host must be
a Jetson), ``SATEDGE_HIL_PYTHON`` (the Python on the unit that has satedge installed; default
``python3``), ``SATEDGE_HIL_BUNDLES`` (bundle folders to test, separated by ``:``; default: the
cloud screen built here with ``ground.cloudscreen``), ``SATEDGE_HIL_REPORT`` (where the JSON
reports go; default ``out/hil``). Every test here skips with the reason when no unit is there.
"""
import json
import os
import shlex
import shutil
import socket
import time
from pathlib import Path

import pytest

from onboard.telemetry import is_jetson

HOST = os.environ.get("SATEDGE_HIL_HOST") or None
PYTHON = os.environ.get("SATEDGE_HIL_PYTHON") or None
REPORT_DIR = Path(os.environ.get("SATEDGE_HIL_REPORT") or "out/hil")
SKIP_REASON = "not a Jetson and SATEDGE_HIL_HOST unset"

COMPARE_PY = r'''import json, sys
from engines.bundle import Bundle
from engines.compare import compare_backends
kw = {"precision": sys.argv[2]}
if len(sys.argv) > 3:
    kw["dla_core"] = int(sys.argv[3])
r = compare_backends(Bundle.open(sys.argv[1]), ["tensorrt", "onnxrt"], {"fp32": 1e-3}, runner_kw={"tensorrt": kw})
print(json.dumps({"passed": r.passed, "errors": [vars(e) for e in r.errors], "failures": r.failures,
                  "table": r.format()}))
'''


@pytest.fixture(autouse=True)
def _a_jetson_is_needed():
    if HOST is None and not is_jetson():
        pytest.skip(SKIP_REASON)


def versioned(src, out, version, key, perturb=0.0):
    """A signed copy of bundle ``src`` as ``version``; ``perturb`` shifts its reference outputs (a broken engine)."""
    from engines.bundle import Bundle, pack_bundle
    from engines.signing import sign_bundle
    b = Bundle.open(src)
    m, (ins, outs) = b.manifest, b.reference()
    new = pack_bundle(out, name=m.name, version=version, model_path=b.model_path, precision=m.precision,
                      inputs=m.inputs, outputs=m.outputs, reference_inputs=ins,
                      reference_outputs={k: v + perturb for k, v in outs.items()}, metrics=m.metrics, overwrite=True)
    sign_bundle(new.path, key)
    return new.path


class Hil:
    """The unit under test: how to reach it, what it is, and helpers the tests share."""

    def __init__(self, tmp: Path):
        from engines.device_profile import Device, match_target
        from engines.signing import generate_keypair
        self.device, self.tmp = Device(HOST), tmp
        self.profile = self.device.probe(PYTHON)
        if not self.profile.l4t:
            pytest.skip("%s is not a Jetson (%s)" % (self.device.label, "; ".join(self.profile.notes)))
        self.target = match_target(self.profile)
        self.key, self.pub = (str(p) for p in generate_keypair(tmp / "keys", name="hil"))
        self.remote = self.device.run("mktemp -d /var/tmp/satedge-hil.XXXXXX").stdout.decode().strip()
        self.device.copy_dir(tmp / "keys", self.remote + "/keys")
        self.remote_pub = self.remote + "/keys/hil.pub"
        self._zoo, self._built = None, {}

    @property
    def python(self) -> str:
        return self.profile.python_path

    def require_satedge(self) -> None:
        """Skip unless the unit's Python runs satedge (a stock TX2's Python 3.6 does not)."""
        from engines.device_profile import daemon_python_ok
        if not (daemon_python_ok(self.profile.python) and self.profile.has("satedge")):
            pytest.skip("%s on %s is Python %s without satedge; set SATEDGE_HIL_PYTHON to the venv of docs/hil.md"
                        % (self.python, self.device.label, self.profile.python))

    def py(self, snippet: str, *args, timeout: float = 900.0) -> dict:
        """Run ``snippet`` with the unit's Python and ``args``; return the JSON of its last line."""
        self.require_satedge()
        cmd = " ".join(shlex.quote(str(a)) for a in (self.python, "-") + args)
        out = self.device.run(cmd, stdin=snippet.encode(), timeout=timeout).stdout.decode().strip()
        return json.loads(out.splitlines()[-1])

    def zoo(self) -> dict:
        """The bundles under test, ``{(name, precision): signed copy}``; the cloud screen unless SATEDGE_HIL_BUNDLES."""
        if self._zoo is None:
            listed = [p for p in (os.environ.get("SATEDGE_HIL_BUNDLES") or "").split(":") if p]
            if not listed:
                pytest.importorskip("torch", reason="building the zoo needs the ground side (torch); or set "
                                                    "SATEDGE_HIL_BUNDLES")
                from ground.cloudscreen import build_cloud_screen
                r = build_cloud_screen(self.tmp / "ground", quick=True, progress=False)
                listed = [str(r.fp32_bundle), str(r.int8_bundle)]
            from engines.bundle import Bundle
            self._zoo = {}
            for src in listed:
                m = Bundle.open(src).manifest
                out = self.tmp / "zoo" / ("%s-%s" % (m.name, m.precision))
                self._zoo.setdefault((m.name, m.precision), versioned(src, out, m.version, self.key))
        return self._zoo

    def can_build(self, name: str, precision: str) -> bool:
        """Whether the zoo has a bundle of ``name`` for ``precision`` (fp16 from fp32) and the target builds it."""
        return (name, "int8" if precision == "int8" else "fp32") in self.zoo() and precision in self.target.precisions

    def build(self, precision: str, dla_core=None, name: str = "cloudscreen"):
        """Stage bundle ``name`` on the unit with a plan for ``precision`` (fp16 from fp32); ``(bundle, plan)``."""
        from engines.bundle import Bundle
        from engines.flash import FlashOptions, plan_flash, stage_and_build
        tag = "%s-%s-%s" % (name, precision, "gpu" if dla_core is None else "dla%d" % dla_core)
        if tag not in self._built:
            if not self.can_build(name, precision):
                pytest.skip("no %s bundle of %s in the zoo, or %s does not build %s"
                            % (precision, name, self.target.name, precision))
            work = self.tmp / "work" / tag
            shutil.copytree(str(self.zoo()[(name, "int8" if precision == "int8" else "fp32")]), str(work))
            plan = plan_flash(Bundle.open(work), self.profile, precision=precision, dla_core=dla_core,
                              opts=FlashOptions(key=self.key, remote_dir="%s/%s" % (self.remote, tag)))
            failed = [c for c in plan.checks if c.status == "fail" and c.name in ("target", "onnx", "dla", "plan")]
            assert not failed, plan.format()
            self._built[tag] = (stage_and_build(plan, self.device), plan)
        return self._built[tag]

    def compare(self, remote: str, precision: str, dla_core=None) -> dict:
        """``engines.compare`` on the unit: TensorRT (the plan for ``precision``/``dla_core``) and ONNX Runtime."""
        return self.py(COMPARE_PY, remote, precision, *(() if dla_core is None else (dla_core,)))

    def free_port(self) -> int:
        if HOST is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]
        return self.py("import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])")

    def close(self) -> None:
        self.device.run("rm -rf %s" % shlex.quote(self.remote), check=False)


@pytest.fixture(scope="session")
def hil(tmp_path_factory):
    """The unit under test (see ``Hil``); its staging folder is removed at the end of the session."""
    if HOST is None and not is_jetson():
        pytest.skip(SKIP_REASON)
    unit = Hil(tmp_path_factory.mktemp("hil"))
    yield unit
    unit.close()


@pytest.fixture(scope="session")
def record():
    """``record(name, data)`` writes ``REPORT_DIR/name.json`` (with the unit's profile) for docs/hil.md reports."""
    def write(name, data, unit=None):
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        body = {"name": name, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "data": data,
                "device": unit.profile.to_dict() if unit else None}
        (REPORT_DIR / (name + ".json")).write_text(json.dumps(body, indent=2, default=str))
    return write


class RemoteDaemon:
    """An onboard daemon on the unit serving an engine store, started with nohup and stopped with SIGTERM."""

    def __init__(self, hil: Hil, bundle_dir: str, name: str):
        from onboard.settings import DaemonSettings, write_settings
        self.hil, root = hil, "%s/%s" % (hil.remote, name)
        bind = "127.0.0.1" if HOST is None else "0.0.0.0"  # the bench host sends frames; control stays on the unit
        self.endpoints = {k: "tcp://%s:%d" % (bind if k in ("sensor", "results") else "127.0.0.1", hil.free_port())
                          for k in ("sensor", "results", "control", "heartbeat")}
        trt = hil.profile.has("tensorrt") and hil.profile.has(hil.target.buffer_library)
        self.settings = DaemonSettings(
            store_root=root + "/store", engine=name, trusted_keys=[hil.remote_pub], workdir=root + "/work",
            backend="tensorrt" if trt else "onnxrt", dla_cores=0, heartbeat_interval_s=0.5, drain_timeout_s=30,
            **{k + "_endpoint": v for k, v in self.endpoints.items()}).validate()
        local = hil.tmp / ("daemon-" + name)
        local.mkdir(parents=True, exist_ok=True)
        write_settings(self.settings, str(local / "daemon.yaml"))
        hil.device.copy_dir(local, root + "/config")
        first = hil.py("import json, sys\nfrom onboard.store import EngineStore\nr = EngineStore(sys.argv[1], "
                       "[sys.argv[2]]).install(sys.argv[3])\nprint(json.dumps({'ok': r.ok, 'reason': r.reason}))",
                       root + "/store", hil.remote_pub, bundle_dir)
        assert first["ok"], first
        q = shlex.quote
        self.pid = hil.device.run("mkdir -p %s && cd %s && nohup %s -m onboard.daemon --config %s > daemon.log 2>&1 "
                                  "< /dev/null & echo $!" % (q(root + "/work"), q(root + "/work"), q(hil.python),
                                                             q(root + "/config/daemon.yaml"))).stdout.decode().strip()
        deadline = time.time() + 120
        while hil.device.run("test -f %s/work/ready" % q(root), check=False).returncode != 0:
            if time.time() > deadline or hil.device.run("kill -0 %s" % self.pid, check=False).returncode != 0:
                raise AssertionError("daemon on %s did not start:\n%s" % (hil.device.label, hil.device.run(
                    "tail -n 40 %s/work/daemon.log" % q(root), check=False).stdout.decode()))
            time.sleep(0.5)
        self.control = self.endpoints["control"]

    def status(self) -> dict:
        return self.hil.py("import json, sys\nfrom onboard.control import ControlClient\nprint(json.dumps("
                           "ControlClient(sys.argv[1]).status(), default=str))", self.control)

    def stop(self) -> None:
        self.hil.device.run("kill -TERM %s; for i in $(seq 60); do kill -0 %s 2>/dev/null || exit 0; sleep 0.5; "
                            "done; kill -KILL %s" % (self.pid, self.pid, self.pid), check=False, timeout=60)


@pytest.fixture(scope="session")
def make_versioned():
    """The ``versioned(src, out, version, key, perturb=0.0)`` helper, as a fixture."""
    return versioned


@pytest.fixture(scope="module")
def remote_daemon(hil):
    """A daemon on the unit serving the zoo's fp32 engine (with its plan) from a fresh store."""
    bundle, plan = hil.build("fp32")
    daemon = RemoteDaemon(hil, plan.remote, bundle.manifest.name)
    yield daemon
    daemon.stop()
