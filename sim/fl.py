"""``satedge sim fl SCENARIO``: federated learning across a simulated constellation, in orbit time.

A scenario (YAML, ``sim/scenarios/fl-*.yaml``) names a small Walker constellation and 1-3 ground
stations (the contact plan of :mod:`sim.contacts`), a land-cover task (spectral patches of
:mod:`ground.data.scenes` scenes, one non-IID split across the satellites) and the experiments.
For every seed, on the same split and the same contact plan (:mod:`sim.fl_rounds`):

* ``compressors``: synchronous FedAvg rounds with each compressor (dense, top-k, DGC, RS-DGC...);
* ``async``: buffered asynchronous aggregation (FedBuff), dense and with the compressors listed,
  for as long as the dense synchronous run took;
* ``poison``: one satellite sends scaled or NaN updates, with robust aggregation on (and scaled,
  with it off, for contrast);
* ``fedfusion``: two satellites (spectral, elevation) train FedFusion over their ISL windows
  (:mod:`ground.fl.fedfusion`), against each modality alone.

:func:`run_experiment` returns a JSON-ready dict; :mod:`sim.fl_report` adds the verdicts and
writes ``fl.json`` and ``fl.png``. The result depends only on the scenario and its seeds.
"""
from __future__ import annotations

import copy
import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from engines.errors import UserError
from sim.fl_rounds import OrbitRounds, Pass

SCENARIOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios")
DEFAULTS: Dict = {
    "name": "fl", "seeds": [0], "rounds": 20,
    "constellation": {"walker": "97.6:6/3/1@550", "start": "2025-03-20T00:00:00Z", "hours": 48.0, "step_s": 20.0,
                      "stations": "Svalbard,Weilheim"},
    "link": {"to_ground_bps": 9600.0, "to_sat_bps": 9600.0, "min_fit_fraction": 0.25},
    "task": {"scenes": 24, "test_scenes": 8, "size": 64, "per_scene": 250, "patch": 7, "split": "dirichlet",
             "alpha": 0.3, "min_size": 50, "hidden": 128},
    "training": {"lr": 0.1, "local_steps": 20, "batch_size": 32, "train_s": 300.0},
    "compressors": {"dense": {"name": "dense"}, "rsdgc": {"name": "rsdgc", "ratio": 0.02}},
    "async": None, "poison": None, "fedfusion": None,
}
SECTION_DEFAULTS = {
    "async": {"buffer_size": 3, "max_staleness": 10, "server_lr": 1.0, "compressors": ["dense"]},
    "poison": {"kinds": ["scale", "nan"], "scale": -10.0, "satellite": 0, "max_norm_factor": 3.0},
    "fedfusion": {"walker": "97.6:24/12/0@550", "pair": ["W01-01", "W02-01"], "max_range_km": 1000.0, "hours": 12.0,
                  "step_s": 10.0, "windows": 8, "link_bps": 256e3, "compute_s": 0.5, "max_steps": 40, "width": 16,
                  "energy": 0.75, "scenes": 16, "test_scenes": 8, "size": 64, "per_scene": 250, "patch": 7,
                  "compare_full": False},
}


def _merge(base: Dict, over: Dict, where: str) -> Dict:
    if not isinstance(over, dict):
        raise UserError(f"scenario {where}: {over!r} is not a mapping; known keys: {', '.join(sorted(base))}")
    unknown = sorted(set(over) - set(base))
    if unknown:
        raise UserError(f"scenario {where}: unknown key(s) {unknown}; known: {', '.join(sorted(base))}")
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v, f"{where}.{k}") if isinstance(base[k], dict) and k != "compressors" else v
    return out


POISON_KINDS = ("scale", "nan")
SPLITS = ("dirichlet", "scenes", "iid")


def _whole(value, where: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"scenario {where}: {value!r}: give a whole number >= {low}")
    return value


def _number(value, where: str, low: float = 0.0, strict: bool = True, high: Optional[float] = None) -> float:
    import math
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and (high is None or value <= high)
    if not ok:
        rng = f"{'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        raise UserError(f"scenario {where}: {value!r}: give a number {rng}")
    return float(value)


def check_scenario(cfg: Dict, where: str) -> None:
    """Every value of a merged FL scenario, before any run: ``UserError`` naming the key path and the fix."""
    from onboard.fl.compressors import make_compressor
    from sim.orbits import load_stations, walker_spec
    if not isinstance(cfg["name"], str) or not cfg["name"]:
        raise UserError(f"scenario {where}: name: {cfg['name']!r}: give a non-empty string")
    seeds = cfg["seeds"] if isinstance(cfg["seeds"], list) else [cfg["seeds"]]
    if not seeds:
        raise UserError(f"scenario {where}: seeds: give at least one whole number >= 0")
    for i, s in enumerate(seeds):
        _whole(s, f"{where}: seeds[{i}]", 0)
    _whole(cfg["rounds"], f"{where}: rounds", 1)
    c = cfg["constellation"]
    _number(c["hours"], f"{where}: constellation.hours")
    _number(c["step_s"], f"{where}: constellation.step_s")
    n_sats = len(walker_spec(c["walker"], c["start"]).names)
    load_stations(c["stations"])
    link = cfg["link"]
    _number(link["to_ground_bps"], f"{where}: link.to_ground_bps")
    _number(link["to_sat_bps"], f"{where}: link.to_sat_bps")
    _number(link["min_fit_fraction"], f"{where}: link.min_fit_fraction", high=1.0)
    t = cfg["task"]
    for key in ("scenes", "test_scenes", "size", "per_scene", "patch", "hidden"):
        _whole(t[key], f"{where}: task.{key}", 1)
    _whole(t["min_size"], f"{where}: task.min_size", 0)
    _number(t["alpha"], f"{where}: task.alpha")
    if t["split"] not in SPLITS:
        raise UserError(f"scenario {where}: task.split: {t['split']!r}: choose one of {', '.join(SPLITS)}")
    tr = cfg["training"]
    _number(tr["lr"], f"{where}: training.lr")
    _number(tr["train_s"], f"{where}: training.train_s")
    _whole(tr["local_steps"], f"{where}: training.local_steps", 1)
    _whole(tr["batch_size"], f"{where}: training.batch_size", 1)
    if not isinstance(cfg["compressors"], dict):
        raise UserError(f"scenario {where}: compressors: give a mapping label -> {{name: ..., options}}")
    for label, comp in cfg["compressors"].items():
        if not isinstance(comp, dict) or not isinstance(comp.get("name"), str):
            raise UserError(f"scenario {where}: compressors.{label}: {comp!r}: give a mapping with a 'name' "
                            "(e.g. {name: topk, ratio: 0.02})")
        try:
            make_compressor(comp["name"], **{k: v for k, v in comp.items() if k != "name"})
        except UserError as exc:
            raise UserError(f"scenario {where}: compressors.{label}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise UserError(f"scenario {where}: compressors.{label}: {' '.join(str(exc).split())}") from None
    a = cfg["async"]
    if a is not None:
        _whole(a["buffer_size"], f"{where}: async.buffer_size", 1)
        _whole(a["max_staleness"], f"{where}: async.max_staleness", 0)
        _number(a["server_lr"], f"{where}: async.server_lr")
        if not isinstance(a["compressors"], list):
            raise UserError(f"scenario {where}: async.compressors: give a list of compressor labels")
    p = cfg["poison"]
    if p is not None:
        kinds = p["kinds"]
        if not isinstance(kinds, list) or not kinds or any(k not in POISON_KINDS for k in kinds):
            raise UserError(f"scenario {where}: poison.kinds: {kinds!r}: give a list of one or more of "
                            f"{', '.join(POISON_KINDS)}")
        _number(p["scale"], f"{where}: poison.scale", low=float("-inf"))
        _number(p["max_norm_factor"], f"{where}: poison.max_norm_factor")
        if isinstance(p["satellite"], bool) or not isinstance(p["satellite"], int) \
                or not 0 <= p["satellite"] < n_sats:
            raise UserError(f"scenario {where}: poison.satellite: {p['satellite']!r}: give a satellite index from 0 "
                            f"to {n_sats - 1} (the constellation has {n_sats})")
    f = cfg["fedfusion"]
    if f is not None:
        for key in ("windows", "max_steps", "width", "scenes", "test_scenes", "size", "per_scene", "patch"):
            _whole(f[key], f"{where}: fedfusion.{key}", 1)
        for key in ("max_range_km", "hours", "step_s", "link_bps"):
            _number(f[key], f"{where}: fedfusion.{key}")
        _number(f["compute_s"], f"{where}: fedfusion.compute_s", strict=False)
        _number(f["energy"], f"{where}: fedfusion.energy", high=1.0)
        names = walker_spec(f["walker"], c["start"]).names
        if not isinstance(f["pair"], list) or len(f["pair"]) != 2 or [p for p in f["pair"] if p not in names]:
            raise UserError(f"scenario {where}: fedfusion.pair: {f['pair']!r}: give two satellite names of "
                            f"{f['walker']} (names look like {names[0]})")


def load_scenario(spec: str) -> Dict:
    """A scenario from a YAML path, or a name in ``sim/scenarios`` (``fl-quick``), with defaults filled in."""
    import yaml
    path = spec if os.path.exists(spec) else os.path.join(SCENARIOS, f"{spec}.yaml")
    names = sorted(f[:-5] for f in os.listdir(SCENARIOS) if f.endswith(".yaml"))
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except UnicodeDecodeError:
        raise UserError(f"FL scenario {spec!r} is not a text file; give a YAML file or one of {names}") from None
    except OSError as exc:
        raise UserError(f"cannot read FL scenario {spec!r} ({exc.strerror or exc}); give a YAML file or one of "
                        f"{names}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"cannot parse FL scenario {spec!r} ({' '.join(str(exc).split())}); give a YAML file or "
                        f"one of {names}") from None
    if raw is None:
        raise UserError(f"FL scenario {spec!r} is empty; give a YAML mapping (see sim/scenarios/fl-quick.yaml)")
    if not isinstance(raw, dict):
        raise UserError(f"FL scenario {spec!r} holds a {type(raw).__name__}, not a mapping of settings; see "
                        "sim/scenarios/fl-quick.yaml")
    cfg = _merge(DEFAULTS, raw, os.path.basename(path))
    for key, base in SECTION_DEFAULTS.items():
        if cfg[key] is not None:
            cfg[key] = _merge(base, cfg[key], key)
    check_scenario(cfg, os.path.basename(path))
    cfg["seeds"] = [int(x) for x in np.atleast_1d(cfg["seeds"])]
    if "dense" not in cfg["compressors"]:
        raise UserError("scenario compressors: a 'dense' entry is required (the FedAvg baseline)")
    unknown = sorted(set((cfg["async"] or {}).get("compressors", [])) - set(cfg["compressors"]))
    if unknown:
        raise UserError(f"scenario async.compressors: {unknown} are not in compressors "
                        f"({', '.join(cfg['compressors'])})")
    return cfg


def passes_from_plan(plan, sat_names) -> List[List[Pass]]:
    """Passes of each satellite (in ``sat_names`` order), sorted by start; rates from the plan."""
    index = {name: i for i, name in enumerate(sat_names)}
    up = {(c["dest"], c["source"], round(c["start"], 3)): c["rate_bps"] for c in plan.contacts if c["kind"] == "up"}
    out: List[List[Pass]] = [[] for _ in sat_names]
    for c in plan.contacts:
        if c["kind"] == "down" and c["source"] in index:
            out[index[c["source"]]].append(Pass(
                index[c["source"]], c["dest"], float(c["start"]), float(c["end"]), float(c["rate_bps"]),
                float(up.get((c["source"], c["dest"], round(c["start"], 3)), 0.0)), float(c["owlt"])))
    return [sorted(p, key=lambda q: q.start) for p in out]


def build_plan(cfg: Dict):
    """The contact plan (ground stations only) and each satellite's passes."""
    from sim.contacts import ContactPlan
    from sim.orbits import load_stations, walker_spec
    from sim.timescale import Times
    c, link = cfg["constellation"], cfg["link"]
    const = walker_spec(c["walker"], c["start"])
    plan = ContactPlan.build(const, load_stations(c["stations"]), Times.span(c["start"], c["hours"], c["step_s"]),
                             rates={"down": link["to_ground_bps"], "up": link["to_sat_bps"]}, workers=1)
    return plan, passes_from_plan(plan, const.names), const.names


def build_task(cfg: Dict, seed: int) -> Dict:
    """Spectral land-cover patches, split non-IID over the satellites; test scenes held out."""
    from ground.data.splits import dirichlet_label_split, iid_split, skew
    from ground.models.landcover import make_multimodal_set
    t, n = cfg["task"], len(cfg["_names"])
    train = make_multimodal_set(t["scenes"], 1000 * seed + 1, t["size"], t["per_scene"], t["patch"])
    test = make_multimodal_set(t["test_scenes"], 1000 * seed + 2, t["size"], t["per_scene"], t["patch"],
                               stats=train["stats"])
    x, y = train["spectral"].reshape(len(train["labels"]), -1), train["labels"]
    if t["split"] == "dirichlet":
        parts = dirichlet_label_split(y, n, t["alpha"], seed=seed, min_size=t["min_size"])
    elif t["split"] == "scenes":
        parts = [np.flatnonzero(train["scene"] % n == i) for i in range(n)]
    elif t["split"] == "iid":
        parts = iid_split(len(y), n, seed=seed)
    else:
        raise UserError(f"task.split {t['split']!r} is not one of dirichlet, scenes, iid")
    return {"clients": [(x[p], y[p]) for p in parts], "test": (test["spectral"].reshape(len(test["labels"]), -1),
            test["labels"]), "skew": skew(y, parts, 6), "sizes": [len(p) for p in parts]}


def _poisoned(delta: Dict[str, np.ndarray], poison: Dict) -> Dict[str, np.ndarray]:
    if poison["kind"] == "scale":
        return {k: (v * np.float32(poison["scale"])).astype(np.float32) for k, v in delta.items()}
    out = {k: v.copy() for k, v in delta.items()}
    for v in out.values():                                      # a sprinkling of NaNs (corrupted memory)
        v.reshape(-1)[::97] = np.nan
    return out


def run_fl(cfg: Dict, task: Dict, passes, *, seed: int, mode: str, compressor: Dict, strategy: Dict,
           poison: Optional[Dict] = None, horizon_s: float = float("inf")) -> Dict:
    """One FL run in orbit time; returns its records and counters (JSON-ready)."""
    import torch
    from ground.fl.strategies import make_strategy
    from onboard.fl.compressors import make_compressor
    from onboard.fl.learner import TorchLearner
    tr, names = cfg["training"], cfg["_names"]
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(task["clients"][0][0].shape[1], cfg["task"]["hidden"]),
                                torch.nn.ReLU(), torch.nn.Linear(cfg["task"]["hidden"], 6))
    learners = [TorchLearner(model, lr=tr["lr"], batch_size=tr["batch_size"], local_steps=tr["local_steps"],
                             seed=1000 * seed + i) for i in range(len(names))]

    def train(i, params, step):
        learners[i].set_params(params)
        fit = learners[i].fit(*task["clients"][i], {"round": step})
        bad = poison is not None and i == poison["satellite"]
        return (_poisoned(fit.update, poison) if bad else fit.update), fit.num_examples

    def evaluate(params):
        learners[0].set_params(params)
        m = learners[0].evaluate(*task["test"])
        return m["accuracy"], m["loss"]

    options = {k: v for k, v in compressor.items() if k != "name"}
    comps = [make_compressor(compressor["name"], seed=100 * seed + i, **options) for i in range(len(names))]
    strat = make_strategy(strategy["name"], **{k: v for k, v in strategy.items() if k != "name"})
    log = OrbitRounds(passes, names, learners[0].get_params(), strategy=strat, compressors=comps, train=train,
                      evaluate=evaluate, mode=mode, rounds=cfg["rounds"] if mode == "sync" else 10 ** 6,
                      train_s=tr["train_s"], horizon_s=horizon_s,
                      min_fit_fraction=cfg["link"]["min_fit_fraction"]).run()
    last = log.records[-1]
    return {"seed": seed, "mode": mode, "compressor": compressor, "strategy": strategy, "poison": poison,
            "records": [[r.time_s, r.version, r.uplink_bytes, r.broadcast_bytes, round(r.accuracy, 6),
                         round(r.loss, 6)] for r in log.records],
            "final_accuracy": round(last.accuracy, 6), "uplink_bytes": last.uplink_bytes, "time_s": last.time_s,
            "finished": log.finished, "counters": dict(sorted(log.counters.items())),
            "mean_staleness": round(float(np.mean(log.staleness)), 4) if log.staleness else 0.0}


def run_fedfusion(cfg: Dict, seed: int) -> Dict:
    """FedFusion over the ISL windows of a satellite pair vs each modality alone (OA, AA, κ, bytes)."""
    from ground.fl.fedfusion import evaluate, train_fedfusion
    from ground.models.landcover import make_multimodal_set
    from sim.contacts import isl_windows
    from sim.orbits import walker_spec
    from sim.timescale import Times
    f, start = cfg["fedfusion"], cfg["constellation"]["start"]
    const = walker_spec(f["walker"], start)
    missing = [p for p in f["pair"] if p not in const.names]
    if missing:
        raise UserError(f"fedfusion.pair: {missing} not in {f['walker']} (names look like {const.names[0]})")
    pair = [[const.names.index(p) for p in f["pair"]]]
    w = isl_windows(const, Times.span(start, f["hours"], f["step_s"]), pairs=pair, max_range_km=f["max_range_km"],
                    workers=1)
    if len(w) < f["windows"]:
        raise UserError(f"fedfusion: only {len(w)} ISL windows in {f['hours']} h; raise hours or lower windows")
    windows = [float(d) for d in w.duration[: f["windows"]]]
    train = make_multimodal_set(f["scenes"], 1000 * seed + 3, f["size"], f["per_scene"], f["patch"])
    test = make_multimodal_set(f["test_scenes"], 1000 * seed + 4, f["size"], f["per_scene"], f["patch"],
                               stats=train["stats"])
    variants = {"fedfusion": (("spectral", "elevation"), f["energy"]), "spectral": (("spectral",), f["energy"]),
                "elevation": (("elevation",), f["energy"])}
    if f["compare_full"]:
        variants["full_exchange"] = (("spectral", "elevation"), None)
    out = {"seed": seed, "windows_s": [round(d, 3) for d in windows], "end_s": round(float(w.end[f["windows"] - 1]), 3)}
    for name, (mods, energy) in variants.items():
        model, info = train_fedfusion(train, windows, modalities=mods, width=f["width"], energy=energy, seed=seed,
                                      link_bps=f["link_bps"], compute_s=f["compute_s"], max_steps=f["max_steps"])
        out[name] = {**{k: round(v, 6) for k, v in evaluate(model, test).items()},
                     **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in info.items() if k != "ranks"},
                     "ranks": {m: round(r, 3) for m, r in info["ranks"].items()}}
    return out


def run_experiment(cfg: Dict, progress: Callable[[str], None] = print) -> Dict:
    """Every run of the scenario, every seed; see the module docstring."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                       # tiny models: one thread is faster and reproducible
    try:
        plan, passes, names = build_plan(cfg)
        cfg = {**cfg, "_names": list(names)}
        out = {"scenario": {k: v for k, v in cfg.items() if not k.startswith("_")}, "satellites": list(names),
               "contacts": plan.summary(), "runs": [], "fedfusion": [], "tasks": []}
        for seed in cfg["seeds"]:
            task = build_task(cfg, seed)
            out["tasks"].append({"seed": seed, "sizes": task["sizes"], "skew": task["skew"]})
            jobs = [(f"sync/{k}", "sync", c, {"name": "fedavg"}, None) for k, c in cfg["compressors"].items()]
            if cfg["poison"]:
                p = cfg["poison"]
                robust = {"name": "fedavg", "max_norm_factor": p["max_norm_factor"]}
                jobs.append(("robust/clean", "sync", {"name": "dense"}, robust, None))
                jobs += [(f"robust/{k}", "sync", {"name": "dense"}, robust, {**p, "kind": k}) for k in p["kinds"]]
                jobs.append(("plain/scale", "sync", {"name": "dense"}, {"name": "fedavg"}, {**p, "kind": "scale"}))
            for label, mode, comp, strat, poison in jobs:
                t0 = time.perf_counter()
                run = run_fl(cfg, task, passes, seed=seed, mode=mode, compressor=comp, strategy=strat, poison=poison)
                out["runs"].append({"id": f"seed{seed}/{label}", **run})
                progress(f"seed {seed} {label:16s} acc {run['final_accuracy']:.4f}  "
                         f"uplink {run['uplink_bytes']:>11,d} B"
                         f"  orbit {run['time_s'] / 3600:6.1f} h  ({time.perf_counter() - t0:.1f} s)")
            for label in (cfg["async"] or {}).get("compressors", []):
                horizon = next(r for r in out["runs"] if r["id"] == f"seed{seed}/sync/dense")["time_s"]
                strat = {"name": "fedbuff", **{k: v for k, v in cfg["async"].items() if k != "compressors"}}
                t0 = time.perf_counter()
                run = run_fl(cfg, task, passes, seed=seed, mode="async", compressor=cfg["compressors"][label],
                             strategy=strat, horizon_s=horizon)
                out["runs"].append({"id": f"seed{seed}/async/{label}", **run})
                progress(f"seed {seed} async/{label:10s} acc {run['final_accuracy']:.4f}  uplink "
                         f"{run['uplink_bytes']:>11,d} B  versions {run['records'][-1][1]}  staleness "
                         f"{run['mean_staleness']:.2f}  ({time.perf_counter() - t0:.1f} s)")
            if cfg["fedfusion"]:
                t0 = time.perf_counter()
                out["fedfusion"].append(run_fedfusion(cfg, seed))
                ff = out["fedfusion"][-1]
                progress(f"seed {seed} fedfusion OA {ff['fedfusion']['OA']:.4f} (spectral {ff['spectral']['OA']:.4f}, "
                         f"elevation {ff['elevation']['OA']:.4f})  ({time.perf_counter() - t0:.1f} s)")
        return out
    finally:
        torch.set_num_threads(threads)


def add_fl_parser(verbs) -> None:
    """Add ``satedge sim fl SCENARIO`` to the ``sim`` side's sub-parsers."""
    from satedge_cli import non_negative_int
    p = verbs.add_parser("fl", help="federated learning across the constellation: JSON + PNG report")
    p.add_argument("scenario", help="YAML file, or a name in sim/scenarios (fl-quick, fl-full)")
    p.add_argument("--out", help="output folder (default out/fl/<scenario name>)")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", help="override the scenario's seeds (whole numbers >= 0)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    from sim.fl_report import format_summary, write_report
    cfg = load_scenario(args.scenario)
    if args.seeds:
        cfg["seeds"] = list(args.seeds)
    t0 = time.perf_counter()
    results = run_experiment(cfg)
    paths = write_report(results, args.out or os.path.join("out", "fl", cfg["name"]))
    print()
    print(format_summary(results))
    print(f"\n{time.perf_counter() - t0:.1f} s; written: {', '.join(paths)}")
    return 0
