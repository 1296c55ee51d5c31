"""Byte codec of compressed FL updates: the bytes that cross the space link.

``len(encode(update))`` is the uplink cost of an update; :func:`encoded_size` computes the same
number without building the bytes, so an uploader can size an update to the remaining contact
window. The format (version 1, little-endian, ``varint`` = unsigned LEB128)::

    update := "SF" u8:version varint:len(method) method varint:step varint:nlayers layer* u32:crc32
    layer  := varint:len(name) name u8:ndim varint:dim*ndim u8:flags
              [f32:scale  if format is i8 or packed] [u8:bits  if format is packed]
              [varint:nnz varint:gap*nnz  if sparse] values
    flags  := bit 0 sparse, bits 1-2 value format (0 f32, 1 f16, 2 i8, 3 packed)
    gap    := first index, then index[i] - index[i-1] - 1 (delta encoding of sorted indices)
    values := 4n (f32) | 2n (f16) | n (i8) | ceil(n·bits/8) (packed codes + 2^(bits-1), LSB first)

``n`` is ``nnz`` for a sparse layer and ``prod(dims)`` for a dense one. The CRC-32 covers every
byte before it, so a bit flipped in memory or on the link is caught at the ground.
"""
from __future__ import annotations

import struct
import zlib
from typing import List, Tuple

import numpy as np

from engines.errors import UserError
from onboard.fl.update import VALUE_FORMATS, CompressedUpdate, LayerUpdate

MAGIC = b"SF"
VERSION = 1
MAX_ELEMENTS = 2 ** 40          # a sanity bound on a decoded layer's element count
_FORMAT_CODE = {name: i for i, name in enumerate(VALUE_FORMATS)}


class CodecError(UserError):
    """Bytes that are not a valid encoded update (truncated, corrupted, wrong version)."""


def varint_sizes(values: np.ndarray) -> np.ndarray:
    """Number of LEB128 bytes of each non-negative integer."""
    v = np.asarray(values, dtype=np.uint64)
    sizes = np.ones(v.shape, dtype=np.int64)
    rest = v >> np.uint64(7)
    while rest.any():
        sizes += rest > 0
        rest >>= np.uint64(7)
    return sizes


def varint_encode(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of every value, vectorised (7 bits a byte, high bit = more follows)."""
    v = np.asarray(values, dtype=np.uint64).ravel()
    if v.size == 0:
        return b""
    sizes = varint_sizes(v)
    starts = np.cumsum(sizes) - sizes
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    for j in range(int(sizes.max())):
        live = sizes > j
        chunk = ((v[live] >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8)
        more = (sizes[live] > j + 1).astype(np.uint8) << 7
        out[starts[live] + j] = chunk | more
    return out.tobytes()


def varint_decode(buf: bytes, offset: int, count: int) -> Tuple[np.ndarray, int]:
    """Read ``count`` LEB128 integers from ``buf`` at ``offset``; returns (uint64 array, new offset)."""
    if count == 0:
        return np.zeros(0, dtype=np.uint64), offset
    if offset >= len(buf):
        raise CodecError(f"truncated update: expected {count} varints at byte {offset}, found the end")
    data = np.frombuffer(buf, dtype=np.uint8, offset=offset)
    ends = np.flatnonzero(data < 0x80)[:count]
    if len(ends) < count:
        raise CodecError(f"truncated update: expected {count} varints at byte {offset}")
    used = int(ends[-1]) + 1
    body = data[:used]
    starts = np.concatenate(([0], ends[:-1] + 1))
    if int((ends - starts).max()) > 9:
        raise CodecError(f"varint longer than 64 bits at byte {offset}")
    pos = np.arange(used) - np.repeat(starts, ends - starts + 1)
    parts = (body & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
    return np.add.reduceat(parts, starts), offset + used


def _pack(codes: np.ndarray, bits: int) -> bytes:
    offset = codes.astype(np.int16) + (1 << (bits - 1))
    planes = ((offset[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def _unpack(raw: bytes, n: int, bits: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[: n * bits]
    offset = (planes.reshape(n, bits).astype(np.int16) << np.arange(bits)).sum(axis=1)
    return (offset - (1 << (bits - 1))).astype(np.int8)


def _value_bytes(layer_format: str, n: int, bits: int) -> int:
    return {"f32": 4 * n, "f16": 2 * n, "i8": n}.get(layer_format, (n * bits + 7) // 8)


def _gaps(indices: np.ndarray) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx[0] < 0 or np.any(np.diff(idx) <= 0)):
        raise UserError("sparse indices must be sorted, unique and non-negative; sort them with np.unique")
    return np.concatenate((idx[:1], np.diff(idx) - 1)).astype(np.uint64)


def _check(layer: LayerUpdate) -> None:
    if layer.value_format not in _FORMAT_CODE:
        raise UserError(f"layer {layer.name!r}: unknown value format {layer.value_format!r}")
    if layer.value_format == "packed" and not 2 <= layer.bits <= 7:
        raise UserError(f"layer {layer.name!r}: packed codes need 2..7 bits, got {layer.bits}; use i8 for 8")
    n = len(layer.indices) if layer.sparse else layer.size
    if len(layer.values) != n:
        raise UserError(f"layer {layer.name!r}: {len(layer.values)} values for {n} elements")


def encoded_size(update: CompressedUpdate) -> int:
    """Exactly ``len(encode(update))``, computed without building the bytes."""
    size = 2 + 1 + int(varint_sizes([len(update.method.encode())])[0]) + len(update.method.encode())
    size += int(varint_sizes([update.step, len(update.layers)]).sum()) + 4
    for layer in update.layers:
        _check(layer)
        name = layer.name.encode()
        dims = np.asarray(layer.shape, dtype=np.uint64)
        size += int(varint_sizes([len(name)])[0]) + len(name) + 1 + int(varint_sizes(dims).sum())
        size += 1 + (4 if layer.value_format in ("i8", "packed") else 0) + (layer.value_format == "packed")
        n = layer.size
        if layer.sparse:
            n = len(layer.indices)
            size += int(varint_sizes([n])[0]) + int(varint_sizes(_gaps(layer.indices)).sum())
        size += _value_bytes(layer.value_format, n, layer.bits)
    return size


def encode(update: CompressedUpdate) -> bytes:
    """Serialize an update (see the module docstring for the format)."""
    method = update.method.encode()
    parts: List[bytes] = [MAGIC, bytes([VERSION]), varint_encode([len(method)]), method,
                          varint_encode([update.step, len(update.layers)])]
    for layer in update.layers:
        _check(layer)
        name = layer.name.encode()
        if len(layer.shape) > 255:
            raise UserError(f"layer {layer.name!r} has {len(layer.shape)} dimensions; at most 255 are encodable")
        parts += [varint_encode([len(name)]), name, bytes([len(layer.shape)]), varint_encode(list(layer.shape)),
                  bytes([int(layer.sparse) | (_FORMAT_CODE[layer.value_format] << 1)])]
        if layer.value_format in ("i8", "packed"):
            parts.append(struct.pack("<f", layer.scale))
        if layer.value_format == "packed":
            parts.append(bytes([layer.bits]))
        if layer.sparse:
            parts += [varint_encode([len(layer.indices)]), varint_encode(_gaps(layer.indices))]
        values = np.asarray(layer.values)
        if layer.value_format == "packed":
            parts.append(_pack(values, layer.bits))
        else:
            dtype = {"f32": "<f4", "f16": "<f2", "i8": "i1"}[layer.value_format]
            parts.append(values.astype(dtype).tobytes())
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def decode(data: bytes) -> CompressedUpdate:
    """Parse bytes made by :func:`encode`.

    Raises
    ------
    CodecError
        Wrong magic or version, CRC mismatch, truncation, or indices outside their layer.
    """
    data = bytes(data)
    if len(data) < 9 or data[:2] != MAGIC:
        raise CodecError("not an FL update: the magic bytes 'SF' are missing")
    if data[2] != VERSION:
        raise CodecError(f"FL update codec version {data[2]} is not supported (this side reads {VERSION})")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) != crc:
        raise CodecError("FL update failed its CRC-32 check (corrupted on the link or in memory); resend it")

    def take(n: int, at: int) -> Tuple[bytes, int]:
        if at + n > len(body):
            raise CodecError(f"truncated FL update: {n} bytes wanted at byte {at}, {len(body) - at} left")
        return body[at: at + n], at + n

    def text(raw: bytes, what: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CodecError(f"FL update: the {what} is not UTF-8") from None

    (mlen,), at = varint_decode(body, 3, 1)
    method, at = take(int(mlen), at)
    (step, nlayers), at = varint_decode(body, at, 2)
    layers = []
    for _ in range(int(nlayers)):
        (nlen,), at = varint_decode(body, at, 1)
        name, at = take(int(nlen), at)
        ndim, at = take(1, at)
        dims, at = varint_decode(body, at, ndim[0])
        if dims.size and np.sum(np.log2(np.maximum(dims.astype(np.float64), 1.0))) > np.log2(MAX_ELEMENTS):
            raise CodecError(f"layer {text(name, 'layer name')!r}: shape {dims.tolist()} is larger than any model layer")
        flags, at = take(1, at)
        if flags[0] >> 3:
            raise CodecError(f"layer {name!r}: unknown flag bits {flags[0]:#04x} (written by a newer codec?)")
        fmt = VALUE_FORMATS[(flags[0] >> 1) & 3]
        layer = LayerUpdate(text(name, "layer name"), tuple(int(d) for d in dims), np.zeros(0), fmt, bits=32)
        if fmt in ("i8", "packed"):
            raw, at = take(4, at)
            layer.scale, layer.bits = struct.unpack("<f", raw)[0], 8
        if fmt == "packed":
            raw, at = take(1, at)
            layer.bits = raw[0]
        n = layer.size
        if flags[0] & 1:
            (nnz,), at = varint_decode(body, at, 1)
            gaps, at = varint_decode(body, at, int(nnz))
            layer.indices = np.cumsum(gaps.astype(np.int64) + 1) - 1
            if len(layer.indices) and layer.indices[-1] >= n:
                raise CodecError(f"layer {layer.name!r}: index {layer.indices[-1]} outside its {n} elements")
            n = int(nnz)
        raw, at = take(_value_bytes(fmt, n, layer.bits), at)
        if fmt == "packed":
            layer.values = _unpack(raw, n, layer.bits)
        else:
            layer.values = np.frombuffer(raw, dtype={"f32": "<f4", "f16": "<f2", "i8": "i1"}[fmt]).copy()
        if fmt == "f16":
            layer.bits = 16
        layers.append(layer)
    if at != len(body):
        raise CodecError(f"FL update has {len(body) - at} unexpected trailing bytes")
    return CompressedUpdate(text(method, "method name"), int(step), layers)
