"""CurveZMQ (Curve25519) key files for the control channel.

A key pair is two text files, ``NAME.curve.key`` (secret, mode 0600) and ``NAME.curve.pub``
(public). Each holds the 40-character Z85 encoding of the 32-byte key on one line followed by a
newline; blank lines and lines starting with ``#`` are ignored when reading. This is the format
``satedge keys gen --curve`` writes; ``docs/protocol.md`` ("Control channel") is its spec.

The daemon holds the server secret key and a directory (or list) of the operators' public keys;
an operator holds its own secret key and the daemon's public key. These are not the ed25519
bundle-signing keys of :mod:`engines.signing`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, List, Union

import zmq
from zmq.utils import z85

from engines.errors import UserError
from engines.keyfiles import CURVE_PUBLIC_SUFFIX, CURVE_SECRET_SUFFIX, generate_curve_keypair  # noqa: F401 (public API)

SECRET_SUFFIX = CURVE_SECRET_SUFFIX
PUBLIC_SUFFIX = CURVE_PUBLIC_SUFFIX
Z85_KEY_LENGTH = 40
PathLike = Union[str, "os.PathLike[str]"]
KeyLike = Union[bytes, str, "os.PathLike[str]"]
log = logging.getLogger("satedge.onboard.curve")


def _read_key_file(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise UserError("no CurveZMQ %s key at %s; create a pair with 'satedge keys gen --curve --out DIR "
                        "--name NAME'." % (what, path))
    lines = [ln.strip() for ln in path.read_bytes().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(b"#")]
    if len(lines) != 1:
        raise UserError("%s should hold one Z85 key line (40 characters); found %d lines. Pass the %s file that "
                        "'satedge keys gen --curve' wrote." % (path, len(lines), "NAME" + (
                            SECRET_SUFFIX if what == "secret" else PUBLIC_SUFFIX)))
    return check_z85_key(lines[0], where=str(path))


def check_z85_key(key: Union[bytes, str], where: str = "key") -> bytes:
    """Return ``key`` as 40 Z85 bytes after checking that it decodes to 32 bytes.

    Raises
    ------
    UserError
        If it is not a Z85-encoded Curve25519 key.
    """
    raw = key.encode("ascii", "replace") if isinstance(key, str) else bytes(key)
    raw = raw.strip()
    try:
        ok = len(raw) == Z85_KEY_LENGTH and len(z85.decode(raw)) == 32
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError("%s is not a CurveZMQ key (40 Z85 characters encoding 32 bytes); got %d characters."
                        % (where, len(raw)))
    return raw


def load_curve_public(path: PathLike) -> bytes:
    """Read a ``NAME.curve.pub`` file and return the Z85 public key (40 bytes)."""
    return _read_key_file(Path(path), "public")


def load_curve_secret(path: PathLike) -> bytes:
    """Read a ``NAME.curve.key`` file and return the Z85 secret key (40 bytes).

    A secret key readable by group or others is used but logged as a warning.
    """
    p = Path(path)
    key = _read_key_file(p, "secret")
    if os.name == "posix" and p.stat().st_mode & 0o077:
        log.warning("CurveZMQ secret key %s is readable by group or others; chmod 600 it.", p)
    return key


def public_from_secret(secret: bytes) -> bytes:
    """The Z85 public key that belongs to a Z85 secret key."""
    return zmq.curve_public(check_z85_key(secret, "secret key"))


def as_curve_key(value: KeyLike, secret: bool = False) -> bytes:
    """Return a Z85 key from a Z85 string/bytes or from a key file path.

    Parameters
    ----------
    value : bytes, str or os.PathLike
        40 Z85 characters, or the path of a key file.
    secret : bool
        Read a path as a secret key file (checks its mode) instead of a public one.
    """
    if isinstance(value, (bytes, str)) and len(value.strip()) == Z85_KEY_LENGTH and not Path(
            os.fsdecode(value.strip())).exists():
        return check_z85_key(value)
    return load_curve_secret(value) if secret else load_curve_public(os.fsdecode(value))


def authorized_keys_dir(directory: PathLike) -> List[bytes]:
    """Every public key in ``directory`` (files named ``*.curve.pub``), sorted by file name.

    Raises
    ------
    UserError
        If the directory does not exist.
    """
    d = Path(directory)
    if not d.is_dir():
        raise UserError("authorized control keys directory %s does not exist; create it and copy each operator's "
                        "NAME%s into it." % (d, PUBLIC_SUFFIX))
    return [load_curve_public(p) for p in sorted(d.glob("*" + PUBLIC_SUFFIX))]


def load_authorized_keys(items: Iterable[KeyLike]) -> List[bytes]:
    """Resolve an allow-list: each item is a Z85 key, a ``.curve.pub`` file, or a directory of them.

    Returns
    -------
    list of bytes
        The distinct Z85 public keys, in the order first seen.
    """
    keys: List[bytes] = []
    for item in items:
        if Path(os.fsdecode(item)).is_dir():
            found = authorized_keys_dir(item)
        else:
            found = [as_curve_key(item)]
        keys.extend(k for k in found if k not in keys)
    return keys
