"""scripts/compare_llamacpp.py: llamatool against llama.cpp (through llama-cpp-python) on the
default model. Tiny counts: this checks that both engines agree and that the comparison
runs, not speed (speed is measured by running the script)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from .conftest import ROOT


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_llamacpp", ROOT / "scripts" / "compare_llamacpp.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


compare = _load_script()


@pytest.fixture(scope="module")
def engines(default_model):
    if compare.import_llama_cpp() is None:
        pytest.skip("llama-cpp-python is not installed (optional extra: pip install -e '.[compare]')")
    ours = compare.Llamatool(default_model, 2, 128)
    theirs = compare.LlamaCpp(default_model, 2, 128)
    yield ours, theirs
    ours.close()
    theirs.close()


def test_agrees_with_llama_cpp(engines):
    ours, theirs = engines
    report = compare.check_agreement(ours, theirs, compare.PROMPTS[:3], n_gen=4, top_k=10)
    for case in report["cases"]:
        # same arithmetic (8-bit activations, integer dots, f16 KV cache) in another order:
        # the next token and the top of the distribution agree, logits within a fraction of a unit
        assert case["top1_same"], case
        assert case["top_k_overlap"] >= 8, case
        assert case["greedy_agree"] >= 2, case
    assert report["max_abs_diff_top_k"] < 1.0, report


def test_speed_table_has_both_engines(engines):
    ours, theirs = engines
    tok = ours.model.tokenizer
    rows = compare.compare_speed({"llamatool": ours, "llama.cpp": theirs}, compare.parse_tests("8", "2"), 1, tok.bos_id,
                                 ours.n_vocab, log=lambda msg: None)
    assert [r["test"] for r in rows] == ["pp8", "tg2"]
    for r in rows:
        assert r["llamatool_ts"] > 0 and r["llama.cpp_ts"] > 0
        assert r["ratio"] == pytest.approx(r["llamatool_ts"] / r["llama.cpp_ts"])
        assert r["llamatool_cpu_ts"] > 0 and r["llama.cpp_cpu_ts"] > 0
        assert r["cpu_ratio"] == pytest.approx(r["llamatool_cpu_ts"] / r["llama.cpp_cpu_ts"])


def test_without_llama_cpp_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    assert compare.main(["--no-speed"]) != 0
    err = capsys.readouterr().err
    assert "pip install" in err and "[compare]" in err
