#!/usr/bin/env bash
# cuda/plugins/check_plugins.sh - compile-only check of the TensorRT plugin
# sources (run by cuda/check.sh, i.e. by `make test`).
#
#   bash cuda/plugins/check_plugins.sh
#
# Compiles every cuda/plugins/plugins*.cpp with
#     ${CXX:-g++} -std=c++14 -fsyntax-only -Wall -Wextra -Werror
# against the TensorRT headers found first in
#     $SATEDGE_TENSORRT_INCLUDE, $TensorRT_ROOT/include,
#     /usr/include/x86_64-linux-gnu, /usr/include/aarch64-linux-gnu,
#     /usr/local/TensorRT/include
# (the directory holding NvInferRuntime.h) and the CUDA headers of
# $CUDA_HOME/include, else of the nvcc on PATH (or $NVCC), else
# /usr/local/cuda/include. TensorRT and CUDA headers are included as system
# headers (-isystem): their own warnings are not ours. Every file is C++14,
# also against TensorRT 10 (its headers compile as C++14; JetPack 4.6 builds
# TensorRT 8.2 code with gcc 7). Prints the TensorRT version checked against
# and one line per file:
#     ok   plugins_v3.cpp (0.9 s)
#     FAIL plugins_v2.cpp (0.4 s)   followed by the compiler output
# Nothing is linked (no libnvinfer needed) and nothing runs.
#
# Exit status: 0 when every file compiled, or when no TensorRT headers were
# found (one line says it was skipped); 1 when a compile failed or when
# SATEDGE_TENSORRT_INCLUDE / TensorRT_ROOT is set but holds no NvInferRuntime.h.
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cuda_dir="$(dirname "$here")"

trt_inc=""
if [ -n "${SATEDGE_TENSORRT_INCLUDE:-}" ]; then
    if [ ! -f "$SATEDGE_TENSORRT_INCLUDE/NvInferRuntime.h" ]; then
        echo "FAIL plugins: SATEDGE_TENSORRT_INCLUDE=$SATEDGE_TENSORRT_INCLUDE holds no NvInferRuntime.h"
        exit 1
    fi
    trt_inc="$SATEDGE_TENSORRT_INCLUDE"
elif [ -n "${TensorRT_ROOT:-}" ]; then
    if [ ! -f "$TensorRT_ROOT/include/NvInferRuntime.h" ]; then
        echo "FAIL plugins: TensorRT_ROOT=$TensorRT_ROOT has no include/NvInferRuntime.h"
        exit 1
    fi
    trt_inc="$TensorRT_ROOT/include"
else
    for dir in /usr/include/x86_64-linux-gnu /usr/include/aarch64-linux-gnu /usr/local/TensorRT/include; do
        if [ -f "$dir/NvInferRuntime.h" ]; then
            trt_inc="$dir"
            break
        fi
    done
fi
if [ -z "$trt_inc" ]; then
    echo "plugins: skipped: no TensorRT headers (NvInferRuntime.h) found; set TensorRT_ROOT or SATEDGE_TENSORRT_INCLUDE"
    exit 0
fi

cxx="${CXX:-g++}"
if ! command -v "$cxx" >/dev/null 2>&1; then
    echo "plugins: skipped: no C++ compiler ($cxx); set CXX"
    exit 0
fi

cuda_inc=""
nvcc_bin="$(command -v "${NVCC:-nvcc}" 2>/dev/null || true)"
for dir in ${CUDA_HOME:+"$CUDA_HOME/include"} ${nvcc_bin:+"$(dirname "$(dirname "$nvcc_bin")")/include"} \
           /usr/local/cuda/include; do
    if [ -f "$dir/cuda_runtime_api.h" ]; then
        cuda_inc="$dir"
        break
    fi
done
if [ -z "$cuda_inc" ]; then
    echo "FAIL plugins: no CUDA headers (cuda_runtime_api.h, which the TensorRT headers include); set CUDA_HOME"
    exit 1
fi

# The preprocessor resolves NvInferVersion.h whatever its layout (some releases
# define NV_TENSORRT_MAJOR through another macro).
trt_version="$(printf '#include <NvInferVersion.h>\nNV_TENSORRT_MAJOR.NV_TENSORRT_MINOR.NV_TENSORRT_PATCH\n' |
    "$cxx" -E -P -x c++ -I"$trt_inc" - 2>/dev/null | tr -d ' ' | tail -n 1)"
case "$trt_version" in
    [0-9]*.[0-9]*.[0-9]*) ;;
    *) trt_version="unknown (NvInferVersion.h not read)" ;;
esac

now_ms() { date +%s%3N; }
elapsed() { local ms=$(( $(now_ms) - $1 )); printf '%d.%d s' $((ms / 1000)) $(((ms % 1000) / 100)); }

shopt -s nullglob
sources=("$here"/plugins*.cpp)
shopt -u nullglob
if [ "${#sources[@]}" -eq 0 ]; then
    echo "FAIL plugins: no plugins*.cpp in $here"
    exit 1
fi

flags=(-std=c++14 -fsyntax-only -Wall -Wextra -Werror
       -I"$cuda_dir/include" -I"$here" -isystem "$trt_inc" -isystem "$cuda_inc")
echo "plugins: TensorRT $trt_version headers in $trt_inc; $("$cxx" --version | head -n 1); ${#sources[@]} file(s), -std=c++14"

failures=0
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for src in "${sources[@]}"; do
    name="$(basename "$src")"
    t0="$(now_ms)"
    if "$cxx" "${flags[@]}" "$src" >"$log" 2>&1; then
        echo "ok   $name ($(elapsed "$t0"))"
    else
        echo "FAIL $name ($(elapsed "$t0"))"
        sed 's/^/    /' "$log"
        failures=$((failures + 1))
    fi
done

if [ "$failures" -ne 0 ]; then
    echo "plugins: $failures failure(s)"
    exit 1
fi
echo "plugins: compile check passed (TensorRT $trt_version)"
