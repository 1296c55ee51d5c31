"""Per-tile cloud fraction: the ONNX function (ONNX Runtime, CPU) against the numpy reference, bit for bit."""
import numpy as np
import pytest

from engines.errors import UserError
from engines.ops import cloud_fraction as cf

pytest.importorskip("onnxruntime")


def _mask(rng, n_tiles, tile_pixels):
    density = rng.random((n_tiles, 1))
    mask = (rng.random((n_tiles, tile_pixels)) < density).astype(np.uint8)
    return mask * rng.integers(1, 256, mask.shape).astype(np.uint8)  # any nonzero byte is cloud


@pytest.mark.parametrize("n_tiles, tile_pixels", [(1, 1), (5, 1), (1, 7), (9, 33), (4, 256 * 256 + 3)])
def test_onnx_function_matches_the_reference_exactly(n_tiles, tile_pixels):
    mask = _mask(np.random.default_rng([n_tiles, tile_pixels]), n_tiles, tile_pixels)
    ref = cf.cloud_fraction(mask)
    assert ref.dtype == np.float32 and ref.shape == (n_tiles,)
    assert np.array_equal(cf.run_onnx(mask), ref)
    assert np.array_equal(cf.run_onnx(mask, inline=True), ref)


def test_fraction_is_the_exact_quotient_rounded_once():
    mask = np.zeros((3, 7), np.uint8)
    mask[0, :1], mask[1, :3], mask[2, :] = 200, 1, 9
    expect = np.array([1 / 7, 3 / 7, 1.0]).astype(np.float32)
    assert np.array_equal(cf.cloud_fraction(mask), expect)
    assert np.array_equal(cf.run_onnx(mask), expect)


def test_shapes_bool_masks_and_tile_pixels():
    rng = np.random.default_rng(2)
    tiles = rng.random((6, 4, 5)) < 0.3
    ref = cf.cloud_fraction(tiles)
    assert np.array_equal(ref, cf.cloud_fraction(tiles.ravel(), tile_pixels=20))
    assert np.array_equal(ref, cf.run_onnx(tiles.astype(np.uint8)))


def test_matches_the_screening_stage_on_full_tiles():
    # onboard.screening takes the fraction over the tile's valid pixels; on tiles wholly inside
    # the frame that is the count of cloudy pixels over the tile size, as here.
    rng = np.random.default_rng(3)
    prob = rng.random((8, 16, 16))
    cloud = prob > 0.5
    expect = (cloud.sum(axis=(1, 2)) / cloud[0].size).astype(np.float32)
    assert np.array_equal(cf.cloud_fraction(cloud), expect)


def test_bad_masks_are_refused():
    with pytest.raises(UserError, match="uint8 or bool"):
        cf.cloud_fraction(np.ones((2, 3), np.float32))
    with pytest.raises(UserError, match="whole number"):
        cf.cloud_fraction(np.ones(10, np.uint8), tile_pixels=3)
    with pytest.raises(UserError, match=">= 1"):
        cf.build_function(0)
