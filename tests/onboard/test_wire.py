"""Wire protocol v1: every rule gives its typed error; valid frames decode without copies."""
import msgpack
import numpy as np
import pytest

from onboard import wire
from sim.badframes import EXPECTED_CODES, bad_frame


def _roundtrip(parts, max_payload=4 * 1024 * 1024):
    return wire.parse_frame(wire.decode([bytes(p) for p in parts]), max_payload)


def test_valid_frame_roundtrip_is_zero_copy():
    data = np.random.default_rng(1).integers(0, 4096, (6, 32, 48), dtype=np.uint16)
    parts = wire.make_frame(data, stream="msi", frame_id=7, extra_field="kept")
    payload = bytearray(bytes(parts[2]))
    msg = wire.decode([parts[0], parts[1], payload])
    frame = wire.parse_frame(msg)
    assert frame.frame_id == 7 and frame.stream == "msi"
    np.testing.assert_array_equal(frame.data, data)
    assert frame.header["extra_field"] == "kept"          # unknown fields are tolerated
    payload[0] ^= 0xFF                                      # the array views the received buffer
    assert frame.data.reshape(-1)[0] != data.reshape(-1)[0]


@pytest.mark.parametrize("kind", [k for k in EXPECTED_CODES if k != "wrong_bands"])
def test_each_bad_kind_raises_its_code(kind):
    parts = bad_frame(kind, oversize_bytes=5 * 1024 * 1024)
    with pytest.raises(wire.WireError) as err:
        _roundtrip(parts)
    assert err.value.code == EXPECTED_CODES[kind]
    assert str(err.value)                                  # a reason a person can read


def test_header_not_a_map_and_oversized_header():
    with pytest.raises(wire.MalformedMessage):
        wire.decode([b"frame", msgpack.packb([1, 2, 3])])
    with pytest.raises(wire.PayloadTooLarge):
        wire.decode([b"frame", msgpack.packb({"v": 1, "type": "frame", "pad": "x" * 70000})])


def test_field_types_are_checked():
    data = np.zeros((6, 4, 4), np.uint16)
    parts = wire.make_frame(data, stream="s", frame_id=1)
    hdr = msgpack.unpackb(parts[1])
    hdr["frame_id"] = "one"
    with pytest.raises(wire.InvalidField, match="frame_id"):
        _roundtrip([parts[0], msgpack.packb(hdr), parts[2]])
    hdr["frame_id"] = True
    with pytest.raises(wire.InvalidField):
        _roundtrip([parts[0], msgpack.packb(hdr), parts[2]])


def test_negative_and_wrong_rank_shapes():
    data = np.zeros((6, 4, 4), np.uint16)
    parts = wire.make_frame(data, stream="s", frame_id=1)
    for shape in ([6, -4, -4], [96], [6, 4, 4, 1]):
        hdr = msgpack.unpackb(parts[1])
        hdr["shape"] = shape
        with pytest.raises(wire.ShapeMismatch):
            _roundtrip([parts[0], msgpack.packb(hdr), parts[2]])


def test_reply_always_says_ok_or_error():
    ok = msgpack.unpackb(wire.make_reply({"id": "abc"}, True)[1])
    err = msgpack.unpackb(wire.make_reply({"id": "abc"}, False, "E_COMMAND", "nope")[1])
    assert ok["ok"] is True and ok["code"] == "OK" and ok["in_reply_to"] == "abc"
    assert err["ok"] is False and err["code"] == "E_COMMAND" and err["message"] == "nope"
