"""Choosing between the CUDA kernels and the references, and finding the kernel library (CPU side).

What runs here: the import hygiene of ``engines.ops``, the library search and its messages, and
the choice :func:`engines.ops.cuda_ops.open_ops` makes on this host. The kernels themselves are
exercised by ``tests/cuda_build`` (compile, ctypes, host emulation) and ``tests/gpu`` (on a GPU).
"""
import subprocess
import sys

import numpy as np
import pytest

from engines.errors import UserError
from engines.ops import cuda_lib, nsi, preprocess as pp, rx
from engines.ops.cuda_ops import ReferenceOps, open_ops
from engines.runners.devicebuf import gpu_present

MODULES = ["engines.ops", "engines.ops.graph", "engines.ops.preprocess", "engines.ops.cloud_fraction",
           "engines.ops.rx", "engines.ops.nsi", "engines.ops.cuda_lib", "engines.ops.cuda_ops"]
HEAVY = ["torch", "tensorrt", "pycuda", "cuda", "cupy", "onnxruntime", "onnx"]


def test_importing_the_ops_loads_no_heavy_or_gpu_library():
    code = "import sys\nimport %s\nprint(','.join(m for m in %r if m in sys.modules))" % (", ".join(MODULES), HEAVY)
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == ""


def test_missing_library_says_where_it_looked_and_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setattr(cuda_lib, "CUDA_DIR", tmp_path)
    monkeypatch.delenv(cuda_lib.ENV_VAR, raising=False)
    with pytest.raises(UserError) as err:
        cuda_lib.find_library()
    assert "cmake -S cuda -B cuda/build/cmake" in str(err.value) and str(tmp_path) in str(err.value)
    monkeypatch.setenv(cuda_lib.ENV_VAR, str(tmp_path / "nope.so"))
    with pytest.raises(UserError, match="does not name a file"):
        cuda_lib.find_library()


def test_a_library_without_the_abi_is_refused():
    import ctypes.util
    libm = ctypes.util.find_library("m")
    if libm is None:
        pytest.skip("no libm to load")
    with pytest.raises(UserError, match="needs ABI %d" % cuda_lib.ABI_VERSION):
        cuda_lib.KernelLibrary(libm)


@pytest.mark.skipif(gpu_present()[0], reason="this host has a GPU; tests/gpu covers the CUDA path")
def test_open_ops_falls_back_to_the_references_and_says_why():
    ops, why = open_ops()
    assert isinstance(ops, ReferenceOps) and "no GPU" in why
    with pytest.raises(UserError):
        open_ops("cuda")
    with pytest.raises(UserError, match="prefer"):
        open_ops("fast")


def test_reference_ops_are_the_references():
    ops, _ = open_ops("reference")
    rng = np.random.default_rng(0)
    frame = rng.integers(1, 4096, (2, 5, 6)).astype(np.uint16)
    assert np.array_equal(ops.preprocess_u16(frame, (1, -1, 4, 4)), pp.preprocess_u16(frame, (1, -1, 4, 4)))
    g = rng.normal(size=(6, 7)).astype(np.float32)
    assert np.array_equal(ops.nsi_sparsify(g, 5).indices, nsi.sparsify(g, 5).indices)
    cube = rng.normal(size=(3, 4, 4)).astype(np.float32)
    assert np.array_equal(ops.rx_global(cube, np.zeros(3), np.eye(3)), rx.rx_global(cube, np.zeros(3), np.eye(3)))
