"""Client side of the daemon's control channel (a DEALER talking to the daemon's ROUTER)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import zmq

from engines.errors import UserError
from onboard.wire import decode, make_command


class ControlClient:
    """Sends commands to a daemon and returns its replies.

    Parameters
    ----------
    endpoint : str
        The daemon's ``control_endpoint``.
    timeout_s : float
        How long to wait for each reply.
    """

    def __init__(self, endpoint: str, timeout_s: float = 5.0, ctx: Optional[zmq.Context] = None):
        self.endpoint = endpoint
        self.timeout_ms = int(timeout_s * 1000)
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def request(self, cmd: str, **args: Any) -> Dict[str, Any]:
        """Send ``cmd`` and return the reply header (``ok``, ``code``, ``message`` and more).

        Raises
        ------
        UserError
            No reply within the timeout (is the daemon running at this endpoint?).
        """
        parts = make_command(cmd, **args)
        request_id = None
        self.sock.send_multipart(parts)
        import msgpack
        request_id = msgpack.unpackb(parts[1])["id"]
        while self.sock.poll(self.timeout_ms):
            reply = decode(self.sock.recv_multipart())
            if reply.header.get("in_reply_to") in (request_id, None):
                return reply.header
        raise UserError(f"no reply to {cmd!r} from {self.endpoint} within {self.timeout_ms} ms; "
                        "is the daemon running there (check its log)?")

    def status(self) -> Dict[str, Any]:
        """The daemon's status map (counters, queue depth, engine)."""
        reply = self.request("status")
        if not reply.get("ok"):
            raise UserError(f"status failed: {reply.get('code')}: {reply.get('message')}")
        return reply["status"]

    def close(self) -> None:
        """Close the socket."""
        self.sock.close(linger=0)
