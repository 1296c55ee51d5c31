"""Engine bundles: a directory with ``manifest.json``, ``model.onnx`` and ``reference.npz``.

``pack_bundle`` writes one; ``Bundle.open`` reads one back and checks that every file matches its
SHA-256 in the manifest and that no file is present that the manifest does not list. The format
is specified in ``docs/bundle.md``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from engines.durable import write_durable
from engines.errors import BundleError, UserError
from engines.hashing import sha256_file
from engines.manifest import MANIFEST_FILE, Manifest, TensorSpec

MODEL_FILE = "model.onnx"
REFERENCE_FILE = "reference.npz"
SIGNATURE_FILES = ("manifest.sig",)  # engines.signing.SIGNATURE_FILE
RESERVED = (MANIFEST_FILE, MODEL_FILE, REFERENCE_FILE) + SIGNATURE_FILES
PathLike = Union[str, "os.PathLike[str]"]


def _listed_files(root: Path) -> Iterable[str]:
    for dirpath, dirnames, filenames in os.walk(str(root)):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            if full.is_symlink():
                raise BundleError("bundle %s contains a symlink %s; bundles hold plain files only. "
                                  "Replace it with the file itself." % (root, full.relative_to(root).as_posix()))
        for name in filenames:
            yield (Path(dirpath) / name).relative_to(root).as_posix()


def _as_spec(spec: Union[TensorSpec, Mapping[str, Any]]) -> TensorSpec:
    return spec if isinstance(spec, TensorSpec) else TensorSpec.from_dict(spec)


def _check_vectors(kind: str, specs: Sequence[TensorSpec], arrays: Mapping[str, np.ndarray]) -> None:
    expected = {s.name: s for s in specs}
    if set(arrays) != set(expected):
        raise BundleError("reference %s are %s but the %s are %s; give one array per tensor." %
                          (kind, sorted(arrays), kind, sorted(expected)))
    for name, arr in arrays.items():
        spec = expected[name]
        arr = np.asarray(arr)
        ok = arr.dtype == np.dtype(spec.dtype) and arr.ndim == len(spec.shape) and all(
            not isinstance(d, int) or d == n for d, n in zip(spec.shape, arr.shape))
        if not ok:
            raise BundleError("reference %s %r is %s%s but the spec says %s%s; cast or reshape it." %
                              (kind[:-1], name, arr.dtype, tuple(arr.shape), spec.dtype, tuple(spec.shape)))


class Bundle:
    """An engine bundle on disk; open it with ``Bundle.open``.

    Parameters
    ----------
    path : str or os.PathLike
        The bundle directory.
    manifest : Manifest
        Its parsed manifest.
    """

    def __init__(self, path: PathLike, manifest: Manifest) -> None:
        self._path = Path(path)
        self._manifest = manifest

    @classmethod
    def open(cls, path: PathLike, verify: bool = True,
             trusted_keys: Optional[Sequence[Any]] = None) -> "Bundle":
        """Open the bundle directory at ``path``.

        Parameters
        ----------
        path : str or os.PathLike
            The bundle directory (unpack a tar first with ``engines.archive.extract_archive``).
        verify : bool, optional
            Also check the SHA-256 of every listed file (default). The manifest schema, the
            presence of the listed files and the absence of unlisted files are always checked.
        trusted_keys : sequence of path, bytes or Ed25519PublicKey, optional
            When given, ``manifest.sig`` must be a valid signature by one of these keys; it is
            checked right after the manifest is parsed, before any other file is looked at. An
            empty sequence means "signature required, nothing trusted" and always fails.

        Raises
        ------
        BundleError
            If the manifest is missing or invalid, a file is missing, unlisted, or its hash differs.
        SignatureError
            If ``trusted_keys`` is given and the signature is missing, untrusted or bad.
        """
        root = Path(path)
        mpath = root / MANIFEST_FILE
        if not root.is_dir():
            raise BundleError("no bundle directory at %s; pass the folder that holds manifest.json." % root)
        if not mpath.is_file():
            raise BundleError("%s has no %s; it is not a bundle (or packing did not finish). Repack it "
                              "with pack_bundle." % (root, MANIFEST_FILE))
        try:
            manifest = Manifest.from_json(mpath.read_bytes())
        except BundleError as exc:
            raise BundleError("bundle %s: %s is invalid or was modified: %s" % (root, MANIFEST_FILE, exc)) from None
        if trusted_keys is not None:
            try:
                from engines.signing import verify_manifest_signature
            except ImportError as exc:  # cryptography is an onboard/ground extra, not a base dependency
                raise UserError("checking bundle signatures needs the 'cryptography' package (%s); install "
                                "satedge[onboard]." % exc) from None
            verify_manifest_signature(manifest, root, trusted_keys)
        bundle = cls(root, manifest)
        bundle.check_layout()
        if verify:
            bundle.verify()
        return bundle

    def check_layout(self) -> None:
        """Check that the listed files exist, nothing unlisted is present, and the required ones are listed."""
        listed = set(self._manifest.files)
        for required in (MODEL_FILE, self._manifest.reference.get("file", REFERENCE_FILE)):
            if required not in listed:
                raise BundleError("bundle %s: manifest does not list %s; every bundle needs it. Repack it."
                                  % (self._path, required))
        present = set(_listed_files(self._path)) - {MANIFEST_FILE} - set(SIGNATURE_FILES)
        missing, unlisted = sorted(listed - present), sorted(present - listed)
        if missing:
            raise BundleError("bundle %s: listed file(s) missing: %s. Copy the whole bundle again." % (self._path, missing))
        if unlisted:
            raise BundleError("bundle %s: file(s) not listed in the manifest: %s. Remove them or repack "
                              "the bundle with them as extra_files." % (self._path, unlisted))

    def verify(self) -> None:
        """Check the SHA-256 of every listed file; ``BundleError`` names the file and both hashes."""
        for rel, expected in sorted(self._manifest.files.items()):
            actual = sha256_file(self._path / rel)
            if actual != expected:
                raise BundleError("bundle %s: %s is corrupted or was modified: sha256 %s, manifest expects %s. "
                                  "Copy the bundle again from a good source." % (self._path, rel, actual, expected))

    @property
    def path(self) -> Path:
        """The bundle directory."""
        return self._path

    @property
    def manifest(self) -> Manifest:
        """The parsed manifest."""
        return self._manifest

    @property
    def model_path(self) -> Path:
        """Path of the ONNX model (not read until a runner loads it)."""
        return self._path / MODEL_FILE

    def file_path(self, rel: str) -> Path:
        """Path of a file listed in the manifest (``BundleError`` listing the files if not listed)."""
        if rel not in self._manifest.files:
            raise BundleError("bundle %s has no file %r; it has %s." % (self._path, rel, sorted(self._manifest.files)))
        return self._path / rel

    def reference(self) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        """Load the reference vectors as ``(inputs, outputs)`` dicts keyed by tensor name."""
        inputs: Dict[str, np.ndarray] = {}
        outputs: Dict[str, np.ndarray] = {}
        with np.load(str(self.file_path(self._manifest.reference.get("file", REFERENCE_FILE))),
                     allow_pickle=False) as npz:
            for key in npz.files:
                kind, _, name = key.partition("/")
                {"in": inputs, "out": outputs}.get(kind, {})[name] = npz[key]
        return inputs, outputs

    def __repr__(self) -> str:
        m = self._manifest
        return "Bundle(%r, name=%r, version=%d, precision=%r, files=%d)" % (
            str(self._path), m.name, m.version, m.precision, len(m.files))


def pack_bundle(out_dir: PathLike, *, name: str, version: int, model_path: PathLike, precision: str,
                inputs: Sequence[Union[TensorSpec, Mapping[str, Any]]],
                outputs: Sequence[Union[TensorSpec, Mapping[str, Any]]],
                reference_inputs: Mapping[str, np.ndarray], reference_outputs: Mapping[str, np.ndarray],
                metrics: Optional[Mapping[str, float]] = None,
                extra_files: Optional[Mapping[str, Union[PathLike, bytes]]] = None,
                targets: Sequence[str] = (), min_runtime_version: str = "0.1.0",
                overwrite: bool = False, manifest_extra: Optional[Mapping[str, Any]] = None) -> Bundle:
    """Write an engine bundle directory and return it opened (and verified).

    Parameters
    ----------
    out_dir : str or os.PathLike
        Target directory; created if absent. A non-empty one is refused unless ``overwrite`` is
        true, and then only if it already is a bundle (holds ``manifest.json``).
    name, version, precision : str, int, str
        Manifest fields (``precision`` is ``"fp32"``, ``"fp16"`` or ``"int8"``).
    model_path : str or os.PathLike
        The ONNX model to copy in as ``model.onnx``.
    inputs, outputs : sequence of TensorSpec or dict
        Tensor specs, in graph order.
    reference_inputs, reference_outputs : dict of str to numpy.ndarray
        One array per tensor, matching its spec; stored in ``reference.npz``.
    metrics : dict, optional
        Validation metrics (name to number).
    extra_files : dict, optional
        Relative path (``/``-separated) to a source file path or to bytes.
    targets : sequence of str, optional
        Target profile names this bundle is meant for.
    min_runtime_version : str, optional
        Oldest satedge that may run it.
    overwrite : bool, optional
        Replace an existing bundle at ``out_dir``.
    manifest_extra : dict, optional
        Further top-level manifest fields (e.g. ``reference_op``), kept and signed like the rest.
    """
    root = Path(out_dir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        if not overwrite:
            raise BundleError("%s exists and is not empty; pass overwrite=True to replace a bundle there, or "
                              "choose another out_dir." % root)
        if not (root / MANIFEST_FILE).is_file():
            raise BundleError("refusing to overwrite %s: it is not a bundle (no %s). Choose an empty or new "
                              "out_dir." % (root, MANIFEST_FILE))
        shutil.rmtree(str(root))
    if not Path(model_path).is_file():
        raise BundleError("model_path %s does not exist; pass the exported .onnx file." % model_path)
    in_specs, out_specs = [_as_spec(s) for s in inputs], [_as_spec(s) for s in outputs]
    _check_vectors("inputs", in_specs, reference_inputs)
    _check_vectors("outputs", out_specs, reference_outputs)
    extra_files = dict(extra_files or {})
    for rel in extra_files:
        if rel in RESERVED or rel.split("/")[0] in RESERVED:
            raise BundleError("extra file %r clashes with a reserved bundle name %s; rename it." % (rel, RESERVED))
    # Check everything the manifest will say before writing a single byte.
    Manifest(name=name, version=version, precision=precision, inputs=in_specs, outputs=out_specs,
             files={rel: "0" * 64 for rel in [MODEL_FILE, REFERENCE_FILE] + list(extra_files)},
             metrics=dict(metrics or {}), targets=list(targets), min_runtime_version=min_runtime_version,
             extra=dict(manifest_extra or {}))

    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(str(model_path), str(root / MODEL_FILE))
    arrays = {"in/" + k: np.asarray(v) for k, v in reference_inputs.items()}
    arrays.update({"out/" + k: np.asarray(v) for k, v in reference_outputs.items()})
    np.savez(str(root / REFERENCE_FILE), **arrays)
    for rel, src in extra_files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, (bytes, bytearray)):
            dest.write_bytes(bytes(src))
        else:
            shutil.copyfile(str(src), str(dest))
    files = {}
    for rel in sorted([MODEL_FILE, REFERENCE_FILE] + list(extra_files)):
        with open(str(root / rel), "rb+") as fh:
            os.fsync(fh.fileno())
        files[rel] = sha256_file(root / rel)
    manifest = Manifest(name=name, version=version, precision=precision, inputs=in_specs, outputs=out_specs,
                        files=files, metrics=dict(metrics or {}), reference={"file": REFERENCE_FILE},
                        targets=list(targets), min_runtime_version=min_runtime_version,
                        extra=dict(manifest_extra or {}))
    write_durable(root / MANIFEST_FILE, (manifest.to_json() + "\n").encode("utf-8"))
    return Bundle.open(root)
