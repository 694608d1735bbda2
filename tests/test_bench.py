"""llamatool bench: llama-bench's option syntax, statistics and output formats."""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from pathlib import Path

import pytest

from llamatool.bench import (
    FIELDS,
    BenchResult,
    BenchTest,
    format_csv,
    format_json,
    format_markdown,
    parse_int_list,
    parse_pairs,
    plan_tests,
    stdev,
)
from llamatool.errors import LlamatoolError

from .conftest import llamatool


def test_int_lists_and_ranges_like_llama_bench():
    assert parse_int_list("512") == [512]
    assert parse_int_list("128,512") == [128, 512]
    assert parse_int_list("1-4") == [1, 2, 3, 4]
    assert parse_int_list("1-8+3") == [1, 4, 7]
    assert parse_int_list("16-512*2") == [16, 32, 64, 128, 256, 512]
    assert parse_int_list("0") == [0]
    for bad in ("", "a", "1-", "4-2x", "1,,2", "0-8*2"):
        with pytest.raises(LlamatoolError):
            parse_int_list(bad)
    assert parse_pairs(["512,128", "64, 16"]) == [(512, 128), (64, 16)]
    with pytest.raises(LlamatoolError):
        parse_pairs(["512"])


def test_stdev_is_the_sample_standard_deviation():
    values = [410.5, 398.2, 402.9, 415.0, 401.1]
    assert stdev(values) == pytest.approx(statistics.stdev(values), rel=1e-9)
    assert stdev([3.0]) == 0.0


def test_plan_follows_llama_bench_order():
    tests = plan_tests([Path("a.gguf"), Path("b.gguf")], [512], [128], [(64, 16)], [1, 2])
    names = [(t.model.name, t.n_threads, t.name) for t in tests]
    assert names[:3] == [("a.gguf", 1, "pp512"), ("a.gguf", 1, "tg128"), ("a.gguf", 1, "pp64+tg16")]
    assert names[3] == ("a.gguf", 2, "pp512") and len(names) == 12
    assert plan_tests([Path("a")], [0], [0], [], [2]) == []
    t = BenchTest(Path("m"), 512, 0, 1024, 2048, 2)
    assert t.name == "pp512 @ d1024"


def _result(samples_ns):
    r = BenchResult(BenchTest(Path("models/x.gguf"), 512, 0, 0, 2048, 2), "llama 135M Q4_1", 96_576_768, 134_515_008, "f32")
    r.samples_ns = samples_ns
    r.test_time = "2026-11-28T00:00:00Z"
    return r


def test_rates_are_per_repetition_then_averaged():
    r = _result([1_000_000_000, 2_000_000_000])  # 512 t/s and 256 t/s
    assert r.samples_ts == [512.0, 256.0]
    assert r.avg_ts == 384.0  # mean of rates, not total tokens / total time
    assert r.stddev_ts == pytest.approx(statistics.stdev([512.0, 256.0]))


def test_markdown_matches_llama_bench_layout():
    md = format_markdown([_result([1_000_000_000, 1_000_000_000])])
    lines = md.splitlines()
    assert lines[0] == (
        "| model                          |       size |     params | backend    | threads |            test |                  t/s |"
    )
    assert lines[1] == (
        "| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: |"
    )
    assert lines[2].startswith("| llama 135M Q4_1                |  92.10 MiB |   134.52 M | CPU        |       2 |           pp512 |")
    assert "512.00 ± 0.00" in lines[2]


def test_json_and_csv_carry_llama_bench_fields():
    results = [_result([1_000_000_000, 1_250_000_000, 1_100_000_000])]
    data = json.loads(format_json(results))
    rec = data[0]
    assert list(rec)[: len(FIELDS)] == FIELDS and {"samples_ns", "samples_ts"} <= set(rec)
    assert rec["n_prompt"] == 512 and rec["n_gen"] == 0 and rec["n_threads"] == 2
    assert rec["avg_ts"] == pytest.approx(statistics.mean(rec["samples_ts"]))
    assert rec["stddev_ts"] == pytest.approx(statistics.stdev(rec["samples_ts"]))
    assert rec["model_size"] == 96_576_768 and rec["model_type"] == "llama 135M Q4_1"
    rows = list(csv.reader(io.StringIO(format_csv(results))))
    assert rows[0] == FIELDS and len(rows) == 2
    assert float(rows[1][FIELDS.index("avg_ts")]) == pytest.approx(rec["avg_ts"])


def test_bad_options_are_one_line_errors(tmp_path):
    proc = llamatool("bench", "-m", tmp_path / "missing.gguf")
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "no such file" in proc.stderr
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    proc = llamatool("bench", "-m", model, "-p", "12x")
    assert proc.returncode == 1 and "invalid -p list" in proc.stderr
    proc = llamatool("bench", "-m", model, "-o", "xml")
    assert proc.returncode == 1 and "unknown output format" in proc.stderr


# --- the real default model ---------------------------------------------------------------


def test_bench_json_on_the_default_model(default_model):
    from llamatool.gguf_io import GGUFReader

    proc = llamatool("bench", "-m", default_model, "-p", "16", "-n", "8", "-r", "2", "-t", "2", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)
    assert [(r["n_prompt"], r["n_gen"]) for r in records] == [(16, 0), (0, 8)]
    reader = GGUFReader(default_model)
    for r in records:
        assert list(r)[: len(FIELDS)] == FIELDS
        assert r["model_type"] == "llama 135M Q4_1" and r["n_threads"] == 2 and r["backends"] == "CPU"
        assert r["type_k"] == r["type_v"] == "f16"  # the forward pass keeps its KV cache in f16
        assert r["model_size"] == sum(t.nbytes for t in reader.tensors)
        assert r["model_n_params"] == sum(t.n_elements for t in reader.tensors)
        assert len(r["samples_ns"]) == len(r["samples_ts"]) == 2
        n_tokens = r["n_prompt"] + r["n_gen"]
        for ns, ts in zip(r["samples_ns"], r["samples_ts"]):
            assert ns > 0 and ts == pytest.approx(1e9 * n_tokens / ns)
        # a 135M model on any CPU: more than 1 token/s, fewer than a million
        assert all(1 < ts < 1e6 for ts in r["samples_ts"])
        assert r["avg_ts"] == pytest.approx(statistics.mean(r["samples_ts"]))
        assert r["stddev_ts"] == pytest.approx(statistics.stdev(r["samples_ts"]))
        assert r["avg_ns"] == pytest.approx(statistics.mean(r["samples_ns"]), abs=1)


def test_bench_table_on_the_default_model(default_model):
    proc = llamatool("bench", "-m", default_model, "-p", "16", "-n", "8", "-r", "2", "-t", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if "model" in line and "t/s" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == ["model", "size", "params", "backend", "threads", "test", "t/s"]
    rows = {m.group(1): float(m.group(2)) for m in (re.search(r"│\s+(pp16|tg8)\s+│\s+([\d.]+) ± [\d.]+\s+│", line) for line in lines) if m}
    assert set(rows) == {"pp16", "tg8"} and all(v > 1 for v in rows.values())
    assert "llama 135M Q4_1" in proc.stdout and "92.10 MiB" in proc.stdout and "134.52 M" in proc.stdout


def test_each_thread_count_runs_on_a_model_with_that_many_threads(default_model, monkeypatch):
    """-t 1,2: every test runs on a model loaded for its own thread count (the forward pass
    takes its threads from the model, not from a global setting)."""
    from llamatool import bench

    seen = []

    def fake_run_test(model, test, reps, warmup, seed=0):
        seen.append((test.n_threads, model.n_threads))
        return [1000] * reps

    monkeypatch.setattr(bench, "run_test", fake_run_test)
    tests = plan_tests([Path(default_model)], [16], [8], [], [1, 2])
    bench.run_benchmarks(tests, reps=1, warmup=False)
    assert seen == [(1, 1), (1, 1), (2, 2), (2, 2)]
