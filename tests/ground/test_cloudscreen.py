"""Cloud screen ground job: model, ONNX export, symmetric INT8 Q/DQ, and the two bundles."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from engines.bundle import Bundle  # noqa: E402
from engines.errors import UserError  # noqa: E402
from engines.runners.onnxrt import OnnxRuntimeRunner  # noqa: E402
from ground.export import export_onnx  # noqa: E402
from ground.models.cloudnet import CloudNet, count_parameters  # noqa: E402
from ground.quantize import check_qdq, quantize_int8  # noqa: E402
from ground.train import train_cloudnet  # noqa: E402


def _tiles(n, seed=0, tile=64):
    """Random DN tiles whose 'cloud' is simply the bright pixels (no scene generator needed)."""
    rng = np.random.default_rng(seed)
    dn = rng.integers(200, 1500, size=(n, 6, tile, tile)).astype(np.uint16)
    mask = (rng.random((n, tile, tile)) < 0.3).astype(np.uint8)
    dn[:, :4] += mask[:, None].astype(np.uint16) * np.uint16(2000)
    return dn, mask


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    torch.manual_seed(0)
    model = CloudNet(width=4).eval()
    path = tmp_path_factory.mktemp("export") / "cloudnet.onnx"
    export_onnx(model, path)
    return model, path


def test_forward_shapes_and_cloud_fraction():
    model = CloudNet(width="quick").eval()
    assert 1000 < count_parameters(model) < 30000
    assert count_parameters(CloudNet(width="full")) > count_parameters(model)
    x = torch.randn(3, 6, 64, 64)
    with torch.no_grad():
        mask, frac = model(x)
        logits = model.forward_logits(x)
    assert mask.shape == (3, 1, 64, 64) and frac.shape == (3, 1) and logits.shape == (3, 1, 64, 64)
    assert torch.all((mask >= 0) & (mask <= 1))
    np.testing.assert_allclose(frac.numpy()[:, 0], (logits > 0).float().mean(dim=(1, 2, 3)).numpy(), atol=1e-6)


def test_training_is_deterministic_and_returns_normalization():
    dn, mask = _tiles(16)
    a = train_cloudnet(dn, mask, epochs=1, batch_size=8, lr=1e-2, seed=3, width=4, progress=False)
    b = train_cloudnet(dn, mask, epochs=1, batch_size=8, lr=1e-2, seed=3, width=4, progress=False)
    for pa, pb in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(pa, pb)
    norm = a.normalization
    assert norm["source_dtype"] == "uint16" and len(norm["scale"]) == len(norm["offset"]) == 6
    scale, offset = (np.array(norm[k])[None, :, None, None] for k in ("scale", "offset"))
    x = dn.astype(np.float64) * scale + offset
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    assert len(a.history) == 1 and a.cloud_weight > 1  # clouds are the rarer class here


def test_export_matches_torch_with_dynamic_batch(fp32_model):
    model, path = fp32_model
    proto = onnx.load(str(path))
    assert proto.ir_version == 8
    assert {o.domain: o.version for o in proto.opset_import}[""] == 13
    assert [i.name for i in proto.graph.input] == ["dn_norm"]
    assert [o.name for o in proto.graph.output] == ["mask", "cloud_fraction"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    for n in (1, 5):
        x = np.random.default_rng(n).standard_normal((n, 6, 64, 64)).astype(np.float32)
        with OnnxRuntimeRunner(path) as runner:
            out = runner.infer({"dn_norm": x})
        with torch.no_grad():
            t_mask, t_frac = model(torch.from_numpy(x))
        np.testing.assert_allclose(out["mask"], t_mask.numpy(), atol=1e-4)
        np.testing.assert_allclose(out["cloud_fraction"], t_frac.numpy(), atol=2 / 4096)


@pytest.mark.parametrize("opset", [9, 99])
def test_export_refuses_opsets_it_cannot_write(tmp_path, opset):
    with pytest.raises(UserError, match=rf"opset {opset} was asked.*13"):
        export_onnx(CloudNet(width=4), tmp_path / "m.onnx", opset=opset)


def test_int8_is_symmetric_per_channel_and_tampering_is_caught(fp32_model, tmp_path):
    _, path = fp32_model
    calib = np.random.default_rng(0).standard_normal((16, 6, 64, 64)).astype(np.float32)
    q_path = quantize_int8(path, tmp_path / "int8.onnx", calib)
    report = check_qdq(q_path)
    n_conv = sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
    assert len(report.per_channel_convs) == n_conv and not report.float_convs
    assert report.quantize_nodes > 0 and report.dequantize_nodes > n_conv

    q = onnx.load(str(q_path))
    node = next(n for n in q.graph.node if n.op_type == "QuantizeLinear")
    zp = next(t for t in q.graph.initializer if t.name == node.input[2])
    zp.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(zp).shape, 3, np.int8), zp.name))
    onnx.save(q, str(tmp_path / "tampered.onnx"))
    with pytest.raises(UserError, match="zero point") as err:
        check_qdq(tmp_path / "tampered.onnx")
    assert node.name in str(err.value)

    q = onnx.load(str(q_path))
    conv = next(n for n in q.graph.node if n.op_type == "Conv")
    dq = next(n for n in q.graph.node if n.output[0] == conv.input[1])
    next(a for a in dq.attribute if a.name == "axis").i = 1
    onnx.save(q, str(tmp_path / "axis1.onnx"))
    with pytest.raises(UserError, match="per-channel on axis 0") as err:
        check_qdq(tmp_path / "axis1.onnx")
    assert conv.name in str(err.value)


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory):
    pytest.importorskip("ground.data.scenes")
    from ground.cloudscreen import build_cloud_screen
    return build_cloud_screen(tmp_path_factory.mktemp("cloudscreen"), quick=True, seed=0, progress=False)


def test_quick_build_reaches_accuracy_and_int8_keeps_it(quick_build):
    r = quick_build
    assert r.fp32_accuracy >= 0.9 and r.int8_accuracy >= 0.9
    assert abs(r.fp32_accuracy - r.int8_accuracy) <= 0.01
    assert r.int8_speedup > 0 and r.fp32_tiles_per_s > 0 and r.int8_tiles_per_s > 0
    assert r.threshold == 0.5 and r.n_train > r.n_heldout > 0 and r.train_seconds > 0
    assert r.exporter and r.opset == 13 and r.ir_version == 8
    again = CloudNet(width=r.model.width)
    again.load_state_dict(torch.load(str(r.state_dict_path)))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_quick_build_bundles_open_and_reproduce_their_reference(quick_build, precision):
    bundle = Bundle.open(getattr(quick_build, f"{precision}_bundle"))
    m = bundle.manifest
    assert (m.name, m.version, m.precision) == ("cloudscreen", 1, precision)
    spec = m.input("dn_norm")
    assert spec.dtype == "float32" and tuple(spec.shape) == ("N", 6, 64, 64)
    assert spec.normalization["source_dtype"] == "uint16" and len(spec.normalization["scale"]) == 6
    assert [o.name for o in m.outputs] == ["mask", "cloud_fraction"]
    assert m.metrics["pixel_accuracy"] == pytest.approx(getattr(quick_build, f"{precision}_accuracy"))
    ref_in, ref_out = bundle.reference()
    assert ref_in["dn_norm"].shape[0] == 4
    with OnnxRuntimeRunner(bundle.model_path) as runner:
        out = runner.infer(ref_in)
    np.testing.assert_allclose(out["mask"], ref_out["mask"], atol=1e-5)
    np.testing.assert_allclose(out["cloud_fraction"], ref_out["cloud_fraction"], atol=1e-6)
    if precision == "int8":
        check_qdq(bundle.model_path)


def test_export_names_both_exporters_when_neither_can_write_the_opset(tmp_path, monkeypatch):
    # last in the file: it loads the dynamo exporter (seconds), so the cheaper tests report first
    import ground.export as export

    def gone(*args, **kwargs):
        raise RuntimeError("legacy exporter removed")

    monkeypatch.setattr(export, "_legacy_export", gone)
    # the dynamo exporter writes opset 18 and onnx.version_converter cannot lower Relu 14 -> 13
    with pytest.raises(UserError, match=r"opset 13 was asked.*legacy TorchScript.*dynamo"):
        export_onnx(CloudNet(width=4), tmp_path / "m.onnx", opset=13)
