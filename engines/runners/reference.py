"""Reference backend: runs a bundle whose model is one registered numpy function (a custom-op reference).

What it supports, honestly: a bundle whose manifest names a reference op,

    "reference_op": {"name": "affine_bands", "attrs": {"scale": [...], "offset": [...]}}

(or just ``"reference_op": "name"``), where ``name`` was registered with ``register_reference_op``.
The function receives the input arrays by name and the ``attrs`` and returns the outputs by name;
it is the numpy reference that the ONNX-function form (run by ONNX Runtime), the CUDA kernel and
the TensorRT plugin of a custom op are compared against (``engines.compare``). It does not
interpret ONNX graphs: a bundle without ``reference_op`` is refused with a ``RunnerError``.

Built in: ``affine_bands`` (per-band ``x * scale[c] + offset[c]`` over axis 1, the input
normalization of ``docs/bundle.md``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np

from engines.bundle import Bundle
from engines.errors import RunnerError
from engines.runners.base import InputSpec, Runner

ReferenceOp = Callable[..., Dict[str, np.ndarray]]
_OPS: Dict[str, ReferenceOp] = {}


def register_reference_op(name: str, fn: Optional[ReferenceOp] = None):
    """Register ``fn(inputs: dict, **attrs) -> dict`` under ``name``; usable as a decorator."""
    def add(func: ReferenceOp) -> ReferenceOp:
        if name in _OPS and _OPS[name] is not func:
            raise RunnerError("reference op %r is already registered (%s); pick another name." % (name, _OPS[name]))
        _OPS[name] = func
        return func
    return add(fn) if fn is not None else add


def reference_ops() -> Dict[str, ReferenceOp]:
    """Return the registered reference ops by name (a copy)."""
    return dict(_OPS)


@register_reference_op("affine_bands")
def affine_bands(inputs: Mapping[str, np.ndarray], scale, offset, input_name: str = "x", output_name: str = "y",
                 dtype: str = "float32") -> Dict[str, np.ndarray]:
    """Per-band affine map over axis 1: ``y[:, c] = x[:, c] * scale[c] + offset[c]``, computed in float64."""
    x = np.asarray(inputs[input_name], dtype=np.float64)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = x * np.asarray(scale, np.float64).reshape(shape) + np.asarray(offset, np.float64).reshape(shape)
    return {output_name: y.astype(dtype)}


class ReferenceRunner(Runner):
    """Runs a bundle's registered numpy reference op.

    Parameters
    ----------
    bundle : Bundle
        An opened bundle whose manifest has ``reference_op``.
    name : str, optional
        A readable name for logs and errors.
    """

    def __init__(self, bundle: Bundle, name: Optional[str] = None) -> None:
        super().__init__(name)
        self.bundle = bundle
        self._op: Optional[ReferenceOp] = None
        self._attrs: Dict[str, Any] = {}

    def _activate_impl(self) -> None:
        spec = self.bundle.manifest.extra.get("reference_op")
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise RunnerError("runner %r: bundle %s names no reference op; the reference backend runs only bundles "
                              "whose manifest has \"reference_op\": {\"name\": ..., \"attrs\": {...}} with a registered "
                              "op (%s). Use backend='onnxrt' for plain ONNX models." %
                              (self.name, self.bundle.manifest.name, ", ".join(sorted(_OPS)) or "none"))
        if spec["name"] not in _OPS:
            raise RunnerError("runner %r: reference op %r is not registered; registered: %s. Import the module that "
                              "registers it first." % (self.name, spec["name"], ", ".join(sorted(_OPS))))
        attrs = spec.get("attrs", {})
        if not isinstance(attrs, dict):
            raise RunnerError("runner %r: reference_op attrs must be an object, got %r." % (self.name, attrs))
        self._op, self._attrs = _OPS[spec["name"]], dict(attrs)

    def _input_spec_impl(self) -> InputSpec:
        return {s.name: (s.dtype, tuple(d if isinstance(d, int) else None for d in s.shape))
                for s in self.bundle.manifest.inputs}

    def _infer_impl(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        out = self._op(dict(inputs), **self._attrs)
        expected = [s.name for s in self.bundle.manifest.outputs]
        if not isinstance(out, dict) or sorted(out) != sorted(expected):
            raise RunnerError("runner %r: reference op returned %s but the manifest's outputs are %s; fix the op or "
                              "its attrs." % (self.name, sorted(out) if isinstance(out, dict) else type(out).__name__,
                                              expected))
        return {name: np.asarray(out[name]) for name in expected}

    def _deactivate_impl(self) -> None:
        self._op, self._attrs = None, {}
