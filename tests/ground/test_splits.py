"""Non-IID federated splits: deterministic by seed, partitions, and measurably skewed."""
import numpy as np
import pytest

from engines.errors import UserError
from ground.data import splits


@pytest.fixture(scope="module")
def labels():
    rng = np.random.default_rng(0)
    return rng.integers(0, 6, 6000)


def _is_partition(parts, n, valid=None):
    joined = np.concatenate(parts)
    expected = np.arange(n) if valid is None else np.flatnonzero(valid)
    return len(joined) == len(expected) and np.array_equal(np.sort(joined), expected)


def test_dirichlet_split_is_deterministic_partition_and_skewed(labels):
    a = splits.dirichlet_label_split(labels, 5, alpha=0.1, seed=3)
    b = splits.dirichlet_label_split(labels, 5, alpha=0.1, seed=3)
    c = splits.dirichlet_label_split(labels, 5, alpha=0.1, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert _is_partition(a, len(labels))
    iid = splits.skew(labels, splits.iid_split(len(labels), 5, seed=3), 6)
    skewed = splits.skew(labels, a, 6)
    mild = splits.skew(labels, splits.dirichlet_label_split(labels, 5, alpha=100.0, seed=3), 6)
    assert iid["mean_tv"] < 0.05 and mild["mean_tv"] < 0.1
    assert skewed["mean_tv"] > 0.4 and skewed["classes_per_client"] < iid["classes_per_client"]


def test_dirichlet_ignores_unlabelled_and_checks_inputs():
    y = np.array([0, 1, -1, 0, 1, 1, -1, 0, 1, 0] * 20)
    parts = splits.dirichlet_label_split(y, 3, alpha=1.0, seed=0, min_size=5)
    assert _is_partition(parts, len(y), y >= 0) and min(map(len, parts)) >= 5
    with pytest.raises(UserError, match="alpha"):
        splits.dirichlet_label_split(y, 3, alpha=0.0)
    with pytest.raises(UserError, match="clients"):
        splits.iid_split(3, 4)


def test_region_splits_follow_geography(shared_data):
    from ground.data.scenes import make_scene
    cover = make_scene(5, 96, 96, cloud_cover=0.0).landcover
    rows, cols = np.nonzero(np.ones_like(cover, dtype=bool))
    rowcol, y = np.stack([rows, cols], 1), cover.ravel().astype(np.int64)
    iid = splits.skew(y, splits.iid_split(len(y), 4, seed=1), 6)["mean_tv"]
    for mode in ("swath", "tiles"):
        parts = splits.region_split(rowcol, 4, seed=1, mode=mode, tile=12)
        again = splits.region_split(rowcol, 4, seed=1, mode=mode, tile=12)
        assert all(np.array_equal(p, q) for p, q in zip(parts, again)) and _is_partition(parts, len(y))
        assert splits.skew(y, parts, 6)["mean_tv"] > 2 * iid, mode                   # land cover differs by region
        spread = np.mean([rowcol[p].std(0).mean() for p in parts])                   # clients are compact
        assert spread < 0.8 * rowcol.std(0).mean(), mode
    swaths = splits.region_split(rowcol, 4, seed=1, mode="swath")
    assert max(map(len, swaths)) - min(map(len, swaths)) <= 1
    with pytest.raises(UserError, match="mode"):
        splits.region_split(rowcol, 4, mode="orbit")


def test_data_cli_splits_and_fetch_list(shared_data, capsys):
    import argparse
    import json

    from ground.data import cli
    parser = argparse.ArgumentParser(prog="satedge")
    cli.add_parsers(parser.add_subparsers(dest="side"))
    args = parser.parse_args(["data", "splits", "--source", "itaipu", "--mode", "dirichlet", "--alpha", "0.1",
                              "--clients", "3", "--root", shared_data])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[1:] == ["water", "crop", "tree", "developed"] and len(lines) == 5
    assert json.loads(lines[-1])["mean_tv"] > 0.3
    args = parser.parse_args(["data", "fetch", "--dest", "unused", "--list"])
    assert args.func(args) == 0
    assert "apt-get download r-cran-stars" in capsys.readouterr().out
