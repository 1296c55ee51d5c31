"""Cost counting, GHOST k-means widths, structured pruning surgery and TDDS scoring."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from ground.compress.fakequant import all_int8  # noqa: E402
from ground.compress.flops import layer_macs, model_cost  # noqa: E402
from ground.compress.hybrid import cluster_weights, ghost_bits, kmeans_1d  # noqa: E402
from ground.compress.prune import _mask_hooks, apply_pruning, cost_model, select  # noqa: E402
from ground.compress.tasks.cloud import CloudTask  # noqa: E402
from ground.compress.tasks.landcover import LandcoverTask  # noqa: E402
from ground.compress.tdds import select_random, select_top, tdds_scores  # noqa: E402
from ground.models.cloudnet import CloudNet  # noqa: E402
from ground.models.landcover import FusionNet  # noqa: E402


def test_macs_bops_and_size_follow_the_stated_convention():
    model = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 16 * 16, 5))
    run = lambda m: m(torch.zeros(1, 6, 16, 16))  # noqa: E731
    conv, fc = 16 * 16 * 8 * 6 * 9, 8 * 16 * 16 * 5
    assert layer_macs(model, run) == {"0": conv, "4": fc}
    fp32 = model_cost(model, run)
    assert fp32["macs"] == conv + fc and fp32["flops"] == 2 * (conv + fc) and fp32["bops"] == (conv + fc) * 32 * 32
    assert fp32["params"] == 8 * 6 * 9 + 8 + 2048 * 5 + 5          # BN folded into the conv bias
    q = model_cost(model, run, all_int8(model))
    assert q["bops"] == conv * 64 + fc * 1024
    assert q["size_bits"] == 8 * 6 * 9 * 8 + 8 * 32 + (2048 * 5 + 5) * 32
    sim = model_cost(model, run, {"0": "int8"}, weight_bits={"0": 3})
    assert sim["layers"]["0"]["bops"] == conv * 3 * 8
    cloud = model_cost(CloudNet(width="quick"), lambda m: m(torch.zeros(1, 6, 64, 64)))
    assert 1200 < cloud["macs"] / 4096 < 2000                        # "about 1.6k MACs per pixel"


def test_kmeans_and_ghost_bits():
    rng = np.random.default_rng(0)
    centres = np.array([-1.0, -0.2, 0.3, 1.1])
    w = rng.choice(centres, 2000) + rng.normal(0, 1e-3, 2000)
    c, a = kmeans_1d(w, 4)
    np.testing.assert_allclose(c, centres, atol=0.01)
    assert np.abs(w - c[a]).max() < 0.01
    bits, errors = ghost_bits(w, threshold=0.1)
    assert bits == 2 and errors[2] < 0.1
    bits, errors = ghost_bits(rng.standard_normal(4000), threshold=0.1)
    assert 3 <= bits <= 5 and all(errors[n] >= 0.1 for n in range(2, bits))
    assert ghost_bits(rng.standard_normal(500), threshold=1e-6)[0] is None      # needs more than 8 bits
    model = nn.Sequential(nn.Conv2d(2, 4, 3))
    clustered = cluster_weights(model, {"0": 2})
    assert len(np.unique(clustered[0].weight.detach().numpy())) <= 4


def _masked_equals_pruned(model, task, example, run_pruned):
    groups, consumers = task.prune_spec(model)
    rng = np.random.default_rng(1)
    keep = {g: np.sort(rng.choice(dict(model.named_modules())[p[0][0]].out_channels,
                                  max(1, dict(model.named_modules())[p[0][0]].out_channels // 2), replace=False))
            for g, p in groups.items()}
    masks = {}
    for g, p in groups.items():
        m = torch.zeros(dict(model.named_modules())[p[0][0]].out_channels)
        m[torch.from_numpy(keep[g])] = 1.0
        masks[g] = m
    hooks = _mask_hooks(model, groups, masks)
    with torch.no_grad():
        masked = run_pruned(model)
    for h in hooks:
        h.remove()
    pruned = apply_pruning(model, groups, consumers, keep)
    with torch.no_grad():
        np.testing.assert_allclose(run_pruned(pruned).numpy(), masked.numpy(), atol=1e-5)
    return pruned, keep


def test_pruning_cuts_exactly_the_masked_filters():
    torch.manual_seed(0)
    cloud = CloudNet(width=8).eval()
    pruned, keep = _masked_equals_pruned(cloud, CloudTask(), None, lambda m: m.forward_logits(torch.ones(1, 6, 32, 32)
                                                                                                 * 0.3))
    assert pruned.stem[0].out_channels == len(keep["stem+fuse"]) == pruned.fuse[0].out_channels
    assert pruned.fuse[0].in_channels == len(keep["high"]) + len(keep["context4"])
    lc_task = LandcoverTask()
    lc_task.input_names = ("spectral", "elevation")
    net = FusionNet({"spectral": 6, "elevation": 1}, 6, 8, energy=None).eval()
    net.cascade = None
    x = {"spectral": torch.randn(4, 6, 7, 7), "elevation": torch.randn(4, 1, 7, 7)}
    pruned, keep = _masked_equals_pruned(net, lc_task, None, lambda m: m(x)[0])
    assert pruned.classifier.in_features == len(keep["additive"])


def test_global_selection_reaches_the_cost_and_keeps_a_floor():
    cloud = CloudNet(width=8).eval()
    groups, consumers = CloudTask().prune_spec(cloud)
    cost, full, size = cost_model(cloud, lambda m: m.forward_logits(torch.zeros(1, 6, 32, 32)), groups, consumers)
    rng = np.random.default_rng(0)
    importance = {g: rng.random(n) for g, n in size.items()}
    keep = select(importance, cost, full, 0.5, 0.25)
    assert cost({g: float(len(k)) for g, k in keep.items()}) <= 0.5 * full
    assert all(len(keep[g]) >= int(np.ceil(0.25 * size[g])) for g in size)
    assert all(set(keep[g]) >= set(np.argsort(importance[g])[-1:]) for g in size)   # the best filter survives


def test_tdds_scores_and_selection():
    # sample 0 learns steadily (constant contribution, no variability); sample 1 oscillates
    dyn = np.array([[4.0, 4.0, 1.0], [3.0, 2.0, 1.0], [2.0, 4.0, 1.0], [1.0, 2.0, 1.0]])
    s = tdds_scores(dyn, window=2, ema=0.5)
    assert s[0] == pytest.approx(0.0) and s[1] > 0 and s[2] == pytest.approx(0.0)
    scores = np.arange(100, dtype=float)
    labels = np.repeat([0, 1, 2, 3], 25)
    top = select_top(scores, 0.2, labels)
    assert len(top) == 20 and np.bincount(labels[top]).tolist() == [5, 5, 5, 5]
    assert set(top) == {i for i in range(100) if i % 25 >= 20}
    rnd = select_random(100, 0.2, 0, labels)
    assert len(rnd) == 20 and np.bincount(labels[rnd]).tolist() == [5, 5, 5, 5]
    assert list(select_top(scores, 0.1)) == list(range(90, 100))
