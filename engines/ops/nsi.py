"""RS-DGC's neighbourhood-statistics sparsification: float32 numpy reference and ONNX-function form.

The score is the variant documented in :mod:`onboard.fl.nsi` (``coherence``: ``|g| (1 - β + β ρ)``
with ``ρ = |μ| / (|μ| + σ)``; ``mean_std``: ``|μ| + λσ``; μ, σ over the p×p window cut at the
borders). That module computes it in float64 for the FL client; here it is computed in float32
in one fixed order -- the order of the CUDA kernel (``satedge_nsi_score``), spelled out in
``cuda/include/satedge_kernels.h`` -- so that this reference, the ONNX function and the kernel
give the same bits, and the selected indices agree exactly. It differs from the float64 scores
by float32 rounding: about 1e-6 relative, more where σ ≪ |μ| (``E[x²] - μ²`` cancels), so an
index whose score is within that of the threshold may differ from the float64 top-k.

Selection keeps ``k`` elements (RS-DGC: ``k = keep_count(n, density, min_keep)``): the threshold
is the k-th largest score; every element above it and the lowest-indexed elements equal to it
are kept, indices ascending, with their gradient values. Scores are compared as floats (the
kernel uses the float bits made monotonic, the same order for the non-negative, finite scores
here); gradients must be finite.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np

from engines.errors import UserError
from engines.ops.graph import Body, function_model, make_function, run_model

VARIANTS = ("coherence", "mean_std")
_END = np.iinfo(np.int64).max


class Selection(NamedTuple):
    """Kept elements of one layer: flat ``indices`` (ascending), their ``values``, the ``threshold``."""

    indices: np.ndarray
    values: np.ndarray
    threshold: float


def as_matrix(shape: Tuple[int, ...]) -> Tuple[int, int]:
    """2-D view of a layer, as :func:`onboard.fl.nsi.as_matrix`: ``(out, prod(rest))``; 1-D is one row."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))


def keep_count(size: int, ratio: float, min_keep: int = 1) -> int:
    """Elements kept at density ``ratio``: ``min(size, max(min_keep, ceil(ratio * size)))``."""
    return int(min(size, max(min_keep, int(np.ceil(ratio * size)))))


def _check(p: int, beta: float, variant: str) -> None:
    if p < 1 or p % 2 == 0 or p > 255:
        raise UserError("NSI window side p must be odd, 1 <= p <= 255, got %r" % p)
    if variant not in VARIANTS:
        raise UserError("NSI variant %r is not one of %s" % (variant, ", ".join(VARIANTS)))
    if variant == "coherence" and not 0.0 <= beta <= 1.0:
        raise UserError("NSI beta must be in [0, 1], got %r" % beta)


def _matrix(grad) -> np.ndarray:
    g = np.asarray(grad, dtype=np.float32)
    return g.reshape(as_matrix(g.shape))


def window_counts(rows: int, cols: int, p: int) -> np.ndarray:
    """Elements of each p×p window cut at the borders, float32 ``(rows, cols)``."""
    h = p // 2

    def inside(n):
        i = np.arange(n)
        return np.minimum(i + h, n - 1) - np.maximum(i - h, 0) + 1
    return (inside(rows)[:, None] * inside(cols)[None, :]).astype(np.float32)


def nsi_score(grad, p: int = 3, *, beta: float = 0.5, lam: float = 1.0, variant: str = "coherence") -> np.ndarray:
    """NSI scores in float32, in the kernel's order (flat, C order of ``grad``)."""
    _check(p, beta, variant)
    g = _matrix(grad)
    rows, cols = g.shape
    h = p // 2
    padded, padded_sq = np.pad(g, h), np.pad(g * g, h)
    v1 = np.zeros((rows, cols + 2 * h), np.float32)
    v2 = np.zeros_like(v1)
    for i in range(p):  # rows ascending, then columns ascending, from 0
        v1, v2 = v1 + padded[i:i + rows], v2 + padded_sq[i:i + rows]
    s1 = np.zeros((rows, cols), np.float32)
    s2 = np.zeros_like(s1)
    for j in range(p):
        s1, s2 = s1 + v1[:, j:j + cols], s2 + v2[:, j:j + cols]
    n = window_counts(rows, cols, p)
    mean = s1 / n
    var = s2 / n - mean * mean
    sd = np.sqrt(np.where(var < 0, np.float32(0), var))
    am = np.abs(mean)
    if variant == "mean_std":
        return (am + np.float32(lam) * sd).ravel()
    den = am + sd
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(den > 0, am / den, np.float32(0))
    beta32 = np.float32(beta)
    return (np.abs(g) * ((np.float32(1) - beta32) + beta32 * rho)).ravel()


def select(scores: np.ndarray, k: int) -> Tuple[np.ndarray, float]:
    """Indices (ascending, int64) of the ``k`` largest scores, ties to the lowest index; and the threshold."""
    s = np.asarray(scores, dtype=np.float32).ravel()
    if not 1 <= k <= s.size:
        raise UserError("k must be in 1..%d (the layer size), got %d" % (s.size, k))
    threshold = np.partition(s, s.size - k)[s.size - k]
    above = np.flatnonzero(s > threshold)
    ties = np.flatnonzero(s == threshold)[:k - above.size]
    return np.sort(np.concatenate([above, ties])), float(threshold)


def sparsify(grad, k: Optional[int] = None, *, ratio: Optional[float] = None, min_keep: int = 1, p: int = 3,
             beta: float = 0.5, lam: float = 1.0, variant: str = "coherence") -> Selection:
    """Score, select and compact one layer (the reference of ``satedge_nsi_sparsify``).

    Parameters
    ----------
    grad : array_like
        The layer's (error-corrected) gradient, any shape; viewed with :func:`as_matrix`.
    k : int, optional
        Elements to keep; or give ``ratio`` (and ``min_keep``) for ``keep_count``.
    p, beta, lam, variant
        As :func:`onboard.fl.nsi.nsi_score`.
    """
    g = np.asarray(grad, dtype=np.float32).ravel()
    if k is None:
        if ratio is None:
            raise UserError("give k or ratio")
        k = keep_count(g.size, ratio, min_keep)
    idx, threshold = select(nsi_score(grad, p, beta=beta, lam=lam, variant=variant), int(k))
    return Selection(idx, g[idx], threshold)


def build_function(shape: Tuple[int, int], p: int = 3, beta: float = 0.5, lam: float = 1.0,
                   variant: str = "coherence", k: Optional[int] = None):
    """ONNX function ``satedge.ops::NsiScore`` (``k`` None) or ``satedge.ops::NsiSparsify``.

    Input ``grad`` ``(rows, cols)`` float32. Outputs ``score`` ``(rows, cols)``; or ``index``
    ``(k,)`` int64 ascending, ``value`` ``(k,)`` float32 and ``threshold`` ``(1,)`` float32 (TopK
    breaks ties by the lower index, as the rule above).
    """
    _check(p, beta, variant)
    rows, cols = (int(v) for v in shape)
    h = p // 2
    b = Body("nsi")
    pads = b.ints([h, h, h, h])
    sq = b.op("Mul", ["grad", "grad"], "sq")
    padded, padded_sq = b.op("Pad", ["grad", pads], "padded"), b.op("Pad", [sq, pads], "padded_sq")

    def sums(t, axis):
        total = None
        for i in range(p):
            part = b.slice(t, [i], [i - 2 * h if i < 2 * h else _END], [axis])
            total = part if total is None else b.op("Add", [total, part])
        return total
    s1, s2 = sums(sums(padded, 0), 1), sums(sums(padded_sq, 0), 1)
    n = b.const(window_counts(rows, cols, p), hint="n")
    mean = b.op("Div", [s1, n], "mean")
    var = b.op("Sub", [b.op("Div", [s2, n]), b.op("Mul", [mean, mean])], "var")
    zero = b.const(np.float32(0))
    sd = b.op("Sqrt", [b.op("Where", [b.op("Less", [var, zero]), zero, var])], "sd")
    am = b.op("Abs", [mean], "am")
    out_score = "score" if k is None else ""
    if variant == "mean_std":
        score = b.op("Add", [am, b.op("Mul", [b.const(np.float32(lam)), sd])], "score", out=out_score)
    else:
        den = b.op("Add", [am, sd], "den")
        rho = b.op("Where", [b.op("Greater", [den, zero]), b.op("Div", [am, den]), zero], "rho")
        w = b.op("Add", [b.const(np.float32(1) - np.float32(beta)), b.op("Mul", [b.const(np.float32(beta)), rho])])
        score = b.op("Mul", [b.op("Abs", ["grad"]), w], "score", out=out_score)
    fields = dict(p=int(p), beta=float(beta), lam=float(lam), variant=VARIANTS.index(variant))
    if k is None:
        return make_function("NsiScore", ["grad"], ["score"], b, doc="satedge NSI score, p=%d, %s" % (p, variant),
                             fields=fields)
    k = int(k)
    if not 1 <= k <= rows * cols:
        raise UserError("k must be in 1..%d, got %d" % (rows * cols, k))
    flat = b.ints([-1])
    top, top_idx = b.op("TopK", [b.op("Reshape", [score, flat]), b.ints([k])], "top", n_out=2, largest=1, sorted=1)
    neg, _ = b.op("TopK", [b.op("Neg", [top_idx]), b.ints([k])], "asc", n_out=2, largest=1, sorted=1)
    index = b.op("Neg", [neg], out="index")
    b.op("Gather", [b.op("Reshape", ["grad", flat]), index], out="value", axis=0)
    b.slice(top, [k - 1], [k], [0], out="threshold")
    return make_function("NsiSparsify", ["grad"], ["index", "value", "threshold"], b,
                         doc="satedge NSI sparsification, p=%d, %s, k=%d" % (p, variant, k), fields=dict(k=k, **fields))


def run_onnx(grad, k: Optional[int] = None, *, p: int = 3, beta: float = 0.5, lam: float = 1.0,
             variant: str = "coherence", inline: bool = False):
    """Run the ONNX form with ONNX Runtime: the flat scores (``k`` None) or a :class:`Selection`."""
    g = _matrix(grad)
    fn = build_function(g.shape, p, beta, lam, variant, k)
    inputs = [("grad", "float32", list(g.shape))]
    if k is None:
        return run_model(function_model(fn, inputs, [("score", "float32", list(g.shape))], inline),
                         {"grad": g})["score"].ravel()
    outs = run_model(function_model(fn, inputs, [("index", "int64", [k]), ("value", "float32", [k]),
                                                 ("threshold", "float32", [1])], inline), {"grad": g})
    return Selection(outs["index"], outs["value"], float(outs["threshold"][0]))
