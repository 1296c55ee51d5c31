"""The daemon's tile kernels: the numpy path and the batched op-set path give the same bits.

The op-set path is what runs on a GPU (one preprocessing launch for a whole batch of tiles, cloud
counts recovered from the kernel's fractions); here it runs on the numpy references of
``engines.ops`` (``ReferenceOps``), which the ``gpu`` tests compare with the CUDA kernels bit for
bit. Together: a daemon on a GPU gives the same tiles, fractions and results as one on a CPU.
"""
import numpy as np
import pytest

from engines.errors import UserError
from engines.ops.cuda_ops import ReferenceOps
from engines.runners.devicebuf import gpu_present
from onboard.engineset import EngineSet
from onboard.kernels import TileKernels, normalize_tiles
from onboard.pipeline import Pipeline
from onboard.settings import DaemonSettings
from onboard.tiling import TileGrid
from onboard.wire import decode, parse_frame
from daemon_helpers import frame


def _calibration(rng, bands):
    return (rng.uniform(1e-4, 3e-3, bands).astype(np.float32).reshape(-1, 1, 1),
            rng.uniform(-2.0, 2.0, bands).astype(np.float32).reshape(-1, 1, 1))


@pytest.mark.parametrize("n,bands,tile", [(1, 1, 1), (3, 6, 16), (17, 4, 33), (5, 13, 8)])
def test_batched_normalization_matches_numpy_bit_for_bit(n, bands, tile):
    rng = np.random.default_rng(n * 100 + bands)
    tiles = rng.integers(1, 65536, size=(n, bands, tile, tile), dtype=np.uint16)
    scale, offset = _calibration(rng, bands)
    want = normalize_tiles(tiles, scale, offset)
    got = TileKernels(ops=ReferenceOps()).normalize(tiles, scale, offset)
    assert got.dtype == np.float32 and got.shape == tiles.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(TileKernels("reference").normalize(tiles, scale, offset).view(np.uint32),
                                  want.view(np.uint32))


@pytest.mark.parametrize("h,w,tile,overlap", [(100, 70, 32, 0), (64, 64, 64, 0), (90, 130, 40, 12), (5, 9, 16, 3)])
def test_cloud_fraction_over_valid_pixels_matches_numpy(h, w, tile, overlap):
    rng = np.random.default_rng(h * w)
    grid = TileGrid(h, w, tile, overlap)
    valid = grid.valid_mask()
    cloud = rng.random((len(grid), tile, tile)) < rng.random((len(grid), 1, 1))
    want = ((cloud & valid).sum(axis=(1, 2)) / valid.sum(axis=(1, 2))).astype(np.float32)
    for kernels in (TileKernels("reference"), TileKernels(ops=ReferenceOps())):
        got = kernels.cloud_fraction(cloud, valid)
        np.testing.assert_array_equal(got, want)
    assert TileKernels(ops=ReferenceOps()).cloud_fraction(cloud[:0], valid[:0]).shape == (0,)


def test_pipeline_gives_the_same_results_on_either_path(tiny_bundle):
    s = DaemonSettings.from_mapping({"pipeline": {"msi": {"overlap": 8, "stages": [
        {"name": "cloud", "kind": "cloud_screen", "bundle": tiny_bundle}]}}, "intra_op_threads": 1})
    rng = np.random.default_rng(3)
    frames = [parse_frame(decode(frame(i, size=size)[:2] + [rng.integers(1, 700, (6, size, size), dtype=np.uint16)]))
              for i, size in enumerate((64, 150, 97))]
    runs = []
    for kernels in (None, TileKernels(ops=ReferenceOps())):
        pipe = Pipeline("msi", s.pipeline["msi"], EngineSet(s, kernels=kernels), max_batch=16)
        runs.append([decode(r.parts) for res in pipe.run(frames, "fp32") for r in res])
    assert len(runs[0]) == len(runs[1]) == 3
    fractions = [t["cloud"] for r in runs[0] for t in r.header["tiles"]]
    assert len(set(fractions)) > 3 and 0 < min(fractions) < max(fractions) < 1, fractions   # a real test of counts
    for a, b in zip(*runs):
        assert a.header["tiles"] == b.header["tiles"] and a.header["cloud_fraction"] == b.header["cloud_fraction"]
        for x, y in zip(a.buffers, b.buffers):
            assert bytes(x) == bytes(y)


def test_cuda_kernels_refuse_to_start_without_a_gpu_and_auto_falls_back():
    has_gpu, why = gpu_present()
    if has_gpu:
        pytest.skip("this host has a GPU (%s): the refusal is for hosts without one" % why)
    with pytest.raises(UserError, match="kernels: cuda was asked for but cannot run here: no GPU"):
        TileKernels("cuda")
    auto = TileKernels("auto")
    assert auto.backend == "reference" and "no GPU" in auto.why
    with pytest.raises(UserError, match="kernels 'gpu'"):
        TileKernels("gpu")
    with pytest.raises(UserError, match="settings: kernels 'gpu' is not"):
        DaemonSettings.from_mapping({"bundle": "x", "kernels": "gpu"})
