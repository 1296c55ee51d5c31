"""What the ``satedge engines`` / ``keys`` verbs share to read a user's files: one-line errors,
path checks that name the flag, and opening a bundle directory or ``.tar``/``.tar.gz``."""
from __future__ import annotations

import contextlib
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

from engines.errors import BundleError, SatedgeError, UserError

# What reading or parsing a user's file may raise besides SatedgeError (a truncated or garbage file
# makes numpy, zipfile and the ONNX scan fail with any of these); the CLI turns them into UserError.
READ_ERRORS = (OSError, ValueError, TypeError, EOFError, KeyError, IndexError, zipfile.BadZipFile)


def one_line(exc: BaseException) -> str:
    """``exc`` as one line of text (library messages may span several)."""
    return " ".join(str(exc).split()).rstrip(".") or type(exc).__name__


def input_file(path: str, flag: str, fix: str) -> Path:
    """``path`` as a ``Path`` when it is an existing regular file, else ``UserError`` naming ``flag``, it, ``fix``."""
    p = Path(path)
    if not p.exists():
        raise UserError("%s %s: no such file; %s" % (flag, p, fix))
    if not p.is_file():
        raise UserError("%s %s is %s; %s" % (flag, p, "a directory, not a file" if p.is_dir() else
                                              "not a regular file", fix))
    return p


def output_parent(path: str, flag: str) -> None:
    """``UserError`` when the folder that should hold ``path`` is missing or is not a folder."""
    parent = Path(path).absolute().parent
    if not parent.is_dir():
        raise UserError("%s %s: the folder %s does not exist%s; create it first or choose another path."
                        % (flag, path, parent, "" if not parent.exists() else " as a folder"))


@contextlib.contextmanager
def opened(path: str, keys: Sequence[str] = ()) -> Iterator:
    """Open a bundle directory or tar (``trusted_keys`` checked when ``keys`` is non-empty)."""
    from engines.archive import extract_archive
    from engines.bundle import Bundle

    trusted = list(keys) or None
    p = Path(path)
    if p.is_dir():
        yield Bundle.open(p, trusted_keys=trusted)
        return
    if not p.is_file():
        raise UserError("no bundle directory or archive at %s." % p)
    try:
        is_tar = tarfile.is_tarfile(str(p))
    except OSError as exc:
        raise UserError("cannot read %s: %s." % (p, one_line(exc))) from None
    if not is_tar:
        raise BundleError("%s is neither a bundle directory nor a .tar/.tar.gz bundle archive; pass the bundle "
                          "folder, or a tar that 'satedge engines pack --from-dir' wrote (transfer it again if it "
                          "was one)." % p)
    with tempfile.TemporaryDirectory(prefix="satedge-bundle-") as tmp:
        try:
            dest = extract_archive(p, Path(tmp) / "bundle")
        except SatedgeError as exc:
            raise type(exc)(one_line(exc)) from None
        yield Bundle.open(dest, trusted_keys=trusted)
