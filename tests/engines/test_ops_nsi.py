"""NSI sparsification: the float32 reference against onboard/fl/nsi.py and the ONNX function against it.

The float32 scores of :mod:`engines.ops.nsi` follow the CUDA kernel's order; the ONNX function
must reproduce them bit for bit and select exactly the same (index, value) pairs. Against the FL
client's float64 scores (``onboard.fl.nsi``) they agree to float32 rounding (about 1e-6 relative,
up to 1e-5 where the variance cancels), and the selected indices agree with its top-k on random
inputs.
"""
import numpy as np
import pytest

from engines.errors import UserError
from engines.ops import nsi
from onboard.fl import nsi as fl_nsi
from onboard.fl.compressors.base import keep_count as fl_keep_count
from onboard.fl.compressors.rsdgc import RSDGCCompressor
from onboard.fl.compressors.topk import topk_indices

pytest.importorskip("onnxruntime")

SHAPES = [(1,), (1, 1), (7,), (5, 9), (1, 31), (31, 1), (8, 3, 3, 3), (4, 6, 1, 1)]
SETTINGS = [(1, "coherence", 0.5), (3, "coherence", 0.5), (3, "coherence", 1.0), (5, "coherence", 0.0),
            (3, "mean_std", 0.5), (7, "mean_std", 0.5)]


def _grad(rng, shape):
    g = rng.normal(size=shape) * rng.uniform(1e-3, 1.0, shape)
    return np.where(g == 0, 1e-3, g).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p, variant, beta", SETTINGS)
def test_scores_agree_with_onboard_and_onnx_bit_for_bit(shape, p, variant, beta):
    g = _grad(np.random.default_rng([len(shape), sum(shape), p]), shape)
    ref = nsi.nsi_score(g, p, beta=beta, lam=0.7, variant=variant)
    assert ref.dtype == np.float32 and ref.shape == (g.size,)
    fl = fl_nsi.nsi_score(g, p, beta=beta, lam=0.7, variant=variant)
    np.testing.assert_allclose(ref, fl, rtol=1e-4, atol=1e-30)  # float32 cancellation in E[x^2] - mean^2
    got = nsi.run_onnx(g, p=p, beta=beta, lam=0.7, variant=variant)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("shape", SHAPES + [(64, 40)])
@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.5, 1.0])
def test_selection_matches_onboard_topk_and_the_onnx_function(shape, ratio):
    g = _grad(np.random.default_rng([sum(shape), int(ratio * 100)]), shape)
    k = nsi.keep_count(g.size, ratio)
    assert k == fl_keep_count(g.size, ratio)
    sel = nsi.sparsify(g, ratio=ratio)
    assert sel.indices.size == k and np.all(np.diff(sel.indices) > 0)
    assert np.array_equal(sel.values, g.ravel()[sel.indices])
    fl_top = np.sort(topk_indices(fl_nsi.nsi_score(g, 3, beta=0.5), k))
    assert np.array_equal(sel.indices, fl_top)
    onnx_sel = nsi.run_onnx(g, k)
    assert np.array_equal(onnx_sel.indices, sel.indices)
    assert np.array_equal(onnx_sel.values, sel.values) and onnx_sel.threshold == sel.threshold


def test_ties_keep_the_lowest_indices_everywhere():
    g = np.random.default_rng(3).integers(-3, 4, (9, 12)).astype(np.float32)
    g[g == 0] = 2.0
    scores = nsi.nsi_score(g)
    for k in (1, 7, 50, g.size):
        sel = nsi.sparsify(g, k)
        above = np.flatnonzero(scores > sel.threshold)
        tied = np.flatnonzero(scores == sel.threshold)
        assert np.array_equal(sel.indices, np.sort(np.concatenate([above, tied[:k - above.size]])))
        assert np.array_equal(nsi.run_onnx(g, k).indices, sel.indices)


def test_rsdgc_compressor_sends_the_selected_elements():
    rng = np.random.default_rng(4)
    grads = {"conv": _grad(rng, (8, 4, 3, 3)), "fc": _grad(rng, (10, 32))}
    comp = RSDGCCompressor(ratio=0.05, dynamic=False, error_feedback=False, value_format="f32")
    update = comp.compress(grads, step=0)
    for layer in update.layers:
        sel = nsi.sparsify(grads[layer.name], ratio=0.05)
        assert np.array_equal(np.sort(layer.indices), sel.indices)


def test_as_matrix_and_window_counts():
    for shape in [(), (5,), (3, 4), (2, 3, 4, 5)]:
        assert nsi.as_matrix(shape) == fl_nsi.as_matrix(shape)
    assert nsi.window_counts(2, 4, 3).tolist() == [[4, 6, 6, 4], [4, 6, 6, 4]]


def test_bad_arguments_are_refused():
    g = np.ones((3, 3), np.float32)
    with pytest.raises(UserError, match="odd"):
        nsi.nsi_score(g, 2)
    with pytest.raises(UserError, match="beta"):
        nsi.nsi_score(g, 3, beta=1.5)
    with pytest.raises(UserError, match="variant"):
        nsi.nsi_score(g, 3, variant="magnitude")
    with pytest.raises(UserError, match="k must be"):
        nsi.sparsify(g, 10)
    with pytest.raises(UserError, match="give k or ratio"):
        nsi.sparsify(g)
