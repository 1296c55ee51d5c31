"""Held-out accuracy and CPU speed of exported cloud-screen models, through ONNX Runtime.

Accuracy is measured on the engine file itself (not the torch model), so FP32 and INT8 are
judged the same way the onboard runner will run them. Speed is measured side by side: FP32 and
INT8 sessions built with the same thread count and fed the same batch in interleaved rounds, so
drift of a shared machine hits both alike; the ratio is what to read, not the absolute rate. On
a CPU with a model this small INT8 is often *slower* than FP32 (Q/DQ overhead outweighs the
cheaper arithmetic); the numbers are reported as measured.
"""
from __future__ import annotations

import os
import time
from typing import Dict

import numpy as np

from ground.train import apply_normalization

#: Intra-op threads of every timing session (the size of the CI machines).
THREADS = 2


def _session(model_path, threads: int = THREADS):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(os.fspath(model_path), opts, providers=["CPUExecutionProvider"])


def predict_masks(model_path, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Cloud probabilities of normalized tiles.

    Parameters
    ----------
    model_path : str or os.PathLike
        ONNX model with input ``dn_norm`` and output ``mask``.
    x : numpy.ndarray
        float32 (N, bands, H, W) normalized tiles.
    batch : int
        Tiles per ONNX Runtime call.

    Returns
    -------
    numpy.ndarray
        float32 (N, H, W) probabilities.
    """
    sess = _session(model_path)
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = [sess.run(["mask"], {"dn_norm": x[i:i + batch]})[0][:, 0] for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0,) + x.shape[2:], np.float32)


def pixel_accuracy(model_path, dn: np.ndarray, mask: np.ndarray, normalization: Dict, threshold: float = 0.5,
                   batch: int = 64) -> float:
    """Fraction of pixels whose thresholded cloud probability matches the truth.

    Parameters
    ----------
    model_path : str or os.PathLike
        ONNX model (FP32 or Q/DQ INT8).
    dn : numpy.ndarray
        uint16 (N, bands, H, W) DN tiles.
    mask : numpy.ndarray
        (N, H, W) cloud truth, nonzero for cloud.
    normalization : dict
        The ``scale``/``offset`` dict the model was trained with.
    threshold : float
        Probability above which a pixel is called cloud.
    batch : int
        Tiles per ONNX Runtime call.

    Returns
    -------
    float
        Pixel accuracy in [0, 1].
    """
    prob = predict_masks(model_path, apply_normalization(dn, normalization), batch)
    return float(np.mean((prob > threshold) == (np.asarray(mask) > 0)))


def ort_throughput(model_path, batch: np.ndarray, *, seconds: float = 1.0, repeats: int = 3,
                   threads: int = THREADS) -> float:
    """Tiles per second of one ONNX Runtime session on a fixed batch (best of ``repeats``).

    Parameters
    ----------
    model_path : str or os.PathLike
        ONNX model.
    batch : numpy.ndarray
        float32 (N, bands, H, W) input, run as one call each time.
    seconds : float
        Length of each timed repeat.
    repeats : int
        Timed repeats after one warm-up call; the best is returned.
    threads : int
        Intra-op threads.

    Returns
    -------
    float
        Tiles per second.
    """
    sess = _session(model_path, threads)
    feed = {"dn_norm": np.ascontiguousarray(batch, dtype=np.float32)}
    sess.run(None, feed)
    best = 0.0
    for _ in range(max(1, repeats)):
        calls, t0 = 0, time.perf_counter()
        while True:
            sess.run(None, feed)
            calls += 1
            dt = time.perf_counter() - t0
            if dt >= seconds:
                break
        best = max(best, calls * len(batch) / dt)
    return best


def compare_speed(fp32_path, int8_path, batch: np.ndarray, rounds: int = 5, calls_per_round: int = 3,
                  threads: int = THREADS) -> Dict[str, float]:
    """Throughput of FP32 and INT8 measured side by side in interleaved rounds.

    Parameters
    ----------
    fp32_path, int8_path : str or os.PathLike
        The two ONNX models.
    batch : numpy.ndarray
        float32 (N, bands, H, W) input, identical for both.
    rounds : int
        Interleaved rounds; in each, each model runs ``calls_per_round`` calls (the order
        alternates between rounds). The median per-round time is used.
    calls_per_round : int
        Calls per model per round.
    threads : int
        Intra-op threads of both sessions.

    Returns
    -------
    dict
        ``fp32_tiles_per_s``, ``int8_tiles_per_s`` and ``int8_speedup`` (INT8 over FP32; below 1
        means INT8 is slower here).
    """
    feed = {"dn_norm": np.ascontiguousarray(batch, dtype=np.float32)}
    sessions = {"fp32": _session(fp32_path, threads), "int8": _session(int8_path, threads)}
    for sess in sessions.values():
        sess.run(None, feed)
    times = {k: [] for k in sessions}
    for r in range(max(1, rounds)):
        order = ("fp32", "int8") if r % 2 == 0 else ("int8", "fp32")
        for key in order:
            t0 = time.perf_counter()
            for _ in range(calls_per_round):
                sessions[key].run(None, feed)
            times[key].append((time.perf_counter() - t0) / calls_per_round)
    rate = {k: len(batch) / float(np.median(v)) for k, v in times.items()}
    return {"fp32_tiles_per_s": rate["fp32"], "int8_tiles_per_s": rate["int8"],
            "int8_speedup": rate["int8"] / rate["fp32"]}
