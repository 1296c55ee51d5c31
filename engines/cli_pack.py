"""``satedge engines pack``: a bundle from an ONNX model and a JSON spec, or a tar of a bundle.

Every file the command names is checked before anything is read or written (a typo costs no
half-made bundle); reference vectors come from ``--reference`` or from random inputs run through
ONNX Runtime.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from engines.cli_files import READ_ERRORS, input_file, one_line, output_parent
from engines.errors import UserError


def _auto_reference(model: Path, inputs, outputs, manifest: str = "the manifest"):
    import onnxruntime as ort
    rng = np.random.default_rng(0)
    feeds = {}
    for s in inputs:
        shape = tuple(d if isinstance(d, int) else 1 for d in s.shape)
        feeds[s.name] = (rng.standard_normal(shape) if np.dtype(s.dtype).kind == "f"
                         else rng.integers(0, 2, shape)).astype(s.dtype)
    # onnxruntime's errors (InvalidProtobuf, NoSuchFile, InvalidArgument, ...) share no public base class
    try:
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UserError("ONNX Runtime cannot load --onnx %s: %s. Pass a valid .onnx model (as the export wrote "
                        "it)." % (model, one_line(exc))) from None
    names = [s.name for s in outputs]
    try:
        return feeds, dict(zip(names, sess.run(names, feeds)))
    except Exception as exc:
        raise UserError("--onnx %s does not run on the inputs/outputs that --manifest %s declares (%s): %s. Make "
                        "the manifest's inputs and outputs match the model's names, dtypes and shapes, or pass "
                        "--reference REF.npz." % (model, manifest, ", ".join("%s %s%s" % (s.name, s.dtype, tuple(
                            s.shape)) for s in inputs), one_line(exc))) from None


def _read_reference(path: Path):
    """The ``in/<name>`` and ``out/<name>`` arrays of a ``--reference`` .npz (``UserError`` when unreadable)."""
    fix = ("write it with numpy.savez(PATH, **{'in/<input>': array, 'out/<output>': array}), or leave --reference "
           "out to run random inputs through ONNX Runtime.")
    try:
        if not zipfile.is_zipfile(str(path)):  # an .npz is a zip archive of .npy files
            with open(path, "rb") as fh:
                npy = fh.read(6) == b"\x93NUMPY"
            raise UserError("--reference %s is %s of reference vectors; %s" % (
                path, "a single .npy array, not an .npz archive" if npy else "not an .npz (zip) archive", fix))
        with np.load(str(path), allow_pickle=False) as npz:
            ref_in = {k[3:]: npz[k] for k in npz.files if k.startswith("in/")}
            ref_out = {k[4:]: npz[k] for k in npz.files if k.startswith("out/")}
            names = list(npz.files)
    except READ_ERRORS as exc:
        raise UserError("cannot read --reference %s as an .npz of reference vectors (%s); %s"
                        % (path, one_line(exc), fix)) from None
    if not ref_in or not ref_out:
        raise UserError("--reference %s has no %s arrays (it holds %s); %s" % (
            path, "in/<name>" if not ref_in else "out/<name>", ", ".join(names) or "nothing", fix))
    return ref_in, ref_out


def run_pack(args) -> int:
    if args.from_dir:
        from engines.archive import pack_archive
        output_parent(args.out, "--out")
        if Path(args.out).is_dir():
            raise UserError("--out %s is a directory; with --from-dir, --out names the tar file to write, e.g. "
                            "%s.tar.gz." % (args.out, Path(args.from_dir).name or "bundle"))
        try:
            out = pack_archive(args.from_dir, args.out)
        except OSError as exc:
            raise UserError("cannot write --out %s: %s; choose a path you can write to." % (args.out,
                                                                                           one_line(exc))) from None
        print("packed %s -> %s (%d bytes)" % (args.from_dir, out, out.stat().st_size))
        return 0
    if not (args.onnx and args.manifest):
        raise UserError("engines pack needs --onnx MODEL --manifest SPEC.json --out DIR (or --from-dir BUNDLE "
                        "--out FILE.tar.gz to pack an existing bundle).")
    from engines.bundle import pack_bundle
    from engines.manifest import TensorSpec
    from engines.onnx_scan import read_onnx_versions
    from engines.targets import check_onnx_for_target
    # every named file is checked before anything is read or written, so a typo costs no half-made bundle
    onnx_fix = "pass the .onnx file that the export wrote."
    model = input_file(args.onnx, "--onnx", onnx_fix)
    manifest = input_file(args.manifest, "--manifest", "pass the JSON spec with name, version, precision, inputs, "
                                                        "outputs.")
    reference = input_file(args.reference, "--reference", "pass an .npz with in/<name> and out/<name> arrays, or "
                            "leave --reference out.") if args.reference else None
    if args.sign:
        input_file(args.sign, "--sign", "pass the private .key file that 'satedge keys gen' wrote.")
    try:
        spec = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise UserError("cannot read --manifest %s as JSON: %s; fix the file." % (manifest, one_line(exc))) from None
    if not isinstance(spec, dict):
        raise UserError("--manifest %s holds a JSON %s, not an object with name, version, precision, inputs, "
                        "outputs." % (manifest, type(spec).__name__))
    for key, value in (("name", args.name), ("version", args.version), ("precision", args.precision)):
        if value is not None:
            spec[key] = value
    missing = [k for k in ("name", "version", "precision", "inputs", "outputs") if k not in spec]
    if missing:
        raise UserError("--manifest %s lacks %s." % (manifest, ", ".join(missing)))
    targets = spec.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise UserError("--manifest %s: 'targets' must be a list of target profile names (e.g. [\"orin-jp6\"]), "
                        "got %r; see 'satedge engines targets'." % (manifest, targets))
    if not isinstance(spec.get("metrics", {}), dict):
        raise UserError("--manifest %s: 'metrics' must be an object of metric name -> number (e.g. {\"miou\": 0.8}), "
                        "got %r." % (manifest, spec["metrics"]))
    from engines.manifest import Manifest
    written = sorted(set(spec) & set(Manifest.__dataclass_fields__) - {"name", "version", "precision", "inputs",
                                                                       "outputs", "metrics", "targets",
                                                                       "min_runtime_version"})
    if written:
        raise UserError("--manifest %s sets %s, which engines pack writes itself; remove %s from the spec."
                        % (manifest, ", ".join(written), "it" if len(written) == 1 else "them"))
    for key in ("inputs", "outputs"):
        if not isinstance(spec[key], list) or not spec[key]:
            raise UserError("--manifest %s: %r must be a non-empty list of {\"name\", \"dtype\", \"shape\"} "
                            "objects, got %r." % (manifest, key, spec[key]))
    try:
        try:
            read_onnx_versions(model)  # a cheap scan: is this an ONNX file at all?
        except UserError as exc:  # "<path> is not an ONNX model (...). Pass the exported .onnx file."
            why = one_line(exc).replace(str(model), "").split(". Pass ")[0].replace("is not an ONNX model", "")
            raise UserError("--onnx %s is not an ONNX model (%s); %s" % (model, why.strip(" :()"), onnx_fix)) from None
        for target in targets:
            check_onnx_for_target(model, target)
    except READ_ERRORS as exc:
        raise UserError("cannot read --onnx %s as an ONNX model (%s); %s" % (model, one_line(exc), onnx_fix)) \
            from None
    ins = [TensorSpec.from_dict(d) for d in spec["inputs"]]
    outs = [TensorSpec.from_dict(d) for d in spec["outputs"]]
    if reference is not None:
        ref_in, ref_out = _read_reference(reference)
    else:
        ref_in, ref_out = _auto_reference(model, ins, outs, str(manifest))
    known = {"name", "version", "precision", "inputs", "outputs", "metrics", "targets", "min_runtime_version"}
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UserError("--out %s exists and is not empty; pass --overwrite to replace the bundle there, or choose "
                        "another --out." % out)
    output_parent(args.out, "--out")
    try:
        bundle = pack_bundle(args.out, name=spec["name"], version=spec["version"], model_path=model,
                             precision=spec["precision"], inputs=ins, outputs=outs, reference_inputs=ref_in,
                             reference_outputs=ref_out, metrics=spec.get("metrics"), targets=targets,
                             min_runtime_version=spec.get("min_runtime_version", "0.1.0"), overwrite=args.overwrite,
                             manifest_extra={k: v for k, v in spec.items() if k not in known})
    except OSError as exc:
        raise UserError("cannot write the bundle at --out %s: %s; choose a directory you can write to."
                        % (args.out, one_line(exc))) from None
    print("packed %s v%d -> %s" % (bundle.manifest.name, bundle.manifest.version, bundle.path))
    if args.sign:
        from engines.signing import sign_bundle
        print("signed with key id %s" % sign_bundle(bundle.path, args.sign))
    return 0
