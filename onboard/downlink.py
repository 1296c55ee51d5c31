"""The downlink sender: results from the durable outbox to the ground, until the ground acknowledges them.

Every result is committed to :class:`onboard.outbox.Outbox` (SQLite) before it reaches the
downlink (:class:`onboard.worker.OutboxWriter`); from there two paths send it on the results PUSH
socket:

* **fresh path**: the writer also hands each committed result to :meth:`Downlink.offer`; while
  the outbox holds nothing else (no backlog) it goes out at once from memory, without a lease
  (a lease rewrites the stored row, the costliest step for large results);
* **outbox path**: whenever the outbox holds results the fresh path does not account for (the
  link was down, acks were lost, the daemon restarted), :meth:`Outbox.next_batch` leases them in
  downlink order (priority, then age) and sends them; a lease without an ack ends after
  ``outbox.lease_s`` (:meth:`Outbox.requeue_expired`) and the result goes again.

With an ``ack_endpoint`` a result is delivered when the ground acknowledges its ``result_id`` on
the ack PULL socket (``docs/protocol.md``, ``ack``); a fresh result not acknowledged within
``lease_s`` is handed to the outbox path. Without one, a result counts as delivered once the
socket took it. Either way a result may go twice; the ground drops duplicates by ``result_id``.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Deque, Dict, List, Optional, Tuple

import zmq

from onboard.wire import WireError, decode

log = logging.getLogger("satedge.onboard")
FRESH_MAX_BYTES = 16 << 20   # fresh results kept in memory; beyond, they wait for the outbox path


class Downlink:
    """Sends results and applies the ground's acks (see module doc)."""

    def __init__(self, settings, outbox, counters):
        self.s, self.o = settings, settings.outbox
        self.outbox, self.counters = outbox, counters
        self.acks = bool(settings.ack_endpoint)
        self.handoff = threading.Lock()              # held by the writer around commit + offer
        self._wake = threading.Event()
        self._fresh: Deque[Tuple[str, List[Any], int]] = collections.deque()
        self._fresh_bytes = 0
        self._pending: Dict[str, float] = {}         # sent on the fresh path, waiting for an ack
        self._leased: Dict[str, float] = {}          # sent on the outbox path, waiting for an ack
        self._expired: set = set()                   # fresh results whose ack did not come in time
        self._recheck, self._next_check = True, 0.0  # whether the outbox may hold a backlog
        self.writer_done = threading.Event()
        self.started = time.time()
        self.unsent = 0
        self.no_receiver = False
        self._windows = sorted((float(a), float(b)) for a, b in self.o.windows)
        self._clock = None
        if self._windows:
            from onboard.transfer import EnvClock
            self._clock = EnvClock()

    def notify_backlog(self) -> None:
        """Something outside the writer committed a message to the outbox: look for it and send it."""
        self._recheck = True
        self._wake.set()

    def in_contact(self) -> bool:
        """Whether a downlink window (``outbox.windows``, sim seconds) is open now; always without windows."""
        if not self._windows:
            return True
        t = self._clock.now()
        return any(a <= t < b for a, b in self._windows)

    def offer(self, items: List[Tuple[str, List[Any]]]) -> None:
        """Committed results ``(result_id, parts)`` (call with :attr:`handoff` held, after the commit)."""
        for rid, parts in items:
            size = sum(memoryview(p).nbytes for p in parts)
            self._fresh.append((rid, parts, size))
            self._fresh_bytes += size
        while self._fresh_bytes > FRESH_MAX_BYTES and len(self._fresh) > 1:
            self._fresh_bytes -= self._fresh.popleft()[2]   # still in the outbox: the outbox path finds it
            self._recheck = True
        self._wake.set()

    def run(self, ctx, results: zmq.Socket, acks: Optional[zmq.Socket]) -> None:
        """Stage body: send, read acks, requeue expired leases; at drain, stop when all is sent (and acked)."""
        next_requeue, next_purge, drain_until, ack_until = 0.0, 0.0, None, None
        try:
            while True:
                ctx.beat()
                self._read_acks(acks)
                now = time.time()
                if now >= next_requeue:
                    self._requeue(now)
                    next_requeue = now + min(1.0, self.o.lease_s / 4)
                if now >= next_purge:
                    self.outbox.purge_acked(self.o.purge_acked_s)
                    next_purge = now + 600.0
                self._wake.clear()
                backlog = self._backlog()
                if not self.in_contact():
                    sent = 0                         # no pass: results wait in the outbox
                else:
                    sent = self._send_outbox(results, now) if backlog else self._send_fresh(results, now)
                if ctx.stopping and self.writer_done.is_set():
                    drain_until = drain_until or now + self.s.drain_timeout_s
                    if not backlog and not self._fresh:
                        ack_until = ack_until or now + self.o.drain_ack_s
                        if not (self._pending or self._leased) or now > ack_until:
                            break
                    if now > drain_until:
                        break
                if not sent:
                    self._wait(acks, 0.1 if self.no_receiver else 0.05)
        finally:
            self.unsent = max(0, self.outbox.stats()["by_state"]["queued"]["messages"] - len(self._pending))
            results.close(linger=int(self.s.drain_timeout_s * 1000))   # flush what the socket took
            if acks is not None:
                acks.close(linger=0)

    def _backlog(self) -> int:
        """Results in the outbox that neither path is carrying.

        Counted (a scan of the outbox index) only after something that can leave results
        behind (start-up, fresh results dropped from memory, expired acks or leases, a failed
        send) and every 2 s as a safety net; otherwise 0.
        """
        now = time.monotonic()
        if not self._recheck and now < self._next_check:
            return 0
        with self.handoff:
            n = self.outbox.depth() - len(self._fresh) - len(self._pending) - len(self._leased)
        self._recheck, self._next_check = n > 0, now + 2.0
        return max(0, n)

    def _room(self) -> int:
        return self.o.max_in_flight - len(self._pending) - len(self._leased) if self.acks else self.o.batch_messages

    def _send(self, sock: zmq.Socket, parts: List[Any]) -> bool:
        try:
            sock.send_multipart(parts, copy=False)
            self.no_receiver = False
            return True
        except zmq.Again:                            # no receiver connected (SNDTIMEO): try again later
            self.no_receiver = True
            return False

    def _send_fresh(self, sock: zmq.Socket, now: float) -> int:
        sent: List[str] = []
        while self._fresh and len(sent) < min(self._room(), self.o.batch_messages):
            with self.handoff:
                rid, parts, size = self._fresh[0]
            if not self._send(sock, parts):
                break
            with self.handoff:
                if self._fresh and self._fresh[0][0] == rid:
                    self._fresh_bytes -= self._fresh.popleft()[2]
            sent.append(rid)
        if sent:
            self.counters.sent(len(sent))
            if self.acks:
                self._pending.update(dict.fromkeys(sent, now))
            else:
                self.outbox.ack(sent)
        return len(sent)

    def _send_outbox(self, sock: zmq.Socket, now: float) -> int:
        room = self._room()
        if room <= 0:
            return 0
        batch = self.outbox.next_batch(min(room, self.o.batch_messages), self.o.batch_bytes)
        ids = {it.msg_id for it in batch}
        with self.handoff:
            if any(x[0] in ids for x in self._fresh):     # leased now: the outbox path carries them
                self._fresh = collections.deque(x for x in self._fresh if x[0] not in ids)
                self._fresh_bytes = sum(x[2] for x in self._fresh)
        sent: List[str] = []
        for i, item in enumerate(batch):
            if item.msg_id in self._pending:         # already sent on the fresh path: only track the lease
                del self._pending[item.msg_id]
                self._leased[item.msg_id] = now
                continue
            if not self._send(sock, item.parts):
                self.outbox.nack([it.msg_id for it in batch[i:] if it.msg_id not in self._leased])
                self._recheck = True
                break
            sent.append(item.msg_id)
        if sent:
            again = {it.msg_id for it in batch if it.attempts > 1 or it.msg_id in self._expired
                     or it.created < self.started}    # sent before, or left by a previous run
            resent = len(again.intersection(sent))
            self.counters.sent(len(sent), resent=resent)
            if self.acks:
                self._leased.update(dict.fromkeys(sent, now))
            else:
                self.outbox.ack(sent)
        return len(sent)

    def _requeue(self, now: float) -> None:
        if not self.acks:
            return
        old = now - self.o.lease_s
        late = [rid for rid, t in self._pending.items() if t <= old]
        for rid in late:                             # the outbox path sends them again
            del self._pending[rid]
            self._expired.add(rid)
        if self.outbox.requeue_expired(self.o.lease_s):
            self._leased = {i: t for i, t in self._leased.items() if t > old}
            self._recheck = True
        self._recheck = self._recheck or bool(late)

    def _read_acks(self, sock: Optional[zmq.Socket]) -> None:
        """Apply every ack waiting on the socket, in one outbox transaction."""
        ids: List[str] = []
        messages = 0
        while sock is not None and sock.poll(0) and messages < 1000:
            parts = sock.recv_multipart()
            try:
                msg = decode(parts)
                got = msg.header.get("ids")
                if msg.type != "ack" or not isinstance(got, list):
                    raise WireError(f"expected an ack with a list of ids, got {msg.type!r}")
                if not all(isinstance(i, str) and i for i in got):   # result ids are non-empty strings
                    raise WireError("an ack's ids must be result_id strings; got %r" % (got[:5],))
            except WireError as exc:
                self.counters.ack_malformed()
                log.warning("ignored a bad message on the ack socket: %s", exc)
                continue
            ids.extend(got)
            messages += 1
        if not messages:
            return
        with self.handoff:
            self.counters.acked(messages, self.outbox.ack(ids))
            for i in ids:
                self._pending.pop(i, None)
                self._leased.pop(i, None)
                self._expired.discard(i)

    def _wait(self, acks: Optional[zmq.Socket], timeout_s: float) -> None:
        """Until new results are committed, an ack arrives (while acks are awaited) or ``timeout_s`` passes."""
        end = time.monotonic() + timeout_s
        while not self._wake.is_set() and time.monotonic() < end:
            if acks is None or not (self._pending or self._leased):
                self._wake.wait(max(0.0, end - time.monotonic()))
            elif acks.poll(10):
                return

    def snapshot(self) -> Dict[str, Any]:
        """Outbox state for heartbeats: depth, bytes, per state and priority, oldest age; what is awaiting acks."""
        st = self.outbox.stats()
        return {"depth": st["depth"], "bytes_queued": st["bytes_queued"], "queued": st["by_state"]["queued"]["messages"],
                "in_flight": st["by_state"]["in_flight"]["messages"], "acked": st["by_state"]["acked"]["messages"],
                "awaiting_ack": len(self._pending) + len(self._leased), "by_priority": st["by_priority"],
                "oldest_age_s": st["oldest_age_s"], "retries": st["retries"], "acks_on": self.acks,
                "receiver_connected": not self.no_receiver}
