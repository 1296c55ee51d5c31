"""Non-IID splits of a labelled data set across the satellites of a federated constellation.

Two kinds of skew occur in orbit, and both are generated here, deterministically by seed:

* **Label skew** (:func:`dirichlet_label_split`): each satellite's class mix is drawn from a
  Dirichlet. For every class ``k`` a proportion vector ``p_k ~ Dir(alpha * 1_N)`` over the N
  clients splits that class's samples (shuffled) at the cumulative proportions. Small ``alpha``
  (0.1) gives clients dominated by one or two classes, large ``alpha`` (100) is close to IID.
  Draws are repeated (same generator) until every client has ``min_size`` samples.
* **Geographic skew** (:func:`region_split`): each satellite sees a different part of the
  ground. ``mode="swath"``: the scene is cut into N parallel swaths of equal pixel count along a
  ground-track direction drawn within +-15 deg of north (a near-polar orbit); ``mode="tiles"``:
  square tiles are grouped into N compact regions by k-means on the tile centres (seeded
  k-means++ start, 20 Lloyd iterations) and each region's pixels go to one client. Class mixes
  then differ as much as the land cover differs between regions.

:func:`skew` measures the result: total-variation distance of each client's class distribution
from the global one (0 = IID, 1 = disjoint), client-size spread, and classes per client.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from engines.errors import UserError

__all__ = ["iid_split", "dirichlet_label_split", "region_split", "class_histograms", "skew"]


def _check(n_samples: int, n_clients: int) -> None:
    if n_clients < 1 or n_samples < n_clients:
        raise UserError(f"cannot split {n_samples} samples over {n_clients} clients; need 1 <= clients <= samples")


def iid_split(n_samples: int, n_clients: int, seed: int = 0) -> List[np.ndarray]:
    """Uniformly random split into ``n_clients`` near-equal parts (the IID baseline).

    Returns
    -------
    list of numpy.ndarray
        Sorted int64 sample indices per client; disjoint, covering ``range(n_samples)``.
    """
    _check(int(n_samples), int(n_clients))
    order = np.random.default_rng(seed).permutation(int(n_samples))
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, int(n_clients))]


def dirichlet_label_split(labels, n_clients: int, alpha: float = 0.5, seed: int = 0,
                          min_size: int = 1, max_tries: int = 100) -> List[np.ndarray]:
    """Split samples so that each client's class mix is Dirichlet(``alpha``)-skewed.

    Parameters
    ----------
    labels : array_like
        (N,) int class labels (negative labels are left out of every client).
    n_clients : int
    alpha : float
        Dirichlet concentration (> 0); smaller is more skewed.
    seed : int
    min_size : int
        Minimum samples per client; the draw is repeated until it holds.
    max_tries : int

    Returns
    -------
    list of numpy.ndarray
        Sorted sample indices per client, disjoint, covering every sample with a label >= 0.
    """
    labels = np.asarray(labels).ravel()
    valid = np.flatnonzero(labels >= 0)
    _check(valid.size, int(n_clients))
    if alpha <= 0:
        raise UserError(f"Dirichlet alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[valid])
    for _ in range(max_tries):
        parts: List[List[np.ndarray]] = [[] for _ in range(n_clients)]
        for k in classes:
            members = rng.permutation(valid[labels[valid] == k])
            cuts = (np.cumsum(rng.dirichlet(np.full(n_clients, float(alpha))))[:-1] * members.size).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].append(chunk)
        out = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise UserError(f"no Dirichlet(alpha={alpha}) split gave every one of {n_clients} clients {min_size} samples in "
                    f"{max_tries} draws; raise alpha, lower min_size or use fewer clients")


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 20) -> np.ndarray:
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):                                        # k-means++ seeding
        d2 = np.min(((points[:, None] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
        centres.append(points[rng.choice(len(points), p=d2 / d2.sum())] if d2.sum() > 0 else points[0])
    centres = np.array(centres, dtype=np.float64)
    for _ in range(iterations):
        assign = ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            if np.any(assign == j):
                centres[j] = points[assign == j].mean(0)
    return ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(1)


def region_split(rowcol, n_clients: int, seed: int = 0, mode: str = "swath", tile: int = 16) -> List[np.ndarray]:
    """Split samples by where they are on the ground.

    Parameters
    ----------
    rowcol : array_like
        (N, 2) pixel (row, col) of each sample (for patch data sets: the patch centre).
    n_clients : int
    seed : int
    mode : {"swath", "tiles"}
        Parallel ground-track swaths, or k-means regions of ``tile``-pixel tiles.
    tile : int
        Tile edge in pixels for ``mode="tiles"``.

    Returns
    -------
    list of numpy.ndarray
        Sorted sample indices per client; disjoint and covering all samples.
    """
    rc = np.asarray(rowcol, dtype=np.float64).reshape(-1, 2)
    _check(len(rc), int(n_clients))
    rng = np.random.default_rng(seed)
    if mode == "swath":
        heading = np.deg2rad(rng.uniform(-15.0, 15.0))          # track direction from north (up = -row)
        cross = rc[:, 1] * np.cos(heading) + rc[:, 0] * np.sin(heading)
        order = np.argsort(cross + 1e-9 * rng.standard_normal(len(rc)), kind="stable")
        return [np.sort(p).astype(np.int64) for p in np.array_split(order, n_clients)]
    if mode == "tiles":
        keys = np.floor(rc / tile).astype(np.int64)
        uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        if len(uniq) < n_clients:
            raise UserError(f"only {len(uniq)} tiles of {tile} px hold samples; use a smaller tile or fewer clients")
        region = _kmeans(uniq.astype(np.float64), n_clients, rng)[inverse.ravel()]
        parts = [np.flatnonzero(region == j).astype(np.int64) for j in range(n_clients)]
        if min(len(p) for p in parts) == 0:
            raise UserError("a k-means region came out empty; try another seed or fewer clients")
        return parts
    raise UserError(f"unknown region split mode {mode!r}; choose 'swath' or 'tiles'")


def class_histograms(labels, parts: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """(clients, classes) sample counts per client and class."""
    labels = np.asarray(labels).ravel()
    return np.stack([np.bincount(labels[p][labels[p] >= 0], minlength=n_classes)[:n_classes] for p in parts])


def skew(labels, parts: Sequence[np.ndarray], n_classes: int) -> Dict[str, float]:
    """How far a split is from IID.

    Returns
    -------
    dict
        ``mean_tv`` / ``max_tv``: total-variation distance ``0.5 * sum |p_client - p_global|`` averaged /
        maximal over clients (0 IID, 1 disjoint); ``size_cv``: std / mean of client sizes;
        ``classes_per_client``: mean number of classes holding at least 5 % of a client's samples.
    """
    hist = class_histograms(labels, parts, n_classes).astype(np.float64)
    p_client = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    p_global = hist.sum(0) / max(hist.sum(), 1)
    tv = 0.5 * np.abs(p_client - p_global).sum(1)
    sizes = hist.sum(1)
    return {"mean_tv": float(tv.mean()), "max_tv": float(tv.max()),
            "size_cv": float(sizes.std() / max(sizes.mean(), 1e-12)),
            "classes_per_client": float((p_client >= 0.05).sum(1).mean())}
