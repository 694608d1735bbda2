"""scripts/compare_quantize.py: the engines it times, their order, the figures it prints.
All but the last test run without llama.cpp; that one uses the llama-quantize binary when
there is one (LLAMA_CPP_BIN or PATH; scripts/build_llamacpp.sh builds it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import llama_cpp_binary, load_script


compare = load_script("compare_quantize")


def _fake_binary(folder: Path, body: str) -> Path:
    path = folder / "llama-quantize"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_llama_quantize_gets_llama_quantizes_own_arguments(tmp_path):
    cmd = compare.llama_quantize_command(Path("/opt/llama-quantize"), tmp_path / "in.gguf", tmp_path / "out.gguf", "Q4_K_M", 2)
    assert cmd == ["/opt/llama-quantize", "--allow-requantize", str(tmp_path / "in.gguf"), str(tmp_path / "out.gguf"), "Q4_K_M", "2"]


def test_binary_is_timed_as_a_process(tmp_path):
    """Arguments as llama-quantize takes them ($2 IN, $3 OUT); a failure stops the run with its stderr."""
    (tmp_path / "in.gguf").write_bytes(b"GGUF")
    copy = _fake_binary(tmp_path, 'sleep 0.05; cp "$2" "$3"')
    seconds = compare.binary_seconds(copy, tmp_path / "in.gguf", tmp_path / "out.gguf", "Q4_0", 2)
    assert seconds >= 0.05 and (tmp_path / "out.gguf").read_bytes() == b"GGUF"
    (tmp_path / "bad").mkdir()
    bad = _fake_binary(tmp_path / "bad", "echo 'unknown type' >&2; exit 1")
    with pytest.raises(SystemExit, match="failed on Q4_0 .exit 1.: unknown type"):
        compare.binary_seconds(bad, tmp_path / "in.gguf", tmp_path / "out.gguf", "Q4_0", 2)


def test_every_engine_goes_first_in_turn():
    names = ["llamatool", "baseline", "llama-quantize", "llama-cpp-python"]
    rounds = [compare.rotated(names, r) for r in range(4)]
    assert [r[0] for r in rounds] == names
    assert all(sorted(r) == sorted(names) for r in rounds)


def test_summary_has_the_ratio_of_each_llamatool_to_each_reference():
    seconds = {"llamatool": [0.6, 0.5, 0.9], "baseline": [0.8, 0.7, 0.75], "llama-quantize": [0.4, 0.5, 0.3],
               "llama-cpp-python": [0.25, 0.2, 0.3]}  # fmt: skip
    s = compare.summarize(seconds)
    assert s["medians"] == {"llamatool": 0.6, "baseline": 0.75, "llama-quantize": 0.4, "llama-cpp-python": 0.25}
    assert s["ratios"] == {
        ("llamatool", "llama-quantize"): pytest.approx(1.5), ("baseline", "llama-quantize"): pytest.approx(1.875),
        ("llamatool", "llama-cpp-python"): pytest.approx(2.4), ("baseline", "llama-cpp-python"): pytest.approx(3.0),
    }  # fmt: skip
    row = compare.table_row("Q4_0", s, {"llama-quantize": True, "llama-cpp-python": False})
    assert row.split() == ["Q4_0", "0.600s", "0.750s", "0.400s", "0.250s", "1.50x", "1.88x", "2.40x", "3.00x", "yes", "NO"]
    header = compare.table_header(list(seconds), s["ratios"], ["llama-quantize", "llama-cpp-python"])
    assert header.split()[-6:] == ["ours/lq", "base/lq", "ours/lcp", "base/lcp", "same:lq", "same:lcp"]


def test_without_any_llama_cpp_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.delenv("LLAMA_CPP_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert compare.main(["--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert "build_llamacpp.sh" in err and "pip install llama-cpp-python" in err


def test_same_bytes_as_the_llama_quantize_binary(default_model, capsys):
    """The real binary, when there is one: one round of Q8_0, timed, with llamatool's output
    byte for byte the binary's."""
    binary = llama_cpp_binary(compare.find_binary, "llama-quantize")
    rc = compare.main(["--model", str(default_model), "--types", "Q8_0", "--repeats", "1", "--no-llama-cpp-python",
                       "--llama-quantize", str(binary)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    row = next(line for line in out.splitlines() if line.startswith("Q8_0"))
    assert row.split()[-1] == "yes", out
    ours, theirs, ratio = row.split()[1:4]
    assert float(ours.rstrip("s")) > 0 and float(theirs.rstrip("s")) > 0
    assert float(ratio.rstrip("x")) == pytest.approx(float(ours.rstrip("s")) / float(theirs.rstrip("s")), rel=0.02)
