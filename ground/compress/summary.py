"""The comparisons a report states, computed from one track's results (``results.json``).

* **INT8 drop**: FP32 minus each INT8 variant of the unpruned model (``ptq-*``, ``qat``,
  ``hybrid``), in points (x100) of the primary metric, per labelled split; for unlabelled splits
  the agreement with the FP32 model. Goal: at most 1 point for the best full-INT8 variant.
* **Distillation**: the distilled student against the same student without a teacher.
* **Pruning + INT8**: BOPs of FP32 over BOPs of each quantized descendant of a pruned variant,
  with its accuracy and drop.
* **TDDS**: coreset against random subset of the same size, per fraction.
"""
from __future__ import annotations

from typing import Dict, List, Optional

INT8_DROP_GOAL = 1.0


def variants(track: Dict) -> Dict[str, Dict]:
    """Variant name -> record."""
    return {v["name"]: v for v in track["variants"]}


def labelled(track: Dict) -> List[str]:
    """Names of the labelled evaluation splits."""
    return [k for k, s in track["splits"].items() if s["labelled"]]


def primary(track: Dict, record: Dict, split: str) -> Optional[float]:
    """Primary metric of a variant on a split (``agreement`` with FP32 for unlabelled splits)."""
    m = record["metrics"].get(split, {})
    key = track["primary"] if track["splits"][split]["labelled"] else "agreement"
    return m.get(key)


def drop_points(track: Dict, record: Dict, split: str, metric: Optional[str] = None) -> Optional[float]:
    """FP32 minus the variant, in points (x100), on one split."""
    fp = variants(track)["fp32"]
    if not track["splits"][split]["labelled"]:
        a = primary(track, record, split)
        return None if a is None else 100 * (1.0 - a)
    key = metric or track["primary"]
    a, b = fp["metrics"][split].get(key), record["metrics"][split].get(key)
    return None if a is None or b is None else 100 * (a - b)


def lineage(track: Dict, name: str) -> List[str]:
    """The chain of parents of a variant, itself first."""
    vs, out = variants(track), [name]
    while vs[out[-1]].get("parent") in vs:
        out.append(vs[out[-1]]["parent"])
    return out


def int8_drops(track: Dict) -> Dict:
    """Per INT8 variant of the unpruned FP32 model: drop per split and the worst labelled drop."""
    out = {}
    for v in track["variants"]:
        if v["label"] != "int8" or "fp32" != v.get("parent"):
            continue
        d = {s: drop_points(track, v, s) for s in track["splits"]}
        worst = max((x for s, x in d.items() if s in labelled(track) and x is not None), default=None)
        out[v["name"]] = {"drops": d, "worst_labelled": worst}
    best = min((k for k in out if out[k]["worst_labelled"] is not None), key=lambda k: out[k]["worst_labelled"],
               default=None)
    return {"variants": out, "best": best,
            "meets_goal": best is not None and out[best]["worst_labelled"] <= INT8_DROP_GOAL}


def distillation(track: Dict) -> List[Dict]:
    """Distilled student vs its no-teacher control, per labelled split.

    With several seeds (``info["per_seed"]``) the values are means over seeds (measured in torch);
    otherwise the kept variants' own metrics.
    """
    vs, rows = variants(track), []
    for v in track["variants"]:
        if v["kind"] != "distill" or f"{v['name']}-noteacher" not in vs:
            continue
        c, info = vs[f"{v['name']}-noteacher"], v["info"]
        seeds = len(info.get("seeds", [])) or 1
        for s in labelled(track):
            if seeds > 1:
                a, b = info["mean"]["kd"].get(s), info["mean"]["noteacher"].get(s)
                kd_seeds = [r[s] for r in info["per_seed"]["kd"]]
                nt_seeds = [r[s] for r in info["per_seed"]["noteacher"]]
            else:
                a, b = primary(track, v, s), primary(track, c, s)
                kd_seeds, nt_seeds = [a], [b]
            rows.append({"student": v["name"], "split": s, "kd": a, "noteacher": b, "seeds": seeds,
                         "kd_seeds": kd_seeds, "noteacher_seeds": nt_seeds,
                         "wins": sum(x >= y for x, y in zip(kd_seeds, nt_seeds)),
                         "gain_points": None if a is None or b is None else 100 * (a - b),
                         "params": v["cost"]["params"], "teacher": info.get("teacher"),
                         "teacher_params": info.get("teacher_params")})
    return rows


def pruning(track: Dict) -> List[Dict]:
    """Pruned variants and their quantized descendants: BOPs reduction and accuracy."""
    vs, fp, rows = variants(track), variants(track)["fp32"], []
    for v in track["variants"]:
        chain = lineage(track, v["name"])
        if not any(vs[n]["kind"] == "prune" for n in chain):
            continue
        for s in track["splits"]:
            rows.append({"variant": v["name"], "label": v["label"], "split": s, "metric": primary(track, v, s),
                         "drop_points": drop_points(track, v, s), "bops": v["cost"]["bops"],
                         "bops_reduction": fp["cost"]["bops"] / max(v["cost"]["bops"], 1),
                         "macs_reduction": fp["cost"]["macs"] / max(v["cost"]["macs"], 1)})
    return rows


def tdds(track: Dict) -> List[Dict]:
    """TDDS coreset vs random subset per fraction and labelled split (means over seeds when several)."""
    vs, rows = variants(track), []
    for v in track["variants"]:
        if v["kind"] != "tdds":
            continue
        r = vs.get(v["name"].replace("tdds-", "random-", 1))
        for s in labelled(track):
            if r is not None and len(v["info"].get("per_seed", [])) > 1:
                a, b = v["info"]["mean"].get(s), r["info"]["mean"].get(s)
                ta = [x[s] for x in v["info"]["per_seed"]]
                tb = [x[s] for x in r["info"]["per_seed"]]
            else:
                a, b = primary(track, v, s), primary(track, r, s) if r else None
                ta, tb = [a], [b]
            rows.append({"fraction": v["info"]["fraction"], "samples": v["info"]["samples"], "split": s, "tdds": a,
                         "random": b, "seeds": len(ta), "tdds_seeds": ta, "random_seeds": tb,
                         "wins": sum(x is not None and y is not None and x >= y for x, y in zip(ta, tb)),
                         "gain_points": None if a is None or b is None else 100 * (a - b)})
    return rows


def checks(track: Dict) -> Dict:
    """Q/DQ and ONNX Runtime-vs-torch outcomes of every exported variant."""
    out = {}
    for v in track["variants"]:
        if v.get("onnx"):
            out[v["name"]] = {"qdq": (v.get("qdq") or {}).get("ok", None), "verify": v["verify"]["ok"],
                              "max_abs": max(o["max_abs"] for o in v["verify"]["outputs"].values())}
    return out
