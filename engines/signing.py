"""Ed25519 signatures over a bundle's manifest (``manifest.sig``), see ``docs/bundle.md``.

The signature covers ``Manifest.canonical_bytes()``; the manifest pins every other file by
SHA-256, so one signature vouches for the whole bundle. A key is named by its *key id*: the first
16 hex characters of the SHA-256 of the raw 32-byte public key. ``manifest.sig`` is JSON::

    {"alg": "ed25519", "key_id": "3f2a...", "sig": "<base64 of the 64-byte signature>"}

Private keys are PEM (PKCS#8, unencrypted, mode 0600); public keys are PEM
(SubjectPublicKeyInfo). ``load_public_key`` also reads the raw 32 bytes, or their base64 or hex
text, so a key can sit in a settings file as one line.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence, Tuple, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from engines.keyfiles import new_key_paths, write_private
from engines.errors import SignatureError, UserError
from engines.manifest import MANIFEST_FILE, Manifest

SIGNATURE_FILE = "manifest.sig"
ALG = "ed25519"
PathLike = Union[str, "os.PathLike[str]"]
PublicKeyLike = Union[PathLike, bytes, Ed25519PublicKey]
log = logging.getLogger(__name__)


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: PublicKeyLike) -> str:
    """Return the key id: the first 16 hex characters of SHA-256 over the raw public key bytes.

    Parameters
    ----------
    public_key : Ed25519PublicKey, bytes or path
        Anything ``load_public_key`` reads.
    """
    return hashlib.sha256(_raw(load_public_key(public_key))).hexdigest()[:16]


def generate_keypair(directory: PathLike, name: str = "satedge") -> Tuple[Path, Path]:
    """Create a new ed25519 key pair as ``<name>.key`` (private, PEM, 0600) and ``<name>.pub`` (PEM).

    Parameters
    ----------
    directory : str or os.PathLike
        Where to write the two files; created if absent.
    name : str, optional
        The file stem, ``"satedge"`` by default.

    Returns
    -------
    (pathlib.Path, pathlib.Path)
        The private and the public key paths.

    Raises
    ------
    UserError
        If either file already exists (keys are never overwritten).
    """
    priv_path, pub_path = new_key_paths(directory, name, ".key", ".pub")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_private(priv_path, pem)
    pub_path.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv_path, pub_path


def load_private_key(path: PathLike) -> Ed25519PrivateKey:
    """Read an unencrypted PEM (PKCS#8) ed25519 private key; ``UserError`` says what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise UserError("no private key at %s; create one with 'satedge keys gen --out DIR'." % p)
    if os.name == "posix" and p.stat().st_mode & 0o077:
        log.warning("private key %s is readable by group or others; chmod 600 it.", p)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise UserError("%s is not an unencrypted PEM private key (%s); pass the .key file that "
                        "'satedge keys gen' wrote." % (p, exc)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError("%s holds a %s key; satedge signs with ed25519 only." % (p, type(key).__name__))
    return key


def _public_from_bytes(data: bytes, where: str) -> Ed25519PublicKey:
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except ValueError as exc:
            raise UserError("%s: not a readable PEM public key (%s)." % (where, exc)) from None
        if not isinstance(key, Ed25519PublicKey):
            raise UserError("%s holds a %s key; satedge verifies ed25519 only." % (where, type(key).__name__))
        return key
    raw = data if len(data) == 32 else None
    if raw is None:
        for decode in (binascii.unhexlify, base64.b64decode):
            try:
                candidate = decode(text)
            except (binascii.Error, ValueError):
                continue
            if len(candidate) == 32:
                raw = candidate
                break
    if raw is None:
        raise UserError("%s is not an ed25519 public key: expected PEM, 32 raw bytes, or their hex or base64 "
                        "text (%d bytes given). Pass the .pub file that 'satedge keys gen' wrote." % (where, len(data)))
    return Ed25519PublicKey.from_public_bytes(raw)


def load_public_key(path_or_bytes: PublicKeyLike) -> Ed25519PublicKey:
    """Read an ed25519 public key.

    Parameters
    ----------
    path_or_bytes : Ed25519PublicKey, bytes, str or os.PathLike
        A key object (returned as is); bytes holding PEM, the raw 32 bytes, or their hex or base64
        text; or the path of a file holding any of those.
    """
    if isinstance(path_or_bytes, Ed25519PublicKey):
        return path_or_bytes
    if isinstance(path_or_bytes, (bytes, bytearray)):
        return _public_from_bytes(bytes(path_or_bytes), "public key bytes")
    p = Path(path_or_bytes)
    if not p.is_file():
        raise UserError("no public key file at %s; pass the .pub file that 'satedge keys gen' wrote." % p)
    return _public_from_bytes(p.read_bytes(), str(p))


def sign_bundle(bundle_dir: PathLike, private_key_path: PathLike) -> str:
    """Sign a bundle: write ``manifest.sig`` over its manifest's canonical bytes.

    The bundle is opened and its hashes verified first, so a corrupted bundle is never signed.
    An existing signature is replaced (atomically).

    Returns
    -------
    str
        The key id of the signing key.
    """
    from engines.bundle import Bundle  # bundle imports this module
    from engines.durable import write_durable

    bundle = Bundle.open(bundle_dir, verify=True)
    private = load_private_key(private_key_path)
    kid = key_id(private.public_key())
    sig = private.sign(bundle.manifest.canonical_bytes())
    doc = {"alg": ALG, "key_id": kid, "sig": base64.b64encode(sig).decode("ascii")}
    write_durable(bundle.path / SIGNATURE_FILE, (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode("utf-8"))
    return kid


def read_signature(bundle_dir: PathLike) -> dict:
    """Return the parsed ``manifest.sig`` of a bundle (``SignatureError`` if missing or malformed)."""
    path = Path(bundle_dir) / SIGNATURE_FILE
    if not path.is_file():
        raise SignatureError("bundle %s is not signed: %s is missing. Sign it with 'satedge engines sign "
                             "BUNDLE --key KEY' on the ground." % (bundle_dir, SIGNATURE_FILE))
    try:
        doc = json.loads(path.read_bytes())
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        sig = base64.b64decode(str(doc["sig"]), validate=True)
        kid = doc["key_id"]
    except (ValueError, KeyError, binascii.Error) as exc:
        raise SignatureError("bundle %s: %s is malformed (%s: %s); it was damaged or tampered with. Copy the "
                             "bundle again." % (bundle_dir, SIGNATURE_FILE, type(exc).__name__, exc)) from None
    if doc.get("alg") != ALG or len(sig) != 64 or not isinstance(kid, str):
        raise SignatureError("bundle %s: %s says alg=%r with a %d-byte signature; satedge reads ed25519 "
                             "(64 bytes) only. Re-sign the bundle." % (bundle_dir, SIGNATURE_FILE, doc.get("alg"), len(sig)))
    return {"alg": ALG, "key_id": kid, "sig": sig}


def verify_manifest_signature(manifest: Manifest, bundle_dir: PathLike,
                              trusted_keys: Sequence[PublicKeyLike]) -> str:
    """Check ``manifest.sig`` of ``bundle_dir`` against an already parsed ``manifest``; return the key id."""
    keys = {}
    for item in trusted_keys:
        pub = load_public_key(item)
        keys[key_id(pub)] = pub
    if not keys:
        raise SignatureError("bundle %s: a signature is required but no trusted public keys were given. "
                             "Configure the ground's public key (e.g. --key satedge.pub)." % (bundle_dir,))
    doc = read_signature(bundle_dir)
    pub = keys.get(doc["key_id"])
    if pub is None:
        raise SignatureError("bundle %s: %s was made with key id %s, which is not trusted here; trusted key "
                             "ids: %s. Re-sign with a trusted key or add its public key." %
                             (bundle_dir, SIGNATURE_FILE, doc["key_id"], ", ".join(sorted(keys))))
    try:
        pub.verify(doc["sig"], manifest.canonical_bytes())
    except InvalidSignature:
        raise SignatureError("bundle %s: bad signature: %s (key id %s) does not match %s; the manifest or "
                             "the signature was modified. Copy the bundle again from a good source." %
                             (bundle_dir, SIGNATURE_FILE, doc["key_id"], MANIFEST_FILE)) from None
    return doc["key_id"]


def verify_bundle_signature(bundle_dir: PathLike, trusted_keys: Sequence[PublicKeyLike]) -> str:
    """Check a bundle's signature against trusted public keys (the file hashes are not checked here).

    Parameters
    ----------
    bundle_dir : str or os.PathLike
        The bundle directory (``manifest.json`` and ``manifest.sig``).
    trusted_keys : sequence of path, bytes or Ed25519PublicKey
        The public keys whose signatures are accepted.

    Returns
    -------
    str
        The key id that signed the bundle.

    Raises
    ------
    SignatureError
        If the signature is missing or malformed, made with an untrusted key, or does not verify.
    """
    mpath = Path(bundle_dir) / MANIFEST_FILE
    if not mpath.is_file():
        raise SignatureError("%s has no %s; it is not a bundle." % (bundle_dir, MANIFEST_FILE))
    return verify_manifest_signature(Manifest.from_json(mpath.read_bytes()), bundle_dir, trusted_keys)
