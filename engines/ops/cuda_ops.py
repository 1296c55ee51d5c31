"""The custom ops on numpy arrays: CUDA kernels where a GPU exists, the references elsewhere.

:class:`CudaOps` copies the inputs to the device, runs the kernel on one stream, copies the
outputs back and waits (device memory through :mod:`engines.runners.devicebuf`: cuda-python, or
pycuda on TX2; :class:`TorchMemory` where only a CUDA build of torch exists). :class:`ReferenceOps`
has the same methods on the numpy references. :func:`open_ops` picks one::

    ops, why = open_ops()            # CudaOps on a GPU host with the library built, else ReferenceOps
    tile = ops.preprocess_u16(frame, window=(0, 0, 256, 256), dtype="float16")

Both give the same results: bit for bit for preprocessing, cloud fraction and the NSI scores and
indices; to float32 rounding for RX. No GPU library is imported before :class:`CudaOps` is built.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from engines.errors import SatedgeError, UserError
from engines.ops import cloud_fraction as _cf
from engines.ops import nsi as _nsi
from engines.ops import preprocess as _pp
from engines.ops import rx as _rx
from engines.ops.cuda_lib import KernelLibrary, load
from engines.runners.devicebuf import DeviceMemory, gpu_present, open_device_memory


class TorchMemory(DeviceMemory):
    """``DeviceMemory`` on torch.cuda (current device and stream), for hosts without cuda-python."""

    library = "torch"

    def __init__(self, device: int = 0) -> None:
        import torch
        if not torch.cuda.is_available():
            raise UserError("torch %s has no usable CUDA device" % torch.__version__)
        self._torch, self._device, self._buffers = torch, torch.device("cuda", device), {}

    def alloc(self, nbytes: int) -> int:
        t = self._torch.empty(max(int(nbytes), 1), dtype=self._torch.uint8, device=self._device)
        self._buffers[t.data_ptr()] = t
        return t.data_ptr()

    def free(self, ptr: int) -> None:
        self._buffers.pop(ptr, None)

    def htod(self, ptr: int, host: np.ndarray) -> None:
        src = self._torch.from_numpy(np.ascontiguousarray(host).reshape(-1).view(np.uint8))
        self._buffers[ptr][:src.numel()].copy_(src)

    def dtoh(self, host: np.ndarray, ptr: int) -> None:
        flat = host.reshape(-1).view(np.uint8)
        flat[:] = self._buffers[ptr][:flat.size].cpu().numpy()

    def synchronize(self) -> None:
        self._torch.cuda.synchronize(self._device)

    @property
    def stream_handle(self) -> int:
        return int(self._torch.cuda.current_stream(self._device).cuda_stream)

    def compute_capability(self) -> Tuple[int, int]:
        return tuple(self._torch.cuda.get_device_capability(self._device))  # type: ignore[return-value]

    def close(self) -> None:
        self._buffers.clear()


def open_memory(device: int = 0) -> DeviceMemory:
    """cuda-python or pycuda device memory, else torch.cuda; :class:`UserError` naming all three if none works."""
    try:
        return open_device_memory(device=device)
    except SatedgeError as first:
        try:
            return TorchMemory(device)
        except (ImportError, SatedgeError) as second:
            raise UserError("no device-memory library: %s; torch: %s" % (first, second)) from second


class CudaOps:
    """The ops on numpy arrays through the CUDA kernels (copy in, launch, copy out, wait).

    Parameters
    ----------
    lib : KernelLibrary, optional
        Loaded library (:func:`engines.ops.cuda_lib.load` when omitted).
    memory : DeviceMemory, optional
        Device memory and stream (:func:`open_memory` when omitted).
    """

    backend = "cuda"

    def __init__(self, lib: Optional[KernelLibrary] = None, memory: Optional[DeviceMemory] = None) -> None:
        self.lib = lib or load()
        self.mem = memory or open_memory()

    def _in(self, arr: np.ndarray) -> int:
        arr = np.ascontiguousarray(arr)
        ptr = self.mem.alloc(arr.nbytes)
        self.mem.htod(ptr, arr)
        return ptr

    def _run(self, launch, outputs: Sequence[np.ndarray], inputs: Sequence[np.ndarray]):
        ins = [None if a is None else self._in(a) for a in inputs]
        outs = [self.mem.alloc(o.nbytes) for o in outputs]
        try:
            launch(ins, outs, self.mem.stream_handle)
            for host, ptr in zip(outputs, outs):
                self.mem.dtoh(host, ptr)
            self.mem.synchronize()
        finally:
            for ptr in ins + outs:
                if ptr is not None:
                    self.mem.free(ptr)
        return outputs

    def _preprocess(self, packing, src, shape, window, calib, dtype):
        bands, height, width = (int(v) for v in shape)
        x0, y0, th, tw = _pp._window(window, height, width)
        cal = [None if v is None else _pp._calib(v, bands, 0.0, n) for v, n in zip(calib, ("dark", "gain", "scale",
                                                                                             "offset"))]
        out = np.empty((bands, th, tw), dtype)
        self._run(lambda i, o, s: self.lib.preprocess(packing, i[0], (bands, height, width), (x0, y0, th, tw),
                                                      i[1:], o[0], dtype, s), [out], [src] + cal)
        return out

    def preprocess_u16(self, frame, window=None, dark=None, gain=None, scale=None, offset=None, dtype="float32"):
        """As :func:`engines.ops.preprocess.preprocess_u16`."""
        frame = np.asarray(frame, dtype=np.uint16)
        return self._preprocess("u16", frame, frame.shape, window, (dark, gain, scale, offset), dtype)

    def preprocess_u12(self, packed, shape, window=None, dark=None, gain=None, scale=None, offset=None,
                       dtype="float32"):
        """As :func:`engines.ops.preprocess.preprocess_u12`."""
        return self._preprocess("u12", np.asarray(packed, np.uint8), shape, window, (dark, gain, scale, offset), dtype)

    def cloud_fraction(self, mask, tile_pixels=None):
        """As :func:`engines.ops.cloud_fraction.cloud_fraction`."""
        tiles = _cf._tiles(mask, tile_pixels).astype(np.uint8)
        out = np.empty(tiles.shape[0], np.float32)
        if out.size:
            self._run(lambda i, o, s: self.lib.cloud_fraction(i[0], tiles.shape[0], tiles.shape[1], o[0], s),
                      [out], [tiles])
        return out

    def _cube(self, cube):
        cube = _rx._cube(cube)
        return cube if cube.dtype in (np.float32, np.float16) else cube.astype(np.float32)

    def rx_global(self, cube, mean, inv_cov):
        """As :func:`engines.ops.rx.rx_global` (float32 arithmetic)."""
        cube = self._cube(cube)
        out = np.empty(cube.shape[1:], np.float32)
        self._run(lambda i, o, s: self.lib.rx_global(i[0], cube.dtype.name, cube.shape, i[1], i[2], o[0], s), [out],
                  [cube, np.asarray(mean, np.float32), np.asarray(inv_cov, np.float32)])
        return out

    def rx_local(self, cube, outer=15, inner=5, regularization=1e-3):
        """As :func:`engines.ops.rx.rx_local` (float32 arithmetic, at most 32 bands)."""
        cube = self._cube(cube)
        out = np.empty(cube.shape[1:], np.float32)
        self._run(lambda i, o, s: self.lib.rx_local(i[0], cube.dtype.name, cube.shape, outer, inner, regularization,
                                                    o[0], s), [out], [cube])
        return out

    def nsi_score(self, grad, p=3, *, beta=0.5, lam=1.0, variant="coherence"):
        """As :func:`engines.ops.nsi.nsi_score`."""
        g = _nsi._matrix(grad)
        out = np.empty(g.size, np.float32)
        self._run(lambda i, o, s: self.lib.nsi_score(i[0], *g.shape, p, beta, lam, variant, o[0], s), [out], [g])
        return out

    def nsi_sparsify(self, grad, k=None, *, ratio=None, min_keep=1, p=3, beta=0.5, lam=1.0, variant="coherence"):
        """As :func:`engines.ops.nsi.sparsify`."""
        g = _nsi._matrix(grad)
        k = _nsi.keep_count(g.size, ratio, min_keep) if k is None else int(k)
        ws = self.lib.nsi_workspace_size(*g.shape)
        workspace = self.mem.alloc(ws)
        idx, val, thr = np.empty(k, np.int32), np.empty(k, np.float32), np.empty(1, np.float32)
        try:
            self._run(lambda i, o, s: self.lib.nsi_sparsify(i[0], *g.shape, p, beta, lam, variant, k, workspace, ws,
                                                            o[0], o[1], o[2], s), [idx, val, thr], [g])
        finally:
            self.mem.free(workspace)
        return _nsi.Selection(idx.astype(np.int64), val, float(thr[0]))

    def close(self) -> None:
        """Release the device memory and stream."""
        self.mem.close()


class ReferenceOps:
    """The same methods as :class:`CudaOps` on the numpy references (any host)."""

    backend = "reference"
    preprocess_u16 = staticmethod(_pp.preprocess_u16)
    preprocess_u12 = staticmethod(_pp.preprocess_u12)
    cloud_fraction = staticmethod(_cf.cloud_fraction)
    rx_global = staticmethod(_rx.rx_global)
    rx_local = staticmethod(_rx.rx_local)
    nsi_score = staticmethod(_nsi.nsi_score)
    nsi_sparsify = staticmethod(_nsi.sparsify)

    def close(self) -> None:
        """Nothing to release."""


def open_ops(prefer: str = "auto"):
    """``(ops, why)``: :class:`CudaOps` when ``prefer`` is ``cuda``, or ``auto`` on a GPU host where the library
    and a device-memory library load; else :class:`ReferenceOps` and the reason."""
    if prefer not in ("auto", "cuda", "reference"):
        raise UserError("prefer must be auto, cuda or reference, got %r" % prefer)
    if prefer == "reference":
        return ReferenceOps(), "reference requested"
    has_gpu, what = gpu_present()
    try:
        if not has_gpu:
            raise UserError("no GPU (%s)" % what)
        return CudaOps(), "CUDA kernels on %s" % what
    except SatedgeError as exc:
        if prefer == "cuda":
            raise
        return ReferenceOps(), "numpy references: %s" % exc
