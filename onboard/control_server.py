"""Server side of the control channel: a ROUTER socket behind CurveZMQ and a ZAP allow-list.

``docs/protocol.md`` ("Control channel") is the contract. A ZAP handler admits only listed
client public keys (anyone else never completes the handshake and gets no reply at all); every
command carries a random ``nonce`` and a per-client, strictly increasing ``counter``, remembered
in a JSON state file so a replay is refused across restarts too; every reply says ok or error.
It runs in the caller's thread: :meth:`ControlServer.serve_once` polls with a timeout, so the
daemon's control thread can interleave it with heartbeats.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Set

import zmq
from zmq.auth.thread import ThreadAuthenticator

from engines.errors import UserError
from onboard.curve import KeyLike, as_curve_key, load_authorized_keys, public_from_secret
from onboard.wire import WireError, decode, make_reply

log = logging.getLogger("satedge.onboard.control")
ZAP_DOMAIN = "satedge-control"
ANONYMOUS = "anonymous"  # the client key in insecure (no Curve) mode
DEFAULT_MAX_NONCES = 4096
_NONCE = re.compile(r"^[0-9a-f]{32,128}$")
ReplyFields = Optional[Mapping[str, Any]]
Handler = Callable[[str, Dict[str, Any], Dict[str, Any]], ReplyFields]


class CommandError(UserError):
    """A command the handler refuses (bad arguments, wrong state); replied with ``code``."""

    code = "E_COMMAND"

    def __init__(self, message: str, code: Optional[str] = None):
        super().__init__(message)
        self.code = code or self.code


class UnknownCommand(CommandError):
    """Raised by a handler for a command it does not know; the message lists the known ones."""

    def __init__(self, cmd: Any, known: Iterable[str]):
        super().__init__("unknown command %r; known: %s" % (cmd, ", ".join(known)))


#: Counters stay below 2**62, so that one command with a huge counter cannot use up a key's counter
#: space (a client told ``last_counter`` in an ``E_REPLAY`` reply can always go above it).
MAX_COUNTER = 1 << 62


class ReplayGuard:
    """Per-client last counters and a bounded set of recent nonces, persisted as JSON.

    Parameters
    ----------
    path : str, os.PathLike or None
        The state file (rewritten atomically after every accepted command); None keeps the state
        in memory only, so replays of old commands are accepted after a restart.
    max_nonces : int
        How many recent nonces to remember (oldest forgotten first).
    """

    def __init__(self, path: Optional["os.PathLike[str] | str"], max_nonces: int = DEFAULT_MAX_NONCES):
        self.path = Path(path) if path is not None else None
        self.counters: Dict[str, int] = {}
        self._order: Deque[str] = collections.deque(maxlen=max_nonces)
        self._seen: Set[str] = set()
        if self.path is None:
            log.warning("control replay state is kept in memory only; old commands could be replayed after a "
                        "restart (give the control server a state_path)")
        elif self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            self.counters = {str(k): int(v) for k, v in data["counters"].items()}
            nonces = [str(n) for n in data["nonces"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError("control replay state %s is unreadable (%s: %s). Restore it from a backup; deleting it "
                            "re-admits every command ever sent, so only do that after rotating the operators' "
                            "Curve keys." % (self.path, type(exc).__name__, exc)) from None
        for nonce in nonces[-(self._order.maxlen or 0):]:
            self._remember(nonce)

    def _remember(self, nonce: str) -> None:
        if len(self._order) == self._order.maxlen:
            self._seen.discard(self._order[0])
        self._order.append(nonce)
        self._seen.add(nonce)

    def check(self, client: str, nonce: str, counter: int) -> Optional[str]:
        """Return why ``(nonce, counter)`` from ``client`` is a replay, or None if it is fresh."""
        last = self.counters.get(client, -1)
        if nonce in self._seen:
            return "nonce %s was already used" % nonce
        return None if counter > last else "counter %d is not above this client key's last counter %d" % (counter, last)

    def accept(self, client: str, nonce: str, counter: int) -> None:
        """Record a fresh command and persist the state (before the command runs)."""
        self.counters[client] = counter
        self._remember(nonce)
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as fh:
            json.dump({"version": 1, "counters": self.counters, "nonces": list(self._order)}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        if os.name == "posix":
            fd = os.open(str(self.path.parent), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)


class _AllowList:
    """The ZAP credentials provider: admits a client whose Z85 public key is listed."""

    def __init__(self, keys: Sequence[bytes]):
        self.keys = frozenset(keys)
        self._told: Set[bytes] = set()          # keys already logged (a refused client retries every 100 ms)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        level = logging.DEBUG if key in self._told else logging.WARNING
        if len(self._told) < 1024:
            self._told.add(key)
        log.log(level, "E_AUTH: refused a control connection from unlisted Curve key %s", key.decode("ascii"))
        return False


class ControlServer:
    """The daemon's control socket: authenticated, replay-protected, always answering ok or error.

    Parameters
    ----------
    ctx : zmq.Context or None
        The context for the socket and the ZAP handler. A context holds at most one ZAP handler,
        so None (a private context, terminated by :meth:`close`) is the safe choice.
    endpoint : str
        Where to bind the ROUTER socket.
    server_secret_key, server_public_key : bytes, str or path
        The daemon's Curve key pair (Z85 text or ``.curve.key``/``.curve.pub`` files); the public
        key is derived from the secret one when omitted.
    authorized_client_keys : sequence of bytes, str or path
        Admitted client public keys: Z85 text, ``.curve.pub`` files, or directories of them.
    handler : callable
        ``handler(cmd, args, header) -> mapping or None``. ``header`` is the command's header with
        ``client_key`` set to the authenticated Z85 key. The mapping may hold ``ok`` (default
        True), ``code``, ``message`` and extra reply fields. Raise :class:`UnknownCommand` or
        another ``UserError`` to refuse; any other exception is answered ``E_INTERNAL``.
    state_path : str or path, optional
        Replay-protection state file (see :class:`ReplayGuard`).
    insecure : bool
        Plain ZeroMQ without Curve or an allow-list; for tests only, logged as a warning.
    """

    def __init__(self, ctx: Optional[zmq.Context], endpoint: str, *, handler: Handler,
                 server_secret_key: Optional[KeyLike] = None, server_public_key: Optional[KeyLike] = None,
                 authorized_client_keys: Sequence[KeyLike] = (), state_path: Optional[Any] = None,
                 insecure: bool = False, max_nonces: int = DEFAULT_MAX_NONCES,
                 max_message_bytes: int = 1 << 20):
        if insecure and (server_secret_key is not None or authorized_client_keys):
            raise UserError("control server: insecure=True turns Curve off; do not also pass Curve keys.")
        if not insecure and server_secret_key is None:
            raise UserError("the control channel needs a CurveZMQ server key (server_secret_key) and the operators' "
                            "public keys; create them with 'satedge keys gen --curve'. insecure=True is for tests.")
        self.endpoint, self.handler, self.insecure = endpoint, handler, insecure
        self.guard = ReplayGuard(state_path, max_nonces)
        self._own_ctx = ctx is None
        self.ctx = zmq.Context() if ctx is None else ctx
        self.auth: Optional[ThreadAuthenticator] = None
        self.allow: Optional[_AllowList] = None
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.maxmsgsize = max_message_bytes
        try:
            if insecure:
                log.warning("CONTROL CHANNEL IS NOT AUTHENTICATED: %s accepts commands from anyone (insecure=True, "
                            "meant for tests only)", endpoint)
            else:
                self._secure(server_secret_key, server_public_key, authorized_client_keys)
            self.sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise UserError("cannot bind the control socket to %s (%s); is another daemon using it?"
                            % (endpoint, exc)) from None
        except BaseException:
            self.close()
            raise

    def _secure(self, secret_key: KeyLike, public_key: Optional[KeyLike], clients: Sequence[KeyLike]) -> None:
        secret = as_curve_key(secret_key, secret=True)
        public = public_from_secret(secret)
        if public_key is not None and as_curve_key(public_key) != public:
            raise UserError("the control server's public key does not belong to its secret key; pass the matching "
                            "NAME.curve.pub (or leave it out: it is derived from the secret key).")
        self.allow = _AllowList(load_authorized_keys(clients))
        if not self.allow.keys:
            raise UserError("no authorized control client keys: nobody could send commands. Copy each operator's "
                            "NAME.curve.pub into the authorized keys directory.")
        auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("satedge.onboard.control.zap"))
        try:
            auth.start()                                 # ZAP handler bound before the socket accepts anyone
        except zmq.ZMQError as exc:
            auth.stop()
            raise UserError("cannot start the control ZAP handler (%s): this ZeroMQ context already has one; give "
                            "the control server its own context (ctx=None)." % exc) from None
        self.auth = auth
        self.auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self.allow)
        self.sock.curve_secretkey, self.sock.curve_publickey, self.sock.curve_server = secret, public, True
        self.sock.zap_domain = ZAP_DOMAIN.encode()
        log.info("control %s: Curve server key %s, %d client key(s)", self.endpoint, public.decode(),
                 len(self.allow.keys))

    def set_authorized_keys(self, keys: Sequence[KeyLike]) -> None:
        """Replace the allow-list (takes effect for new connections)."""
        if self.allow is None:
            raise UserError("this control server runs insecure=True; it has no allow-list.")
        self.allow.keys = frozenset(load_authorized_keys(keys))

    def serve_once(self, timeout_ms: int = 100) -> bool:
        """Wait up to ``timeout_ms`` for one command, answer it, and return whether one came."""
        if not self.sock.poll(timeout_ms):
            return False
        frames = self.sock.recv_multipart(copy=False)
        env = 2 if len(frames) > 2 and not frames[1].bytes else 1     # a REQ peer adds an empty delimiter
        # behind Curve the ZAP handler names every connection by its Z85 public key ("User-Id")
        client = ANONYMOUS if self.insecure else frames[-1].get("User-Id")
        self.sock.send_multipart(frames[:env] + self._dispatch(frames[env:], client))
        return True

    def run(self, stop_event: Any, poll_ms: int = 100) -> None:
        """Serve until ``stop_event`` (a ``threading.Event``) is set."""
        while not stop_event.is_set():
            self.serve_once(poll_ms)

    def _dispatch(self, parts: List[Any], client: str) -> List[Any]:
        try:
            msg = decode(parts)
        except WireError as exc:
            return make_reply(None, False, exc.code, str(exc))
        h = msg.header
        if msg.type != "command":
            return make_reply(h, False, "E_TYPE", "control socket takes commands, not %r" % msg.type)
        cmd, args, nonce, counter = h.get("cmd"), h.get("args") or {}, h.get("nonce"), h.get("counter")
        if not isinstance(cmd, str) or not isinstance(args, dict):
            return make_reply(h, False, "E_FIELD", "a command needs 'cmd' (str) and 'args' (map)")
        if not isinstance(nonce, str) or not _NONCE.match(nonce.lower()):
            return make_reply(h, False, "E_FIELD", "a command needs 'nonce': 32 to 128 random hex characters")
        if not isinstance(counter, int) or isinstance(counter, bool) or not 0 <= counter < MAX_COUNTER:
            return make_reply(h, False, "E_FIELD", "a command needs 'counter': an int in [0, 2**62) increasing "
                                                   "per client key")
        nonce = nonce.lower()
        why = self.guard.check(client, nonce, counter)
        if why:
            log.warning("E_REPLAY: refused %r from %s: %s", cmd, client, why)
            return make_reply(h, False, "E_REPLAY", "replayed command refused: %s" % why,
                              last_counter=self.guard.counters.get(client, -1))
        try:
            self.guard.accept(client, nonce, counter)
        except OSError as exc:
            log.error("cannot persist control replay state %s: %s", self.guard.path, exc)
            return make_reply(h, False, "E_INTERNAL", "cannot record the replay state (%s); command not run" % exc)
        try:
            return self._reply(h, self.handler(cmd, dict(args), dict(h, client_key=client)))
        except UserError as exc:
            code = getattr(exc, "code", None)
            return make_reply(h, False, code if isinstance(code, str) else "E_COMMAND", str(exc))
        except Exception as exc:  # a bug in a handler must not stop the control channel
            log.exception("control command %r failed", cmd)
            return make_reply(h, False, "E_INTERNAL", "internal error running %r (%s: %s); see the daemon log"
                              % (cmd, type(exc).__name__, exc))

    @staticmethod
    def _reply(h: Mapping[str, Any], fields: ReplyFields) -> List[Any]:
        extra = dict(fields or {})
        ok = bool(extra.pop("ok", True))
        code, message = extra.pop("code", None) or ("OK" if ok else "E_COMMAND"), str(extra.pop("message", ""))
        extra.pop("in_reply_to", None)
        return make_reply(h, ok, code, message, **extra)

    def close(self, linger_ms: int = 200) -> None:
        """Close the socket (flushing replies for up to ``linger_ms``), stop ZAP, end a private context."""
        if self.sock is not None and not self.sock.closed:
            self.sock.close(linger=linger_ms)
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        if self._own_ctx and not self.ctx.closed:
            self.ctx.term()

    def __enter__(self) -> "ControlServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
