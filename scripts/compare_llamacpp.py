#!/usr/bin/env python3
"""llamatool next to llama.cpp on the same GGUF: speed per test, and whether they agree.

    .venv/bin/python scripts/compare_llamacpp.py                       # default model, pp512 + tg128
    .venv/bin/python scripts/compare_llamacpp.py -m x.gguf -p 512 -n 128 -t 2 -r 5 --json
    .venv/bin/python scripts/compare_llamacpp.py --fixture llama-3.2-1b-Q4_0 -p 0 -n 64 -t 1 -r 3
    .venv/bin/python scripts/compare_llamacpp.py --fixture llama-3.2-1b-Q4_0 -p 0 -n 64 -d 4096

--fixture SHAPE-PRESET takes a random-weight model of a real shape (scripts/make_random_model.py,
made on first use): weights that do not fit in the caches, where decode is bound by memory.
-d fills the context with that many tokens before each test (not timed), as llama-bench -d.
For generation the report adds the bandwidth each engine reached (bytes one token reads: every
weight once plus the KV cache up to its position, times t/s) next to the machine's read
bandwidth, measured here after the speed tests (1 GiB read once on -t threads, best of 5).

Speed: llamatool against llama.cpp's own llama-bench binary when there is one
(--llama-bench PATH, else $LLAMA_CPP_BIN/llama-bench, else llama-bench on PATH;
scripts/build_llamacpp.sh builds it): one llama-bench process per repetition (`-r 1`,
after its own warm-up run, `-o json`), same file, -p/-n, threads and batch size.
Without it (or with --llama-bench none), llama.cpp runs in this process through
llama-cpp-python (the optional extra `pip install -e '.[compare]'`, or `pip install
llama-cpp-python`, which builds llama.cpp from source), which is slower than llama-bench
(its Python eval loop): both engines then get the same synthetic tokens (llamatool's
bench: random ids, BOS first when the model adds one), and tokens per CPU-second of the
process are reported too: with one thread they compare the engines' work even when other
processes hold the cores (an oversubscribed machine costs llama.cpp's spinning thread pool
far more wall time than it costs the work itself). Repetitions alternate between the
engines, so a busy machine slows both alike; the figures are medians and the ratio is
llamatool t/s / llama.cpp t/s.

Then the agreement check, through llama-cpp-python: for a few prompts, greedy
continuations of both engines (same prompt ids) and the top-k logits at the last prompt
position. Logits differ a little by construction (different summation orders in the same
integer-dot arithmetic), so the report is how many greedy tokens agree before the first
divergence and the largest logit difference among llama.cpp's top k.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from llamacpp_bin import BUILD_HINT, find_binary  # noqa: E402

DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
N_BATCH = 512
PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The three primary colors are",
)
INSTALL_HINT = (
    "llama-cpp-python is not installed; get it with `pip install -e '.[compare]'` "
    "(or `pip install llama-cpp-python`, which builds llama.cpp from source: minutes on 2 cores)"
)


def import_llama_cpp():
    """The llama_cpp module, or None when the optional package is missing."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp


@dataclass(frozen=True)
class Test:
    n_prompt: int = 0
    n_gen: int = 0
    depth: int = 0  # tokens already in the context (evaluated first, not timed): llama-bench's -d

    @property
    def name(self) -> str:
        name = f"pp{self.n_prompt}" if self.n_prompt else f"tg{self.n_gen}"
        return f"{name} @ d{self.depth}" if self.depth else name

    @property
    def n_tokens(self) -> int:
        return self.n_prompt + self.n_gen


# --- the two engines, behind the same three calls: reset, eval(tokens), logits ---------------


class LlamaCpp:
    def __init__(self, path: Path, n_threads: int, n_ctx: int):
        llama_cpp = import_llama_cpp()
        self._lib = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(path), n_threads=n_threads, n_threads_batch=n_threads, n_ctx=n_ctx, n_batch=N_BATCH,
            n_ubatch=N_BATCH, verbose=False,
        )  # fmt: skip
        self.n_vocab = self.llm.n_vocab()

    def reset(self) -> None:
        self.llm.reset()

    def eval(self, tokens) -> None:
        self.llm.eval(list(tokens))  # batches of n_batch; drops cache entries past n_tokens first

    def logits(self) -> np.ndarray:
        ptr = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def close(self) -> None:
        self.llm.close()


class LlamaBench:
    """llama.cpp's llama-bench binary, one process per repetition: a test's t/s as it reports it."""

    def __init__(self, binary: Path, path: Path, n_threads: int):
        self.binary, self.path, self.n_threads = binary, path, n_threads

    def command(self, test: Test) -> list[str]:
        cmd = [str(self.binary), "-m", str(self.path), "-p", str(test.n_prompt), "-n", str(test.n_gen),
                "-t", str(self.n_threads), "-b", str(N_BATCH), "-ub", str(N_BATCH), "-r", "1", "-o", "json"]  # fmt: skip
        return cmd + ["-d", str(test.depth)] if test.depth else cmd

    def rate(self, test: Test) -> float:
        proc = subprocess.run(self.command(test), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{self.binary} failed (exit {proc.returncode}) on {test.name}: {proc.stderr[-1500:]}")
        return llama_bench_rate(proc.stdout, test)

    def close(self) -> None:
        pass


def llama_bench_rate(output: str, test: Test) -> float:
    """The t/s of `test` in llama-bench's `-o json` output (a list of test results)."""
    try:
        results = json.loads(output)
    except json.JSONDecodeError as e:
        raise SystemExit(f"llama-bench printed no JSON ({e}): {output[:200]!r}") from None
    for r in results if isinstance(results, list) else []:
        if (r.get("n_prompt") == test.n_prompt and r.get("n_gen") == test.n_gen and r.get("n_depth", 0) == test.depth
                and "avg_ts" in r):
            return float(r["avg_ts"])
    raise SystemExit(f"llama-bench's output has no {test.name} result")


class Llamatool:
    def __init__(self, path: Path, n_threads: int, n_ctx: int):
        from llamatool.model import Model

        self.model = Model.load(path, n_ctx=n_ctx, n_threads=n_threads, n_batch=N_BATCH)
        self.n_vocab = self.model.args.n_vocab
        self._last = None

    def reset(self) -> None:
        self.model.reset()

    def eval(self, tokens) -> None:
        self._last = self.model.eval(list(tokens))

    def logits(self) -> np.ndarray:
        return self._last

    def close(self) -> None:
        self.model._forward.close()


# --- speed ------------------------------------------------------------------------------------


def synthetic_tokens(rng, n: int, n_vocab: int, bos: int | None) -> list[int]:
    """Random ids with BOS first, as llamatool's (and llama-bench's) tests use."""
    from llamatool.bench import _random_tokens

    return _random_tokens(rng, n, n_vocab, bos)


def time_once(engine, test: Test, tokens: list[int]) -> tuple[float, float]:
    """Wall and process CPU seconds for one repetition of the test on a fresh context (its
    first test.depth tokens evaluated before the clock starts)."""
    engine.reset()
    if test.depth:
        engine.eval(tokens[: test.depth])
        tokens = tokens[test.depth:]
    start, cpu = time.perf_counter(), time.process_time()
    if test.n_prompt:
        engine.eval(tokens)  # batches of N_BATCH inside both engines
    else:
        for t in tokens:
            engine.eval([t])
    return time.perf_counter() - start, time.process_time() - cpu


def measure(engine, test: Test, tokens: list[int]) -> tuple[float, float | None]:
    """One repetition: t/s, and t/s per CPU-second of this process (None for llama-bench,
    which runs in its own)."""
    if isinstance(engine, LlamaBench):
        return engine.rate(test), None
    wall, cpu = time_once(engine, test, tokens)
    return test.n_tokens / wall, test.n_tokens / cpu


def compare_speed(engines: dict, tests: list[Test], reps: int, bos: int | None, n_vocab: int, log=print,
                  probe=None) -> list[dict]:
    """Median t/s of each engine per test, alternating engines every repetition. With a probe
    (a ReadProbe), every timed generation run is preceded by a read-bandwidth measurement,
    which add_bandwidth sets that run against."""
    rows = []
    for test in tests:
        rng = np.random.default_rng(0)
        token_sets = [synthetic_tokens(rng, test.depth + test.n_tokens, n_vocab, bos) for _ in range(reps + 1)]
        rates = {name: [] for name in engines}
        cpu_rates = {name: [] for name in engines}
        probing = probe is not None and not test.n_prompt
        reads = {name: [] for name in engines}
        for name, engine in engines.items():  # warm-up, not counted (llama-bench warms up itself)
            if not isinstance(engine, LlamaBench):
                time_once(engine, test, token_sets[0])
        for r in range(reps):
            order = list(engines.items()) if r % 2 == 0 else list(engines.items())[::-1]
            for name, engine in order:
                if probing:
                    reads[name].append(probe(repeats=2))
                rate, cpu_rate = measure(engine, test, token_sets[r + 1])
                rates[name].append(rate)
                cpu_rates[name].append(cpu_rate)
        row = {"test": test.name, **{f"{n}_ts": statistics.median(v) for n, v in rates.items()},
               **{f"{n}_samples": v for n, v in rates.items()},
               # tokens per CPU-second of the process: on a busy machine, with one thread, the
               # figure a descheduled engine does not lose
               **{f"{n}_cpu_ts": None if None in v else statistics.median(v) for n, v in cpu_rates.items()}}  # fmt: skip
        if probing:
            row.update({f"{n}_read_samples": v for n, v in reads.items()})
        row["ratio"] = row["llamatool_ts"] / row["llama.cpp_ts"]
        row["cpu_ratio"] = None if row["llama.cpp_cpu_ts"] is None else row["llamatool_cpu_ts"] / row["llama.cpp_cpu_ts"]
        per_cpu = "" if row["cpu_ratio"] is None else (
            f" (per CPU-second: {row['llamatool_cpu_ts']:.1f} / {row['llama.cpp_cpu_ts']:.1f}, {row['cpu_ratio']:.2f})")
        log(f"  {test.name}: llamatool {row['llamatool_ts']:.1f} t/s, llama.cpp {row['llama.cpp_ts']:.1f} t/s, "
            f"ratio {row['ratio']:.2f}{per_cpu}")  # fmt: skip
        rows.append(row)
    return rows


# --- memory bandwidth -------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _streaming_sums():
    """Two loops that only read: integer adds, which the compiler spreads over vector
    accumulators, so the loads, not the adds, set their speed (numpy's float32 sum is pairwise
    and ran at half the rate the decode loops reached). One reads its words in order, the
    other reads four quarters side by side, as four rows at once: which keeps the memory
    busier depends on the CPU (one thread of a Xeon: one stream 10.8 GB/s, four 11.5; of a
    Zen 4: one stream 29, four 14), so the machine's figure is the better of the two."""
    from numba import njit

    @njit(nogil=True, cache=False)
    def in_order(words):
        total = np.uint64(0)
        for i in range(words.size):
            total += words[i]
        return total

    @njit(nogil=True, cache=False)
    def four_quarters(words):
        total = np.uint64(0)
        q = words.size // 4
        for i in range(q):
            total += words[i] + words[q + i] + words[2 * q + i] + words[3 * q + i]
        return total

    return in_order, four_quarters


class ReadProbe:
    """The machine's read bandwidth in GB/s: nbytes (far larger than the caches) read once by
    n_threads threads, each summing its contiguous share as 64-bit integers, best of repeats:
    the rate decode would reach if it only streamed its weights. The first call tries both
    access patterns (_streaming_sums) and keeps the better for the later ones. Made once and
    called beside every timed run: on a shared machine another tenant's load moves the
    bandwidth from minute to minute (2 threads of a Zen 4: 32 GB/s, then 52 a minute later),
    so a run's share of it is taken against the probe made just before it."""

    def __init__(self, n_threads: int, nbytes: int = 1 << 30):
        self.parts = np.array_split(np.ones(nbytes // 8, np.uint64), n_threads)
        self.nbytes = sum(part.nbytes for part in self.parts)
        self.pool = ThreadPoolExecutor(n_threads)
        self.loop = None

    def _best_seconds(self, loop, repeats: int) -> float:
        loop(self.parts[0][:8])  # compiled before the clock starts
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            list(self.pool.map(loop, self.parts))
            best = min(best, time.perf_counter() - start)
        return best

    def __call__(self, repeats: int = 5) -> float:
        seconds = {loop: self._best_seconds(loop, repeats) for loop in ([self.loop] if self.loop else _streaming_sums())}
        self.loop = min(seconds, key=seconds.get)
        return self.nbytes / seconds[self.loop] / 1e9

    def close(self) -> None:
        self.pool.shutdown()


def read_bandwidth(n_threads: int, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """One ReadProbe measurement (both access patterns, best of repeats)."""
    probe = ReadProbe(n_threads, nbytes)
    try:
        return probe(repeats)
    finally:
        probe.close()


def bytes_per_token(path: Path, test: Test) -> dict:
    """Bytes one generated token reads, averaged over the test: every weight once (of the token
    embedding only its row, unless it is also the output matrix), and the f16 KV cache of every
    position before it."""
    from llamatool.gguf_io import GGUFReader

    reader = GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    weights = sum(t.nbytes for t in tensors.values())
    embd = tensors.get("token_embd.weight")
    if embd is not None and "output.weight" in tensors:
        weights -= embd.nbytes - embd.nbytes // embd.n_rows
    meta = reader.metadata
    arch = meta["general.architecture"]
    n_embd, n_head = meta[f"{arch}.embedding_length"], meta[f"{arch}.attention.head_count"]
    head_dim = meta.get(f"{arch}.attention.key_length", n_embd // n_head)
    n_kv = meta.get(f"{arch}.attention.head_count_kv", n_head)
    per_position = 2 * 2 * meta[f"{arch}.block_count"] * n_kv * head_dim  # K and V, f16
    mean_position = test.depth + test.n_prompt + (test.n_gen - 1) / 2
    return {"weights": weights, "kv": int(per_position * mean_position)}


def add_bandwidth(rows: list[dict], path: Path, tests: list[Test], read_gbps: float) -> None:
    """Each generation row gains the GB/s each engine moved and its share of the read bandwidth:
    the median over its runs of each run's GB/s against the probe made just before it, where
    compare_speed made them (<engine>_read_samples), else against read_gbps; and the ratio
    of the two shares."""
    for row, test in zip(rows, tests):
        if test.n_prompt:
            continue
        per_token = bytes_per_token(path, test)
        row["bytes_per_token"] = per_token["weights"] + per_token["kv"]
        for name in ("llamatool", "llama.cpp"):
            row[f"{name}_gbps"] = row["bytes_per_token"] * row[f"{name}_ts"] / 1e9
            reads = row.get(f"{name}_read_samples")
            row[f"{name}_of_read"] = row[f"{name}_gbps"] / read_gbps if not reads else statistics.median(
                row["bytes_per_token"] * ts / 1e9 / gbps for ts, gbps in zip(row[f"{name}_samples"], reads))
        # the engines' ratio with each run set against the memory it had: where another
        # tenant's load comes and goes, the t/s ratio says which engine drew the quiet minutes
        row["share_ratio"] = row["llamatool_of_read"] / row["llama.cpp_of_read"]


# --- agreement ----------------------------------------------------------------------------------


def greedy(engine, prompt_ids: list[int], n_gen: int) -> tuple[np.ndarray, list[int]]:
    """Logits at the last prompt position and n_gen greedy tokens."""
    engine.reset()
    engine.eval(prompt_ids)
    first = engine.logits()
    out, logits = [], first
    for _ in range(n_gen):
        out.append(int(np.argmax(logits)))
        engine.eval([out[-1]])
        logits = engine.logits()
    return first, out


def check_agreement(ours: Llamatool, theirs: LlamaCpp, prompts=PROMPTS, n_gen: int = 16, top_k: int = 10) -> dict:
    """Greedy tokens and top-k logits of both engines for each prompt (same prompt ids)."""
    tok = ours.model.tokenizer
    cases = []
    for text in prompts:
        ids = tok.encode(text, add_special=True)
        la, ta = greedy(ours, ids, n_gen)
        lb, tb = greedy(theirs, ids, n_gen)
        top = np.argsort(-lb)[:top_k]
        same_prefix = next((i for i, (a, b) in enumerate(zip(ta, tb)) if a != b), min(len(ta), len(tb)))
        cases.append({
            "prompt": text,
            "tokens_llamatool": ta,
            "tokens_llama.cpp": tb,
            "greedy_agree": same_prefix,
            "top_k_overlap": len(set(top.tolist()) & set(np.argsort(-la)[:top_k].tolist())),
            "top1_same": int(np.argmax(la)) == int(np.argmax(lb)),
            "max_abs_diff_top_k": float(np.max(np.abs(la[top] - lb[top]))),
            "text_llamatool": tok.decode(ta),
            "text_llama.cpp": tok.decode(tb),
        })  # fmt: skip
    return {
        "n_gen": n_gen,
        "top_k": top_k,
        "cases": cases,
        "greedy_agree": sum(c["greedy_agree"] for c in cases),
        "greedy_total": n_gen * len(cases),
        "max_abs_diff_top_k": max(c["max_abs_diff_top_k"] for c in cases),
    }


# --- command line -------------------------------------------------------------------------------


def parse_tests(prompts: str, gens: str, depth: int = 0) -> list[Test]:
    tests = [Test(n_prompt=int(p), depth=depth) for p in prompts.split(",") if p.strip() and int(p)]
    tests += [Test(n_gen=int(g), depth=depth) for g in gens.split(",") if g.strip() and int(g)]
    return tests


def resolve_model(model: Path | None, fixture: str | None, log=print) -> Path:
    """-m's file, or a scale fixture SHAPE-PRESET (e.g. llama-3.2-1b-Q4_0) from
    scripts/make_random_model.py's folder, made first if it is missing."""
    if fixture is None:
        return model or DEFAULT_MODEL
    import make_random_model as fixtures

    shape, _, preset = fixture.rpartition("-")
    if shape not in fixtures.SHAPES or not preset:
        raise SystemExit(f"--fixture {fixture!r}: expected SHAPE-PRESET, SHAPE one of {', '.join(fixtures.SHAPES)}")
    made = fixtures.make(shape, fixtures.DEFAULT_OUT, [preset.upper()], fixtures.DEFAULT_VOCAB, seed=0, force=False, log=log)
    return made[preset.upper()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", type=Path, default=None, help=f"GGUF file (default {DEFAULT_MODEL.name})")
    ap.add_argument("--fixture", default=None, metavar="SHAPE-PRESET",
                    help="a random-weight model of a real shape instead of -m, e.g. llama-3.2-1b-Q4_0 "
                         "(scripts/make_random_model.py; made if missing)")
    ap.add_argument("-d", "--depth", type=int, default=0, help="tokens in the context before each test (llama-bench -d)")
    ap.add_argument("-p", "--n-prompt", default="512", help="prompt lengths, comma-separated (0 = none)")
    ap.add_argument("-n", "--n-gen", default="128", help="generation lengths, comma-separated (0 = none)")
    ap.add_argument("-t", "--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    ap.add_argument("--llama-bench", default=None, metavar="PATH",
                    help="llama-bench binary or its folder for the speed figures ('none': llama-cpp-python "
                         "in this process); default: $LLAMA_CPP_BIN, then PATH, else llama-cpp-python")  # fmt: skip
    ap.add_argument("--check-prompts", type=int, default=len(PROMPTS), help="prompts for the agreement check (0 = skip)")
    ap.add_argument("--check-tokens", type=int, default=16, help="greedy tokens per prompt")
    ap.add_argument("--no-speed", action="store_true", help="only the agreement check")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--no-bandwidth", action="store_true", help="skip measuring the machine's read bandwidth")
    args = ap.parse_args(argv)

    tests = [] if args.no_speed else parse_tests(args.n_prompt, args.n_gen, args.depth)
    bench = find_binary("llama-bench", args.llama_bench) if tests else None
    have_python = import_llama_cpp() is not None
    if not have_python and (bench is None or args.no_speed):
        hint = f"; or for the speed figures alone, {BUILD_HINT}" if not args.no_speed else ""
        print(f"error: {INSTALL_HINT}{hint}", file=sys.stderr)
        return 2
    args.model = resolve_model(args.model, args.fixture)
    if not args.model.is_file():
        print(f"error: {args.model}: no such model file", file=sys.stderr)
        return 1
    n_ctx = max([t.depth + t.n_tokens for t in tests] + [256]) + 1
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    reference = f"llama-bench ({bench})" if bench else "llama-cpp-python (in this process)"
    log(f"{args.model.name}: {args.threads} threads, {args.repetitions} alternating repetitions; llama.cpp is {reference}")
    ours = Llamatool(args.model, args.threads, n_ctx)
    theirs = LlamaCpp(args.model, args.threads, n_ctx) if have_python else None
    tok = ours.model.tokenizer
    bos = tok.bos_id if tok.add_bos else None
    report = {"model": str(args.model), "threads": args.threads, "repetitions": args.repetitions, "llama.cpp": reference}
    speed_ref = LlamaBench(bench, args.model, args.threads) if bench else theirs
    probe = ReadProbe(args.threads) if tests and not args.no_bandwidth else None
    if probe is not None:
        report["read_gbps"] = probe()
    report["speed"] = compare_speed({"llamatool": ours, "llama.cpp": speed_ref}, tests, args.repetitions, bos, ours.n_vocab,
                                    log, probe)
    if probe is not None:
        probe.close()
        beside = [g for row in report["speed"] for n in ("llamatool", "llama.cpp") for g in row.get(f"{n}_read_samples", [])]
        if beside:
            report["read_gbps_beside_runs"] = [min(beside), statistics.median(beside), max(beside)]
        add_bandwidth(report["speed"], args.model, tests, report["read_gbps"])
    if args.check_prompts and theirs is None:
        log(f"no agreement check: it runs llama.cpp through llama-cpp-python ({INSTALL_HINT})")
    elif args.check_prompts:
        report["agreement"] = check_agreement(ours, theirs, PROMPTS[: args.check_prompts], args.check_tokens)
    ours.close()
    if theirs is not None:
        theirs.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def print_report(report: dict) -> None:
    if report["speed"]:
        print(f"\nllama.cpp: {report['llama.cpp']}")
        read = report.get("read_gbps")
        if read:
            print(f"read bandwidth ({report['threads']} threads, 1 GiB read once, best of 5): {read:.1f} GB/s")
        beside = report.get("read_gbps_beside_runs")
        if beside:
            print(f"read bandwidth beside each timed generation run (best of 2): {beside[0]:.1f} - {beside[2]:.1f} GB/s, "
                  f"median {beside[1]:.1f}; '% of read' sets each run against the one before it (median of the runs), "
                  "and its ratio is the engines' ratio at equal memory")
        print("| test | llamatool t/s | llama.cpp t/s | ratio | per CPU-s: llamatool | llama.cpp | ratio "
              "| GB/s: llamatool | llama.cpp | % of read: llamatool | llama.cpp | ratio |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in report["speed"]:
            cpu = "| - | - | - |" if r["cpu_ratio"] is None else (
                f"| {r['llamatool_cpu_ts']:.1f} | {r['llama.cpp_cpu_ts']:.1f} | {r['cpu_ratio']:.2f} |")
            bw = "| - | - | - | - | - |" if "llamatool_gbps" not in r else (
                f"| {r['llamatool_gbps']:.1f} | {r['llama.cpp_gbps']:.1f} | {100 * r['llamatool_of_read']:.0f}% "
                f"| {100 * r['llama.cpp_of_read']:.0f}% | {r['share_ratio']:.2f} |")
            print(f"| {r['test']} | {r['llamatool_ts']:.1f} | {r['llama.cpp_ts']:.1f} | {r['ratio']:.2f} {cpu} {bw[2:]}")
    agree = report.get("agreement")
    if agree:
        print(f"\ngreedy tokens agreeing before the first divergence: {agree['greedy_agree']}/{agree['greedy_total']}; "
              f"max |logit diff| over llama.cpp's top {agree['top_k']}: {agree['max_abs_diff_top_k']:.4f}")  # fmt: skip
        for c in agree["cases"]:
            print(f"  {c['greedy_agree']:2d}/{agree['n_gen']}  top-{agree['top_k']} overlap {c['top_k_overlap']}  "
                  f"max diff {c['max_abs_diff_top_k']:.4f}  {c['prompt']!r} -> {c['text_llamatool']!r}")  # fmt: skip
            if c["greedy_agree"] < agree["n_gen"]:
                print(f"{'':8}llama.cpp: {c['text_llama.cpp']!r}")


if __name__ == "__main__":
    sys.exit(main())
