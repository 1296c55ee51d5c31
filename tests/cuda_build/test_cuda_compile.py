"""Compile checks of the CUDA sources in cuda/ (nothing here runs on a GPU).

``cuda/check.sh`` compiles every ``cuda/src/*.cu`` for sm_87 and sm_90 with
warnings as errors, and, where the CUDA 12 NVRTC/ptxas pip packages are
installed, for sm_53, sm_62 and sm_72 through ``cuda/nvrtc_check.py``. These
tests run it, check that it fails loudly on a broken source, and load a
freshly built shared library with ctypes to check the host side of the C ABI
(argument checks and status strings, which make no CUDA call; on a host
without a GPU, a launch reports SATEDGE_ERR_NO_DEVICE). They skip when nvcc is
not installed.
"""
import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CUDA_DIR = REPO / "cuda"
CHECK_SH = CUDA_DIR / "check.sh"
ARCHS = ("sm_87", "sm_90")
NVRTC_ARCHS = ("sm_53", "sm_62", "sm_72")
OK_LINE = re.compile(r"^ok\s+(\S+)\s+(sm_\d+)\b", re.MULTILINE)
FAIL_LINE = re.compile(r"^FAIL\s+(\S+)\s+(sm_\d+)\b", re.MULTILINE)

# Status codes and dtypes of cuda/include/satedge_kernels.h.
SATEDGE_OK = 0
SATEDGE_ERR_INVALID_ARG = 1
SATEDGE_DTYPE_FLOAT32 = 0
SATEDGE_DTYPE_FLOAT16 = 1
STATUS_NAMES = (
    "SATEDGE_OK",
    "SATEDGE_ERR_INVALID_ARG",
    "SATEDGE_ERR_LAUNCH",
    "SATEDGE_ERR_NO_DEVICE",
    "SATEDGE_ERR_NO_KERNEL_IMAGE",
    "SATEDGE_ERR_OUT_OF_MEMORY",
    "SATEDGE_ERR_CUDA",
)


def _nvcc():
    return os.environ.get("NVCC") or shutil.which("nvcc")


def _nvrtc_problems():
    """What cuda/nvrtc_check.py would miss here (empty: it can run)."""
    spec = importlib.util.spec_from_file_location("satedge_nvrtc_check", str(CUDA_DIR / "nvrtc_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.find_tools()[3]


NVRTC_MISSING = _nvrtc_problems()


def _has_gpu():
    from engines.runners.devicebuf import gpu_present
    return gpu_present()[0]


needs_nvcc = pytest.mark.skipif(
    _nvcc() is None, reason="nvcc not found on PATH (and NVCC not set): CUDA compile check skipped"
)


def _run_check(*args, env=None):
    return subprocess.run(
        ["bash", str(CHECK_SH), *map(str, args)],
        cwd=str(REPO),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        timeout=300,
    )


@needs_nvcc
def test_check_script_compiles_every_source_for_every_arch():
    sources = sorted(p.name for p in (CUDA_DIR / "src").glob("*.cu"))
    assert sources, "no .cu files in cuda/src"

    proc = _run_check()

    assert proc.returncode == 0, proc.stdout
    ok = set(OK_LINE.findall(proc.stdout))
    archs = ARCHS if NVRTC_MISSING else ARCHS + NVRTC_ARCHS
    missing = [(s, a) for s in sources for a in archs if (s, a) not in ok]
    assert not missing, "no 'ok' line for {}:\n{}".format(missing, proc.stdout)
    assert re.search(r"^ok\s+satedge_kernels\.h C99\b", proc.stdout, re.MULTILINE), proc.stdout
    if NVRTC_MISSING:
        assert "skipping NVRTC check" in proc.stdout, proc.stdout


@needs_nvcc
def test_check_script_fails_on_a_broken_source(tmp_path):
    broken = tmp_path / "broken_kernel.cu"
    broken.write_text("__global__ void broken_kernel(float *x) { x[0] = undefined_name; }\n")

    proc = _run_check(broken)

    assert proc.returncode != 0, proc.stdout
    archs = ARCHS if NVRTC_MISSING else ARCHS + NVRTC_ARCHS
    assert set(FAIL_LINE.findall(proc.stdout)) == {("broken_kernel.cu", a) for a in archs}, proc.stdout
    assert "undefined_name" in proc.stdout  # the compiler's message is shown


def test_check_script_skips_without_nvcc():
    # PATH without any directory that holds an nvcc.
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    kept = [d for d in dirs if not os.access(os.path.join(d, "nvcc"), os.X_OK)]
    if not all(shutil.which(tool, path=os.pathsep.join(kept)) for tool in ("bash", "dirname")):
        pytest.skip("bash and nvcc share a PATH directory here: cannot hide nvcc")
    env = {k: v for k, v in os.environ.items() if k != "NVCC"}
    env["PATH"] = os.pathsep.join(kept)
    env["SATEDGE_NVRTC_CHECK"] = "0"

    proc = _run_check(env=env)

    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.strip().splitlines()
    plugins = [line for line in lines if line.startswith("plugins:")]
    assert [line for line in lines if line not in plugins] == ["nvcc not found: skipping CUDA compile check",
                                                               "NVRTC check disabled (SATEDGE_NVRTC_CHECK=0)",
                                                               "CUDA compile check passed"]
    assert len(plugins) == 1 and ("skipped: no TensorRT headers" in plugins[0] or "passed" in plugins[0]), plugins


@pytest.fixture(scope="module")
def kernels_so(tmp_path_factory):
    """libsatedge_kernels built with nvcc for sm_87 (its path)."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found on PATH (and NVCC not set): cannot build libsatedge_kernels")
    out = tmp_path_factory.mktemp("satedge_kernels") / "libsatedge_kernels.so"
    cmd = [
        nvcc, "-std=c++14", "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden",
        "-gencode", "arch=compute_87,code=sm_87",
        "-I", str(CUDA_DIR / "include"), "-I", str(CUDA_DIR / "src"),
        "-DSATEDGE_KERNELS_BUILDING",
        *map(str, sorted((CUDA_DIR / "src").glob("*.cu"))),
        "-o", str(out),
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    return out


@pytest.fixture(scope="module")
def kernels_lib(kernels_so):
    """The library loaded with plain ctypes and prototypes written from the header (no GPU needed)."""
    lib = ctypes.CDLL(str(kernels_so))
    lib.satedge_status_string.restype = ctypes.c_char_p
    lib.satedge_status_string.argtypes = [ctypes.c_int]
    preprocess_args = [
        ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,  # src, bands, height, width
        ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,  # x0, y0, tile_h, tile_w
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,  # dark, gain, scale, offset
        ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,  # dst, dst_dtype, stream
    ]
    for name in ("satedge_preprocess_u16", "satedge_preprocess_u12packed"):
        getattr(lib, name).argtypes = preprocess_args
        getattr(lib, name).restype = ctypes.c_int
    lib.satedge_cloud_fraction.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                           ctypes.c_void_p, ctypes.c_void_p]
    lib.satedge_cloud_fraction.restype = ctypes.c_int
    P, I, F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    for name, argtypes in (("satedge_rx_global", [P, I, I, I, I, P, P, P, P]),
                           ("satedge_rx_local", [P, I, I, I, I, I, I, F, P, P]),
                           ("satedge_nsi_score", [P, I, I, I, F, F, I, P, P]),
                           ("satedge_nsi_sparsify", [P, I, I, I, F, F, I, I, P, ctypes.c_size_t, P, P, P, P])):
        getattr(lib, name).argtypes, getattr(lib, name).restype = argtypes, I
    lib.satedge_nsi_sparsify_workspace_size.argtypes = [I, I]
    lib.satedge_nsi_sparsify_workspace_size.restype = ctypes.c_size_t
    return lib


@needs_nvcc
def test_library_reports_abi_version_and_status_names(kernels_lib):
    header = (CUDA_DIR / "include" / "satedge_kernels.h").read_text()
    abi = int(re.search(r"#define SATEDGE_KERNELS_ABI_VERSION (\d+)", header).group(1))

    assert kernels_lib.satedge_kernels_abi_version() == abi
    names = [kernels_lib.satedge_status_string(code).decode() for code in range(len(STATUS_NAMES))]
    assert names == list(STATUS_NAMES)
    assert kernels_lib.satedge_status_string(99) == b"unknown satedge_status"


# Every call below is rejected (or is empty work) before any CUDA call, so it
# is safe with or without a GPU and never touches the (fake) pointers.
FAKE = ctypes.c_void_p(0x1000)
FAKE_1B = ctypes.c_void_p(0x1001)  # misaligned for 2-byte elements
FAKE_2B = ctypes.c_void_p(0x1002)  # misaligned for 4-byte elements


@needs_nvcc
@pytest.mark.parametrize("name", ["satedge_preprocess_u16", "satedge_preprocess_u12packed"])
@pytest.mark.parametrize(
    "args, expected",
    [
        ((None, 3, 4, 5, 0, 0, 4, 5, FAKE, SATEDGE_DTYPE_FLOAT32), SATEDGE_ERR_INVALID_ARG),  # src NULL
        ((FAKE, 3, 4, 5, 0, 0, 4, 5, None, SATEDGE_DTYPE_FLOAT32), SATEDGE_ERR_INVALID_ARG),  # dst NULL
        ((FAKE, 0, 4, 5, 0, 0, 4, 5, FAKE, SATEDGE_DTYPE_FLOAT32), SATEDGE_ERR_INVALID_ARG),  # bands 0
        ((FAKE, 3, 0, 5, 0, 0, 4, 5, FAKE, SATEDGE_DTYPE_FLOAT32), SATEDGE_ERR_INVALID_ARG),  # height 0
        ((FAKE, 3, 4, -1, 0, 0, 4, 5, FAKE, SATEDGE_DTYPE_FLOAT16), SATEDGE_ERR_INVALID_ARG),  # width < 0
        ((FAKE, 3, 4, 5, 0, 0, -1, 5, FAKE, SATEDGE_DTYPE_FLOAT32), SATEDGE_ERR_INVALID_ARG),  # tile_h < 0
        ((FAKE, 3, 4, 5, 0, 0, 4, 5, FAKE, 2), SATEDGE_ERR_INVALID_ARG),  # unknown dtype
        ((FAKE, 3, 4, 5, 0, 0, 4, 5, FAKE_2B, SATEDGE_DTYPE_FLOAT32), SATEDGE_ERR_INVALID_ARG),  # float dst
        ((FAKE, 3, 4, 5, 0, 0, 4, 5, FAKE_1B, SATEDGE_DTYPE_FLOAT16), SATEDGE_ERR_INVALID_ARG),  # half dst
        ((FAKE, 3, 4, 5, -9, 7, 0, 5, FAKE, SATEDGE_DTYPE_FLOAT32), SATEDGE_OK),  # empty window
        ((FAKE, 3, 4, 5, 0, 0, 4, 0, FAKE, SATEDGE_DTYPE_FLOAT16), SATEDGE_OK),  # empty window
    ],
)
def test_preprocess_checks_arguments_before_cuda(kernels_lib, name, args, expected):
    src, bands, height, width, x0, y0, tile_h, tile_w, dst, dtype = args
    status = getattr(kernels_lib, name)(src, bands, height, width, x0, y0, tile_h, tile_w,
                                        None, None, None, None, dst, dtype, None)
    assert status == expected, kernels_lib.satedge_status_string(status)
    assert kernels_lib.satedge_last_cuda_error() == 0


@needs_nvcc
def test_preprocess_u16_rejects_misaligned_source(kernels_lib):
    status = kernels_lib.satedge_preprocess_u16(FAKE_1B, 1, 4, 4, 0, 0, 4, 4, None, None, None, None,
                                                FAKE, SATEDGE_DTYPE_FLOAT32, None)
    assert status == SATEDGE_ERR_INVALID_ARG


@needs_nvcc
@pytest.mark.parametrize(
    "args, expected",
    [
        ((None, 4, 16, FAKE), SATEDGE_ERR_INVALID_ARG),
        ((FAKE, 4, 16, None), SATEDGE_ERR_INVALID_ARG),
        ((FAKE, -1, 16, FAKE), SATEDGE_ERR_INVALID_ARG),
        ((FAKE, 4, 0, FAKE), SATEDGE_ERR_INVALID_ARG),
        ((FAKE, 4, 16, FAKE_2B), SATEDGE_ERR_INVALID_ARG),  # misaligned float output
        ((FAKE, 0, 16, FAKE), SATEDGE_OK),  # no tiles: nothing to do
    ],
)
def test_cloud_fraction_checks_arguments_before_cuda(kernels_lib, args, expected):
    status = kernels_lib.satedge_cloud_fraction(*args, None)
    assert status == expected, kernels_lib.satedge_status_string(status)
    assert kernels_lib.satedge_last_cuda_error() == 0


@needs_nvcc
@pytest.mark.parametrize(
    "args",
    [
        (None, 0, 3, 4, 5, FAKE, FAKE, FAKE),  # cube NULL
        (FAKE, 2, 3, 4, 5, FAKE, FAKE, FAKE),  # unknown dtype
        (FAKE, 0, 0, 4, 5, FAKE, FAKE, FAKE),  # bands 0
        (FAKE, 0, 3, 4, 0, FAKE, FAKE, FAKE),  # width 0
        (FAKE, 0, 3, 65536, 32768, FAKE, FAKE, FAKE),  # H*W >= 2^31
        (FAKE_2B, 0, 3, 4, 5, FAKE, FAKE, FAKE),  # misaligned float cube
        (FAKE_1B, 1, 3, 4, 5, FAKE, FAKE, FAKE),  # misaligned half cube
        (FAKE, 0, 3, 4, 5, None, FAKE, FAKE),  # mean NULL
        (FAKE, 0, 3, 4, 5, FAKE, None, FAKE),  # inv_cov NULL
        (FAKE, 0, 3, 4, 5, FAKE, FAKE, FAKE_2B),  # misaligned score
    ],
)
def test_rx_global_checks_arguments_before_cuda(kernels_lib, args):
    status = kernels_lib.satedge_rx_global(*args, None)
    assert status == SATEDGE_ERR_INVALID_ARG, kernels_lib.satedge_status_string(status)
    assert kernels_lib.satedge_last_cuda_error() == 0


@needs_nvcc
@pytest.mark.parametrize(
    "bands, outer, inner, reg",
    [(33, 15, 5, 1e-3), (0, 15, 5, 1e-3), (4, 14, 5, 1e-3), (4, 15, 4, 1e-3), (4, 5, 5, 1e-3),
     (4, 5, 7, 1e-3), (4, 257, 5, 1e-3), (9, 3, 1, 1e-3), (4, 15, 5, -1.0), (4, 15, 5, float("nan"))],
)
def test_rx_local_checks_arguments_before_cuda(kernels_lib, bands, outer, inner, reg):
    status = kernels_lib.satedge_rx_local(FAKE, 0, bands, 8, 8, outer, inner, reg, FAKE, None)
    assert status == SATEDGE_ERR_INVALID_ARG, kernels_lib.satedge_status_string(status)
    assert kernels_lib.satedge_last_cuda_error() == 0


@needs_nvcc
@pytest.mark.parametrize(
    "rows, cols, p, beta, variant",
    [(0, 4, 3, 0.5, 0), (4, 0, 3, 0.5, 0), (4, 4, 2, 0.5, 0), (4, 4, 0, 0.5, 0), (4, 4, 257, 0.5, 0),
     (4, 4, 3, 1.5, 0), (4, 4, 3, -0.1, 0), (4, 4, 3, 0.5, 2), (65536, 32768, 3, 0.5, 0)],
)
def test_nsi_checks_arguments_before_cuda(kernels_lib, rows, cols, p, beta, variant):
    status = kernels_lib.satedge_nsi_score(FAKE, rows, cols, p, beta, 1.0, variant, FAKE, None)
    assert status == SATEDGE_ERR_INVALID_ARG, kernels_lib.satedge_status_string(status)
    ws = kernels_lib.satedge_nsi_sparsify_workspace_size(rows, cols)
    status = kernels_lib.satedge_nsi_sparsify(FAKE, rows, cols, p, beta, 1.0, variant, 1, FAKE, ws,
                                              FAKE, FAKE, None, None)
    assert status == SATEDGE_ERR_INVALID_ARG, kernels_lib.satedge_status_string(status)
    assert kernels_lib.satedge_last_cuda_error() == 0


@needs_nvcc
def test_nsi_sparsify_checks_k_and_the_workspace(kernels_lib):
    ws = kernels_lib.satedge_nsi_sparsify_workspace_size(4, 5)
    assert ws >= 20 * 4 and ws % 256 == 0
    assert kernels_lib.satedge_nsi_sparsify_workspace_size(0, 5) == 0
    assert kernels_lib.satedge_nsi_sparsify_workspace_size(65536, 32768) == 0
    for k, size, workspace in ((0, ws, FAKE), (21, ws, FAKE), (5, ws - 1, FAKE), (5, ws, None),
                               (5, ws, ctypes.c_void_p(0x1008))):  # workspace must be 16-byte aligned
        status = kernels_lib.satedge_nsi_sparsify(FAKE, 4, 5, 3, 0.5, 1.0, 0, k, workspace, size,
                                                  FAKE, FAKE, None, None)
        assert status == SATEDGE_ERR_INVALID_ARG, (k, size, kernels_lib.satedge_status_string(status))


@needs_nvcc
def test_python_binding_loads_the_built_library(kernels_so):
    from engines.ops.cuda_lib import ABI_VERSION, KernelError, KernelLibrary
    lib = KernelLibrary(kernels_so)
    assert lib.abi_version == ABI_VERSION
    with pytest.raises(KernelError) as err:
        lib.rx_local(0x1000, "float32", (33, 8, 8), 15, 5, 1e-3, 0x1000)
    assert err.value.status == SATEDGE_ERR_INVALID_ARG and "SATEDGE_ERR_INVALID_ARG" in str(err.value)


@needs_nvcc
@pytest.mark.skipif(_has_gpu(), reason="this host has a GPU: a launch on fake pointers would fault")
def test_a_launch_without_a_gpu_reports_no_device(kernels_so):
    from engines.ops.cuda_lib import KernelError, KernelLibrary
    lib = KernelLibrary(kernels_so)
    with pytest.raises(KernelError) as err:
        lib.nsi_score(0x1000, 4, 5, 3, 0.5, 1.0, "coherence", 0x2000)
    assert err.value.status == 3 and err.value.cuda_error != 0  # SATEDGE_ERR_NO_DEVICE
    assert "no usable GPU" in str(err.value)
