"""The earthlib spectral library: real reflectance spectra with land-cover labels.

earthlib (PyPI ``earthlib``, MIT) ships 7,261 reflectance spectra sampled at 180 wavelengths
from 0.40 to 2.45 µm as an ENVI spectral library (``spectra.sli`` + ``spectra.sli.hdr``) with a
``spectra.csv`` that names each spectrum and gives its classes (LEVEL_1 pervious/impervious,
LEVEL_2 bare/vegetation/built/npv/burned, LEVEL_3 soil, canopy, roof, road, ...). The
wavelength grid skips the atmospheric water-vapour bands (1.36-1.45 and 1.80-1.95 µm).

The ENVI header is parsed here (no ``spectral`` package). The library is loaded once per
folder and cached; its arrays are read-only so that callers cannot change the cached copy.

earthlib has no water spectra; :func:`analytic_water_spectra` supplies a documented analytic
stand-in for the scene generator.
"""
from __future__ import annotations

import csv
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.errors import UserError

__all__ = ["SpectralLibrary", "load_spectral_library", "default_data_root", "analytic_water_spectra"]

_FETCH_HINT = (
    "Get it from the earthlib package on PyPI (`pip download earthlib==1.1.0 --no-deps`, unpack the "
    "wheel and copy earthlib/data/spectra.{sli,sli.hdr,csv} into <root>/earthlib/), or set "
    "SATEDGE_DATA to a folder that contains earthlib/."
)
_ENVI_DTYPES = {4: "f4", 5: "f8", 12: "u2", 2: "i2", 3: "i4"}


def default_data_root() -> Path:
    """Folder that holds the real data sets (``earthlib/``, ``landsat7_olinda/``, ...).

    Returns
    -------
    pathlib.Path
        ``$SATEDGE_DATA`` when set, else ``<repo>/../shared/data/real``.
    """
    env = os.environ.get("SATEDGE_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"


@dataclass(frozen=True, eq=False)
class SpectralLibrary:
    """Labelled reflectance spectra on one wavelength grid.

    Attributes
    ----------
    wavelengths_um : numpy.ndarray
        (B,) float64 band centres in micrometres, increasing (B = 180 for earthlib).
    reflectance : numpy.ndarray
        (N, B) float32 reflectance, 0..~1.
    names, level1, level2, level3 : numpy.ndarray
        (N,) str: spectrum name and its class at each level of the earthlib hierarchy.
    """

    wavelengths_um: np.ndarray
    reflectance: np.ndarray
    names: np.ndarray
    level1: np.ndarray
    level2: np.ndarray
    level3: np.ndarray

    def __len__(self) -> int:
        return int(self.reflectance.shape[0])

    def classes(self, level: int = 2) -> tuple[str, ...]:
        """Sorted distinct class names at ``level`` (1, 2 or 3)."""
        return tuple(sorted(set(self._level(level).tolist())))

    def select(self, level1=None, level2=None, level3=None) -> "SpectralLibrary":
        """Subset whose classes match every given level (a name or a collection of names).

        Raises
        ------
        engines.errors.UserError
            When a requested class name does not exist at that level.
        """
        keep = np.ones(len(self), dtype=bool)
        for level, wanted in ((1, level1), (2, level2), (3, level3)):
            if wanted is None:
                continue
            wanted = {wanted} if isinstance(wanted, str) else set(wanted)
            unknown = wanted - set(self.classes(level))
            if unknown:
                raise UserError(
                    f"unknown LEVEL_{level} class(es) {sorted(unknown)}; "
                    f"available: {list(self.classes(level))}"
                )
            keep &= np.isin(self._level(level), sorted(wanted))
        return SpectralLibrary(
            self.wavelengths_um, self.reflectance[keep], self.names[keep],
            self.level1[keep], self.level2[keep], self.level3[keep],
        )

    def _level(self, level: int) -> np.ndarray:
        if level not in (1, 2, 3):
            raise UserError(f"class level must be 1, 2 or 3, got {level!r}")
        return (self.level1, self.level2, self.level3)[level - 1]


def _parse_envi_header(text: str) -> dict[str, str]:
    """Return ``key -> raw value`` of an ENVI header (brace values may span lines)."""
    if not text.lstrip().startswith("ENVI"):
        raise ValueError("not an ENVI header (first line is not 'ENVI')")
    fields: dict[str, str] = {}
    for match in re.finditer(r"^\s*([^=\n]+?)\s*=\s*(\{.*?\}|[^\n]*)", text, re.S | re.M):
        fields[match.group(1).strip().lower()] = match.group(2).strip()
    return fields


def _brace_list(value: str) -> list[str]:
    return [item.strip() for item in value.strip().strip("{}").split(",") if item.strip()]


def _resolve_folder(root) -> Path:
    base = Path(root).expanduser() if root is not None else default_data_root()
    return base if (base / "spectra.sli").is_file() else base / "earthlib"


def load_spectral_library(root=None) -> SpectralLibrary:
    """Load the earthlib spectral library (cached per folder).

    Parameters
    ----------
    root : str or os.PathLike, optional
        Folder that contains ``earthlib/`` (or the earthlib folder itself). Default:
        :func:`default_data_root`.

    Returns
    -------
    SpectralLibrary

    Raises
    ------
    engines.errors.UserError
        When the files are missing or malformed; the message says where it looked and how to
        get them.
    """
    return _load_cached(str(_resolve_folder(root).resolve()))


@functools.lru_cache(maxsize=4)
def _load_cached(folder: str) -> SpectralLibrary:
    path = Path(folder)
    files = {name: path / name for name in ("spectra.sli", "spectra.sli.hdr", "spectra.csv")}
    missing = [name for name, f in files.items() if not f.is_file()]
    if missing:
        raise UserError(f"earthlib spectral library not found: {missing} missing in {path}. {_FETCH_HINT}")
    try:
        header = _parse_envi_header(files["spectra.sli.hdr"].read_text(encoding="utf-8", errors="replace"))
        n_bands, n_spectra = int(header["samples"]), int(header["lines"])
        dtype = np.dtype(_ENVI_DTYPES[int(header["data type"])])
        dtype = dtype.newbyteorder(">" if int(header.get("byte order", "0")) == 1 else "<")
        offset = int(header.get("header offset", "0"))
        wavelengths = np.array([float(v) for v in _brace_list(header["wavelength"])])
    except (KeyError, ValueError) as exc:
        raise UserError(f"cannot read ENVI header {files['spectra.sli.hdr']}: {exc}. {_FETCH_HINT}") from exc
    if "nanometer" in header.get("wavelength units", "").lower() or wavelengths.max() > 100:
        wavelengths = wavelengths / 1000.0
    raw = np.fromfile(files["spectra.sli"], dtype=dtype, offset=offset)
    if wavelengths.size != n_bands or raw.size != n_bands * n_spectra:
        raise UserError(
            f"{files['spectra.sli']} holds {raw.size} values and {wavelengths.size} wavelengths; the "
            f"header asks for {n_spectra} spectra x {n_bands} bands. Re-fetch it. {_FETCH_HINT}"
        )
    if np.any(np.diff(wavelengths) <= 0):
        raise UserError(f"wavelengths in {files['spectra.sli.hdr']} are not increasing. {_FETCH_HINT}")
    with open(files["spectra.csv"], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != n_spectra or not rows or not {"NAME", "LEVEL_1", "LEVEL_2", "LEVEL_3"} <= set(rows[0]):
        raise UserError(
            f"{files['spectra.csv']} must have NAME,LEVEL_1,LEVEL_2,LEVEL_3 columns and one row per "
            f"spectrum ({n_spectra}); found {len(rows)} rows. {_FETCH_HINT}"
        )
    columns = {key: np.array([row[key] for row in rows]) for key in ("NAME", "LEVEL_1", "LEVEL_2", "LEVEL_3")}
    reflectance = raw.reshape(n_spectra, n_bands).astype(np.float32)
    for array in (wavelengths, reflectance, *columns.values()):
        array.setflags(write=False)
    return SpectralLibrary(
        wavelengths, reflectance, columns["NAME"], columns["LEVEL_1"], columns["LEVEL_2"], columns["LEVEL_3"]
    )


def analytic_water_spectra(wavelengths_um, turbidity) -> np.ndarray:
    """Analytic reflectance of open water, for land-cover classes the library lacks.

    A smooth model, not a measurement: clear water reflects ~0.05 in the blue falling through
    the green and red; turbid (sediment-laden) water peaks at ~0.08 in the green-red; both fall
    to ~0.005 in the NIR and SWIR, where water absorbs almost everything.

    Parameters
    ----------
    wavelengths_um : array_like
        (B,) wavelengths in micrometres.
    turbidity : array_like
        (N,) values in 0 (clear) .. 1 (turbid).

    Returns
    -------
    numpy.ndarray
        (N, B) float32 reflectance.
    """
    lam = np.asarray(wavelengths_um, dtype=np.float64)[None, :]
    t = np.clip(np.asarray(turbidity, dtype=np.float64).reshape(-1, 1), 0.0, 1.0)
    peak_um = 0.46 + 0.12 * t                      # blue for clear water, green-red when turbid
    height = 0.045 + 0.035 * t
    visible = height * np.exp(-0.5 * ((lam - peak_um) / (0.08 + 0.04 * t)) ** 2)
    cutoff = 1.0 / (1.0 + np.exp((lam - (0.70 + 0.04 * t)) / 0.025))
    return (0.005 + visible * cutoff).astype(np.float32)
