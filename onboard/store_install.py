"""One install into the engine store: the phases verify, stage, canary, activate, health and commit.

The target is always the inactive slot, so the serving engine is never touched before
``activate``, and ``active`` changes in one atomic state write. Each phase is recorded in the
state file (``pending.phase``) before it starts, so ``onboard.store_recovery`` can finish or undo
an install a killed process left behind. ``_crash_point`` is the hook the kill tests use to die at
every phase boundary. ``docs/store.md`` describes the phases and what each does on failure.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from engines.bundle import Bundle
from engines.errors import BundleError, UserError
from engines.manifest import MANIFEST_FILE, Manifest
from onboard import store_journal as journal
from onboard.store_checks import SlotChecks
from onboard.store_commands import accept_command
from onboard.store_errors import RollbackRefused
from onboard.store_journal import add_event, other_slot
from onboard.store_recovery import abandon, commit, undo_activation

CRASH_ENV = "SATEDGE_STORE_CRASH_AT"
PHASES = ("verify", "stage", "canary", "activate", "health", "commit")
__all__ = ["CRASH_ENV", "InstallReport", "PHASES", "install"]


def _crash_point(name: str) -> None:
    """Test hook: SIGKILL this process when ``$SATEDGE_STORE_CRASH_AT`` equals ``name`` (``phase:before|after``)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class InstallReport:
    """Outcome of ``install`` or ``rollback``; ``ok`` false says which phase failed and why."""

    engine: str
    version: int
    ok: bool
    outcome: str  # installed | already-active | canary-failed | health-failed | rolled-back
    slot: Optional[str]
    active_version: Optional[int]
    reason: str = ""
    failed_phase: Optional[str] = None
    canary_max_abs_error: Optional[float] = None
    phases: Dict[str, float] = field(default_factory=dict)


def install(checks: SlotChecks, name: str, edir: Path, src: Path, allow: Optional[int],
            command: Any) -> InstallReport:
    """Install the bundle folder ``src`` of engine ``name`` (lock held, nothing pending); see ``EngineStore.install``.

    A failure before ``activate`` abandons the install (the old engine stays) and re-raises.
    """
    st = journal.load_state(edir, name) or journal.new_state(name)
    st["seq"] += 1
    st["pending"] = {"id": st["seq"], "source": str(src), "version": None, "slot": other_slot(st["active"]),
                     "from_slot": st["active"], "activated": False, "health_attempts": 0}
    try:
        return _run_phases(checks, name, edir, st, src, allow, command)
    except Exception:
        pend = st["pending"]
        if pend is not None and not pend["activated"]:
            abandon(edir, st, "install of %s failed in phase %s" % (src, pend.get("phase")))
        raise


@contextlib.contextmanager
def _phase(edir: Path, st: Dict[str, Any], phase: str, times: Dict[str, float]) -> Iterator[None]:
    st["pending"]["phase"] = phase
    journal.save_state(edir, st)  # durably recorded before the phase starts
    _crash_point(phase + ":before")
    start = time.perf_counter()
    yield
    times[phase] = round(time.perf_counter() - start, 4)
    _crash_point(phase + ":after")


def _run_phases(checks: SlotChecks, name: str, edir: Path, st: Dict[str, Any], src: Path, allow: Optional[int],
                command: Any) -> InstallReport:
    pend: Dict[str, Any] = st["pending"]
    times: Dict[str, float] = {}
    target, old = pend["slot"], pend["from_slot"]
    old_version = st["slots"][old]["version"] if old else None
    with _phase(edir, st, "verify", times):
        try:
            bundle, mode = _verify(checks, edir, st, src, allow, command)
        except UserError as exc:
            st["pending"] = None
            add_event(st, "refused", "install from %s refused: %s" % (src, exc))
            journal.save_state(edir, st)
            raise
    version = pend["version"] = bundle.manifest.version
    if mode == "already-active":
        st["pending"] = None
        journal.save_state(edir, st)
        return InstallReport(name, version, True, "already-active", old, version, "v%d is already active and "
                             "intact in slot %s" % (version, old), phases=times)
    st["slots"][target] = {"version": None, "status": "staging"}
    st["previous"] = None if st["previous"] == target else st["previous"]
    with _phase(edir, st, "stage", times):
        tmp = edir / ("%s.tmp-%d" % (target, pend["id"]))
        journal.copy_bundle(bundle, tmp)
        staged = checks.open(tmp)
        if staged.manifest.canonical_bytes() != bundle.manifest.canonical_bytes():
            raise BundleError("bundle %s changed while it was being copied; copy it again and retry." % src)
        journal.swap_in(edir, target, tmp, pend["id"], _crash_point)
    st["slots"][target] = {"version": version, "status": "staged"}
    with _phase(edir, st, "canary", times):
        passed, canary, err = checks.canary(checks.open(edir / target))
    if not passed:
        st["slots"][target]["status"], st["pending"] = "bad", None
        add_event(st, "canary_failed", "v%d in slot %s: %s; still serving v%s" % (version, target, canary,
                                                                                  old_version), target, version)
        journal.save_state(edir, st)
        return InstallReport(name, version, False, "canary-failed", target, old_version, "canary failed: " + canary,
                             "canary", err, times)
    with _phase(edir, st, "activate", times):
        st["active"], st["previous"], pend["activated"] = target, old, True
        st["highest_version"] = max(st["highest_version"], version)
        journal.save_state(edir, st)
    pend["health_attempts"] = 1
    with _phase(edir, st, "health", times):
        passed, detail = checks.health(edir / target)
    if not passed:
        undo_activation(edir, st, detail)
        return InstallReport(name, version, False, "health-failed", target, old_version, "health check failed: "
                             "%s; rolled back to v%s" % (detail, old_version), "health", err, times)
    with _phase(edir, st, "commit", times):
        commit(edir, st)
    return InstallReport(name, version, True, "installed", target, version, "canary %s; %s" % (canary, detail),
                         None, err, times)


def _verify(checks: SlotChecks, edir: Path, st: Dict[str, Any], src: Path, allow: Optional[int],
            command: Any) -> Tuple[Bundle, str]:
    """The verify phase: signature and hashes, plans, then the same-engine and rollback-protection rules."""
    bundle = checks.open(src)  # signature, then every sha256
    checks.check_plans(bundle)
    m, act = bundle.manifest, st["active"]
    if act and st["slots"][act]["version"] == m.version:
        try:
            same = Manifest.from_json((edir / act / MANIFEST_FILE).read_bytes()).canonical_bytes() == \
                m.canonical_bytes()
        except (OSError, BundleError):
            same = False
        if same:  # the very same signed engine: a no-op if intact, else a repair
            return bundle, ("already-active" if checks.intact(edir, act)[0] else "repair")
    lost = m.version == st["highest_version"] and not any(
        i["version"] == m.version and i["status"] != "bad" for i in st["slots"].values())
    if m.version <= st["highest_version"] and not lost:  # re-installing a highest version lost to corruption is no rollback
        if allow != m.version or command is None:
            raise RollbackRefused(
                "engine %r: v%d is not above the highest version ever activated (v%d); refused by rollback "
                "protection. To go back on purpose pass allow_rollback_to=%d and rollback=<RollbackCommand for "
                "%r v%d signed with the ground key>." % (m.name, m.version, st["highest_version"], m.version,
                                                        m.name, m.version))
        accept_command(st, command, m.version, checks.keys)
    return bundle, "install"
