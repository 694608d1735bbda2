"""Shared fixtures: the default model, the tokenizer vectors, temporary GGUF files."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_VECTORS = ROOT.parent / "shared" / "tokenizer-vectors"

# Compiled kernels go to a cache shared by all test runs of this checkout (not ~/.cache),
# unless the caller chose one.
os.environ.setdefault("LLAMATOOL_CACHE_DIR", str(ROOT / ".pytest_cache" / "llamatool"))


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
