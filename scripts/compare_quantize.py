"""Wall time of `llamatool quantize` beside llama.cpp's llama-quantize, on the same file.

    .venv/bin/python scripts/compare_quantize.py [--model PATH] [--types Q4_0 Q8_0 Q4_K_M F16]
                                                 [--repeats 5] [--threads 2] [--baseline DIR]

For each type, runs llama.cpp's quantizer (llama_model_quantize from llama-cpp-python,
the library llama-quantize is a thin wrapper around, with nthread = --threads) and
`llamatool quantize` (a fresh process, as a user runs it: start-up, imports and JIT
cache loading included) alternately, --repeats times each, and prints the median wall
times and their ratio (llamatool / llama.cpp; the goal is <= 1.5). Requantizing input
(the default model is Q4_1) is allowed, as with llama-quantize --allow-requantize.
Both outputs are also compared byte for byte. With --baseline DIR (another checkout of
llamatool, e.g. main's worktree) that version runs in turn too, for a before/after figure
measured in the same run.

llama-cpp-python is an optional extra: `pip install llama-cpp-python` (it builds
llama.cpp from source, minutes on 2 cores). Without it this script says so and exits.
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

DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TYPES = ["Q4_0", "Q8_0", "Q4_K_M", "F16"]

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


def llama_cpp_seconds(model: Path, out: Path, preset: str, threads: int) -> float:
    """llama_model_quantize's own time (the C call only: llama-quantize's start-up is ~ms)."""
    proc = subprocess.run(
        [sys.executable, "-c", LLAMA_CPP_CHILD, str(model), str(out), preset, str(threads)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"llama.cpp failed on {preset}: {proc.stderr[-2000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def llamatool_seconds(model: Path, out: Path, preset: str, threads: int, root: Path = ROOT) -> float:
    """Wall time of the whole command, from process start to exit (llamatool from root)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "llamatool", "quantize", "--allow-requantize", "--force",
         "--nthreads", str(threads), str(model.resolve()), str(out), preset],
        capture_output=True, text=True, cwd=root, env=env,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"llamatool failed on {preset}: {proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--types", nargs="*", default=DEFAULT_TYPES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline", type=Path, default=None, help="another llamatool checkout to time in turn (before/after)")
    args = parser.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise SystemExit(
            "llama-cpp-python is not installed: `pip install llama-cpp-python` (or the project's "
            "`compare` extra) builds llama.cpp, whose llama_model_quantize this compares with."
        ) from None
    if not args.model.exists():
        raise SystemExit(f"{args.model}: no such file (scripts/fetch_model.py downloads the default model)")

    print(f"{args.model.name}, {args.threads} threads, median of {args.repeats} alternating runs")
    baseline = "" if args.baseline is None else f" {'baseline':>10} {'ratio':>7}"
    print(f"{'type':8} {'llamatool':>10} {'llama.cpp':>10} {'ratio':>7}{baseline}  same bytes")
    with tempfile.TemporaryDirectory(prefix="compare-quantize-") as tmp:
        for preset in args.types:
            ours_out, ref_out, base_out = (Path(tmp) / f"{who}-{preset}.gguf" for who in ("ours", "ref", "base"))
            llamatool_seconds(args.model, ours_out, preset, args.threads)  # compiles kernels on a cold cache
            if args.baseline:
                llamatool_seconds(args.model, base_out, preset, args.threads, args.baseline)
            ours, ref, base = [], [], []
            for _ in range(args.repeats):
                ref.append(llama_cpp_seconds(args.model, ref_out, preset, args.threads))
                ours.append(llamatool_seconds(args.model, ours_out, preset, args.threads))
                if args.baseline:
                    base.append(llamatool_seconds(args.model, base_out, preset, args.threads, args.baseline))
            a, b = statistics.median(ours), statistics.median(ref)
            same = "yes" if ours_out.read_bytes() == ref_out.read_bytes() else "NO"
            before = "" if not base else f" {statistics.median(base):9.2f}s {statistics.median(base) / b:6.2f}x"
            print(f"{preset:8} {a:9.2f}s {b:9.2f}s {a / b:6.2f}x{before}  {same}", flush=True)


if __name__ == "__main__":
    main()
