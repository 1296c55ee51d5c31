"""GeoTIFF reading through tifffile (+ imagecodecs for LZW), with the georeferencing tags parsed here.

A GeoTIFF is a TIFF whose georeferencing lives in a few private tags:

====== ======================= ==========================================================
code   tag                     what we read from it
====== ======================= ==========================================================
33550  ModelPixelScale         pixel size (sx, sy, sz) in map units
33922  ModelTiepoint           (i, j, k, x, y, z): raster point (i, j) sits at map (x, y)
34264  ModelTransformation     a full 4x4 affine, used instead of the two above when present
34735  GeoKeyDirectory         (key, location, count, value) entries: the CRS description
34736  GeoDoubleParams         doubles that GeoKeys point into (ellipsoid axes, ...)
34737  GeoAsciiParams          '|'-terminated strings that GeoKeys point into (citations)
42113  GDAL_NODATA             the no-data value as text
====== ======================= ==========================================================

The geotransform is returned in GDAL order ``(x0, dx, rx, y0, ry, dy)``: map
``x = x0 + col*dx + row*rx`` and ``y = y0 + col*ry + row*dy`` at the *corner* of pixel
(row, col); pixel centres are at ``col + 0.5, row + 0.5``. When GTRasterTypeGeoKey says
PixelIsPoint the tiepoint names a pixel centre and the corner is shifted by half a pixel.
Only north-up rasters (no rotation) come out of the tiepoint + scale form, as the tags allow.

The CRS is summarised, not resolved: the EPSG code of a projected or geographic CRS when the
file names one, else the UTM zone read from a user-defined ProjectionGeoKey (EPSG
"UTM zone N/S" codes 16001-16060 / 16101-16160), and the citation strings.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from engines.errors import UserError

__all__ = ["GeoTransform", "CRS", "Raster", "read_geotiff", "parse_geokeys"]

_GEOKEY_NAMES = {1024: "GTModelType", 1025: "GTRasterType", 1026: "GTCitation", 2048: "GeographicType",
                 2049: "GeogCitation", 2050: "GeogGeodeticDatum", 2054: "GeogAngularUnits",
                 2056: "GeogEllipsoid", 2057: "GeogSemiMajorAxis", 2059: "GeogInvFlattening",
                 3072: "ProjectedCSType", 3073: "PCSCitation", 3074: "Projection", 3076: "ProjLinearUnits",
                 4096: "VerticalCSType"}
_USER_DEFINED = 32767


@dataclass(frozen=True)
class GeoTransform:
    """Affine map from (row, col) pixel coordinates to map coordinates, GDAL order.

    Attributes
    ----------
    x0, dx, rx, y0, ry, dy : float
        ``x = x0 + col*dx + row*rx``, ``y = y0 + col*ry + row*dy`` at pixel corners
        (``dy`` is negative for north-up rasters).
    """

    x0: float
    dx: float
    rx: float
    y0: float
    ry: float
    dy: float

    def as_gdal(self) -> Tuple[float, ...]:
        """The six coefficients in GDAL's ``GetGeoTransform`` order."""
        return (self.x0, self.dx, self.rx, self.y0, self.ry, self.dy)

    def pixel_to_map(self, row, col):
        """Map coordinates (x, y) of fractional pixel positions (0.5 = a pixel centre); vectorised."""
        row, col = np.asarray(row, dtype=np.float64), np.asarray(col, dtype=np.float64)
        return self.x0 + col * self.dx + row * self.rx, self.y0 + col * self.ry + row * self.dy

    def map_to_pixel(self, x, y):
        """Fractional (row, col) of map coordinates; the inverse of :meth:`pixel_to_map`."""
        x = np.asarray(x, dtype=np.float64) - self.x0
        y = np.asarray(y, dtype=np.float64) - self.y0
        det = self.dx * self.dy - self.rx * self.ry
        if det == 0:
            raise UserError(f"geotransform {self.as_gdal()} is singular; the file's georeferencing is broken")
        return (self.dx * y - self.ry * x) / det, (self.dy * x - self.rx * y) / det

    def bounds(self, shape) -> Tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of a raster of ``shape`` (rows, cols)."""
        rows, cols = shape[-2:]
        xs, ys = self.pixel_to_map(np.array([0, 0, rows, rows]), np.array([0, cols, 0, cols]))
        return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


@dataclass(frozen=True)
class CRS:
    """What the GeoKeys say about the coordinate reference system.

    Attributes
    ----------
    epsg : int or None
        EPSG code of the projected CRS (of the geographic one for a geographic model), when the
        file names one; ``None`` for a user-defined CRS.
    utm_zone : str or None
        E.g. ``"25S"``: from the EPSG code (326zz / 327zz / 319zz SIRGAS) or the Projection key.
    citation : str
        The GTCitation / PCSCitation / GeogCitation strings joined by ``"; "``.
    keys : dict
        Every GeoKey by name (unknown ones by number), values decoded.
    """

    epsg: Optional[int]
    utm_zone: Optional[str]
    citation: str
    keys: Dict = field(default_factory=dict)


@dataclass(eq=False)
class Raster:
    """A georeferenced raster.

    Attributes
    ----------
    data : numpy.ndarray
        (bands, rows, cols), the file's dtype.
    transform : GeoTransform
    crs : CRS
    nodata : float or None
        The GDAL_NODATA value, when the file has one.
    path : str
    """

    data: np.ndarray
    transform: GeoTransform
    crs: CRS
    nodata: Optional[float]
    path: str

    @property
    def shape(self) -> Tuple[int, int]:
        """(rows, cols)."""
        return self.data.shape[1], self.data.shape[2]


def parse_geokeys(directory, doubles=(), ascii_params: str = "") -> Dict:
    """Decode a GeoKeyDirectory into ``{name: value}``.

    Parameters
    ----------
    directory : sequence of int
        The GeoKeyDirectoryTag: header (version, revision, minor, count) then count entries
        (key, location, count, value_offset).
    doubles : sequence of float
        GeoDoubleParamsTag (location 34736).
    ascii_params : str
        GeoAsciiParamsTag (location 34737); strings end at ``'|'``.

    Returns
    -------
    dict
        Name (see ``_GEOKEY_NAMES``) or key number -> int, float, tuple of floats or str.
    """
    d = [int(v) for v in directory]
    if len(d) < 4 or d[0] != 1:
        raise UserError(f"GeoKeyDirectory header {d[:4]} is not version 1; the file is not a GeoTIFF 1.x")
    out: Dict = {}
    for i in range(d[3]):
        key, location, count, value = d[4 + 4 * i: 8 + 4 * i]
        if location == 0:
            decoded = value
        elif location == 34736:
            vals = tuple(float(v) for v in doubles[value:value + count])
            decoded = vals[0] if count == 1 else vals
        elif location == 34737:
            decoded = ascii_params[value:value + count].rstrip("|\x00")
        else:
            decoded = ("unsupported location", location, count, value)
        out[_GEOKEY_NAMES.get(key, key)] = decoded
    return out


def _crs(keys: Dict) -> CRS:
    name = "GeographicType" if keys.get("GTModelType") == 2 else "ProjectedCSType"   # 1 projected, 2 geographic
    code = keys.get(name)
    epsg = code if isinstance(code, int) and 0 < code < _USER_DEFINED else None
    zone = None
    projection = keys.get("Projection")
    if epsg is not None and (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        zone = f"{epsg % 100}{'N' if epsg < 32700 else 'S'}"
    elif epsg is not None and 31965 <= epsg <= 31985:            # SIRGAS 2000 / UTM 11N..22N, 17S..25S
        zone = f"{epsg - 31954}N" if epsg <= 31976 else f"{epsg - 31960}S"
    elif isinstance(projection, int) and 16001 <= projection <= 16160:
        zone = f"{projection % 100}{'N' if projection < 16100 else 'S'}"
    citation = "; ".join(str(keys[k]) for k in ("GTCitation", "PCSCitation", "GeogCitation") if k in keys)
    return CRS(epsg=epsg, utm_zone=zone, citation=citation, keys=keys)


def _transform(tags: Dict, raster_type: int) -> GeoTransform:
    if 34264 in tags:                                       # ModelTransformation, row-major 4x4
        m = [float(v) for v in tags[34264]]
        gt = GeoTransform(m[3], m[0], m[1], m[7], m[4], m[5])
    elif 33550 in tags and 33922 in tags:
        sx, sy = float(tags[33550][0]), float(tags[33550][1])
        i, j, _, x, y, _ = (float(v) for v in tags[33922][:6])
        gt = GeoTransform(x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy)
    else:
        raise UserError("no ModelTransformation nor ModelPixelScale + ModelTiepoint tags: the TIFF is not "
                        "georeferenced (GeoTIFF tags 33550/33922/34264 missing)")
    if raster_type == 2:                                    # PixelIsPoint: tiepoint is a pixel centre
        gt = GeoTransform(gt.x0 - 0.5 * (gt.dx + gt.rx), gt.dx, gt.rx, gt.y0 - 0.5 * (gt.ry + gt.dy), gt.ry, gt.dy)
    return gt


def read_geotiff(path, level: int = 0) -> Raster:
    """Read a GeoTIFF: pixels as (bands, rows, cols) plus its geotransform and CRS.

    Parameters
    ----------
    path : str or os.PathLike
        The file. DEFLATE needs only tifffile; LZW needs imagecodecs too.
    level : int
        Overview level (0 = full resolution; reduced pages follow in the file). The geotransform
        is scaled to the level's pixel size.

    Returns
    -------
    Raster

    Raises
    ------
    engines.errors.UserError
        Missing file, missing codec, a TIFF without georeferencing.
    """
    import tifffile

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"GeoTIFF not found: {path}. Run `satedge data fetch --dest <root>` or set SATEDGE_DATA.")
    with tifffile.TiffFile(path) as tif:
        pages = [p for p in tif.pages if p.index == 0 or p.is_reduced] if level else [tif.pages[0]]
        if level >= len(pages):
            raise UserError(f"{path} has {len(pages) - 1} overview level(s); level {level} was asked for")
        page, base = pages[level], tif.pages[0]
        try:
            pixels = page.asarray()
        except ValueError as exc:                         # e.g. "requires the 'imagecodecs' package"
            raise UserError(f"cannot decode {path}: {exc}. Install imagecodecs (pip install imagecodecs).") from exc
        tags = {t.code: t.value for t in base.tags.values()}
    if pixels.ndim == 2:
        pixels = pixels[None]
    elif int(page.planarconfig) == 1:                     # contiguous: (rows, cols, bands)
        pixels = np.moveaxis(pixels, -1, 0)
    keys = parse_geokeys(tags[34735], tags.get(34736, ()), tags.get(34737, "")) if 34735 in tags else {}
    gt = _transform(tags, int(keys.get("GTRasterType", 1)))
    if level:
        fy, fx = base.shape[0] / pixels.shape[1], base.shape[1] / pixels.shape[2]
        gt = GeoTransform(gt.x0, gt.dx * fx, gt.rx * fy, gt.y0, gt.ry * fx, gt.dy * fy)
    nodata = tags.get(42113)
    nodata = float(str(nodata).strip("\x00 ")) if nodata not in (None, "") else None
    return Raster(np.ascontiguousarray(pixels), gt, _crs(keys), nodata, path)
