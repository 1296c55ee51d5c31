"""Bundle archives: deterministic packing, and refusal of hostile tars before anything is written."""
import io
import tarfile

import pytest

from engines.archive import extract_archive, pack_archive
from engines.bundle import Bundle
from engines.errors import BundleError
from engines.signing import sign_bundle


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_pack_extract_round_trip_is_deterministic(make_bundle, keypair, tmp_path, suffix):
    bundle = make_bundle()
    kid = sign_bundle(bundle.path, keypair[0])
    one, two = pack_archive(bundle.path, tmp_path / ("one" + suffix)), pack_archive(bundle.path, tmp_path / ("two" + suffix))
    assert one.read_bytes() == two.read_bytes()
    with tarfile.open(str(one)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "", 0o644)}
    assert "manifest.sig" in [m.name for m in members]
    out = extract_archive(one, tmp_path / "slot-b")
    opened = Bundle.open(out, trusted_keys=[keypair[1]])
    assert opened.manifest == bundle.manifest and not list(tmp_path.glob(".slot-b*"))
    with pytest.raises(BundleError, match="already exists"):
        extract_archive(one, out)
    assert kid


def _tar(tmp_path, members, gz=False):
    """Write a tar from (TarInfo, bytes or None) pairs, the way an attacker would."""
    path = tmp_path / ("evil.tar.gz" if gz else "evil.tar")
    with tarfile.open(str(path), "w:gz" if gz else "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x"):
    return tarfile.TarInfo(name), data


def _link(name, target, kind):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _device(name):
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info, None


@pytest.mark.parametrize("members,match", [
    ([_file("manifest.json"), _file("../escape.txt")], r"'\.\./escape\.txt'.*escaping path"),
    ([_file("plans/../../escape.txt")], r"'plans/\.\./\.\./escape\.txt'.*escaping"),
    ([_file("/etc/cron.d/evil")], r"'/etc/cron.d/evil'.*absolute"),
    ([_file("manifest.json"), _link("model.onnx", "/etc/passwd", tarfile.SYMTYPE)], r"'model\.onnx' is a symlink"),
    ([_file("manifest.json"), _link("model.onnx", "manifest.json", tarfile.LNKTYPE)], r"'model\.onnx' is a hard link"),
    ([_device("null")], r"'null' is a device"),
    ([_file("model.onnx"), _file("model.onnx", b"second")], r"'model\.onnx' appears twice"),
    ([_file("plans"), _file("plans/x.plan")], r"'plans/x\.plan' appears twice"),
    ([_file("C:\\evil.dll")], r"absolute or escaping"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_hostile_members_are_refused(tmp_path, members, match, gz):
    path = _tar(tmp_path, members, gz)
    with pytest.raises(BundleError, match=match):
        extract_archive(path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the temporary directory is gone too


def test_oversized_member_and_total_refused(tmp_path):
    path = _tar(tmp_path, [_file("manifest.json", b"{}"), _file("model.onnx", b"\x00" * 5000)])
    with pytest.raises(BundleError, match=r"'model\.onnx' is 5000 bytes, over the 4096-byte limit"):
        extract_archive(path, tmp_path / "out", max_member_bytes=4096)
    with pytest.raises(BundleError, match=r"more than 3000 bytes \(at 'model\.onnx'\)"):
        extract_archive(path, tmp_path / "out", max_total_bytes=3000)
    with pytest.raises(BundleError, match="more than 1 members"):
        extract_archive(path, tmp_path / "out", max_members=1)
    assert extract_archive(path, tmp_path / "out").joinpath("model.onnx").stat().st_size == 5000


def test_garbage_and_truncated_archives(tmp_path, make_bundle):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b not really gzip" * 10)
    with pytest.raises(BundleError, match="junk.tar.gz"):
        extract_archive(junk, tmp_path / "out")
    good = pack_archive(make_bundle().path, tmp_path / "good.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BundleError, match="cut.tar.gz"):
        extract_archive(cut, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dot_slash_prefix_from_plain_tar_is_accepted(tmp_path, make_bundle):
    bundle = make_bundle()
    path = tmp_path / "manual.tar"
    with tarfile.open(str(path), "w") as tar:
        tar.add(str(bundle.path), arcname=".")
    assert Bundle.open(extract_archive(path, tmp_path / "out")).manifest.name == "cloudmask"
