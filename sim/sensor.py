"""Sensor emulator: streams synthetic multispectral frames to a daemon over ZeroMQ.

Frames come from :func:`ground.data.scenes.make_scene` (deterministic by seed), 12-bit DN in
uint16, six Landsat-7 ETM+ bands. Malformed messages from :mod:`sim.badframes` can be mixed in.
Run as a process: ``python -m sim.sensor --endpoint tcp://... --frames 20 --out sent.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import zmq

from engines.errors import UserError
from onboard.wire import make_frame
from sim.badframes import KINDS, bad_frame


class SensorEmulator:
    """Sends frames on a PUSH (default) or PUB socket connected to the daemon's sensor endpoint.

    Parameters
    ----------
    endpoint : str
        The daemon's ``sensor_endpoint``.
    stream : str
        Stream name put in every frame header.
    pattern : str
        ``"push"`` (lossless, with backpressure) or ``"pub"``.
    """

    def __init__(self, endpoint: str, stream: str = "msi", pattern: str = "push",
                 ctx: Optional[zmq.Context] = None, send_timeout_s: Optional[float] = None):
        self._own_ctx = ctx is None
        self.endpoint, self.send_timeout_s = endpoint, send_timeout_s
        self.ctx = ctx or zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH if pattern == "push" else zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, 16)
        if send_timeout_s is not None:
            self.sock.setsockopt(zmq.SNDTIMEO, int(send_timeout_s * 1000))
        try:
            self.sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close(0)
            raise UserError("cannot connect the sensor to %r: %s. Give the daemon's sensor_endpoint, e.g. "
                            "tcp://127.0.0.1:5555 or ipc:///tmp/satedge-sensor" % (endpoint, exc)) from None
        self.stream = stream
        self.sent_good = 0
        self.sent_bad: Dict[str, int] = {}
        self.truth: List[Dict[str, Any]] = []

    def send_scene(self, frame_id: int, seed: int, size: int = 256, cloud_cover: Optional[float] = None) -> None:
        """Generate one scene and send its DN as a frame; its true cloud fraction is recorded."""
        from ground.data.scenes import make_scene
        scene = make_scene(seed, size, size, cloud_cover=cloud_cover)
        self._send(make_frame(scene.dn, stream=self.stream, frame_id=frame_id, seed=seed))
        self.sent_good += 1
        self.truth.append({"frame_id": frame_id, "seed": seed, "cloud_fraction": float(scene.cloud_fraction)})

    def send_bad(self, kind: str, frame_id: int, oversize_bytes: int = 80 * 1024 * 1024) -> None:
        """Send one malformed message of ``kind`` (see :data:`sim.badframes.KINDS`)."""
        self._send(bad_frame(kind, frame_id=frame_id, oversize_bytes=oversize_bytes))
        self.sent_bad[kind] = self.sent_bad.get(kind, 0) + 1

    def _send(self, parts) -> None:
        try:
            self.sock.send_multipart(parts, copy=False)
        except zmq.Again:
            self.close(0)
            raise UserError("no daemon took a frame at %s within %g s: start the daemon (satedge onboard run) or "
                            "give its sensor_endpoint" % (self.endpoint, self.send_timeout_s)) from None

    def close(self, linger_ms: int = 60000) -> None:
        """Flush what is queued (waiting up to ``linger_ms`` for the daemon to take it) and close.

        The context is terminated too when the emulator owns it: without that, messages still
        queued when the process exits would be lost.
        """
        self.sock.close(linger=linger_ms)
        if self._own_ctx:
            self.ctx.term()


def run(endpoint: str, frames: int, *, seed: int = 1000, size: int = 256, rate_hz: float = 0.0,
        bad: Sequence[str] = (), stream: str = "msi", oversize_bytes: int = 80 * 1024 * 1024,
        send_timeout_s: Optional[float] = 60.0) -> Dict[str, Any]:
    """Send ``frames`` good frames (and the ``bad`` kinds spread among them); return what was sent.

    ``UserError`` when ``frames`` < 1, ``rate_hz`` is not a finite number >= 0, or no daemon takes a
    frame within ``send_timeout_s`` (None: wait for ever).
    """
    if frames < 1:
        raise UserError("frames must be at least 1; got %d" % frames)
    if not 0 <= rate_hz < float("inf"):
        raise UserError("rate must be a finite number of frames per second >= 0 (0: as fast as the daemon takes "
                        "them); got %r" % rate_hz)
    emu = SensorEmulator(endpoint, stream, send_timeout_s=send_timeout_s)
    bad = list(bad)
    every = max(1, frames // (len(bad) + 1)) if bad else 0
    t0 = time.time()
    for i in range(frames):
        if bad and i > 0 and i % every == 0:
            emu.send_bad(bad.pop(0), frame_id=10_000_000 + i, oversize_bytes=oversize_bytes)
        emu.send_scene(i, seed + i, size)
        if rate_hz > 0:
            time.sleep(max(0.0, t0 + (i + 1) / rate_hz - time.time()))
    for kind in bad:
        emu.send_bad(kind, frame_id=10_000_000 + frames, oversize_bytes=oversize_bytes)
    emu.close()
    return {"sent_good": emu.sent_good, "sent_bad": emu.sent_bad,
            "sent_total": emu.sent_good + sum(emu.sent_bad.values()), "truth": emu.truth,
            "seconds": time.time() - t0}


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point of the emulator process."""
    p = argparse.ArgumentParser(prog="python -m sim.sensor", description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rate", type=float, default=0.0, help="frames per second (0: as fast as the daemon takes them)")
    p.add_argument("--bad", default="", help="comma-separated malformed kinds to mix in")
    p.add_argument("--oversize-bytes", type=int, default=80 * 1024 * 1024,
                   help="payload size of the 'oversized' malformed kind (above the daemon's max_payload_bytes)")
    p.add_argument("--out", required=True, help="JSON file describing what was sent")
    a = p.parse_args(argv)
    bad = [k for k in a.bad.split(",") if k]
    unknown = sorted(set(bad) - set(KINDS))
    if unknown:
        p.error("--bad: unknown kind(s) %s; known: %s" % (", ".join(unknown), ", ".join(KINDS)))
    try:
        sent = run(a.endpoint, a.frames, seed=a.seed, size=a.size, rate_hz=a.rate, bad=bad,
                   oversize_bytes=a.oversize_bytes)
        with open(a.out, "w") as fh:
            json.dump(sent, fh, indent=2)
    except (UserError, OSError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
