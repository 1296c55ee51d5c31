"""PNG plots of one track's results (matplotlib, Agg backend: no display needed).

* ``accuracy_bops``: primary metric on the first labelled split against BOPs (log scale), one
  marker per variant (simulated variants hollow);
* ``latency``: ONNX Runtime CPU latency, median bar and p90 whisker, per exported variant;
* ``precision_map``: per-layer precision of every quantized variant (rows) by layer (columns):
  FP32, FP16, INT8 and simulated k-means widths;
* ``tdds``: TDDS coreset vs random subset by data fraction.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ground.compress import summary


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def accuracy_bops(track: Dict, path: Path, title: str) -> Optional[Path]:
    """Accuracy vs BOPs scatter; returns the path (None when there is no labelled split)."""
    splits = summary.labelled(track)
    if not splits:
        return None
    plt, s = _plt(), splits[0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in track["variants"]:
        y = summary.primary(track, v, s)
        if y is None:
            continue
        hollow = v["label"] == "sim"
        ax.scatter(v["cost"]["bops"], y, s=40, facecolors="none" if hollow else None,
                   edgecolors="C3" if hollow else None, c=None if hollow else "C0" if v["label"] == "fp32" else "C1")
        ax.annotate(v["name"], (v["cost"]["bops"], y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("BOPs per sample (MACs x w bits x a bits; log)")
    ax.set_ylabel(f"{track['primary']} ({s})")
    ax.set_title(title + "  (blue FP32, orange INT8/FP16, hollow: simulated)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency(track: Dict, path: Path, title: str) -> Optional[Path]:
    """Median latency bars with p90 whiskers."""
    rows = [(v["name"], v["latency"]) for v in track["variants"] if v.get("latency")]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.5))
    names = [r[0] for r in rows]
    med = np.array([r[1]["median_ms"] for r in rows])
    p90 = np.array([r[1]["p90_ms"] for r in rows])
    ax.barh(names, med, xerr=[np.zeros_like(med), p90 - med], color="C0", alpha=0.8, capsize=2)
    ax.invert_yaxis()
    n = rows[0][1]["samples_per_call"]
    ax.set_xlabel(f"ms per call ({n} sample{'s' if n > 1 else ''}, ONNX Runtime CPU, "
                  f"{rows[0][1]['threads']} thread); bar median, whisker p90")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def precision_map(track: Dict, path: Path, title: str) -> Optional[Path]:
    """Layers x variants heat map of weight widths (32, 16, 8 or the simulated n)."""
    rows = [v for v in track["variants"] if v["label"] != "fp32"]
    if not rows:
        return None
    plt = _plt()
    layers = list(rows[0]["cost"]["layers"])
    for v in rows:
        layers += [n for n in v["cost"]["layers"] if n not in layers]
    grid = np.full((len(rows), len(layers)), np.nan)
    for i, v in enumerate(rows):
        for j, n in enumerate(layers):
            if n in v["cost"]["layers"]:
                grid[i, j] = v["cost"]["layers"][n]["bits_w"]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(layers) + 2), 0.35 * len(rows) + 2))
    im = ax.imshow(np.log2(grid), cmap="viridis", vmin=1, vmax=5, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(layers)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{int(grid[i, j])}", ha="center", va="center", fontsize=6,
                        color="k" if grid[i, j] >= 16 else "w")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=6)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{v['name']} ({v['label']})" for v in rows], fontsize=7)
    cb = fig.colorbar(im, ax=ax, ticks=[1, 2, 3, 4, 5])
    cb.ax.set_yticklabels(["2", "4", "8", "16", "32"])
    cb.set_label("weight bits (32 FP32, 16 FP16, 8 INT8, <8 simulated)", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tdds(track: Dict, path: Path, title: str) -> Optional[Path]:
    """TDDS vs random by fraction on the first labelled split."""
    rows = summary.tdds(track)
    if not rows:
        return None
    plt, s = _plt(), rows[0]["split"]
    rows = sorted((r for r in rows if r["split"] == s), key=lambda r: r["fraction"])
    fp = summary.primary(track, summary.variants(track)["fp32"], s)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    f = [100 * r["fraction"] for r in rows]
    ax.plot(f, [r["tdds"] for r in rows], "o-", label="TDDS-like coreset")
    ax.plot(f, [r["random"] for r in rows], "s--", label="random (same size)")
    ax.axhline(fp, color="k", lw=0.8, ls=":", label="FP32, all data")
    ax.set_xlabel("% of the training data")
    ax.set_ylabel(f"{track['primary']} ({s})")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
