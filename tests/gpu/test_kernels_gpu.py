"""Every CUDA kernel of libsatedge_kernels against its numpy reference, on a GPU (``-m gpu``).

The library is built fresh with nvcc for this GPU's SM (or taken from $SATEDGE_KERNELS_LIB) and
loaded with ctypes; device memory comes from cuda-python or pycuda (what the engines runtime uses),
else torch.cuda. Inputs are fresh random non-zero data; every output buffer is poisoned (0xFF
bytes: NaN floats, index -1) and has a poisoned guard tail that must survive; every entry point's
status is checked (a failure raises ``KernelError``) and so is the stream after each run.
Tolerances: preprocessing, cloud fraction and NSI are specified bit for bit; FP16 outputs are
also checked against the issue's 1e-3 relative bound first; RX is float32 against float64.

On a host without a GPU everything here skips with the reason (nothing is faked).
"""
import os
import zlib

import numpy as np
import pytest

from engines.errors import UserError
from engines.ops import cloud_fraction as cf
from engines.ops import nsi, preprocess as pp, rx
from engines.ops.cuda_lib import ENV_VAR, KernelError, KernelLibrary, build_library
from engines.runners.devicebuf import gpu_present

_GPU, _WHY = gpu_present()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _GPU, reason="no NVIDIA GPU on this host (%s)" % _WHY)]
GUARD = 256  # poisoned bytes after every output


class Device:
    """Uploads, poisoned allocations and downloads on one DeviceMemory and its stream."""

    def __init__(self, mem):
        self.mem, self.stream, self.live = mem, mem.stream_handle, []

    def alloc(self, nbytes):
        self.live.append(self.mem.alloc(nbytes))
        return self.live[-1]

    def release(self):
        self.mem.synchronize()
        for ptr in self.live:
            self.mem.free(ptr)
        self.live = []

    def upload(self, arr, offset=0):
        arr = np.ascontiguousarray(arr)
        base = self.alloc(arr.nbytes + offset + 16)
        if offset:
            staged = np.zeros(arr.nbytes + offset, np.uint8)
            staged[offset:] = arr.reshape(-1).view(np.uint8)
            self.mem.htod(base, staged)
        else:
            self.mem.htod(base, arr)
        return base + offset

    def poisoned(self, nbytes, offset=0):
        base = self.alloc(nbytes + offset + GUARD)
        self.mem.htod(base, np.full(nbytes + offset + GUARD, 0xFF, np.uint8))
        return base, base + offset

    def download(self, base, offset, shape, dtype):
        """The output array and its guard tail (which must still be all 0xFF)."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = np.empty(nbytes + offset + GUARD, np.uint8)
        self.mem.dtoh(raw, base)
        self.mem.synchronize()  # raises on an asynchronous kernel fault
        assert (raw[nbytes + offset:] == 0xFF).all(), "a kernel wrote past the end of its output"
        return raw[offset:offset + nbytes].view(dtype).reshape(shape).copy()


@pytest.fixture(scope="module")
def dev():
    from engines.ops.cuda_ops import open_memory
    try:
        mem = open_memory()
    except UserError as exc:
        pytest.skip(str(exc))
    yield Device(mem)
    mem.close()


@pytest.fixture(scope="module")
def lib(dev, tmp_path_factory):
    path = os.environ.get(ENV_VAR)
    if not path:
        major, minor = dev.mem.compute_capability()
        try:
            path = build_library(tmp_path_factory.mktemp("kernels"), archs=("%d%d" % (major, minor),))
        except UserError as exc:
            pytest.skip("cannot build libsatedge_kernels for sm_%d%d: %s" % (major, minor, exc))
    return KernelLibrary(path)


@pytest.fixture
def rng(request, dev):
    """Fresh random data per test (seeded by the test id; SATEDGE_TEST_SEED varies it); frees buffers after."""
    yield np.random.default_rng([zlib.crc32(request.node.name.encode()), int(os.environ.get("SATEDGE_TEST_SEED", 0))])
    dev.release()


def _assert_fp16_close_then_exact(got, ref):
    if got.dtype == np.float16:
        np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), rtol=1e-3, atol=0)
    assert np.array_equal(got.view(np.uint8), ref.view(np.uint8)), "not bit-identical to the reference"


WINDOWS = [None, (0, 0, 8, 16), (8, 3, 5, 8), (-3, -2, 7, 9), (30, 1, 4, 4), (0, 0, 1, 1), (13, 9, 3, 2)]


@pytest.mark.parametrize("packing", ["u16", "u12"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", [(3, 16, 32), (2, 11, 13), (1, 1, 1)])
@pytest.mark.parametrize("dst_offset", [0, 4])  # 4: misaligned for the vector stores -> scalar path
def test_preprocess_matches_reference(dev, lib, rng, packing, dtype, shape, dst_offset):
    bands = shape[0]
    dn = rng.integers(1, 4096, shape).astype(np.uint16)
    src = dn if packing == "u16" else pp.pack_u12(dn)
    calib = [rng.uniform(10, 90, bands), rng.uniform(0.5, 2, bands), rng.uniform(1e-3, 1e-2, bands),
             rng.uniform(-1, 1, bands)]
    calib = [c.astype(np.float32) for c in calib]
    for window in WINDOWS:
        x0, y0, th, tw = (0, 0, shape[1], shape[2]) if window is None else window
        ref = pp.normalize_window(dn, (x0, y0, th, tw), *calib, dtype=dtype)
        base, dst = dev.poisoned(ref.nbytes, dst_offset)
        lib.preprocess(packing, dev.upload(src), shape, (x0, y0, th, tw), [dev.upload(c) for c in calib], dst,
                       dtype, dev.stream)
        _assert_fp16_close_then_exact(dev.download(base, dst_offset, ref.shape, dtype), ref)


@pytest.mark.parametrize("tile_pixels", [1, 17, 256, 4099])
@pytest.mark.parametrize("mask_offset", [0, 3])
def test_cloud_fraction_matches_reference(dev, lib, rng, tile_pixels, mask_offset):
    n_tiles = 37
    mask = (rng.random((n_tiles, tile_pixels)) < rng.random((n_tiles, 1))).astype(np.uint8)
    mask *= rng.integers(1, 256, mask.shape).astype(np.uint8)  # any nonzero byte is cloud
    ref = cf.cloud_fraction(mask)
    base, out = dev.poisoned(ref.nbytes)
    lib.cloud_fraction(dev.upload(mask, mask_offset), n_tiles, tile_pixels, out, dev.stream)
    assert np.array_equal(dev.download(base, 0, ref.shape, np.float32), ref)


def _spd_inverse(rng, bands):
    a = rng.normal(size=(bands, bands))
    return np.linalg.inv(a @ a.T / bands + np.eye(bands)).astype(np.float32)


@pytest.mark.parametrize("bands", [1, 3, 8, 9, 64, 200])
@pytest.mark.parametrize("cube_dtype", ["float32", "float16"])
@pytest.mark.parametrize("hw", [(1, 1), (17, 31), (128, 128)])
def test_rx_global_matches_reference(dev, lib, rng, bands, cube_dtype, hw):
    cube = (rng.normal(size=(bands,) + hw) + 1.5).astype(cube_dtype)
    mean = rng.normal(size=bands).astype(np.float32)
    inv = _spd_inverse(rng, bands)
    ref = rx.rx_global(cube.astype(np.float32), mean, inv)
    base, out = dev.poisoned(ref.nbytes)
    lib.rx_global(dev.upload(cube), cube_dtype, cube.shape, dev.upload(mean), dev.upload(inv), out, dev.stream)
    np.testing.assert_allclose(dev.download(base, 0, ref.shape, np.float32), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bands, outer, inner", [(1, 3, 1), (4, 7, 3), (8, 9, 3), (9, 9, 5), (16, 11, 5),
                                                 (17, 15, 5), (32, 15, 5)])
@pytest.mark.parametrize("cube_dtype", ["float32", "float16"])
@pytest.mark.parametrize("hw", [(5, 7), (40, 33)])  # 5x7: every window cut by the border
def test_rx_local_matches_reference(dev, lib, rng, bands, outer, inner, cube_dtype, hw):
    cube = rng.normal(size=(bands,) + hw).astype(cube_dtype)
    ref = rx.rx_local(cube.astype(np.float32), outer, inner, 1e-3)
    base, out = dev.poisoned(ref.nbytes)
    lib.rx_local(dev.upload(cube), cube_dtype, cube.shape, outer, inner, 1e-3, out, dev.stream)
    got = dev.download(base, 0, ref.shape, np.float32)
    # Where a window cut by the border holds no more background pixels than bands, the covariance
    # is singular but for the ridge (condition ~ 1e3 / regularization): float32 agrees less.
    rtol = 1e-3 if _fewest_background_pixels(hw, outer, inner) > bands else 1e-2
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=1e-4 * float(np.median(ref)))


def _fewest_background_pixels(hw, outer, inner):
    def inside(n, half):
        i = np.arange(n)
        return np.minimum(i + half, n - 1) - np.maximum(i - half, 0) + 1
    rows_o, cols_o = inside(hw[0], outer // 2), inside(hw[1], outer // 2)
    rows_i, cols_i = inside(hw[0], inner // 2), inside(hw[1], inner // 2)
    return int((rows_o[:, None] * cols_o[None, :] - rows_i[:, None] * cols_i[None, :]).min())


@pytest.mark.parametrize("shape", [(1, 1), (1, 257), (64, 27), (300, 1000)])
@pytest.mark.parametrize("p, variant", [(1, "coherence"), (3, "coherence"), (5, "coherence"), (3, "mean_std")])
def test_nsi_score_is_bit_identical(dev, lib, rng, shape, p, variant):
    g = (rng.normal(size=shape) * rng.uniform(1e-4, 1, shape)).astype(np.float32)
    ref = nsi.nsi_score(g, p, beta=0.5, lam=0.7, variant=variant)
    base, out = dev.poisoned(ref.nbytes)
    lib.nsi_score(dev.upload(g), *shape, p, 0.5, 0.7, variant, out, dev.stream)
    assert np.array_equal(dev.download(base, 0, ref.shape, np.float32).view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("shape", [(1, 1), (1, 257), (64, 27), (512, 4097)])
@pytest.mark.parametrize("density", [1e-3, 0.01, 0.3, 1.0])
@pytest.mark.parametrize("integer_grads", [False, True])  # integers: many tied scores
def test_nsi_sparsify_selects_exactly_the_reference(dev, lib, rng, shape, density, integer_grads):
    g = rng.integers(-3, 4, shape) if integer_grads else rng.normal(size=shape) * rng.uniform(1e-3, 1, shape)
    g = np.where(g == 0, 1, g).astype(np.float32)  # non-zero inputs
    k = nsi.keep_count(g.size, density)
    ref = nsi.sparsify(g, k, p=3, beta=0.5)
    ws = lib.nsi_workspace_size(*shape)
    _, workspace = dev.poisoned(ws)
    ib, idx = dev.poisoned(4 * k)
    vb, val = dev.poisoned(4 * k)
    tb, thr = dev.poisoned(4)
    lib.nsi_sparsify(dev.upload(g), *shape, 3, 0.5, 1.0, "coherence", k, workspace, ws, idx, val, thr, dev.stream)
    assert np.array_equal(dev.download(ib, 0, (k,), np.int32), ref.indices)
    assert np.array_equal(dev.download(vb, 0, (k,), np.float32), ref.values)
    assert dev.download(tb, 0, (1,), np.float32)[0] == np.float32(ref.threshold)


def test_bad_arguments_are_refused_with_real_buffers(dev, lib):
    cube = dev.upload(np.ones((33, 4, 4), np.float32))
    _, out = dev.poisoned(64)
    with pytest.raises(KernelError) as err:
        lib.rx_local(cube, "float32", (33, 4, 4), 15, 5, 1e-3, out, dev.stream)  # more than 32 bands
    assert err.value.status == 1 and err.value.cuda_error == 0
    with pytest.raises(KernelError):
        lib.nsi_sparsify(cube, 4, 4, 3, 0.5, 1.0, "coherence", 17, out, 0, out, out, None, dev.stream)  # k > n
    assert lib.last_cuda_error() == 0
