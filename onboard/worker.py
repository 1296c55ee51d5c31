"""The worker stage: takes batches from the scheduler and runs them through their stream's pipeline.

Before each batch the worker applies engine reloads asked for by the control channel
(:meth:`onboard.engineset.EngineSet.refresh`) and reads the governor's decision: the engine
variant to run and the first deferred priority class. ``Scheduler.next_batch`` gives up to
``scheduler.max_batch_frames`` frames of one pipeline, most urgent first (strict priority across
classes, earliest deadline first within one), waiting up to ``max_wait_s`` for the batch to fill
(dynamic batching). The batch is sized to fill one inference call: ``max_batch`` tiles over the
recent mean tiles per frame (small frames are batched, a frame of 16 tiles or more goes alone);
each stage then runs on all the batch's tiles in shared inference calls of up to ``max_batch``
tiles. Results go to the :class:`OutboxWriter` (stage ``outbox``), which finishes the jobs once
they are durable. An engine failure sheds the batch (``engine_error``) and the worker goes on;
while the daemon drains, deferred classes run too, so that every accepted frame is accounted for.
"""
from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
import traceback
from typing import Any, List

log = logging.getLogger("satedge.onboard")


class Worker:
    """Runs batches (see module doc).

    Parameters
    ----------
    settings : onboard.settings.DaemonSettings
    scheduler : onboard.scheduler.Scheduler
    pipelines : dict of str to onboard.pipeline.Pipeline
        By pipeline name (the scheduler's engine key).
    engines : onboard.engineset.EngineSet
    governor : onboard.governor.Governor
    writer : OutboxWriter
    ingest : onboard.ingest.Ingest
        Its ``done`` flag says no more frames will come.
    """

    def __init__(self, settings, scheduler, pipelines, engines, governor, writer, ingest):
        self.s, self.scheduler, self.pipelines, self.engines = settings, scheduler, pipelines, engines
        self.governor, self.writer, self.ingest = governor, writer, ingest
        self.work_ready = threading.Event()
        self.batches = 0
        self.frames_per_batch = 0.0
        self.tiles_per_frame = 1.0                 # moving average of job costs: sizes the next batch
        self.seconds = {"wait": 0.0, "run": 0.0, "hand_over": 0.0}

    def batch_frames(self) -> int:
        """Frames to ask for: enough to fill one inference call of ``max_batch`` tiles, at most ``max_batch_frames``."""
        return max(1, min(self.s.scheduler.max_batch_frames, int(self.s.max_batch // self.tiles_per_frame)))

    def run(self, ctx) -> None:
        """Stage body: until the daemon stops, ingest is done and nothing is queued."""
        while True:
            ctx.beat()
            if ctx.stopping and self.ingest.done and self.scheduler.depth() == 0:
                break
            self.engines.refresh()
            decision = self.governor.decision
            defer = None if ctx.stopping else decision.defer_priorities_at_or_below
            self.work_ready.clear()
            t0 = time.perf_counter()
            jobs = self.scheduler.next_batch(None, self.batch_frames(), self.s.scheduler.max_wait_s,
                                             defer_from=defer)
            if not jobs:
                self.work_ready.wait(0.02)
                self.seconds["wait"] += time.perf_counter() - t0
                continue
            ctx.claim(jobs)
            start = time.perf_counter()
            self.seconds["wait"] += start - t0
            try:
                results = self.pipelines[jobs[0].engine_key].run([j.item[0] for j in jobs], decision.variant,
                                                                 [j.item[2] for j in jobs])
            except Exception:
                log.error("batch of %d frame(s) failed in the engine:\n%s", len(jobs), traceback.format_exc())
                if ctx.take_claim() is not None:
                    self.scheduler.done(jobs, error="engine_error")
                continue
            finally:
                self.governor.add_busy(time.perf_counter() - start)
                self.seconds["run"] += time.perf_counter() - start
            if ctx.take_claim() is None:             # abandoned meanwhile: the monitor released the jobs
                return
            self.batches += 1
            self.frames_per_batch += (len(jobs) - self.frames_per_batch) / min(self.batches, 100)
            for job in jobs:
                self.tiles_per_frame += (job.cost - self.tiles_per_frame) * 0.2
            t1 = time.perf_counter()
            for job, res in zip(jobs, results):
                self.writer.put(ctx, job, res, job.item[1], res[0].variant if res else decision.variant)
            self.seconds["hand_over"] += time.perf_counter() - t1
        self.writer.producer_done.set()

    def release(self, jobs, why: str) -> None:
        """Shed jobs of an abandoned run (health monitor)."""
        log.error("worker run abandoned (%s): %d frame(s) shed", why, len(jobs))
        self.scheduler.done(jobs, error="stage_restart")

    def snapshot(self):
        """Batching figures for heartbeats."""
        return {"batches": self.batches, "frames_per_batch": round(self.frames_per_batch, 2),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


class OutboxWriter:
    """Group-commits results into the outbox and offers them to the downlink.

    Everything waiting is committed in one transaction (one fsync); only then is a frame counted
    processed and its scheduler job done, so a result the daemon accepted survives ``kill -9``.
    ``put`` blocks while ``queue_size`` frames are waiting.
    """

    def __init__(self, outbox, scheduler, counters, queue_size: int, downlink):
        self.outbox, self.scheduler, self.counters, self.downlink = outbox, scheduler, counters, downlink
        self._q: "queue.Queue[Any]" = queue.Queue(maxsize=queue_size)
        self.producer_done = threading.Event()

    def put(self, ctx, job, results: List[Any], t_recv: float, variant: str) -> None:
        """Hand one frame's results to the writer, beating ``ctx`` while the queue is full."""
        while True:
            try:
                self._q.put((job, results, t_recv, variant), timeout=0.1)
                return
            except queue.Full:
                ctx.beat()

    def depth(self) -> int:
        """Frames waiting to be committed."""
        return self._q.qsize()

    def run(self, ctx) -> None:
        """Stage body: commit until the worker is done and nothing is waiting."""
        while True:
            ctx.beat()
            try:
                items = [self._q.get(timeout=0.05)]
            except queue.Empty:
                if ctx.stopping and self.producer_done.is_set() and self._q.empty():
                    return                               # the worker puts its last item before it says done
                continue
            while len(items) < 256:
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            ctx.claim(items)
            self._commit(ctx, items)

    def _commit(self, ctx, items: List[Any]) -> None:
        msgs = [(r.result_id, r.priority, r.parts) for _, results, _, _ in items for r in results]
        try:
            with self.downlink.handoff:                  # the downlink sees the commit and the offer together
                self.outbox.put_many(msgs)
                self.downlink.offer([(rid, parts) for rid, _, parts in msgs])
        except (sqlite3.Error, OSError) as exc:
            log.error("outbox write failed (%s); %d frame(s) dropped", exc, len(items))
            if ctx.take_claim() is not None:
                self.release(items, "outbox_error")
            return
        if ctx.take_claim() is None:                 # abandoned while writing: the monitor released the jobs
            return
        now = time.time()
        for job, results, t_recv, variant in items:
            self.scheduler.done([job])
            stats = [r.stats for r in results]
            self.counters.processed(tiles=stats[0]["tiles"] if stats else 0,
                                    discarded=stats[0]["discarded"] if stats else 0,
                                    bytes_raw=job.item[0].nbytes, results=len(results), variant=variant,
                                    bytes_downlink=sum(sum(memoryview(p).nbytes for p in r.parts[1:])
                                                       for r in results),
                                    latency_ms=(now - t_recv) * 1000.0)

    def release(self, items: List[Any], reason: str) -> None:
        """Shed the jobs of items that will not be committed (error, or the run was abandoned)."""
        self.scheduler.done([job for job, _, _, _ in items], error=reason)
