"""Ground receiver: collects the daemon's results (the downlink), acknowledges them, and summarises them.

Results are deduplicated by ``result_id`` (``docs/protocol.md``; results of daemons older than
the field fall back to ``(stream, frame_id, stage)``), so a result the daemon sent again after a
lost ack counts once. With an ack endpoint the receiver acknowledges every result it gets,
duplicates included (the first ack may be what was lost), in one ``ack`` message per poll.
Run as a process: ``python -m ground.receiver --results tcp://... [--ack tcp://...] --out
summary.json``; it stops on SIGTERM/SIGINT after reading what is already waiting, and writes
its summary.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import Counter
from typing import Any, Dict, List, Optional

import numpy as np
import zmq

from onboard.wire import WireError, decode, make_ack


def result_key(header: Dict[str, Any]) -> Any:
    """The dedup key of a result header."""
    rid = header.get("result_id")
    return rid if isinstance(rid, str) and rid else (header.get("stream"), header.get("frame_id"), header.get("stage"))


class GroundReceiver:
    """Pulls result messages from a daemon's results endpoint and acks them.

    Parameters
    ----------
    endpoint : str
        The daemon's ``results_endpoint`` (the receiver connects to it).
    ack_endpoint : str, optional
        The daemon's ``ack_endpoint``; without it nothing is acknowledged.
    keep_buffers : bool
        Keep each result's buffers (``self.buffers[key]``), for tests that decode them.
    on_result : callable, optional
        ``on_result(header, duplicate, size)`` for every result message received (duplicates too).
    """

    def __init__(self, endpoint: str, ctx: Optional[zmq.Context] = None, ack_endpoint: Optional[str] = None,
                 keep_buffers: bool = False, on_result=None):
        self.on_result = on_result
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.connect(endpoint)
        self.ack_sock = None
        if ack_endpoint:
            self.ack_sock = self.ctx.socket(zmq.PUSH)
            self.ack_sock.setsockopt(zmq.LINGER, 0)
            self.ack_sock.connect(ack_endpoint)
        self.keep_buffers = keep_buffers
        self.results: Dict[Any, Dict[str, Any]] = {}
        self.buffers: Dict[Any, List[bytes]] = {}
        self.arrivals: Counter = Counter()
        self.duplicates = 0
        self.malformed = 0
        self.acks_sent = 0
        self.bytes_received = 0
        self.e2e_latency_ms: List[float] = []

    def poll(self, timeout_ms: int = 100) -> int:
        """Receive every result available within ``timeout_ms``, ack them; return how many arrived."""
        n, ack_ids = 0, []
        while self.sock.poll(timeout_ms if n == 0 else 0):
            parts = self.sock.recv_multipart(copy=False)      # frames: the payload is not copied
            now = time.time()
            n += 1
            try:
                msg = decode(parts)
            except WireError:
                self.malformed += 1
                continue
            if msg.type != "result":
                self.malformed += 1
                continue
            key = result_key(msg.header)
            self.arrivals[key] += 1
            if isinstance(msg.header.get("result_id"), str):
                ack_ids.append(msg.header["result_id"])
            size = sum(len(p) for p in parts)
            if self.on_result is not None:
                self.on_result(msg.header, key in self.results, size)
            if key in self.results:
                self.duplicates += 1
                continue
            self.bytes_received += size
            h = dict(msg.header)
            h["_bytes"] = size
            h["_received"] = now
            self.results[key] = h
            if self.keep_buffers:
                self.buffers[key] = [bytes(b) for b in msg.buffers]
            if isinstance(h.get("sensor_ts"), (int, float)):
                self.e2e_latency_ms.append((now - h["sensor_ts"]) * 1000.0)
        if ack_ids and self.ack_sock is not None:
            try:                              # never block: a lost ack only means the result comes again
                self.ack_sock.send_multipart(make_ack(ack_ids), flags=zmq.NOBLOCK)
                self.acks_sent += 1
            except zmq.Again:
                pass
        return n

    def summary(self) -> Dict[str, Any]:
        """Counts, downlink bytes and end-to-end latency (sensor send → ground receipt)."""
        lat = np.asarray(self.e2e_latency_ms)
        tiles = [t for h in self.results.values() for t in h.get("tiles", []) if "kept" in t]   # cloud screens
        return {
            "results": len(self.results),
            "duplicates": self.duplicates,
            "malformed": self.malformed,
            "acks_sent": self.acks_sent,
            "downlink_bytes": self.bytes_received,
            "tiles": len(tiles),
            "tiles_kept": sum(1 for t in tiles if t.get("kept")),
            "by_stage": dict(Counter(h.get("stage") for h in self.results.values())),
            "e2e_latency_ms": {"p50": float(np.percentile(lat, 50)) if lat.size else None,
                               "p99": float(np.percentile(lat, 99)) if lat.size else None},
            "frame_ids": sorted({h.get("frame_id") for h in self.results.values()
                                 if isinstance(h.get("frame_id"), int)}),
        }

    def close(self) -> None:
        """Close the sockets."""
        self.sock.close(linger=0)
        if self.ack_sock is not None:
            self.ack_sock.close(linger=0)


def main(argv: Optional[List[str]] = None) -> int:
    """Run a receiver until SIGTERM/SIGINT, then write the summary JSON."""
    parser = argparse.ArgumentParser(prog="python -m ground.receiver", description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="the daemon's results endpoint")
    parser.add_argument("--ack", default=None, help="the daemon's ack endpoint (acknowledged delivery)")
    parser.add_argument("--out", required=True, help="where to write the summary JSON")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    rx = GroundReceiver(args.results, ack_endpoint=args.ack)
    while not stop.is_set():
        rx.poll(100)
    while rx.poll(300):
        pass
    with open(args.out, "w") as fh:
        json.dump(rx.summary(), fh, indent=2)
    rx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
