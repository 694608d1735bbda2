"""scripts/compare_llamacpp.py: llamatool against llama.cpp (through llama-cpp-python) on the
default model. Tiny counts: this checks that both engines agree and that the comparison
runs, not speed (speed is measured by running the script)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from .conftest import llama_cpp_binary, llama_cpp_module, load_script


compare = load_script("compare_llamacpp")


@pytest.fixture(scope="module")
def engines(default_model):
    llama_cpp_module()
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


# --- llama-bench: the binary, found and parsed (these run without it) -------------------------


def _fake_binary(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


LLAMA_BENCH_JSON = """[
  {"build_commit": "x", "n_prompt": 8, "n_gen": 0, "n_threads": 2, "avg_ts": 1234.5, "stddev_ts": 0.0},
  {"build_commit": "x", "n_prompt": 0, "n_gen": 4, "n_threads": 2, "avg_ts": 150.25, "stddev_ts": 0.0}
]"""


def test_llama_bench_rate_is_read_from_its_json():
    assert compare.llama_bench_rate(LLAMA_BENCH_JSON, compare.Test(n_prompt=8)) == 1234.5
    assert compare.llama_bench_rate(LLAMA_BENCH_JSON, compare.Test(n_gen=4)) == 150.25
    with pytest.raises(SystemExit, match="no tg128 result"):
        compare.llama_bench_rate(LLAMA_BENCH_JSON, compare.Test(n_gen=128))
    with pytest.raises(SystemExit, match="no JSON"):
        compare.llama_bench_rate("| model | size |", compare.Test(n_prompt=8))


def test_llama_bench_gets_the_same_file_counts_and_threads(tmp_path):
    bench = compare.LlamaBench(Path("/opt/llama-bench"), tmp_path / "m.gguf", 3)
    cmd = bench.command(compare.Test(n_prompt=512))
    assert cmd[0] == "/opt/llama-bench"
    flags = dict(zip(cmd[1::2], cmd[2::2]))
    assert flags == {"-m": str(tmp_path / "m.gguf"), "-p": "512", "-n": "0", "-t": "3", "-b": "512", "-ub": "512",
                     "-r": "1", "-o": "json"}  # fmt: skip
    assert dict(zip(*[iter(bench.command(compare.Test(n_gen=128))[1:])] * 2))["-n"] == "128"


def test_llama_bench_runs_as_a_process(tmp_path):
    ok = _fake_binary(tmp_path, "llama-bench", f"cat <<'END'\n{LLAMA_BENCH_JSON}\nEND")
    assert compare.LlamaBench(ok, tmp_path / "m.gguf", 2).rate(compare.Test(n_gen=4)) == 150.25
    (tmp_path / "bad").mkdir()
    bad = _fake_binary(tmp_path / "bad", "llama-bench", "echo 'illegal instruction' >&2; exit 132")
    with pytest.raises(SystemExit, match="exit 132.*illegal instruction"):
        compare.LlamaBench(bad, tmp_path / "m.gguf", 2).rate(compare.Test(n_gen=4))


def test_binary_discovery(tmp_path, monkeypatch):
    find = compare.find_binary
    for folder in ("env", "path", "empty"):
        (tmp_path / folder).mkdir()
    in_env = _fake_binary(tmp_path / "env", "llama-bench", "exit 0")
    on_path = _fake_binary(tmp_path / "path", "llama-bench", "exit 0")
    environ = {"LLAMA_CPP_BIN": str(tmp_path / "env"), "PATH": str(tmp_path / "path")}
    # a path given wins: the binary itself or its folder; "none" turns it off
    assert find("llama-bench", str(on_path), environ) == on_path
    assert find("llama-bench", str(tmp_path / "path"), environ) == on_path
    assert find("llama-bench", "none", environ) is None
    # then LLAMA_CPP_BIN, then PATH, else none
    assert find("llama-bench", None, environ) == in_env
    assert find("llama-bench", None, {"PATH": str(tmp_path / "path")}) == on_path
    assert find("llama-bench", None, {"PATH": str(tmp_path / "empty")}) is None
    # a place named that holds no such executable is an error, not a quiet fall-back
    (tmp_path / "empty" / "llama-bench").write_text("not executable")
    for given, env in ((str(tmp_path / "empty"), environ), (None, {**environ, "LLAMA_CPP_BIN": str(tmp_path / "empty")})):
        with pytest.raises(SystemExit, match="no executable llama-bench there.*build_llamacpp.sh"):
            find("llama-bench", given, env)


def test_without_llama_cpp_or_llama_bench_says_how_to_get_either(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.delenv("LLAMA_CPP_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert compare.main([]) == 2
    err = capsys.readouterr().err
    assert "pip install" in err and "build_llamacpp.sh" in err


def test_speed_table_against_llama_bench(default_model):
    """The real binary, when there is one: both engines measured alternately, llama-bench's
    own figure read from its JSON."""
    binary = llama_cpp_binary(compare.find_binary, "llama-bench")
    ours = compare.Llamatool(default_model, 2, 128)
    try:
        bench = compare.LlamaBench(binary, default_model, 2)
        rows = compare.compare_speed({"llamatool": ours, "llama.cpp": bench}, compare.parse_tests("8", "2"), 1,
                                     ours.model.tokenizer.bos_id, ours.n_vocab, log=lambda msg: None)  # fmt: skip
    finally:
        ours.close()
    assert [r["test"] for r in rows] == ["pp8", "tg2"]
    for r in rows:
        assert r["llamatool_ts"] > 0 and r["llama.cpp_ts"] > 0
        assert r["ratio"] == pytest.approx(r["llamatool_ts"] / r["llama.cpp_ts"])
        assert r["llama.cpp_cpu_ts"] is None and r["cpu_ratio"] is None  # its own process: no CPU figure


# --- depth, bandwidth, scale fixtures -------------------------------------------------------


def test_depth_goes_to_llama_bench_and_its_json():
    test = compare.Test(n_gen=64, depth=4096)
    assert test.name == "tg64 @ d4096"
    cmd = compare.LlamaBench(Path("/opt/llama-bench"), Path("m.gguf"), 2).command(test)
    assert dict(zip(cmd[1::2], cmd[2::2]))["-d"] == "4096"
    out = """[{"n_prompt": 0, "n_gen": 64, "n_depth": 0, "avg_ts": 50.0},
              {"n_prompt": 0, "n_gen": 64, "n_depth": 4096, "avg_ts": 31.5}]"""
    assert compare.llama_bench_rate(out, test) == 31.5
    assert compare.llama_bench_rate(out, compare.Test(n_gen=64)) == 50.0
    assert [t.depth for t in compare.parse_tests("0", "16", depth=7)] == [7]


class _Recorder:
    """An engine that records what it is asked to evaluate."""

    def __init__(self):
        self.calls = []

    def reset(self):
        self.calls.append("reset")

    def eval(self, tokens):
        self.calls.append(len(tokens))


def test_depth_tokens_are_evaluated_before_the_clock():
    engine = _Recorder()
    compare.time_once(engine, compare.Test(n_gen=3, depth=10), list(range(13)))
    assert engine.calls == ["reset", 10, 1, 1, 1]
    engine = _Recorder()
    compare.time_once(engine, compare.Test(n_prompt=5, depth=4), list(range(9)))
    assert engine.calls == ["reset", 4, 5]


def test_bytes_per_token_reads_every_weight_and_the_kv_cache(default_model):
    from llamatool.gguf_io import GGUFReader

    reader = GGUFReader(default_model)
    meta = reader.metadata
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied: the embedding is the output matrix
    got = compare.bytes_per_token(default_model, compare.Test(n_gen=9, depth=100))
    assert got["weights"] == sum(t.nbytes for t in reader.tensors)
    per_position = 2 * 2 * meta["llama.block_count"] * meta["llama.attention.head_count_kv"] * (
        meta["llama.embedding_length"] // meta["llama.attention.head_count"])
    assert got["kv"] == per_position * 104  # positions 100..108 read 100..108 earlier ones: 104 on average
    rows = [{"test": "tg9 @ d100", "llamatool_ts": 10.0, "llama.cpp_ts": 5.0}]
    compare.add_bandwidth(rows, default_model, [compare.Test(n_gen=9, depth=100)], read_gbps=20.0)
    assert rows[0]["llamatool_gbps"] == pytest.approx(10 * (got["weights"] + got["kv"]) / 1e9)
    assert rows[0]["llama.cpp_of_read"] == pytest.approx(rows[0]["llama.cpp_gbps"] / 20.0)


def test_read_bandwidth_is_measured():
    assert compare.read_bandwidth(2, nbytes=1 << 24, repeats=2) > 0.1  # GB/s; any machine streams 16 MiB faster


class _Timed(_Recorder):
    """An engine whose every evaluated token takes `seconds`."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def eval(self, tokens):
        time.sleep(self.seconds * len(tokens))


def test_each_generation_run_is_set_against_the_probe_before_it(default_model):
    """The probe runs before every timed generation run (not before prompt runs), and an
    engine's share of the read bandwidth is the median of its runs' own shares: a probe that
    reads 10, 20, 40, ... GB/s in turn gives each run a different denominator."""
    calls = []

    def probe(repeats):
        calls.append(repeats)
        return 10.0 * 2 ** (len(calls) - 1)

    engines = {"llamatool": _Timed(0.002), "llama.cpp": _Timed(0.004)}
    tests = compare.parse_tests("4", "3")
    rows = compare.compare_speed(engines, tests, 3, None, 100, log=lambda msg: None, probe=probe)
    assert len(calls) == 3 * 2  # 3 repetitions x 2 engines, generation only
    assert "llamatool_read_samples" not in rows[0]
    gen = rows[1]
    # alternating order: llamatool first in repetitions 0 and 2, second in 1
    assert gen["llamatool_read_samples"] == [10.0, 80.0, 160.0]
    assert gen["llama.cpp_read_samples"] == [20.0, 40.0, 320.0]
    compare.add_bandwidth(rows, default_model, tests, read_gbps=1.0)
    per_token = gen["bytes_per_token"]
    shares = sorted(per_token * ts / 1e9 / g for ts, g in zip(gen["llamatool_samples"], gen["llamatool_read_samples"]))
    assert gen["llamatool_of_read"] == pytest.approx(shares[1])
    assert gen["llamatool_gbps"] == pytest.approx(per_token * gen["llamatool_ts"] / 1e9)
    # at equal memory: the median probe beside llamatool's runs read 80 GB/s, beside llama.cpp's 40,
    # so llamatool's lead in t/s is halved when each run is set against its own memory
    assert gen["share_ratio"] == pytest.approx(gen["llamatool_of_read"] / gen["llama.cpp_of_read"])
    assert gen["share_ratio"] == pytest.approx(gen["ratio"] * 40 / 80, rel=0.2)


def test_the_probe_keeps_the_faster_pattern():
    probe = compare.ReadProbe(2, nbytes=1 << 24)
    try:
        assert probe.loop is None
        assert probe(repeats=1) > 0.1
        assert probe.loop in compare._streaming_sums()
        kept = probe.loop
        assert probe(repeats=1) > 0.1 and probe.loop is kept
    finally:
        probe.close()


def test_fixture_names_are_checked(capsys):
    with pytest.raises(SystemExit, match="expected SHAPE-PRESET"):
        compare.resolve_model(None, "gpt-9-Q4_0")
    assert compare.resolve_model(Path("x.gguf"), None) == Path("x.gguf")
    assert compare.resolve_model(None, None) == compare.DEFAULT_MODEL
