"""The TensorRT form of models that call satedge ops, and the plugin field tables.

Every op's ONNX call node carries its plugin fields; :func:`plugin_form` strips the local
functions and adds the plugin version/namespace so that TensorRT's parser builds the plugins of
``cuda/plugins``; the field names and types agree with what the C++ creators declare. TensorRT
itself is not here: building and running the plugins is under ``-m tensorrt``.
"""
import numpy as np
import onnx
import pytest
from onnx import AttributeProto

from engines.errors import UserError
from engines.ops import cloud_fraction, nsi, preprocess, rx, trt_plugins
from engines.ops.graph import DOMAIN, function_model, run_model
from engines.ops.trt_plugins import PLUGINS, UNSUPPORTED, plugin_form, tensorrt_model_bytes


def _models():
    """(op name, ONNX-form model, expected fields) for every op with a plugin."""
    pp = preprocess.build_model("u12", (3, 10, 14), window=(-2, 4, 8, 9), dtype="float16")
    cf = cloud_fraction.build_model(64)
    rg = function_model(rx.build_global_function(4), [("cube", "float32", [4, "H", "W"]), ("mean", "float32", [4]),
                                                      ("inv_cov", "float32", [4, 4])], [("score", "float32", ["H", "W"])])
    rl = function_model(rx.build_local_function(4, 9, 3, 2e-3), [("cube", "float32", [4, "H", "W"])],
                        [("score", "float32", ["H", "W"])])
    ns = function_model(nsi.build_function((6, 7), 5, 0.25, 2.0, "mean_std"), [("grad", "float32", [6, 7])],
                        [("score", "float32", [6, 7])])
    sp = function_model(nsi.build_function((6, 7), 3, 0.5, 1.0, "coherence", k=5), [("grad", "float32", [6, 7])],
                        [("index", "int64", [5]), ("value", "float32", [5]), ("threshold", "float32", [1])])
    return [("PreprocessU12", pp, dict(bands=3, height=10, width=14, x0=-2, y0=4, tile_h=8, tile_w=9, dtype=1)),
            ("CloudFraction", cf, dict(tile_pixels=64)), ("RxGlobal", rg, {}),
            ("RxLocal", rl, dict(outer=9, inner=3, regularization=2e-3)),
            ("NsiScore", ns, dict(p=5, beta=0.25, lam=2.0, variant=1)),
            ("NsiSparsify", sp, dict(k=5, p=3, beta=0.5, lam=1.0, variant=0))]


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("name,model,fields", _models(), ids=[m[0] for m in _models()])
def test_plugin_form_has_no_functions_and_the_fields_of_the_plugin(name, model, fields):
    call, = [n for n in model.graph.node if n.domain == DOMAIN]
    assert call.op_type == name and [a.name for a in call.attribute] == [f for f, _ in PLUGINS[name].fields]
    trt = plugin_form(model)
    assert not [f for f in trt.functions if f.domain == DOMAIN] and len(model.functions) == 1   # input untouched
    node, = trt.graph.node
    got = _attrs(node)
    assert got.pop("plugin_version") == b"1" and got.pop("plugin_namespace") == b"satedge"
    assert got.keys() == fields.keys()
    for key, want in fields.items():
        assert got[key] == pytest.approx(want, rel=1e-7) and isinstance(got[key], type(want))
    if name == "NsiSparsify":                                   # the kernel's indices are int32
        assert trt.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert tensorrt_model_bytes(model.SerializeToString()) == trt.SerializeToString()


def test_onnx_form_still_runs_with_the_fields_on_the_call_node():
    rng = np.random.default_rng(2)
    cube = rng.normal(size=(4, 13, 11)).astype(np.float32) + 1.0
    model = function_model(rx.build_local_function(4, 7, 3, 1e-3), [("cube", "float32", [4, "H", "W"])],
                           [("score", "float32", ["H", "W"])])
    got = run_model(model, {"cube": cube})["score"]
    np.testing.assert_allclose(got, rx.rx_local(cube, 7, 3, 1e-3), rtol=1e-4, atol=1e-5)


def test_ops_without_plugin_or_with_wrong_fields_are_refused():
    u16 = preprocess.build_model("u16", (2, 8, 8))
    with pytest.raises(UserError, match="no TensorRT plugin: TensorRT has no 16-bit unsigned"):
        plugin_form(u16)
    rl = function_model(rx.build_local_function(4, 9, 3), [("cube", "float32", [4, "H", "W"])],
                        [("score", "float32", ["H", "W"])])
    del rl.graph.node[0].attribute[1]
    with pytest.raises(UserError, match="its TensorRT plugin takes"):
        plugin_form(rl)
    rl.graph.node[0].op_type = "Nope"
    with pytest.raises(UserError, match="not a satedge op with a TensorRT plugin"):
        plugin_form(rl)
    plain = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [onnx.helper.make_tensor_value_info("x", 1, [2])],
        [onnx.helper.make_tensor_value_info("y", 1, [2])]))
    assert tensorrt_model_bytes(plain.SerializeToString()) == plain.SerializeToString()


def test_field_tables_match_the_cpp_creators():
    if not trt_plugins.FIELDS_HEADER.is_file():
        pytest.fail("cuda/plugins/plugin_fields.h is missing")
    declared = trt_plugins.fields_in_source()
    assert declared == {name: list(spec.fields) for name, spec in PLUGINS.items()}
    assert not set(UNSUPPORTED) & set(declared)


def test_plugin_library_is_looked_up_with_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(trt_plugins.ENV_VAR, str(tmp_path / "missing.so"))
    monkeypatch.setattr(trt_plugins, "__file__", str(tmp_path / "engines" / "ops" / "trt_plugins.py"))
    with pytest.raises(UserError, match="SATEDGE_BUILD_PLUGINS=ON"):
        trt_plugins.find_library()
    assert all(a.type in (AttributeProto.INT, AttributeProto.FLOAT) for _, m, _ in _models()
               for a in m.graph.node[0].attribute)
