"""FedFusion-style land cover: low-rank step, payload, metrics, synthetic elevation, training, real data.

Whether the dual-branch model beats each single modality is not reliable at the size a fast test
affords (8 epochs, 3,000 patches: -3 to +1 OA points against spectral-only over three seeds), so
the fast test checks what must hold (loss falls, payload >= 4x smaller, accuracy well above
chance, branches agree); the comparison itself runs at the quick size over three seeds in the
``slow`` test.
"""
import numpy as np
import pytest
import torch

from ground.models import landcover as lc


def test_lowrank_is_truncated_svd_with_stop_gradient():
    torch.manual_seed(0)
    base = torch.randn(64, 3) @ torch.randn(3, 49)                       # rank 3 + noise, plus row means
    feats = (base + 0.05 * torch.randn(64, 49) + torch.randn(64, 1)).reshape(4, 16, 7, 7).requires_grad_()
    out, r = lc.lowrank(feats, energy=0.75)
    m = feats.detach().reshape(64, 49)
    centred = m - m.mean(1, keepdim=True)
    u, s, vh = torch.linalg.svd(centred, full_matrices=False)
    energy = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
    assert r == int((energy < 0.75).sum()) + 1 and 1 <= r <= 3
    expected = m.mean(1, keepdim=True) + u[:, :r] @ torch.diag(s[:r]) @ vh[:r]
    assert torch.allclose(out.detach().reshape(64, 49), expected, atol=1e-4)
    out.sum().backward()
    assert torch.isfinite(feats.grad).all()
    assert lc.lowrank(feats.detach(), energy=1.0)[1] >= r
    pay = lc.lowrank_payload(feats.detach())
    assert pay["full_bytes"] == 64 * 49 * 4 and pay["lowrank_bytes"] == (64 + (64 + 49) * r) * 4


def test_classification_metrics_hand_example():
    y, p = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2]), np.array([0, 0, 0, 1, 1, 1, 2, 2, 0, 2])
    m = lc.classification_metrics(y, p, 3)
    assert m["OA"] == pytest.approx(0.8)
    assert m["AA"] == pytest.approx((3 / 4 + 1 + 3 / 4) / 3)
    pe = (4 * 4 + 3 * 2 + 3 * 4) / 100                                     # sum(pred_k * true_k) / n^2
    assert m["kappa"] == pytest.approx((0.8 - pe) / (1 - pe))
    assert m["confusion"].tolist() == [[3, 1, 0], [0, 2, 0], [1, 0, 3]]


def test_synthetic_elevation_is_tied_to_land_cover(shared_data):
    from ground.data.scenes import make_scene
    cover = make_scene(1, 96, 96, cloud_cover=0.0).landcover
    dsm = lc.synthetic_elevation(cover, 1)
    assert dsm.shape == cover.shape and np.array_equal(dsm, lc.synthetic_elevation(cover, 1))
    water, veg, bare, built = (cover == k for k in range(4))
    assert water.any() and veg.any() and bare.any() and built.any()
    assert dsm[water].std() < 0.5                                          # one flat surface + 0.3 m noise
    assert np.median(dsm[water]) < np.median(dsm[~water])                  # water lies low
    relief = dsm - lc._blur(dsm, 3)                                        # height above the surroundings
    assert np.median(relief[veg]) > np.median(relief[bare]) + 1            # canopy stands out
    assert relief[built].std() > 1.3 * relief[bare].std()                  # buildings and streets: rough


@pytest.fixture(scope="module")
def trained(shared_data):
    train = lc.make_multimodal_set(12, seed=1, size=64, per_scene=250, patch=7)
    test = lc.make_multimodal_set(4, seed=2, size=64, per_scene=250, patch=7, stats=train["stats"])
    model, history = lc.train_landcover(train, ("spectral", "elevation"), "quick", seed=0, epochs=8)
    return model, history, test


def test_dual_branch_trains_and_compresses(trained):
    model, history, test = trained
    assert test["spectral"].shape == (1000, 6, 7, 7) and test["elevation"].shape == (1000, 1, 7, 7)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    metrics = lc.classification_metrics(test["labels"], lc.predict(model, test), 6)
    assert metrics["OA"] > 0.85 and metrics["kappa"] > 0.8, metrics
    agree = (lc.predict(model, test) == lc.predict(model, test, "cascade")).mean()
    assert agree > 0.9                                                      # the consistency terms work
    with torch.no_grad():                                                   # the FL payload of one batch
        payloads = [lc.lowrank_payload(model.encoders[m](torch.from_numpy(test[m][:128]))) for m in model.modalities]
    full, low = sum(p["full_bytes"] for p in payloads), sum(p["lowrank_bytes"] for p in payloads)
    assert full >= 4 * low, payloads


def test_real_data_spectral_only_and_olinda_sanity(trained, shared_data):
    from ground.data.real import load_itaipu, load_olinda
    itaipu = lc.itaipu_spectral(load_itaipu(shared_data))
    assert itaipu["train"] + itaipu["test"] == 683 and itaipu["OA"] > 0.9, itaipu
    check = lc.olinda_sanity(trained[0], load_olinda(shared_data), stride=8)
    assert check["branch_agreement"] > 0.8
    assert sum(check["class_fractions"].values()) == pytest.approx(1.0)
    assert check["payload"]["ratio"] > 1.0


@pytest.mark.slow
def test_dual_branch_beats_each_single_modality_at_quick_size(shared_data):
    cfg, scores = lc.SIZES["quick"], {"dual": [], "spectral": [], "elevation": []}
    for seed in range(3):
        train = lc.make_multimodal_set(cfg["scenes"], 1 + 10 * seed, cfg["size"], cfg["per_scene"], cfg["patch"])
        test = lc.make_multimodal_set(8, 2 + 10 * seed, cfg["size"], cfg["per_scene"], cfg["patch"], train["stats"])
        for name, mods in (("dual", ("spectral", "elevation")), ("spectral", ("spectral",)),
                           ("elevation", ("elevation",))):
            model, _ = lc.train_landcover(train, mods, "quick", seed=seed)
            scores[name].append(lc.classification_metrics(test["labels"], lc.predict(model, test), 6)["OA"])
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    assert mean["dual"] > mean["spectral"] and mean["dual"] > mean["elevation"] + 0.05, scores
