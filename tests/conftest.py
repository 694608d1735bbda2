"""Shared fixtures: the default model, the tokenizer vectors, temporary GGUF files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_VECTORS = ROOT.parent / "shared" / "tokenizer-vectors"

# Compiled kernels go to a cache shared by all test runs of this checkout (not ~/.cache),
# unless the caller chose one.
os.environ.setdefault("LLAMATOOL_CACHE_DIR", str(ROOT / ".pytest_cache" / "llamatool"))


@pytest.fixture(scope="session")
def default_model() -> Path:
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"default model not fetched ({DEFAULT_MODEL}); run `make model`")
    return DEFAULT_MODEL


@pytest.fixture(scope="session")
def tokenizer_vectors() -> Path:
    if not TOKENIZER_VECTORS.is_dir():
        pytest.skip(f"llama.cpp tokenizer vectors not found at {TOKENIZER_VECTORS}")
    return TOKENIZER_VECTORS


def llama_cpp_binary(find_binary, name: str) -> Path:
    """llama.cpp's binary `name` as the comparison scripts find it (their find_binary), or a
    skip that says how to get one."""
    try:
        binary = find_binary(name)
    except SystemExit as e:
        pytest.skip(f"{name}: {e}")
    if binary is None:
        pytest.skip(f"no {name} binary (scripts/build_llamacpp.sh builds one; set LLAMA_CPP_BIN or put it on PATH)")
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
