#!/usr/bin/env bash
# cuda/check.sh - compile-only check of the CUDA sources (run by `make test`).
#
#   bash cuda/check.sh                 # every cuda/src/*.cu
#   bash cuda/check.sh path/to/x.cu    # only the files named
#
# Compiles each source with `nvcc -std=c++14 -c` once per architecture in
# ARCHS (sm_87 Orin, sm_90 Hopper), warnings as errors, objects into
# cuda/build/check/ (gitignored), and prints one line per (file, arch):
#     ok   preprocess.cu sm_87 (2.3 s)
#     FAIL preprocess.cu sm_90 (1.1 s)   followed by the compiler output
# It also checks that include/satedge_kernels.h compiles as plain C99.
#
# Then the NVRTC check (cuda/nvrtc_check.py): CUDA 13 cannot target sm_53
# (Nano), sm_62 (TX2) or sm_72 (Xavier), so the same sources are compiled for
# those with CUDA 12's NVRTC and ptxas from pip (nvidia-cuda-nvrtc-cu12,
# nvidia-cuda-nvcc-cu12, nvidia-cuda-runtime-cu12 for the headers), one line
# per (file, arch) in the same format. It does not need nvcc. Then the same
# with CUDA 11.7 (the nearest on PyPI to JetPack 5's CUDA 11.4) for sm_53,
# sm_62, sm_72 and sm_87, from cuda/build/cuda11 (`make cuda11-tools`),
# skipped with one line when that folder is empty.
# Without arguments it then runs plugins/check_plugins.sh: the TensorRT plugin
# sources compiled (syntax only) against the TensorRT headers, skipped with one
# line when there are none (SATEDGE_TENSORRT_INCLUDE or TensorRT_ROOT point at
# them).
# Nothing runs on a GPU. Exit status: 0 when everything compiled (or a
# compiler is absent: that part is skipped with a line saying so), 1 when any
# compile failed.
#
# Environment: NVCC (the nvcc to use; default: nvcc on PATH, and the nvcc part
# is skipped when there is none), NVCC_EXTRA_FLAGS (appended to every nvcc
# compile), SATEDGE_NVRTC_CHECK (unset: run the NVRTC check when its packages
# are installed, else print why it is skipped; 1: missing packages are a
# failure; 0: do not run it), PYTHON (the interpreter for nvrtc_check.py;
# default: the repository's .venv/bin/python, else python3).
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ARCHS=(87 90)

repo="$(dirname "$here")"
if [ "$#" -gt 0 ]; then
    sources=("$@")
else
    shopt -s nullglob
    sources=("$here"/src/*.cu)
    shopt -u nullglob
fi
if [ "${#sources[@]}" -eq 0 ]; then
    echo "FAIL no .cu sources found in $here/src"
    exit 1
fi

now_ms() { date +%s%3N; }
elapsed() { local ms=$(( $(now_ms) - $1 )); printf '%d.%d s' $((ms / 1000)) $(((ms % 1000) / 100)); }

failures=0
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

nvcc_bin=""
if [ -n "${NVCC:-}" ]; then
    nvcc_bin="$(command -v "$NVCC" || true)"
    if [ -z "$nvcc_bin" ]; then
        echo "FAIL NVCC=$NVCC is not an executable; unset NVCC to use nvcc from PATH"
        exit 1
    fi
else
    nvcc_bin="$(command -v nvcc || true)"
    if [ -z "$nvcc_bin" ]; then
        echo "nvcc not found: skipping CUDA compile check"
    fi
fi

if [ -n "$nvcc_bin" ]; then
    out="$here/build/check"
    mkdir -p "$out"

    # Host-compiler warnings are errors too.
    flags=(-std=c++14 -c -I"$here/include" -I"$here/src"
           -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror)
    # shellcheck disable=SC2206  # word splitting of extra flags is intended
    extra=(${NVCC_EXTRA_FLAGS:-})

    nvcc_version="$("$nvcc_bin" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
    echo "nvcc $nvcc_version: compiling ${#sources[@]} file(s) for ${ARCHS[*]/#/sm_}"

    for src in "${sources[@]}"; do
        name="$(basename "$src")"
        for arch in "${ARCHS[@]}"; do
            t0="$(now_ms)"
            if "$nvcc_bin" "${flags[@]}" "${extra[@]}" \
                -gencode "arch=compute_${arch},code=sm_${arch}" \
                -o "$out/${name%.cu}.sm_${arch}.o" "$src" >"$log" 2>&1; then
                echo "ok   $name sm_$arch ($(elapsed "$t0"))"
            else
                echo "FAIL $name sm_$arch ($(elapsed "$t0"))"
                sed 's/^/    /' "$log"
                failures=$((failures + 1))
            fi
        done
    done

    # The public header must stay plain C (ctypes users, C callers).
    hdr_c="$out/header_c99_check.c"
    printf '#include "satedge_kernels.h"\nint satedge_header_c99_check(void) { return SATEDGE_KERNELS_ABI_VERSION; }\n' >"$hdr_c"
    t0="$(now_ms)"
    if "$nvcc_bin" -x c -c -I"$here/include" -Xcompiler -std=c99,-Wall,-Wextra,-Werror \
        -o "$out/header_c99_check.o" "$hdr_c" >"$log" 2>&1; then
        echo "ok   satedge_kernels.h C99 ($(elapsed "$t0"))"
    else
        echo "FAIL satedge_kernels.h C99 ($(elapsed "$t0"))"
        sed 's/^/    /' "$log"
        failures=$((failures + 1))
    fi
fi

# sm_53 / sm_62 / sm_72 through CUDA 12's NVRTC + ptxas, then sm_53 / 62 / 72 / 87
# through CUDA 11.7's (cuda/nvrtc_check.py).
case "${SATEDGE_NVRTC_CHECK:-}" in
    0)
        echo "NVRTC check disabled (SATEDGE_NVRTC_CHECK=0)"
        ;;
    *)
        python_bin="${PYTHON:-}"
        if [ -z "$python_bin" ]; then
            if [ -x "$repo/.venv/bin/python" ]; then
                python_bin="$repo/.venv/bin/python"
            else
                python_bin="$(command -v python3 || true)"
            fi
        fi
        require=()
        if [ "${SATEDGE_NVRTC_CHECK:-}" = "1" ]; then
            require=(--require)
        fi
        if [ -z "$python_bin" ]; then
            echo "skipping NVRTC check: no python3 (set PYTHON)"
            if [ "${#require[@]}" -gt 0 ]; then failures=$((failures + 1)); fi
        else
            if ! "$python_bin" "$here/nvrtc_check.py" "${require[@]}" "${sources[@]}"; then
                failures=$((failures + 1))
            fi
            if ! "$python_bin" "$here/nvrtc_check.py" --cuda 11 "${require[@]}" "${sources[@]}"; then
                failures=$((failures + 1))
            fi
        fi
        ;;
esac

# TensorRT plugin wrappers (cuda/plugins): g++ -fsyntax-only against the
# TensorRT headers; one "plugins: skipped: ..." line where there are none.
# Only in a full check (no files named).
if [ "$#" -eq 0 ]; then
    if ! bash "$here/plugins/check_plugins.sh"; then
        failures=$((failures + 1))
    fi
fi

if [ "$failures" -ne 0 ]; then
    echo "CUDA compile check: $failures failure(s)"
    exit 1
fi
echo "CUDA compile check passed"
