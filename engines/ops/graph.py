"""Building the ONNX-function form of a custom op and running it with ONNX Runtime on the CPU.

Every op in :mod:`engines.ops` is written once as an ONNX ``FunctionProto`` of standard operators
(opset 13, the newest the TX2's TensorRT 8.2 parser reads) in the domain :data:`DOMAIN`. A model
calls it with one node (``satedge.ops::<Name>``), which ONNX Runtime expands from the function
body and which a TensorRT build can map to the op's plugin. Shapes and parameters (window sizes,
band counts, ``k``) are fixed when the function is built and appear as constants in its body.

Model-local functions need IR version 8; :func:`function_model` with ``inline=True`` writes the
body straight into the graph instead (IR version 7) for parsers older than that.

``onnx`` and ``onnxruntime`` are imported inside the functions, never at module level.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from engines.errors import UserError

DOMAIN = "satedge.ops"
OPSET = 13
_FUNCTION_IR = 8
_INLINE_IR = 7

# (name, numpy dtype or onnx elem type name, shape) of a graph input or output.
TensorSig = Tuple[str, str, Sequence]


class Body:
    """Collects the nodes of a function body, naming intermediate values uniquely.

    Parameters
    ----------
    prefix : str
        Prefix of generated value names.
    """

    def __init__(self, prefix: str = "t") -> None:
        self.nodes: List = []
        self._prefix, self._n = prefix, 0

    def name(self, hint: str = "") -> str:
        """A fresh value name."""
        self._n += 1
        return "%s%d_%s" % (self._prefix, self._n, hint) if hint else "%s%d" % (self._prefix, self._n)

    def op(self, op_type: str, inputs: Sequence[str], hint: str = "", n_out: int = 1, out: str = "", **attrs):
        """Append one node; returns its output name (or the tuple of names when ``n_out > 1``).

        ``out`` names the (single) output exactly, for the function's outputs.
        """
        from onnx import helper
        outs = [out] if out else [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else tuple(outs)

    def const(self, value, dtype=None, hint: str = "c") -> str:
        """A ``Constant`` node holding ``value`` (numpy array or scalar)."""
        from onnx import helper, numpy_helper
        arr = np.asarray(value, dtype=dtype)
        out = self.name(hint)
        self.nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(arr, out)))
        return out

    def ints(self, values: Sequence[int], hint: str = "i") -> str:
        """An int64 1-D constant (shapes, axes, slice bounds)."""
        return self.const(np.asarray(list(values), dtype=np.int64), hint=hint)

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int], hint: str = "",
              out: str = "") -> str:
        """``Slice`` with constant bounds (negative ends count from the end, as in numpy)."""
        return self.op("Slice", [x, self.ints(starts), self.ints(ends), self.ints(axes)], hint or "slice", out=out)


def make_function(name: str, inputs: Sequence[str], outputs: Sequence[str], body: Body, doc: str = "",
                  fields: Optional[Mapping[str, object]] = None):
    """A ``FunctionProto`` ``DOMAIN::name`` over standard opset-13 operators.

    ``fields`` are the op's parameters as the TensorRT plugin takes them (int -> INT, float ->
    FLOAT attributes, in order): the function declares them with their values as defaults and
    :func:`function_model` repeats them on the call node. The body does not read them (its
    constants are baked in); they are for :mod:`engines.ops.trt_plugins`.
    """
    from onnx import helper
    fn = helper.make_function(DOMAIN, name, list(inputs), list(outputs), body.nodes,
                              [helper.make_opsetid("", OPSET)])
    fn.doc_string = doc
    for key, value in (fields or {}).items():
        fn.attribute_proto.append(helper.make_attribute(key, float(value) if isinstance(value, float) else int(value)))
    return fn


def _value_info(sig: TensorSig):
    from onnx import helper
    name, dtype, shape = sig
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return helper.make_tensor_value_info(name, elem, list(shape))


def function_model(fn, inputs: Sequence[TensorSig], outputs: Sequence[TensorSig], inline: bool = False):
    """A ``ModelProto`` whose graph is one call of ``fn`` (or, with ``inline``, its body).

    Parameters
    ----------
    fn : onnx.FunctionProto
        From :func:`make_function`.
    inputs, outputs : sequence of (name, dtype, shape)
        Graph inputs and outputs, in the function's order; names may differ from the function's.
    inline : bool
        Write the body into the graph (IR version 7, no local function) instead of calling it.
    """
    from onnx import checker, helper
    in_names, out_names = [s[0] for s in inputs], [s[0] for s in outputs]
    if len(in_names) != len(fn.input) or len(out_names) != len(fn.output):
        raise UserError("function %s takes %d inputs and gives %d outputs; got %d and %d names"
                        % (fn.name, len(fn.input), len(fn.output), len(in_names), len(out_names)))
    if inline:
        rename = dict(zip(fn.input, in_names))
        rename.update(zip(fn.output, out_names))
        nodes = []
        for node in fn.node:
            copy = helper.make_node(node.op_type, [rename.get(i, i) for i in node.input],
                                    [rename.get(o, o) for o in node.output], domain=node.domain)
            copy.attribute.extend(node.attribute)
            nodes.append(copy)
        graph = helper.make_graph(nodes, fn.name, [_value_info(s) for s in inputs], [_value_info(s) for s in outputs])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = _INLINE_IR
    else:
        call = helper.make_node(fn.name, in_names, out_names, domain=DOMAIN)
        call.attribute.extend(fn.attribute_proto)
        graph = helper.make_graph([call], fn.name, [_value_info(s) for s in inputs], [_value_info(s) for s in outputs])
        model = helper.make_model(graph, functions=[fn],
                                  opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)])
        model.ir_version = _FUNCTION_IR
    checker.check_model(model)
    return model


def run_model(model, feeds: Mapping[str, np.ndarray], threads: int = 1) -> Dict[str, np.ndarray]:
    """Run a model with ONNX Runtime's CPU provider; returns the outputs by name."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {k: np.ascontiguousarray(v) for k, v in feeds.items()})))
