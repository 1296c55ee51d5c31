"""The ``Runner`` protocol every backend implements (ONNX Runtime, TensorRT, numpy reference).

Subclasses override only the ``_*_impl`` hooks. The base class owns the lifecycle (nothing is
allocated before ``activate()``), the context manager, and the input checks, so every backend
rejects bad inputs with the same helpful ``RunnerError``.
"""
from __future__ import annotations

import abc
import itertools
import time
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np

from engines.errors import RunnerError

Dim = Union[int, str, None]
InputSpec = Dict[str, Tuple[str, Tuple[Dim, ...]]]
_COUNTER = itertools.count()


def _fmt_spec(spec: InputSpec) -> str:
    return ", ".join("%s: %s%s" % (n, d, tuple(s)) for n, (d, s) in spec.items()) or "(none)"


def _fmt_given(inputs: Mapping[str, object]) -> str:
    parts = []
    for n, v in inputs.items():
        if isinstance(v, np.ndarray):
            parts.append("%s: %s%s" % (n, v.dtype, tuple(v.shape)))
        else:
            parts.append("%s: %s" % (n, type(v).__name__))
    return ", ".join(parts) or "(none)"


class Runner(abc.ABC):
    """Runs one engine: ``activate()``, ``infer(inputs)`` any number of times, ``deactivate()``.

    Use it as a context manager (``with runner: runner.infer(...)``) to activate and always
    deactivate.

    Parameters
    ----------
    name : str, optional
        A readable name for logs and errors; defaults to the class name and a counter.
    """

    def __init__(self, name: Optional[str] = None) -> None:
        self.name = name or "%s-%d" % (type(self).__name__, next(_COUNTER))
        self._active = False
        self._spec: Optional[InputSpec] = None
        self.last_infer_s: Optional[float] = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def is_active(self) -> bool:
        """Whether ``activate()`` has run and ``deactivate()`` has not."""
        return self._active

    def activate(self) -> None:
        """Load the engine and allocate what it needs; a no-op if already active."""
        if self._active:
            return
        self._activate_impl()
        self._active = True
        self._spec = None

    def deactivate(self) -> None:
        """Free everything ``activate()`` allocated; a no-op if not active."""
        if not self._active:
            return
        try:
            self._deactivate_impl()
        finally:
            self._active = False
            self._spec = None

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.deactivate()

    def _require_active(self, what: str) -> None:
        if not self._active:
            raise RunnerError("runner %r: %s() called before activate(). Call runner.activate() first, or use "
                              "'with runner:'." % (self.name, what))

    # ------------------------------------------------------------------- queries
    def input_spec(self) -> InputSpec:
        """Return ``{name: (dtype name, shape)}``; dynamic dims are ``None`` or a name such as ``"N"``."""
        self._require_active("input_spec")
        if self._spec is None:
            self._spec = dict(self._input_spec_impl())
        return dict(self._spec)

    def infer(self, inputs: Mapping[str, np.ndarray], check_inputs: bool = True) -> Dict[str, np.ndarray]:
        """Run the engine on ``inputs`` and return its outputs by name.

        Parameters
        ----------
        inputs : dict of str to numpy.ndarray
            One array per input, with the dtype and shape of ``input_spec()``.
        check_inputs : bool, optional
            Check names, dtypes and shapes first (default). Turn off only on a hot path whose
            inputs were already checked.

        Raises
        ------
        RunnerError
            If the runner is not active or the inputs do not match the spec.
        """
        self._require_active("infer")
        if check_inputs:
            self.check_inputs(inputs)
        start = time.perf_counter()
        outputs = self._infer_impl(inputs)
        self.last_infer_s = time.perf_counter() - start
        return outputs

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Raise ``RunnerError`` listing what was given and what is expected if ``inputs`` do not fit."""
        spec = self.input_spec()
        if not isinstance(inputs, Mapping):
            raise RunnerError("runner %r: inputs must be a dict of name to numpy array, got %s. Expected: %s."
                              % (self.name, type(inputs).__name__, _fmt_spec(spec)))
        missing = [n for n in spec if n not in inputs]
        unexpected = [n for n in inputs if n not in spec]
        if missing or unexpected:
            raise RunnerError("runner %r: input names do not match (missing: %s; unexpected: %s). Given: %s. "
                              "Expected: %s." % (self.name, missing or "none", unexpected or "none",
                                                 _fmt_given(inputs), _fmt_spec(spec)))
        for name, (dtype, shape) in spec.items():
            value = inputs[name]
            if not isinstance(value, np.ndarray):
                raise RunnerError("runner %r: input %r is a %s, not a numpy array. Pass np.asarray(value, dtype=%r)."
                                  % (self.name, name, type(value).__name__, dtype))
            if value.dtype != np.dtype(dtype):
                raise RunnerError("runner %r: input %r has dtype %s but the engine expects %s. Cast it with "
                                  ".astype(%r). Expected: %s." % (self.name, name, value.dtype, dtype, dtype,
                                                                   _fmt_spec(spec)))
            bad = value.ndim != len(shape) or any(
                isinstance(d, int) and d >= 0 and d != n for d, n in zip(shape, value.shape))
            if bad:
                raise RunnerError("runner %r: input %r has shape %s but the engine expects %s (None or a name is "
                                  "a dynamic dim). Reshape it. Given: %s." % (self.name, name, tuple(value.shape),
                                                                              tuple(shape), _fmt_given(inputs)))

    def __repr__(self) -> str:
        return "%s(name=%r, active=%s)" % (type(self).__name__, self.name, self._active)

    # --------------------------------------------------------------------- hooks
    @abc.abstractmethod
    def _activate_impl(self) -> None:
        """Load the engine and allocate its resources."""

    @abc.abstractmethod
    def _infer_impl(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run on already-checked inputs; return outputs by name."""

    @abc.abstractmethod
    def _deactivate_impl(self) -> None:
        """Free what ``_activate_impl`` allocated."""

    @abc.abstractmethod
    def _input_spec_impl(self) -> InputSpec:
        """Return ``{name: (dtype name, shape)}`` of the loaded engine."""
