"""ONNX Runtime backend: the embedded default runner (CPU unless other providers are asked for).

``onnxruntime`` is imported only in ``activate()``, so importing this module costs nothing.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from engines.errors import RunnerError
from engines.runners.base import InputSpec, Runner

# ONNX Runtime type strings to NumPy dtype names.
ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
    "tensor(int32)": "int32", "tensor(uint32)": "uint32", "tensor(int64)": "int64", "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX model with ONNX Runtime.

    Parameters
    ----------
    model : str, os.PathLike or bytes
        Path of an ``.onnx`` file, or the serialized model bytes.
    providers : sequence of str, optional
        Execution providers in order of preference; ``("CPUExecutionProvider",)`` by default.
    intra_op_threads : int, optional
        Threads ONNX Runtime may use inside one operator (its default when None).
    name : str, optional
        A readable name for logs and errors.
    """

    def __init__(self, model: Union[str, bytes, "os.PathLike[str]"], providers: Optional[Sequence[str]] = None,
                 intra_op_threads: Optional[int] = None, name: Optional[str] = None) -> None:
        super().__init__(name)
        if not isinstance(model, (bytes, bytearray)):
            model = os.fspath(model)
        if intra_op_threads is not None and (not isinstance(intra_op_threads, int) or intra_op_threads < 1):
            raise RunnerError("intra_op_threads must be a positive int or None, got %r." % (intra_op_threads,))
        self.model = model
        self.providers = tuple(providers) if providers else DEFAULT_PROVIDERS
        self.intra_op_threads = intra_op_threads
        self._session: Any = None
        self._output_names: List[str] = []

    def _activate_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RunnerError("runner %r needs onnxruntime, which is not installed. Install it with "
                              "'pip install satedge[onboard]' (or 'pip install onnxruntime')." % self.name) from None
        available = ort.get_available_providers()
        unknown = [p for p in self.providers if p not in available]
        if unknown:
            raise RunnerError("runner %r: execution provider(s) %s are not available in this onnxruntime; "
                              "available: %s. Pass providers from that list." % (self.name, unknown, available))
        if isinstance(self.model, str) and not os.path.isfile(self.model):
            raise RunnerError("runner %r: no ONNX model at %s. Pass the path of an .onnx file or its bytes."
                              % (self.name, self.model))
        options = ort.SessionOptions()
        if self.intra_op_threads is not None:
            options.intra_op_num_threads = self.intra_op_threads
        try:
            self._session = ort.InferenceSession(bytes(self.model) if isinstance(self.model, bytearray)
                                                 else self.model, sess_options=options,
                                                 providers=list(self.providers))
        except Exception as exc:  # onnxruntime raises its own exception types for bad models
            raise RunnerError("runner %r: ONNX Runtime could not load the model (%s: %s). Check that it is a "
                              "valid ONNX file for this onnxruntime's opset." % (self.name, type(exc).__name__, exc)
                              ) from exc
        self._output_names = [o.name for o in self._session.get_outputs()]

    def _input_spec_impl(self) -> InputSpec:
        spec = {}
        for arg in self._session.get_inputs():
            dtype = ORT_DTYPES.get(arg.type, arg.type)
            shape = tuple(d if isinstance(d, int) or d is None else str(d) for d in arg.shape)
            spec[arg.name] = (dtype, shape)
        return spec

    def _infer_impl(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        values = self._session.run(self._output_names, dict(inputs))
        return dict(zip(self._output_names, values))

    def _deactivate_impl(self) -> None:
        self._session = None
        self._output_names = []

    @property
    def providers_in_use(self) -> List[str]:
        """Providers the active session really uses (empty when not active)."""
        return list(self._session.get_providers()) if self._session is not None else []
