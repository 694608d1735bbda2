"""`llamatool bench`: prompt-processing and generation speed, measured like llama-bench.

Each test runs on synthetic random tokens (no tokenizer needed), after a warm-up run
that is not counted (it also absorbs JIT compilation), `reps` times; the rate of every
repetition is a sample, and the reported t/s is their mean ± sample standard
deviation, exactly as llama-bench computes `avg_ts` and `stddev_ts`.

Test kinds, as in llama-bench: `ppN` (evaluate an N-token prompt in batches of
n_batch), `tgN` (generate N tokens one at a time), `ppN+tgM` (both, timed together),
each optionally after `n_depth` tokens already in the KV cache (`@ dD`).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .errors import LlamatoolError

OUTPUT_FORMATS = ("table", "md", "csv", "json", "jsonl")

# llama-bench's JSON/CSV field names, in its order (fields that mean nothing here, such
# as GPU layers or tensor splits, keep llama-bench's neutral values so tools that read
# llama-bench output can read ours).
FIELDS = [
    "build_commit", "build_number", "cpu_info", "gpu_info", "backends",
    "model_filename", "model_type", "model_size", "model_n_params", "n_batch",
    "n_ubatch", "n_threads", "cpu_mask", "cpu_strict", "poll",
    "type_k", "type_v", "n_gpu_layers", "n_cpu_moe", "split_mode",
    "main_gpu", "no_kv_offload", "flash_attn", "devices", "tensor_split",
    "tensor_buft_overrides", "load_mode", "lazy_mode", "embeddings",
    "no_op_offload", "no_host", "repack", "fit_target", "fit_min_ctx",
    "n_prompt", "n_gen", "n_depth",
    "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
]  # fmt: skip


def parse_int_list(text: str, *, what: str = "value") -> list[int]:
    """llama-bench's lists and ranges: "512", "128,512", "1-8" (step 1), "1-8+2", "16-512*2"."""
    out: list[int] = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)(?:-(\d+)(?:([+*])(\d+))?)?\s*", part)
        if not m:
            raise LlamatoolError(f"invalid {what} list {text!r} (expected e.g. 512 or 128,512 or 1-8 or 16-512*2)")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else first
        op, step = m.group(3) or "+", int(m.group(4) or 1)
        i = first
        while i <= last:
            out.append(i)
            nxt = i + step if op == "+" else i * step
            if nxt <= i:
                raise LlamatoolError(f"invalid {what} range {part!r}: it does not advance")
            i = nxt
    return out


def parse_pairs(texts: Sequence[str]) -> list[tuple[int, int]]:
    """-pg values: "512,128" (one pair per option, as llama-bench)."""
    pairs = []
    for text in texts:
        m = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", text)
        if not m:
            raise LlamatoolError(f"invalid -pg value {text!r} (expected PP,TG such as 512,128)")
        pairs.append((int(m.group(1)), int(m.group(2))))
    return pairs


@dataclass(frozen=True)
class BenchTest:
    model: Path
    n_prompt: int
    n_gen: int
    n_depth: int
    n_batch: int
    n_threads: int

    @property
    def name(self) -> str:
        if self.n_prompt and not self.n_gen:
            name = f"pp{self.n_prompt}"
        elif self.n_gen and not self.n_prompt:
            name = f"tg{self.n_gen}"
        else:
            name = f"pp{self.n_prompt}+tg{self.n_gen}"
        return name + (f" @ d{self.n_depth}" if self.n_depth else "")

    @property
    def n_tokens(self) -> int:
        return self.n_prompt + self.n_gen


def plan_tests(
    models: Sequence[Path],
    n_prompt: Sequence[int],
    n_gen: Sequence[int],
    pg: Sequence[tuple[int, int]],
    n_threads: Sequence[int],
    n_depth: Sequence[int] = (0,),
    n_batch: Sequence[int] = (2048,),
) -> list[BenchTest]:
    """Every combination, in llama-bench's order: per model and parameter set, pp tests, then tg, then pg."""
    tests = []
    for model, nb, nt, nd in itertools.product(models, n_batch, n_threads, n_depth):
        for p in n_prompt:
            if p:
                tests.append(BenchTest(Path(model), p, 0, nd, nb, nt))
        for g in n_gen:
            if g:
                tests.append(BenchTest(Path(model), 0, g, nd, nb, nt))
        for p, g in pg:
            if p or g:
                tests.append(BenchTest(Path(model), p, g, nd, nb, nt))
    return tests


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation, computed the way llama-bench does."""
    n = len(values)
    if n <= 1:
        return 0.0
    m = mean(values)
    var = sum(v * v for v in values) / (n - 1) - m * m * n / (n - 1)
    return math.sqrt(max(var, 0.0))


@dataclass
class BenchResult:
    test: BenchTest
    model_type: str
    model_size: int
    model_n_params: int
    kv_type: str
    samples_ns: list[int] = field(default_factory=list)
    repack: bool = False
    test_time: str = ""

    @property
    def samples_ts(self) -> list[float]:
        return [1e9 * self.test.n_tokens / ns for ns in self.samples_ns]

    @property
    def avg_ts(self) -> float:
        return mean(self.samples_ts)

    @property
    def stddev_ts(self) -> float:
        return stdev(self.samples_ts)

    def record(self) -> dict:
        """llama-bench's fields for JSON, JSONL and CSV."""
        t = self.test
        return {
            "build_commit": build_commit(),
            "build_number": 0,
            "cpu_info": cpu_info(),
            "gpu_info": "",
            "backends": "CPU",
            "model_filename": str(t.model),
            "model_type": self.model_type,
            "model_size": self.model_size,
            "model_n_params": self.model_n_params,
            "n_batch": t.n_batch,
            "n_ubatch": t.n_batch,
            "n_threads": t.n_threads,
            "cpu_mask": "0x0",
            "cpu_strict": False,
            "poll": 0,
            "type_k": self.kv_type,
            "type_v": self.kv_type,
            "n_gpu_layers": 0,
            "n_cpu_moe": 0,
            "split_mode": "layer",
            "main_gpu": 0,
            "no_kv_offload": False,
            "flash_attn": 0,
            "devices": "auto",
            "tensor_split": "0.00",
            "tensor_buft_overrides": "none",
            "load_mode": "mmap",
            "lazy_mode": "off",
            "embeddings": False,
            "no_op_offload": 0,
            "no_host": False,
            "repack": self.repack,
            "fit_target": 0,
            "fit_min_ctx": 0,
            "n_prompt": t.n_prompt,
            "n_gen": t.n_gen,
            "n_depth": t.n_depth,
            "test_time": self.test_time,
            "avg_ns": int(mean(self.samples_ns)),
            "stddev_ns": int(stdev(self.samples_ns)),
            "avg_ts": self.avg_ts,
            "stddev_ts": self.stddev_ts,
            "samples_ns": list(self.samples_ns),
            "samples_ts": self.samples_ts,
        }


_BUILD_COMMIT: str | None = None


def build_commit() -> str:
    """The git commit llamatool runs from (short hash), or its version outside a checkout."""
    global _BUILD_COMMIT
    if _BUILD_COMMIT is None:
        from . import __version__

        try:
            out = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=Path(__file__).resolve().parent,
                capture_output=True,
                text=True,
                timeout=5,
            )
            _BUILD_COMMIT = out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else __version__
        except (OSError, subprocess.SubprocessError):
            _BUILD_COMMIT = __version__
    return _BUILD_COMMIT


def cpu_info() -> str:
    from . import host

    return host.cpuinfo().get("model name") or platform.processor() or platform.machine()


def model_description(reader) -> tuple[str, int, int]:
    """(model_type like llama-bench's "llama 135M Q4_1", tensor bytes, parameter count)."""
    from .info import file_type_name

    n_params = sum(t.n_elements for t in reader.tensors)
    size = sum(t.nbytes for t in reader.tensors)
    label = reader.get("general.size_label")
    if not label:
        label = f"{n_params / 1e9:.1f}B" if n_params >= 1e9 else f"{n_params / 1e6:.0f}M"
    ftype = file_type_name(reader.get("general.file_type")) or "?"
    return f"{reader.architecture} {label} {ftype}", size, n_params


def _random_tokens(rng, n: int, n_vocab: int, first: int | None) -> list[int]:
    tokens = rng.integers(0, n_vocab, size=n).tolist()
    if n and first is not None:
        tokens[0] = first
    return tokens


def _run_prompt(model, rng, n: int, n_batch: int, bos: int | None) -> None:
    done, n_vocab = 0, model.tokenizer.n_vocab
    while done < n:
        count = min(n - done, n_batch)
        model.eval(_random_tokens(rng, count, n_vocab, bos if done == 0 else None))
        done += count


def _run_gen(model, rng, n: int, bos: int | None) -> None:
    n_vocab = model.tokenizer.n_vocab
    token = bos if bos is not None else int(rng.integers(0, n_vocab))
    for _ in range(n):
        model.eval([token])
        token = int(rng.integers(0, n_vocab))


def run_test(model, test: BenchTest, reps: int, warmup: bool, seed: int = 0) -> list[int]:
    """Time `reps` repetitions of one test; returns nanoseconds per repetition."""
    import numpy as np

    from .jit import set_threads

    set_threads(test.n_threads)
    rng = np.random.default_rng(seed)
    bos = model.tokenizer.bos_id if getattr(model.tokenizer, "add_bos", False) else None
    if warmup:
        model.reset()
        if test.n_prompt:
            _run_prompt(model, rng, test.n_prompt, test.n_batch, bos)
        if test.n_gen:
            _run_gen(model, rng, 1, bos)
    samples = []
    for _ in range(reps):
        model.reset()
        if test.n_depth:
            _run_prompt(model, rng, test.n_depth, test.n_batch, bos)
        start = time.perf_counter_ns()
        if test.n_prompt:
            _run_prompt(model, rng, test.n_prompt, test.n_batch, bos)
        if test.n_gen:
            _run_gen(model, rng, test.n_gen, bos if not test.n_prompt and not test.n_depth else None)
        samples.append(time.perf_counter_ns() - start)
    return samples


def _kv_cache_type(model) -> str:
    """llama-bench's type_k/type_v: the cache's element type (f16 is stored as raw uint16 bits)."""
    dtype = str(getattr(getattr(model, "k_cache", None), "dtype", "float32"))
    return {"uint16": "f16", "float16": "f16", "float32": "f32"}.get(dtype, dtype)


def run_benchmarks(
    tests: Sequence[BenchTest],
    reps: int = 5,
    warmup: bool = True,
    on_result: Callable[[BenchResult], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    lora=(),
    repack: bool = False,
) -> list[BenchResult]:
    """Run every test, loading each model once with a context large enough for all its tests
    (and the LoRA adapters `lora`, (path, scale) pairs, applied to every model; repack: the
    matrices packed at load, as the server has them)."""
    from .gguf_io import GGUFReader
    from .model import Model

    if reps < 1:
        raise LlamatoolError("-r/--repetitions must be at least 1")
    results = []
    for (path, _), group in itertools.groupby(tests, key=lambda t: (t.model, t.n_threads)):  # a model per thread count
        group = list(group)
        n_ctx = max(t.n_prompt + t.n_gen + t.n_depth for t in group) + 1
        if on_progress:
            on_progress(f"loading {path}")
        model_type, size, n_params = model_description(GGUFReader(path))
        model = Model.load(path, n_ctx=n_ctx, n_threads=group[0].n_threads, lora=lora, repack=repack)
        kv_type = _kv_cache_type(model)
        for i, test in enumerate(group):
            if on_progress:
                on_progress(f"{path.name}: {test.name}, {test.n_threads} threads, {reps} reps")
            result = BenchResult(test, model_type, size, n_params, kv_type, repack=repack)
            result.test_time = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            result.samples_ns = run_test(model, test, reps, warmup, seed=i)
            results.append(result)
            if on_result:
                on_result(result)
    return results


# --- output -------------------------------------------------------------------------------


def _size_str(n: int) -> str:
    return f"{n / 1024**2:.2f} MiB" if n < 1024**3 else f"{n / 1024**3:.2f} GiB"


def _params_str(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} B"


def table_row(r: BenchResult) -> list[str]:
    return [
        r.model_type,
        _size_str(r.model_size),
        _params_str(r.model_n_params),
        "CPU",
        str(r.test.n_threads),
        r.test.name,
        f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}",
    ]


TABLE_COLUMNS = ["model", "size", "params", "backend", "threads", "test", "t/s"]


def format_markdown(results: Iterable[BenchResult]) -> str:
    """llama-bench's markdown table (same columns, widths and alignment)."""
    widths = [-30, 10, 10, -10, 7, 15, 20]
    lines = ["|" + "".join(f" {c:>{abs(w)}} |" if w > 0 else f" {c:<{abs(w)}} |" for c, w in zip(TABLE_COLUMNS, widths))]
    lines.append("|" + "".join(f" {'-' * (abs(w) - 1)}{':' if w > 0 else '-'} |" for w in widths))
    for r in results:
        cells = table_row(r)
        lines.append("|" + "".join(f" {c:>{abs(w)}} |" if w > 0 else f" {c:<{abs(w)}} |" for c, w in zip(cells, widths)))
    return "\n".join(lines) + f"\n\nbuild: {build_commit()} (0)\n"


def format_csv(results: Iterable[BenchResult]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIELDS)
    for r in results:
        rec = r.record()
        writer.writerow([int(v) if isinstance(v, bool) else v for v in (rec[f] for f in FIELDS)])
    return buf.getvalue()


def format_json(results: Iterable[BenchResult]) -> str:
    return json.dumps([r.record() for r in results], indent=2) + "\n"


def format_jsonl_line(r: BenchResult) -> str:
    return json.dumps(r.record()) + "\n"


def print_rich_table(results: Sequence[BenchResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(caption=f"build: {build_commit()}")
    for name in TABLE_COLUMNS:
        table.add_column(name, justify="left" if name in ("model", "backend") else "right", no_wrap=True)
    for r in results:
        table.add_row(*table_row(r))
    # Piped output has no terminal width: do not squeeze the rows into 80 columns.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def bench_command(
    models: Sequence[Path],
    n_prompt: str,
    n_gen: str,
    pg: Sequence[str],
    threads: str | None,
    reps: int,
    output: str,
    n_depth: str = "0",
    n_batch: str = "2048",
    no_warmup: bool = False,
    progress: bool = False,
    lora=(),
    repack: bool = False,
) -> None:
    """The CLI: plan, run, print (rows appear as tests finish for md and jsonl)."""
    output = output.lower()
    if output not in OUTPUT_FORMATS:
        raise LlamatoolError(f"unknown output format {output!r} (choose from {', '.join(OUTPUT_FORMATS)})")
    for m in models:
        if not Path(m).is_file():
            raise LlamatoolError(f"{m}: no such file")
    thread_list = parse_int_list(threads, what="threads") if threads else [os.cpu_count() or 1]
    if any(t < 1 for t in thread_list):
        raise LlamatoolError("threads must be at least 1")
    batch_list = parse_int_list(n_batch, what="batch size")
    if any(b < 1 for b in batch_list):
        raise LlamatoolError("batch size must be at least 1")
    tests = plan_tests(
        models,
        parse_int_list(n_prompt, what="-p"),
        parse_int_list(n_gen, what="-n"),
        parse_pairs(pg),
        thread_list,
        parse_int_list(n_depth, what="-d"),
        batch_list,
    )
    if not tests:
        raise LlamatoolError("nothing to benchmark: every -p, -n and -pg is 0")

    def log(msg: str) -> None:
        if progress:
            print(f"llamatool bench: {msg}", file=sys.stderr, flush=True)

    def stream(result: BenchResult) -> None:
        if output == "jsonl":
            sys.stdout.write(format_jsonl_line(result))
            sys.stdout.flush()

    results = run_benchmarks(tests, reps=reps, warmup=not no_warmup, on_result=stream, on_progress=log, lora=lora,
                             repack=repack)
    if output == "table":
        print_rich_table(results)
    elif output == "md":
        sys.stdout.write(format_markdown(results))
    elif output == "csv":
        sys.stdout.write(format_csv(results))
    elif output == "json":
        sys.stdout.write(format_json(results))
