#!/usr/bin/env bash
# Build llama.cpp's llama-bench and llama-quantize, to compare llamatool with the real
# binaries (scripts/compare_llamacpp.py --llama-bench, scripts/compare_quantize.py
# --llama-quantize). Optional tooling: no test or CI step needs it.
#
#     scripts/build_llamacpp.sh [OUT_DIR]        # default: build/llama.cpp (git-ignored)
#
# The source is the llama.cpp that llama-cpp-python 0.3.36 vendors (the version the
# in-process comparisons use), fetched as that package's source distribution with pip;
# LLAMA_CPP_SRC=/path/to/llama.cpp builds an existing tree instead. Needs cmake and a
# C/C++ compiler; about 10 minutes on 2 cores. Prints the LLAMA_CPP_BIN to export, where
# both scripts look for the binaries.
set -euo pipefail

VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT/build/llama.cpp}" && cd "${1:-$ROOT/build/llama.cpp}" && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

src=${LLAMA_CPP_SRC:-}
if [ -z "$src" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work"
    tar -xzf "$work"/llama_cpp_python-"$VERSION".tar.gz -C "$work"
    src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"
fi
[ -f "$src/CMakeLists.txt" ] || { echo "error: $src is not a llama.cpp source tree" >&2; exit 1; }

# GGML_NATIVE compiles for this CPU with -march=native, which on a CPU with AMX also
# compiles ggml's AMX kernels (GGML_AMX_* only matter without GGML_NATIVE). Where the
# hypervisor does not enable AMX state (as on this project's VMs), the first `tileloadd`
# kills llama-bench with SIGILL; explicit -mno-amx-* win over -march=native in GCC and Clang.
no_amx=""
if echo | ${CC:-cc} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 -E - >/dev/null 2>&1; then
    no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi

logged() {  # run quietly into a log; on failure show its end
    local log=$1; shift
    "$@" >"$log" 2>&1 || { tail -n 25 "$log" >&2; echo "error: $1 failed (whole log: $log)" >&2; exit 1; }
}
logged "$OUT/cmake.log" cmake -S "$src" -B "$OUT" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx"
logged "$OUT/build.log" cmake --build "$OUT" --target llama-bench llama-quantize -j "$(nproc)"

for tool in llama-bench llama-quantize; do
    [ -x "$OUT/bin/$tool" ] || { echo "error: the build made no $OUT/bin/$tool (see $OUT/build.log)" >&2; exit 1; }
done
echo "built $OUT/bin/llama-bench and $OUT/bin/llama-quantize"
echo "export LLAMA_CPP_BIN=$OUT/bin"
