"""RX anomaly score: numpy references against ground's RX and the ONNX functions against the references.

The references compute in float64 and return float32; the ONNX functions compute in float64 too,
so they agree to float32 rounding of the result (a relative tolerance of 1e-6). Inputs are
random, offset from zero; frames go down to 1x1 (global) and to frames smaller than the local
window (every window cut by the border).
"""
import numpy as np
import pytest

from engines.errors import UserError
from engines.ops import rx
from ground.models import rx as ground_rx

pytest.importorskip("onnxruntime")


def _cube(rng, shape):
    return (rng.normal(size=shape) + rng.uniform(1, 3, (shape[0], 1, 1))).astype(np.float32)


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 1, 1), (5, 7, 9), (12, 16, 3), (30, 6, 11)])
def test_global_matches_ground_rx_score_and_the_onnx_function(shape):
    rng = np.random.default_rng(list(shape))
    cube = _cube(rng, shape)
    background = _cube(rng, (shape[0], 50, 3)).reshape(shape[0], -1).T
    mean, inv = ground_rx.background_stats(background)
    ref = rx.rx_global(cube, mean, inv)
    expect = ground_rx.rx_score(cube.reshape(shape[0], -1).T.astype(np.float64), mean, inv).reshape(shape[1:])
    np.testing.assert_allclose(ref, expect, rtol=1e-6)
    np.testing.assert_allclose(rx.run_global_onnx(cube, mean, inv), ref, rtol=1e-6)
    np.testing.assert_allclose(rx.run_global_onnx(cube, mean, inv, inline=True), ref, rtol=1e-6)


def test_global_reads_only_the_lower_triangle():
    rng = np.random.default_rng(1)
    cube = _cube(rng, (4, 5, 6))
    mean = rng.normal(size=4)
    a = rng.normal(size=(4, 4))
    sym = a @ a.T + np.eye(4)
    skewed = sym + np.triu(rng.normal(size=(4, 4)), 1)  # garbage above the diagonal
    assert np.array_equal(rx.rx_global(cube, mean, skewed), rx.rx_global(cube, mean, sym))
    np.testing.assert_allclose(rx.run_global_onnx(cube, mean, skewed), rx.rx_global(cube, mean, sym), rtol=1e-6)


@pytest.mark.parametrize("bands, height, width, outer, inner", [
    (3, 9, 11, 5, 3), (4, 20, 17, 9, 3), (6, 5, 4, 7, 3), (10, 13, 12, 11, 5), (1, 2, 3, 3, 1)])
def test_local_matches_ground_local_rx_on_the_whitened_cube(bands, height, width, outer, inner):
    rng = np.random.default_rng([bands, height, width])
    cube = _cube(rng, (bands + 2, height, width))
    z = ground_rx.pca_whiten(cube, bands)
    ref = rx.rx_local(z, outer, inner, 1e-3, block_rows=4)
    expect = ground_rx.local_rx(cube, outer, inner, n_components=bands, regularization=1e-3)
    np.testing.assert_allclose(ref, expect, rtol=1e-5)
    np.testing.assert_allclose(rx.rx_local(z, outer, inner, 1e-3, block_rows=100), ref, rtol=1e-6)
    np.testing.assert_allclose(rx.run_local_onnx(z, outer, inner, 1e-3), ref, rtol=1e-5)


def test_local_without_a_positive_definite_covariance_is_nan():
    z = np.array([[[1.0, 2.5, 4.5]]], np.float32)  # 1x3: the end pixels see one background pixel
    for score in (rx.rx_local(z, 3, 1, 1e-3), rx.run_local_onnx(z, 3, 1, 1e-3)):
        assert np.isnan(score[0, 0]) and np.isnan(score[0, 2])
        np.testing.assert_allclose(score[0, 1], 0.25 ** 2 / (1.75 ** 2 * (1 + 1e-3)), rtol=1e-6)


def test_local_onnx_inlined_equals_the_function_call():
    z = _cube(np.random.default_rng(7), (3, 6, 5))
    a = rx.run_local_onnx(z, 5, 1, 1e-2)
    assert np.array_equal(a, rx.run_local_onnx(z, 5, 1, 1e-2, inline=True))


def test_an_implanted_target_scores_highest():
    rng = np.random.default_rng(8)
    cube = rng.normal(size=(4, 21, 21)).astype(np.float32) * 0.1 + 1.0
    cube[:, 10, 10] += np.array([0.8, -0.5, 0.6, 0.4], np.float32)
    for score in (rx.rx_local(cube, 9, 3, 1e-3), rx.rx_global(cube, *ground_rx.background_stats(
            cube.reshape(4, -1).T))):
        assert np.unravel_index(np.argmax(score), score.shape) == (10, 10)


def test_bad_windows_and_statistics_are_refused():
    z = np.ones((4, 5, 5), np.float32)
    with pytest.raises(UserError, match="odd"):
        rx.rx_local(z, 6, 3)
    with pytest.raises(UserError, match="not more than the 40 bands"):
        rx.check_local_windows(40, 7, 3)
    with pytest.raises(UserError, match="needs mean"):
        rx.rx_global(z, np.zeros(3), np.eye(4))
    with pytest.raises(UserError, match="bands, height, width"):
        rx.rx_global(np.ones((4, 5)), np.zeros(4), np.eye(4))
