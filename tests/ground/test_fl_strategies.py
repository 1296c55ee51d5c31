"""Ground FL strategies: FedAvg math, FedProx/FedAvgM, FedBuff staleness, robust rules, validation,
and a quick FL simulation comparing dense FedAvg with top-k and RS-DGC at ≥ 50× fewer bytes."""
import numpy as np
import pytest

from engines.errors import UserError
from ground.fl.strategies import (ClientResult, FedAvg, FedAvgM, FedBuff, FedProx, Median, NormClipping, TrimmedMean,
                                  make_strategy, staleness_weight)

SHAPES = {"w": (2, 3), "b": (3,)}


def _result(cid, value, n=10, staleness=0):
    return ClientResult(cid, n, {"w": np.full((2, 3), value, np.float32), "b": np.full(3, value, np.float32)},
                        staleness=staleness)


def test_fedavg_is_the_example_weighted_mean():
    out = FedAvg().aggregate(1, [_result("a", 1.0, n=10), _result("b", 4.0, n=30), _result("c", -2.0, n=60)], [])
    expected = (10 * 1.0 + 30 * 4.0 + 60 * -2.0) / 100
    np.testing.assert_allclose(out.params_delta["w"], expected, rtol=1e-6)
    assert out.accepted == ["a", "b", "c"] and out.rejected == []
    assert out.metrics["total_examples"] == 100 and out.metrics["num_accepted"] == 3
    unweighted = FedAvg(weighted=False, server_lr=2.0).aggregate(1, [_result("a", 1.0, 10), _result("b", 4.0, 90)], [])
    np.testing.assert_allclose(unweighted.params_delta["b"], 2.0 * 2.5)


def test_fedprox_sends_mu_and_fedavgm_keeps_server_momentum():
    assert FedProx(proximal_mu=0.1).configure(3) == {"round": 3, "proximal_mu": 0.1}
    assert FedAvg().configure(3) == {"round": 3}
    m = FedAvgM(server_momentum=0.5, server_lr=1.0)
    first = m.aggregate(0, [_result("a", 1.0)], []).params_delta["w"]
    second = m.aggregate(1, [_result("a", 1.0)], []).params_delta["w"]
    np.testing.assert_allclose(first, 1.0)
    np.testing.assert_allclose(second, 1.5)              # m = 0.5 · 1 + 1
    assert m.aggregate(2, [], []).params_delta is None


def test_fedprox_term_keeps_the_local_model_near_the_global_one():
    torch = pytest.importorskip("torch")
    from onboard.fl.learner import TorchLearner
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 5)).astype(np.float32), rng.integers(0, 3, 64)
    norms = []
    for mu in (0.0, 1.0):
        torch.manual_seed(0)
        learner = TorchLearner(torch.nn.Linear(5, 3), lr=0.2, local_steps=30, seed=1)
        fit = learner.fit(x, y, FedProx(proximal_mu=mu).configure(0))
        norms.append(np.sqrt(sum(float(np.sum(v ** 2)) for v in fit.update.values())))
    assert norms[1] < 0.7 * norms[0]


def test_fedbuff_waits_for_k_updates_and_discounts_stale_ones():
    assert [staleness_weight(s) for s in (0, 1, 4, 9)] == pytest.approx([1.0, 0.5, 1 / 3, 0.25])
    buff = FedBuff(buffer_size=3, max_staleness=5)
    first = buff.aggregate(1, [_result("fresh", 3.0, staleness=0), _result("old", 3.0, staleness=4)], [])
    assert first.params_delta is None and first.accepted == ["fresh", "old"] and buff.pending == 2
    second = buff.aggregate(2, [_result("stale", 100.0, staleness=6), _result("late", 3.0, staleness=1)], [])
    assert second.rejected == [("stale", "stale")] and second.metrics["rejected_stale"] == 1
    assert second.metrics["flushed"] == 1 and buff.pending == 0
    expected = 3.0 * (1.0 + 1 / 3 + 0.5) / 3            # Σ n s(τ) Δ / Σ n with equal n
    np.testing.assert_allclose(second.params_delta["w"], expected, rtol=1e-6)
    weighted = FedBuff(buffer_size=2).aggregate(0, [_result("a", 1.0, n=30), _result("b", 1.0, n=10, staleness=4)], [])
    np.testing.assert_allclose(weighted.params_delta["b"], (30 * 1.0 + 10 / 3) / 40, rtol=1e-6)


def _honest_and_poisoned(n_honest=9, seed=0):
    rng = np.random.default_rng(seed)
    honest = [ClientResult(f"h{i}", 10, {"w": (np.ones((2, 3)) + 0.1 * rng.normal(size=(2, 3))).astype(np.float32),
                                         "b": (np.ones(3) + 0.1 * rng.normal(size=3)).astype(np.float32)})
              for i in range(n_honest)]
    mean = {k: np.mean([r.update[k] for r in honest], axis=0) for k in SHAPES}
    poisoned = ClientResult("evil", 10, {k: -10.0 * v for k, v in mean.items()})
    return honest + [poisoned], mean


def test_trimmed_mean_and_median_resist_a_10x_scaled_poisoned_client():
    results, honest_mean = _honest_and_poisoned()
    error = {}
    for name, strategy in {"fedavg": FedAvg(), "trimmed": TrimmedMean(trim_ratio=0.1), "median": Median(),
                           "clipped": NormClipping(FedAvg(), clip_factor=1.5)}.items():
        delta = strategy.aggregate(0, results, []).params_delta
        error[name] = max(float(np.abs(delta[k] - honest_mean[k]).max()) for k in SHAPES)
    assert error["fedavg"] > 1.0                         # the poisoned client drags the mean to about zero
    assert error["trimmed"] < 0.15 and error["median"] < 0.15
    assert error["clipped"] < 0.5 * error["fedavg"]


def test_invalid_updates_are_rejected_and_counted_by_reason():
    good = [_result(f"ok{i}", 1.0) for i in range(4)]
    nan = _result("nan", 1.0)
    nan.update["w"][0, 0] = np.nan
    inf = _result("inf", 1.0)
    inf.update["b"][1] = -np.inf
    shape = ClientResult("shape", 10, {"w": np.ones((3, 2), np.float32), "b": np.ones(3, np.float32)})
    missing = ClientResult("missing", 10, {"w": np.ones((2, 3), np.float32)})
    extra = ClientResult("extra", 10, {**_result("x", 1.0).update, "z": np.ones(1, np.float32)})
    huge = _result("huge", 1e4)
    zero = _result("zero", 1.0, n=0)
    junk = ClientResult("junk", 10, "not an update")
    strategy = FedAvg(shapes=SHAPES, max_norm=100.0)
    out = strategy.aggregate(5, good + [nan, inf, shape, missing, extra, huge, zero, junk],
                             [("sat9", "contact lost"), TimeoutError("no upload")])
    assert out.accepted == [r.client_id for r in good]
    assert dict(out.rejected) == {"nan": "non_finite", "inf": "non_finite", "shape": "wrong_shape",
                                  "missing": "missing_layer", "extra": "unknown_layer", "huge": "norm_above_bound",
                                  "zero": "bad_num_examples", "junk": "malformed"}
    m = out.metrics
    assert (m["rejected_non_finite"], m["rejected_wrong_shape"], m["rejected_norm_above_bound"]) == (2, 1, 1)
    assert m["num_rejected"] == 8 and m["num_failures"] == 2 and m["num_results"] == 12
    assert out.failures == [("sat9", "contact lost"), ("?", "TimeoutError: no upload")]
    np.testing.assert_allclose(out.params_delta["w"], 1.0)
    # without server shapes the round's majority is the reference; a relative norm bound also works
    relative = FedAvg(max_norm_factor=10.0).aggregate(0, good + [shape, huge], [])
    assert dict(relative.rejected) == {"shape": "wrong_shape", "huge": "norm_above_bound"}
    assert FedAvg().aggregate(0, [nan], []).params_delta is None


def test_make_strategy_and_bad_settings_are_user_errors():
    assert isinstance(make_strategy("median"), Median)
    with pytest.raises(UserError, match="available"):
        make_strategy("krum")
    with pytest.raises(UserError, match="trim_ratio"):
        TrimmedMean(trim_ratio=0.5)
    with pytest.raises(UserError, match="exactly one"):
        NormClipping(FedAvg())


def _non_iid_task(seed=0, n_clients=10, per_client=200, classes=10, alpha=0.3, noise=3.0):
    """8×8 blocky class prototypes plus heavy noise; each client's labels follow Dirichlet(α)."""
    rng = np.random.default_rng(seed)
    protos = np.kron(rng.normal(size=(classes, 4, 4)), np.ones((2, 2))) + 0.5 * rng.normal(size=(classes, 8, 8))

    def sample(labels):
        return (protos[labels] + noise * rng.normal(size=(len(labels), 8, 8))).reshape(len(labels), 64).astype(
            np.float32)

    clients = []
    for _ in range(n_clients):
        labels = rng.choice(classes, size=per_client, p=rng.dirichlet(alpha * np.ones(classes)))
        clients.append((sample(labels), labels))
    test_labels = rng.integers(0, classes, size=2000)
    return clients, (sample(test_labels), test_labels)


def test_fl_simulation_topk_and_rsdgc_match_dense_at_50x_fewer_bytes(capsys):
    torch = pytest.importorskip("torch")
    from ground.fl.simulation import run_simulation, summarize
    from onboard.fl.compressors import make_compressor
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                             # a tiny model: threads only add overhead
    try:
        clients, test = _non_iid_task()
        reports = {}
        for name, factory in {"dense": lambda i: make_compressor("dense"),
                              "topk": lambda i: make_compressor("topk", ratio=0.01),
                              "rsdgc": lambda i: make_compressor("rsdgc", ratio=0.01)}.items():
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
            reports[name] = run_simulation(model, clients, test, strategy=FedAvg(), compressor_factory=factory,
                                           rounds=20, lr=0.05, local_steps=10, seed=0)
    finally:
        torch.set_num_threads(threads)
    with capsys.disabled():
        print("\n" + summarize(reports))
    dense = reports["dense"]
    assert dense.final_accuracy > 0.6                    # 10 classes: chance is 0.1
    for name in ("topk", "rsdgc"):
        assert reports[name].compression_vs_dense() >= 50
        assert dense.uplink_bytes / reports[name].uplink_bytes >= 50
        assert reports[name].final_accuracy >= dense.final_accuracy - 0.06
