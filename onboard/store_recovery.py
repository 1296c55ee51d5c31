"""Recovery of the engine store: finishing or undoing a pending install, and scrubbing the slots.

An install records each phase in the state file before it starts (``onboard.store_install``).
The transitions here end a pending install: ``abandon`` before the switch (the old engine stays),
``undo_activation`` after it (back to the old slot), ``commit`` once it proved healthy. ``resolve``
picks one of them for whatever a killed process left pending and deletes its leftovers;
``scrub`` re-hashes both slots and switches away from a corrupted active one. All run with the
engine lock held. ``docs/store.md`` gives the rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from onboard import store_journal as journal
from onboard.store_checks import SlotChecks
from onboard.store_journal import SLOTS, add_event, other_slot

MAX_HEALTH_ATTEMPTS = 2  # resolve() rolls back instead of re-running health after this many tries
__all__ = ["MAX_HEALTH_ATTEMPTS", "ScrubReport", "abandon", "commit", "resolve", "scrub", "undo_activation"]


@dataclass
class ScrubReport:
    """Outcome of ``scrub``: per slot ``"ok"``, ``"empty"`` or ``"corrupt: ..."``, and any switch made."""

    engine: str
    slots: Dict[str, str]
    active_slot: Optional[str]
    switched_to: Optional[str] = None
    events: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no slot holding an engine was found corrupted."""
        return all(v in ("ok", "empty") for v in self.slots.values())


def abandon(edir: Path, st: Dict[str, Any], detail: str) -> None:
    """Undo a pending install that had not switched ``active`` yet: the old engine stays."""
    pend = st["pending"]
    if pend.get("phase", "verify") != "verify":  # stage may have touched the target slot
        st["slots"][pend["slot"]] = {"version": None, "status": "empty"}
    st["pending"] = None
    act = st["active"]
    add_event(st, "install_abandoned", "%s; serving slot %s v%s" % (
        detail, act, st["slots"][act]["version"] if act else None), pend["slot"], pend["version"])
    journal.save_state(edir, st)
    if st["slots"][pend["slot"]]["status"] == "empty":
        journal.clear_slot(edir, pend["slot"])


def undo_activation(edir: Path, st: Dict[str, Any], detail: str) -> None:
    """Switch back to the slot that served before the pending install, and mark the new slot bad."""
    pend = st["pending"]
    st["active"], st["previous"], st["pending"] = pend["from_slot"], pend["slot"], None
    st["slots"][pend["slot"]]["status"] = "bad"
    add_event(st, "health_failed", "v%s in slot %s: %s; rolled back to slot %s" % (
        pend["version"], pend["slot"], detail, pend["from_slot"]), pend["slot"], pend["version"])
    journal.save_state(edir, st)


def commit(edir: Path, st: Dict[str, Any]) -> None:
    """Mark the pending install's slot good and clear ``pending``."""
    pend = st["pending"]
    st["slots"][pend["slot"]]["status"], st["pending"] = "good", None
    add_event(st, "installed", "v%s committed in slot %s" % (pend["version"], pend["slot"]), pend["slot"],
              pend["version"])
    journal.save_state(edir, st)


def resolve(checks: SlotChecks, name: str, edir: Path) -> List[str]:
    """Finish or undo what a killed process left pending, and delete its leftovers (lock held).

    Returns
    -------
    list of str
        What was done, one sentence each (empty when nothing needed doing).
    """
    st = journal.load_state(edir, name)
    actions: List[str] = []
    pend = st and st["pending"]
    what = pend and ("install of v%s" % pend["version"] if pend["version"] else "install from " + pend["source"])
    if pend and not pend["activated"]:
        abandon(edir, st, "%s interrupted in phase %s" % (what, pend.get("phase")))
        actions.append("%s interrupted before activation: undone" % what)
    elif pend and pend["phase"] == "commit":
        commit(edir, st)
        actions.append("%s interrupted in commit: committed" % what)
    elif pend and pend["health_attempts"] >= MAX_HEALTH_ATTEMPTS:
        undo_activation(edir, st, "health checks interrupted %d times" % pend["health_attempts"])
        actions.append("%s never finished its health checks: rolled back" % what)
    elif pend:
        pend["health_attempts"] += 1
        pend["phase"] = "health"
        journal.save_state(edir, st)
        passed, detail = checks.health(edir / pend["slot"])
        (commit(edir, st) if passed else undo_activation(edir, st, detail))
        actions.append("%s interrupted after activation: %s, %s" % (
            what, detail, "committed" if passed else "rolled back"))
    if edir.is_dir():
        actions += ["removed leftover %s" % n for n in journal.remove_leftovers(edir)]
    for slot in SLOTS if st else ():
        if st["slots"][slot]["status"] == "empty" and (edir / slot).exists():
            journal.clear_slot(edir, slot)
            actions.append("removed content of empty slot %s" % slot)
    return actions


def scrub(checks: SlotChecks, name: str, edir: Path, st: Dict[str, Any]) -> ScrubReport:
    """Re-hash both slots of engine ``name`` (state ``st``, lock held); switch away from a corrupted active slot.

    A corrupted slot is marked ``bad``; every finding is recorded as a health event, and the state
    file is written only when there was one.
    """
    act, n_events = st["active"], len(st["events"])
    rep = ScrubReport(name, {}, act)
    for slot in SLOTS:
        info = st["slots"][slot]
        if info["version"] is None:
            rep.slots[slot] = "empty"
            continue
        bundle, msg = checks.intact(edir, slot)
        if bundle is not None and bundle.manifest.version != info["version"]:
            bundle, msg = None, "holds v%d but the state file says v%s" % (bundle.manifest.version, info["version"])
        rep.slots[slot] = "ok" if bundle is not None else "corrupt: " + msg
        if bundle is None and info["status"] != "bad":
            info["status"] = "bad"
            add_event(st, "scrub_mismatch", "slot %s (v%s%s) failed its scrub: %s" % (
                slot, info["version"], ", active" if slot == act else "", msg), slot, info["version"])
    other = other_slot(act)
    if act and rep.slots[act] != "ok":
        if rep.slots[other] == "ok" and st["slots"][other]["status"] == "good":
            st["active"], st["previous"], rep.switched_to = other, act, other
            add_event(st, "switched", "active slot %s corrupted: now serving slot %s v%s" % (
                act, other, st["slots"][other]["version"]), other, st["slots"][other]["version"])
        else:
            add_event(st, "no_fallback", "active slot %s corrupted and slot %s holds no intact engine; install "
                      "the engine again" % (act, other), act, st["slots"][act]["version"])
    rep.events = st["events"][n_events:]
    if rep.events:
        journal.save_state(edir, st)
    return rep
