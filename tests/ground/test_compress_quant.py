"""Fake quantization, BN folding, calibrators, the Q/DQ writer and its gate, per-target export plans."""
import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402

from engines.errors import UserError  # noqa: E402
from ground.compress.fakequant import all_int8, fake_quant, fold_bn, simulate  # noqa: E402
from ground.compress.measure import export_plan  # noqa: E402
from ground.compress.ptq import calibrate, entropy_amax, input_histograms, percentile_amax  # noqa: E402
from ground.compress.qdq import compare, export_float, quantize_weight_np, session, write_qdq  # noqa: E402
from ground.compress.tasks.base import Deploy  # noqa: E402
from ground.compress.variant import Variant  # noqa: E402
from ground.models.cloudnet import CloudNet  # noqa: E402
from ground.quantize import check_qdq  # noqa: E402


def _cloudnet(seed=0, width=4):
    torch.manual_seed(seed)
    model = CloudNet(width=width)
    with torch.no_grad():                       # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def test_fake_quant_is_onnx_quantize_dequantize():
    x = torch.tensor([-3.0, -1.26, -0.625, -0.375, 0.0, 0.125, 0.375, 0.625, 1.0, 200.0])
    s = 0.25
    # ONNX QuantizeLinear: saturate(round_half_to_even(x / s)) to [-128, 127]; then times s
    expected = np.clip(np.round(x.numpy() / s), -128, 127) * s
    assert np.array_equal(fake_quant(x, s).numpy(), expected.astype(np.float32))
    xg = x.clone().requires_grad_(True)
    fake_quant(xg, s, ste=True).sum().backward()
    assert xg.grad.tolist() == [1.0] * 9 + [0.0]      # straight through inside the range, 0 when clamped


def test_fold_bn_keeps_outputs_and_names():
    model = _cloudnet()
    folded = fold_bn(model)
    x = torch.randn(2, 6, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(folded.forward_logits(x).numpy(), model.forward_logits(x).numpy(), atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert "stem.0.weight" in dict(folded.named_parameters()) and fold_bn(folded) is not folded


def test_calibrators():
    rng = np.random.default_rng(0)
    hist, _ = np.histogram(rng.random(200_000), bins=2048, range=(0, 1))
    assert percentile_amax(hist, 1.0, 99.0) == pytest.approx(0.99, abs=2e-3)
    gauss = np.abs(rng.standard_normal(200_000))
    hist, _ = np.histogram(np.append(gauss, [60.0] * 3), bins=2048, range=(0, 60))
    assert 2.0 < entropy_amax(hist, 60.0) < 10.0          # the three outliers are clipped away
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    batches = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    stats = input_histograms(model, batches, lambda m, b: m(b))
    scales = {k: calibrate(model, [], None, k, stats=stats) for k in ("minmax", "percentile", "entropy")}
    top = max(float(b.abs().max()) for b in batches)
    assert scales["minmax"]["0"] == pytest.approx(top / 127)
    assert scales["percentile"]["0"] <= scales["minmax"]["0"] and scales["entropy"]["0"] <= scales["minmax"]["0"]
    with pytest.raises(UserError, match="unknown"):
        calibrate(model, batches, lambda m, b: m(b), "kl")


def test_qdq_writer_passes_the_gate_and_matches_torch(tmp_path):
    model = _cloudnet(1)
    x = torch.randn(3, 6, 32, 32)
    scales = calibrate(model, [x], lambda m, b: m.forward_logits(b), "percentile")
    plan = all_int8(model)
    plan["high.0"] = "fp16"                                # a hybrid plan
    folded = fold_bn(model)
    fp = export_float(Deploy(folded, lambda net, t: net.forward_logits(t)), (x[:1],), tmp_path / "f.onnx", ["x"], ["y"], opset=13)
    weights = {n: m.weight.detach().numpy() for n, m in folded.named_modules() if isinstance(m, nn.Conv2d)}
    write_qdq(fp, tmp_path / "q.onnx", plan, scales, weights)
    rep = check_qdq(tmp_path / "q.onnx")
    assert len(rep.per_channel_convs) == len(weights) - 1 and len(rep.float_convs) == 1
    proto = onnx.load(str(tmp_path / "q.onnx"))
    assert all(t.data_type != onnx.TensorProto.UINT8 for t in proto.graph.initializer)
    w16 = next(onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == "net.high.0.weight")
    assert np.array_equal(w16, w16.astype(np.float16).astype(np.float32))
    got = session(tmp_path / "q.onnx").run(None, {"x": x.numpy()})[0]
    ref = simulate(model, plan, scales).forward_logits(x).detach().numpy()
    assert compare({"y": got}, {"y": ref}, 1e-3, 1e-2, 0.005)["ok"]
    q, s = quantize_weight_np(weights["stem.0"])
    assert q.dtype == np.int8 and np.abs(q).max() == 127 and s.shape == (weights["stem.0"].shape[0],)


def test_export_plan_follows_the_targets():
    m = nn.Sequential(nn.Conv2d(1, 1, 1))
    fp32, int8 = Variant("fp32", "fp32", m), Variant("q", "ptq", m, precision={"0": "int8"})
    assert export_plan(fp32, ["tx2-jp46", "orin-jp6"])["opset"] == 13
    p = export_plan(int8, ["tx2-jp46", "orin-jp6"])
    assert p["targets"] == ["orin-jp6"] and (p["opset"], p["ir_version"]) == (20, 9)
    assert export_plan(int8, ["xavier-jp5", "orin-jp6"])["opset"] == 17
    none = export_plan(int8, ["tx2-jp46"])
    assert none["targets"] == [] and none["opset"] == 13 and "no recipe target" in none["note"]


def test_compare_tolerates_rare_rounding_flips_only():
    ref = np.linspace(0, 1, 1000)
    flip = ref.copy()
    flip[3] += 0.02                                         # one element, 2 bounds off
    assert compare({"y": flip}, {"y": ref}, 1e-3, 1e-2, 0.005)["ok"]
    assert not compare({"y": flip}, {"y": ref}, 1e-3, 1e-2, 0.0)["ok"]
    flip[5] += 1.0                                          # a gross error always fails
    assert not compare({"y": flip}, {"y": ref}, 1e-3, 1e-2, 0.005)["ok"]
