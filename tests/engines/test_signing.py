"""Ed25519 bundle signatures: sign, verify, refuse tampering, unknown keys and unsigned bundles."""
import json
import os
import stat

import pytest

from engines.bundle import Bundle
from engines.errors import BundleError, SignatureError, UserError
from engines.signing import (generate_keypair, key_id, load_private_key, load_public_key, sign_bundle,
                             verify_bundle_signature)


def test_keypair_files_and_key_id(keypair, tmp_path):
    priv, pub = keypair
    assert priv.name == "lab.key" and pub.name == "lab.pub"
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY")
    kid = key_id(pub)
    assert len(kid) == 16 and kid == key_id(load_private_key(priv).public_key())
    raw = load_public_key(pub).public_bytes_raw()
    assert key_id(raw) == key_id(raw.hex().encode()) == kid
    with pytest.raises(UserError, match="never overwritten"):
        generate_keypair(priv.parent, name="lab")
    with pytest.raises(UserError, match="not an ed25519 public key"):
        load_public_key(b"short")


def test_sign_and_verify(make_bundle, keypair):
    priv, pub = keypair
    bundle = make_bundle()
    kid = sign_bundle(bundle.path, priv)
    sig = json.loads((bundle.path / "manifest.sig").read_text())
    assert sig["alg"] == "ed25519" and sig["key_id"] == kid
    assert verify_bundle_signature(bundle.path, [pub]) == kid
    assert Bundle.open(bundle.path, trusted_keys=[pub]).manifest.name == "cloudmask"


def test_wrong_key_rejected_listing_trusted_ids(make_bundle, keypair, tmp_path):
    priv, _ = keypair
    _, other = generate_keypair(tmp_path / "other")
    bundle = make_bundle()
    kid = sign_bundle(bundle.path, priv)
    with pytest.raises(SignatureError) as err:
        Bundle.open(bundle.path, trusted_keys=[other])
    assert kid in str(err.value) and key_id(other) in str(err.value) and "not trusted" in str(err.value)


def test_unsigned_rejected_when_keys_required(make_bundle, keypair):
    bundle = make_bundle()
    Bundle.open(bundle.path)  # no keys asked for: fine
    with pytest.raises(SignatureError, match="not signed.*manifest.sig is missing"):
        Bundle.open(bundle.path, trusted_keys=[keypair[1]])
    with pytest.raises(SignatureError, match="no trusted public keys"):
        Bundle.open(bundle.path, trusted_keys=[])


def test_signature_error_is_a_bundle_error():
    assert issubclass(SignatureError, BundleError) and SignatureError.exit_code == BundleError.exit_code


BUNDLE_FILES = ["model.onnx", "reference.npz", "labels/classes.txt", "plans/sm87_trt10.3.0_fp16_gpu.plan",
                "manifest.json", "manifest.sig"]


@pytest.fixture
def signed_bundle(make_bundle, keypair, plan_bytes):
    """A signed bundle holding every kind of file: model, reference, an extra file and a plan."""
    from engines.build import add_plan
    from engines.plan import PlanEntry

    bundle = make_bundle()
    entry = PlanEntry("plans/sm87_trt10.3.0_fp16_gpu.plan", "8.7", "10.3.0.26", "fp16", None, target="orin-jp6")
    return add_plan(bundle, plan_bytes(), entry, key=keypair[0])


def test_signed_bundle_holds_every_kind_of_file(signed_bundle, keypair):
    present = sorted(str(p.relative_to(signed_bundle.path)) for p in signed_bundle.path.rglob("*") if p.is_file())
    assert present == sorted(BUNDLE_FILES)
    assert Bundle.open(signed_bundle.path, trusted_keys=[keypair[1]]).manifest.plans[0].sm == "8.7"


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("rel", BUNDLE_FILES)
def test_flipped_byte_in_any_file_is_refused_naming_it(signed_bundle, keypair, rel, where):
    path = signed_bundle.path / rel
    data = bytearray(path.read_bytes())
    data[{"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        Bundle.open(signed_bundle.path, trusted_keys=[keypair[1]])
    assert rel in str(err.value)


def test_signature_does_not_cover_other_bundles(make_bundle, keypair):
    """A valid manifest.sig copied next to another manifest is refused (it signs different bytes)."""
    a, b = make_bundle("a"), make_bundle("b", version=4)
    sign_bundle(a.path, keypair[0])
    (b.path / "manifest.sig").write_bytes((a.path / "manifest.sig").read_bytes())
    with pytest.raises(SignatureError, match="bad signature.*manifest.json"):
        verify_bundle_signature(b.path, [keypair[1]])


def test_sign_refuses_a_corrupted_bundle(make_bundle, keypair):
    bundle = make_bundle()
    (bundle.path / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="model.onnx"):
        sign_bundle(bundle.path, keypair[0])
    assert not (bundle.path / "manifest.sig").exists()
