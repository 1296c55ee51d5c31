"""The TensorRT form of a model that calls satedge ops, and loading the plugin library.

In the ONNX form (:mod:`engines.ops.graph`) a ``satedge.ops::<Name>`` node calls a model-local
function that ONNX Runtime expands. TensorRT's ONNX parser instead maps an unknown node to a
plugin by op type, ``plugin_version`` and ``plugin_namespace`` -- but some parser versions
expand a local function first. :func:`plugin_form` therefore returns a copy of the model without
the satedge functions, each call node carrying ``plugin_version`` ``"1"`` and
``plugin_namespace`` ``"satedge"`` besides its fields (the op's parameters, written on the node
by :func:`engines.ops.graph.make_function`), so that the parser of every TensorRT version builds
the plugins of ``cuda/plugins`` (``libsatedge_trt_plugins.so``, CMake option
``SATEDGE_BUILD_PLUGINS``).

:data:`PLUGINS` lists each plugin's fields in the order and with the types the C++ creators
declare in ``cuda/plugins/plugin_fields.h`` (a test reads that file and compares);
:data:`UNSUPPORTED` says which ops have no plugin and why. ``tensorrt`` is imported only
inside :func:`load_plugins`.
"""
from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from engines.errors import UserError
from engines.ops.graph import DOMAIN

NAMESPACE = "satedge"
VERSION = "1"
ENV_VAR = "SATEDGE_TRT_PLUGINS"
LIB_NAME = "libsatedge_trt_plugins.so"
FIELDS_HEADER = Path(__file__).resolve().parents[2] / "cuda" / "plugins" / "plugin_fields.h"


@dataclass(frozen=True)
class PluginSpec:
    """One plugin: its fields ``(name, "int32" | "float32")`` and output types that differ from the ONNX form."""

    fields: Tuple[Tuple[str, str], ...]
    output_types: Tuple[Tuple[int, str], ...] = ()     # (output index, numpy dtype name) in the TensorRT form


_I, _F = "int32", "float32"
PLUGINS: Dict[str, PluginSpec] = {
    "PreprocessU12": PluginSpec(tuple((n, _I) for n in ("bands", "height", "width", "x0", "y0", "tile_h", "tile_w",
                                                         "dtype"))),
    "CloudFraction": PluginSpec((("tile_pixels", _I),)),
    "RxGlobal": PluginSpec(()),
    "RxLocal": PluginSpec((("outer", _I), ("inner", _I), ("regularization", _F))),
    "NsiScore": PluginSpec((("p", _I), ("beta", _F), ("lam", _F), ("variant", _I))),
    "NsiSparsify": PluginSpec((("k", _I), ("p", _I), ("beta", _F), ("lam", _F), ("variant", _I)),
                              output_types=((0, "int32"),)),       # the kernel's indices are int32
}
UNSUPPORTED: Dict[str, str] = {
    "PreprocessU16": "TensorRT has no 16-bit unsigned tensor type, so a uint16 frame cannot enter an engine; the "
                     "daemon preprocesses uint16 frames through the C ABI (onboard.kernels) before the engine, or "
                     "send 12-bit packed frames (PreprocessU12)",
}


def uses_satedge_ops(model_bytes: bytes) -> bool:
    """Whether a serialized model may call satedge ops (its bytes name the domain); cheap, no onnx import."""
    return DOMAIN.encode() in model_bytes


def tensorrt_model_bytes(model_bytes: bytes) -> bytes:
    """The model to hand to TensorRT's parser: :func:`plugin_form` of it when it calls satedge ops, else as is."""
    if not uses_satedge_ops(model_bytes):
        return model_bytes
    import onnx
    return plugin_form(onnx.load_from_string(model_bytes)).SerializeToString()


def satedge_nodes(model) -> List[Any]:
    """The model's ``satedge.ops`` nodes (main graph)."""
    return [n for n in model.graph.node if n.domain == DOMAIN]


def _check_fields(node, spec: PluginSpec) -> None:
    from onnx import AttributeProto
    kinds = {"int32": AttributeProto.INT, "float32": AttributeProto.FLOAT}
    have = [(a.name, a.type) for a in node.attribute if a.name not in ("plugin_version", "plugin_namespace")]
    want = [(name, kinds[t]) for name, t in spec.fields]
    if have != want:
        raise UserError("node %r (%s::%s) has attributes %s; its TensorRT plugin takes %s. Rebuild the node with "
                        "engines.ops (make_function writes the fields)" % (node.name, DOMAIN, node.op_type,
                                                                           [h[0] for h in have], list(spec.fields)))


def plugin_form(model):
    """A copy of ``model`` for TensorRT's ONNX parser (see module doc); raises :class:`UserError` for an op
    without a plugin or a node whose attributes are not its plugin's fields."""
    from onnx import helper
    out = type(model)()
    out.CopyFrom(model)
    retyped: Dict[str, str] = {}
    for node in satedge_nodes(out):
        if node.op_type in UNSUPPORTED:
            raise UserError("%s::%s has no TensorRT plugin: %s" % (DOMAIN, node.op_type, UNSUPPORTED[node.op_type]))
        spec = PLUGINS.get(node.op_type)
        if spec is None:
            raise UserError("%s::%s is not a satedge op with a TensorRT plugin (plugins: %s)"
                            % (DOMAIN, node.op_type, ", ".join(sorted(PLUGINS))))
        _check_fields(node, spec)
        node.attribute.extend([helper.make_attribute("plugin_version", VERSION),
                               helper.make_attribute("plugin_namespace", NAMESPACE)])
        retyped.update({node.output[i]: dtype for i, dtype in spec.output_types})
    keep = [f for f in out.functions if f.domain != DOMAIN]
    del out.functions[:]
    out.functions.extend(keep)
    for info in list(out.graph.output) + list(out.graph.value_info):
        if info.name in retyped:
            info.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(retyped[info.name]))
    return out


def fields_in_source(path: Optional[Path] = None) -> Dict[str, List[Tuple[str, str]]]:
    """The fields each C++ creator declares: ``k<Name>Fields`` arrays (and ``// k<Name>Fields: none``) in
    ``cuda/plugins/plugin_fields.h``."""
    text = Path(path or FIELDS_HEADER).read_text()
    types = {"kINT32": "int32", "kFLOAT32": "float32"}
    out: Dict[str, List[Tuple[str, str]]] = {}
    for name, body in re.findall(r"k(\w+?)Fields\[\]\s*=\s*\{(.*?)\};", text, re.S):
        out[name] = [(f, types.get(t, t)) for f, t in
                     re.findall(r'\{\s*"(\w+)"\s*,\s*nvinfer1::PluginFieldType::(\w+)\s*\}', body)]
    for name in re.findall(r"//\s*k(\w+?)Fields:\s*none", text):
        out[name] = []
    return out


def find_library() -> Path:
    """``$SATEDGE_TRT_PLUGINS`` or the CMake build's library; :class:`UserError` saying how to build it."""
    env = os.environ.get(ENV_VAR)
    cands = [Path(env)] if env else []
    cands.append(Path(__file__).resolve().parents[2] / "cuda" / "build" / "cmake" / LIB_NAME)
    for path in cands:
        if path.is_file():
            return path
    raise UserError("%s not found (looked at %s). Build it on the TensorRT host: cmake -S cuda -B cuda/build/cmake "
                    "-DSATEDGE_BUILD_PLUGINS=ON -DTensorRT_ROOT=<prefix> && cmake --build cuda/build/cmake; or set %s"
                    % (LIB_NAME, ", ".join(map(str, cands)), ENV_VAR))


_LOADED: Dict[str, Any] = {}


def load_plugins(trt, path: Optional[Path] = None) -> Path:
    """Register the satedge plugins with ``trt``'s plugin registry (once per process); returns the library path.

    TensorRT 8.6 and later: ``IPluginRegistry.load_library`` (the library exports ``getCreators`` /
    ``getPluginCreators``); earlier: loading the library runs its static registrations.
    """
    lib = Path(path) if path is not None else find_library()
    if str(lib) in _LOADED:
        return lib
    registry = trt.get_plugin_registry()
    if hasattr(registry, "load_library"):
        handle = registry.load_library(str(lib))
        if handle is None:
            raise UserError("TensorRT %s could not load the plugin library %s (see its log)" % (trt.__version__, lib))
    else:
        handle = ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    _LOADED[str(lib)] = handle
    return lib
