"""Target profiles: what each Jetson/JetPack (and a ground GPU host) runs, see ``docs/targets.md``.

A profile says which TensorRT, CUDA and Python a target has, its GPU architecture (SM), its DLA
cores, the precisions worth building, the device-buffer library, and the newest ONNX opset and IR
version its TensorRT ONNX parser reads. ``check_onnx_for_target`` reads an ONNX file's opset, IR
version and input types with a small protobuf scan (:mod:`engines.onnx_scan`: no ``onnx``
package needed, nodes and weights are skipped, not loaded) and refuses a model the target cannot
parse.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

from engines.errors import UserError
from engines.onnx_scan import read_onnx_inputs, read_onnx_versions

__all__ = ["PROFILES", "TargetProfile", "check_onnx_for_target", "get_profile", "read_onnx_inputs",
           "read_onnx_versions"]


@dataclass(frozen=True)
class TargetProfile:
    """One deployment target. ``sm``/``trt_version`` None means "whatever this host has" (gpu-host)."""

    name: str
    description: str
    jetpack: Optional[str]
    trt_version: Optional[str]
    cuda_version: Optional[str]
    python_version: Optional[str]
    sm: Optional[str]
    max_opset: int
    max_ir_version: int
    precisions: Tuple[str, ...]
    dla_cores: int
    buffer_library: str
    min_opset: int = 7
    source: str = ""


# Sources and confidence per field are in docs/targets.md; keep the two in step.
PROFILES: Dict[str, TargetProfile] = {p.name: p for p in (
    TargetProfile("tx2-jp46", "Jetson TX2, JetPack 4.6.x (L4T 32.6/32.7)", "4.6", "8.2.1", "10.2", "3.6", "6.2",
                  max_opset=13, max_ir_version=8, precisions=("fp32", "fp16"), dla_cores=0, buffer_library="pycuda",
                  source="onnx-tensorrt docs/operators.md (8.2: opset 13); IR 8: assumed, see docs/targets.md"),
    TargetProfile("xavier-jp5", "Jetson AGX Xavier / Xavier NX, JetPack 5.1.x (L4T 35)", "5.1", "8.5.2", "11.4",
                  "3.8", "7.2", max_opset=17, max_ir_version=8, precisions=("fp32", "fp16", "int8"), dla_cores=2,
                  buffer_library="cuda-python", source="operators.md (8.5: opset 17); ONNX 1.12 submodule (IR 8)"),
    TargetProfile("orin-jp5", "Jetson AGX Orin / Orin NX, JetPack 5.1.x (L4T 35)", "5.1", "8.5.2", "11.4", "3.8",
                  "8.7", max_opset=17, max_ir_version=8, precisions=("fp32", "fp16", "int8"), dla_cores=2,
                  buffer_library="cuda-python", source="as xavier-jp5; DLA: 2 on AGX Orin and Orin NX 16GB"),
    TargetProfile("orin-jp6.0", "Jetson Orin, JetPack 6.0 (L4T 36.3)", "6.0", "8.6.2", "12.2", "3.10", "8.7",
                  max_opset=17, max_ir_version=8, precisions=("fp32", "fp16", "int8"), dla_cores=2,
                  buffer_library="cuda-python", source="operators.md (8.6: opset 17); ONNX 1.13.1 submodule (IR 8)"),
    TargetProfile("orin-jp6", "Jetson Orin, JetPack 6.1/6.2 (L4T 36.4)", "6.1", "10.3.0", "12.6", "3.10", "8.7",
                  max_opset=20, max_ir_version=9, precisions=("fp32", "fp16", "int8"), dla_cores=2,
                  buffer_library="cuda-python", min_opset=9,
                  source="operators.md (10.0: opset 9-20; 10.1-10.5 changelogs change no submodule)"),
    TargetProfile("thor-jp7", "Jetson AGX Thor, JetPack 7.0 (L4T 38.2) -- partly unverified", "7.0", "10.13.0",
                  "13.0", "3.12", "11.0", max_opset=22, max_ir_version=10, precisions=("fp32", "fp16", "int8"),
                  dla_cores=0, buffer_library="cuda-python", min_opset=9,
                  source="CUDA 13.0: NVIDIA JetPack 7 pages; TRT 10.13, SM 11.0, Python 3.12, no DLA: unverified"),
    TargetProfile("gpu-host", "Ground validation on any CUDA GPU with TensorRT 10.x (plans stay on the ground)",
                  None, None, None, None, None, max_opset=20, max_ir_version=9, precisions=("fp32", "fp16", "int8"),
                  dla_cores=0, buffer_library="cuda-python", min_opset=9, source="TensorRT 10.0 operators.md"),
)}


def get_profile(name: Union[str, TargetProfile]) -> TargetProfile:
    """Return the profile called ``name`` (``UserError`` listing the profiles if unknown)."""
    if isinstance(name, TargetProfile):
        return name
    if name not in PROFILES:
        raise UserError("unknown target profile %r; profiles: %s (see 'satedge engines targets')."
                        % (name, ", ".join(PROFILES)))
    return PROFILES[name]


def check_onnx_for_target(onnx_path: Union[str, "os.PathLike[str]"], profile: Union[str, TargetProfile]) -> None:
    """Refuse an ONNX model whose opset, IR version or input types the target's TensorRT cannot read.

    Raises
    ------
    UserError
        Naming the model's opset and IR version and the profile's limits, or the input whose
        element type no TensorRT tensor holds (uint16, int16, ...; uint8 before TensorRT 8.5),
        and how to fix it.
    """
    prof = get_profile(profile)
    ir_version, opsets = read_onnx_versions(onnx_path)
    opset = opsets[""]
    trt = "TensorRT %s" % prof.trt_version if prof.trt_version else "its TensorRT"
    if not prof.min_opset <= opset <= prof.max_opset:
        raise UserError("%s uses ONNX opset %d (IR version %d) but target %s (%s) reads opset %d to %d. Re-export "
                        "with opset_version=%d." % (onnx_path, opset, ir_version, prof.name, trt, prof.min_opset,
                                                    prof.max_opset, min(max(opset, prof.min_opset), prof.max_opset)))
    if ir_version > prof.max_ir_version:
        raise UserError("%s has ONNX IR version %d (opset %d) but target %s (%s) reads IR version <= %d. Re-export "
                        "with an older onnx, or set model.ir_version = %d if the graph uses nothing newer."
                        % (onnx_path, ir_version, opset, prof.name, trt, prof.max_ir_version, prof.max_ir_version))
    for name, dtype in read_onnx_inputs(onnx_path):
        why = _input_type_problem(dtype, prof)
        if why:
            raise UserError("%s: input %r is %s, which %s (target %s) cannot take: %s" % (onnx_path, name, dtype, trt,
                                                                                       prof.name, why))


#: TensorRT's first release with a uint8 tensor type (``DataType.kUINT8``); TensorRT 8.2's ONNX parser
#: stops at "Unsupported ONNX data type: UINT8 (2)".
UINT8_SINCE = (8, 5)
_NO_TENSORRT_TYPE = ("uint16", "int16", "uint32", "uint64", "string", "complex64", "complex128", "not a tensor")


def _input_type_problem(dtype: str, prof: TargetProfile) -> str:
    if dtype in _NO_TENSORRT_TYPE:
        return ("TensorRT has no such tensor type. Cast on the host before the engine (a uint16 frame: the daemon's "
                "preprocessing, onboard kernels setting, hands the engine float tiles) and re-export.")
    if dtype == "uint8" and prof.trt_version and tuple(int(p) for p in prof.trt_version.split(".")[:2]) < UINT8_SINCE:
        return ("uint8 tensors arrived in TensorRT %d.%d. Start the engine at float tiles: the daemon preprocesses "
                "frames (PreprocessU12/U16) and counts cloud masks through the kernel library or numpy (onboard "
                "kernels setting) before the engine; or re-export with a float32/int32 input." % UINT8_SINCE)
    return ""
