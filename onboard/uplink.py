"""The daemon's ``uplink`` stage: files from the ground into the engine store, and store scrubbing.

With ``uplink.endpoint`` set, the stage runs an :class:`onboard.transfer.TransferReceiver` (resumable,
NAK-based, end-to-end sha256; its state survives restarts under ``uplink.state_dir``). Each finished
file that is a bundle archive (``.tar``, :func:`engines.archive.pack_archive`) is unpacked with the
safe extractor into ``<state_dir>/bundles/`` and installed exactly like the control ``install``
command: signature and hashes verified, the inactive A/B slot staged, canary against the bundle's
reference outputs, activation, health check, and the serving stages reload the engine. A bundle
the store refuses stays refused (the receiver records the error; the ground sees it in the
heartbeat's ``engine_ops``). If the process dies during the install (a power loss), the receiver
delivers the file again after the restart, once the store's recovery has resolved the interrupted
install.

A finished ``fl-round-*.npz`` goes to the ``fl`` stage (:mod:`onboard.fl.stage`).

``uplink.scrub_interval_s`` > 0 re-hashes every engine of the store that often; a corrupted active
slot (a bit flip in a stored engine) makes the store switch to the intact other slot, and the
stages reload, so no inference runs on a damaged engine for longer than one interval.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any, Dict

from engines.errors import UserError

log = logging.getLogger("satedge.onboard")


class UplinkStage:
    """Body of the ``uplink`` stage of a :class:`onboard.daemon.Daemon` (see module doc).

    Parameters
    ----------
    daemon : onboard.daemon.Daemon
        Gives the settings, the engine store, the command handler and the ZeroMQ context.
    """

    def __init__(self, daemon):
        self.d = daemon
        self.s = daemon.settings.uplink
        self.state_dir = self.s.state_dir or os.path.join(daemon.settings.workdir, "uplink")
        self.receiver: Any = None
        self.installs = 0
        self.scrubs = 0

    def run(self, ctx) -> None:
        """Serve the transfer receiver and the scrub timer until the daemon drains."""
        rx = None
        if self.s.endpoint:
            from onboard.transfer import TransferConfig, TransferReceiver
            cfg = TransferConfig.from_mapping(self.s.transfer, "settings.uplink.transfer")   # checked at load
            rx = self.receiver = TransferReceiver(self.s.endpoint, os.path.join(self.state_dir, "transfers"),
                                                  os.path.join(self.state_dir, "inbox"), on_complete=self.deliver,
                                                  config=cfg, ctx=self.d.ctx)
        next_scrub = time.monotonic() + self.s.scrub_interval_s
        try:
            while not self.d.stop.is_set():
                ctx.beat()
                if rx is not None:
                    rx.poll(rx.clock.factor * 0.05)           # at most 50 ms of wall time
                else:
                    self.d.stop.wait(0.2)
                if self.s.scrub_interval_s > 0 and time.monotonic() >= next_scrub:
                    self.scrub()
                    next_scrub = time.monotonic() + self.s.scrub_interval_s
        finally:
            if rx is not None:
                rx.close()

    def deliver(self, path: str) -> None:
        """A finished file: install it when it is a bundle archive; other files stay in the inbox."""
        base = os.path.basename(path)
        if base.startswith("fl-round-") and base.endswith(".npz"):
            if self.d.fl is None:
                raise UserError(f"{base} is an FL round package but this daemon has no fl.data; kept in the inbox")
            self.d.fl.submit(path)
            return
        if not path.endswith(".tar"):
            log.info("uplink: received %s (not a bundle archive; kept)", path)
            return
        from engines.archive import extract_archive
        dest = os.path.join(self.state_dir, "bundles", os.path.basename(path)[:-4])
        shutil.rmtree(dest, ignore_errors=True)
        extract_archive(path, dest)
        reply = self.d.handler.install_bundle(dest)
        self.installs += 1
        log.info("uplink: %s -> %s", os.path.basename(path), reply.get("message"))

    def scrub(self) -> Dict[str, Any]:
        """Re-hash every engine of the store once; reload the stages of any engine that switched slot."""
        store = self.d.store
        out: Dict[str, Any] = {}
        if store is None:
            return out
        for name in store.engines():
            rep = self.d.handler.scrub_engine(name)
            if rep is not None:
                out[name] = rep
        self.scrubs += 1
        return out

    def snapshot(self) -> Dict[str, Any]:
        """Uplink state for heartbeats: transfers by status, installs and scrubs done."""
        txns = {} if self.receiver is None else {
            t["txn"]: {"name": t.get("name"), "status": t.get("status"), "size": t.get("size"),
                       "received": sum(b - a for a, b in t.get("ranges") or []), "error": t.get("error")}
            for t in self.receiver.txns.values()}
        return {"endpoint": self.s.endpoint, "transfers": txns, "installs": self.installs, "scrubs": self.scrubs}
