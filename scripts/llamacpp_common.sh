# Sourced by scripts/build_llamacpp.sh and scripts/build_llama_cpp_python.sh: the llama.cpp
# version both build, where its source comes from, and the key a cached build is kept under.

LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}  # also pinned in pyproject's `compare` extra

# llama-cpp-python's source distribution (its vendor/llama.cpp is the llama.cpp the parity
# tests compare with), downloaded with pip into DIR once and reused while it unpacks cleanly.
# Prints the path of the .tar.gz.
llamacpp_sdist() {
    local dir=$1 python=$2
    local sdist="$dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
    if ! { [ -f "$sdist" ] && tar -tzf "$sdist" >/dev/null 2>&1; }; then
        mkdir -p "$dir"
        rm -f "$sdist"
        "$python" -m pip download --quiet --no-deps --no-binary :all: \
            "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$dir" >&2
    fi
    echo "$sdist"
}

# The unpacked source distribution in DIR (made once, marked complete by .unpacked).
# Prints the folder (its vendor/llama.cpp is llama.cpp's source tree).
llamacpp_unpacked() {
    local dir=$1 python=$2
    local tree="$dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
    if [ ! -f "$tree/.unpacked" ]; then
        local sdist
        sdist=$(llamacpp_sdist "$dir" "$python")
        rm -rf "$tree"
        tar -xzf "$sdist" -C "$dir"
        touch "$tree/.unpacked"
    fi
    echo "$tree"
}

# GGML_NATIVE compiles for this CPU with -march=native, which on a CPU with AMX also compiles
# ggml's AMX kernels; where the hypervisor does not enable AMX state (as on this project's
# Intel VMs) the first `tileloadd` kills the process with SIGILL. Explicit -mno-amx-* win over
# -march=native in GCC and Clang. Prints the flags (nothing where the compiler knows no AMX).
llamacpp_no_amx_flags() {
    if echo | ${CC:-cc} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 -E - >/dev/null 2>&1; then
        echo "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    fi
}

# A short hash of everything a build's result depends on: the version, the build's own
# settings (arguments), the compilers and cmake, and the CPU (ggml builds with -march=native).
llamacpp_build_key() {
    {
        echo "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION"
        printf '%s\n' "$@"
        ${CC:-cc} --version 2>/dev/null | head -n 1
        ${CXX:-c++} --version 2>/dev/null | head -n 1
        cmake --version 2>/dev/null | head -n 1
        uname -sm
        grep -m 1 '^flags' /proc/cpuinfo 2>/dev/null || true
    } | sha256sum | cut -c 1-16
}
