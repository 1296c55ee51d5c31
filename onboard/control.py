"""Client side of the daemon's control channel (a DEALER talking to the daemon's ROUTER).

``docs/protocol.md`` ("Control channel") is the contract. With Curve keys the client
authenticates itself to the daemon and checks the daemon's identity; every command carries a
fresh random ``nonce`` and a ``counter`` that strictly increases for this client key, so the
daemon can refuse replays.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Dict, Optional

import zmq

from engines.errors import UserError
from onboard.curve import KeyLike, as_curve_key, public_from_secret
from onboard.wire import decode, encode, new_id


class ControlClient:
    """Sends commands to a daemon and returns its replies.

    Parameters
    ----------
    endpoint : str
        The daemon's ``control_endpoint``.
    timeout_s : float
        How long to wait for each reply.
    ctx : zmq.Context, optional
        Defaults to the process-wide context.
    server_public_key : bytes, str or path, optional
        The daemon's Curve public key (Z85 text or a ``.curve.pub`` file). Giving it turns Curve on;
        then ``client_secret_key`` is required too.
    client_secret_key, client_public_key : bytes, str or path, optional
        This operator's Curve key pair (Z85 text or ``.curve.key``/``.curve.pub`` files); the public
        key is derived from the secret one when omitted.
    counter_path : str or path, optional
        A JSON file remembering the last counter sent per client key, so the counter keeps
        increasing even if the wall clock steps back. Without it the counter is
        ``max(last + 1, time.time_ns())``, which stays monotonic across restarts of a client
        whose clock does not go backwards.

    Notes
    -----
    Several processes that share one client key may race and see ``E_REPLAY`` (their counters
    interleave); give each operator process its own key, or retry, which sends a fresh nonce and
    counter.
    """

    def __init__(self, endpoint: str, timeout_s: float = 5.0, ctx: Optional[zmq.Context] = None, *,
                 server_public_key: Optional[KeyLike] = None, client_secret_key: Optional[KeyLike] = None,
                 client_public_key: Optional[KeyLike] = None, counter_path: Optional[Any] = None):
        self.endpoint = endpoint
        self.timeout_ms = int(timeout_s * 1000)
        self.ctx = ctx or zmq.Context.instance()
        self._curve: Optional[tuple] = None
        self.client_key = "anonymous"
        if (server_public_key is None) != (client_secret_key is None):
            raise UserError("a Curve control client needs both the daemon's public key (server_public_key, "
                            "DAEMON.curve.pub) and its own secret key (client_secret_key, NAME.curve.key).")
        if server_public_key is not None:
            secret = as_curve_key(client_secret_key, secret=True)
            public = public_from_secret(secret)
            if client_public_key is not None and as_curve_key(client_public_key) != public:
                raise UserError("client_public_key does not belong to client_secret_key; pass the matching "
                                "NAME.curve.pub (or leave it out).")
            self._curve = (as_curve_key(server_public_key), public, secret)
            self.client_key = public.decode()
        self.counter_path = Path(counter_path) if counter_path is not None else None
        self._last = self._read_counters().get(self.client_key, 0)
        self.sock = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        if self._curve:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self._curve
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise UserError("cannot connect to the control endpoint %r: %s; give the daemon's control_endpoint, "
                            "e.g. tcp://127.0.0.1:5557" % (self.endpoint, exc)) from None
        return sock

    def _read_counters(self) -> Dict[str, int]:
        if self.counter_path is None or not self.counter_path.exists():
            return {}
        try:
            return {str(k): int(v) for k, v in json.loads(self.counter_path.read_text()).items()}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise UserError("control counter file %s is unreadable (%s); fix or delete it (the wall clock then "
                            "seeds the counter)." % (self.counter_path, exc)) from None

    def _next_counter(self) -> int:
        data = self._read_counters()
        self._last = max(self._last + 1, data.get(self.client_key, 0) + 1, time.time_ns())
        if self.counter_path is not None:
            data[self.client_key] = self._last
            self.counter_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.counter_path.with_name(self.counter_path.name + ".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.counter_path)
        return self._last

    def _exchange(self, cmd: str, args: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Send one command; its reply header, or None when none came within the timeout."""
        request_id = new_id()
        self.sock.send_multipart(encode("command", {"id": request_id, "cmd": cmd, "args": args,
                                                    "nonce": secrets.token_hex(16), "counter": self._next_counter()}))
        deadline = time.monotonic() + self.timeout_ms / 1000.0
        while True:
            left = int((deadline - time.monotonic()) * 1000)
            if left <= 0 or not self.sock.poll(left):
                return None
            reply = decode(self.sock.recv_multipart())
            if reply.header.get("in_reply_to") in (request_id, None):
                return reply.header

    def request(self, cmd: str, **args: Any) -> Dict[str, Any]:
        """Send ``cmd`` and return the reply header (``ok``, ``code``, ``message`` and more).

        Raises
        ------
        UserError
            No reply within the timeout: the daemon is not running there, or (with Curve) it did
            not admit this client's key or the server key is wrong. The socket is then
            reconnected, so the unanswered command is never delivered late.
        """
        reply = self._exchange(cmd, args)
        last = reply.get("last_counter") if reply else None
        if reply and reply.get("code") == "E_REPLAY" and isinstance(last, int) and last >= self._last:
            # the daemon saw a higher counter of this key (another process, or a lost counter file):
            # go above it once, with a fresh nonce; a replay by a third party cannot do this
            self._last = last
            reply = self._exchange(cmd, args)
        if reply is not None:
            return reply
        self.sock.close(linger=0)
        self.sock = self._connect()
        hint = (" and that it lists this client's key %s (no reply is what an unlisted key gets)" % self.client_key
                if self._curve else ", and whether it was started with Curve keys (control_secret_key): a keyed "
                "daemon does not answer a client without keys (satedge onboard status --control-keys "
                "DAEMON.curve.pub OPERATOR.curve.key)")
        raise UserError("no reply to %r from %s within %d ms; check that the daemon runs there%s."
                        % (cmd, self.endpoint, self.timeout_ms, hint))

    def status(self) -> Dict[str, Any]:
        """The daemon's status map (counters, queue depth, engine)."""
        reply = self.request("status")
        if not reply.get("ok"):
            raise UserError(f"status failed: {reply.get('code')}: {reply.get('message')}")
        return reply["status"]

    def close(self) -> None:
        """Close the socket."""
        self.sock.close(linger=0)

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
