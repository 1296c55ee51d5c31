"""Ground receiver: collects the daemon's results (the downlink) and summarises them.

Results are deduplicated by ``(stream, frame_id)``, so a result that arrives twice counts once.
Run as a process: ``python -m ground.receiver --results tcp://... --out summary.json``; it
stops on SIGTERM/SIGINT after reading what is already waiting, and writes its summary.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np
import zmq

from onboard.wire import WireError, decode


class GroundReceiver:
    """Pulls result messages from a daemon's results endpoint.

    Parameters
    ----------
    endpoint : str
        The daemon's ``results_endpoint`` (the receiver connects to it).
    """

    def __init__(self, endpoint: str, ctx: Optional[zmq.Context] = None):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.connect(endpoint)
        self.results: Dict[tuple, Dict[str, Any]] = {}
        self.duplicates = 0
        self.malformed = 0
        self.bytes_received = 0
        self.e2e_latency_ms: List[float] = []

    def poll(self, timeout_ms: int = 100) -> int:
        """Receive every result available within ``timeout_ms``; returns how many arrived."""
        n = 0
        while self.sock.poll(timeout_ms if n == 0 else 0):
            parts = self.sock.recv_multipart()
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
            key = (msg.header.get("stream"), msg.header.get("frame_id"))
            if key in self.results:
                self.duplicates += 1
                continue
            size = sum(len(p) for p in parts)
            self.bytes_received += size
            h = dict(msg.header)
            h["_bytes"] = size
            self.results[key] = h
            if isinstance(h.get("sensor_ts"), (int, float)):
                self.e2e_latency_ms.append((now - h["sensor_ts"]) * 1000.0)
        return n

    def summary(self) -> Dict[str, Any]:
        """Counts, downlink bytes and end-to-end latency (sensor send → ground receipt)."""
        lat = np.asarray(self.e2e_latency_ms)
        tiles = [t for h in self.results.values() for t in h.get("tiles", [])]
        return {
            "results": len(self.results),
            "duplicates": self.duplicates,
            "malformed": self.malformed,
            "downlink_bytes": self.bytes_received,
            "tiles": len(tiles),
            "tiles_kept": sum(1 for t in tiles if t.get("kept")),
            "e2e_latency_ms": {"p50": float(np.percentile(lat, 50)) if lat.size else None,
                               "p99": float(np.percentile(lat, 99)) if lat.size else None},
            "frame_ids": sorted(k[1] for k in self.results),
        }

    def close(self) -> None:
        """Close the socket."""
        self.sock.close(linger=0)


def main(argv: Optional[List[str]] = None) -> int:
    """Run a receiver until SIGTERM/SIGINT, then write the summary JSON."""
    parser = argparse.ArgumentParser(prog="python -m ground.receiver", description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="the daemon's results endpoint")
    parser.add_argument("--out", required=True, help="where to write the summary JSON")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    rx = GroundReceiver(args.results)
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
