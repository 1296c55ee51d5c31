"""After a constellation run: exactly-once delivery and the recovery of each injected fault.

:func:`delivery` compares every result id each satellite accepted into its durable outbox (all
rows of ``outbox.sqlite``: queued, in flight or acknowledged) with the ids the ground received:
``lost`` are accepted but never received, ``unexpected`` received but never accepted, and
``duplicates_dropped`` the extra copies the ground dropped by id.

:func:`recoveries` reads the merged event log and says, per fault, when the system was whole
again:

* ``kill_restart``: the first heartbeat after the restart;
* ``power_loss_install``: the first heartbeat reporting the rollout version after the power loss;
* ``bitflip_engine``: the scrub that switched away from the damaged slot, then the rollout version
  reported again (re-uplinked and re-installed);
* ``link_cut``: the first uplink completion or delivered result of that satellite after the cut;
* ``missed_pass``: the first result of that satellite delivered after the missed pass.
"""
from __future__ import annotations

import os
import sqlite3
from typing import Any, Dict, List, Optional


def outbox_ids(workdir: str) -> List[str]:
    """Every result id ever committed to the outbox in ``workdir`` (read-only)."""
    path = os.path.join(workdir, "outbox.sqlite")
    if not os.path.exists(path):
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT id FROM outbox")]
    finally:
        db.close()


def delivery(accepted: Dict[str, List[str]], received: Dict[str, Dict[str, int]]) -> Dict[str, Any]:
    """Exactly-once accounting over all satellites (see module doc)."""
    acc = {(s, i) for s, ids in accepted.items() for i in ids}
    rec = {(s, i) for s, ids in received.items() for i in ids}
    dups = sum(max(0, n - 1) for ids in received.values() for n in ids.values())
    lost, unexpected = acc - rec, rec - acc
    return {"accepted": len(acc), "delivered_unique": len(acc & rec), "duplicates_dropped": dups,
            "lost": len(lost), "unexpected": len(unexpected), "exactly_once": not lost and not unexpected,
            "lost_ids": sorted(f"{s}/{i}" for s, i in lost)[:20]}


def _first(events: List[Dict[str, Any]], sat: str, after: float, pred) -> Optional[Dict[str, Any]]:
    return next((e for e in events if e.get("sat") == sat and e["t"] >= after and pred(e)), None)


def recoveries(faults: List[Dict[str, Any]], events: List[Dict[str, Any]], target: int) -> List[Dict[str, Any]]:
    """Each fault of ``faults`` (id, fault, sat, t, ...) with ``recovered``, ``t_recovered`` and ``recovery``."""
    out = []
    for f in faults:
        sat, t, kind = f["sat"], f["t"], f["fault"]
        hit, how = None, "not observed before the end of the run"
        if kind == "kill_restart":
            hit = _first(events, sat, f.get("t_restart", t), lambda e: e["kind"] == "heartbeat")
            how = "daemon restarted, outbox reopened, heartbeats resumed" if hit else how
        elif kind == "power_loss_install":
            hit = _first(events, sat, t, lambda e: e["kind"] == "heartbeat" and (e.get("engine_version") or 0) >= target)
            how = f"rebooted; store recovery resolved the interrupted install; v{target} active" if hit else how
        elif kind == "bitflip_engine":
            sw = _first(events, sat, t, lambda e: e["kind"] == "install" and str(e.get("outcome", "")).startswith("scrub"))
            hit = sw and _first(events, sat, sw["t"], lambda e: e["kind"] == "heartbeat"
                                and (e.get("engine_version") or 0) >= target)
            if sw and hit:
                how = (f"scrub found the damaged slot at {sw['t']:.0f} s and switched to v{sw.get('active_version')}; "
                       f"v{target} re-uplinked and re-installed")
            elif sw:
                how = f"scrub switched to the intact slot at {sw['t']:.0f} s; re-install of v{target} not seen"
        elif kind == "link_cut":
            hit = _first(events, sat, f["t_end"], lambda e: (e["kind"] == "uplink" and e.get("status") == "complete")
                         or (e["kind"] == "result" and not e.get("duplicate")))
            how = ("link back; the transfer resumed where it stood" if hit and hit["kind"] == "uplink"
                   else "link back; results flowed again") if hit else how
        elif kind == "missed_pass":
            hit = _first(events, sat, f["t_end"], lambda e: e["kind"] == "result" and not e.get("duplicate"))
            how = "results held in the outbox went down on a later pass" if hit else how
        out.append(dict(f, recovered=bool(hit), t_recovered=hit["t"] if hit else None, recovery=how))
    return out
