"""Importing every engines module (and the onboard modules around FL and the uplink) loads no heavy or GPU library (they load lazily in the backend that needs them)."""
import subprocess
import sys

MODULES = ["engines.archive", "engines.build", "engines.bundle", "engines.cli", "engines.compare", "engines.hashing",
           "engines.manifest", "engines.plan", "engines.signing", "engines.summary", "engines.targets",
           "engines.runners", "engines.runners.devicebuf", "engines.runners.onnxrt", "engines.runners.reference",
           "engines.runners.tensorrt", "engines.ops", "engines.ops.cuda_ops", "engines.ops.cuda_lib",
           "engines.ops.graph", "engines.ops.preprocess", "engines.ops.rx", "engines.ops.nsi",
           "engines.ops.cloud_fraction",
           # the onboard modules that reach torch or a GPU library only inside the code that needs them
           "onboard.daemon", "onboard.uplink", "onboard.fl.client", "onboard.fl.stage", "onboard.fl.learner"]
HEAVY = ["torch", "tensorrt", "pycuda", "cuda", "onnxruntime", "onnx"]


def test_no_heavy_imports_at_module_level():
    code = ("import sys\nimport %s\nprint(','.join(m for m in %r if m in sys.modules))" % (", ".join(MODULES), HEAVY))
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == ""


def test_engines_imports_no_onboard_module():
    """Imports point engines <- onboard (README): importing every engines module loads nothing from onboard."""
    code = ("import importlib, pkgutil, sys, engines\n"
            "names = ['engines'] + [m.name for m in pkgutil.walk_packages(engines.__path__, 'engines.')]\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            "print(len(names))\n"
            "print(','.join(sorted(m for m in sys.modules if m == 'onboard' or m.startswith('onboard.'))))")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    count, loaded = (out.stdout.decode().splitlines() + ["", ""])[:2]
    assert int(count) > 20, "found only %s engines modules" % count
    assert loaded == "", "importing engines loaded %s" % loaded


def test_signature_file_names_agree():
    from engines.bundle import SIGNATURE_FILES
    from engines.signing import SIGNATURE_FILE
    assert SIGNATURE_FILES == (SIGNATURE_FILE,)
