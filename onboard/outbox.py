"""Durable outbox: results wait in SQLite for the next downlink, delivered at least once.

A result enters with :meth:`Outbox.put` and is on disk when ``put`` returns (WAL journal,
``synchronous=FULL``: the commit is fsync'd), so neither ``kill -9`` nor a power cut loses it.
Leases, nacks and acks commit without an fsync of their own (``synchronous=NORMAL`` for that
transaction): losing one in a power cut can only make a result go down again, which the ground
drops as a duplicate; the next ``put`` syncs the journal, earlier transactions included.
The downlink takes batches in downlink order (priority, then age) with :meth:`Outbox.next_batch`,
which leases them (state ``in_flight``); the ground acknowledges with :meth:`Outbox.ack`. A lease
that passes without an ack goes back to ``queued`` (:meth:`Outbox.requeue_expired`), and every
lease is returned when the outbox is reopened after a crash. A message may therefore be sent more
than once; the ground drops duplicates by message id (a result id), so each is delivered
exactly once after dedup.

Acked messages keep a small tombstone (id, size, times; no payload) so that a daemon that
re-emits a result after a restart cannot queue it twice; :meth:`Outbox.purge_acked` removes
old tombstones.
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import msgpack

from engines.errors import UserError

QUEUED, IN_FLIGHT, ACKED = "queued", "in_flight", "acked"
# Results carry tiles of hundreds of kB: 16 KiB pages store them in a quarter of the overflow pages of
# the 4 KiB default, 2.0 -> 1.1 ms of CPU per 400 kB result stored. 64 KiB pages (0.9 ms) made every
# small commit and ack write whole 64 KiB pages: under the overload test the daemon then processed
# 12 % fewer single-tile frames and missed 2.4 % of class-0 deadlines (docs/benchmarks.md).
PAGE_SIZE = 16384
SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    priority INTEGER NOT NULL,
    created REAL NOT NULL,
    topic BLOB NOT NULL,
    header BLOB,
    buffers BLOB,
    size INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    leased REAL,
    acked REAL
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (state, priority, created);
"""


@dataclass(frozen=True)
class OutboxItem:
    """One message taken from the outbox for downlink.

    ``parts`` rebuilds the ZeroMQ multipart message ``[topic, header, *buffers]``; ``attempts``
    counts how many times it has been leased, this time included.
    """

    msg_id: str
    priority: int
    created: float
    topic: bytes
    header: bytes
    buffers: Tuple[bytes, ...]
    size: int
    attempts: int

    @property
    def parts(self) -> List[bytes]:
        """The message as ZeroMQ parts: ``[topic, header, *buffers]``."""
        return [self.topic, self.header, *self.buffers]


def _as_bytes(part: Any) -> bytes:
    """Bytes of a part given as bytes, memoryview, numpy array or ``zmq.Frame``."""
    return bytes(memoryview(getattr(part, "buffer", part)).cast("B"))


class Outbox:
    """A durable, thread-safe, priority-ordered message queue in one SQLite file.

    Share one instance between threads; open one per file per process (opening returns every
    lease to the queue).

    Parameters
    ----------
    path : str
        SQLite file; created if absent.
    requeue_on_open : bool, optional
        Return every ``in_flight`` message to ``queued`` on open (default): whoever leased them
        died with the previous process.
    clock : callable, optional
        Wall-clock time source (``time.time``); leases must survive restarts, so no monotonic clock.
    """

    def __init__(self, path: str, requeue_on_open: bool = True, clock=time.time):
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
            self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")      # takes effect on a new file only
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.Error as exc:
            raise UserError(f"outbox {path!r} cannot be opened ({exc}); check the directory exists and is "
                            "writable, or move the damaged file aside") from None
        if str(mode).lower() != "wal":
            raise UserError(f"outbox {path!r}: SQLite refused WAL mode ({mode}); put it on a local filesystem")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        if requeue_on_open:
            with self._lock:
                self._db.execute("UPDATE outbox SET state=?, leased=NULL WHERE state=?", (QUEUED, IN_FLIGHT))

    # ------------------------------------------------------------------ writing
    def put(self, msg_id: str, priority: int, parts: Sequence[Any]) -> bool:
        """Store one message durably; return False if ``msg_id`` was already stored (kept as it was).

        Parameters
        ----------
        msg_id : str
            The result id; the ground drops duplicates by it.
        priority : int
            Lower is more urgent (anomaly alerts 0).
        parts : sequence of bytes-like
            ``[topic, header, *buffers]``, each bytes, memoryview, numpy array or ``zmq.Frame``.
        """
        return self.put_many([(msg_id, priority, parts)]) == 1

    def put_many(self, messages: Iterable[Tuple[str, int, Sequence[Any]]]) -> int:
        """Store several messages in one transaction (one fsync); return how many were new."""
        rows = []
        now = self._clock()
        for msg_id, priority, parts in messages:
            if not isinstance(msg_id, str) or not msg_id:
                raise UserError(f"outbox: message id must be a non-empty str; got {msg_id!r}")
            if len(parts) < 2:
                raise UserError(f"outbox: message {msg_id!r} needs at least [topic, header]; got {len(parts)} part(s)")
            data = [_as_bytes(p) for p in parts]
            rows.append((msg_id, int(priority), now, data[0], data[1], msgpack.packb(data[2:]),
                         sum(len(d) for d in data), QUEUED))
        with self._transaction() as db:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO outbox (id, priority, created, topic, header, buffers, size, state)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            return db.total_changes - before

    @contextlib.contextmanager
    def _transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """Hold the lock and one write transaction; commit on success, roll back on any error.

        ``durable=False`` commits without waiting for the disk (see module doc): only for
        changes whose loss is harmless (leases, nacks, acks).
        """
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    # ------------------------------------------------------------------ downlink
    def next_batch(self, max_messages: int = 64, max_bytes: Optional[int] = None) -> List[OutboxItem]:
        """Lease the next messages in downlink order (priority, then age) and return them.

        The batch stops at the first message that would take it over ``max_bytes``, so order is
        kept; a single message larger than ``max_bytes`` is still returned alone, so that it
        cannot block the outbox forever.
        """
        with self._transaction(durable=False) as db:
            rows = db.execute("SELECT id, size FROM outbox WHERE state=? ORDER BY priority, created, rowid LIMIT ?",
                              (QUEUED, int(max_messages))).fetchall()
            ids, total = [], 0
            for msg_id, size in rows:
                if max_bytes is not None and ids and total + size > max_bytes:
                    break
                ids.append(msg_id)
                total += size
            db.executemany("UPDATE outbox SET state=?, leased=?, attempts=attempts+1 WHERE id=?",
                           [(IN_FLIGHT, self._clock(), i) for i in ids])
            return [self._load(i) for i in ids]

    def _load(self, msg_id: str) -> OutboxItem:
        row = self._db.execute("SELECT id, priority, created, topic, header, buffers, size, attempts FROM outbox "
                               "WHERE id=?", (msg_id,)).fetchone()
        bufs = tuple(msgpack.unpackb(row[5])) if row[5] is not None else ()
        return OutboxItem(row[0], row[1], row[2], bytes(row[3]), bytes(row[4]), bufs, row[6], row[7])

    def ack(self, ids: Iterable[str]) -> int:
        """Mark messages delivered (payload dropped, tombstone kept); return how many were not yet acked."""
        now = self._clock()
        with self._transaction(durable=False) as db:
            before = db.total_changes
            db.executemany("UPDATE outbox SET state=?, acked=?, header=NULL, buffers=NULL, leased=NULL "
                           "WHERE id=? AND state!=?", [(ACKED, now, i, ACKED) for i in ids])
            return db.total_changes - before

    def nack(self, ids: Iterable[str]) -> int:
        """Return leased messages to the queue at once (the link dropped); return how many."""
        with self._transaction(durable=False) as db:
            before = db.total_changes
            db.executemany("UPDATE outbox SET state=?, leased=NULL WHERE id=? AND state=?",
                           [(QUEUED, i, IN_FLIGHT) for i in ids])
            return db.total_changes - before

    def requeue_expired(self, lease_s: float) -> int:
        """Return to ``queued`` every in-flight message leased more than ``lease_s`` ago; return how many."""
        with self._lock:
            cur = self._db.execute("UPDATE outbox SET state=?, leased=NULL WHERE state=? AND leased<=?",
                                   (QUEUED, IN_FLIGHT, self._clock() - float(lease_s)))
            return cur.rowcount

    def purge_acked(self, older_than_s: float = 7 * 86400.0) -> int:
        """Delete tombstones of messages acked more than ``older_than_s`` ago; return how many."""
        with self._lock:
            cur = self._db.execute("DELETE FROM outbox WHERE state=? AND acked<=?",
                                   (ACKED, self._clock() - float(older_than_s)))
            return cur.rowcount

    # ------------------------------------------------------------------ queries
    def depth(self) -> int:
        """Messages waiting for an ack (queued or in flight)."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox WHERE state!=?", (ACKED,)).fetchone()[0]

    def bytes_queued(self) -> int:
        """Bytes of the messages waiting for an ack (queued or in flight)."""
        with self._lock:
            return self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox WHERE state!=?",
                                    (ACKED,)).fetchone()[0]

    def contains(self, msg_id: str) -> bool:
        """Whether ``msg_id`` was ever stored (acked tombstones count, until purged)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM outbox WHERE id=?", (msg_id,)).fetchone() is not None

    def stats(self) -> Dict[str, Any]:
        """Counts and bytes per state, per priority of unacked messages, and the oldest unacked age (s)."""
        with self._lock:
            by_state = {s: {"messages": 0, "bytes": 0} for s in (QUEUED, IN_FLIGHT, ACKED)}
            for state, n, size in self._db.execute("SELECT state, COUNT(*), COALESCE(SUM(size),0) FROM outbox "
                                                   "GROUP BY state"):
                by_state[state] = {"messages": n, "bytes": size}
            by_prio = {p: n for p, n in self._db.execute(
                "SELECT priority, COUNT(*) FROM outbox WHERE state!=? GROUP BY priority", (ACKED,))}
            oldest = self._db.execute("SELECT MIN(created) FROM outbox WHERE state!=?", (ACKED,)).fetchone()[0]
            retries = self._db.execute("SELECT COALESCE(SUM(attempts-1),0) FROM outbox WHERE attempts>1").fetchone()[0]
        return {"depth": by_state[QUEUED]["messages"] + by_state[IN_FLIGHT]["messages"],
                "bytes_queued": by_state[QUEUED]["bytes"] + by_state[IN_FLIGHT]["bytes"],
                "by_state": by_state, "by_priority": by_prio, "retries": retries,
                "oldest_age_s": None if oldest is None else max(0.0, self._clock() - oldest)}

    def close(self) -> None:
        """Close the database (a checkpoint folds the WAL into the main file)."""
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
