"""The daemon's ``fl`` stage: federated-learning rounds as low-priority, power-aware work.

Round packages arrive with the uplink (``onboard.uplink``: a finished ``fl-round-*.npz``). The
stage runs a round only when the power policy allows work of its priority (``fl.priority``,
lowest class by default: deferred first when the budget, the temperature or the battery say so)
and, with ``fl.require_sunlit``, only in sunlight; every wait is counted (``deferred``). The
encoded update becomes a ``result`` message of stage ``fl_update`` committed to the durable outbox
(store-and-forward: it goes down on a later pass, is re-sent until the ground acknowledges it, and
the ground drops duplicates by its id). A marker per round in ``<workdir>/fl/`` makes a round
that was committed once never run again, even when the uplink delivers its package again after
a restart.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import time
from typing import Any, Dict, Optional

from onboard.fl.client import FLClient, load_round
from onboard.wire import encode

log = logging.getLogger("satedge.onboard")


class FLStage:
    """Body of the ``fl`` stage of a :class:`onboard.daemon.Daemon` (see module doc)."""

    def __init__(self, daemon):
        self.d, self.s = daemon, daemon.settings.fl
        self.dir = os.path.join(daemon.settings.workdir, "fl")
        os.makedirs(self.dir, exist_ok=True)
        self.inbox: "queue.Queue[str]" = queue.Queue()
        self.client: Optional[FLClient] = None
        self.counts = {"received": 0, "rounds": 0, "deferred": 0, "skipped_done": 0, "failed": 0}
        self.last: Dict[str, Any] = {}

    def submit(self, path: str) -> None:
        """A round package arrived (called by the uplink stage)."""
        self.counts["received"] += 1
        self.inbox.put(path)

    def allowed(self) -> Optional[str]:
        """None when a round may run now, else why not."""
        gov = self.d.governor
        if gov.decision.defers(self.s.priority):
            return f"power policy defers priority {self.s.priority}: {gov.decision.reason}"
        if self.s.require_sunlit and (gov.telemetry or {}).get("sunlit") is False:
            return "in eclipse"
        return None

    def run(self, ctx) -> None:
        """Take packages one by one; wait (counted) while the policy says no; commit each update."""
        while not self.d.stop.is_set():
            ctx.beat()
            try:
                path = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            waited = False
            while (why := self.allowed()) is not None and not self.d.stop.is_set():
                if not waited:
                    self.counts["deferred"] += 1
                    self.last = {"package": os.path.basename(path), "deferred": why}
                    waited = True
                ctx.beat()
                time.sleep(0.2)
            if self.d.stop.is_set():
                return                      # the package stays in the uplink inbox for the next start
            self.run_round(path)

    def run_round(self, path: str) -> None:
        """One round (unless already committed): train, compress, encode, put in the outbox."""
        try:
            rnd = load_round(path)[0]
            marker = os.path.join(self.dir, f"round-{rnd}.json")
            if os.path.exists(marker):
                self.counts["skipped_done"] += 1
                return
            if self.client is None:
                self.client = FLClient(self.s.data, seed=self.s.seed)
            t0 = time.time()
            fields, payload = self.client.run_round(path)
        except Exception as exc:             # a bad package or a missing torch must not stop the daemon
            self.counts["failed"] += 1
            self.last = {"package": os.path.basename(path), "error": f"{type(exc).__name__}: {exc}"}
            log.error("fl: round from %s failed: %s", os.path.basename(path), exc)
            return
        rid = f"fl:{self.s.client_id}:round{rnd}"
        header = dict(fields, id=rid, result_id=rid, stream="fl", frame_id=rnd, stage="fl_update",
                      priority=self.s.priority, client=self.s.client_id, train_s=round(time.time() - t0, 3))
        self.d.outbox.put(rid, self.s.priority, encode("result", header, [payload]))
        self.d.downlink.notify_backlog()
        with open(marker, "w") as fh:
            json.dump({k: v for k, v in header.items() if k != "shapes"}, fh)
        self.counts["rounds"] += 1
        self.last = {"round": rnd, "update_bytes": len(payload), "loss": fields["loss"]}
        log.info("fl: round %d done, %d update bytes in the outbox", rnd, len(payload))

    def snapshot(self) -> Dict[str, Any]:
        """FL state for heartbeats."""
        return dict(self.counts, pending=self.inbox.qsize(), last=self.last)
