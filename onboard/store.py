"""The onboard engine store: two slots per engine, verified installs, canary, health, rollback.

Per engine ``root/<name>/`` holds slots ``A/`` and ``B/`` (each a whole bundle) and the state file.
``EngineStore`` is the one object callers use; it takes the engine's lock and hands the work to
the module that holds it:

- ``onboard.store_install``: the install phases (verify, stage, canary, activate, health, commit);
- ``onboard.store_checks``: intact, plan compatibility, canary, health;
- ``onboard.store_recovery``: finishing or undoing an interrupted install, scrubbing;
- ``onboard.store_commands``: signed rollback commands and their replay log;
- ``onboard.store_journal``: the state file, the lock and the slot folders, written durably;
- ``onboard.store_errors``: ``StoreError`` and ``RollbackRefused``.

Every public name is importable from here. ``docs/store.md`` describes slots, phases, recovery
and rollback.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from engines.bundle import Bundle
from engines.errors import BundleError
from engines.manifest import MANIFEST_FILE, Manifest
from engines.signing import load_public_key
from onboard import store_install, store_recovery
from onboard import store_journal as journal
from onboard.store_checks import TOLERANCES, RuntimeInfo, SlotChecks
from onboard.store_commands import RollbackCommand, accept_command
from onboard.store_errors import RollbackRefused, StoreError
from onboard.store_install import CRASH_ENV, PHASES, InstallReport, _crash_point  # noqa: F401 (test hook)
from onboard.store_journal import SLOTS, add_event, other_slot
from onboard.store_recovery import MAX_HEALTH_ATTEMPTS, ScrubReport

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
__all__ = ["CRASH_ENV", "EngineStore", "InstallReport", "MAX_HEALTH_ATTEMPTS", "PHASES", "RollbackCommand",
           "RollbackRefused", "RuntimeInfo", "ScrubReport", "StoreError", "TOLERANCES"]


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

    @property
    def _checks(self) -> SlotChecks:
        """The checks with this store's current settings."""
        return SlotChecks(self._keys, self.runtime, self.canary_backend, self.health_check, self.health_checks)

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

    # ------------------------------------------------------------------ changes
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
        checks = self._checks
        with journal.engine_lock(edir):
            store_recovery.resolve(checks, name, edir)
            return store_install.install(checks, name, edir, src, allow_rollback_to, rollback)

    def recover(self, scrub: bool = True) -> Dict[str, List[str]]:
        """At start-up: resolve every interrupted install, delete leftovers, then (by default) scrub.

        Returns
        -------
        dict of str to list of str
            Per engine, what was done (empty lists when nothing needed doing).
        """
        done = {}
        checks = self._checks
        for name in self.engines():
            edir = self._dir(name)
            with journal.engine_lock(edir):
                try:
                    done[name] = store_recovery.resolve(checks, name, edir)
                    if scrub:
                        done[name] += [e["detail"] for e in
                                       store_recovery.scrub(checks, name, edir, self._state(name)).events]
                except StoreError as exc:  # one unreadable engine must not keep the others down
                    done[name] = ["not recovered: %s" % exc]
        return done

    def scrub(self, name: str) -> ScrubReport:
        """Re-hash both slots; switch away from a corrupted active slot to an intact other one.

        A corrupted inactive slot is marked ``bad`` (it is replaced by the next install). Every
        finding is recorded as a health event.
        """
        edir = self._dir(name)
        checks = self._checks
        with journal.engine_lock(edir):
            store_recovery.resolve(checks, name, edir)
            return store_recovery.scrub(checks, name, edir, self._state(name))

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
        checks = self._checks
        with journal.engine_lock(edir):
            store_recovery.resolve(checks, name, edir)
            st = self._state(name)
            cur = st["active"]
            target = other_slot(cur)
            info = st["slots"][target]
            if info["version"] is None or info["status"] != "good":
                raise StoreError("engine %r: slot %s holds no good engine to roll back to (v%s, %s). Install the "
                                 "wanted version with install(BUNDLE, allow_rollback_to=V, rollback=COMMAND)."
                                 % (name, target, info["version"], info["status"]))
            accept_command(st, command, info["version"], self._keys)
            bundle, msg = checks.intact(edir, target)
            passed, detail, err = checks.canary(bundle) if bundle else (False, msg, None)
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
