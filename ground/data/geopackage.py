"""GeoPackage vector layers (SQLite + GPKG WKB geometries) and a numpy polygon rasteriser.

A GeoPackage is an SQLite file. ``gpkg_geometry_columns`` names each feature table, its
geometry column and its SRS id; each geometry is a blob:

``'GP'`` magic, version byte, flags byte, int32 srs_id, an optional envelope, then standard WKB.
The flags byte holds the byte order of the header (bit 0: 1 = little endian), the envelope
kind (bits 1-3: 0 none, 1 xy = 4 doubles, 2 xyz / 3 xym = 6, 4 xyzm = 8) and an empty flag
(bit 4). WKB is read here for (Multi)Point, (Multi)LineString, (Multi)Polygon and
GeometryCollection, 2-D plus the Z/M/ZM variants in both ISO (+1000/2000/3000) and EWKB
(high-bit flags) spellings; Z and M are dropped.

:func:`rasterize` burns polygons onto a raster grid: a pixel belongs to a polygon when its
*centre* is inside (even-odd rule over all rings, so holes work), which is GDAL's default
(``all_touched=False``). The crossing test is vectorised over the pixels of each polygon's
bounding box, one edge at a time; later features overwrite earlier ones.
"""
from __future__ import annotations

import os
import sqlite3
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from engines.errors import UserError

__all__ = ["Feature", "Layer", "parse_gpkg_geometry", "parse_wkb", "read_layer", "rasterize"]


@dataclass(eq=False)
class Feature:
    """One feature: its id, geometry and attribute columns.

    Attributes
    ----------
    fid : int
    geometry_type : str
        ``"Polygon"``, ``"MultiPolygon"``, ``"Point"``, ... (the WKB type, without Z/M).
    polygons : list of list of numpy.ndarray
        Each polygon is a list of rings (outer first), each an (N, 2) float64 array of (x, y).
        Empty for points and lines.
    coordinates : numpy.ndarray
        (N, 2) every vertex of the geometry (points, line vertices, ring vertices).
    properties : dict
    """

    fid: int
    geometry_type: str
    polygons: List[List[np.ndarray]]
    coordinates: np.ndarray
    properties: Dict = field(default_factory=dict)


@dataclass(eq=False)
class Layer:
    """A feature table of a GeoPackage.

    Attributes
    ----------
    name : str
    srs : tuple
        ``(organization, code, srs_id)``, e.g. ``("EPSG", 32621, 32621)``.
    features : list of Feature
    """

    name: str
    srs: Tuple[str, int, int]
    features: List[Feature]


_TYPES = {1: "Point", 2: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString",
          6: "MultiPolygon", 7: "GeometryCollection"}


def parse_wkb(buf: bytes, offset: int = 0):
    """Parse one WKB geometry.

    Parameters
    ----------
    buf : bytes
    offset : int
        Where the geometry starts.

    Returns
    -------
    (str, object, int)
        Type name; ``(N, 2)`` array for points/lines, list of rings for a polygon, list of
        parts for multi geometries; and the offset just past the geometry.
    """
    try:
        order = "<" if buf[offset] == 1 else ">"
        (code,) = struct.unpack_from(order + "I", buf, offset + 1)
    except (IndexError, struct.error) as exc:
        raise UserError(f"truncated WKB at byte {offset}") from exc
    offset += 5
    dims = 2 + bool(code & 0x80000000) + bool(code & 0x40000000)        # EWKB Z / M flags
    if code & 0x20000000:                                              # EWKB embedded SRID
        offset += 4
    code &= 0x0FFFFFFF
    base, iso = code % 1000, code // 1000                              # ISO: 1000 Z, 2000 M, 3000 ZM
    dims += {0: 0, 1: 1, 2: 1, 3: 2}.get(iso, 0)
    if base not in _TYPES:
        raise UserError(f"unsupported WKB geometry type {code} at byte {offset - 5}")

    def points(at):
        (n,) = struct.unpack_from(order + "I", buf, at)
        xy = np.frombuffer(buf, dtype=order + "f8", count=n * dims, offset=at + 4).reshape(n, dims)[:, :2]
        return xy.astype(np.float64), at + 4 + 8 * n * dims

    name = _TYPES[base]
    if base == 1:
        xy = np.frombuffer(buf, dtype=order + "f8", count=dims, offset=offset)[None, :2].astype(np.float64)
        return name, xy, offset + 8 * dims
    if base == 2:
        xy, offset = points(offset)
        return name, xy, offset
    (n,) = struct.unpack_from(order + "I", buf, offset)
    offset += 4
    parts = []
    for _ in range(n):
        if base == 3:
            ring, offset = points(offset)
            parts.append(ring)
        else:
            _, part, offset = parse_wkb(buf, offset)
            parts.append(part)
    return name, parts, offset


def parse_gpkg_geometry(blob: bytes):
    """Parse a GeoPackage geometry blob (header + WKB).

    Returns
    -------
    (int, str, object)
        srs_id, WKB type name and the parsed geometry (see :func:`parse_wkb`); ``None`` geometry
        when the empty flag is set.
    """
    blob = bytes(blob)
    if len(blob) < 8 or blob[:2] != b"GP":
        raise UserError("geometry blob does not start with the GeoPackage magic 'GP' (not a GPKG geometry)")
    flags = blob[3]
    order = "<" if flags & 1 else ">"
    (srs_id,) = struct.unpack_from(order + "i", blob, 4)
    envelope = (flags >> 1) & 0x7
    if envelope > 4:
        raise UserError(f"invalid GeoPackage envelope indicator {envelope}")
    start = 8 + 8 * (0, 4, 6, 6, 8)[envelope]
    if flags & 0x10:
        return srs_id, "Empty", None
    name, geom, _ = parse_wkb(blob, start)
    return srs_id, name, geom


def _polygons(name: str, geom) -> List[List[np.ndarray]]:
    if name == "Polygon":
        return [geom]
    if name == "MultiPolygon":
        return list(geom)
    return []


def _vertices(geom) -> List[np.ndarray]:
    if isinstance(geom, np.ndarray):
        return [geom]
    return [v for part in (geom or []) for v in _vertices(part)]


def read_layer(path, table: Optional[str] = None) -> Layer:
    """Read every feature of one GeoPackage feature table.

    Parameters
    ----------
    path : str or os.PathLike
    table : str, optional
        Table name; default: the only feature table (an error names them when there are several).

    Returns
    -------
    Layer
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"GeoPackage not found: {path}. Run `satedge data fetch --dest <root>` or set SATEDGE_DATA.")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        columns = {t: (c, s) for t, c, s in con.execute(
            "SELECT table_name, column_name, srs_id FROM gpkg_geometry_columns")}
        if table is None:
            if len(columns) != 1:
                raise UserError(f"{path} has feature tables {sorted(columns)}; name one with table=")
            table = next(iter(columns))
        if table not in columns:
            raise UserError(f"no feature table {table!r} in {path}; available: {sorted(columns)}")
        geom_col, srs_id = columns[table]
        srs = con.execute("SELECT organization, organization_coordsys_id FROM gpkg_spatial_ref_sys WHERE srs_id=?",
                          (srs_id,)).fetchone() or ("NONE", srs_id)
        cursor = con.execute(f'SELECT * FROM "{table}"')
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path} is not a readable GeoPackage: {exc}") from exc
    finally:
        con.close()
    features = []
    for i, row in enumerate(rows):
        record = dict(zip(names, row))
        blob = record.pop(geom_col)
        _, name, geom = parse_gpkg_geometry(blob) if blob is not None else (srs_id, "Empty", None)
        verts = _vertices(geom)
        coords = np.concatenate(verts) if verts else np.zeros((0, 2))
        fid = int(record.get("fid", i + 1))
        features.append(Feature(fid, name, _polygons(name, geom), coords, record))
    return Layer(table, (str(srs[0]), int(srs[1]), int(srs_id)), features)


def rasterize(polygons, values, transform, shape, fill: int = -1, dtype=np.int16) -> np.ndarray:
    """Burn polygons onto a raster grid by the pixel-centre rule.

    Parameters
    ----------
    polygons : sequence of list of numpy.ndarray
        Polygons as lists of (N, 2) rings in the raster's map coordinates.
    values : sequence of int
        Value burnt for each polygon.
    transform : ground.data.geotiff.GeoTransform
        The grid's geotransform.
    shape : (int, int)
        (rows, cols).
    fill : int
        Value of pixels outside every polygon.
    dtype : numpy dtype

    Returns
    -------
    numpy.ndarray
        (rows, cols) raster; a pixel takes the value of the last polygon that contains its centre.
    """
    rows, cols = int(shape[0]), int(shape[1])
    out = np.full((rows, cols), fill, dtype=dtype)
    for rings, value in zip(polygons, values):
        allxy = np.concatenate(rings)
        r, c = transform.map_to_pixel(allxy[:, 0], allxy[:, 1])
        r0, r1 = max(int(np.floor(r.min())), 0), min(int(np.ceil(r.max())), rows)
        c0, c1 = max(int(np.floor(c.min())), 0), min(int(np.ceil(c.max())), cols)
        if r0 >= r1 or c0 >= c1:
            continue
        rr, cc = np.meshgrid(np.arange(r0, r1) + 0.5, np.arange(c0, c1) + 0.5, indexing="ij")
        px, py = transform.pixel_to_map(rr, cc)
        inside = np.zeros(px.shape, dtype=bool)
        for ring in rings:
            x1, y1 = ring[:, 0], ring[:, 1]
            x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
            for a, b, c, d in zip(x1, y1, x2, y2):               # one edge at a time, all pixels at once
                if b == d:
                    continue
                crosses = (b > py) != (d > py)
                x_at = a + (py - b) * (c - a) / (d - b)
                inside ^= crosses & (px < x_at)
        out[r0:r1, c0:c1][inside] = value
    return out
