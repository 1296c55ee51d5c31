"""Key files: where a new key pair goes, how its private half is written, and CurveZMQ pairs.

Shared by the ed25519 bundle-signing keys (:mod:`engines.signing`) and the CurveZMQ control-channel
keys (read by :mod:`onboard.curve`; format in docs/protocol.md, "Control channel"). Keys are never
overwritten, and private halves are created with mode 0600.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple, Union

from engines.errors import UserError

PathLike = Union[str, "os.PathLike[str]"]
CURVE_SECRET_SUFFIX = ".curve.key"
CURVE_PUBLIC_SUFFIX = ".curve.pub"


def new_key_paths(directory: PathLike, name: str, private_suffix: str, public_suffix: str) -> Tuple[Path, Path]:
    """Paths of a new pair ``<name><private_suffix>`` and ``<name><public_suffix>``; creates ``directory``.

    Raises
    ------
    UserError
        ``name`` is not a plain file stem, or either file exists (keys are never overwritten).
    """
    if not name or "/" in name or name.startswith("."):
        raise UserError("key name %r is not a plain file stem; use e.g. 'satedge' or 'ops-alice'." % (name,))
    out = Path(directory)
    private, public = out / (name + private_suffix), out / (name + public_suffix)
    for path in (private, public):
        if path.exists():
            raise UserError("%s already exists; keys are never overwritten. Choose another --name or "
                            "directory, or delete the old pair on purpose." % path)
    out.mkdir(parents=True, exist_ok=True)
    return private, public


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` (which must not exist) with mode 0600 and write ``data``."""
    with os.fdopen(os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
        fh.write(data)


def generate_curve_keypair(directory: PathLike, name: str = "satedge") -> Tuple[Path, Path]:
    """Create ``<name>.curve.key`` (secret, 0600) and ``<name>.curve.pub``: one Z85 line each.

    Returns
    -------
    (pathlib.Path, pathlib.Path)
        The secret and the public key paths.
    """
    import zmq
    secret_path, public_path = new_key_paths(directory, name, CURVE_SECRET_SUFFIX, CURVE_PUBLIC_SUFFIX)
    public, secret = zmq.curve_keypair()
    write_private(secret_path, secret + b"\n")
    public_path.write_bytes(public + b"\n")
    return secret_path, public_path
