"""ctypes binding of ``libsatedge_kernels`` (the C ABI of ``cuda/include/satedge_kernels.h``).

The library is found lazily: ``$SATEDGE_KERNELS_LIB`` if set, else the CMake build in
``cuda/build/cmake/`` (``cmake -S cuda -B cuda/build/cmake && cmake --build cuda/build/cmake``),
else ``cuda/build/``. Loading needs no GPU (argument checks run without one); launches need one.
Every entry point takes device pointers as ints (``None`` for NULL) and a stream handle, enqueues
work and returns; a status other than ``SATEDGE_OK`` raises :class:`KernelError` naming the status
and the raw ``cudaError_t``. :func:`build_library` compiles a fresh copy with nvcc (the GPU tests
and ``bench/kernels.py`` use it so they never run a stale build).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional, Sequence

from engines.errors import UserError

ENV_VAR = "SATEDGE_KERNELS_LIB"
ABI_VERSION = 2
REPO = Path(__file__).resolve().parents[2]
CUDA_DIR = REPO / "cuda"
LIB_NAME = "libsatedge_kernels.so"
STATUS_NAMES = ("SATEDGE_OK", "SATEDGE_ERR_INVALID_ARG", "SATEDGE_ERR_LAUNCH", "SATEDGE_ERR_NO_DEVICE",
                "SATEDGE_ERR_NO_KERNEL_IMAGE", "SATEDGE_ERR_OUT_OF_MEMORY", "SATEDGE_ERR_CUDA")
DTYPES = {"float32": 0, "float16": 1}
NSI_VARIANTS = {"coherence": 0, "mean_std": 1}

_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
_PROTOTYPES = {
    "satedge_kernels_abi_version": (_I, []),
    "satedge_status_string": (ctypes.c_char_p, [_I]),
    "satedge_last_cuda_error": (_I, []),
    "satedge_preprocess_u16": (_I, [_P, _I, _I, _I, _I, _I, _I, _I, _P, _P, _P, _P, _P, _I, _P]),
    "satedge_preprocess_u12packed": (_I, [_P, _I, _I, _I, _I, _I, _I, _I, _P, _P, _P, _P, _P, _I, _P]),
    "satedge_cloud_fraction": (_I, [_P, _I, _I, _P, _P]),
    "satedge_rx_global": (_I, [_P, _I, _I, _I, _I, _P, _P, _P, _P]),
    "satedge_rx_local": (_I, [_P, _I, _I, _I, _I, _I, _I, _F, _P, _P]),
    "satedge_nsi_score": (_I, [_P, _I, _I, _I, _F, _F, _I, _P, _P]),
    "satedge_nsi_sparsify_workspace_size": (ctypes.c_size_t, [_I, _I]),
    "satedge_nsi_sparsify": (_I, [_P, _I, _I, _I, _F, _F, _I, _I, _P, ctypes.c_size_t, _P, _P, _P, _P]),
}


class KernelError(UserError):
    """A kernel entry point returned a status other than SATEDGE_OK.

    Attributes
    ----------
    status : int
        The ``satedge_status``.
    cuda_error : int
        The raw ``cudaError_t`` behind it (0 when no CUDA call failed).
    """

    def __init__(self, message: str, status: int, cuda_error: int) -> None:
        super().__init__(message)
        self.status, self.cuda_error = status, cuda_error


def candidate_paths() -> Sequence[Path]:
    """Where :func:`find_library` looks, in order."""
    env = os.environ.get(ENV_VAR)
    found = [Path(env)] if env else []
    return found + [CUDA_DIR / "build" / "cmake" / LIB_NAME, CUDA_DIR / "build" / LIB_NAME]


def find_library() -> Path:
    """The library's path; raises :class:`UserError` saying where it looked and how to build it."""
    env = os.environ.get(ENV_VAR)
    if env and not Path(env).is_file():
        raise UserError("%s=%s does not name a file; point it at a built %s or unset it" % (ENV_VAR, env, LIB_NAME))
    for path in candidate_paths():
        if path.is_file():
            return path
    raise UserError("%s not found (looked at %s). Build it with `cmake -S cuda -B cuda/build/cmake && cmake --build "
                    "cuda/build/cmake` (needs nvcc), or set %s." % (LIB_NAME, ", ".join(map(str, candidate_paths())),
                                                                     ENV_VAR))


class KernelLibrary:
    """The loaded library with typed entry points.

    Parameters
    ----------
    path : str or Path, optional
        The shared library; :func:`find_library` when omitted.
    """

    def __init__(self, path=None) -> None:
        self.path = Path(path) if path is not None else find_library()
        try:
            self._lib = ctypes.CDLL(str(self.path))
        except OSError as exc:
            raise UserError("cannot load %s: %s" % (self.path, exc)) from exc
        missing = [name for name in _PROTOTYPES if not hasattr(self._lib, name)]
        abi = self._lib.satedge_kernels_abi_version() if hasattr(self._lib, "satedge_kernels_abi_version") else None
        if missing or abi != ABI_VERSION:
            raise UserError("%s has C ABI %s and lacks %s; this satedge needs ABI %d. Rebuild it from cuda/ "
                            "(cmake --build cuda/build/cmake)." % (self.path, abi, missing or "nothing", ABI_VERSION))
        for name, (restype, argtypes) in _PROTOTYPES.items():
            fn = getattr(self._lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        self.abi_version = abi

    def status_string(self, status: int) -> str:
        """Name of a ``satedge_status``."""
        return self._lib.satedge_status_string(int(status)).decode()

    def last_cuda_error(self) -> int:
        """The raw ``cudaError_t`` behind the last status on this thread."""
        return int(self._lib.satedge_last_cuda_error())

    def call(self, name: str, *args) -> None:
        """Call entry point ``name``; raises :class:`KernelError` unless it returns SATEDGE_OK."""
        status = getattr(self._lib, name)(*args)
        if status != 0:
            cuda_error = self.last_cuda_error()
            raise KernelError("%s returned %s (cudaError_t %d)%s" % (
                name, self.status_string(status), cuda_error, _HINTS.get(status, "")), status, cuda_error)

    # -- entry points (pointers are ints or None; stream 0 = the default stream) -----------------
    def preprocess(self, packing: str, src, shape, window, calib, dst, dtype: str, stream=None) -> None:
        """``satedge_preprocess_u16`` / ``_u12packed``; ``calib`` = (dark, gain, scale, offset) pointers."""
        name = {"u16": "satedge_preprocess_u16", "u12": "satedge_preprocess_u12packed"}[packing]
        self.call(name, src, *shape, *window, *calib, dst, DTYPES[dtype], stream)

    def cloud_fraction(self, mask, n_tiles: int, tile_pixels: int, out, stream=None) -> None:
        """``satedge_cloud_fraction``."""
        self.call("satedge_cloud_fraction", mask, n_tiles, tile_pixels, out, stream)

    def rx_global(self, cube, dtype: str, shape, mean, inv_cov, score, stream=None) -> None:
        """``satedge_rx_global``; ``shape`` = (bands, height, width)."""
        self.call("satedge_rx_global", cube, DTYPES[dtype], *shape, mean, inv_cov, score, stream)

    def rx_local(self, cube, dtype: str, shape, outer: int, inner: int, regularization: float, score,
                 stream=None) -> None:
        """``satedge_rx_local``."""
        self.call("satedge_rx_local", cube, DTYPES[dtype], *shape, outer, inner, regularization, score, stream)

    def nsi_score(self, grad, rows: int, cols: int, p: int, beta: float, lam: float, variant: str, score,
                  stream=None) -> None:
        """``satedge_nsi_score``."""
        self.call("satedge_nsi_score", grad, rows, cols, p, beta, lam, NSI_VARIANTS[variant], score, stream)

    def nsi_workspace_size(self, rows: int, cols: int) -> int:
        """``satedge_nsi_sparsify_workspace_size``."""
        return int(self._lib.satedge_nsi_sparsify_workspace_size(rows, cols))

    def nsi_sparsify(self, grad, rows: int, cols: int, p: int, beta: float, lam: float, variant: str, k: int,
                     workspace, workspace_bytes: int, out_index, out_value, out_threshold, stream=None) -> None:
        """``satedge_nsi_sparsify``."""
        self.call("satedge_nsi_sparsify", grad, rows, cols, p, beta, lam, NSI_VARIANTS[variant], k, workspace,
                  workspace_bytes, out_index, out_value, out_threshold, stream)


_HINTS = {
    3: ": no usable GPU or driver on this host",
    4: ": the library was not built for this GPU's SM; rebuild with it in CMAKE_CUDA_ARCHITECTURES",
}
_LOADED: Dict[str, KernelLibrary] = {}


def load(path=None) -> KernelLibrary:
    """The library at ``path`` (or :func:`find_library`), loaded once per process."""
    resolved = str(Path(path) if path is not None else find_library())
    if resolved not in _LOADED:
        _LOADED[resolved] = KernelLibrary(resolved)
    return _LOADED[resolved]


def build_library(out_dir, archs: Sequence[str] = ("87", "90"), nvcc: Optional[str] = None) -> Path:
    """Compile every ``cuda/src/*.cu`` with nvcc into ``out_dir/libsatedge_kernels.so``.

    Parameters
    ----------
    out_dir : str or Path
        Output directory (created).
    archs : sequence of str
        SM numbers, e.g. ``("87",)``; SASS for each plus PTX for the last.
    nvcc : str, optional
        The nvcc to use ($NVCC, else nvcc on PATH).
    """
    nvcc = nvcc or os.environ.get("NVCC") or shutil.which("nvcc")
    if not nvcc:
        raise UserError("nvcc not found (PATH, $NVCC): cannot build %s" % LIB_NAME)
    out = Path(out_dir) / LIB_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    gencode = []
    for arch in archs:
        gencode += ["-gencode", "arch=compute_%s,code=sm_%s" % (arch, arch)]
    gencode += ["-gencode", "arch=compute_%s,code=compute_%s" % (archs[-1], archs[-1])]
    cmd = [nvcc, "-std=c++14", "-O3", "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden", *gencode,
           "-I", str(CUDA_DIR / "include"), "-I", str(CUDA_DIR / "src"), "-DSATEDGE_KERNELS_BUILDING",
           *map(str, sorted((CUDA_DIR / "src").glob("*.cu"))), "-o", str(out)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if proc.returncode != 0:
        raise UserError("building %s failed:\n%s" % (LIB_NAME, proc.stdout))
    return out
