"""``satedge keys ...`` and ``satedge engines ...``: keys, pack, sign, verify, inspect, diff, build, compare, targets.

Every verb sets ``func(args) -> int`` and raises ``UserError`` subclasses for problems the user can
fix; the ``satedge`` dispatcher prints them and exits with their ``exit_code``. Verbs that only read
a bundle (verify, inspect, diff, compare) take a directory or a ``.tar``/``.tar.gz``; a tar is
unpacked (with ``extract_archive``'s checks) into a temporary directory first.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from engines.cli_files import input_file, one_line, opened, output_parent
from engines.cli_pack import run_pack
from engines.errors import BundleError, SignatureError, UserError

def add_parsers(subparsers) -> None:
    """Add the ``keys`` and ``engines`` sides and their verbs to the top-level parser."""
    keys = subparsers.add_parser("keys", help="ed25519 signing keys for engine bundles")
    kverbs = keys.add_subparsers(dest="verb", metavar="<verb>", required=True)
    gen = kverbs.add_parser("gen", help="create a key pair: NAME.key (private, 0600) and NAME.pub; with --curve "
                            "a control-channel pair NAME.curve.key (secret, 0600) and NAME.curve.pub instead")
    gen.add_argument("--out", required=True, help="directory for the two files")
    gen.add_argument("--name", default="satedge", help="file stem (default: satedge)")
    gen.add_argument("--curve", action="store_true", help="write a CurveZMQ (Curve25519) pair for the daemon's "
                     "control channel instead of an ed25519 bundle-signing pair (docs/protocol.md, Control channel)")
    gen.set_defaults(func=_keys_gen)

    from engines.flash import add_flash_parser
    add_flash_parser(subparsers)

    side = subparsers.add_parser("engines", help="engine bundles: pack, sign, verify, build, compare")
    verbs = side.add_subparsers(dest="verb", metavar="<verb>", required=True)
    pack = verbs.add_parser("pack", help="make a bundle from an ONNX model, or a tar from a bundle directory")
    pack.add_argument("--onnx", help="the ONNX model to bundle")
    pack.add_argument("--manifest", help="JSON with name, version, precision, inputs, outputs (and optional "
                      "metrics, targets, min_runtime_version, reference_op)")
    pack.add_argument("--reference", help=".npz with in/<name> and out/<name> arrays (default: random inputs "
                      "run through ONNX Runtime)")
    pack.add_argument("--from-dir", help="an existing bundle directory to pack into a tar (--out FILE.tar[.gz])")
    pack.add_argument("--out", required=True, help="bundle directory to write, or the tar file with --from-dir")
    pack.add_argument("--name", help="override the manifest name")
    pack.add_argument("--version", type=int, help="override the manifest version")
    pack.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="override the manifest precision")
    pack.add_argument("--sign", metavar="KEY", help="sign the new bundle with this private key")
    pack.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    pack.set_defaults(func=run_pack)

    sign = verbs.add_parser("sign", help="sign a bundle directory (writes manifest.sig)")
    sign.add_argument("bundle")
    sign.add_argument("--key", required=True, help="private key (.key)")
    sign.set_defaults(func=_sign)

    verify = verbs.add_parser("verify", help="check hashes and, with --key, the signature")
    verify.add_argument("bundle", help="bundle directory or .tar/.tar.gz")
    verify.add_argument("--key", action="append", default=[], help="trusted public key (.pub); repeatable")
    verify.set_defaults(func=_verify)

    inspect = verbs.add_parser("inspect", help="human summary of a bundle")
    inspect.add_argument("bundle", help="bundle directory or .tar/.tar.gz")
    inspect.add_argument("--key", action="append", default=[], help="trusted public key to check the signature")
    inspect.add_argument("--json", action="store_true", help="print the manifest JSON instead")
    inspect.set_defaults(func=_inspect)

    diff = verbs.add_parser("diff", help="manifest-level differences (exit 1 when they differ)")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.set_defaults(func=_diff)

    build = verbs.add_parser("build", help="build a TensorRT plan on this Jetson/GPU host and add it")
    build.add_argument("bundle", help="bundle directory")
    build.add_argument("--target", required=True, help="target profile ('satedge engines targets')")
    build.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="default: the manifest's")
    build.add_argument("--dla-core", type=int, help="build for this DLA core (GPU fallback on)")
    build.add_argument("--timing-cache", help="timing cache file to load and update")
    build.add_argument("--version-compatible", action="store_true", help="TensorRT >= 8.6 version compatibility")
    build.add_argument("--workspace-mb", type=int, default=1024)
    build.add_argument("--key", help="private key to re-sign the bundle with (the old signature is removed)")
    build.add_argument("--replace", action="store_true", help="replace an existing plan with the same key")
    build.set_defaults(func=_build)

    compare = verbs.add_parser("compare", help="run backends on the reference vectors and compare")
    compare.add_argument("bundle", help="bundle directory or .tar/.tar.gz")
    compare.add_argument("--backends", help="comma-separated, from %s (default: those that can run this bundle: "
                         "onnxrt; reference when the manifest has reference_op; tensorrt when it has plans and "
                         "TensorRT imports here)" % ", ".join(("onnxrt", "tensorrt", "reference")))
    compare.add_argument("--tolerance", action="append", default=[], metavar="PREC=VALUE",
                         help="override a tolerance, e.g. int8=0.08")
    compare.set_defaults(func=_compare)

    targets = verbs.add_parser("targets", help="list target profiles")
    targets.add_argument("--json", action="store_true")
    targets.set_defaults(func=_targets)


def _signer(bundle) -> Optional[str]:
    from engines.signing import SIGNATURE_FILE, read_signature
    if not (bundle.path / SIGNATURE_FILE).is_file():
        return None
    try:
        return read_signature(bundle.path)["key_id"]
    except SignatureError:
        return "(malformed manifest.sig)"


def _keys_gen(args) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError("keys gen --out %s is a file, not a directory; pass a directory for the key pair (it is "
                        "created when missing)." % out)
    try:
        return _keys_gen_in(args)
    except OSError as exc:
        raise UserError("cannot write keys under --out %s: %s; pass a directory you can write to."
                        % (out, one_line(exc))) from None


def _keys_gen_in(args) -> int:
    if getattr(args, "curve", False):
        from engines.keyfiles import generate_curve_keypair
        secret, public = generate_curve_keypair(args.out, args.name)
        z85 = public.read_text().strip()
        print("curve secret key %s (keep it where it is used: the daemon, or this operator)\n"
              "curve public key %s\nZ85 public key   %s" % (secret, public, z85))
        return 0
    from engines.signing import generate_keypair, key_id
    priv, pub = generate_keypair(args.out, name=args.name)
    print("private key %s (keep it on the ground)\npublic key  %s\nkey id      %s" % (priv, pub, key_id(pub)))
    return 0


def _sign(args) -> int:
    from engines.signing import sign_bundle
    if not Path(args.bundle).is_dir():
        raise UserError("engines sign works on a bundle directory; sign it, then pack it with 'satedge engines pack "
                        "--from-dir DIR --out FILE.tar.gz'.")
    print("signed %s with key id %s" % (args.bundle, sign_bundle(args.bundle, args.key)))
    return 0


def _verify(args) -> int:
    from engines.onnx_scan import read_onnx_versions
    with opened(args.bundle, args.key) as bundle:
        m = bundle.manifest
        signer = _signer(bundle)
        try:
            read_onnx_versions(bundle.model_path)       # hashes match what was packed; is it a model at all?
        except UserError as exc:
            raise BundleError("%s v%d: its files match their hashes, but %s; re-export and repack the model."
                              % (m.name, m.version, one_line(exc).split(". Pass ")[0])) from None
        if args.key:
            print("OK %s v%d: %d files match their hashes; signed by trusted key id %s." % (m.name, m.version,
                                                                                            len(m.files), signer))
        else:
            print("OK %s v%d: %d files match their hashes; signature NOT checked (%s; pass --key PUB)."
                  % (m.name, m.version, len(m.files), "key id %s" % signer if signer else "unsigned"))
    return 0


def _inspect(args) -> int:
    from engines.summary import describe_bundle
    with opened(args.bundle, args.key) as bundle:
        print(bundle.manifest.to_json() if args.json else describe_bundle(bundle, _signer(bundle), bool(args.key)))
    return 0


def _diff(args) -> int:
    from engines.summary import manifest_diff
    with opened(args.a) as a, opened(args.b) as b:
        lines = manifest_diff(a.manifest, b.manifest)
    print("\n".join(lines) if lines else "manifests are identical")
    return 1 if lines else 0


def _build(args) -> int:
    from engines.build import build_plan
    from engines.bundle import Bundle
    if not Path(args.bundle).is_dir():
        raise UserError("engines build works on a bundle directory (it adds plans/ to it); pack it afterwards.")
    # checked before the build, which can take many minutes, rather than after it
    if args.key:
        input_file(args.key, "--key", "pass the private .key file that 'satedge keys gen' wrote, or leave --key out "
                    "and sign later with 'satedge engines sign'.")
    if args.timing_cache:
        if Path(args.timing_cache).is_dir():
            raise UserError("--timing-cache %s is a directory; pass a file (it is created when missing)."
                            % args.timing_cache)
        output_parent(args.timing_cache, "--timing-cache")
    if args.workspace_mb <= 0:
        raise UserError("--workspace-mb %d: give a positive size in MiB (default 1024)." % args.workspace_mb)
    report = build_plan(Bundle.open(args.bundle), args.target, precision=args.precision, dla_core=args.dla_core,
                        timing_cache=args.timing_cache, version_compatible=args.version_compatible,
                        workspace_mb=args.workspace_mb, key=args.key, replace=args.replace)
    print("built %s (%s) in %.1f s" % (report.entry.file, report.entry.describe(), report.seconds))
    if report.gpu_fallback_layers:
        print("layers on the GPU instead of the DLA: %s" % ", ".join(report.gpu_fallback_layers))
    print("signed by key id %s" % report.signed_by if report.signed_by else
          "bundle is now UNSIGNED (the manifest changed); sign it with 'satedge engines sign'.")
    return 0


def _tensorrt_here() -> Optional[str]:
    """None when TensorRT imports here (a GPU present), else why not."""
    from engines.runners.tensorrt import import_tensorrt
    try:
        import_tensorrt()
    except Exception as exc:  # a probe: UserError (no GPU, not installed), or a broken install's own error
        return one_line(exc)
    return None


def _unrunnable(bundle, backend: str) -> Optional[str]:
    """Why ``backend`` cannot run ``bundle`` at all (what the bundle lacks), or None when it may run it.

    Only what the bundle itself lacks counts here; whether this host can run a backend that the bundle
    supports (TensorRT installed, a plan for this GPU) is for the run to find out and report.
    """
    m = bundle.manifest
    if backend == "reference" and "reference_op" not in m.extra:
        return ("its manifest has no reference_op (the reference backend runs only bundles of one registered numpy "
                "op, docs/bundle.md 'Reference ops')")
    if backend == "tensorrt" and not m.plans:
        return "it has no TensorRT plan (add one with 'satedge engines build DIR --target PROFILE')"
    return None


def default_backends(bundle) -> list:
    """The backends that can run ``bundle`` here: onnxrt always; reference when the manifest has ``reference_op``;
    tensorrt when the bundle has plans and TensorRT imports on this host."""
    chosen = ["onnxrt"]
    if _unrunnable(bundle, "tensorrt") is None and _tensorrt_here() is None:
        chosen.append("tensorrt")
    if _unrunnable(bundle, "reference") is None:
        chosen.append("reference")
    return chosen


def _compare(args) -> int:
    from engines.compare import TOLERANCES, compare_backends
    from engines.runners import BACKENDS
    tolerances = {}
    for item in args.tolerance:
        prec, _, value = item.partition("=")
        try:
            tol = float(value)
        except ValueError:
            tol = float("nan")
        if prec not in TOLERANCES or not 0 < tol < float("inf"):
            raise UserError("--tolerance %r is not PREC=VALUE with PREC one of %s and VALUE a finite "
                            "number > 0 (e.g. int8=0.08)." % (item, ", ".join(TOLERANCES)))
        tolerances[prec] = tol
    named = None
    if args.backends is not None:
        named = [b.strip() for b in args.backends.split(",") if b.strip()]
        unknown = [b for b in named if b not in BACKENDS]
        if unknown or not named:
            raise UserError("--backends %r: %s; choose from %s, or leave --backends out to run every backend that "
                            "can run the bundle." % (args.backends, "unknown backend(s) %s" % ", ".join(unknown)
                                                     if unknown else "no backend named", ", ".join(BACKENDS)))
    with opened(args.bundle) as bundle:
        if named is None:
            backends = default_backends(bundle)
        else:
            backends = list(dict.fromkeys(named))
            why = [(b, _unrunnable(bundle, b)) for b in backends]
            why = [(b, w) for b, w in why if w]
            if why:
                m = bundle.manifest
                raise UserError("--backends %s: %s. Drop %s from --backends, or leave --backends out to run the "
                                "backends that can run it (%s)." % (
                                    args.backends, "; ".join("backend %r cannot run bundle %s v%d: %s"
                                                             % (b, m.name, m.version, w) for b, w in why),
                                    " and ".join(repr(b) for b, _ in why), ", ".join(default_backends(bundle))))
        report = compare_backends(bundle, backends, tolerances)
    print(report.format())
    return 0 if report.passed else 1


def _targets(args) -> int:
    from dataclasses import asdict
    from engines.targets import PROFILES
    if args.json:
        print(json.dumps({n: asdict(p) for n, p in PROFILES.items()}, indent=2))
        return 0
    print("%-11s %-8s %-9s %-6s %-5s %-9s %-4s %-15s %s" % ("profile", "jetpack", "tensorrt", "cuda", "sm",
                                                             "opset/IR", "dla", "precisions", "buffers"))
    for p in PROFILES.values():
        print("%-11s %-8s %-9s %-6s %-5s %-9s %-4d %-15s %s" % (
            p.name, p.jetpack or "-", p.trt_version or "any", p.cuda_version or "any", p.sm or "any",
            "%d/%d" % (p.max_opset, p.max_ir_version), p.dla_cores, ",".join(p.precisions), p.buffer_library))
    return 0
