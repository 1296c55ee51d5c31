"""FL update compressors and the byte codec: round trips, exact bytes, selection rules, schedules,
unbiasedness, error feedback, determinism, and the import rule (no torch on module import)."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.errors import UserError
from onboard.fl import codec
from onboard.fl.compressors import COMPRESSORS, make_compressor
from onboard.fl.nsi import neighbourhood_stats, nsi_score
from onboard.fl.update import CompressedUpdate, LayerUpdate


def _grads(seed=0):
    rng = np.random.default_rng(seed)
    return {"conv.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
            "conv.bias": rng.normal(size=8).astype(np.float32),
            "fc.weight": rng.normal(size=(10, 200)).astype(np.float32),
            "temperature": np.float32(rng.normal())}


SHAPES = {k: np.shape(v) for k, v in _grads().items()}
CONFIGS = [("dense", {}), ("dense", {"precision": "fp16"}), ("topk", {"ratio": 0.05}),
           ("topk", {"ratio": 0.05, "value_format": "i8"}), ("randomk", {"ratio": 0.05}),
           ("dgc", {"ratio": 0.01}), ("qsgd", {"levels": 127}), ("qsgd", {"levels": 4}), ("qsgd", {"levels": 1}),
           ("int8", {}), ("rsdgc", {"ratio": 0.05}), ("rsdgc", {"ratio": 0.05, "variant": "mean_std", "p": 5})]


def test_importing_onboard_fl_loads_no_torch():
    code = ("import sys\nimport onboard.fl, onboard.fl.codec, onboard.fl.nsi, onboard.fl.learner, onboard.fl.update, "
            "onboard.fl.compressors\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == "False"


def test_registry_has_every_compressor_and_explains_unknown_names():
    assert set(COMPRESSORS) == {"dense", "topk", "randomk", "dgc", "qsgd", "int8", "rsdgc"}
    with pytest.raises(UserError, match="available: dense, dgc"):
        make_compressor("topK")


@pytest.mark.parametrize("name,options", CONFIGS, ids=[f"{n}-{o}" for n, o in CONFIGS])
def test_every_compressor_round_trips_through_the_codec_with_exact_bytes(name, options):
    comp = make_compressor(name, **options)
    for step in range(3):
        update = comp.compress(_grads(step), step)
        payload = codec.encode(update)
        assert len(payload) == codec.encoded_size(update)
        back = codec.decode(payload)
        assert (back.method, back.step) == (name, step)
        sent, received = comp.decompress(update, SHAPES), comp.decompress(back, SHAPES)
        for key in SHAPES:
            assert received[key].shape == SHAPES[key] and received[key].dtype == np.float32
            np.testing.assert_array_equal(sent[key], received[key])


def test_byte_format_of_a_small_sparse_layer_is_as_documented():
    layer = LayerUpdate("w", (4, 100), np.array([1.0, -2.0, 0.5], np.float16), "f16", np.array([0, 5, 300]), bits=16)
    update = CompressedUpdate("topk", 7, [layer])
    # "SF" version | len "topk" | step | nlayers  = 2+1+1+4+1+1 = 10
    # layer: len "w" + "w" | ndim | dims 4, 100 | flags | nnz | gaps 0, 4, 294 (2 bytes) | 3 × f16 = 2+1+2+1+1+4+6 = 17
    # CRC-32 = 4
    assert len(codec.encode(update)) == codec.encoded_size(update) == 10 + 17 + 4
    back = codec.decode(codec.encode(update)).layers[0]
    assert back.indices.tolist() == [0, 5, 300] and back.dense()[3, 0] == np.float32(0.5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=40))
def test_varints_round_trip_and_have_leb128_sizes(values):
    arr = np.array(values, dtype=np.uint64)
    raw = codec.varint_encode(arr)
    decoded, end = codec.varint_decode(raw + b"\x07", 0, len(values))
    assert decoded.tolist() == values and end == len(raw)
    assert len(raw) == sum(max(1, -(-v.bit_length() // 7)) for v in values)


@pytest.mark.parametrize("levels", [1, 3, 7, 15, 63])
def test_packed_codes_round_trip(levels):
    comp = make_compressor("qsgd", levels=levels, seed=3)
    update = comp.compress({"w": np.linspace(-1, 1, 97, dtype=np.float32)}, 0)
    layer = update.layers[0]
    assert layer.value_format == "packed" and np.abs(layer.values).max() <= levels
    back = codec.decode(codec.encode(update)).layers[0]
    np.testing.assert_array_equal(back.values, layer.values)
    assert len(codec.encode(update)) - codec.encoded_size(CompressedUpdate("qsgd", 0, [])) < 97 * layer.bits / 8 + 20


def test_corrupted_truncated_or_foreign_bytes_are_refused():
    payload = bytearray(codec.encode(make_compressor("topk", ratio=0.1).compress(_grads(), 0)))
    payload[20] ^= 0x10
    with pytest.raises(codec.CodecError, match="CRC"):
        codec.decode(bytes(payload))
    with pytest.raises(codec.CodecError):
        codec.decode(codec.encode(make_compressor("topk").compress(_grads(), 0))[:-9])
    with pytest.raises(codec.CodecError, match="magic"):
        codec.decode(b"PK\x03\x04" + bytes(20))


def test_mangled_bytes_with_a_valid_crc_raise_only_codec_errors():
    import struct
    import zlib
    rng = np.random.default_rng(7)
    for name, options in (("topk", {}), ("qsgd", {"levels": 3}), ("dense", {})):
        body = codec.encode(make_compressor(name, **options).compress(_grads(), 0))[:-4]
        for _ in range(300):
            mangled = bytearray(body)
            for _ in range(rng.integers(1, 4)):
                mangled[rng.integers(0, len(mangled))] = rng.integers(0, 256)
            try:
                codec.decode(bytes(mangled) + struct.pack("<I", zlib.crc32(bytes(mangled))))
            except codec.CodecError:
                pass


def test_topk_keeps_exactly_the_k_largest_magnitudes():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(50, 40)).astype(np.float32)
    layer = make_compressor("topk", ratio=0.03, value_format="f32").compress({"w": g}, 0).layers[0]
    k = int(np.ceil(0.03 * g.size))
    assert len(layer.indices) == k
    assert set(layer.indices.tolist()) == set(np.argsort(-np.abs(g).ravel())[:k].tolist())
    np.testing.assert_array_equal(layer.values, g.ravel()[layer.indices])


def test_dgc_warmup_schedule_masking_and_clipping():
    comp = make_compressor("dgc", ratio=0.001, warmup_steps=4, warmup_start=0.25, momentum=0.9, clip_norm=1.0,
                           num_clients=4, value_format="f32")
    expected = [0.25, 0.25 * (0.004 ** 0.25), 0.25 * (0.004 ** 0.5), 0.25 * (0.004 ** 0.75), 0.001, 0.001]
    assert [comp.density(t) for t in range(6)] == pytest.approx(expected)
    assert comp.density(0) == 0.25 and comp.density(4) == 0.001      # 75 % sparsity, then 99.9 %
    g = {"w": np.random.default_rng(2).normal(size=(100, 100)).astype(np.float32)}
    for step in range(6):
        update = comp.compress(g, step)
        assert len(update.layers[0].indices) == int(np.ceil(expected[step] * 10_000))
        assert update.meta["clip_factor"] == pytest.approx(0.5 / np.linalg.norm(g["w"]), rel=1e-5)  # c / sqrt(N)
        sent = update.layers[0].indices
        assert np.all(comp._velocity["w"][sent] == 0)                   # momentum-factor masking
        assert np.all(comp.residuals()["w"].ravel()[sent] == 0)


def test_qsgd_is_unbiased_over_seeds_and_8bit_is_close():
    x = np.random.default_rng(3).normal(size=64).astype(np.float32)
    for levels, norm in ((4, "l2"), (127, "max")):
        layers = [make_compressor("qsgd", levels=levels, norm=norm, seed=s).compress({"x": x}, 0).layers[0]
                  for s in range(2000)]
        samples = np.stack([layer.dense() for layer in layers]).astype(np.float64)
        step = layers[0].scale
        frac = np.abs(x) / step - np.floor(np.abs(x) / step)          # Bernoulli probability of rounding up
        stderr = step * np.sqrt(frac * (1 - frac) / len(samples))      # standard error of the mean, in theory
        assert np.all(np.abs(samples.mean(axis=0) - x) < 5 * stderr + 1e-5)
        assert len({tuple(layer.values) for layer in layers}) > 1000     # the seeds do change the rounding
    one = make_compressor("int8", seed=0).compress({"x": x}, 0).layers[0]
    assert np.abs(one.dense() - x).max() <= one.scale + 1e-6


def test_compression_is_deterministic_by_seed():
    for name in ("randomk", "qsgd", "rsdgc", "topk", "dgc"):
        a = [codec.encode(make_compressor(name, seed=5).compress(_grads(s), s)) for s in range(3)]
        b = [codec.encode(make_compressor(name, seed=5).compress(_grads(s), s)) for s in range(3)]
        assert a == b, name
    c = codec.encode(make_compressor("randomk", seed=6).compress(_grads(0), 0))
    assert c != codec.encode(make_compressor("randomk", seed=5).compress(_grads(0), 0))


@pytest.mark.parametrize("name,options", [("topk", {"ratio": 0.05}), ("randomk", {"ratio": 0.05}),
                                          ("rsdgc", {"ratio": 0.05}), ("dgc", {"ratio": 0.05, "momentum": 0.0}),
                                          ("topk", {"ratio": 0.05, "value_format": "i8"})])
def test_error_feedback_sends_everything_eventually(name, options):
    comp = make_compressor(name, **options)
    rng = np.random.default_rng(4)
    drift = rng.normal(size=(30, 30)).astype(np.float32)
    total_g, total_sent = np.zeros_like(drift), np.zeros_like(drift)
    for step in range(300):
        g = drift + rng.normal(size=drift.shape).astype(np.float32)
        total_g += g
        total_sent += comp.compress({"w": g}, step).layers[0].dense()
    np.testing.assert_allclose(total_sent + comp.residuals()["w"], total_g, atol=2e-3)   # nothing is lost
    assert np.linalg.norm(total_sent - total_g) < 0.1 * np.linalg.norm(total_g)         # only delayed
    comp.reset()
    assert comp.residuals() == {}


def _spike_and_block(spike=1.5):
    g = np.random.default_rng(5).normal(scale=0.01, size=(16, 16)).astype(np.float32)
    g[2, 2] = spike            # isolated, large: likely noise of one mini-batch
    g[9:12, 9:12] += 1.0       # coherent 3×3 neighbourhood of smaller gradients
    return g


def test_rsdgc_prefers_a_coherent_neighbourhood_to_an_isolated_spike():
    g = _spike_and_block()
    block = {r * 16 + c for r in range(9, 12) for c in range(9, 12)}
    topk = make_compressor("topk", ratio=9 / 256, value_format="f32").compress({"w": g}, 0).layers[0]
    assert 2 * 16 + 2 in topk.indices and len(block & set(topk.indices.tolist())) == 8
    rs = make_compressor("rsdgc", ratio=9 / 256, beta=1.0, p=3, value_format="f32")
    first = rs.compress({"w": g}, 0).layers[0]
    assert set(first.indices.tolist()) == block                  # NSI: the whole block, the spike waits
    second = rs.compress({"w": np.zeros_like(g)}, 1).layers[0]   # error feedback sends the spike next
    assert 2 * 16 + 2 in second.indices
    mean, std = neighbourhood_stats(np.pad(np.ones((1, 1)), 1), 3)
    assert std[1, 1] / (abs(mean[1, 1]) + std[1, 1]) == pytest.approx(np.sqrt(8) / (1 + np.sqrt(8)))  # ρ = 1/(1+√8)


def test_nsi_with_p1_or_beta0_is_topk_and_windows_are_cut_at_borders():
    g = _spike_and_block()
    np.testing.assert_allclose(nsi_score(g, 1, beta=1.0), np.abs(g).ravel())
    np.testing.assert_allclose(nsi_score(g, 5, beta=0.0), np.abs(g).ravel())
    mean, std = neighbourhood_stats(np.arange(12.0).reshape(3, 4), 3)
    assert mean[0, 0] == pytest.approx(np.mean([0, 1, 4, 5])) and std[1, 1] == pytest.approx(np.std([0, 1, 2, 4, 5, 6,
                                                                                                       8, 9, 10]))
    with pytest.raises(UserError, match="odd"):
        make_compressor("rsdgc", p=4)


def test_rsdgc_layer_ratio_follows_layer_importance_and_keeps_the_budget():
    rs = make_compressor("rsdgc", ratio=0.01, max_boost=4.0)
    rng = np.random.default_rng(6)
    grads = {"busy": rng.normal(scale=1.0, size=(100, 100)).astype(np.float32),
             "quiet": rng.normal(scale=0.1, size=(100, 100)).astype(np.float32)}
    for step in range(5):
        update = rs.compress(grads, step)
    density = update.meta["layer_density"]
    assert density["busy"] > 0.01 > density["quiet"]
    assert density["busy"] + density["quiet"] == pytest.approx(0.02)     # the total budget is kept
    sizes = {layer.name: len(layer.indices) for layer in update.layers}
    assert sizes["busy"] > 2 * sizes["quiet"]
    static = make_compressor("rsdgc", ratio=0.01, dynamic=False).compress(grads, 0)
    assert [len(layer.indices) for layer in static.layers] == [100, 100]


def test_bad_inputs_are_user_errors():
    with pytest.raises(UserError, match="ratio"):
        make_compressor("topk", ratio=5)
    with pytest.raises(UserError, match="floating point"):
        make_compressor("topk").compress({"w": np.arange(4)}, 0)
    with pytest.raises(UserError, match="shape"):
        make_compressor("dense").decompress(make_compressor("dense").compress({"w": np.ones(3)}, 0), {"w": (4,)})
