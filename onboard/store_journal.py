"""The engine store's journal: the per-engine state file, its lock, and the slot folders.

Every write here survives power loss at any instant: a file is written to a temporary name in
the same folder, fsynced, renamed over the old one, and the folder is fsynced. The state file is
kept twice (``state.json`` and ``state.json.bak``), each with a SHA-256 of its content, so a bit
flip in one copy falls back to the other. Slots are whole bundle directories; a new one is built
under ``<slot>.tmp-<n>`` and renamed into place. The state also holds the replay log of rollback
commands (``onboard.store_commands``). ``docs/store.md`` describes the layout.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from engines.durable import fsync_dir, write_durable
from engines.bundle import Bundle
from engines.manifest import MANIFEST_FILE
from engines.signing import SIGNATURE_FILE
from onboard.store_errors import StoreError

SLOTS = ("A", "B")
STATE_FILE = "state.json"
BACKUP_FILE = "state.json.bak"
LOCK_FILE = ".lock"
STATE_FORMAT = 1
MAX_EVENTS = 200


def other_slot(slot: Optional[str]) -> str:
    """Return the slot that is not ``slot`` (``"A"`` when there is none yet)."""
    return "B" if slot == "A" else "A"


def new_state(name: str) -> Dict[str, Any]:
    """Return the state of an engine that has never been installed."""
    return {"format": STATE_FORMAT, "engine": name, "active": None, "previous": None,
            "slots": {s: {"version": None, "status": "empty"} for s in SLOTS},
            "highest_version": 0, "pending": None, "seq": 0, "events": [],
            "commands": {"nonces": [], "last_issued_at": None}}


def _encode(state: Dict[str, Any]) -> bytes:
    body = json.dumps(state, sort_keys=True, separators=(",", ":"))
    doc = {"sha256": hashlib.sha256(body.encode("utf-8")).hexdigest(), "state": state}
    return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode("utf-8")


def _decode(path: Path) -> Optional[Dict[str, Any]]:
    try:
        doc = json.loads(path.read_bytes())
        state = doc["state"]
        body = json.dumps(state, sort_keys=True, separators=(",", ":"))
        if hashlib.sha256(body.encode("utf-8")).hexdigest() != doc["sha256"]:
            return None
        return state if state.get("format") == STATE_FORMAT else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save_state(engine_dir: Path, state: Dict[str, Any]) -> None:
    """Write both copies of the state file durably (primary first, then the backup)."""
    data = _encode(state)
    write_durable(engine_dir / STATE_FILE, data)
    write_durable(engine_dir / BACKUP_FILE, data)


def load_state(engine_dir: Path, name: str) -> Optional[Dict[str, Any]]:
    """Read the state of engine ``name``; ``None`` if it was never installed.

    Raises
    ------
    StoreError
        If state files exist but neither copy is readable and intact.
    """
    copies = [engine_dir / STATE_FILE, engine_dir / BACKUP_FILE]
    if not any(p.exists() for p in copies):
        return None
    for path in copies:
        state = _decode(path)
        if state is not None and state.get("engine") == name:
            return state
    raise StoreError("engine %r: both state files in %s are unreadable or fail their checksum; the store cannot "
                     "tell which slot is active. Inspect the folder, then delete it and install the engine "
                     "again." % (name, engine_dir))


def add_event(state: Dict[str, Any], kind: str, detail: str, slot: Optional[str] = None,
              version: Optional[int] = None) -> Dict[str, Any]:
    """Append a health event to ``state`` (the oldest are dropped beyond ``MAX_EVENTS``); return it."""
    event = {"time": round(time.time(), 3), "kind": kind, "slot": slot, "version": version, "detail": detail}
    state["events"] = (state["events"] + [event])[-MAX_EVENTS:]
    return event


@contextlib.contextmanager
def engine_lock(engine_dir: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on one engine's folder (released by the kernel on a crash)."""
    engine_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock on this platform: single-process use only
        yield
        return
    with open(str(engine_dir / LOCK_FILE), "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _copy_fsync(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(str(src), "rb") as fin, open(str(dest), "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def copy_bundle(bundle: Bundle, dest: Path) -> None:
    """Copy the manifest, its signature and every listed file of ``bundle`` into the new folder ``dest``.

    Every file and every folder is fsynced, so once this returns the copy is durable.
    """
    if dest.exists():
        shutil.rmtree(str(dest))
    dest.mkdir(parents=True)
    for rel in [MANIFEST_FILE, SIGNATURE_FILE] + sorted(bundle.manifest.files):
        _copy_fsync(bundle.path / rel, dest / rel)
    for dirpath, _dirs, _files in sorted(os.walk(str(dest)), reverse=True):
        fsync_dir(Path(dirpath))
    fsync_dir(dest.parent)


def swap_in(engine_dir: Path, slot: str, staged: Path, tag: int, crash: Callable[[str], None]) -> None:
    """Make the fully written folder ``staged`` the content of ``slot``, replacing what was there.

    The old content is renamed aside (``<slot>.old-<tag>``), the staged folder renamed to the slot,
    and the old content removed. A crash in between leaves only leftovers ``recover`` deletes.
    """
    dest, old = engine_dir / slot, engine_dir / ("%s.old-%d" % (slot, tag))
    if dest.exists():
        os.rename(str(dest), str(old))
        fsync_dir(engine_dir)
        crash("stage:aside")
    os.rename(str(staged), str(dest))
    fsync_dir(engine_dir)
    if old.exists():
        shutil.rmtree(str(old))
        fsync_dir(engine_dir)


def clear_slot(engine_dir: Path, slot: str) -> None:
    """Remove the content of ``slot`` (durably); a missing slot folder is fine."""
    path = engine_dir / slot
    if path.exists():
        shutil.rmtree(str(path))
        fsync_dir(engine_dir)


def remove_leftovers(engine_dir: Path) -> List[str]:
    """Delete temporary folders and files an interrupted operation left behind; return their names."""
    removed = []
    for entry in sorted(engine_dir.iterdir()):
        name = entry.name
        if ".tmp-" in name or ".old-" in name or (name.startswith(".") and name.endswith(".tmp")):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(str(entry))
            else:
                entry.unlink()
            removed.append(name)
    if removed:
        fsync_dir(engine_dir)
    return removed
