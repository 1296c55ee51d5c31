"""Verdicts, text summary, JSON and PNG of an FL experiment (:func:`sim.fl.run_experiment`).

Every figure is a mean over the scenario's seeds, each seed on its own split and the same contact
plan; per-seed values are kept next to the means. Conventions:

* *final accuracy*: test accuracy of the global model after the last aggregation;
* *uplink bytes*: encoded update bytes sent satellite → ground (``len(codec.encode(u))``);
  the dense baseline's bytes over a method's bytes is its compression;
* *accuracy at a byte budget*: accuracy of the last model reached with at most that many uplink
  bytes (read off the accuracy-vs-bytes curve), the budget being what RS-DGC used in its run;
* *time to reach*: orbit time of the first aggregation at or above a target accuracy.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import numpy as np

T, VERSION, UPLINK, BROADCAST, ACC, LOSS = range(6)


def _runs(results: Dict, label: str) -> List[Dict]:
    return [r for r in results["runs"] if r["id"].split("/", 1)[1] == label]


def accuracy_at_bytes(run: Dict, budget: float) -> float:
    """Accuracy of the last record whose cumulative uplink bytes are within ``budget``."""
    return [rec[ACC] for rec in run["records"] if rec[UPLINK] <= budget][-1]


def time_to_reach(run: Dict, target: float, window: int = 1) -> Optional[float]:
    """Orbit seconds of the first record where the mean accuracy of the last ``window`` records
    is >= ``target`` (None if never); ``window > 1`` smooths a noisy curve."""
    acc = np.array([rec[ACC] for rec in run["records"]])
    smooth = np.convolve(acc, np.ones(window) / window, "valid") if len(acc) >= window else acc[:0]
    hit = np.flatnonzero(smooth >= target - 1e-12)
    return run["records"][int(hit[0]) + window - 1][T] if len(hit) else None


def _mean(xs) -> float:
    return round(float(np.mean(xs)), 6) if len(xs) else float("nan")


def summarize(results: Dict) -> Dict:
    """Verdicts of every part of the experiment that ran (JSON-ready)."""
    out: Dict = {}
    dense = _runs(results, "sync/dense")
    rs = _runs(results, "sync/rsdgc")
    budgets = [r["uplink_bytes"] for r in rs] or [r["uplink_bytes"] for r in dense]
    comp = {}
    for label in results["scenario"]["compressors"]:
        runs = _runs(results, f"sync/{label}")
        ratio = [d["uplink_bytes"] / max(1, r["uplink_bytes"]) for d, r in zip(dense, runs)]
        comp[label] = {"final_accuracy": _mean([r["final_accuracy"] for r in runs]),
                       "per_seed": [r["final_accuracy"] for r in runs],
                       "gap_points": round(100 * (_mean([r["final_accuracy"] for r in runs])
                                                  - _mean([d["final_accuracy"] for d in dense])), 3),
                       "uplink_bytes": _mean([r["uplink_bytes"] for r in runs]), "vs_dense": round(_mean(ratio), 2),
                       "accuracy_at_rsdgc_bytes": _mean([accuracy_at_bytes(r, b) for r, b in zip(runs, budgets)]),
                       "orbit_hours": round(_mean([r["time_s"] for r in runs]) / 3600, 3),
                       "resized_uploads": int(sum(r["counters"].get("upload_resized", 0) for r in runs))}
    out["compression"] = comp
    if "rsdgc" in comp:
        sparse = {k: v["accuracy_at_rsdgc_bytes"] for k, v in comp.items() if k != "dense"}
        best = max(sparse, key=sparse.get)
        c = comp["rsdgc"]
        out["rsdgc_verdict"] = {
            "vs_dense": c["vs_dense"], "gap_points": c["gap_points"],
            "meets_50x_and_half_point": bool(c["vs_dense"] >= 50 and c["gap_points"] >= -0.5),
            "winner_at_rsdgc_bytes": best,
            "text": (f"RS-DGC: {c['vs_dense']:.1f}x fewer uplink bytes than dense FedAvg, "
                     f"{c['gap_points']:+.2f} points final accuracy; at RS-DGC's byte budget the most accurate is "
                     f"{best} (" + ", ".join(f"{k} {v:.4f}" for k, v in sorted(sparse.items(), key=lambda kv: -kv[1]))
                     + ")")}
    asyn = _runs(results, "async/dense")
    if asyn:
        per = []
        for d, a in zip(dense, asyn):
            reach, smooth = time_to_reach(a, d["final_accuracy"]), time_to_reach(a, d["final_accuracy"], 5)
            per.append({"target": d["final_accuracy"], "sync_s": d["time_s"], "async_s": reach,
                        "speedup": round(d["time_s"] / reach, 3) if reach else None, "async_s_mean5": smooth,
                        "speedup_mean5": round(d["time_s"] / smooth, 3) if smooth else None,
                        "async_accuracy_at_sync_time": a["final_accuracy"], "versions": a["records"][-1][VERSION],
                        "mean_staleness": a["mean_staleness"]})
        ok, ok5 = all(p["speedup"] for p in per), all(p["speedup_mean5"] for p in per)
        out["async"] = {"per_seed": per, "reached_all": ok,
                        "mean_speedup": _mean([p["speedup"] for p in per]) if ok else None,
                        "mean_speedup_mean5": _mean([p["speedup_mean5"] for p in per]) if ok5 else None}
    clean = _runs(results, "robust/clean")
    if clean:
        pois = {}
        for label in [r["id"].split("/", 1)[1] for r in results["runs"]]:
            if label.startswith(("robust/", "plain/")) and label not in pois and label != "robust/clean":
                runs = _runs(results, label)
                ref = clean if label.startswith("robust/") else dense
                rejected = sum(v for r in runs for k, v in r["counters"].items() if k.startswith("rejected_"))
                pois[label] = {"shift_points": round(100 * (_mean([r["final_accuracy"] for r in runs])
                                                            - _mean([r["final_accuracy"] for r in ref])), 3),
                               "rejected": int(rejected), "reasons": {k: int(sum(r["counters"].get(k, 0) for r in runs))
                               for k in sorted({k for r in runs for k in r["counters"] if k.startswith("rejected_")})}}
        out["poison"] = {"clean_robust_accuracy": _mean([r["final_accuracy"] for r in clean]),
                         "clean_rejected": int(sum(v for r in clean for k, v in r["counters"].items()
                                                   if k.startswith("rejected_"))), "runs": pois,
                         "within_1_point": all(abs(v["shift_points"]) <= 1.0 for k, v in pois.items()
                                               if k.startswith("robust/"))}
    if results["fedfusion"]:
        ff = results["fedfusion"]
        names = [k for k in ff[0] if isinstance(ff[0][k], dict) and "OA" in ff[0][k]]
        table = {n: {m: _mean([f[n][m] for f in ff]) for m in ("OA", "AA", "kappa")} for n in names}
        beats = all(table["fedfusion"][m] > max(table["spectral"][m], table["elevation"][m])
                    for m in table["fedfusion"])
        out["fedfusion"] = {"metrics": table, "beats_each_single_modality": bool(beats),
                            "exchange_ratio": _mean([f["fedfusion"]["ratio"] for f in ff]),
                            "steps": ff[0]["fedfusion"]["steps"]}
        if "full_exchange" in table:
            out["fedfusion"]["full_exchange_steps"] = ff[0]["full_exchange"]["steps"]
    return out


def format_summary(results: Dict) -> str:
    """A text report of :func:`summarize` (computed if missing)."""
    s = results.get("summary") or summarize(results)
    lines = [f"{'sync FedAvg':<12} {'final acc':>9} {'gap pt':>7} {'uplink B':>12} {'vs dense':>8} "
             f"{'acc @ RS-DGC bytes':>18} {'orbit h':>8}"]
    for k, c in s["compression"].items():
        lines.append(f"{k:<12} {c['final_accuracy']:>9.4f} {c['gap_points']:>+7.2f} {c['uplink_bytes']:>12,.0f} "
                     f"{c['vs_dense']:>7.1f}x {c['accuracy_at_rsdgc_bytes']:>18.4f} {c['orbit_hours']:>8.1f}")
    if "rsdgc_verdict" in s:
        lines.append(s["rsdgc_verdict"]["text"])
    if "async" in s:
        a = s["async"]
        for p in a["per_seed"]:
            reach = [f"{t / 3600:.1f} h (x{x:.2f})" if t else "never" for t, x in
                     ((p["async_s"], p["speedup"]), (p["async_s_mean5"], p["speedup_mean5"]))]
            lines.append(f"async FedBuff: sync dense reached {p['target']:.4f} in {p['sync_s'] / 3600:.1f} h; "
                         f"async first in {reach[0]}, mean of 5 in {reach[1]}; at {p['sync_s'] / 3600:.1f} h "
                         f"{p['async_accuracy_at_sync_time']:.4f}; {p['versions']} versions, staleness "
                         f"{p['mean_staleness']:.2f}")
        lines.append(f"async mean speedup: {a['mean_speedup']} (mean of 5: {a['mean_speedup_mean5']})")
    if "poison" in s:
        p = s["poison"]
        lines.append(f"robust FedAvg, clean: {p['clean_robust_accuracy']:.4f} ({p['clean_rejected']} rejected)")
        for k, v in p["runs"].items():
            lines.append(f"  {k:<14} shift {v['shift_points']:+.2f} pt, rejected {v['rejected']} {v['reasons']}")
        lines.append(f"  robust runs within 1 point: {p['within_1_point']}")
    if "fedfusion" in s:
        f = s["fedfusion"]
        for n, m in f["metrics"].items():
            lines.append(f"{n:<14} OA {m['OA']:.4f}  AA {m['AA']:.4f}  kappa {m['kappa']:.4f}")
        lines.append(f"FedFusion beats each modality: {f['beats_each_single_modality']}; feature exchange "
                     f"{f['exchange_ratio']:.2f}x smaller than full shallow features; steps/window {f['steps']}")
    return "\n".join(lines)


def plot(results: Dict, path: str) -> None:
    """Accuracy vs orbit time and vs uplink bytes, poisoning and FedFusion panels, as one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(2, 2, figsize=(13, 9))
    labels = [f"sync/{k}" for k in results["scenario"]["compressors"]]
    labels += [f"async/{k}" for k in (results["scenario"]["async"] or {}).get("compressors", [])]
    low = 1.0
    for i, label in enumerate(labels):
        for j, run in enumerate(_runs(results, label)):
            rec = np.array(run["records"], dtype=float)[1:]          # from the first aggregation on
            kw = dict(color=f"C{i}", alpha=1.0 if j == 0 else 0.3, lw=1.2, label=label if j == 0 else None)
            ax[0, 0].plot(rec[:, T] / 3600, rec[:, ACC], **kw)
            ax[0, 1].plot(rec[:, UPLINK], rec[:, ACC], **kw)
            low = min(low, float(np.min(rec[:, ACC], initial=1.0)))
    dense = _runs(results, "sync/dense")
    if dense:
        ax[0, 0].axhline(dense[0]["final_accuracy"], color="k", ls=":", lw=1,
                         label=f"sync dense final (seed {dense[0]['seed']})")
    ax[0, 0].set(xlabel="orbit time (h)", ylabel="test accuracy", title="accuracy vs orbit time (contact plan)")
    ax[0, 1].set(xscale="log", xlabel="cumulative uplink bytes (sat -> ground)", ylabel="test accuracy",
                 title="accuracy vs uplink bytes")
    for a in ax[0]:
        a.set_ylim(max(0.0, low - 0.02), 1.0)
        a.grid(alpha=0.3)
        a.legend(fontsize=8, loc="lower right")
    s = results.get("summary") or summarize(results)
    if "poison" in s:
        names = ["sync/dense", "robust/clean"] + list(s["poison"]["runs"])
        vals = [_mean([r["final_accuracy"] for r in _runs(results, n)]) for n in names]
        ax[1, 0].bar(names, vals, color=["C0", "C2"] + ["C3"] * (len(names) - 2))
        ax[1, 0].set_ylim(0, 1.12)
        for x, n in enumerate(names):
            rej = s["poison"]["runs"].get(n, {}).get("rejected")
            ax[1, 0].text(x, vals[x] + 0.01, f"{vals[x]:.3f}" + (f"\n{rej} rejected" if rej is not None else ""),
                          ha="center", fontsize=8)
    ax[1, 0].set(title="one poisoned satellite (final accuracy)", ylabel="test accuracy")
    if "fedfusion" in s:
        table = s["fedfusion"]["metrics"]
        for i, m in enumerate(("OA", "AA", "kappa")):
            ax[1, 1].bar(np.arange(len(table)) + 0.27 * (i - 1), [table[n][m] for n in table], 0.27, label=m)
        ax[1, 1].set_xticks(np.arange(len(table)), list(table))
        ax[1, 1].set_ylim(0.4, 1)
        ax[1, 1].legend(fontsize=8)
    ax[1, 1].set(title="FedFusion over ISL windows vs single modality")
    fig.suptitle(f"satedge FL: {results['scenario']['name']} (seeds {results['scenario']['seeds']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finite(obj):
    """``obj`` with every NaN or infinite float replaced by None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_report(results: Dict, out_dir: str) -> List[str]:
    """Add the summary and write ``fl.json`` and ``fl.png`` to ``out_dir``; return the paths."""
    os.makedirs(out_dir, exist_ok=True)
    results["summary"] = summarize(results)
    paths = [os.path.join(out_dir, "fl.json"), os.path.join(out_dir, "fl.png")]
    with open(paths[0], "w") as fh:
        json.dump(_finite(results), fh, indent=1, allow_nan=False)
    plot(results, paths[1])
    return paths
