"""Hyperspectral scenes, ROC AUC, RX references and the STAD-style teacher/student."""
import numpy as np
import pytest

from engines.errors import UserError
from engines.runners.reference import reference_ops
from ground.data.hsi import make_hsi_scene, resample_to_sensor, roc_auc, sensor_bands
from ground.models import rx

TINY_STAD = dict(h1=64, h2=12, w1=16, w2=8, scenes=2, size=64, epochs=80, distill_epochs=120)


def test_roc_auc_matches_hand_computed_examples():
    # pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4) -> 3 / 4
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half: (1 + 0.5 + 1 + 1) / 4
    assert roc_auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert roc_auc(np.ones(10), np.arange(10) % 2) == pytest.approx(0.5)
    assert roc_auc([3, 2, 1], [1, 0, 0]) == 1.0 and roc_auc([3, 2, 1], [0, 0, 1]) == 0.0
    assert np.isnan(roc_auc([1, 2], [0, 0]))
    rng = np.random.default_rng(0)                   # agrees with the pair-counting definition
    s, y = rng.integers(0, 5, 200), rng.random(200) < 0.3
    pos, neg = s[y][:, None], s[~y][None, :]
    assert roc_auc(s, y) == pytest.approx(((pos > neg) + 0.5 * (pos == neg)).mean())


def test_hsi_scene_is_deterministic_with_subpixel_targets(shared_data):
    a, b = make_hsi_scene(3, size=32, abundance=(0.05, 0.3)), make_hsi_scene(3, size=32, abundance=(0.05, 0.3))
    assert a.cube.shape == (180, 32, 32) and np.array_equal(a.cube, b.cube)
    assert a.targets.sum() == 9 and np.all((a.abundance[a.targets] >= 0.05) & (a.abundance[a.targets] <= 0.3))
    assert np.all(a.abundance[~a.targets] == 0)
    sensor = make_hsi_scene(3, size=32, n_bands=48)
    assert sensor.cube.shape == (48, 32, 32) and np.array_equal(sensor.targets, a.targets)
    centres, fwhm = sensor_bands(48)
    assert len(centres) == 48 and not np.any((centres > 1.36) & (centres < 1.44))   # no water-vapour band
    flat, _ = resample_to_sensor(np.full((2, 180), 0.3), a.wavelengths_um, 48)
    assert np.allclose(flat, 0.3)
    with pytest.raises(UserError):
        make_hsi_scene(0, target="ufo")


def test_rx_references(shared_data):
    scene = make_hsi_scene(1, size=48, abundance=(0.2, 0.2))
    g = rx.global_rx(scene.cube)
    x = scene.cube.reshape(180, -1).T
    mu, inv = rx.background_stats(x)
    assert np.allclose(g.ravel(), rx.rx_score(x, mu, inv))
    op = reference_ops()["rx_score"]({"pixels": x.reshape(48, 48, 180)}, mean=mu, inv_cov=inv)
    assert op["score"].shape == (48, 48) and np.allclose(op["score"], g, rtol=1e-5)
    assert roc_auc(g, scene.targets) > 0.9                                       # 20 % roof abundance
    local = rx.local_rx(scene.cube, outer=11, inner=3, n_components=8)
    assert roc_auc(local, scene.targets) > 0.9
    z = np.moveaxis(rx.pca_whiten(scene.cube, 8), 0, -1)                          # one pixel by brute force
    r, c = 2, 30
    window = np.array([z[i, j] for i in range(max(r - 5, 0), r + 6) for j in range(c - 5, c + 6)
                       if max(abs(i - r), abs(j - c)) > 1])
    m = window.mean(0)
    cov = np.cov(window, rowvar=False, bias=True)
    cov += 1e-3 * np.trace(cov) / 8 * np.eye(8)
    d = z[r, c] - m
    assert local[r, c] == pytest.approx(d @ np.linalg.solve(cov, d), rel=1e-8)
    with pytest.raises(UserError):
        rx.local_rx(scene.cube, outer=4, inner=3)


def test_small_target_filter_keeps_points_flattens_blobs():
    from ground.models.anomaly import small_target_filter
    s = np.zeros((32, 32))
    s[5, 5] = 1.0
    s[15:30, 15:30] = 1.0
    f = small_target_filter(s)
    assert f[5, 5] == pytest.approx(1.0) and f[22, 22] == pytest.approx(0.0)


def test_stad_teacher_and_distilled_student(shared_data):
    from ground.models.anomaly import run_stad
    res = run_stad(TINY_STAD, seed=0, abundance=(0.2, 0.2), n_bands=48, test_scenes=2, with_local_rx=False)
    assert res.auc["rx_global"] > 0.9
    assert res.auc["teacher"] > 0.9
    assert res.auc["student"] > res.auc["teacher"] - 0.05, res.auc                # within a few points
    assert res.params["student"] < res.params["teacher"] / 2
