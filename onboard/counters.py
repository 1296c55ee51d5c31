"""Thread-safe counters and latency statistics of the daemon, reported in status and heartbeats."""
from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any, Deque, Dict

import numpy as np


class DaemonCounters:
    """What happened to every frame, so that ``in == processed + dropped + rejected`` can be checked.

    ``frames_in`` counts every message received on the sensor socket; each then ends in exactly
    one of processed, dropped (shed by the daemon, with a reason) or rejected (malformed, with
    an error code). Frames accepted but not finished yet are ``in_flight``.
    """

    def __init__(self, latency_window: int = 10000):
        self._lock = threading.Lock()
        self.frames_in = 0
        self.frames_processed = 0
        self.frames_dropped = 0
        self.frames_rejected = 0
        self.rejected_by_code: Counter = Counter()
        self.dropped_by_reason: Counter = Counter()
        self.tiles_total = 0
        self.tiles_discarded = 0
        self.bytes_raw = 0
        self.bytes_downlink = 0
        self.results_sent = 0
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
                  latency_ms: float) -> None:
        """One frame was processed and its result sent."""
        with self._lock:
            self.frames_processed += 1
            self.results_sent += 1
            self.tiles_total += tiles
            self.tiles_discarded += discarded
            self.bytes_raw += bytes_raw
            self.bytes_downlink += bytes_downlink
            self._latency_ms.append(latency_ms)

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
                "tiles_total": self.tiles_total,
                "tiles_discarded": self.tiles_discarded,
                "bytes_raw": self.bytes_raw,
                "bytes_downlink": self.bytes_downlink,
                "results_sent": self.results_sent,
                "latency_ms": {
                    "p50": float(np.percentile(lat, 50)) if lat.size else None,
                    "p99": float(np.percentile(lat, 99)) if lat.size else None,
                    "n": int(lat.size),
                },
            }
