"""The PNG plots of a constellation run report (`sim.report`), one function per figure.

Each ``plot_<name>(run, path)`` takes a `sim.report.RunData` and writes one PNG with matplotlib's
Agg backend. The x axis is sim time in hours from the plan epoch, the same span in every figure.
Per-satellite figures are small multiples with shared axes (up to 3 columns, so 12 satellites stay
readable); a panel or figure without data says "no data" instead of failing.
"""
from __future__ import annotations

import math
from typing import List

import numpy as np

FAULT_MARKERS = {"kill_restart": "X", "power_loss_install": "v", "bitflip_engine": "*", "link_cut": "s",
                 "missed_pass": "D"}
OUTAGES = ("missed_pass", "link_cut")     # faults whose span is shaded on the contact timeline
H = 3600.0


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _no_data(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.45", fontsize=10)


def _colour(plt, i: int, n: int):
    return plt.get_cmap("tab10" if n <= 10 else "tab20")(i % (10 if n <= 10 else 20))


def _ncols(n: int) -> int:
    return 1 if n <= 3 else 2 if n <= 8 else 3


def _grid(plt, run, title: str, ylabel: str, row_h: float = 1.9):
    """Figure with one panel per satellite (shared axes); returns ``(fig, axes)`` with one axes per satellite."""
    n = max(1, len(run.satellites))
    ncols = _ncols(n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(13, 1.0 + row_h * nrows), sharex=True, sharey=True,
                             squeeze=False)
    flat = list(axes.ravel())
    for i, ax in enumerate(flat):
        if i >= n:
            ax.set_visible(False)
            continue
        ax.set_title(run.satellites[i] if run.satellites else "", fontsize=9, loc="left")
        ax.grid(alpha=0.3)
        if i + ncols >= n:                      # lowest visible panel of its column
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("sim time (h)")
        if i % ncols == 0:
            ax.set_ylabel(ylabel, fontsize=9)
    flat[0].set_xlim(0, run.duration_s / H)
    fig.suptitle(title)
    if not run.satellites:
        _no_data(flat[0])
    return fig, flat[:len(run.satellites)]


def _save(plt, fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _series(events: List[dict], key: str):
    """Times (h) and values of ``key`` (None -> NaN) of ``events``."""
    t = np.array([e["t"] for e in events], dtype=float) / H
    v = np.array([np.nan if e.get(key) is None else e[key] for e in events], dtype=float)
    return t, v


def plot_contacts(run, path: str) -> None:
    """Ground passes per satellite coloured by station, fault injections marked, outages hatched."""
    plt = _pyplot()
    from matplotlib.patches import Patch
    from matplotlib.lines import Line2D
    sats, stas = run.satellites, run.stations
    row = {s: i for i, s in enumerate(sats)}
    fig, ax = plt.subplots(figsize=(13, 1.6 + 0.45 * max(1, len(sats))))
    colour = {st: _colour(plt, i, len(stas)) for i, st in enumerate(stas)}
    passes = run.ground_passes()
    for sat, st, t0, t1 in passes:
        ax.broken_barh([(t0 / H, (t1 - t0) / H)], (row[sat] - 0.35, 0.7), color=colour.get(st, "0.5"))
    handles = [Patch(color=colour[st], label=st) for st in stas if any(p[1] == st for p in passes)]
    end_h = run.duration_s / H
    for f in run.faults:
        t = float(f.get("t") or 0.0) / H
        y = row.get(f.get("sat"), -0.7)
        if f.get("fault") in OUTAGES:
            t1 = (f.get("t_recovered") or run.duration_s) / H
            lo, hi = (y - 0.5, y + 0.5) if f.get("sat") in row else (-0.5, len(sats) - 0.5)
            ax.fill_between([t, max(t1, t + 0.01)], lo, hi, color="red", alpha=0.15, hatch="//", lw=0)
        ax.plot(t, y, marker=FAULT_MARKERS.get(f.get("fault"), "o"), color="k", ms=8, ls="none")
        ax.annotate(f"#{f.get('id')} {f.get('fault')}", (t, y), xytext=(4, -10), textcoords="offset points",
                    fontsize=7, color="darkred")
    kinds = sorted({f.get("fault") for f in run.faults}, key=str)
    handles += [Line2D([], [], marker=FAULT_MARKERS.get(k, "o"), color="k", ls="none", label=str(k)) for k in kinds]
    if any(f.get("fault") in OUTAGES for f in run.faults):
        handles.append(Patch(facecolor="red", alpha=0.15, hatch="//", label="outage"))
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False)
    if not passes and not run.faults:
        _no_data(ax)
    ax.set_yticks(range(len(sats)), sats, fontsize=8)
    ax.set_ylim(len(sats) - 0.5, -1.2)
    ax.set_xlim(0, end_h)
    ax.set(xlabel="sim time (h)", title="ground contacts and faults")
    ax.grid(axis="x", alpha=0.3)
    _save(plt, fig, path)


def plot_uplink(run, path: str) -> None:
    """Fraction of each uplinked version sent vs time, with completes, failures and installs marked."""
    plt = _pyplot()
    fig, axes = _grid(plt, run, "engine uplink progress", "fraction sent")
    for ax, sat in zip(axes, run.satellites):
        ups, ins = run.of("uplink", sat), run.of("install", sat)
        if not ups and not ins:
            _no_data(ax)
        for k, ver in enumerate(sorted({u.get("version") for u in ups}, key=str)):
            ev = [u for u in ups if u.get("version") == ver]
            t = np.array([u["t"] for u in ev]) / H
            frac = np.array([u.get("bytes_done", 0) / u["size"] if u.get("size") else np.nan for u in ev])
            ax.step(t, frac, where="post", color=f"C{k}", lw=1.2, label=f"v{ver}")
            st = np.array([u.get("status") for u in ev])
            ax.plot(t[st == "complete"], frac[st == "complete"], "o", color="green", ms=5)
            ax.plot(t[st == "failed"], frac[st == "failed"], "x", color="red", ms=7, mew=2)
        for i in ins:
            ax.axvline(i["t"] / H, color="green" if i.get("ok") else "red", ls=":", lw=1.2)
        if ups:
            ax.legend(fontsize=7, loc="lower right")
    if axes:
        axes[0].set_ylim(-0.03, 1.08)
    _save(plt, fig, path)


def plot_queue(run, path: str) -> None:
    """Outbox depth per satellite from heartbeats, ground passes shaded, daemon kills marked."""
    plt = _pyplot()
    fig, axes = _grid(plt, run, "downlink queue (outbox depth)", "messages")
    for ax, sat in zip(axes, run.satellites):
        for _, _, t0, t1 in run.ground_passes(sat):
            ax.axvspan(t0 / H, t1 / H, color="C0", alpha=0.12, lw=0)
        for d in run.of("daemon", sat):
            if d.get("state") == "killed":
                ax.axvline(d["t"] / H, color="red", ls=":", lw=1)
        hb = run.of("heartbeat", sat)
        if not hb:
            _no_data(ax)
            continue
        t, depth = _series(hb, "outbox_depth")
        ax.step(t, depth, where="post", color="k", lw=1)
    if axes:
        axes[0].set_ylim(bottom=0)
    _save(plt, fig, path)


def plot_results(run, path: str) -> None:
    """Cumulative unique results at the ground per satellite, and cumulative duplicates dropped."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 7), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    sats = run.satellites + ([None] if run.of("result", None) else [])
    any_unique = any_dup = False
    for i, sat in enumerate(sats):
        res = run.of("result", sat)
        kw = dict(color=_colour(plt, i, len(sats)), label=sat or "(no satellite)", where="post", lw=1.3)
        uniq = [r["t"] / H for r in res if not r.get("duplicate")]
        dup = [r["t"] / H for r in res if r.get("duplicate")]
        end = max([run.duration_s / H] + uniq + dup)
        if uniq:                                # flat to the end of the run after the last one
            top.step([0] + uniq + [end], list(range(len(uniq) + 1)) + [len(uniq)], **kw)
            any_unique = True
        if dup:
            bottom.step([0] + dup + [end], list(range(len(dup) + 1)) + [len(dup)], **kw)
            any_dup = True
    top.set(ylabel="unique results", title="results delivered to the ground (cumulative)")
    bottom.set(ylabel="duplicates dropped", xlabel="sim time (h)", xlim=(0, run.duration_s / H))
    if any_unique:
        top.legend(fontsize=7, ncol=2, loc="upper left")
    else:
        _no_data(top)
    if not any_dup:
        _no_data(bottom, "no duplicates dropped")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    _save(plt, fig, path)


def plot_power(run, path: str) -> None:
    """Power draw per satellite with eclipse shaded, temperature on a twin axis."""
    plt = _pyplot()
    fig, axes = _grid(plt, run, "power (blue, W) and temperature (red, degC); eclipse shaded", "power (W)")
    ncols = _ncols(len(run.satellites))
    twins = []
    for ax, sat in zip(axes, run.satellites):
        for t0, t1 in run.eclipse(sat):
            ax.axvspan(t0 / H, t1 / H, color="0.3", alpha=0.18, lw=0)
        hb = run.of("heartbeat", sat)
        t, p = _series(hb, "power_w")
        _, temp = _series(hb, "temperature_c")
        if not np.isfinite(p).any() and not np.isfinite(temp).any():
            _no_data(ax)
            continue
        ax.plot(t, p, color="C0", lw=1)
        tw = ax.twinx()
        tw.plot(t, temp, color="C3", lw=1, alpha=0.8)
        tw.tick_params(axis="y", labelsize=7, colors="C3")
        if axes.index(ax) % ncols == ncols - 1 or ax is axes[-1]:
            tw.set_ylabel("degC", fontsize=8, color="C3")
        if twins:
            tw.sharey(twins[0])
        twins.append(tw)
    _save(plt, fig, path)


def plot_faults(run, path: str) -> None:
    """One row per fault from injection to recovery: green if it recovered, red to the end if not."""
    plt = _pyplot()
    faults = sorted(run.faults, key=lambda f: (float(f.get("t") or 0.0), str(f.get("id"))))
    fig, ax = plt.subplots(figsize=(13, 1.6 + 0.4 * max(1, len(faults))))
    end = run.duration_s
    for y, f in enumerate(faults):
        t0 = float(f.get("t") or 0.0)
        ok = bool(f.get("recovered"))
        t1 = f.get("t_recovered") if ok and f.get("t_recovered") is not None else end
        ax.broken_barh([(t0 / H, max(t1 - t0, 1.0) / H)], (y - 0.3, 0.6), color="tab:green" if ok else "tab:red",
                       alpha=0.85 if ok else 0.5)
        ax.plot(t0 / H, y, marker=FAULT_MARKERS.get(f.get("fault"), "o"), color="k", ms=7)
        ax.annotate(f"{t1 - t0:.0f} s" if ok else "not recovered", ((t1 if ok else t0) / H, y),
                    xytext=(3 if ok else 10, -3), textcoords="offset points", fontsize=7)
    ax.set_yticks(range(len(faults)), [f"#{f.get('id')} {f.get('fault')} @ {f.get('sat') or 'all'}" for f in faults],
                  fontsize=8)
    ax.set_ylim(max(len(faults), 1) - 0.5, -0.5)
    ax.set(xlim=(0, end / H), xlabel="sim time (h)", title="faults: injection to recovery")
    ax.grid(axis="x", alpha=0.3)
    if not faults:
        _no_data(ax, "no faults injected")
    _save(plt, fig, path)
