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
