"""Durable file writes shared by the bundle tools and the onboard store: a file is either the old
one or the new one after a crash or a power cut, never a mix."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename or a new entry in it is durable (no-op where unsupported)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(dest: Path, data: bytes) -> None:
    """Replace ``dest`` with ``data``: temp file in the same folder, fsync, rename, fsync the folder."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix="." + dest.name + ".", suffix=".tmp", dir=str(dest.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, str(dest))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)
