"""Wire protocol v1: ZeroMQ multipart messages ``[topic, header, *buffers]``.

``docs/protocol.md`` is the authoritative description; this module implements it. The header is
a msgpack map with at least ``v`` (protocol version), ``type`` (message type), ``id`` and ``ts``.
Buffers are raw bytes; :func:`decode` keeps them as ``memoryview`` objects so that array
payloads are read without copies (``numpy.frombuffer`` on the received frame).

Every validation failure raises a subclass of :class:`WireError` whose ``code`` is one of the
error codes of the protocol, so a receiver can count and dead-letter it by reason.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence

import msgpack
import numpy as np

from engines.errors import UserError

PROTOCOL_VERSION = 1
MESSAGE_TYPES = ("frame", "result", "command", "reply", "heartbeat", "transfer", "ack")
FRAME_DTYPES = ("uint8", "uint16", "float32")
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024


class WireError(UserError):
    """A message that does not follow the wire protocol; ``code`` names the rule it broke."""

    code = "E_MALFORMED"


class MalformedMessage(WireError):
    """Wrong number of parts, or a header that is not a msgpack map."""

    code = "E_MALFORMED"


class UnsupportedVersion(WireError):
    """The header's protocol version is not one this side speaks."""

    code = "E_VERSION"


class UnknownMessageType(WireError):
    """The header's message type is not one of :data:`MESSAGE_TYPES`."""

    code = "E_TYPE"


class InvalidField(WireError):
    """A required header field is missing or has the wrong type."""

    code = "E_FIELD"


class DtypeError(WireError):
    """A frame's dtype is not one the daemon accepts."""

    code = "E_DTYPE"


class ShapeMismatch(WireError):
    """A frame's shape disagrees with the length of its payload."""

    code = "E_SHAPE"


class PayloadTooLarge(WireError):
    """A payload (or the header) is larger than the configured limit."""

    code = "E_OVERSIZE"


class NonFiniteValues(WireError):
    """A floating-point frame contains NaN or infinity."""

    code = "E_NAN"


ERROR_CODES = tuple(sorted({c.code for c in (MalformedMessage, UnsupportedVersion, UnknownMessageType,
                                             InvalidField, DtypeError, ShapeMismatch, PayloadTooLarge,
                                             NonFiniteValues)}))


@dataclass
class Message:
    """A decoded message: its type, its header map and its raw buffers (zero-copy views)."""

    type: str
    header: Dict[str, Any]
    buffers: List[memoryview] = field(default_factory=list)
    topic: bytes = b""


@dataclass
class Frame:
    """A validated sensor frame: ``data`` is a read-only array view over the received buffer."""

    stream: str
    frame_id: int
    data: np.ndarray
    header: Dict[str, Any]

    @property
    def nbytes(self) -> int:
        """Size of the pixel payload in bytes."""
        return int(self.data.nbytes)


def new_id() -> str:
    """A unique message id (hex uuid4)."""
    return uuid.uuid4().hex


def encode(msg_type: str, fields: Mapping[str, Any] | None = None, buffers: Sequence[Any] = (),
           topic: bytes | None = None) -> List[Any]:
    """Build the multipart list for a message.

    Parameters
    ----------
    msg_type : str
        One of :data:`MESSAGE_TYPES`.
    fields : mapping, optional
        Extra header fields; ``v``, ``type``, ``id`` and ``ts`` are filled in unless given.
    buffers : sequence of bytes-like
        Raw payload parts, sent as they are (no copy for ``memoryview`` or contiguous arrays).
    topic : bytes, optional
        Topic part; defaults to the message type.
    """
    if msg_type not in MESSAGE_TYPES:
        raise UnknownMessageType(f"cannot encode message type {msg_type!r}; known types: {', '.join(MESSAGE_TYPES)}")
    header = {"v": PROTOCOL_VERSION, "type": msg_type, "id": new_id(), "ts": time.time()}
    header.update(fields or {})
    parts: List[Any] = [topic if topic is not None else msg_type.encode(), msgpack.packb(header, use_bin_type=True)]
    parts.extend(memoryview(np.ascontiguousarray(b)).cast("B") if isinstance(b, np.ndarray) else b for b in buffers)
    return parts


def decode(parts: Sequence[Any], max_header_bytes: int = MAX_HEADER_BYTES) -> Message:
    """Decode and check the envelope of a received multipart message.

    Parameters
    ----------
    parts : sequence of bytes or zmq.Frame
        The parts as received (``recv_multipart(copy=False)`` gives frames; their buffers are
        used without copying).

    Raises
    ------
    WireError
        With the code of the first rule the message breaks.
    """
    if len(parts) < 2:
        raise MalformedMessage(f"a message has at least 2 parts [topic, header]; got {len(parts)}")
    views = [_view(p) for p in parts]
    raw_header = views[1]
    if len(raw_header) > max_header_bytes:
        raise PayloadTooLarge(f"header is {len(raw_header)} bytes; the limit is {max_header_bytes}")
    try:
        header = msgpack.unpackb(raw_header, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise MalformedMessage(f"header is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise MalformedMessage(f"header must be a msgpack map; got {type(header).__name__}")
    version = header.get("v")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"protocol version {version!r} is not supported; this side speaks v{PROTOCOL_VERSION}")
    msg_type = header.get("type")
    if msg_type not in MESSAGE_TYPES:
        raise UnknownMessageType(f"unknown message type {msg_type!r}; known types: {', '.join(MESSAGE_TYPES)}")
    return Message(type=msg_type, header=header, buffers=views[2:], topic=bytes(views[0]))


def parse_frame(msg: Message, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Frame:
    """Validate a ``frame`` message and return its pixels as a zero-copy array.

    Raises
    ------
    WireError
        Missing fields, a dtype not in :data:`FRAME_DTYPES`, a shape that disagrees with the
        payload length, a payload over ``max_payload_bytes``, or NaN/Inf in a float frame.
    """
    if msg.type != "frame":
        raise UnknownMessageType(f"expected a frame message, got {msg.type!r}")
    h = msg.header
    stream = _field(h, "stream", str)
    frame_id = _field(h, "frame_id", int)
    dtype = _field(h, "dtype", str)
    shape = _field(h, "shape", list)
    if len(msg.buffers) != 1:
        raise MalformedMessage(f"a frame carries exactly 1 buffer; got {len(msg.buffers)}")
    payload = msg.buffers[0]
    if len(payload) > max_payload_bytes:
        raise PayloadTooLarge(f"frame payload is {len(payload)} bytes; the limit is {max_payload_bytes} "
                              "(raise max_payload_bytes in the daemon settings if this frame size is intended)")
    if dtype not in FRAME_DTYPES:
        raise DtypeError(f"frame dtype {dtype!r} is not accepted; accepted: {', '.join(FRAME_DTYPES)}")
    if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ShapeMismatch(f"frame shape must be [bands, height, width] of positive ints; got {shape!r}")
    itemsize = np.dtype(dtype).itemsize
    expected = math.prod(shape) * itemsize
    if expected > max_payload_bytes:
        raise PayloadTooLarge(f"frame shape {shape} of {dtype} needs {expected} bytes; the limit is {max_payload_bytes}")
    if expected != len(payload):
        raise ShapeMismatch(f"shape {shape} of {dtype} needs {expected} bytes but the payload has {len(payload)}")
    data = np.frombuffer(payload, dtype=dtype).reshape(shape)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise NonFiniteValues(f"frame has {bad} NaN/Inf values")
    return Frame(stream=stream, frame_id=frame_id, data=data, header=h)


def make_frame(data: np.ndarray, *, stream: str, frame_id: int, **fields: Any) -> List[Any]:
    """Encode a sensor frame (bands, height, width) as a multipart message."""
    data = np.ascontiguousarray(data)
    hdr = {"stream": stream, "frame_id": int(frame_id), "dtype": str(data.dtype), "shape": list(data.shape)}
    hdr.update(fields)
    return encode("frame", hdr, [data])


def make_reply(request: Mapping[str, Any] | None, ok: bool, code: str | None = None, message: str = "",
               **fields: Any) -> List[Any]:
    """Encode a reply; every reply says ok or error with a code and a message."""
    hdr = {"ok": bool(ok), "code": code or ("OK" if ok else "E_INTERNAL"), "message": message,
           "in_reply_to": (request or {}).get("id")}
    hdr.update(fields)
    return encode("reply", hdr)


def make_command(cmd: str, **args: Any) -> List[Any]:
    """Encode a control command (``status``, ``shutdown``, ...)."""
    return encode("command", {"cmd": cmd, "args": args})


def make_ack(ids: Sequence[str], **fields: Any) -> List[Any]:
    """Encode an ``ack`` (ground -> daemon ``ack_endpoint``): the result ids received, duplicates included."""
    return encode("ack", {"ids": [str(i) for i in ids], **fields})


def _field(header: Mapping[str, Any], name: str, kind: type) -> Any:
    value = header.get(name)
    if value is None:
        raise InvalidField(f"frame header is missing required field {name!r}")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidField(f"frame header field {name!r} must be {kind.__name__}; got {type(value).__name__}")
    return value


def _view(part: Any) -> memoryview:
    buf = getattr(part, "buffer", None)  # a zmq.Frame exposes its bytes without a copy
    view = memoryview(buf if buf is not None else part)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")
