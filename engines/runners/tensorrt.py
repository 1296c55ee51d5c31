"""TensorRT backend: runs a bundle's plan on a Jetson or a GPU host (TensorRT 8.2 to 11).

Nothing happens before ``activate()``. Then, in order: check that a GPU is present (without
TensorRT), import ``tensorrt``, open the device-buffer library (``devicebuf``), read the device's
SM, pick the plan for (SM, TensorRT version, precision, DLA core) from the manifest, check it with
``check_plan_compatible`` -- first the manifest entry, then the plan header -- and only then create
the TensorRT runtime and deserialize. Engines with the named-tensor API (TensorRT 8.5 and later:
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) use it; TensorRT 8.2/8.4 (TX2)
use the bindings API (``set_binding_shape``, ``execute_async_v2``). Device buffers grow on demand
and are kept between calls.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from engines.bundle import Bundle
from engines.errors import RunnerError, UserError
from engines.ops.trt_plugins import load_plugins, uses_satedge_ops
from engines.plan import PlanEntry, check_plan_compatible, normalize_sm, read_plan_header, select_plan
from engines.runners.base import InputSpec, Runner
from engines.runners.devicebuf import DeviceMemory, gpu_present, open_device_memory

NO_TENSORRT = ("%s run on a Jetson or a GPU workstation with TensorRT; this host has none (%s). Run the ONNX "
               "model with backend='onnxrt' here, or use a lab unit of the target.")


def import_tensorrt(purpose: str = "TensorRT plans") -> Any:
    """Import ``tensorrt`` after checking for a GPU (TensorRT's lean runtime aborts the process without one).

    Parameters
    ----------
    purpose : str, optional
        What needs TensorRT, for the message (``"TensorRT builds"``, ``"TensorRT plans"``).

    Raises
    ------
    UserError
        With ``NO_TENSORRT`` and the reason (no GPU, or the module is not installed).
    """
    present, why = gpu_present()
    if not present:
        raise UserError(NO_TENSORRT % (purpose, why))
    try:
        import tensorrt
    except ImportError as exc:
        raise UserError(NO_TENSORRT % (purpose, "GPU: %s; but 'import tensorrt' failed: %s" % (why, exc))) from None
    return tensorrt


class TensorRTRunner(Runner):
    """Runs the TensorRT plan of a bundle that fits this device.

    Parameters
    ----------
    bundle : Bundle
        An opened (and verified) bundle with ``plans`` in its manifest.
    plan : str, optional
        The plan file to use (``plans/...``); by default the one that fits this device is chosen.
    precision : str, optional
        Only consider plans of this precision.
    dla_core : int, optional
        Only consider plans for this DLA core (None: GPU plans).
    buffer_library : str, optional
        ``"cuda-python"`` or ``"pycuda"``; by default the first one that imports.
    device : int, optional
        CUDA device index.
    name : str, optional
        A readable name for logs and errors.
    """

    def __init__(self, bundle: Bundle, plan: Optional[str] = None, precision: Optional[str] = None,
                 dla_core: Optional[int] = None, buffer_library: Optional[str] = None, device: int = 0,
                 name: Optional[str] = None) -> None:
        super().__init__(name)
        self.bundle, self.plan_file, self.precision, self.dla_core = bundle, plan, precision, dla_core
        self.buffer_library, self.device = buffer_library, device
        self.entry: Optional[PlanEntry] = None
        self._trt: Any = None
        self._mem: Optional[DeviceMemory] = None
        self._runtime = self._engine = self._context = None
        self._io: List[Tuple[str, bool, np.dtype, Tuple[int, ...], int]] = []
        self._buffers: Dict[str, Tuple[int, int]] = {}
        self._named = False

    def _choose(self, trt_version: str, sm: str) -> PlanEntry:
        plans = self.bundle.manifest.plans or []
        if self.plan_file is None:
            return select_plan(plans, trt_version, sm, self.precision, self.dla_core)
        for entry in plans:
            if entry.file == self.plan_file:
                check_plan_compatible(entry, trt_version, sm)
                return entry
        raise RunnerError("runner %r: bundle has no plan %r; its plans are %s." %
                          (self.name, self.plan_file, [p.file for p in plans] or "none"))

    def _activate_impl(self) -> None:
        trt = import_tensorrt()
        self._mem = open_device_memory(self.buffer_library, self.device)
        try:
            sm = normalize_sm(self._mem.compute_capability())
            entry = self._choose(trt.__version__, sm)
            data = self.bundle.file_path(entry.file).read_bytes()
            check_plan_compatible(entry, trt.__version__, sm, read_plan_header(data))
            if uses_satedge_ops(self.bundle.model_path.read_bytes()):
                load_plugins(trt)                    # the plan holds satedge plugin layers
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            if entry.dla_core is not None:
                self._runtime.DLA_core = entry.dla_core
            if entry.version_compatible:  # the plan carries TensorRT's lean runtime; the bundle is signed
                self._runtime.engine_host_code_allowed = True
            self._engine = self._runtime.deserialize_cuda_engine(data)
            if self._engine is None:
                raise RunnerError("runner %r: TensorRT %s could not deserialize %s (%s); see the TensorRT log above."
                                  % (self.name, trt.__version__, entry.file, entry.describe()))
            self._context = self._engine.create_execution_context()
            self._trt, self.entry = trt, entry
            self._named = hasattr(self._engine, "num_io_tensors") and hasattr(self._context, "set_input_shape")
            self._io = self._describe_io()
        except BaseException:
            self._release()
            raise

    def _describe_io(self) -> List[Tuple[str, bool, np.dtype, Tuple[int, ...], int]]:
        trt, engine, io = self._trt, self._engine, []
        if self._named:
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                io.append((name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                           np.dtype(trt.nptype(engine.get_tensor_dtype(name))), tuple(engine.get_tensor_shape(name)), i))
        else:
            for i in range(engine.num_bindings):
                io.append((engine.get_binding_name(i), engine.binding_is_input(i),
                           np.dtype(trt.nptype(engine.get_binding_dtype(i))), tuple(engine.get_binding_shape(i)), i))
        return io

    def _input_spec_impl(self) -> InputSpec:
        return {n: (d.name, tuple(None if s < 0 else s for s in shape)) for n, is_in, d, shape, _ in self._io if is_in}

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if nbytes > size:
            if ptr:
                self._mem.free(ptr)
            ptr, size = self._mem.alloc(nbytes), nbytes
            self._buffers[name] = (ptr, size)
        return ptr

    def _infer_impl(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        ctx, mem, held = self._context, self._mem, []
        bindings = [0] * len(self._io)
        for name, is_input, dtype, shape, index in self._io:
            if not is_input:
                continue
            arr = np.ascontiguousarray(inputs[name], dtype=dtype)
            held.append(arr)
            ptr = self._buffer(name, arr.nbytes)
            if self._named:
                ctx.set_input_shape(name, arr.shape)
                ctx.set_tensor_address(name, ptr)
            elif any(d < 0 for d in shape):
                ctx.set_binding_shape(index, arr.shape)
            bindings[index] = ptr
            mem.htod(ptr, arr)
        outputs: Dict[str, Tuple[np.ndarray, int]] = {}
        for name, is_input, dtype, _, index in self._io:
            if is_input:
                continue
            shape = tuple(ctx.get_tensor_shape(name) if self._named else ctx.get_binding_shape(index))
            host = np.empty(shape, dtype)
            ptr = self._buffer(name, host.nbytes)
            if self._named:
                ctx.set_tensor_address(name, ptr)
            bindings[index] = ptr
            outputs[name] = (host, ptr)
        ok = (ctx.execute_async_v3(mem.stream_handle) if self._named
              else ctx.execute_async_v2(bindings=bindings, stream_handle=mem.stream_handle))
        if not ok:
            mem.synchronize()
            raise RunnerError("runner %r: TensorRT execution failed for %s; see the TensorRT log above."
                              % (self.name, self.entry.describe() if self.entry else "the plan"))
        for host, ptr in outputs.values():
            mem.dtoh(host, ptr)
        mem.synchronize()
        del held
        return {name: host for name, (host, _) in outputs.items()}

    def _release(self) -> None:
        self._context = self._engine = self._runtime = None
        if self._mem is not None:
            self._mem.close()
        self._mem, self._buffers, self._io = None, {}, []

    def _deactivate_impl(self) -> None:
        self._release()
