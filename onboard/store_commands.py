"""Rollback commands: signed ground orders that let one engine go back to one older version, once.

Rollback protection refuses any version not above the highest ever activated. A
``RollbackCommand`` lifts it for exactly one engine and version: it is signed with an ed25519 key
the store trusts (the same keys as bundles), carries a fresh nonce, and is issued no earlier than
the last command the engine accepted. ``accept_command`` checks all of that and records the nonce
in the engine's state file (``onboard.store_journal``) so it can never be replayed.
``docs/store.md`` describes the format.
"""
from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Sequence

from cryptography.exceptions import InvalidSignature

from engines.signing import key_id, load_private_key, load_public_key
from onboard.store_errors import RollbackRefused

MAX_NONCES = 256  # accepted nonces kept per engine (the freshness rule covers older ones)
__all__ = ["MAX_NONCES", "RollbackCommand", "accept_command"]


@dataclass(frozen=True)
class RollbackCommand:
    """A signed ground order that lets engine ``engine`` go back to ``version`` once.

    The ed25519 signature (same keys as bundles) covers the canonical JSON of
    ``{"engine", "issued_at", "nonce", "version"}``: sorted keys, no whitespace, ``issued_at`` in
    whole UNIX seconds. Build one on the ground with ``create``; send ``to_json()``; read it on
    board with ``from_json``.
    """

    engine: str
    version: int
    nonce: str
    issued_at: int
    key_id: str = ""
    signature: bytes = b""

    def payload(self) -> bytes:
        """The exact bytes the signature covers."""
        body = {"engine": self.engine, "version": self.version, "nonce": self.nonce, "issued_at": self.issued_at}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def create(cls, engine: str, version: int, private_key_path: Any, nonce: Optional[str] = None,
               issued_at: Optional[int] = None) -> "RollbackCommand":
        """Sign a new command with the private key at ``private_key_path`` (a fresh random nonce by default)."""
        key = load_private_key(private_key_path)
        cmd = cls(engine, int(version), nonce or uuid.uuid4().hex, int(time.time() if issued_at is None else issued_at))
        return replace(cmd, key_id=key_id(key.public_key()), signature=key.sign(cmd.payload()))

    def to_json(self) -> str:
        """Serialize as ``{"command": {...}, "alg": "ed25519", "key_id": ..., "sig": base64}``."""
        return json.dumps({"command": json.loads(self.payload()), "alg": "ed25519", "key_id": self.key_id,
                           "sig": base64.b64encode(self.signature).decode("ascii")}, sort_keys=True)

    @classmethod
    def from_json(cls, text: Any) -> "RollbackCommand":
        """Parse ``to_json`` output; ``RollbackRefused`` if it is malformed (its signature is checked later)."""
        try:
            doc = json.loads(text)
            cmd, sig = doc["command"], base64.b64decode(doc["sig"], validate=True)
            fields = (cmd["engine"], cmd["version"], cmd["nonce"], cmd["issued_at"], doc["key_id"])
            if [type(f) for f in fields] != [str, int, str, int, str] or doc.get("alg") != "ed25519":
                raise ValueError("wrong field types or alg")
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise RollbackRefused("rollback command is malformed (%s); ask the ground to issue a new one "
                                  "with RollbackCommand.create." % exc) from None
        return cls(*fields, signature=sig)

    def verify(self, trusted_keys: Sequence[Any]) -> str:
        """Check the signature against ``trusted_keys``; return the key id or raise ``RollbackRefused``."""
        keys = {key_id(k): load_public_key(k) for k in trusted_keys}
        pub = keys.get(self.key_id)
        if pub is None:
            raise RollbackRefused("rollback command for %r v%s is signed with key id %r, which is not trusted here "
                                  "(trusted: %s); sign it with the ground key." % (self.engine, self.version,
                                                                                   self.key_id, sorted(keys)))
        try:
            pub.verify(self.signature, self.payload())
        except InvalidSignature:
            raise RollbackRefused("rollback command for %r v%s has a bad signature: it was altered after signing. "
                                  "Ask the ground to issue a new one." % (self.engine, self.version)) from None
        return self.key_id


def accept_command(state: Dict[str, Any], command: Any, version: int, trusted_keys: Sequence[Any]) -> None:
    """Check a rollback command for this engine and ``version`` and record its nonce in ``state``.

    Raises
    ------
    RollbackRefused
        If it is not a command, is badly signed, is for another engine or version, reuses a nonce,
        or was issued before the last command this engine accepted.
    """
    name = state["engine"]
    if not isinstance(command, RollbackCommand):
        raise RollbackRefused("engine %r: going to v%d needs a RollbackCommand for it signed by a trusted key "
                              "(RollbackCommand.from_json(text)); got %s." % (name, version, type(command).__name__))
    command.verify(trusted_keys)
    if command.engine != name or command.version != version:
        raise RollbackRefused("rollback command is for engine %r v%d, not %r v%d; ask for a command for this "
                              "engine and version." % (command.engine, command.version, name, version))
    log = state["commands"]
    if command.nonce in log["nonces"]:
        raise RollbackRefused("rollback command nonce %s for %r was already used (replay); ask the ground for a "
                              "new command." % (command.nonce, name))
    if log["last_issued_at"] is not None and command.issued_at < log["last_issued_at"]:
        raise RollbackRefused("rollback command for %r was issued at %d, before the last accepted one (%d); it is "
                              "stale. Ask the ground for a new command." % (name, command.issued_at,
                                                                             log["last_issued_at"]))
    log["nonces"] = (log["nonces"] + [command.nonce])[-MAX_NONCES:]
    log["last_issued_at"] = command.issued_at
