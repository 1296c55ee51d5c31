"""RX anomaly score (Reed-Xiaoli): numpy references and ONNX-function forms, global and local.

Global RX scores each pixel of a ``(B, H, W)`` cube with background statistics computed
beforehand (``mean``, inverse covariance ``C``)::

    score = (x - mean)^T C (x - mean)

``C`` is taken as symmetric and only its lower triangle is used (what the CUDA kernel reads).

Local RX (dual window) takes the statistics for every pixel from its own neighbourhood: the
``outer x outer`` square minus the ``inner x inner`` guard square, both cut at the border, with
``n`` background pixels, mean ``mu``, population covariance ``S``, and a ridge::

    score = (x - mu)^T (S + r I)^-1 (x - mu),   r = regularization * trace(S) / d

This is :func:`ground.models.rx.local_rx` without its PCA step: give it the PCA-whitened cube
(:func:`ground.models.rx.pca_whiten`), at most ``SATEDGE_RX_LOCAL_MAX_BANDS`` = 32 components for
the CUDA kernel.

The references compute in float64 and return float32; the ONNX functions compute in float64
too (window sums from integral images, an unrolled elimination instead of a solver, which ONNX
lacks), so they agree with the references to float64 rounding. The CUDA kernels compute in
float32 (``satedge_rx_global`` / ``satedge_rx_local``) and agree to about 1e-5 relative.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from engines.errors import UserError
from engines.ops.graph import Body, function_model, make_function, run_model

LOCAL_MAX_BANDS = 32
_END = np.iinfo(np.int64).max


def _cube(cube) -> np.ndarray:
    cube = np.asarray(cube)
    if cube.ndim != 3 or min(cube.shape) < 1:
        raise UserError("expected a (bands, height, width) cube with every side >= 1, got shape %s" % (cube.shape,))
    return cube


def symmetric_from_lower(inv_cov) -> np.ndarray:
    """The symmetric matrix whose lower triangle is that of ``inv_cov`` (float64)."""
    c = np.asarray(inv_cov, dtype=np.float64)
    return np.tril(c) + np.tril(c, -1).T


def rx_global(cube, mean, inv_cov) -> np.ndarray:
    """Global RX map of a ``(B, H, W)`` cube; ``(H, W)`` float32 (computed in float64)."""
    cube = _cube(cube)
    bands = cube.shape[0]
    mean = np.asarray(mean, dtype=np.float64).ravel()
    if mean.size != bands or np.shape(inv_cov) != (bands, bands):
        raise UserError("a %d-band cube needs mean (%d,) and inv_cov (%d, %d); got %s and %s"
                        % (bands, bands, bands, bands, mean.shape, np.shape(inv_cov)))
    d = cube.reshape(bands, -1).astype(np.float64) - mean[:, None]
    score = np.einsum("in,in->n", symmetric_from_lower(inv_cov) @ d, d)
    return score.reshape(cube.shape[1:]).astype(np.float32)


def check_local_windows(bands: int, outer: int, inner: int) -> Tuple[int, int]:
    """Validate a dual window for ``bands`` dimensions; returns ``(outer // 2, inner // 2)``."""
    outer, inner = int(outer), int(inner)
    if outer % 2 == 0 or inner % 2 == 0 or not 0 < inner < outer or outer > 255:
        raise UserError("local RX windows must be odd with 0 < inner < outer <= 255, got outer=%d inner=%d"
                        % (outer, inner))
    if outer * outer - inner * inner <= bands:
        raise UserError("a %d/%d window holds %d background pixels, not more than the %d bands; enlarge outer or "
                        "reduce the bands (PCA)" % (outer, inner, outer * outer - inner * inner, bands))
    return outer // 2, inner // 2


def _integral(a: np.ndarray) -> np.ndarray:
    """``I[i, j] = a[:i, :j].sum((0, 1))`` with a zero first row and column."""
    out = np.zeros((a.shape[0] + 1, a.shape[1] + 1) + a.shape[2:])
    np.cumsum(np.cumsum(a, axis=0), axis=1, out=out[1:, 1:])
    return out


def rx_local(cube, outer: int = 15, inner: int = 5, regularization: float = 1e-3, block_rows: int = 16) -> np.ndarray:
    """Local (dual-window) RX map of a ``(d, H, W)`` cube; ``(H, W)`` float32 (computed in float64).

    Parameters
    ----------
    cube : array_like
        ``(d, H, W)``, typically PCA-whitened.
    outer, inner : int
        Odd window sides, ``0 < inner < outer``, ``outer**2 - inner**2 > d``.
    regularization : float
        Ridge factor (``r = regularization * trace(S) / d``), >= 0.
    block_rows : int
        Output rows per block; memory is about ``(block_rows + outer) * W * d**2 * 8`` bytes.
    """
    z = np.moveaxis(_cube(cube).astype(np.float64), 0, -1)
    h, w, d = z.shape
    ho, hi = check_local_windows(d, outer, inner)
    if not regularization >= 0:
        raise UserError("regularization must be >= 0, got %r" % regularization)
    out = np.empty((h, w))
    cols = np.arange(w)
    for r0 in range(0, h, max(1, int(block_rows))):
        r1 = min(r0 + max(1, int(block_rows)), h)
        a, b = max(r0 - ho, 0), min(r1 + ho, h)
        i1, i2 = _integral(z[a:b]), _integral(z[a:b, :, :, None] * z[a:b, :, None, :])
        rows = np.arange(r0, r1)

        def box(integral, half):
            top, bottom = np.maximum(rows - half, 0) - a, np.minimum(rows + half + 1, h) - a
            left, right = np.maximum(cols - half, 0), np.minimum(cols + half + 1, w)
            return (integral[np.ix_(bottom, right)] - integral[np.ix_(top, right)]
                    - integral[np.ix_(bottom, left)] + integral[np.ix_(top, left)])

        ones = _integral(np.ones((b - a, w)))
        n = box(ones, ho) - box(ones, hi)
        mu = (box(i1, ho) - box(i1, hi)) / n[..., None]
        cov = (box(i2, ho) - box(i2, hi)) / n[..., None, None] - mu[..., :, None] * mu[..., None, :]
        cov += (regularization * np.trace(cov, axis1=-2, axis2=-1) / d)[..., None, None] * np.eye(d)
        diff = z[r0:r1] - mu
        out[r0:r1] = np.einsum("...i,...i->...", diff, _solve(cov, diff))
    return out.astype(np.float32)


def _solve(cov: np.ndarray, diff: np.ndarray) -> np.ndarray:
    """``cov^-1 diff`` per pixel; NaN where ``cov`` is not positive definite (as the kernel)."""
    try:
        np.linalg.cholesky(cov)
        return np.linalg.solve(cov, diff[..., None])[..., 0]
    except np.linalg.LinAlgError:
        sol = np.full(diff.shape, np.nan)
        for i in np.ndindex(*diff.shape[:-1]):
            try:
                np.linalg.cholesky(cov[i])
                sol[i] = np.linalg.solve(cov[i], diff[i])
            except np.linalg.LinAlgError:
                pass
        return sol


# ---- ONNX forms -------------------------------------------------------------------------------

def build_global_function(bands: int):
    """ONNX function ``satedge.ops::RxGlobal``: ``cube`` ``(B, H, W)``, ``mean`` ``(B,)``, ``inv_cov``
    ``(B, B)`` float32 -> ``score`` ``(H, W)`` float32."""
    from onnx import TensorProto
    bands = int(bands)
    b = Body("rxg")
    x = b.op("Reshape", [b.op("Cast", ["cube"], "x", to=TensorProto.DOUBLE), b.ints([bands, -1])], "pixels")
    mean = b.op("Reshape", [b.op("Cast", ["mean"], to=TensorProto.DOUBLE), b.ints([bands, 1])], "mean")
    c = b.op("Cast", ["inv_cov"], "c", to=TensorProto.DOUBLE)
    lower = b.op("Mul", [c, b.const(np.tril(np.ones((bands, bands))))], "lower")
    diag = b.op("Mul", [c, b.const(np.eye(bands))], "diag")
    sym = b.op("Sub", [b.op("Add", [lower, b.op("Transpose", [lower], perm=[1, 0])]), diag], "sym")
    d = b.op("Sub", [x, mean], "d")
    score = b.op("ReduceSum", [b.op("Mul", [b.op("MatMul", [sym, d]), d]), b.ints([0])], "score", keepdims=0)
    hw = b.slice(b.op("Shape", ["cube"]), [1], [3], [0], "hw")
    b.op("Cast", [b.op("Reshape", [score, hw])], out="score", to=TensorProto.FLOAT)
    return make_function("RxGlobal", ["cube", "mean", "inv_cov"], ["score"], b,
                         doc="satedge global RX, %d bands" % bands)


def _box(b: Body, t: str, half: int) -> str:
    """Sums of the ``(2 half + 1)``-square windows over the last two axes of a 4-D tensor, cut at the border."""
    k = 2 * half + 1
    padded = b.op("Pad", [t, b.ints([0, 0, half + 1, half + 1, 0, 0, half, half])], "pad")
    integral = b.op("CumSum", [b.op("CumSum", [padded, b.const(np.int64(2))]), b.const(np.int64(3))], "integral")

    def part(r0, r1, c0, c1):
        return b.slice(integral, [r0, c0], [r1, c1], [2, 3])
    return b.op("Add", [b.op("Sub", [b.op("Sub", [part(k, _END, k, _END), part(0, -k, k, _END)]),
                                     part(k, _END, 0, -k)]), part(0, -k, 0, -k)], "box")


def build_local_function(bands: int, outer: int = 15, inner: int = 5, regularization: float = 1e-3):
    """ONNX function ``satedge.ops::RxLocal``: ``cube`` ``(d, H, W)`` float32 -> ``score`` ``(H, W)`` float32."""
    from onnx import TensorProto, numpy_helper
    d = int(bands)
    ho, hi = check_local_windows(d, outer, inner)
    b = Body("rxl")
    z = b.op("Unsqueeze", [b.op("Cast", ["cube"], to=TensorProto.DOUBLE), b.ints([0])], "z")      # (1, d, H, W)
    ones = b.op("ConstantOfShape", [b.op("Shape", [b.slice(z, [0], [1], [1])])], "ones",
                value=numpy_helper.from_array(np.ones(1, np.float64)))
    zz = b.op("Mul", [b.op("Reshape", [z, b.ints([d, 1, 0, 0])]), b.op("Reshape", [z, b.ints([1, d, 0, 0])])])
    n = b.op("Sub", [_box(b, ones, ho), _box(b, ones, hi)], "n")                                  # (1, 1, H, W)
    mu = b.op("Div", [b.op("Sub", [_box(b, z, ho), _box(b, z, hi)]), n], "mu")                  # (1, d, H, W)
    s2 = b.op("Div", [b.op("Sub", [_box(b, zz, ho), _box(b, zz, hi)]), n], "s2")                # (d, d, H, W)
    mu_col, mu_row = b.op("Reshape", [mu, b.ints([d, 1, 0, 0])]), b.op("Reshape", [mu, b.ints([1, d, 0, 0])])
    cov = b.op("Sub", [s2, b.op("Mul", [mu_col, mu_row])], "cov")
    eye = b.const(np.eye(d).reshape(d, d, 1, 1))
    trace = b.op("ReduceSum", [b.op("Mul", [cov, eye]), b.ints([0, 1])], "trace", keepdims=1)
    ridge = b.op("Mul", [trace, b.const(np.float64(float(regularization) / d))], "ridge")
    a = b.op("Add", [cov, b.op("Mul", [eye, ridge])], "a")
    rhs = b.op("Squeeze", [b.op("Sub", [z, mu]), b.ints([0])], "diff")                           # (d, H, W)
    zero, nan = b.const(np.float64(0)), b.const(np.float64(np.nan))
    score = None
    # Gaussian elimination: score = sum_k c_k^2 / pivot_k (LDL^T); a pivot <= 0 means "not positive
    # definite" and gives NaN, as the kernel.
    for k in range(d):
        piv = b.slice(a, [0, 0], [1, 1], [0, 1], "pivot")                                       # (1, 1, H, W)
        c = b.slice(rhs, [0], [1], [0], "c")                                                     # (1, H, W)
        piv3 = b.op("Squeeze", [piv, b.ints([0])])
        term = b.op("Where", [b.op("Greater", [piv3, zero]), b.op("Div", [b.op("Mul", [c, c]), piv3]), nan], "term")
        score = term if score is None else b.op("Add", [score, term], "score")
        if k < d - 1:
            f = b.op("Div", [b.slice(a, [1, 0], [_END, 1], [0, 1]), piv], "factor")            # (m-1, 1, H, W)
            row = b.slice(a, [0, 1], [1, _END], [0, 1], "row")                                   # (1, m-1, H, W)
            a = b.op("Sub", [b.slice(a, [1, 1], [_END, _END], [0, 1]), b.op("Mul", [f, row])], "a")
            f3 = b.op("Squeeze", [f, b.ints([1])])
            rhs = b.op("Sub", [b.slice(rhs, [1], [_END], [0]), b.op("Mul", [f3, c])], "rhs")
    b.op("Cast", [b.op("Squeeze", [score, b.ints([0])])], out="score", to=TensorProto.FLOAT)
    return make_function("RxLocal", ["cube"], ["score"], b,
                         doc="satedge local RX, %d bands, windows %d/%d, regularization %g"
                         % (d, outer, inner, regularization),
                         fields=dict(outer=int(outer), inner=int(inner), regularization=float(regularization)))


def run_global_onnx(cube, mean, inv_cov, inline: bool = False) -> np.ndarray:
    """Build the global RX model and run it with ONNX Runtime (CPU)."""
    cube = _cube(cube)
    bands, height, width = cube.shape
    fn = build_global_function(bands)
    model = function_model(fn, [("cube", "float32", [bands, "H", "W"]), ("mean", "float32", [bands]),
                                ("inv_cov", "float32", [bands, bands])], [("score", "float32", ["H", "W"])], inline)
    feeds = {"cube": cube.astype(np.float32), "mean": np.asarray(mean, np.float32).ravel(),
             "inv_cov": np.asarray(inv_cov, np.float32)}
    return run_model(model, feeds)["score"]


def run_local_onnx(cube, outer: int = 15, inner: int = 5, regularization: float = 1e-3,
                   inline: bool = False) -> np.ndarray:
    """Build the local RX model and run it with ONNX Runtime (CPU)."""
    cube = _cube(cube)
    fn = build_local_function(cube.shape[0], outer, inner, regularization)
    model = function_model(fn, [("cube", "float32", [cube.shape[0], "H", "W"])], [("score", "float32", ["H", "W"])],
                           inline)
    return run_model(model, {"cube": cube.astype(np.float32)})["score"]
