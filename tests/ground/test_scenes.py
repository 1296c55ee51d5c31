"""Spectral library, ETM+ band resampling and the synthetic scene generator (ground/data)."""
import numpy as np
import pytest

from engines.errors import UserError
from ground.data import bands, scenes
from ground.data.spectra import analytic_water_spectra, load_spectral_library

VNIR = slice(0, 4)   # B1-B4


@pytest.fixture(scope="module")
def library(shared_data):
    return load_spectral_library(shared_data)


@pytest.fixture(scope="module")
def cloudy_scenes(shared_data):
    return [scenes.make_scene(seed, 128, 128, cloud_cover=0.5) for seed in range(8)]


# --- spectral library -------------------------------------------------------------------------

def test_library_shape_grid_and_classes(library):
    assert library.reflectance.shape == (7261, 180)
    assert library.reflectance.dtype == np.float32
    lam = library.wavelengths_um
    assert lam.shape == (180,)
    assert np.all(np.diff(lam) > 0)
    assert lam[0] == pytest.approx(0.40) and lam[-1] == pytest.approx(2.45)
    assert np.diff(lam).max() > 0.05          # water-vapour gaps are skipped, not filled
    assert {"bare", "vegetation", "built", "npv", "burned"} <= set(library.classes(2))
    assert set(library.classes(1)) == {"pervious", "impervious"}
    assert 0.0 <= library.reflectance.min() and library.reflectance.max() < 1.1


def test_library_select_and_cache(library, shared_data):
    vegetation = library.select(level2="vegetation")
    assert len(vegetation) == 2000 and set(vegetation.level3) == {"canopy"}
    assert len(library.select(level1="impervious", level2="built")) == 888
    assert load_spectral_library(shared_data) is library
    with pytest.raises(UserError, match="available"):
        library.select(level2="water")


def test_missing_library_says_where_and_how(tmp_path):
    with pytest.raises(UserError) as info:
        load_spectral_library(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "earthlib" in message and "SATEDGE_DATA" in message


def test_vegetation_spectra_have_a_red_edge(library):
    veg = bands.resample(library.select(level2="vegetation").reflectance, library.wavelengths_um)
    assert np.median(veg[:, 3] / veg[:, 2]) > 3.0      # NIR (B4) far above red (B3)


def test_analytic_water_is_dark_beyond_the_red():
    lam = np.linspace(0.4, 2.45, 206)
    water = analytic_water_spectra(lam, [0.0, 0.5, 1.0])
    assert np.all(water[:, lam < 0.5].max(axis=1) > 0.03)
    assert np.all(water[:, lam > 0.85] < 0.007)


# --- bands --------------------------------------------------------------------------------------

def test_constant_spectrum_resamples_to_the_constant(library):
    for lam in (library.wavelengths_um, np.linspace(0.35, 2.5, 431)):
        out = bands.resample(np.full((3, lam.size), 0.37), lam)
        assert out.shape == (3, 6)
        np.testing.assert_allclose(out, 0.37, rtol=1e-5)


def test_resample_ignores_missing_samples(library):
    lam = library.wavelengths_um
    spectrum = np.full(lam.size, 0.2, dtype=np.float32)
    spectrum[::7] = np.nan
    np.testing.assert_allclose(bands.resample(spectrum, lam), 0.2, rtol=1e-5)
    assert np.isnan(bands.resample(np.ones(3), [0.40, 0.41, 0.42])[3])   # B4 not covered


def test_band_selectivity_and_centres():
    lam = np.linspace(0.4, 2.45, 411)
    step = ((lam > 0.775) & (lam < 0.900)).astype(np.float32)
    out = bands.resample(step, lam)
    assert out[3] > 0.9 and out[2] < 0.01 and out[4] < 0.01
    np.testing.assert_allclose(bands.band_centers_um(), [0.4825, 0.565, 0.66, 0.8375, 1.65, 2.215])
    assert bands.ETM_BANDS == scenes.BANDS
    with pytest.raises(UserError, match="micrometres"):
        bands.resample(np.ones(3), [450.0, 500.0, 550.0])


# --- scenes -------------------------------------------------------------------------------------

def test_scene_types_ranges_and_truth(shared_data):
    scene = scenes.make_scene(3, 96, 80)
    assert scene.dn.shape == (6, 96, 80) and scene.dn.dtype == np.uint16
    assert scene.dn.max() <= scenes.DN_MAX == 4095 and scenes.DN_BITS == 12
    assert scene.reflectance.shape == (6, 96, 80) and scene.reflectance.dtype == np.float32
    assert scene.landcover.dtype == np.uint8 and scene.landcover.max() < len(scenes.LANDCOVER_CLASSES)
    assert scene.cloud.dtype == bool and scene.cloud_optical.dtype == np.float32
    assert 0.0 <= scene.cloud_optical.min() and scene.cloud_optical.max() <= 1.0
    np.testing.assert_array_equal(scene.cloud, scene.cloud_optical > scenes.CLOUD_OPACITY_THRESHOLD)
    assert scene.cloud_fraction == pytest.approx(scene.cloud.mean())
    assert "water" in scenes.LANDCOVER_CLASSES and "vegetation" in scenes.LANDCOVER_CLASSES
    # DN follow the reflectance up to noise (a few DN) and 12-bit quantization
    residual = scene.dn.astype(np.float32) - scenes.reflectance_to_dn(scene.reflectance)
    assert abs(float(residual.mean())) < 1.0 and float(residual.std()) < 15.0


def test_same_seed_same_scene_and_different_seeds_differ(shared_data):
    a, b, c = (scenes.make_scene(seed, 64, 64) for seed in (11, 11, 12))
    for field in ("dn", "reflectance", "landcover", "cloud", "cloud_optical"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.dn, c.dn)
    assert not np.array_equal(a.landcover, c.landcover)


def test_requested_cloud_cover_is_respected(shared_data):
    for seed, cover in enumerate((0.0, 0.1, 0.5, 0.9, 1.0)):
        scene = scenes.make_scene(seed, 128, 128, cloud_cover=cover)
        assert scene.cloud_fraction == pytest.approx(cover, abs=0.01)
    with pytest.raises(UserError, match="fraction"):
        scenes.make_scene(0, 64, 64, cloud_cover=40)


def _flatness(spectra):
    """Mean relative spread of B1-B4 per pixel (0 for a flat spectrum)."""
    return float(np.mean(spectra[:, VNIR].std(axis=1) / spectra[:, VNIR].mean(axis=1)))


def test_clouds_are_brighter_and_flatter_than_clear_vegetation(cloudy_scenes):
    veg = scenes.LANDCOVER_CLASSES.index("vegetation")
    thick = np.concatenate([s.reflectance[:, s.cloud_optical > 0.9].T for s in cloudy_scenes])
    clear_veg = np.concatenate(
        [s.reflectance[:, (s.cloud_optical == 0) & (s.landcover == veg)].T for s in cloudy_scenes])
    assert len(thick) > 1000 and len(clear_veg) > 1000
    assert thick[:, VNIR].mean() > 2.0 * clear_veg[:, VNIR].mean()
    assert _flatness(thick) < 0.5 * _flatness(clear_veg)
    # water/ice clouds reflect less in the SWIR than in the visible
    assert thick[:, 5].mean() < thick[:, 4].mean() < thick[:, 0].mean()


def test_thin_and_thick_clouds_both_occur(cloudy_scenes):
    opacity = np.concatenate([s.cloud_optical.ravel() for s in cloudy_scenes])
    cloudy = opacity[opacity > scenes.CLOUD_OPACITY_THRESHOLD]
    assert np.mean(cloudy < 0.7) > 0.05       # semi-transparent cloud
    assert np.mean(cloudy > 0.95) > 0.2       # opaque cloud
    assert np.mean((opacity > 0) & (opacity <= scenes.CLOUD_OPACITY_THRESHOLD)) > 0.01   # haze = clear


def test_make_tiles_shapes_determinism_and_cover_mix(shared_data):
    dn, cloud = scenes.make_tiles(200, seed=5)
    assert dn.shape == (200, 6, 64, 64) and dn.dtype == np.uint16
    assert cloud.shape == (200, 64, 64) and cloud.dtype == np.uint8 and set(np.unique(cloud)) <= {0, 1}
    fraction = cloud.reshape(200, -1).mean(axis=1)
    assert np.mean(fraction < 0.1) > 0.15 and np.mean(fraction > 0.7) > 0.15
    dn2, cloud2 = scenes.make_tiles(37, seed=5, tile=32, scene_size=96)
    assert dn2.shape == (37, 6, 32, 32) and cloud2.shape == (37, 32, 32)
    np.testing.assert_array_equal(scenes.make_tiles(20, seed=5)[0], dn[:20])
    assert not np.array_equal(scenes.make_tiles(20, seed=6)[0], dn[:20])


def test_data_root_from_environment(shared_data, monkeypatch):
    from ground.data.spectra import default_data_root
    monkeypatch.setenv("SATEDGE_DATA", shared_data)
    assert str(default_data_root()) == shared_data
    assert load_spectral_library().reflectance.shape == (7261, 180)
    odd = scenes.make_scene(1, 37, 53, cloud_cover=0.3)      # sizes that are not multiples of 4
    assert odd.dn.shape == (6, 37, 53) and odd.cloud_fraction == pytest.approx(0.3, abs=0.02)
