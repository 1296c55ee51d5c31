"""A catalogue of malformed sensor messages, one per rule of the wire protocol.

Used by the sensor emulator's fault injection and by the tests: each kind must end as a counted
rejection with the matching error code while the daemon keeps serving.
"""
from __future__ import annotations

from typing import Any, Dict, List

import msgpack
import numpy as np

from onboard.wire import make_frame

#: kind -> the error code the daemon must answer with
EXPECTED_CODES: Dict[str, str] = {
    "truncated_header": "E_MALFORMED",
    "missing_parts": "E_MALFORMED",
    "wrong_dtype": "E_DTYPE",
    "shape_mismatch": "E_SHAPE",
    "oversized": "E_OVERSIZE",
    "nan_values": "E_NAN",
    "unknown_type": "E_TYPE",
    "wrong_version": "E_VERSION",
    "missing_field": "E_FIELD",
    "wrong_bands": "E_SHAPE",
}
KINDS = tuple(EXPECTED_CODES)


def bad_frame(kind: str, *, bands: int = 6, size: int = 64, frame_id: int = 0,
              oversize_bytes: int = 80 * 1024 * 1024) -> List[Any]:
    """The multipart parts of one malformed message of ``kind`` (see :data:`KINDS`)."""
    rng = np.random.default_rng(frame_id)
    good = rng.integers(0, 4096, size=(bands, size, size), dtype=np.uint16)
    parts = [bytes(p) if not isinstance(p, bytes) else p for p in make_frame(good, stream="bad", frame_id=frame_id)]
    header = msgpack.unpackb(parts[1])

    def with_header(**changes: Any) -> List[Any]:
        h = dict(header)
        h.update(changes)
        return [parts[0], msgpack.packb(h), *parts[2:]]

    if kind == "truncated_header":
        return [parts[0], parts[1][: len(parts[1]) // 2], parts[2]]
    if kind == "missing_parts":
        return [parts[0]]
    if kind == "wrong_dtype":
        return with_header(dtype="complex64")
    if kind == "shape_mismatch":
        return with_header(shape=[bands, size, size + 1])
    if kind == "oversized":
        return [parts[0], msgpack.packb({**header, "shape": [1, 1, oversize_bytes // 2]}), bytes(oversize_bytes)]
    if kind == "nan_values":
        data = rng.random((bands, size, size), dtype=np.float32)
        data[0, 1, 2] = np.nan
        return [parts[0], msgpack.packb({**header, "dtype": "float32"}), data.tobytes()]
    if kind == "unknown_type":
        return with_header(type="telepathy")
    if kind == "wrong_version":
        return with_header(v=99)
    if kind == "missing_field":
        h = dict(header)
        del h["frame_id"]
        return [parts[0], msgpack.packb(h), parts[2]]
    if kind == "wrong_bands":
        data = good[: bands - 1]
        return [parts[0], msgpack.packb({**header, "shape": list(data.shape)}), data.tobytes()]
    raise ValueError(f"unknown bad-frame kind {kind!r}; known: {', '.join(KINDS)}")
