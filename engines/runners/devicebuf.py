"""One small device-buffer abstraction for the TensorRT runner: cuda-python, or pycuda on TX2.

JetPack 4 (TX2, Python 3.6) has no cuda-python, so the runner talks to the GPU through
``DeviceMemory``, which has two implementations chosen when a runner activates
(``open_device_memory``): ``CudaPythonMemory`` (``cuda.bindings.runtime``, or the older
``cuda.cudart``) and ``PycudaMemory`` (``pycuda.driver`` on the device's primary context, which is
the context TensorRT uses). Importing this module imports neither library and touches no GPU.

``gpu_present`` tells whether this host has an NVIDIA GPU without initialising CUDA or TensorRT
(``nvidia-smi``, or the Tegra GPU device nodes on a Jetson), so tests can skip with a reason.
"""
from __future__ import annotations

import abc
import os
import shutil
import subprocess
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from engines.errors import RunnerError

LIBRARIES = ("cuda-python", "pycuda")
_TEGRA_NODES = ("/dev/nvhost-gpu", "/dev/nvgpu/igpu0/ctrl", "/etc/nv_tegra_release")


def gpu_present() -> Tuple[bool, str]:
    """Return ``(True, what)`` if an NVIDIA GPU is visible, else ``(False, why not)``; creates no CUDA context."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        except (OSError, subprocess.SubprocessError) as exc:
            return False, "nvidia-smi failed: %s" % exc
        text = out.stdout.decode("utf-8", "replace").strip()
        if out.returncode == 0 and "GPU" in text:
            return True, text.splitlines()[0]
        return False, "nvidia-smi lists no GPU (exit %d)" % out.returncode
    for node in _TEGRA_NODES:
        if os.path.exists(node):
            return True, "Jetson integrated GPU (%s)" % node
    return False, "no nvidia-smi and no Jetson GPU device node on this host"


class DeviceMemory(abc.ABC):
    """Device allocations, one stream, and copies between numpy arrays and device pointers."""

    library = ""

    @abc.abstractmethod
    def alloc(self, nbytes: int) -> int:
        """Allocate ``nbytes`` on the device and return the pointer as an int."""

    @abc.abstractmethod
    def free(self, ptr: int) -> None:
        """Free a pointer returned by ``alloc``."""

    @abc.abstractmethod
    def htod(self, ptr: int, host: np.ndarray) -> None:
        """Copy a C-contiguous host array to ``ptr`` on the stream."""

    @abc.abstractmethod
    def dtoh(self, host: np.ndarray, ptr: int) -> None:
        """Copy from ``ptr`` into a C-contiguous host array on the stream."""

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Wait for everything queued on the stream."""

    @property
    @abc.abstractmethod
    def stream_handle(self) -> int:
        """The CUDA stream as an int, as TensorRT's ``execute_async_*`` wants it."""

    @abc.abstractmethod
    def compute_capability(self) -> Tuple[int, int]:
        """The device's (major, minor) compute capability."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free everything still allocated and release the stream and context."""


class CudaPythonMemory(DeviceMemory):
    """``DeviceMemory`` on NVIDIA cuda-python's runtime bindings."""

    library = "cuda-python"

    def __init__(self, device: int = 0) -> None:
        try:
            from cuda.bindings import runtime as rt
        except ImportError:
            from cuda import cudart as rt  # cuda-python before 12.6 (JetPack 5/6 wheels)
        self._rt, self._device, self._ptrs = rt, device, set()
        self._check(rt.cudaSetDevice(device), "cudaSetDevice")
        self._stream = self._check(rt.cudaStreamCreate(), "cudaStreamCreate")

    def _check(self, result: Sequence[Any], what: str) -> Any:
        err, rest = result[0], result[1:]
        if err != self._rt.cudaError_t.cudaSuccess:
            raise RunnerError("CUDA %s failed: %s. Check that the GPU is free and the driver matches." % (what, err))
        return rest[0] if len(rest) == 1 else None

    def alloc(self, nbytes: int) -> int:
        ptr = int(self._check(self._rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc(%d)" % nbytes))
        self._ptrs.add(ptr)
        return ptr

    def free(self, ptr: int) -> None:
        if ptr in self._ptrs:
            self._ptrs.discard(ptr)
            self._check(self._rt.cudaFree(ptr), "cudaFree")

    def _copy(self, dst: int, src: int, nbytes: int, kind: Any) -> None:
        self._check(self._rt.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream), "cudaMemcpyAsync")

    def htod(self, ptr: int, host: np.ndarray) -> None:
        self._copy(ptr, host.ctypes.data, host.nbytes, self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice)

    def dtoh(self, host: np.ndarray, ptr: int) -> None:
        self._copy(host.ctypes.data, ptr, host.nbytes, self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)

    def synchronize(self) -> None:
        self._check(self._rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    @property
    def stream_handle(self) -> int:
        return int(self._stream)

    def compute_capability(self) -> Tuple[int, int]:
        prop = self._check(self._rt.cudaGetDeviceProperties(self._device), "cudaGetDeviceProperties")
        return int(prop.major), int(prop.minor)

    def close(self) -> None:
        for ptr in list(self._ptrs):
            self.free(ptr)
        if self._stream is not None:
            self._rt.cudaStreamDestroy(self._stream)
            self._stream = None


class PycudaMemory(DeviceMemory):
    """``DeviceMemory`` on pycuda (TX2 / JetPack 4), on the device's primary context."""

    library = "pycuda"

    def __init__(self, device: int = 0) -> None:
        import pycuda.driver as drv

        drv.init()
        self._drv, self._dev = drv, drv.Device(device)
        self._ctx = self._dev.retain_primary_context()
        self._ctx.push()
        self._stream, self._allocs = drv.Stream(), {}

    def alloc(self, nbytes: int) -> int:
        mem = self._drv.mem_alloc(max(int(nbytes), 1))
        self._allocs[int(mem)] = mem
        return int(mem)

    def free(self, ptr: int) -> None:
        mem = self._allocs.pop(ptr, None)
        if mem is not None:
            mem.free()

    def htod(self, ptr: int, host: np.ndarray) -> None:
        self._drv.memcpy_htod_async(ptr, host, self._stream)

    def dtoh(self, host: np.ndarray, ptr: int) -> None:
        self._drv.memcpy_dtoh_async(host, ptr, self._stream)

    def synchronize(self) -> None:
        self._stream.synchronize()

    @property
    def stream_handle(self) -> int:
        return int(self._stream.handle)

    def compute_capability(self) -> Tuple[int, int]:
        return tuple(self._dev.compute_capability())  # type: ignore[return-value]

    def close(self) -> None:
        for ptr in list(self._allocs):
            self.free(ptr)
        if self._ctx is not None:
            self._ctx.pop()
            self._ctx = None


def open_device_memory(prefer: Optional[str] = None, device: int = 0) -> DeviceMemory:
    """Open ``DeviceMemory`` with ``prefer`` (``"cuda-python"`` or ``"pycuda"``), else the first that imports.

    Raises
    ------
    RunnerError
        If neither library is installed (or the preferred one is not), saying what to install.
    """
    if prefer is not None and prefer not in LIBRARIES:
        raise RunnerError("unknown device-buffer library %r; use one of %s." % (prefer, ", ".join(LIBRARIES)))
    order = [prefer] if prefer else list(LIBRARIES)
    missing = []
    for lib in order:
        try:
            return CudaPythonMemory(device) if lib == "cuda-python" else PycudaMemory(device)
        except ImportError as exc:
            missing.append("%s (%s)" % (lib, exc))
    raise RunnerError("the TensorRT runner needs cuda-python (JetPack 5 and later: 'pip install cuda-python') or "
                      "pycuda (JetPack 4 / TX2: 'pip3 install pycuda'); not importable here: %s." % "; ".join(missing))
