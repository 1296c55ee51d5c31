"""SHA-256 helpers used to pin every file of an engine bundle.

Hashes are lowercase hex strings (64 characters). Files are read in chunks so a large model or
plan never has to fit in memory at once.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Union

CHUNK_BYTES = 1 << 20
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def sha256_bytes(data: bytes) -> str:
    """Return the SHA-256 of ``data`` as lowercase hex.

    Parameters
    ----------
    data : bytes
        The bytes to hash.

    Returns
    -------
    str
        64 lowercase hex characters.
    """
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Union[str, "os.PathLike[str]"], chunk_bytes: int = CHUNK_BYTES) -> str:
    """Return the SHA-256 of the file at ``path`` as lowercase hex, reading it in chunks.

    Parameters
    ----------
    path : str or os.PathLike
        The file to hash.
    chunk_bytes : int, optional
        How many bytes to read at a time (1 MiB by default).

    Returns
    -------
    str
        64 lowercase hex characters.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk_bytes)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def is_sha256_hex(value: object) -> bool:
    """Tell whether ``value`` is a lowercase 64-character hex SHA-256 string."""
    return isinstance(value, str) and SHA256_HEX.match(value) is not None
