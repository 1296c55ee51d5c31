"""Fused sensor preprocessing: the ONNX function (ONNX Runtime, CPU) against the numpy reference.

Both are specified bit for bit (``cuda/include/satedge_kernels.h``), so outputs are compared as
bytes, on random non-zero DN and calibration, for frames down to 1x1, odd widths and windows
hanging over every edge or missing the frame entirely.
"""
import numpy as np
import pytest

from engines.errors import UserError
from engines.ops import preprocess as pp

pytest.importorskip("onnxruntime")


def _frame(rng, shape):
    return rng.integers(1, 4096, shape).astype(np.uint16)


def _calib(rng, bands):
    return dict(dark=rng.uniform(5, 120, bands), gain=rng.uniform(0.5, 2.0, bands),
                scale=rng.uniform(1e-4, 1e-2, bands), offset=rng.uniform(-2, 2, bands))


def _same_bytes(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_12_bit_packing_matches_the_documented_example_and_round_trips():
    assert pp.pack_u12(np.array([0xABC, 0x123])).tolist() == [0xBC, 0x3A, 0x12]
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 10, 101):
        dn = rng.integers(1, 4096, n)
        packed = pp.pack_u12(dn)
        assert packed.size == pp.packed_size(n) == -(-3 * n // 2)
        assert np.array_equal(pp.unpack_u12(packed, n), dn)


def test_odd_pixel_count_ignores_the_padding_nibble():
    packed = pp.pack_u12(np.array([0x111, 0x222, 0x333]))
    assert packed.size == 5
    assert pp.unpack_u12(np.append(packed[:-1], packed[-1] | 0xF0), 3).tolist() == [0x111, 0x222, 0x333]


WINDOWS = [None, (0, 0, 1, 1), (-3, -2, 6, 5), (2, 1, 4, 3), (4, 3, 9, 8), (50, 60, 2, 3), (-9, 0, 4, 2)]


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (2, 8, 16), (4, 1, 9), (1, 9, 1)])
@pytest.mark.parametrize("packing", ["u16", "u12"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_onnx_function_is_bit_identical_to_the_reference(shape, packing, dtype):
    rng = np.random.default_rng([shape[1], shape[2], len(packing), len(dtype)])
    dn = _frame(rng, shape)
    src = dn if packing == "u16" else pp.pack_u12(dn)
    cal = _calib(rng, shape[0])
    for window in WINDOWS:
        ref = (pp.preprocess_u16(dn, window, dtype=dtype, **cal) if packing == "u16"
               else pp.preprocess_u12(src, shape, window, dtype=dtype, **cal))
        got = pp.run_onnx(packing, src, shape, window, dtype=dtype, **cal)
        assert _same_bytes(got, ref), (window, got, ref)


def test_inlined_graph_gives_the_same_bytes_as_the_function_call():
    rng = np.random.default_rng(3)
    dn = _frame(rng, (3, 6, 11))
    cal = _calib(rng, 3)
    a = pp.run_onnx("u12", pp.pack_u12(dn), dn.shape, (-2, 1, 8, 8), dtype="float16", **cal)
    b = pp.run_onnx("u12", pp.pack_u12(dn), dn.shape, (-2, 1, 8, 8), dtype="float16", inline=True, **cal)
    assert _same_bytes(a, b)


def test_formula_order_and_border_value():
    dn = np.array([[[100, 200], [300, 4095]]], np.uint16)
    cal = dict(dark=[7.5], gain=[1.3], scale=[0.01], offset=[-0.25])
    out = pp.preprocess_u16(dn, (-1, 0, 2, 3), **cal)
    f32 = np.float32
    expect = ((f32(dn[0, 0, 0]) - f32(7.5)) * f32(1.3)) * f32(0.01) + f32(-0.25)
    assert out[0, 0, 1] == expect
    assert out[0, 0, 0] == out[0, 1, 0] == f32(-0.25)  # outside the frame: exactly offset


def test_defaults_are_dark_0_gain_1_scale_1_offset_0():
    dn = _frame(np.random.default_rng(4), (2, 3, 5))
    assert np.array_equal(pp.preprocess_u16(dn), dn.astype(np.float32))
    assert np.array_equal(pp.run_onnx("u16", dn, dn.shape), dn.astype(np.float32))


def test_float16_rounds_to_nearest_even_and_overflows_to_inf():
    dn = np.array([[[1, 2049, 4095]]], np.uint16)  # 2049 lies halfway between two halves
    out = pp.preprocess_u16(dn, gain=[16.0], dtype="float16")
    onnx_out = pp.run_onnx("u16", dn, dn.shape, gain=[16.0], dtype="float16")
    assert np.isinf(out[0, 0, 2]) and _same_bytes(out, onnx_out)
    half = pp.preprocess_u16(np.array([[[2049]]], np.uint16), dtype="float16")
    assert half[0, 0, 0] == np.float16(2048)  # ties to even


def test_u16_and_u12_paths_agree():
    rng = np.random.default_rng(5)
    dn = _frame(rng, (2, 7, 9))
    cal = _calib(rng, 2)
    assert _same_bytes(pp.preprocess_u16(dn, (1, -1, 5, 9), **cal),
                       pp.preprocess_u12(pp.pack_u12(dn), dn.shape, (1, -1, 5, 9), **cal))


def test_bad_inputs_say_what_is_wrong():
    dn = np.ones((2, 3, 4), np.uint16)
    with pytest.raises(UserError, match="one per band"):
        pp.preprocess_u16(dn, dark=[1.0])
    with pytest.raises(UserError, match="uint16"):
        pp.preprocess_u16(dn.astype(np.int32))
    with pytest.raises(UserError, match="needs 36 bytes"):
        pp.preprocess_u12(np.zeros(10, np.uint8), (2, 3, 4))
    with pytest.raises(UserError, match="0..4095"):
        pp.pack_u12(np.array([4096]))
    with pytest.raises(UserError, match="non-empty window"):
        pp.build_function("u16", (2, 3, 4), (0, 0, 0, 4))
    assert pp.preprocess_u16(dn, (0, 0, 0, 4)).shape == (2, 0, 4)
