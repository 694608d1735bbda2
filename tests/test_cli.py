"""The command line as a user meets it: fast help, no numba for light commands, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import llamatool


def imported_modules(*args) -> str:
    """stderr of `python -X importtime -m llamatool ARGS`: one line per imported module."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "llamatool", *map(str, args)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def test_help_lists_every_command_without_numba():
    proc = llamatool("--help")
    assert proc.returncode == 0
    for command in ("convert", "quantize", "run", "bench", "info"):
        assert command in proc.stdout
    modules = imported_modules("--help")
    assert "numba" not in modules
    assert "numpy" not in modules  # --help needs nothing heavy


def test_info_does_not_import_numba(default_model):
    modules = imported_modules("info", default_model)
    assert " numba" not in modules and "llvmlite" not in modules


def test_info_shows_the_default_model(default_model):
    proc = llamatool("info", default_model)
    assert proc.returncode == 0, proc.stderr
    for text in ("llama", "Q4_1", "576", "49152", "gpt2", "smollm", "chat template", "bits per weight"):
        assert text in proc.stdout


def test_info_json_and_tensors(default_model):
    proc = llamatool("info", default_model, "--json", "--tensors")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["general"]["architecture"] == "llama"
    assert data["general"]["file_type"] == "Q4_1"
    assert data["hyperparameters"]["block_count"] == 30
    assert data["tokenizer"]["vocab_size"] == 49152 and data["tokenizer"]["chat_template"] is True
    assert data["weights"]["parameters"] == sum(
        t["shape"][0] * (t["shape"][1] if len(t["shape"]) > 1 else 1) for t in data["tensors"]
    )
    assert len(data["tensors"]) == 272
    assert data["metadata"]["tokenizer.ggml.tokens"] == {"type": "array[string]", "length": 49152}
    assert 5.0 < data["weights"]["bits_per_weight"] < 6.5


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such file"), (b"", "empty file"), (b"GGUF\x03\x00\x00\x00", "truncated"), (b"PK\x03\x04" * 8, "not a GGUF")],
)
def test_info_bad_input_is_one_clean_line(tmp_path, content, message):
    path = tmp_path / "bad.gguf"
    if content is not None:
        path.write_bytes(content)
    proc = llamatool("info", path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
