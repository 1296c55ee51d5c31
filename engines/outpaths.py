"""Output paths checked before long work: a run that trains for minutes must not fail at its last step
because ``--out`` names a file, sits under a file or is not writable."""
from __future__ import annotations

import os

from engines.errors import UserError


def _file_above(path: str):
    """The nearest existing ancestor of ``path`` (itself included) when it is not a folder, else None."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent
    return None if os.path.isdir(p) else p


def _writable_folder(folder: str, flag: str, path: str) -> None:
    """Create ``folder`` (``path`` itself, or the folder of the file ``path``) and check it is writable."""
    blocker = _file_above(folder)
    if blocker is not None:
        raise UserError(f"{flag} {path}: {blocker} is a file, not a folder; choose another path")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot create the folder {folder} ({exc.strerror or exc}); "
                        "choose a folder you can write to") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: the folder {folder} is not writable; choose a folder you can write to")


def output_folder(path, flag: str) -> str:
    """Create the output folder ``path`` now (before any long work) and check it is writable.

    A ``UserError`` naming ``flag`` and the path when it cannot be: it is a file, sits under a file,
    or the folder is not writable.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a file, not a folder; give a folder path (it is created if missing)")
    _writable_folder(path, flag, path)
    return path


def output_file(path, flag: str) -> str:
    """Check (before any long work) that the file ``path`` can be written: not a folder, its folder
    created and writable. A ``UserError`` naming ``flag`` and the path when not."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a folder; give a file path")
    _writable_folder(os.path.dirname(os.path.abspath(path)), flag, path)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path}: the file is not writable; choose another path")
    return path
