"""``satedge ground ...``: the lab side."""
from __future__ import annotations

import os


def add_parsers(subparsers) -> None:
    """Add the ``ground`` side to the top-level parser."""
    from satedge_cli import non_negative_int
    side = subparsers.add_parser("ground", help="train, compress and export models")
    verbs = side.add_subparsers(dest="verb", metavar="<verb>", required=True)
    cs = verbs.add_parser("cloudscreen", help="train the cloud screen and pack FP32 and INT8 bundles")
    cs.add_argument("--out", default="out/cloudscreen")
    cs.add_argument("--quick", action="store_true")
    cs.add_argument("--seed", type=non_negative_int, default=0)
    cs.set_defaults(func=_cloudscreen)
    cp = verbs.add_parser("compress", help="run a compression recipe (distill, QAT, PTQ, hybrid, prune, TDDS), "
                          "export Q/DQ ONNX and bundles")
    cp.add_argument("--recipe", required=True, action="append",
                    help="recipe YAML, or a shipped name (cloud-quick, landcover-full, ...); repeat for several")
    cp.add_argument("--out", default=None, help="output folder (default: the recipe's, else out/compress/NAME)")
    cp.add_argument("--sign-key", default=None, help="ed25519 private key to sign the bundles with")
    cp.add_argument("--report", default=None, help="also write the report into this folder")
    cp.add_argument("--no-progress", action="store_true", help="no progress bars")
    cp.set_defaults(func=_compress)
    rp = verbs.add_parser("report", help="markdown report with PNG plots from compression results")
    rp.add_argument("results", nargs="+", help="results.json files or the folders holding them")
    rp.add_argument("--out", default="out/compress/report", help="report folder (REPORT.md and PNGs)")
    rp.set_defaults(func=_report)


def _cloudscreen(args) -> int:
    from ground.cloudscreen import build_cloud_screen
    res = build_cloud_screen(args.out, quick=args.quick, seed=args.seed)
    print(f"FP32 accuracy {res.fp32_accuracy:.4f}, INT8 accuracy {res.int8_accuracy:.4f}, "
          f"INT8/FP32 speed {res.int8_speedup:.2f}x")
    print(f"bundles: {res.fp32_bundle}  {res.int8_bundle}")
    return 0


def _print_summary(doc) -> bool:
    from ground.compress import summary
    ok = True
    for name, track in doc["tracks"].items():
        d = summary.int8_drops(track)
        print(f"[{doc['name']}/{name}] INT8 drop (points, worst labelled split): "
              + ", ".join(f"{k} {v['worst_labelled']:.2f}" for k, v in d["variants"].items()
                          if v["worst_labelled"] is not None))
        for r in summary.distillation(track):
            print(f"[{doc['name']}/{name}] KD {r['student']} {r['split']}: {r['kd']:.4f} vs no teacher "
                  f"{r['noteacher']:.4f} (mean of {r['seeds']} seed(s), KD ahead in {r['wins']})")
        for r in summary.pruning(track):
            print(f"[{doc['name']}/{name}] pruned {r['variant']} {r['split']}: {r['metric']:.4f}, "
                  f"BOPs /{r['bops_reduction']:.1f}")
        for r in summary.tdds(track):
            print(f"[{doc['name']}/{name}] TDDS {r['fraction']:.0%} {r['split']}: {r['tdds']:.4f} vs random "
                  f"{r['random']:.4f} (mean of {r['seeds']} seed(s), TDDS ahead in {r['wins']})")
        bad = [k for k, v in summary.checks(track).items() if not v["verify"] or v["qdq"] is False]
        if bad:
            print(f"[{doc['name']}/{name}] CHECK FAILED (ONNX Runtime vs torch): {bad}")
            ok = False
    return ok


def _compress(args) -> int:
    import dataclasses

    from ground.compress.pipeline import run_recipe
    from ground.compress.recipe import load_recipe
    recipes = [load_recipe(r) for r in args.recipe]     # validate all before running any
    if args.out and len(recipes) > 1:
        from engines.errors import UserError
        raise UserError("--out names one folder but several recipes were given; drop --out (each recipe has its own)")
    from engines.outpaths import output_folder
    for recipe in recipes:                              # every output folder checked before any training
        output_folder(args.out or recipe.out or f"out/compress/{recipe.name}", "--out" if args.out else
                      f"{recipe.source}: out")
    if args.report:
        output_folder(args.report, "--report")
    if args.sign_key and not os.path.isfile(args.sign_key):
        from engines.errors import UserError
        raise UserError(f"--sign-key {args.sign_key}: no such file; give an ed25519 private key "
                        "('satedge keys gen' writes one)")
    ok, outs = True, []
    for recipe in recipes:
        if args.no_progress:
            recipe = dataclasses.replace(recipe, progress=False)
        doc = run_recipe(recipe, out=args.out, sign_key=args.sign_key)
        ok &= _print_summary(doc)
        outs.append(args.out or recipe.out or f"out/compress/{recipe.name}")
    if args.report:
        from ground.compress.report import write_report
        print(f"report: {write_report(outs, args.report)}")
    return 0 if ok else 1


def _report(args) -> int:
    from ground.compress.report import write_report
    print(f"report: {write_report(args.results, args.out)}")
    return 0
