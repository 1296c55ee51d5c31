"""Target profiles and the ONNX opset / IR check (read from the protobuf, without the onnx package)."""
import onnx
import pytest

from engines.errors import UserError
from engines.targets import PROFILES, check_onnx_for_target, get_profile, read_onnx_versions


def test_profiles_are_complete():
    assert set(PROFILES) == {"tx2-jp46", "xavier-jp5", "orin-jp5", "orin-jp6.0", "orin-jp6", "thor-jp7", "gpu-host"}
    tx2 = PROFILES["tx2-jp46"]
    assert (tx2.trt_version, tx2.cuda_version, tx2.python_version, tx2.sm, tx2.max_opset, tx2.dla_cores,
            tx2.buffer_library) == ("8.2.1", "10.2", "3.6", "6.2", 13, 0, "pycuda")
    assert PROFILES["xavier-jp5"].sm == "7.2" and PROFILES["xavier-jp5"].dla_cores == 2
    assert PROFILES["orin-jp6"].trt_version.startswith("10.3") and PROFILES["orin-jp6.0"].trt_version.startswith("8.6")
    for p in PROFILES.values():
        assert p.source and set(p.precisions) <= {"fp32", "fp16", "int8"} and p.min_opset <= p.max_opset
    with pytest.raises(UserError, match="unknown target profile 'nano'.*tx2-jp46"):
        get_profile("nano")


def test_opset_too_new_for_tx2_names_both(tmp_path, conv_model):
    model = conv_model(tmp_path / "m.onnx", opset=17, ir_version=8)
    with pytest.raises(UserError) as err:
        check_onnx_for_target(model, "tx2-jp46")
    msg = str(err.value)
    assert "opset 17" in msg and "IR version 8" in msg and "tx2-jp46" in msg and "TensorRT 8.2.1" in msg
    assert "opset 7 to 13" in msg and "opset_version=13" in msg
    check_onnx_for_target(model, "orin-jp6")


def test_ir_too_new_names_both(tmp_path, conv_model):
    model = conv_model(tmp_path / "m.onnx", opset=13, ir_version=9)
    with pytest.raises(UserError, match=r"IR version 9 \(opset 13\).*tx2-jp46.*IR version <= 8"):
        check_onnx_for_target(model, "tx2-jp46")
    check_onnx_for_target(conv_model(tmp_path / "ok.onnx", opset=13, ir_version=8), "tx2-jp46")  # what ground exports


def test_read_versions_matches_onnx_and_skips_custom_domains(tmp_path, conv_model):
    path = conv_model(tmp_path / "m.onnx", opset=15, ir_version=8)
    model = onnx.load(str(path))
    model.opset_import.append(onnx.helper.make_opsetid("com.satedge", 1))
    onnx.save(model, str(path))
    assert read_onnx_versions(path) == (8, {"": 15, "com.satedge": 1})
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01\x02 not a model")
    with pytest.raises(UserError, match="not an ONNX model"):
        read_onnx_versions(tmp_path / "junk.onnx")


def _typed_model(path, inputs, weights_as_inputs=False):
    """A model adding a weight to each of ``inputs`` (``[(name, TensorProto type)]``), optionally listing the
    weight among the graph inputs as pre-IR-4 exporters did."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np
    w = numpy_helper.from_array(np.full((2,), 0.5, np.float32), "w")
    nodes = [helper.make_node("Cast", [n], [n + "_f"], to=TensorProto.FLOAT) for n, _ in inputs]
    nodes += [helper.make_node("Add", [n + "_f", "w"], [n + "_y"]) for n, _ in inputs]
    ins = [helper.make_tensor_value_info(n, t, ["N", 2]) for n, t in inputs]
    if weights_as_inputs:
        ins.insert(1, helper.make_tensor_value_info("w", TensorProto.FLOAT, [2]))
    graph = helper.make_graph(nodes, "typed", ins,
                              [helper.make_tensor_value_info(n + "_y", TensorProto.FLOAT, ["N", 2]) for n, _ in inputs],
                              initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def test_read_inputs_matches_onnx_and_leaves_out_weights(tmp_path):
    from onnx import TensorProto
    from engines.targets import read_onnx_inputs
    kinds = [("frame", TensorProto.UINT16), ("mask", TensorProto.UINT8), ("ids", TensorProto.INT64),
             ("x", TensorProto.FLOAT16)]
    path = _typed_model(tmp_path / "m.onnx", kinds, weights_as_inputs=True)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["frame", "w", "mask", "ids", "x"]      # the weight is listed
    assert read_onnx_inputs(path) == [("frame", "uint16"), ("mask", "uint8"), ("ids", "int64"), ("x", "float16")]
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07")                                   # ir_version only
    with pytest.raises(UserError, match="has no graph"):
        read_onnx_inputs(tmp_path / "junk.onnx")


def test_uint8_input_refused_before_tensorrt_8_5_only(tmp_path):
    from onnx import TensorProto
    path = _typed_model(tmp_path / "m.onnx", [("x", TensorProto.FLOAT), ("mask", TensorProto.UINT8)])
    with pytest.raises(UserError) as err:
        check_onnx_for_target(path, "tx2-jp46")
    msg = str(err.value)
    assert "input 'mask' is uint8" in msg and "TensorRT 8.2.1" in msg and "tx2-jp46" in msg and "8.5" in msg
    assert "onboard" in msg                                                    # says where the uint8 work goes
    for target in ("xavier-jp5", "orin-jp6.0", "orin-jp6", "gpu-host"):
        check_onnx_for_target(path, target)


def test_uint16_input_refused_on_every_target(tmp_path):
    from onnx import TensorProto
    path = _typed_model(tmp_path / "m.onnx", [("frame", TensorProto.UINT16)])
    for target in PROFILES:
        with pytest.raises(UserError, match=r"input 'frame' is uint16.*no such tensor type"):
            check_onnx_for_target(path, target)


def test_satedge_cloud_fraction_op_needs_tensorrt_8_5(tmp_path):
    from engines.ops import cloud_fraction
    path = tmp_path / "cf.onnx"
    onnx.save(cloud_fraction.build_model(64), str(path))
    with pytest.raises(UserError, match="input 'mask' is uint8"):
        check_onnx_for_target(path, "tx2-jp46")
    check_onnx_for_target(path, "xavier-jp5")
