"""The daemon's CUDA tile path against its numpy path, on a GPU (``-m gpu``; the fixtures of tests/onboard).

``onboard.kernels.TileKernels`` with the CUDA op set (the library built for this GPU with nvcc, or
$SATEDGE_KERNELS_LIB) must give the numpy path's bits: normalized tiles, per-tile cloud fractions,
and whole pipeline results. On a host without a GPU everything skips with the reason.
"""
import os

import numpy as np
import pytest

from engines.errors import UserError
from engines.ops.cuda_lib import ENV_VAR, build_library, load
from engines.runners.devicebuf import gpu_present
from onboard.engineset import EngineSet
from onboard.kernels import TileKernels, normalize_tiles
from onboard.pipeline import Pipeline
from onboard.settings import DaemonSettings
from onboard.tiling import TileGrid
from onboard.wire import decode, make_frame, parse_frame

_GPU, _WHY = gpu_present()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _GPU, reason="no NVIDIA GPU on this host (%s)" % _WHY)]


@pytest.fixture(scope="module")
def cuda_kernels(tmp_path_factory):
    from engines.ops.cuda_ops import CudaOps, open_memory
    try:
        mem = open_memory()
    except UserError as exc:
        pytest.skip(str(exc))
    path = os.environ.get(ENV_VAR)
    if not path:
        major, minor = mem.compute_capability()
        path = build_library(tmp_path_factory.mktemp("kernels"), archs=("%d%d" % (major, minor),))
    kernels = TileKernels(ops=CudaOps(load(path), mem))
    assert kernels.backend == "cuda"
    yield kernels
    kernels.close()


@pytest.mark.parametrize("n,bands,tile", [(1, 1, 1), (16, 6, 64), (7, 13, 33)])
def test_cuda_normalization_is_the_numpy_path(cuda_kernels, n, bands, tile):
    rng = np.random.default_rng([n, bands, tile])
    tiles = rng.integers(1, 65536, size=(n, bands, tile, tile), dtype=np.uint16)
    scale = rng.uniform(1e-4, 3e-3, (bands, 1, 1)).astype(np.float32)
    offset = rng.uniform(-2, 2, (bands, 1, 1)).astype(np.float32)
    got = cuda_kernels.normalize(tiles, scale, offset)
    np.testing.assert_array_equal(got.view(np.uint32), normalize_tiles(tiles, scale, offset).view(np.uint32))


def test_cuda_cloud_fraction_is_the_numpy_path(cuda_kernels):
    rng = np.random.default_rng(11)
    grid = TileGrid(150, 97, 64, 8)
    valid = grid.valid_mask()
    cloud = rng.random((len(grid), 64, 64)) < rng.random((len(grid), 1, 1))
    want = ((cloud & valid).sum(axis=(1, 2)) / valid.sum(axis=(1, 2))).astype(np.float32)
    np.testing.assert_array_equal(cuda_kernels.cloud_fraction(cloud, valid), want)


def test_pipeline_results_are_the_same_on_gpu_and_cpu(cuda_kernels, tiny_bundle):
    s = DaemonSettings.from_mapping({"pipeline": {"msi": {"overlap": 8, "stages": [
        {"name": "cloud", "kind": "cloud_screen", "bundle": tiny_bundle}]}}, "intra_op_threads": 1})
    rng = np.random.default_rng(5)
    frames = [parse_frame(decode(make_frame(rng.integers(1, 700, (6, size, size), dtype=np.uint16), stream="msi",
                                            frame_id=i))) for i, size in enumerate((64, 150, 97))]
    runs = []
    for kernels in (None, cuda_kernels):
        pipe = Pipeline("msi", s.pipeline["msi"], EngineSet(s, kernels=kernels), max_batch=16)
        runs.append([decode(r.parts) for res in pipe.run(frames, "fp32") for r in res])
    for a, b in zip(*runs):
        assert a.header["tiles"] == b.header["tiles"]
        assert [bytes(x) for x in a.buffers] == [bytes(y) for y in b.buffers]
