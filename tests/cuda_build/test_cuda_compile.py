"""Compile checks of the CUDA sources in cuda/ (nothing here runs on a GPU).

``cuda/check.sh`` compiles every ``cuda/src/*.cu`` for sm_87 and sm_90 with
warnings as errors. These tests run it, check that it fails loudly on a
broken source, and load a freshly built shared library with ctypes to check
the host side of the C ABI (argument checks and status strings, which make
no CUDA call). They skip when nvcc is not installed.
"""
import ctypes
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
    missing = [(s, a) for s in sources for a in ARCHS if (s, a) not in ok]
    assert not missing, "no 'ok' line for {}:\n{}".format(missing, proc.stdout)
    assert re.search(r"^ok\s+satedge_kernels\.h C99\b", proc.stdout, re.MULTILINE), proc.stdout


@needs_nvcc
def test_check_script_fails_on_a_broken_source(tmp_path):
    broken = tmp_path / "broken_kernel.cu"
    broken.write_text("__global__ void broken_kernel(float *x) { x[0] = undefined_name; }\n")

    proc = _run_check(broken)

    assert proc.returncode != 0, proc.stdout
    assert set(FAIL_LINE.findall(proc.stdout)) == {("broken_kernel.cu", a) for a in ARCHS}, proc.stdout
    assert "undefined_name" in proc.stdout  # the compiler's message is shown


def test_check_script_skips_without_nvcc():
    # PATH without any directory that holds an nvcc.
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    kept = [d for d in dirs if not os.access(os.path.join(d, "nvcc"), os.X_OK)]
    if not all(shutil.which(tool, path=os.pathsep.join(kept)) for tool in ("bash", "dirname")):
        pytest.skip("bash and nvcc share a PATH directory here: cannot hide nvcc")
    env = {k: v for k, v in os.environ.items() if k != "NVCC"}
    env["PATH"] = os.pathsep.join(kept)

    proc = _run_check(env=env)

    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.strip() == "nvcc not found: skipping CUDA compile check"


@pytest.fixture(scope="module")
def kernels_lib(tmp_path_factory):
    """libsatedge_kernels built with nvcc for sm_87, loaded with ctypes (no GPU needed to load)."""
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
    lib = ctypes.CDLL(str(out))
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
