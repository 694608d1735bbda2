#!/usr/bin/env bash
# Build llama-cpp-python (the `compare` extra: the in-process llama.cpp of the parity tests)
# from its source distribution into a wheel kept in a cache folder, and print the folder to
# give pip as --find-links:
#
#     scripts/build_llama_cpp_python.sh CACHE_DIR
#     pip install --find-links "$(scripts/build_llama_cpp_python.sh CACHE_DIR)" -e '.[test,compare]'
#
# The wheel is kept under CACHE_DIR/llama-cpp-python-VERSION-KEY (key: version, CMAKE_ARGS,
# compilers, CPU; scripts/llamacpp_common.sh) beside its sha256, and reused while both match;
# otherwise pip builds it (about 10 minutes on 2 cores). The build leaves out the multimodal
# library (mtmd), which nothing here uses.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/llamacpp_common.sh
. "$ROOT/scripts/llamacpp_common.sh"
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
cache=${1:?usage: build_llama_cpp_python.sh CACHE_DIR}

# llama-cpp-python's own build otherwise (ggml for this CPU), as `pip install` would make it,
# but without ggml's AMX kernels (SIGILL where the VM does not enable AMX: llamacpp_common.sh)
no_amx=$(llamacpp_no_amx_flags)
CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
CMAKE_ARGS+=" -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'"
key=$(llamacpp_build_key "$CMAKE_ARGS")
out="$cache/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-$key"

if [ -f "$out/wheel.sha256" ] && (cd "$out" && sha256sum --quiet -c wheel.sha256 >/dev/null 2>&1); then
    echo "reusing $(cd "$out" && ls ./*.whl) in $out (key $key)" >&2
else
    sdist=$(llamacpp_sdist "$cache/src" "$PYTHON")
    building="$out.building"
    rm -rf "$building" "$out"
    CMAKE_ARGS=$CMAKE_ARGS CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        "$PYTHON" -m pip wheel --quiet --no-deps "$sdist" -w "$building" >&2
    (cd "$building" && sha256sum ./*.whl >wheel.sha256)
    mv "$building" "$out"
    echo "built $(cd "$out" && ls ./*.whl) in $out" >&2
fi
echo "$out"
