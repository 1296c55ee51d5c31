"""The RX and NSI kernels' device code, run as host code, against the numpy references (no GPU).

``kernel_host_emulation.cu`` is compiled with nvcc as a host program that calls the kernels'
``__host__ __device__`` functions (``cuda/src/rx_pixels.cuh``, ``nsi_elements.cuh``): the NSI
score, radix select and output slots, the global RX pixel loop, and the local RX warp code with
its 32 lanes run one after another between barriers. This checks the arithmetic, indexing,
window cutting, lane/entry mapping and the Cholesky steps on this CPU. It does not check real
concurrency, launch configuration, the block scans, or device intrinsics; ``tests/gpu`` does that
on a GPU. Skips without nvcc.
"""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engines.ops import nsi, rx

REPO = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).with_name("kernel_host_emulation.cu")
NVCC = os.environ.get("NVCC") or shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH (and NVCC not set)")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    exe = tmp_path_factory.mktemp("emulation") / "kernel_host_emulation"
    proc = subprocess.run([NVCC, "-std=c++14", "-O2", "-I", str(REPO / "cuda" / "src"), "-Werror", "all-warnings",
                           "-Xcompiler", "-Wall,-Wextra,-Werror", "-o", str(exe), str(SOURCE)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert proc.returncode == 0, proc.stdout

    def run(mode, inputs, *params):
        work = exe.parent
        (work / "in.bin").write_bytes(b"".join(np.ascontiguousarray(a).tobytes() for a in inputs))
        out = subprocess.run([str(exe), mode, str(work / "in.bin"), str(work / "out.bin"), *map(str, params)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
        assert out.returncode == 0, out.stdout
        return (work / "out.bin").read_bytes()
    return run


@pytest.mark.parametrize("shape, p, variant, density", [
    ((1, 1), 3, "coherence", 1.0), ((1, 37), 5, "coherence", 0.2), ((33, 40), 3, "coherence", 0.01),
    ((20, 30), 1, "coherence", 0.5), ((17, 9), 7, "mean_std", 0.1), ((64, 64), 3, "coherence", 1.0)])
@pytest.mark.parametrize("integer_grads", [False, True])
def test_nsi_device_code_is_bit_identical_to_the_reference(emulator, shape, p, variant, density, integer_grads):
    rng = np.random.default_rng([shape[0], shape[1], p])
    g = rng.integers(-3, 4, shape) if integer_grads else rng.normal(size=shape) * rng.uniform(1e-3, 1, shape)
    g = np.where(g == 0, 0.5, g).astype(np.float32)
    k = nsi.keep_count(g.size, density)
    raw = emulator("nsi", [g], shape[0], shape[1], p, 0.3, 0.7, nsi.VARIANTS.index(variant), k)
    n = g.size
    score = np.frombuffer(raw, np.float32, n)
    index = np.frombuffer(raw, np.int32, k, 4 * n)
    value = np.frombuffer(raw, np.float32, k, 4 * (n + k))
    threshold = np.frombuffer(raw, np.float32, 1, 4 * (n + 2 * k))[0]
    ref_score = nsi.nsi_score(g, p, beta=0.3, lam=0.7, variant=variant)
    assert np.array_equal(score.view(np.uint32), ref_score.view(np.uint32))
    ref = nsi.sparsify(g, k, p=p, beta=0.3, lam=0.7, variant=variant)
    assert np.array_equal(index, ref.indices) and np.array_equal(value, ref.values)
    assert threshold == np.float32(ref.threshold)


@pytest.mark.parametrize("bands", [1, 7, 8, 9, 40])
@pytest.mark.parametrize("cube_dtype", ["float32", "float16"])
def test_rx_global_device_code_matches_the_reference(emulator, bands, cube_dtype):
    rng = np.random.default_rng(bands)
    cube = (rng.normal(size=(bands, 6, 9)) + 2).astype(cube_dtype)
    mean = rng.normal(size=bands).astype(np.float32)
    a = rng.normal(size=(bands, bands))
    inv = np.linalg.inv(a @ a.T / bands + np.eye(bands)).astype(np.float32)
    inv_upper_garbage = inv + np.triu(np.full_like(inv, 7.0), 1)  # the kernel reads the lower triangle
    raw = emulator("rx_global", [cube, mean, inv_upper_garbage], bands, 6, 9, cube_dtype)
    got = np.frombuffer(raw, np.float32).reshape(6, 9)
    np.testing.assert_allclose(got, rx.rx_global(cube.astype(np.float32), mean, inv), rtol=1e-5)


@pytest.mark.parametrize("bands, outer, inner, hw", [
    (1, 3, 1, (4, 5)), (4, 7, 3, (12, 13)), (8, 9, 3, (9, 40)), (9, 9, 5, (11, 10)), (16, 11, 5, (14, 15)),
    (17, 15, 5, (17, 19)), (32, 15, 5, (17, 19)), (3, 5, 3, (1, 9))])
@pytest.mark.parametrize("cube_dtype", ["float32", "float16"])
def test_rx_local_warp_code_matches_the_reference(emulator, bands, outer, inner, hw, cube_dtype):
    rng = np.random.default_rng([bands, outer, hw[1]])
    cube = rng.normal(size=(bands,) + hw).astype(cube_dtype)
    raw = emulator("rx_local", [cube], bands, hw[0], hw[1], cube_dtype, outer, inner, 1e-3)
    got = np.frombuffer(raw, np.float32).reshape(hw)
    ref = rx.rx_local(cube.astype(np.float32), outer, inner, 1e-3)
    np.testing.assert_allclose(got, ref, rtol=1e-3, equal_nan=True)
    assert np.array_equal(np.isnan(got), np.isnan(ref))


def test_rx_local_not_positive_definite_gives_nan(emulator):
    z = np.array([[[1.0, 2.5, 4.5]]], np.float32)  # the end pixels see one background pixel
    got = np.frombuffer(emulator("rx_local", [z], 1, 1, 3, "float32", 3, 1, 1e-3), np.float32)
    ref = rx.rx_local(z, 3, 1, 1e-3).ravel()
    assert np.isnan(got[0]) and np.isnan(got[2])
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-6)
