"""Shared fixtures and helpers: the default model, the tokenizer vectors, llama.cpp as the
reference (llama-cpp-python and its binaries), and running `llamatool` in a child process."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_VECTORS = ROOT.parent / "shared" / "tokenizer-vectors"

# Compiled kernels go to a cache shared by all test runs of this checkout (not ~/.cache),
# unless the caller chose one.
os.environ.setdefault("LLAMATOOL_CACHE_DIR", str(ROOT / ".pytest_cache" / "llamatool"))


# In CI (CI=true, as .ci/run runs) the default model and the references are there on purpose:
# one that is missing is a broken setup, so the tests that need it fail instead of skipping.
IN_CI = os.environ.get("CI", "").lower() == "true"


def missing_reference(reason: str):
    """Skip a test whose reference is not on this machine, or fail it in CI."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: .ci/run provides it, so its absence is a failure)", pytrace=False)
    pytest.skip(reason)


def llama_cpp_module():
    """llama-cpp-python (the `compare` extra), or missing_reference."""
    try:
        import llama_cpp
    except ImportError:
        missing_reference("llama-cpp-python is not installed (pip install -e '.[compare]')")
    return llama_cpp


def llama_cpp_lib(pattern: str) -> Path:
    """The first shared library of llama-cpp-python matching pattern (e.g. 'libggml-cpu*')."""
    lib_dir = Path(llama_cpp_module().__file__).parent / "lib"
    found = sorted(lib_dir.glob(f"{pattern}.so*")) + sorted(lib_dir.glob(f"{pattern}.dylib"))
    if not found:
        missing_reference(f"no {pattern} library in {lib_dir}")
    return found[0]


def llamatool(*args, input: str | None = None, timeout: float = 1800, **kw) -> subprocess.CompletedProcess:
    """`python -m llamatool ARGS` in a child process: text output captured, stdin `input` (or
    none at all, as in CI). The timeout only stops a hang: a first run compiles the kernels,
    minutes on a busy machine."""
    stdin = None if input is not None else subprocess.DEVNULL
    return subprocess.run([sys.executable, "-m", "llamatool", *map(str, args)], capture_output=True, text=True,
                          input=input, stdin=stdin, timeout=timeout, **kw)  # fmt: skip


def load_script(name: str):
    """scripts/NAME.py as a module (registered in sys.modules: its dataclasses look it up)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def default_model() -> Path:
    if not DEFAULT_MODEL.exists():
        missing_reference(f"default model not fetched ({DEFAULT_MODEL}); run `make model`")
    return DEFAULT_MODEL


@pytest.fixture(scope="session")
def tokenizer_vectors() -> Path:
    if not TOKENIZER_VECTORS.is_dir():
        missing_reference(f"llama.cpp tokenizer vectors not found at {TOKENIZER_VECTORS}")
    return TOKENIZER_VECTORS


def llama_cpp_binary(find_binary, name: str) -> Path:
    """llama.cpp's binary `name` as the comparison scripts find it (their find_binary), or a
    skip that says how to get one."""
    try:
        binary = find_binary(name)
    except SystemExit as e:
        missing_reference(f"{name}: {e}")
    if binary is None:
        missing_reference(f"no {name} binary (scripts/build_llamacpp.sh builds one; set LLAMA_CPP_BIN or put it on PATH)")
    return binary


def _saved_code() -> bool:
    from llamatool import host

    return host.saved_code()


# Tests of the saved machine code (quants/native.py, native_forward.py) run where it is on:
# x86-64 Linux without LLAMATOOL_NO_NATIVE. Elsewhere it is off by design, and tests/test_portable.py
# checks that nothing is saved or loaded there.
needs_saved_code = pytest.mark.skipif(
    not _saved_code(), reason="saved machine code is off by design here (LLAMATOOL_NO_NATIVE, or not x86-64 Linux)"
)
