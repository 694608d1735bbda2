"""Quantize throughput per ggml type: llamatool's Numba kernels beside gguf-py's numpy reference.

    .venv/bin/python scripts/bench_quants.py [--rows 2048] [--cols 4096] [--repeats 5] [--threads N]

Both quantize the same float32 matrix (a realistic weight tensor: Gaussian with a few
outliers) in the same run; the table gives MB/s of float32 input (median over the
repeats), the speed-up and whether both wrote the same bytes. gguf.quants has no
quantizer for some types (the K-quants, IQ4_NL, IQ4_XS). When llama-cpp-python is
installed, ggml's own C quantizer (ggml_quantize_chunk, one thread, the code path
llama-quantize runs per thread) is measured too, for every type.
The machine may be shared: compare the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import timeit
from pathlib import Path

import numpy as np

TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]


def weights(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = 0.02 * rng.standard_normal((rows, cols), dtype=np.float32)
    x.reshape(-1)[rng.integers(0, x.size, x.size // 4096)] *= 8
    return x


def alternating_medians(fns: dict, rounds: dict) -> dict:
    """Median seconds of each fn, timed in turn round after round (fn k takes part in the
    first rounds[k] rounds), so that a busy spell on the shared machine hits all of them."""
    times = {k: [] for k in fns}
    for i in range(max(rounds.values())):
        for k, fn in fns.items():
            if i < rounds[k]:
                times[k].append(timeit.timeit(fn, number=1))
    return {k: statistics.median(v) for k, v in times.items()}


def ggml_quantize_chunk():
    """ggml's C quantizer from llama-cpp-python's libggml-base, or None."""
    try:
        import llama_cpp
    except ImportError:
        return None
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return fn


def c_quantizer(t, x: np.ndarray, chunk):
    """ggml's quantizer for t on x as a function returning its output."""
    out = np.empty((x.shape[0], t.row_bytes(x.shape[1])), np.uint8)

    def run():
        chunk(t.id, x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
        return out

    run()  # ggml builds its lookup tables on first use
    return run


def bench_type(name: str, x: np.ndarray, repeats: int, ref_repeats: int, chunk=None) -> dict:
    """MB/s of llamatool, gguf.quants and ggml's C (where they have t), timed alternately."""
    import gguf
    from gguf.quants import quantize as gguf_quantize

    from llamatool.quants.registry import ggml_type, quantize

    t = ggml_type(name)
    row = {"type": name, "ours": None, "ref": None, "same": None, "c": None, "same_c": None}
    if not t.can_quantize:
        row["note"] = "no llamatool kernel"
        return row
    ours = quantize(t, x)  # compiles (or loads from the cache) before the timed runs
    fns, rounds = {"ours": lambda: quantize(t, x)}, {"ours": repeats}
    if chunk is not None:
        fns["c"], rounds["c"] = c_quantizer(t, x, chunk), ref_repeats
        row["same_c"] = np.array_equal(fns["c"](), ours)
    qtype = gguf.GGMLQuantizationType[name]
    try:
        gguf_quantize(x[:4], qtype)
        row["same"] = np.array_equal(np.asarray(gguf_quantize(x, qtype)).view(np.uint8).reshape(ours.shape), ours)
        fns["ref"], rounds["ref"] = (lambda: gguf_quantize(x, qtype)), ref_repeats
    except (NotImplementedError, gguf.quants.QuantError):
        row["note"] = "no gguf.quants quantizer"
    for k, seconds in alternating_medians(fns, rounds).items():
        row[k] = x.nbytes / seconds / 1e6
    return row


def _num(v) -> str:
    return "-" if v is None else f"{v:,.1f}"


def _ratio(a, b) -> str:
    return f"{a / b:.1f}x" if a and b else "-"


def _yes(v) -> str:
    return "-" if v is None else ("yes" if v else "NO")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=4096, help="row length (a multiple of 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of llamatool per type")
    parser.add_argument("--ref-repeats", type=int, default=3, help="timed runs of gguf.quants and ggml C per type (alternating with ours)")
    parser.add_argument("--threads", type=int, default=None, help="kernel threads (default: all cores)")
    parser.add_argument("--types", nargs="*", default=TYPES)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from llamatool.jit import set_threads

    threads = set_threads(args.threads)
    chunk = ggml_quantize_chunk()
    x = weights(args.rows, args.cols)
    table = Table(
        title=f"quantize throughput, MB/s of float32 input ({args.rows}x{args.cols} = {x.nbytes / 1e6:.0f} MB, "
        f"{threads} threads, median of {args.repeats} / {args.ref_repeats})",
        title_justify="left",
    )
    columns = ["type", "llamatool", "gguf.quants", "speed-up", "same bytes"]
    if chunk is not None:
        columns += ["ggml C (1 thread)", "vs C", "same as C"]
    for col in columns + ["note"]:
        table.add_column(col, justify="left" if col in ("type", "note") else "right", no_wrap=True)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    with console.status("benchmarking") as status:
        for name in args.types:
            status.update(f"benchmarking {name}")
            r = bench_type(name.upper(), x, args.repeats, args.ref_repeats, chunk)
            cells = [r["type"], _num(r["ours"]), _num(r["ref"]), _ratio(r["ours"], r["ref"]), _yes(r["same"])]
            if chunk is not None:
                cells += [_num(r["c"]), _ratio(r["ours"], r["c"]), _yes(r["same_c"])]
            table.add_row(*cells, r.get("note", ""))
    console.print(table)


if __name__ == "__main__":
    main()
