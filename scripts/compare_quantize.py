"""Wall time of `llamatool quantize` beside llama.cpp's llama-quantize, on the same file.

    .venv/bin/python scripts/compare_quantize.py [--model PATH] [--types Q4_0 Q8_0 Q4_K_M F16]
        [--repeats 5] [--threads 2] [--baseline DIR] [--llama-quantize PATH|none]
        [--no-llama-cpp-python]

For each type, runs in turn, --repeats times each (the order rotating every round):
  - `llamatool quantize` (a fresh process, as a user runs it: start-up, imports and
    kernel loading included), and with --baseline DIR another llamatool checkout (e.g.
    main's worktree) the same way, for a before/after measured in the same run;
  - llama.cpp's llama-quantize binary (`llama-quantize --allow-requantize IN OUT TYPE
    NTHREADS`), wall time of the process, its start-up included. It is --llama-quantize,
    else $LLAMA_CPP_BIN/llama-quantize, else llama-quantize on PATH
    (scripts/build_llamacpp.sh builds it);
  - llama-cpp-python's llama_model_quantize (the library llama-quantize wraps), timed
    around the C call only, in a child process: without start-up, so a stricter
    reference than the binary.
It prints the median wall times and the ratios llamatool / reference (the goal is <= 1.5),
and whether each reference wrote the same bytes as llamatool. Requantizing input (the
default model is Q4_1) is allowed, as with llama-quantize --allow-requantize.
The machine may be shared: the ratio of medians of alternating runs is the figure to
read, not the absolute times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from llamacpp_bin import BUILD_HINT, find_binary  # noqa: E402

DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TYPES = ["Q4_0", "Q8_0", "Q4_K_M", "F16"]
OURS, BASELINE, BINARY, LIBRARY = "llamatool", "baseline", "llama-quantize", "llama-cpp-python"

# run in its own process so that nothing llama.cpp loaded is in ours while we time it
LLAMA_CPP_CHILD = """
import ctypes, sys, time
import llama_cpp
from llamatool.quant_rules import preset_file_type
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = preset_file_type(sys.argv[3])
params.nthread = int(sys.argv[4])
params.allow_requantize = True
quiet = llama_cpp.llama_log_callback(lambda level, text, data: None)
llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
start = time.perf_counter()
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params))
print(time.perf_counter() - start)
sys.exit(rc)
"""


def llama_quantize_command(binary: Path, model: Path, out: Path, preset: str, threads: int, extra=()) -> list[str]:
    return [str(binary), "--allow-requantize", *extra, str(model), str(out), preset, str(threads)]


def binary_seconds(binary: Path, model: Path, out: Path, preset: str, threads: int, extra=()) -> float:
    """Wall time of the llama-quantize process, from start to exit."""
    start = time.perf_counter()
    proc = subprocess.run(llama_quantize_command(binary, model, out, preset, threads, extra), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{binary} failed on {preset} (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def library_seconds(model: Path, out: Path, preset: str, threads: int) -> float:
    """llama_model_quantize's own time (the C call only, no start-up)."""
    proc = subprocess.run(
        [sys.executable, "-c", LLAMA_CPP_CHILD, str(model), str(out), preset, str(threads)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"llama-cpp-python failed on {preset}: {proc.stderr[-2000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def llamatool_seconds(model: Path, out: Path, preset: str, threads: int, root: Path = ROOT, extra=()) -> float:
    """Wall time of the whole command, from process start to exit (llamatool from root)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "llamatool", "quantize", "--allow-requantize", "--force",
         "--nthreads", str(threads), *extra, str(model.resolve()), str(out), preset],
        capture_output=True, text=True, cwd=root, env=env,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"llamatool ({root}) failed on {preset}: {proc.stderr[-2000:]}")
    return seconds


def runners(model: Path, threads: int, binary: Path | None, library: bool, baseline: Path | None, extra=()) -> dict:
    """{name: run(preset, out) -> seconds} for every engine this run compares; extra: options
    both command lines take (--imatrix FILE)."""
    engines = {OURS: lambda preset, out: llamatool_seconds(model, out, preset, threads, extra=extra)}
    if baseline is not None:
        engines[BASELINE] = lambda preset, out: llamatool_seconds(model, out, preset, threads, baseline, extra)
    if binary is not None:
        engines[BINARY] = lambda preset, out: binary_seconds(binary, model, out, preset, threads, extra)
    if library:
        engines[LIBRARY] = lambda preset, out: library_seconds(model, out, preset, threads)
    return engines


def rotated(names: list[str], round_no: int) -> list[str]:
    """The order of one round: each engine goes first in turn, so none always follows another."""
    k = round_no % len(names)
    return names[k:] + names[:k]


def summarize(seconds: dict[str, list[float]]) -> dict:
    """Median seconds per engine and the ratio of each llamatool version to each reference."""
    medians = {name: statistics.median(v) for name, v in seconds.items()}
    ratios = {
        (mine, ref): medians[mine] / medians[ref]
        for ref in (BINARY, LIBRARY) if ref in medians
        for mine in (OURS, BASELINE) if mine in medians
    }  # fmt: skip
    return {"medians": medians, "ratios": ratios}


def _short(name: str) -> str:
    return {OURS: "ours", BASELINE: "base", BINARY: "lq", LIBRARY: "lcp"}[name]


def table_header(names: list[str], ratio_keys, same_keys) -> str:
    cells = [f"{'type':8}"] + [f"{n[:10]:>10}" for n in names]
    cells += [f"{_short(m) + '/' + _short(r):>8}" for m, r in ratio_keys]
    cells += [f"{'same:' + _short(r):>8}" for r in same_keys]
    return " ".join(cells)


def table_row(preset: str, summary: dict, same: dict[str, bool]) -> str:
    cells = [f"{preset:8}"] + [f"{seconds:9.3f}s" for seconds in summary["medians"].values()]
    cells += [f"{r:7.2f}x" for r in summary["ratios"].values()]
    cells += [f"{'yes' if ok else 'NO':>8}" for ok in same.values()]
    return " ".join(cells)


def has_llama_cpp_python() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--types", nargs="*", default=DEFAULT_TYPES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline", type=Path, default=None, help="another llamatool checkout to time in turn (before/after)")
    parser.add_argument("--llama-quantize", default=None, metavar="PATH",
                        help="llama-quantize binary or its folder ('none': do not run it); default: $LLAMA_CPP_BIN, then PATH")
    parser.add_argument("--llama-cpp-python", action=argparse.BooleanOptionalAction, default=True,
                        help="also time llama-cpp-python's llama_model_quantize (when installed)")
    parser.add_argument("--imatrix", type=Path, default=None,
                        help="quantize with this importance matrix (llamatool and llama-quantize; not llama-cpp-python)")
    args = parser.parse_args(argv)

    binary = find_binary("llama-quantize", args.llama_quantize)
    library = args.llama_cpp_python and has_llama_cpp_python() and args.imatrix is None
    extra = ("--imatrix", str(args.imatrix.resolve())) if args.imatrix else ()
    if binary is None and not library:
        print(f"error: no llama.cpp to compare with: {BUILD_HINT}, or `pip install llama-cpp-python` "
              "(or the project's `compare` extra) builds its library", file=sys.stderr)  # fmt: skip
        return 2
    if not args.model.exists():
        print(f"error: {args.model}: no such file (scripts/fetch_model.py downloads the default model)", file=sys.stderr)
        return 1

    engines = runners(args.model, args.threads, binary, library, args.baseline, extra)
    names = list(engines)
    print(f"{args.model.name}, {args.threads} threads, median of {args.repeats} rounds, engines in rotating order"
          + (f", imatrix {args.imatrix}" if args.imatrix else ""))
    print(f"  llamatool: {ROOT}" + (f"; baseline: {args.baseline}" if args.baseline else ""))
    if binary:
        print(f"  lq = llama-quantize: {binary} (process wall time, start-up included)")
    if library:
        print("  lcp = llama-cpp-python: llama_model_quantize, the C call only (no start-up)")
    print("  ratios: llamatool (or baseline) / reference, the goal is <= 1.5; same: output bytes equal to llamatool's")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("  note: PYTHONDONTWRITEBYTECODE is set, so every llamatool run compiles the Python sources it imports "
              "(~0.1 s); an installed llamatool has its bytecode")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="compare-quantize-") as tmp:
        for i, preset in enumerate(args.types):
            outs = {name: Path(tmp) / f"{name}-{preset}.gguf" for name in names}
            for name in (OURS, BASELINE):  # compiles kernels on a cold cache: not timed
                if name in engines:
                    engines[name](preset, outs[name])
            seconds = {name: [] for name in names}
            for r in range(args.repeats):
                for name in rotated(names, r):
                    seconds[name].append(engines[name](preset, outs[name]))
            summary = summarize(seconds)
            mine = outs[OURS].read_bytes()
            same = {ref: outs[ref].read_bytes() == mine for ref in (BINARY, LIBRARY) if ref in outs}
            if i == 0:
                print(table_header(names, summary["ratios"], same))
            print(table_row(preset, summary, same), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
