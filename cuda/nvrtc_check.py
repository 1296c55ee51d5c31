#!/usr/bin/env python3
"""Compile check of cuda/src/*.cu for older Jetsons with CUDA 12's (or 11's) NVRTC and ptxas.

CUDA 13 cannot target the Jetson Nano (sm_53), TX2 (sm_62) or Xavier (sm_72). This script
compiles the device code of every source with NVRTC 12 (``libnvrtc.so.12`` from the pip package
``nvidia-cuda-nvrtc-cu12``, called through ctypes) to PTX for ``compute_XX``, then assembles that
PTX with ``ptxas`` 12 (pip package ``nvidia-cuda-nvcc-cu12``) into a cubin for ``sm_XX``. The
CUDA 12 headers the sources include (``cuda_fp16.h``) come from ``nvidia-cuda-runtime-cu12``, or
from ``SATEDGE_CUDA12_INCLUDE``. Nothing runs on a GPU.

``--cuda 11`` does the same with CUDA 11.7, the oldest CUDA on PyPI and the nearest to JetPack
5's CUDA 11.4 (Xavier, Orin), for sm_53, sm_62, sm_72 and sm_87. Its packages would collide with
the CUDA 12 ones in one environment (both own ``nvidia/cuda_nvcc/bin/ptxas``), so they live in a
folder of their own, ``cuda/build/cuda11`` (``make cuda11-tools``: ``pip install --no-deps
--target cuda/build/cuda11 ...``), or ``--tools DIR``.

NVRTC compiles device code only: the sources hide their host code behind ``__CUDACC_RTC__`` and
instantiate their kernel templates explicitly there. ``<stdint.h>`` (which NVRTC does not ship)
is given as an in-memory header. NVRTC has no ``-Werror``: any warning other than its note that
architectures before sm_75 are deprecated counts as a failure (warning 177, "declared but never
referenced", is suppressed: host-only constants and kernels launched only from the hidden host
code look unused; the ok line counts the kernels in the PTX); ptxas runs with
``--warning-as-error``.

    python cuda/nvrtc_check.py                      # every cuda/src/*.cu, sm_53 sm_62 sm_72
    python cuda/nvrtc_check.py rx.cu --arch 62      # named files / archs
    python cuda/nvrtc_check.py --require            # missing packages are a failure, not a skip
    python cuda/nvrtc_check.py --cuda 11            # CUDA 11.7 from cuda/build/cuda11, sm_53/62/72/87

Prints one ``ok``/``FAIL`` line per (file, arch), with the compiler output under a failure, PTX
and cubins in ``cuda/build/nvrtc/`` (``nvrtc11/`` for CUDA 11). Exit status: 0 when everything compiled or the check was
skipped (packages absent; the line says which), 1 on any failure.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

HERE = Path(__file__).resolve().parent


class Toolkit(NamedTuple):
    """One CUDA release the check can use: its pip packages, default SMs and default package folder."""

    major: int
    requirements: Tuple[str, str, str]          # nvrtc, nvcc (ptxas), runtime (headers)
    archs: Tuple[str, ...]
    tools_dir: Optional[Path]                   # None: the running interpreter's packages
    why: str


TOOLKITS: Dict[str, Toolkit] = {
    "12": Toolkit(12, ("nvidia-cuda-nvrtc-cu12==12.9.*", "nvidia-cuda-nvcc-cu12==12.9.*",
                       "nvidia-cuda-runtime-cu12==12.9.*"), ("53", "62", "72"), None,
                  "CUDA 13 cannot target sm_53/62/72"),
    "11": Toolkit(11, ("nvidia-cuda-nvrtc-cu11==11.7.*", "nvidia-cuda-nvcc-cu11==11.7.*",
                       "nvidia-cuda-runtime-cu11==11.7.*"), ("53", "62", "72", "87"), HERE / "build" / "cuda11",
                  "CUDA 11.7 is the nearest on PyPI to JetPack 5's CUDA 11.4"),
}
ARCHS = TOOLKITS["12"].archs
REQUIREMENTS = TOOLKITS["12"].requirements
DEPRECATION = re.compile(r"^nvrtc: warning: Architectures prior to .* are deprecated.*$", re.MULTILINE)
# NVRTC ships no C library headers; the sources need the fixed-width integer types only.
STDINT_H = b"""#pragma once
typedef signed char int8_t; typedef short int16_t; typedef int int32_t; typedef long long int64_t;
typedef unsigned char uint8_t; typedef unsigned short uint16_t; typedef unsigned int uint32_t;
typedef unsigned long long uint64_t; typedef unsigned long long uintptr_t; typedef long long intptr_t;
"""


def _package_dir(name: str, tools_dir: Optional[Path] = None) -> Optional[Path]:
    """Directory of the namespace sub-package ``nvidia.<name>`` (under ``tools_dir`` if given, else the
    running interpreter's), without importing anything heavy."""
    if tools_dir is not None:
        path = tools_dir / "nvidia" / name
        return path if path.is_dir() else None
    try:
        spec = importlib.util.find_spec("nvidia." + name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def find_tools(cuda: str = "12", tools_dir: Optional[Path] = None
               ) -> Tuple[Optional[Path], Optional[Path], Optional[Path], List[str]]:
    """``(libnvrtc, ptxas, CUDA include dir, problems)`` of toolkit ``cuda``; a problem names what to install."""
    kit = TOOLKITS[cuda]
    tools_dir = tools_dir or kit.tools_dir
    how = ("pip install --no-deps --target %s '%%s'" % tools_dir) if tools_dir is not None else "pip install '%s'"
    problems = []
    nvrtc_dir, nvcc_dir = _package_dir("cuda_nvrtc", tools_dir), _package_dir("cuda_nvcc", tools_dir)
    rt_dir = _package_dir("cuda_runtime", tools_dir)
    lib = None
    if nvrtc_dir is not None:
        libs = sorted((nvrtc_dir / "lib").glob("libnvrtc.so.%d*" % kit.major))
        lib = libs[0] if libs else None
    if lib is None:
        problems.append("libnvrtc.so.%d (%s)" % (kit.major, how % kit.requirements[0]))
    ptxas = nvcc_dir / "bin" / "ptxas" if nvcc_dir is not None else None
    if ptxas is None or not os.access(str(ptxas), os.X_OK):
        ptxas = None
        problems.append("ptxas %d (%s)" % (kit.major, how % kit.requirements[1]))
    include = os.environ.get("SATEDGE_CUDA%d_INCLUDE" % kit.major)
    inc = Path(include) if include else (rt_dir / "include" if rt_dir is not None else None)
    if inc is None or not (inc / "cuda_fp16.h").is_file():
        inc = None
        problems.append("CUDA %d headers with cuda_fp16.h (%s, or set SATEDGE_CUDA%d_INCLUDE)"
                        % (kit.major, how % kit.requirements[2], kit.major))
    return lib, ptxas, inc, problems


class Nvrtc:
    """The few NVRTC calls the check needs, through ctypes."""

    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version = (major.value, minor.value)

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError("%s: %s" % (what, self.lib.nvrtcGetErrorString(code).decode()))

    def compile(self, source: bytes, name: str, options: List[str]) -> Tuple[bool, str, bytes]:
        """``(compiled, log, ptx)`` of one program."""
        prog = ctypes.c_void_p()
        headers = (ctypes.c_char_p * 1)(STDINT_H)
        names = (ctypes.c_char_p * 1)(b"stdint.h")
        self._check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), source, name.encode(), 1, headers, names),
                    "nvrtcCreateProgram")
        try:
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            code = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self._check(self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
            log = ctypes.create_string_buffer(size.value + 1)
            self._check(self.lib.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
            if code != 0:
                return False, log.value.decode("utf-8", "replace"), b""
            self._check(self.lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
            ptx = ctypes.create_string_buffer(size.value + 1)
            self._check(self.lib.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
            return True, log.value.decode("utf-8", "replace"), ptx.value
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


def check_one(nvrtc: Nvrtc, ptxas: Path, include: Path, src: Path, arch: str, out: Path) -> Tuple[bool, str]:
    """Compile one (file, arch); returns ``(ok, report)`` with the ok/FAIL line first."""
    t0 = time.monotonic()
    # 177 "declared but never referenced": with the host code hidden, the launch-configuration
    # constants and the non-template kernels look unused; the kernels are still emitted (the ok
    # line counts the PTX entries), and nvcc -Werror (check.sh) sees every use.
    options = ["-arch=compute_%s" % arch, "-std=c++14", "-diag-suppress=177", "-I%s" % (HERE / "include"),
               "-I%s" % src.parent, "-I%s" % (HERE / "src"), "-I%s" % include]
    compiled, log, ptx = nvrtc.compile(src.read_bytes(), src.name, options)
    log = DEPRECATION.sub("", log).strip()
    line = "%s sm_%s" % (src.name, arch)
    if not compiled or log:  # a warning fails too (NVRTC has no -Werror)
        return False, "FAIL %s (%.1f s)\n%s" % (line, time.monotonic() - t0, _indent(log or "(no log)"))
    stem = "%s.sm_%s" % (src.stem, arch)
    ptx_path, cubin = out / (stem + ".ptx"), out / (stem + ".cubin")
    ptx_path.write_bytes(ptx)
    proc = subprocess.run([str(ptxas), "-arch=sm_%s" % arch, "--warning-as-error", "-o", str(cubin), str(ptx_path)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    kernels = len(re.findall(r"^\s*(?:\.visible\s+|\.weak\s+)?\.entry\s", ptx.decode("utf-8", "replace"), re.MULTILINE))
    what = "%d kernel%s" % (kernels, "" if kernels == 1 else "s") if kernels else "no device code"
    if proc.returncode != 0:
        return False, "FAIL %s (ptxas, %.1f s)\n%s" % (line, time.monotonic() - t0, _indent(proc.stdout))
    return True, "ok   %s (%s, %.1f s)" % (line, what, time.monotonic() - t0)


def _indent(text: str) -> str:
    return "\n".join("    " + t for t in text.strip().splitlines())


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="*", help="files to check (default: every cuda/src/*.cu)")
    ap.add_argument("--cuda", choices=sorted(TOOLKITS), default="12", help="CUDA release of NVRTC and ptxas")
    ap.add_argument("--tools", type=Path, help="folder holding the nvidia/ packages (default: this interpreter's "
                                               "for 12, cuda/build/cuda11 for 11)")
    ap.add_argument("--arch", help="comma-separated SMs (default: 53,62,72 for 12; 53,62,72,87 for 11)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel compiles")
    ap.add_argument("--require", action="store_true", help="fail (exit 1) when the packages are missing")
    args = ap.parse_args(argv)

    kit = TOOLKITS[args.cuda]
    args.arch = args.arch or ",".join(kit.archs)
    lib, ptxas, include, problems = find_tools(args.cuda, args.tools)
    if problems and args.tools is None and kit.tools_dir is not None:
        problems.append("all three: make cuda%d-tools" % kit.major)
    if problems:
        print("%s NVRTC %d check (sm_%s): missing %s" % ("FAIL" if args.require else "skipping", kit.major,
                                                         ", sm_".join(args.arch.split(",")), "; ".join(problems)))
        return 1 if args.require else 0
    nvrtc = Nvrtc(lib)
    if nvrtc.version[0] != kit.major:
        print("FAIL NVRTC %d.%d found at %s: this check needs CUDA %d (%s); install '%s'"
              % (nvrtc.version + (lib, kit.major, kit.why, kit.requirements[0])))
        return 1
    sources = [Path(s).resolve() for s in args.sources] or sorted((HERE / "src").glob("*.cu"))
    if not sources:
        print("FAIL no .cu sources found in %s" % (HERE / "src"))
        return 1
    archs = [a.strip().replace("sm_", "") for a in args.arch.split(",") if a.strip()]
    out = HERE / "build" / ("nvrtc" if kit.major == 12 else "nvrtc%d" % kit.major)
    out.mkdir(parents=True, exist_ok=True)
    print("NVRTC %d.%d + ptxas (%s): compiling %d file(s) for %s" % (
        nvrtc.version + (ptxas.parent.parent.name, len(sources), " ".join("sm_" + a for a in archs))))

    jobs = [(src, arch) for src in sources for arch in archs]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # ctypes releases the GIL while NVRTC runs
        results = list(pool.map(lambda job: check_one(nvrtc, ptxas, include, job[0], job[1], out), jobs))
    failures = 0
    for ok, report in results:
        print(report)
        failures += 0 if ok else 1
    if failures:
        print("NVRTC compile check: %d failure(s)" % failures)
        return 1
    print("NVRTC compile check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
