"""Fused sensor preprocessing: numpy reference and ONNX-function form.

Unpacks digital numbers (plain uint16, or 12-bit packed two pixels in three bytes), subtracts the
dark current, applies the per-band gain and normalisation, and writes one window (tile) of the
band-sequential ``(B, H, W)`` frame as a CHW float32 or float16 array. The window may hang over
any edge of the frame (tiles with overlap at the borders); pixels outside the frame give exactly
``offset[b]``. Per band, in float32, left to right, every step rounded::

    y = ((dn - dark[b]) * gain[b]) * scale[b] + offset[b]

This is the contract of ``satedge_preprocess_u16`` / ``satedge_preprocess_u12packed`` in
``cuda/include/satedge_kernels.h`` (layout of the 12-bit packing there and in ``cuda/README.md``);
the numpy reference here, the ONNX function run by ONNX Runtime and the CUDA kernel give
bit-identical float32 results, and float16 is that result rounded to nearest even.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from engines.errors import UserError
from engines.ops.graph import Body, function_model, make_function, run_model

Window = Tuple[int, int, int, int]  # (x0, y0, tile_h, tile_w)
DTYPES = ("float32", "float16")


def packed_size(n_pixels: int) -> int:
    """Bytes of a 12-bit packed buffer of ``n_pixels`` pixels: ``ceil(1.5 n)``."""
    return (3 * int(n_pixels) + 1) // 2


def pack_u12(dn: np.ndarray) -> np.ndarray:
    """Pack DN (any shape, values 0..4095, C order) two pixels in three bytes, little-endian."""
    flat = np.asarray(dn).ravel()
    if flat.size and (flat.min() < 0 or flat.max() > 4095):
        raise UserError("12-bit packing needs DN in 0..4095, got %s..%s" % (flat.min(), flat.max()))
    flat = flat.astype(np.uint32)
    if flat.size % 2:
        flat = np.append(flat, np.uint32(0))
    word = flat[0::2] | (flat[1::2] << 12)
    out = np.stack([word & 0xFF, (word >> 8) & 0xFF, word >> 16], axis=1).astype(np.uint8).ravel()
    return out[:packed_size(np.asarray(dn).size)]


def unpack_u12(packed: np.ndarray, n_pixels: int) -> np.ndarray:
    """The first ``n_pixels`` DN (uint16, flat) of a 12-bit packed buffer."""
    packed = np.asarray(packed, dtype=np.uint8).ravel()
    need = packed_size(n_pixels)
    if packed.size < need:
        raise UserError("a 12-bit packed frame of %d pixels needs %d bytes, got %d" % (n_pixels, need, packed.size))
    b = np.zeros(3 * ((n_pixels + 1) // 2), np.uint32)
    b[:need] = packed[:need]
    word = b[0::3] | (b[1::3] << 8) | (b[2::3] << 16)
    out = np.empty(2 * word.size, np.uint16)
    out[0::2], out[1::2] = word & 0xFFF, word >> 12
    return out[:n_pixels]


def _calib(values, bands: int, default: float, name: str) -> np.ndarray:
    if values is None:
        return np.full(bands, default, np.float32)
    arr = np.asarray(values, dtype=np.float32).ravel()
    if arr.size != bands:
        raise UserError("%s has %d values; the frame has %d bands (one per band)" % (name, arr.size, bands))
    return arr


def _window(window: Optional[Window], height: int, width: int) -> Window:
    x0, y0, th, tw = (0, 0, height, width) if window is None else (int(v) for v in window)
    if th < 0 or tw < 0:
        raise UserError("window size must be >= 0, got tile_h=%d tile_w=%d" % (th, tw))
    return x0, y0, th, tw


def normalize_window(dn: np.ndarray, window: Optional[Window] = None, dark=None, gain=None, scale=None,
                     offset=None, dtype: str = "float32") -> np.ndarray:
    """Calibrate and normalise one window of a ``(B, H, W)`` DN frame (the reference of the op).

    Parameters
    ----------
    dn : numpy.ndarray
        ``(B, H, W)`` digital numbers (any integer dtype).
    window : (x0, y0, tile_h, tile_w), optional
        Window origin and size in frame pixels; the whole frame when omitted.
    dark, gain, scale, offset : array_like of B floats, optional
        Per-band calibration (defaults 0, 1, 1, 0).
    dtype : str
        ``float32`` or ``float16``.

    Returns
    -------
    numpy.ndarray
        ``(B, tile_h, tile_w)`` of ``dtype``.
    """
    dn = np.asarray(dn)
    if dn.ndim != 3 or min(dn.shape) < 1:
        raise UserError("expected a (bands, height, width) frame with every side >= 1, got shape %s" % (dn.shape,))
    if dtype not in DTYPES:
        raise UserError("output dtype %r is not one of %s" % (dtype, ", ".join(DTYPES)))
    bands, height, width = dn.shape
    x0, y0, th, tw = _window(window, height, width)
    d, g, s, o = (_calib(v, bands, dflt, n).reshape(-1, 1, 1) for v, dflt, n in
                  ((dark, 0.0, "dark"), (gain, 1.0, "gain"), (scale, 1.0, "scale"), (offset, 0.0, "offset")))
    out = np.zeros((bands, th, tw), np.float32)
    ys, ye = max(y0, 0), min(y0 + th, height)
    xs, xe = max(x0, 0), min(x0 + tw, width)
    if ys < ye and xs < xe:
        out[:, ys - y0:ye - y0, xs - x0:xe - x0] = ((dn[:, ys:ye, xs:xe].astype(np.float32) - d) * g) * s
    with np.errstate(over="ignore"):  # float16: 65520 and more become inf, as specified
        return (out + o).astype(dtype)


def preprocess_u16(frame: np.ndarray, window: Optional[Window] = None, dark=None, gain=None, scale=None,
                   offset=None, dtype: str = "float32") -> np.ndarray:
    """Reference of ``satedge_preprocess_u16``: ``frame`` is ``(B, H, W)`` uint16 DN."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint16:
        raise UserError("preprocess_u16 wants uint16 DN, got %s" % frame.dtype)
    return normalize_window(frame, window, dark, gain, scale, offset, dtype)


def preprocess_u12(packed: np.ndarray, shape: Sequence[int], window: Optional[Window] = None, dark=None,
                   gain=None, scale=None, offset=None, dtype: str = "float32") -> np.ndarray:
    """Reference of ``satedge_preprocess_u12packed``: ``packed`` holds a ``shape = (B, H, W)`` frame."""
    bands, height, width = (int(v) for v in shape)
    dn = unpack_u12(packed, bands * height * width).reshape(bands, height, width)
    return normalize_window(dn, window, dark, gain, scale, offset, dtype)


def build_function(packing: str, shape: Sequence[int], window: Optional[Window] = None, dtype: str = "float32"):
    """ONNX function ``satedge.ops::Preprocess{U16,U12}`` for one frame shape and window.

    Inputs ``src`` (``(B, H, W)`` uint16, or the flat uint8 packed buffer), ``dark``, ``gain``,
    ``scale``, ``offset`` (``[B]`` float32 each); output ``y`` ``(B, tile_h, tile_w)``.
    """
    from onnx import TensorProto
    if packing not in ("u16", "u12") or dtype not in DTYPES:
        raise UserError("packing must be u16 or u12 and dtype one of %s; got %r, %r" % (DTYPES, packing, dtype))
    bands, height, width = (int(v) for v in shape)
    x0, y0, th, tw = _window(window, height, width)
    if th < 1 or tw < 1:
        raise UserError("the ONNX form needs a non-empty window, got %dx%d" % (th, tw))
    b = Body("pp")
    if packing == "u16":
        dn = b.op("Cast", ["src"], "dn", to=TensorProto.FLOAT)
    else:
        n = bands * height * width
        x = b.op("Cast", ["src"], "bytes", to=TensorProto.INT32)
        x = b.op("Pad", [x, b.ints([0, 3 * ((n + 1) // 2) - packed_size(n)])], "padded")
        x = b.op("Reshape", [x, b.ints([-1, 3])], "triples")
        b0, b1, b2 = (b.slice(x, [i], [i + 1], [1], "b%d" % i) for i in range(3))
        c16, c256 = b.const(np.int32(16)), b.const(np.int32(256))
        p0 = b.op("Add", [b0, b.op("Mul", [b.op("Mod", [b1, c16]), c256])], "p0")
        p1 = b.op("Add", [b.op("Div", [b1, c16]), b.op("Mul", [b2, c16])], "p1")
        pix = b.op("Reshape", [b.op("Concat", [p0, p1], axis=1), b.ints([-1])], "pixels")
        pix = b.op("Reshape", [b.slice(pix, [0], [n], [0]), b.ints([bands, height, width])], "frame")
        dn = b.op("Cast", [pix], "dn", to=TensorProto.FLOAT)
    per_band = b.ints([bands, 1, 1])
    d, g, s, o = (b.op("Reshape", [name, per_band], name) for name in ("dark", "gain", "scale", "offset"))
    t = b.op("Mul", [b.op("Mul", [b.op("Sub", [dn, d]), g]), s], "calibrated")
    ys, ye, xs, xe = max(y0, 0), min(y0 + th, height), max(x0, 0), min(x0 + tw, width)
    if ys < ye and xs < xe:
        t = b.slice(t, [ys, xs], [ye, xe], [1, 2], "inside")
        pads = [0, ys - y0, xs - x0, 0, y0 + th - ye, x0 + tw - xe]
        t = b.op("Pad", [t, b.ints(pads)], "window") if any(pads) else t
    else:  # the window misses the frame: every pixel is offset[b]
        t = b.const(np.zeros((bands, th, tw), np.float32), hint="window")
    if dtype == "float32":
        b.op("Add", [t, o], out="y")
    else:
        b.op("Cast", [b.op("Add", [t, o], "y32")], out="y", to=TensorProto.FLOAT16)
    fields = dict(bands=bands, height=height, width=width, x0=x0, y0=y0, tile_h=th, tile_w=tw,
                  dtype=DTYPES.index(dtype))
    return make_function("Preprocess" + packing.upper(), ["src", "dark", "gain", "scale", "offset"], ["y"], b,
                         doc="satedge fused sensor preprocessing, frame %s, window %s" % ((bands, height, width),
                                                                                           (x0, y0, th, tw)),
                         fields=fields)


def build_model(packing: str, shape: Sequence[int], window: Optional[Window] = None, dtype: str = "float32",
                inline: bool = False):
    """A model calling :func:`build_function` (inputs ``src, dark, gain, scale, offset``; output ``y``)."""
    bands, height, width = (int(v) for v in shape)
    x0, y0, th, tw = _window(window, height, width)
    src = ("src", "uint16", [bands, height, width]) if packing == "u16" else \
        ("src", "uint8", [packed_size(bands * height * width)])
    fn = build_function(packing, shape, window, dtype)
    calib = [(n, "float32", [bands]) for n in ("dark", "gain", "scale", "offset")]
    return function_model(fn, [src] + calib, [("y", dtype, [bands, th, tw])], inline=inline)


def run_onnx(packing: str, src: np.ndarray, shape: Sequence[int], window: Optional[Window] = None, dark=None,
             gain=None, scale=None, offset=None, dtype: str = "float32", inline: bool = False) -> np.ndarray:
    """Build the model and run it with ONNX Runtime (CPU); same arguments as the references."""
    bands = int(shape[0])
    feeds: Dict[str, np.ndarray] = {"src": np.asarray(src)}
    for name, value, dflt in (("dark", dark, 0.0), ("gain", gain, 1.0), ("scale", scale, 1.0), ("offset", offset, 0.0)):
        feeds[name] = _calib(value, bands, dflt, name)
    return run_model(build_model(packing, shape, window, dtype, inline), feeds)["y"]
