"""Thread-safe counters and latency statistics of the daemon, reported in status and heartbeats."""
from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any, Deque, Dict

import numpy as np


class DaemonCounters:
    """What happened to every frame, so that ``in == processed + dropped + rejected`` can be checked.

    ``frames_in`` counts every message received on the sensor socket; each then ends in exactly
    one of processed (its results are in the durable outbox), dropped (accepted by the wire
    checks but shed by the daemon, with a reason: ``deadline``, ``overload``, ``queue_full``,
    ``engine_error``, ...) or rejected (malformed, with an error code). Frames not finished yet
    are ``in_flight``. Results are then counted on their way down: queued into the outbox, sent
    (``results_resent`` of them again: a lease or ack ran out, or a previous run left them) and
    acknowledged by the ground.
    """

    def __init__(self, latency_window: int = 10000):
        self._lock = threading.Lock()
        self.frames_in = 0
        self.frames_processed = 0
        self.frames_dropped = 0
        self.frames_rejected = 0
        self.rejected_by_code: Counter = Counter()
        self.dropped_by_reason: Counter = Counter()
        self.processed_by_variant: Counter = Counter()
        self.tiles_total = 0
        self.tiles_discarded = 0
        self.bytes_raw = 0
        self.bytes_downlink = 0
        self.results_queued = 0
        self.results_sent = 0
        self.results_resent = 0
        self.results_acked = 0
        self.acks_received = 0
        self.acks_malformed = 0
        self._latency_ms: Deque[float] = deque(maxlen=latency_window)

    def received(self) -> None:
        """One message arrived on the sensor socket."""
        with self._lock:
            self.frames_in += 1

    def rejected(self, code: str) -> None:
        """One message was rejected as malformed, with protocol error ``code``."""
        with self._lock:
            self.frames_rejected += 1
            self.rejected_by_code[code] += 1

    def dropped(self, reason: str) -> None:
        """One accepted frame was shed (for example its deadline passed in the queue)."""
        with self._lock:
            self.frames_dropped += 1
            self.dropped_by_reason[reason] += 1

    def processed(self, *, tiles: int, discarded: int, bytes_raw: int, bytes_downlink: int,
                  latency_ms: float, results: int = 1, variant: str = "") -> None:
        """One frame was processed and its ``results`` result messages are in the outbox."""
        with self._lock:
            self.frames_processed += 1
            self.results_queued += results
            self.tiles_total += tiles
            self.tiles_discarded += discarded
            self.bytes_raw += bytes_raw
            self.bytes_downlink += bytes_downlink
            self.processed_by_variant[variant] += 1
            self._latency_ms.append(latency_ms)

    def sent(self, n: int, resent: int = 0) -> None:
        """``n`` results went out on the results socket, ``resent`` of them not for the first time."""
        with self._lock:
            self.results_sent += n
            self.results_resent += resent

    def acked(self, n_messages: int, n_new: int) -> None:
        """An ack message arrived, acknowledging ``n_new`` results not acknowledged before."""
        with self._lock:
            self.acks_received += n_messages
            self.results_acked += n_new

    def ack_malformed(self) -> None:
        """A message on the ack socket was not a valid ack."""
        with self._lock:
            self.acks_malformed += 1

    def snapshot(self) -> Dict[str, Any]:
        """A plain dict of every counter plus latency p50/p99 (ms) over the recent window."""
        with self._lock:
            lat = np.asarray(self._latency_ms, dtype=np.float64)
            done = self.frames_processed + self.frames_dropped + self.frames_rejected
            return {
                "frames_in": self.frames_in,
                "frames_processed": self.frames_processed,
                "frames_dropped": self.frames_dropped,
                "frames_rejected": self.frames_rejected,
                "in_flight": self.frames_in - done,
                "rejected_by_code": dict(self.rejected_by_code),
                "dropped_by_reason": dict(self.dropped_by_reason),
                "processed_by_variant": dict(self.processed_by_variant),
                "tiles_total": self.tiles_total,
                "tiles_discarded": self.tiles_discarded,
                "bytes_raw": self.bytes_raw,
                "bytes_downlink": self.bytes_downlink,
                "results_queued": self.results_queued,
                "results_sent": self.results_sent,
                "results_resent": self.results_resent,
                "results_acked": self.results_acked,
                "acks_received": self.acks_received,
                "acks_malformed": self.acks_malformed,
                "latency_ms": {
                    "p50": float(np.percentile(lat, 50)) if lat.size else None,
                    "p99": float(np.percentile(lat, 99)) if lat.size else None,
                    "n": int(lat.size),
                },
            }
