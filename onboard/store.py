"""The onboard engine store: two slots per engine, verified installs, canary, health, rollback.

Per engine ``root/<name>/`` holds slots ``A/`` and ``B/`` (each a whole bundle) and the state file
(``onboard.store_journal``). ``install`` runs the phases verify, stage, canary, activate, health
and commit, recording each in the state file before it starts, so ``recover`` can always finish
or undo an interrupted one. ``docs/store.md`` describes slots, phases, recovery and rollback.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from engines.bundle import Bundle
from engines.errors import BundleError, PlanIncompatible, UserError
from engines.manifest import MANIFEST_FILE, Manifest
from engines.signing import load_public_key
from onboard import store_journal as journal
from onboard.store_journal import SLOTS, RollbackCommand, RollbackRefused, StoreError, add_event, other_slot

CRASH_ENV = "SATEDGE_STORE_CRASH_AT"
PHASES = ("verify", "stage", "canary", "activate", "health", "commit")
TOLERANCES = {"fp32": 1e-3, "fp16": 1e-2, "int8": 5e-2}  # max abs error of the canary, per precision
MAX_HEALTH_ATTEMPTS = 2  # recover() rolls back instead of re-running health after this many tries
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
__all__ = ["EngineStore", "InstallReport", "RollbackCommand", "RollbackRefused", "RuntimeInfo", "ScrubReport",
           "StoreError", "TOLERANCES"]


def _crash_point(name: str) -> None:
    """Test hook: SIGKILL this process when ``$SATEDGE_STORE_CRASH_AT`` equals ``name`` (``phase:before|after``)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class RuntimeInfo:
    """What this unit can run: TensorRT version (``"8.6.2"``) and GPU SM (``"87"``); None if absent."""

    trt_version: Optional[str] = None
    sm: Optional[str] = None


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


class EngineStore:
    """A/B-slot engine store with signed, canaried, health-checked installs and automatic rollback.

    Parameters
    ----------
    root : str or os.PathLike
        Store folder (created if absent); one sub-folder per engine name.
    trusted_keys : sequence of path, bytes or Ed25519PublicKey
        Public keys whose signatures are accepted on bundles and rollback commands.
    runtime : RuntimeInfo, optional
        The TensorRT version and SM of this unit, for the plan compatibility check.
    canary_backend : str, optional
        Runner backend for the canary and the default health check (``"onnxrt"``).
    health_check : callable, optional
        ``health_check(bundle) -> bool`` run on the newly active engine; false or an exception
        fails it. Default: the canary again on the active slot.
    health_checks : int, optional
        How many health checks must pass before the install is committed (3).
    """

    def __init__(self, root: Any, trusted_keys: Sequence[Any], runtime: RuntimeInfo = RuntimeInfo(),
                 canary_backend: str = "onnxrt", health_check: Optional[Callable[[Bundle], Any]] = None,
                 health_checks: int = 3) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._keys = [load_public_key(k) for k in trusted_keys]
        if not self._keys:
            raise StoreError("EngineStore needs at least one trusted public key; pass the ground's .pub file.")
        self.runtime, self.canary_backend = runtime, canary_backend
        self.health_check, self.health_checks = health_check, max(1, int(health_checks))

    # ------------------------------------------------------------------ queries
    def _dir(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME.match(name):
            raise StoreError("%r is not an engine name (letters, digits, '.', '_', '-')." % (name,))
        return self.root / name

    def _state(self, name: str) -> Dict[str, Any]:
        state = journal.load_state(self._dir(name), name)
        if state is None:
            raise StoreError("no engine %r in the store %s; installed: %s. Install it with store.install(BUNDLE)."
                             % (name, self.root, self.engines() or "none"))
        return state

    def engines(self) -> List[str]:
        """Names of the engines that have a state file."""
        return sorted({p.parent.name for p in self.root.glob("*/" + journal.STATE_FILE + "*") if p.suffix != ".tmp"})

    def active_path(self, name: str) -> Path:
        """Folder of the active slot of ``name`` (not verified; ``active`` verifies)."""
        slot = self._state(name)["active"]
        if slot is None:
            raise StoreError("engine %r has no active slot (its installs failed); install a good bundle." % name)
        return self._dir(name) / slot

    def active(self, name: str) -> Bundle:
        """Open the active bundle of ``name`` with its signature and every SHA-256 verified."""
        path = self.active_path(name)
        try:
            return Bundle.open(path, verify=True, trusted_keys=self._keys)
        except BundleError as exc:
            raise StoreError("engine %r: active slot %s failed verification (%s). Run store.scrub(%r) to switch to "
                             "the other slot, or install the engine again." % (name, path.name, exc, name)) from None

    def versions(self, name: str) -> Dict[str, Any]:
        """Return ``{"active", "active_slot", "highest_activated", "slots": {slot: {version, status}}}``."""
        st = self._state(name)
        act = st["active"]
        return {"active": st["slots"][act]["version"] if act else None, "active_slot": act,
                "highest_activated": st["highest_version"], "slots": {s: dict(st["slots"][s]) for s in SLOTS}}

    def health_events(self, name: str) -> List[Dict[str, Any]]:
        """Recorded events of ``name`` (oldest first): kind, slot, version, time, detail."""
        return list(self._state(name)["events"])

    # ------------------------------------------------------------------ checks
    def _check_plans(self, bundle: Bundle) -> None:
        """Refuse a bundle with TensorRT plans none of which runs on this unit (checked before loading)."""
        m, trt, sm = bundle.manifest, self.runtime.trt_version, self.runtime.sm
        raw = getattr(m, "plans", None) or m.extra.get("plans") or []
        if not raw or trt is None or sm is None:  # no plans, or no TensorRT here: the ONNX model is used
            return
        from engines.plan import PlanEntry, check_plan_compatible, read_plan_header

        problems = []
        for entry in [p if isinstance(p, PlanEntry) else PlanEntry.from_dict(p) for p in raw]:
            try:
                check_plan_compatible(entry, trt, sm, header=read_plan_header(bundle.file_path(entry.file)))
                return
            except PlanIncompatible as exc:
                problems.append(str(exc))
        raise PlanIncompatible("engine %r v%d: none of its TensorRT plans runs on this unit (TensorRT %s, SM %s): "
                               "%s" % (m.name, m.version, trt, sm, " | ".join(problems)))

    def _canary(self, bundle: Bundle) -> Tuple[bool, str, float]:
        """Run the reference inputs and compare with the reference outputs within the precision's tolerance."""
        from engines.runners import runner_for

        tol = TOLERANCES[bundle.manifest.precision]
        try:
            inputs, expected = bundle.reference()
            with runner_for(bundle, backend=self.canary_backend, intra_op_threads=1) as runner:
                got = runner.infer(inputs)
        except Exception as exc:  # whatever the engine raises is a failed canary, not a store crash
            return False, "the %s runner failed on the reference inputs (%s: %s)" % (
                self.canary_backend, type(exc).__name__, exc), float("inf")
        worst = 0.0
        for out, ref in expected.items():
            a, b = np.asarray(got.get(out, np.nan), np.float64), np.asarray(ref, np.float64)
            if a.shape != b.shape or np.any(np.isnan(a) != np.isnan(b)):
                return False, "output %r is %s%s, the reference %s%s (shape or NaN mismatch)" % (
                    out, a.dtype, a.shape, b.dtype, b.shape), float("inf")
            worst = max(worst, float(np.max(np.abs(np.nan_to_num(a - b)), initial=0.0)))
            if worst > tol:
                return False, "output %r differs from the reference by %.3g > %g (%s tolerance)" % (
                    out, worst, tol, bundle.manifest.precision), worst
        return True, "max abs error %.3g <= %g" % (worst, tol), worst

    def _health(self, path: Path) -> Tuple[bool, str]:
        bundle, msg = self._intact(path.parent, path.name)
        if bundle is None:
            return False, "slot %s failed verification: %s" % (path.name, msg)
        for i in range(self.health_checks):
            try:
                passed = (self.health_check(bundle) if self.health_check else self._canary(bundle)[0])
            except Exception as exc:  # a raising hook is a failed check
                return False, "health check %d/%d raised %s: %s" % (i + 1, self.health_checks, type(exc).__name__, exc)
            if not passed:
                return False, "health check %d/%d failed" % (i + 1, self.health_checks)
        return True, "%d health checks passed" % self.health_checks

    def _intact(self, engine_dir: Path, slot: str) -> Tuple[Optional[Bundle], str]:
        try:
            return Bundle.open(engine_dir / slot, verify=True, trusted_keys=self._keys), "ok"
        except BundleError as exc:
            return None, str(exc)

    # ------------------------------------------------------------------ install
    def install(self, bundle_path: Any, *, allow_rollback_to: Optional[int] = None,
                rollback: Optional[RollbackCommand] = None) -> InstallReport:
        """Install a signed bundle into the inactive slot and switch to it once it proves healthy.

        Parameters
        ----------
        bundle_path : str or os.PathLike
            The bundle directory, signed with a trusted key.
        allow_rollback_to : int, optional
            To install a version not above the highest ever activated: that exact version, and
        rollback : RollbackCommand, optional
            a command for this engine and version signed with a trusted key (used once).

        Returns
        -------
        InstallReport
            ``ok`` is false when the canary or the health checks failed; the store then serves
            the engine it served before.

        Raises
        ------
        BundleError, SignatureError, PlanIncompatible, RollbackRefused
            When the verify phase refuses the bundle; only the event log changes.
        """
        src = Path(bundle_path)
        if not (src / MANIFEST_FILE).is_file():
            raise BundleError("%s is not a bundle folder (no %s); pass the bundle directory." % (src, MANIFEST_FILE))
        name = Manifest.from_json((src / MANIFEST_FILE).read_bytes()).name
        edir = self._dir(name)
        with journal.engine_lock(edir):
            self._resolve(name, edir)
            st = journal.load_state(edir, name) or journal.new_state(name)
            st["seq"] += 1
            st["pending"] = {"id": st["seq"], "source": str(src), "version": None, "slot": other_slot(st["active"]),
                             "from_slot": st["active"], "activated": False, "health_attempts": 0}
            try:
                return self._install(name, edir, st, src, allow_rollback_to, rollback)
            except Exception:
                pend = st["pending"]
                if pend is not None and not pend["activated"]:
                    self._abandon(edir, st, "install of %s failed in phase %s" % (src, pend.get("phase")))
                raise

    @contextlib.contextmanager
    def _phase(self, edir: Path, st: Dict[str, Any], phase: str, times: Dict[str, float]) -> Iterator[None]:
        st["pending"]["phase"] = phase
        journal.save_state(edir, st)  # durably recorded before the phase starts
        _crash_point(phase + ":before")
        start = time.perf_counter()
        yield
        times[phase] = round(time.perf_counter() - start, 4)
        _crash_point(phase + ":after")

    def _install(self, name: str, edir: Path, st: Dict[str, Any], src: Path, allow: Optional[int],
                 command: Any) -> InstallReport:
        pend: Dict[str, Any] = st["pending"]
        times: Dict[str, float] = {}
        target, old = pend["slot"], pend["from_slot"]
        old_version = st["slots"][old]["version"] if old else None
        with self._phase(edir, st, "verify", times):
            try:
                bundle, mode = self._verify(edir, st, src, allow, command)
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
        with self._phase(edir, st, "stage", times):
            tmp = edir / ("%s.tmp-%d" % (target, pend["id"]))
            journal.copy_bundle(bundle, tmp)
            staged = Bundle.open(tmp, verify=True, trusted_keys=self._keys)
            if staged.manifest.canonical_bytes() != bundle.manifest.canonical_bytes():
                raise BundleError("bundle %s changed while it was being copied; copy it again and retry." % src)
            journal.swap_in(edir, target, tmp, pend["id"], _crash_point)
        st["slots"][target] = {"version": version, "status": "staged"}
        with self._phase(edir, st, "canary", times):
            passed, canary, err = self._canary(Bundle.open(edir / target, verify=True, trusted_keys=self._keys))
        if not passed:
            st["slots"][target]["status"], st["pending"] = "bad", None
            add_event(st, "canary_failed", "v%d in slot %s: %s; still serving v%s" % (version, target, canary,
                                                                                      old_version), target, version)
            journal.save_state(edir, st)
            return InstallReport(name, version, False, "canary-failed", target, old_version, "canary failed: " + canary,
                                 "canary", err, times)
        with self._phase(edir, st, "activate", times):
            st["active"], st["previous"], pend["activated"] = target, old, True
            st["highest_version"] = max(st["highest_version"], version)
            journal.save_state(edir, st)
        pend["health_attempts"] = 1
        with self._phase(edir, st, "health", times):
            passed, detail = self._health(edir / target)
        if not passed:
            self._undo_activation(edir, st, detail)
            return InstallReport(name, version, False, "health-failed", target, old_version, "health check failed: "
                                 "%s; rolled back to v%s" % (detail, old_version), "health", err, times)
        with self._phase(edir, st, "commit", times):
            self._commit(edir, st)
        return InstallReport(name, version, True, "installed", target, version, "canary %s; %s" % (canary, detail),
                             None, err, times)

    def _verify(self, edir: Path, st: Dict[str, Any], src: Path, allow: Optional[int],
                command: Any) -> Tuple[Bundle, str]:
        bundle = Bundle.open(src, verify=True, trusted_keys=self._keys)  # signature, then every sha256
        self._check_plans(bundle)
        m, act = bundle.manifest, st["active"]
        if act and st["slots"][act]["version"] == m.version:
            try:
                same = Manifest.from_json((edir / act / MANIFEST_FILE).read_bytes()).canonical_bytes() == \
                    m.canonical_bytes()
            except (OSError, BundleError):
                same = False
            if same:  # the very same signed engine: a no-op if intact, else a repair
                return bundle, ("already-active" if self._intact(edir, act)[0] else "repair")
        if m.version <= st["highest_version"]:
            if allow != m.version or command is None:
                raise RollbackRefused(
                    "engine %r: v%d is not above the highest version ever activated (v%d); refused by rollback "
                    "protection. To go back on purpose pass allow_rollback_to=%d and rollback=<RollbackCommand for "
                    "%r v%d signed with the ground key>." % (m.name, m.version, st["highest_version"], m.version,
                                                            m.name, m.version))
            journal.accept_command(st, command, m.version, self._keys)
        return bundle, "install"

    # ------------------------------------------------------------------ state transitions
    def _abandon(self, edir: Path, st: Dict[str, Any], detail: str) -> None:
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

    def _undo_activation(self, edir: Path, st: Dict[str, Any], detail: str) -> None:
        pend = st["pending"]
        st["active"], st["previous"], st["pending"] = pend["from_slot"], pend["slot"], None
        st["slots"][pend["slot"]]["status"] = "bad"
        add_event(st, "health_failed", "v%s in slot %s: %s; rolled back to slot %s" % (
            pend["version"], pend["slot"], detail, pend["from_slot"]), pend["slot"], pend["version"])
        journal.save_state(edir, st)

    def _commit(self, edir: Path, st: Dict[str, Any]) -> None:
        pend = st["pending"]
        st["slots"][pend["slot"]]["status"], st["pending"] = "good", None
        add_event(st, "installed", "v%s committed in slot %s" % (pend["version"], pend["slot"]), pend["slot"],
                  pend["version"])
        journal.save_state(edir, st)

    def _resolve(self, name: str, edir: Path) -> List[str]:
        """Finish or undo what a killed process left pending, and delete its leftovers (lock held)."""
        st = journal.load_state(edir, name)
        actions: List[str] = []
        pend = st and st["pending"]
        what = pend and ("install of v%s" % pend["version"] if pend["version"] else "install from " + pend["source"])
        if pend and not pend["activated"]:
            self._abandon(edir, st, "%s interrupted in phase %s" % (what, pend.get("phase")))
            actions.append("%s interrupted before activation: undone" % what)
        elif pend and pend["phase"] == "commit":
            self._commit(edir, st)
            actions.append("%s interrupted in commit: committed" % what)
        elif pend and pend["health_attempts"] >= MAX_HEALTH_ATTEMPTS:
            self._undo_activation(edir, st, "health checks interrupted %d times" % pend["health_attempts"])
            actions.append("%s never finished its health checks: rolled back" % what)
        elif pend:
            pend["health_attempts"] += 1
            pend["phase"] = "health"
            journal.save_state(edir, st)
            passed, detail = self._health(edir / pend["slot"])
            (self._commit(edir, st) if passed else self._undo_activation(edir, st, detail))
            actions.append("%s interrupted after activation: %s, %s" % (
                what, detail, "committed" if passed else "rolled back"))
        if edir.is_dir():
            actions += ["removed leftover %s" % n for n in journal.remove_leftovers(edir)]
        for slot in SLOTS if st else ():
            if st["slots"][slot]["status"] == "empty" and (edir / slot).exists():
                journal.clear_slot(edir, slot)
                actions.append("removed content of empty slot %s" % slot)
        return actions

    def recover(self, scrub: bool = True) -> Dict[str, List[str]]:
        """At start-up: resolve every interrupted install, delete leftovers, then (by default) scrub.

        Returns
        -------
        dict of str to list of str
            Per engine, what was done (empty lists when nothing needed doing).
        """
        done = {}
        for name in self.engines():
            edir = self._dir(name)
            with journal.engine_lock(edir):
                try:
                    done[name] = self._resolve(name, edir)
                    done[name] += [e["detail"] for e in self._scrub(name, edir).events] if scrub else []
                except StoreError as exc:  # one unreadable engine must not keep the others down
                    done[name] = ["not recovered: %s" % exc]
        return done

    # ------------------------------------------------------------------ scrub, rollback
    def scrub(self, name: str) -> ScrubReport:
        """Re-hash both slots; switch away from a corrupted active slot to an intact other one.

        A corrupted inactive slot is marked ``bad`` (it is replaced by the next install). Every
        finding is recorded as a health event.
        """
        edir = self._dir(name)
        with journal.engine_lock(edir):
            self._resolve(name, edir)
            return self._scrub(name, edir)

    def _scrub(self, name: str, edir: Path) -> ScrubReport:
        st = self._state(name)
        act, n_events = st["active"], len(st["events"])
        rep = ScrubReport(name, {}, act)
        for slot in SLOTS:
            info = st["slots"][slot]
            if info["version"] is None:
                rep.slots[slot] = "empty"
                continue
            bundle, msg = self._intact(edir, slot)
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

    def rollback(self, name: str, command: RollbackCommand) -> InstallReport:
        """Switch ``name`` to the engine in its other slot, on a signed command for that slot's version.

        Raises
        ------
        RollbackRefused
            If the command is badly signed, replayed, stale, or for another engine or version.
        StoreError
            If the other slot holds no good, intact engine that passes its canary.
        """
        edir = self._dir(name)
        with journal.engine_lock(edir):
            self._resolve(name, edir)
            st = self._state(name)
            cur = st["active"]
            target = other_slot(cur)
            info = st["slots"][target]
            if info["version"] is None or info["status"] != "good":
                raise StoreError("engine %r: slot %s holds no good engine to roll back to (v%s, %s). Install the "
                                 "wanted version with install(BUNDLE, allow_rollback_to=V, rollback=COMMAND)."
                                 % (name, target, info["version"], info["status"]))
            journal.accept_command(st, command, info["version"], self._keys)
            bundle, msg = self._intact(edir, target)
            passed, detail, err = self._canary(bundle) if bundle else (False, msg, None)
            if not passed:
                info["status"] = "bad"
                add_event(st, "rollback_failed", "slot %s v%s: %s" % (target, info["version"], detail), target,
                          info["version"])
                journal.save_state(edir, st)
                raise StoreError("engine %r: cannot roll back to slot %s v%s: %s. Still serving slot %s."
                                 % (name, target, info["version"], detail, cur))
            st["active"], st["previous"] = target, cur
            add_event(st, "rolled_back", "on command %s: slot %s v%s active" % (command.nonce, target, info["version"]),
                      target, info["version"])
            journal.save_state(edir, st)
            return InstallReport(name, info["version"], True, "rolled-back", target, info["version"],
                                 "switched from slot %s" % cur, None, err)
