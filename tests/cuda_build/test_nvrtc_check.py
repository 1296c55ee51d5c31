"""cuda/nvrtc_check.py: the sm_53 / sm_62 / sm_72 compile check with CUDA 12's NVRTC and ptxas,
and the sm_53 / 62 / 72 / 87 check with CUDA 11.7's (nearest on PyPI to JetPack 5's CUDA 11.4).

Runs where the pip packages nvidia-cuda-nvrtc-cu12, nvidia-cuda-nvcc-cu12 and
nvidia-cuda-runtime-cu12 (12.9) are installed, and the CUDA 11.7 ones in cuda/build/cuda11
(`make cuda11-tools`, which `make test` runs); otherwise the tests that need them skip with the
reason, and the script's own skip message is checked. Nothing runs on a GPU.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "cuda" / "nvrtc_check.py"
ARCHS = ("sm_53", "sm_62", "sm_72")
OK_LINE = re.compile(r"^ok\s+(\S+)\s+(sm_\d+) \((\d+ kernels?|no device code)", re.MULTILINE)
FAIL_LINE = re.compile(r"^FAIL\s+(\S+)\s+(sm_\d+)\b", re.MULTILINE)


def _run(*args, python_flags=()):
    return subprocess.run([sys.executable, *python_flags, str(SCRIPT), *map(str, args)], cwd=str(REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)


def _problems(cuda="12"):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import nvrtc_check
        return nvrtc_check.find_tools(cuda)[3]
    finally:
        sys.path.pop(0)


PROBLEMS, PROBLEMS_11 = _problems(), _problems("11")
needs_packages = pytest.mark.skipif(bool(PROBLEMS), reason="NVRTC check packages missing: %s" % "; ".join(PROBLEMS))
needs_cuda11 = pytest.mark.skipif(bool(PROBLEMS_11), reason="CUDA 11.7 packages missing (make cuda11-tools): %s"
                                  % "; ".join(PROBLEMS_11))


@needs_packages
def test_every_kernel_source_compiles_for_every_old_jetson_arch():
    proc = _run()
    assert proc.returncode == 0, proc.stdout
    ok = {(name, arch): what for name, arch, what in OK_LINE.findall(proc.stdout)}
    for src in sorted((REPO / "cuda" / "src").glob("*.cu")):
        for arch in ARCHS:
            assert (src.name, arch) in ok, "no ok line for %s %s:\n%s" % (src.name, arch, proc.stdout)
    for name in ("preprocess.cu", "cloud_fraction.cu", "rx.cu", "nsi_sparsify.cu"):  # PTX really holds kernels
        assert ok[(name, "sm_62")].endswith(("kernel", "kernels")), proc.stdout
    assert ok[("rx.cu", "sm_53")] == "8 kernels" and ok[("nsi_sparsify.cu", "sm_72")] == "7 kernels"
    for arch in ARCHS:
        assert (REPO / "cuda" / "build" / "nvrtc" / ("rx.%s.cubin" % arch)).stat().st_size > 0


@needs_packages
def test_a_broken_source_fails_with_the_compiler_message(tmp_path):
    broken = tmp_path / "broken_kernel.cu"
    broken.write_text("__global__ void broken_kernel(float *x) { x[0] = undefined_name; }\n")
    proc = _run(broken, "--arch", "53,72")
    assert proc.returncode == 1, proc.stdout
    assert set(FAIL_LINE.findall(proc.stdout)) == {("broken_kernel.cu", "sm_53"), ("broken_kernel.cu", "sm_72")}
    assert "undefined_name" in proc.stdout


@needs_packages
def test_a_warning_fails_too(tmp_path):
    warn = tmp_path / "warning_kernel.cu"
    warn.write_text("__global__ void warning_kernel(float *x) { int unused = 1; x[0] = 0.0f; }\n"
                    "__device__ int f() { }\n")
    proc = _run(warn, "--arch", "62")
    assert proc.returncode == 1 and "FAIL warning_kernel.cu sm_62" in proc.stdout, proc.stdout


def test_without_the_packages_it_skips_and_says_what_to_install():
    # -S: no site-packages, so none of the nvidia-* packages can be found.
    proc = _run("--arch", "62", python_flags=("-S",))
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.startswith("skipping NVRTC 12 check (sm_62): missing"), proc.stdout
    assert "nvidia-cuda-nvrtc-cu12==12.9.*" in proc.stdout and "nvidia-cuda-nvcc-cu12==12.9.*" in proc.stdout
    proc = _run("--arch", "62", "--require", python_flags=("-S",))
    assert proc.returncode == 1 and proc.stdout.startswith("FAIL NVRTC 12 check"), proc.stdout


@needs_cuda11
def test_every_kernel_source_compiles_with_cuda_11_for_jetpack5_archs():
    proc = _run("--cuda", "11")
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.startswith("NVRTC 11.7 "), proc.stdout
    ok = {(name, arch): what for name, arch, what in OK_LINE.findall(proc.stdout)}
    for src in sorted((REPO / "cuda" / "src").glob("*.cu")):
        for arch in ARCHS + ("sm_87",):
            assert (src.name, arch) in ok, "no ok line for %s %s:\n%s" % (src.name, arch, proc.stdout)
    assert ok[("rx.cu", "sm_87")] == "8 kernels" and ok[("preprocess.cu", "sm_72")] == "8 kernels"
    assert (REPO / "cuda" / "build" / "nvrtc11" / "nsi_sparsify.sm_87.cubin").stat().st_size > 0


@needs_cuda11
def test_cuda_11_check_fails_on_a_broken_source(tmp_path):
    broken = tmp_path / "broken11.cu"
    broken.write_text("__global__ void broken11(float *x) { x[0] = not_declared_here; }\n")
    proc = _run(broken, "--cuda", "11", "--arch", "87")
    assert proc.returncode == 1 and "FAIL broken11.cu sm_87" in proc.stdout and "not_declared_here" in proc.stdout


def test_cuda_11_without_its_folder_skips_and_says_how_to_install(tmp_path):
    proc = _run("--cuda", "11", "--tools", tmp_path / "empty")
    assert proc.returncode == 0 and proc.stdout.startswith("skipping NVRTC 11 check (sm_53, sm_62, sm_72, sm_87)")
    assert "--target %s 'nvidia-cuda-nvcc-cu11==11.7.*'" % (tmp_path / "empty") in proc.stdout, proc.stdout
    proc = _run("--cuda", "11", "--tools", tmp_path / "empty", "--require")
    assert proc.returncode == 1 and proc.stdout.startswith("FAIL NVRTC 11 check"), proc.stdout
