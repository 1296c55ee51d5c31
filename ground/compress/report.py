"""Markdown report with PNG plots from one or more ``results.json`` (``satedge ground report``).

Per model and track: what the data are, the goal checks (INT8 drop, distillation, pruning +
INT8, TDDS vs random), an accuracy table (every metric on every split and the drop against
FP32 in points), a cost table (parameters, theoretical and real size, FLOPs, BOPs and their
reduction, ONNX Runtime CPU latency, Q/DQ and ONNX Runtime-vs-torch checks, opset and
targets), the hybrid-precision layer table and the plots of :mod:`ground.compress.plots`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

from ground.compress import plots, summary

CONVENTIONS = """\
**Conventions.** MACs count Conv and Linear layers for one input sample (a 64 x 64 cloud tile, one
land-cover patch, one 64 x 64 hyperspectral cube); FLOPs = 2 x MACs; BOPs = sum over layers of
MACs x weight bits x activation bits (32/32 FP32, 16/16 FP16, 8/8 INT8, n/8 for a simulated n-bit
k-means layer). Theoretical size: weights at their width plus biases at 32 bits (16 for FP16;
k-means layers add their 2^n float32 centroids), BatchNorm folded. File size: the ONNX file
(FP16 layers are stored in float32 and converted by TensorRT at build time, so their file is
larger than their theoretical size). Accuracy of exported variants is measured on the ONNX file
in ONNX Runtime; simulated (`sim`) and coreset variants in torch. Drop = FP32 minus variant, in
points (x100); for real data without labels, 100 x (1 - agreement with FP32). Latency: ONNX Runtime
CPU, interleaved rounds, median and p90 per call. ONNX Runtime vs torch: the torch model with
identical fake-quant numerics, max |difference| within atol + rtol x max|reference|.
"""


def _f(x, nd=4):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _kb(b):
    return "-" if b is None else f"{b / 1024:.1f}"


def _goal_lines(track: Dict) -> List[str]:
    out = []
    d = summary.int8_drops(track)
    if d["variants"]:
        best = d["best"]
        parts = [f"{k}: {_f(v['worst_labelled'], 2)}" for k, v in d["variants"].items()]
        verdict = "meets" if d["meets_goal"] else "MISSES"
        out.append(f"- **INT8 drop** (worst labelled split, points): {'; '.join(parts)}. Best: `{best}`, "
                   f"{verdict} the <= {summary.INT8_DROP_GOAL:g} point goal.")
    for r in summary.distillation(track):
        verdict = "matches or beats" if (r["gain_points"] or 0) >= 0 else "is BELOW"
        seeds = (f", mean of {r['seeds']} seeds, KD ahead in {r['wins']}/{r['seeds']} (per seed KD "
                 + ", ".join(_f(x) for x in r["kd_seeds"]) + "; no teacher "
                 + ", ".join(_f(x) for x in r["noteacher_seeds"]) + ")") if r["seeds"] > 1 else ""
        out.append(f"- **Distillation** `{r['student']}` ({r['params']} params; teacher `{r['teacher']}`, "
                   f"{r['teacher_params']} params) on {r['split']}: {_f(r['kd'])} vs {_f(r['noteacher'])} without "
                   f"a teacher ({_f(r['gain_points'], 2)} points{seeds}): the distilled student {verdict} the "
                   f"no-teacher student.")
    for r in summary.pruning(track):
        if r["split"] in summary.labelled(track) or not summary.labelled(track):
            out.append(f"- **Pruning** `{r['variant']}` ({r['label']}) on {r['split']}: {track['primary']} "
                       f"{_f(r['metric'])} (drop {_f(r['drop_points'], 2)} points), BOPs reduced "
                       f"{r['bops_reduction']:.1f}x (MACs {r['macs_reduction']:.2f}x) against FP32.")
    for r in summary.tdds(track):
        seeds = f", mean of {r['seeds']} seeds, TDDS ahead in {r['wins']}/{r['seeds']}" if r["seeds"] > 1 else ""
        out.append(f"- **TDDS** {round(100 * r['fraction'])} % ({r['samples']} samples) on {r['split']}: "
                   f"{_f(r['tdds'])} vs random {_f(r['random'])} ({_f(r['gain_points'], 2)} points{seeds}).")
    bad = {k: v for k, v in summary.checks(track).items() if v["qdq"] is False or not v["verify"]}
    n = len(summary.checks(track))
    out.append(f"- **Checks**: {n - len(bad)}/{n} exported ONNX files pass the Q/DQ gate (zero points 0, per-channel "
               f"INT8 weights) and match torch within tolerance" + (f"; FAILED: {sorted(bad)}" if bad else "."))
    return out


def _accuracy_table(track: Dict) -> List[str]:
    splits = list(track["splits"])
    cols = []
    for s in splits:
        if track["splits"][s]["labelled"]:
            keys = track["metric_names"]
        else:
            keys = sorted({k for v in track["variants"] for k in v["metrics"].get(s, {})})
        cols += [(s, k) for k in keys]
    head = "| variant | kind | prec | " + " | ".join(f"{s} {k}" for s, k in cols) + " | " + \
           " | ".join(f"drop {s}" for s in splits) + " |"
    lines = [head, "|" + " --- |" * (3 + len(cols) + len(splits))]
    for v in track["variants"]:
        vals = [_f(v["metrics"].get(s, {}).get(k)) for s, k in cols]
        drops = [_f(summary.drop_points(track, v, s), 2) for s in splits]
        lines.append(f"| {v['name']} | {v['kind']} | {v['label']} | " + " | ".join(vals) + " | " + " | ".join(drops) + " |")
    return lines


def _cost_table(track: Dict) -> List[str]:
    fp = summary.variants(track)["fp32"]["cost"]
    lines = ["| variant | params | theor. KB | file KB | MFLOPs | MBOPs | BOPs x | latency ms (med / p90) | "
             "opset | targets | Q/DQ | ORT-torch max diff |", "|" + " --- |" * 12]
    for v in track["variants"]:
        c, lat = v["cost"], v.get("latency")
        check = "-" if not v.get("onnx") else ("ok" if v.get("qdq", {}).get("ok") else "n/a (float)")
        diff = "-" if not v.get("verify") else (f"{max(o['max_abs'] for o in v['verify']['outputs'].values()):.1e}"
                                                + ("" if v["verify"]["ok"] else " FAIL"))
        lines.append(f"| {v['name']} | {c['params']} | {c['size_bytes'] / 1024:.1f} | {_kb(v.get('file_bytes'))} | "
                     f"{c['flops'] / 1e6:.2f} | {c['bops'] / 1e6:.0f} | {fp['bops'] / max(c['bops'], 1):.1f} | "
                     + (f"{lat['median_ms']:.3f} / {lat['p90_ms']:.3f}" if lat else "-")
                     + f" | {v.get('opset', '-')} | {', '.join(v.get('targets', [])) or '-'} | {check} | {diff} |")
    return lines


def _hybrid_table(track: Dict) -> List[str]:
    out = []
    for v in track["variants"]:
        if v["kind"] != "hybrid":
            continue
        info = v["info"]
        out += [f"Hybrid `{v['name']}`: validation {track['primary']} {_f(info['val_metric'])}, whole-plan drop "
                f"{_f(info['val_drop_points'], 2)} points; per layer (sensitivity = drop with only that layer INT8; "
                f"GHOST bits = smallest n with k-means error < {info['kmeans_threshold']}"
                + (f"; INT8 needs output rel. error <= {info['max_rel_error']:g}" if info.get("max_rel_error") else "")
                + "):", "",
                "| layer | weights | sensitivity (points) | output rel. error | GHOST bits | precision |",
                "| --- | --- | --- | --- | --- | --- |"]
        for name, row in info["layers"].items():
            out.append(f"| {name} | {row['params']} | {row['drop_points']:.3f} | {row['rel_error']:.2e} | "
                       f"{row['ghost_bits'] if row['ghost_bits'] is not None else '>8'} | {row['decision']} |")
        out.append("")
    return out


def track_section(doc: Dict, track_name: str, track: Dict, out_dir: Path) -> List[str]:
    """Markdown lines of one track, writing its PNGs into ``out_dir``."""
    tag = f"{doc['name']}-{track_name}"
    title = f"{doc['model']} / {track_name} ({doc['name']})"
    lines = [f"## {title}", "", f"Training: {track['train']['note']}. Evaluation: "
             + "; ".join(f"`{k}` {s['note']} ({s['n']})" for k, s in track["splits"].items())
             + f". Track time {track['seconds']:.0f} s.", ""]
    lines += _goal_lines(track) + ["", "### Accuracy", ""] + _accuracy_table(track)
    lines += ["", "### Cost", ""] + _cost_table(track) + [""]
    lines += _hybrid_table(track)
    for kind, fn in (("accuracy_bops", plots.accuracy_bops), ("latency", plots.latency),
                     ("precision_map", plots.precision_map), ("tdds", plots.tdds)):
        p = fn(track, out_dir / f"{tag}-{kind}.png", f"{title}: {kind.replace('_', ' ')}")
        if p is not None:
            lines += [f"![{kind}]({p.name})", ""]
    return lines


# What write_report reads from the top of a results.json: key -> (type(s), what it should be).
_TOP_KEYS = {"name": (str, "a string"), "started": (str, "a string"), "tracks": (dict, "an object of tracks"),
             "machine": (dict, "an object")}
_MACHINE_KEYS = ("cpu", "cores", "torch", "onnxruntime")


def _read_results(spec) -> dict:
    """One ``results.json`` (or the folder holding it), checked for what the report needs, else ``UserError``."""
    from engines.errors import UserError
    p = Path(spec)
    p = p / "results.json" if p.is_dir() else p
    if not p.is_file():
        raise UserError(f"no results at {p}; run 'satedge ground compress --recipe RECIPE' first")
    fix = "give the results.json that 'satedge ground compress' wrote (or its folder)"
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"results file {p} is not a text file; {fix}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"results file {p} is not JSON ({exc}); {fix}") from None
    except OSError as exc:
        raise UserError(f"cannot read results file {p}: {exc.strerror or exc}") from None
    if not isinstance(doc, dict):
        raise UserError(f"results file {p} holds a JSON {type(doc).__name__}, not an object; {fix}")
    for key, (kind, what) in _TOP_KEYS.items():
        if key not in doc:
            raise UserError(f"results file {p} has no {key!r} key; {fix}")
        if not isinstance(doc[key], kind):
            raise UserError(f"results file {p}: {key!r} should be {what}, not {type(doc[key]).__name__}; {fix}")
    missing = [k for k in _MACHINE_KEYS if k not in doc["machine"]]
    if missing:
        raise UserError(f"results file {p}: machine lacks {missing}; {fix}")
    if not isinstance(doc.get("seconds"), (int, float)) or isinstance(doc.get("seconds"), bool):
        raise UserError(f"results file {p}: 'seconds' should be a number; {fix}")
    bad = [k for k, v in doc["tracks"].items() if not isinstance(v, dict)]
    if bad:
        raise UserError(f"results file {p}: tracks {bad} are not objects; {fix}")
    doc["_path"] = str(p)
    return doc


def write_report(results: Sequence, out_dir, title: str = "satedge compression report") -> Path:
    """Write ``REPORT.md`` and its PNGs into ``out_dir`` from ``results.json`` files; returns the path."""
    from engines.errors import UserError

    from engines.outpaths import output_folder

    docs = [_read_results(r) for r in results]     # every input checked before anything is written
    out = Path(output_folder(out_dir, "--out"))
    m = docs[0]["machine"]
    lines = [f"# {title}", "", f"Machine: {m['cpu']}, {m['cores']} cores, no GPU used; torch {m['torch']}, "
             f"ONNX Runtime {m['onnxruntime']}. Runs: " + ", ".join(f"`{d['name']}` ({d['started']}, "
                                                                    f"{d['seconds']:.0f} s)" for d in docs), "",
             CONVENTIONS]
    for d in docs:
        for name, track in d["tracks"].items():
            try:
                lines += track_section(d, name, track, out)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                raise UserError(f"results file {d['_path']}: track {name!r} is not what 'satedge ground compress' "
                                f"writes ({type(exc).__name__}: {exc}); rerun the recipe to rewrite it") from None
    path = out / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


__all__ = ["write_report", "track_section"]
