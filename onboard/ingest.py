"""The ingest stage: sensor frames in, validated, routed to their stream's pipeline, offered to the scheduler.

Each message read from the sensor socket is decoded and checked (:mod:`onboard.wire`); a bad
one is rejected with its protocol error code into the dead-letter log and the next is read.
A good frame is routed to the pipeline of its stream (or the ``"*"`` pipeline), must have the
band count its engines take, and is offered to the scheduler with the stream's priority class,
its ``deadline`` (or now + the stream's ``deadline_s``) and a cost of its tile count. Ingest also
cuts each accepted frame into its tiles (:meth:`onboard.pipeline.Pipeline.cut`), so that the worker
usually finds them ready and spends its time on inference; a frame the worker takes before that, and
a deferred class's frames, are cut by the worker.

When the frame's queue is full, ``scheduler.admission`` decides: ``block`` stops reading (the
sensor socket's high-water mark then pushes back on the sender: lossless) until there is room or
``block_timeout_s`` passes; ``reject`` drops it at once. A class the power policy defers never
blocks ingest: its frames are dropped when its queue is full, so that urgent frames behind them
on the same socket still get in. Every drop is counted under ``dropped_by_reason``.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Tuple

import zmq

from onboard.scheduler import Admission
from onboard.wire import InvalidField, PayloadTooLarge, ShapeMismatch, WireError, decode, parse_frame

log = logging.getLogger("satedge.onboard")


class Ingest:
    """Reads, validates and admits frames (see module doc).

    Parameters
    ----------
    settings : onboard.settings.DaemonSettings
    pipelines : dict of str to onboard.pipeline.Pipeline
        By stream name; ``"*"`` catches the others.
    scheduler : onboard.scheduler.Scheduler
    counters : onboard.counters.DaemonCounters
    deadletters : onboard.deadletter.DeadLetterLog
    governor : onboard.governor.Governor
        Its decision says which classes are deferred.
    """

    def __init__(self, settings, pipelines, scheduler, counters, deadletters, governor):
        self.s, self.pipelines, self.scheduler = settings, pipelines, scheduler
        self.counters, self.deadletters, self.governor = counters, deadletters, governor
        self.paused = False
        self.work_ready = None          # set by the daemon: an Event the worker waits on
        self.done = False

    def run(self, ctx, sock: zmq.Socket) -> None:
        """Stage body: read until the daemon stops and nothing more is waiting on the socket."""
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while True:
                ctx.beat()
                if self.paused and not ctx.stopping:
                    time.sleep(0.05)
                    continue
                if not poller.poll(50):
                    if ctx.stopping:
                        break                       # nothing more waiting: drained
                    continue
                if self.paused and not ctx.stopping:
                    continue
                parts = sock.recv_multipart(copy=False)
                self.counters.received()
                try:
                    frame, pipe, cost = self.accept(parts)
                except WireError as exc:
                    self.counters.rejected(exc.code)
                    self.deadletters.add(exc.code, str(exc), parts)
                    log.warning("rejected message (%s): %s", exc.code, exc)
                    continue
                self.admit(ctx, frame, pipe, cost)
        finally:
            sock.close(linger=0)
        self.done = True

    def accept(self, parts: List[Any]) -> Tuple[Any, Any, int]:
        """Decode and check one message; return the frame, its pipeline and its cost in tiles."""
        frame = parse_frame(decode(parts), self.s.max_payload_bytes)
        pipe = self.pipelines.get(frame.stream) or self.pipelines.get("*")
        if pipe is None:
            raise InvalidField(f"no pipeline for stream {frame.stream!r}; configured streams: "
                               f"{sorted(self.pipelines)} (add it, or a '*' pipeline, to the daemon config)")
        if frame.data.shape[0] != pipe.bands:
            raise ShapeMismatch(f"frame has {frame.data.shape[0]} bands; the engines of stream "
                                f"{frame.stream!r} expect {pipe.bands}")
        cost = len(pipe.grid(frame))
        cap = min(self.scheduler.capacities[pipe.priority], self.scheduler.total_capacity)
        if cost > cap:
            raise PayloadTooLarge(f"frame needs {cost} tiles of queue; class {pipe.priority} holds {cap} "
                                  "(raise scheduler.capacities / total_capacity for scenes this large)")
        return frame, pipe, cost

    def admit(self, ctx, frame, pipe, cost: int) -> None:
        """Offer one frame to the scheduler, blocking or dropping when its queue is full (see module doc)."""
        prio = pipe.priority
        t_recv = time.time()
        deadline = frame.header.get("deadline")
        if not isinstance(deadline, (int, float)) or isinstance(deadline, bool):
            deadline = t_recv + pipe.stream.deadline_s
        sc = self.s.scheduler
        if sc.admission == "block":
            give_up = time.monotonic() + sc.block_timeout_s if sc.block_timeout_s > 0 else None
            while not self.scheduler.wait_room(prio, cost, 0.05) and not self.governor.decision.defers(prio):
                ctx.beat()
                if give_up is not None and time.monotonic() > give_up:
                    break
        item = [frame, t_recv, None]              # [2]: the tiles, cut once the frame is in (see module doc)
        result = self.scheduler.submit(item, prio, float(deadline), cost=cost, engine_key=pipe.name)
        if result is Admission.REJECTED_FULL:
            self.counters.dropped("queue_full")
        elif result is Admission.ACCEPTED:
            if self.work_ready is not None:
                self.work_ready.set()
            if not self.governor.decision.defers(prio):
                item[2] = pipe.cut(frame)         # a worker that takes the job first cuts it itself

    def snapshot(self) -> Dict[str, Any]:
        """Ingest state for heartbeats."""
        return {"paused": self.paused, "streams": sorted(self.pipelines)}
