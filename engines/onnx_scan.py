"""What a target needs to know of an ONNX file, read by a small protobuf scan.

Flashing and building run on Jetsons that have TensorRT but not the ``onnx`` package, and a
model file can be hundreds of megabytes. :func:`read_onnx_versions` reads the IR version and
opsets, :func:`read_onnx_inputs` the graph inputs' element types; both seek past the nodes and
the weights instead of loading them. Field numbers are those of ``onnx.proto`` (ModelProto:
ir_version 1, graph 7, opset_import 8; GraphProto: initializer 5, input 11; ValueInfoProto:
name 1, type 2; TypeProto: tensor_type 1; TypeProto.Tensor: elem_type 1; TensorProto: name 8).
"""
from __future__ import annotations

import io
import os
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple, Union

from engines.errors import UserError

PathLike = Union[str, "os.PathLike[str]"]

#: ONNX ``TensorProto.DataType`` values, as numpy-style names.
ELEM_TYPES: Dict[int, str] = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
                              8: "string", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
                              14: "complex64", 15: "complex128", 16: "bfloat16"}


def _varint(fh: BinaryIO) -> Optional[int]:
    shift = value = 0
    while shift < 70:
        byte = fh.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
    raise UserError("malformed varint in the ONNX file; it is not a valid ONNX protobuf.")


def _fields(fh: BinaryIO, end: Optional[int] = None, what: str = "the ONNX file") -> Iterator[Tuple[int, int, object]]:
    """Yield ``(number, wire, value)`` up to offset ``end`` (or EOF): a varint's value, or a length-delimited
    field's ``(offset, length)``; the caller may read there, the scan resumes after the field."""
    while end is None or fh.tell() < end:
        tag = _varint(fh)
        if tag is None:
            return
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            yield number, wire, _varint(fh)
        elif wire == 2:
            length = _varint(fh) or 0
            start = fh.tell()
            yield number, wire, (start, length)
            fh.seek(start + length)
        elif wire in (1, 5):
            fh.seek(8 if wire == 1 else 4, os.SEEK_CUR)
        else:
            raise UserError("%s is not an ONNX model (protobuf wire type %d)." % (what, wire))


def _message(blob: bytes) -> Iterator[Tuple[int, int, object]]:
    """The fields of a small message held in memory, length-delimited ones as bytes."""
    fh = io.BytesIO(blob)
    for number, wire, value in _fields(fh):
        if wire == 2:
            start, length = value
            yield number, wire, blob[start:start + length]
        else:
            yield number, wire, value


def _opset_entry(blob: bytes) -> Tuple[str, Optional[int]]:
    domain, version = "", None
    for number, wire, value in _message(blob):
        if number == 1 and wire == 2:
            domain = value.decode("utf-8", "replace")
        elif number == 2 and wire == 0:
            version = value
    return domain, version


def read_onnx_versions(onnx_path: PathLike) -> Tuple[int, Dict[str, int]]:
    """Return ``(ir_version, {domain: opset})`` of an ONNX file, skipping (not loading) its graph.

    The default domain is reported as ``""`` (``"ai.onnx"`` is folded into it).
    """
    ir_version, opsets = 0, {}
    with open(onnx_path, "rb") as fh:
        for number, wire, value in _fields(fh, what=str(onnx_path)):
            if number == 1 and wire == 0:
                ir_version = value or 0
            elif number == 8 and wire == 2:
                domain, version = _opset_entry(fh.read(value[1]))
                opsets["" if domain == "ai.onnx" else domain] = version or 0
    if not ir_version or "" not in opsets:
        raise UserError("%s is not an ONNX model: no ir_version or default-domain opset found. Pass the exported "
                        ".onnx file." % onnx_path)
    return ir_version, opsets


def _value_info(blob: bytes) -> Tuple[str, str]:
    name, dtype = "", "not a tensor"
    for number, wire, value in _message(blob):
        if number == 1 and wire == 2:
            name = value.decode("utf-8", "replace")
        elif number == 2 and wire == 2:                       # TypeProto
            for n, w, v in _message(value):
                if n == 1 and w == 2:                         # tensor_type
                    elem = next((x for k, ww, x in _message(v) if k == 1 and ww == 0), 0)
                    dtype = ELEM_TYPES.get(elem, "elem_type %d" % elem)
    return name, dtype


def _tensor_name(fh: BinaryIO, start: int, length: int) -> str:
    fh.seek(start)
    for number, wire, value in _fields(fh, start + length):
        if number == 8 and wire == 2:
            return fh.read(value[1]).decode("utf-8", "replace")
    return ""


def read_onnx_inputs(onnx_path: PathLike) -> List[Tuple[str, str]]:
    """Return the graph's inputs as ``(name, dtype)``, e.g. ``("frame", "uint8")``, in graph order.

    Inputs that are initializers (older exporters list weights as inputs) are left out; a
    non-tensor input's dtype is ``"not a tensor"``, an unknown element type's ``"elem_type N"``.
    """
    with open(onnx_path, "rb") as fh:
        for number, wire, value in _fields(fh, what=str(onnx_path)):
            if number == 7 and wire == 2:
                start, length = value
                fh.seek(start)
                inputs, weights = [], set()
                for n, w, v in _fields(fh, start + length, str(onnx_path)):
                    if n == 11 and w == 2:
                        inputs.append(_value_info(fh.read(v[1])))
                    elif n == 5 and w == 2:
                        weights.add(_tensor_name(fh, *v))
                return [(name, dtype) for name, dtype in inputs if name not in weights]
    raise UserError("%s is not an ONNX model: it has no graph. Pass the exported .onnx file." % onnx_path)
