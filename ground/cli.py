"""``satedge ground ...``: the lab side."""
from __future__ import annotations


def add_parsers(subparsers) -> None:
    """Add the ``ground`` side to the top-level parser."""
    side = subparsers.add_parser("ground", help="train, compress and export models")
    verbs = side.add_subparsers(dest="verb", metavar="<verb>", required=True)
    cs = verbs.add_parser("cloudscreen", help="train the cloud screen and pack FP32 and INT8 bundles")
    cs.add_argument("--out", default="out/cloudscreen")
    cs.add_argument("--quick", action="store_true")
    cs.add_argument("--seed", type=int, default=0)
    cs.set_defaults(func=_cloudscreen)


def _cloudscreen(args) -> int:
    from ground.cloudscreen import build_cloud_screen
    res = build_cloud_screen(args.out, quick=args.quick, seed=args.seed)
    print(f"FP32 accuracy {res.fp32_accuracy:.4f}, INT8 accuracy {res.int8_accuracy:.4f}, "
          f"INT8/FP32 speed {res.int8_speedup:.2f}x")
    print(f"bundles: {res.fp32_bundle}  {res.int8_bundle}")
    return 0
