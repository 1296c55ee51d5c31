"""Dead-letter log: every rejected message, kept in SQLite with the reason it was rejected."""
from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any, Dict, List, Sequence

SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    n_parts INTEGER NOT NULL,
    total_bytes INTEGER NOT NULL,
    topic BLOB,
    header BLOB,
    payload BLOB,
    truncated INTEGER NOT NULL
)
"""


class DeadLetterLog:
    """Append-only SQLite log of rejected messages.

    Parameters
    ----------
    path : str
        SQLite file; created if absent. WAL mode, so a reader can look while the daemon writes.
    keep_bytes : int
        At most this many payload bytes are kept per message (an oversized frame is the usual
        reason to reject, and keeping it whole would let bad input fill the disk);
        ``truncated`` says when bytes were cut.
    """

    def __init__(self, path: str, keep_bytes: int = 64 * 1024):
        self.path = path
        self.keep_bytes = keep_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        self._db.commit()

    def add(self, code: str, reason: str, parts: Sequence[Any]) -> None:
        """Record one rejected message (its raw parts) with its error code and reason."""
        views = [memoryview(getattr(p, "buffer", p)).cast("B") for p in parts]
        total = sum(len(v) for v in views)
        topic = bytes(views[0][: self.keep_bytes]) if views else None
        header = bytes(views[1][: self.keep_bytes]) if len(views) > 1 else None
        payload = None
        if len(views) > 2:          # at most keep_bytes are copied, however large the rejected parts are
            kept, room = [], self.keep_bytes
            for v in views[2:]:
                if room <= 0:
                    break
                kept.append(bytes(v[:room]))
                room -= len(kept[-1])
            payload = b"".join(kept)
        truncated = int(any(len(v) > self.keep_bytes for v in views[:2]) or
                        sum(len(v) for v in views[2:]) > self.keep_bytes)
        with self._lock:
            self._db.execute(
                "INSERT INTO dead_letters (ts, code, reason, n_parts, total_bytes, topic, header, payload, truncated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), code, reason, len(views), total, topic, header, payload, truncated))
            self._db.commit()

    def entries(self) -> List[Dict[str, Any]]:
        """All entries, oldest first, as dicts (without the raw bytes)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, ts, code, reason, n_parts, total_bytes, truncated FROM dead_letters ORDER BY id").fetchall()
        keys = ("id", "ts", "code", "reason", "n_parts", "total_bytes", "truncated")
        return [dict(zip(keys, r)) for r in rows]

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
