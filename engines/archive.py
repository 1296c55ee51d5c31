"""A bundle as one file for uplink: a tar (``.tar``) or gzip-compressed tar (``.tar.gz``).

``pack_archive`` is deterministic: members in sorted order, regular files only, mtime 0, uid/gid
0, no user names, mode 0644, and a gzip header without a time or a file name, so the same bundle
always gives the same bytes. ``extract_archive`` treats the archive as hostile: it refuses
absolute paths, ``..``, links, devices, duplicate names and oversized members (``BundleError``
naming the member), writes into a temporary directory next to ``dest`` and renames it into place
only when everything was read.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Set, Union

from engines.bundle import SIGNATURE_FILES, Bundle
from engines.errors import BundleError
from engines.manifest import MANIFEST_FILE

PathLike = Union[str, "os.PathLike[str]"]
MAX_MEMBER_BYTES = 512 << 20
MAX_TOTAL_BYTES = 2 << 30
MAX_MEMBERS = 4096
_CHUNK = 1 << 20
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def _members(bundle_dir: Path):
    bundle = Bundle.open(bundle_dir, verify=True)
    names = [MANIFEST_FILE] + [s for s in SIGNATURE_FILES if (bundle.path / s).is_file()]
    return bundle.path, sorted(names + list(bundle.manifest.files))


def pack_archive(bundle_dir: PathLike, out_path: PathLike) -> Path:
    """Write the bundle at ``bundle_dir`` (verified first) as a deterministic tar.

    Parameters
    ----------
    bundle_dir : str or os.PathLike
        A bundle directory.
    out_path : str or os.PathLike
        The archive to write; ``.tar.gz``/``.tgz`` is gzip-compressed, anything else plain tar.
        Written to a temporary file and renamed, so a reader never sees half an archive.
    """
    root, names = _members(Path(bundle_dir))
    out = Path(out_path)
    compress = out.name.endswith((".tar.gz", ".tgz"))
    fd, tmp = tempfile.mkstemp(prefix="." + out.name + ".", dir=str(out.parent.resolve()))
    try:
        with os.fdopen(fd, "wb") as raw:
            stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if compress else raw
            with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in names:
                    info = tarfile.TarInfo(name)
                    info.size = (root / name).stat().st_size
                    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
                    with open(str(root / name), "rb") as fh:
                        tar.addfile(info, fh)
            if compress:
                stream.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, str(out))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


def _clean_name(member: tarfile.TarInfo, archive: Path) -> str:
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/") if member.isdir() else name
    if member.isdir() and name in ("", "."):
        return ""  # the archive's own top directory, as 'tar -C bundle .' writes it
    parts = name.split("/")
    if (member.name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":")
            or any(p in ("", ".", "..") for p in parts)):
        raise BundleError("archive %s: member %r has an absolute or escaping path; bundle archives hold "
                          "relative paths only. Refusing the whole archive." % (archive, member.name))
    if not (member.isreg() or member.isdir()) or member.issparse():
        kind = ("a symlink" if member.issym() else "a hard link" if member.islnk() else
                "a device" if member.ischr() or member.isblk() else "a FIFO" if member.isfifo() else
                "a sparse file" if member.issparse() else "a special member")
        raise BundleError("archive %s: member %r is %s; bundle archives hold regular files only. Refusing the "
                          "whole archive." % (archive, member.name, kind))
    return name


def extract_archive(path: PathLike, dest: PathLike, max_member_bytes: int = MAX_MEMBER_BYTES,
                    max_total_bytes: int = MAX_TOTAL_BYTES, max_members: int = MAX_MEMBERS) -> Path:
    """Unpack a bundle archive into the new directory ``dest`` and return it.

    Nothing is trusted: every member is checked before a byte of it is written, the files go to
    a temporary directory beside ``dest``, and that directory is renamed to ``dest`` only at the
    end (removed on any error). The bundle itself is not opened or verified here; call
    ``Bundle.open(dest, trusted_keys=...)`` next.

    Raises
    ------
    BundleError
        If ``dest`` exists, the file is not a (gzip) tar, or a member is unsafe, duplicated or too
        large; the message names the member.
    """
    archive, target = Path(path), Path(dest)
    if target.exists():
        raise BundleError("%s already exists; extract into a new directory (the store extracts into its "
                          "inactive slot)." % target)
    if not archive.is_file():
        raise BundleError("no archive at %s." % archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="." + target.name + ".extract-", dir=str(target.parent)))
    try:
        files: Set[str] = set()
        dirs: Set[str] = set()
        total = count = 0
        try:
            tar = tarfile.open(str(archive), mode="r:*")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError("%s is not a readable .tar or .tar.gz (%s); transfer it again." % (archive, exc)) from None
        with tar:
            for member in _iter_members(tar, archive):
                count += 1
                if count > max_members:
                    raise BundleError("archive %s has more than %d members; refusing it." % (archive, max_members))
                name = _clean_name(member, archive)
                if not name:
                    continue
                parents = ["/".join(name.split("/")[:i]) for i in range(1, name.count("/") + 1)]
                if name in files or (member.isreg() and name in dirs) or any(p in files for p in parents):
                    raise BundleError("archive %s: member %r appears twice (or clashes with a directory of the "
                                      "same name); refusing the whole archive." % (archive, member.name))
                dirs.update(parents)
                if member.isdir():
                    dirs.add(name)
                    continue
                if member.size > max_member_bytes:
                    raise BundleError("archive %s: member %r is %d bytes, over the %d-byte limit per member."
                                      % (archive, member.name, member.size, max_member_bytes))
                total += member.size
                if total > max_total_bytes:
                    raise BundleError("archive %s: members add up to more than %d bytes (at %r); refusing it."
                                      % (archive, max_total_bytes, member.name))
                files.add(name)
                _write_member(tar, member, tmp / name, archive)
        _fsync_tree(tmp)
        os.rename(str(tmp), str(target))
    except BaseException:
        shutil.rmtree(str(tmp), ignore_errors=True)
        raise
    return target


def _iter_members(tar: tarfile.TarFile, archive: Path):
    while True:
        try:
            member = tar.next()
        except _READ_ERRORS as exc:
            raise BundleError("%s is damaged or not a tar (%s); transfer it again." % (archive, exc)) from None
        if member is None:
            return
        yield member


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, archive: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = tar.extractfile(member)
    fd = os.open(str(dest), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                try:
                    block = src.read(min(_CHUNK, member.size - written)) if written < member.size else b""
                except _READ_ERRORS as exc:
                    raise BundleError("archive %s: member %r is truncated or corrupt (%s)." %
                                      (archive, member.name, exc)) from None
                if not block:
                    break
                out.write(block)
                written += len(block)
    finally:
        if src is not None:
            src.close()
    if written != member.size:
        raise BundleError("archive %s: member %r is truncated: %d of %d bytes." % (archive, member.name, written,
                                                                                   member.size))


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(str(root)):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())


__all__ = ["pack_archive", "extract_archive", "MAX_MEMBER_BYTES", "MAX_TOTAL_BYTES", "MAX_MEMBERS"]
