#!/usr/bin/env bash
# Build llama.cpp's llama-bench, llama-quantize, llama-perplexity, llama-server, llama-imatrix
# and llama-export-lora, the binaries the parity tests and the comparison scripts run
# (tests/test_compare_*.py, test_families.py's quantize and KLD checks, test_server.py's
# embeddings check, the imatrix and LoRA parity tests, scripts/compare_llamacpp.py
# --llama-bench, scripts/compare_quantize.py --llama-quantize, scripts/loadtest.py).
#
#     scripts/build_llamacpp.sh [OUT_DIR]       # default: build/llama.cpp (git-ignored)
#     scripts/build_llamacpp.sh --cache DIR     # OUT_DIR = DIR/llama.cpp-VERSION-KEY (.ci/run)
#
# The source is the llama.cpp that llama-cpp-python 0.3.36 vendors (the version the
# in-process comparisons use), fetched as that package's source distribution with pip;
# LLAMA_CPP_SRC=/path/to/llama.cpp builds an existing tree instead. Needs cmake and a
# C/C++ compiler; about 10 minutes on 2 cores. A finished build records its key (version,
# settings, compilers, CPU: scripts/llamacpp_common.sh) and the binaries' sha256; run again,
# it reuses the binaries when both still match. The last line printed is the LLAMA_CPP_BIN
# to export, where the tests and both scripts look for the binaries.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/llamacpp_common.sh
. "$ROOT/scripts/llamacpp_common.sh"
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
TOOLS=(llama-bench llama-quantize llama-perplexity llama-server llama-imatrix llama-export-lora)

no_amx=$(llamacpp_no_amx_flags)  # ggml's AMX kernels off: see llamacpp_common.sh
CMAKE_FLAGS=(
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_OPENSSL=OFF
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
    "-DCMAKE_C_FLAGS=$no_amx" "-DCMAKE_CXX_FLAGS=$no_amx"
)
key=$(llamacpp_build_key "${CMAKE_FLAGS[@]}" "${TOOLS[@]}" "source: ${LLAMA_CPP_SRC:-sdist}")

if [ "${1:-}" = "--cache" ]; then
    cache=${2:?usage: build_llamacpp.sh --cache DIR}
    OUT="$cache/llama.cpp-$LLAMA_CPP_PYTHON_VERSION-$key"
else
    OUT=${1:-$ROOT/build/llama.cpp}
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)

reusable() {  # the build in OUT was made with this key, and its binaries are the ones it made
    [ "$(cat "$OUT/build.key" 2>/dev/null)" = "$key" ] &&
        (cd "$OUT" && sha256sum --quiet -c build.sha256 >/dev/null 2>&1)
}

if reusable; then
    echo "reusing the llama.cpp binaries in $OUT/bin (key $key)" >&2
else
    rm -f "$OUT/build.key" "$OUT/build.sha256"
    src=${LLAMA_CPP_SRC:-}
    if [ -z "$src" ]; then
        if [ -n "${cache:-}" ]; then
            unpack="$cache/src"  # kept: the next build and the converter tests read it too
        else
            unpack=$(mktemp -d)
            trap 'rm -rf "$unpack"' EXIT
        fi
        src="$(llamacpp_unpacked "$unpack" "$PYTHON")/vendor/llama.cpp"
    fi
    [ -f "$src/CMakeLists.txt" ] || { echo "error: $src is not a llama.cpp source tree" >&2; exit 1; }

    logged() {  # run quietly into a log; on failure show its end
        local log=$1; shift
        "$@" >"$log" 2>&1 || { tail -n 25 "$log" >&2; echo "error: $1 failed (whole log: $log)" >&2; exit 1; }
    }
    rm -f "$OUT/CMakeCache.txt"  # configure afresh: the source folder may have moved
    logged "$OUT/cmake.log" cmake -S "$src" -B "$OUT" "${CMAKE_FLAGS[@]}"
    logged "$OUT/build.log" cmake --build "$OUT" --target "${TOOLS[@]}" -j "$(nproc)"
    for tool in "${TOOLS[@]}"; do
        [ -x "$OUT/bin/$tool" ] || { echo "error: the build made no $OUT/bin/$tool (see $OUT/build.log)" >&2; exit 1; }
    done
    (cd "$OUT" && sha256sum "${TOOLS[@]/#/bin/}" >build.sha256)
    echo "$key" >"$OUT/build.key"
    echo "built ${TOOLS[*]} in $OUT/bin" >&2
fi
echo "export LLAMA_CPP_BIN=$OUT/bin"
