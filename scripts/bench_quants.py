"""Quantize throughput per ggml type: llamatool's Numba kernels beside gguf-py's numpy reference.

    .venv/bin/python scripts/bench_quants.py [--rows 2048] [--cols 4096] [--repeats 5] [--threads N]

Both quantize the same float32 matrix (a realistic weight tensor: Gaussian with a few
outliers) in the same run; the table gives MB/s of float32 input (median over the
repeats), the speed-up and whether both wrote the same bytes. gguf.quants has no
quantizer for some types (the K-quants, IQ4_XS): those rows show only llamatool.
The machine may be shared: compare the ratio, not the absolute figures.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]


def weights(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = 0.02 * rng.standard_normal((rows, cols), dtype=np.float32)
    x.reshape(-1)[rng.integers(0, x.size, x.size // 4096)] *= 8
    return x


def median_seconds(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_type(name: str, x: np.ndarray, repeats: int, ref_repeats: int) -> dict:
    import gguf
    from gguf.quants import quantize as gguf_quantize

    from llamatool.quants.registry import ggml_type, quantize

    t = ggml_type(name)
    row = {"type": name, "ours": None, "ref": None, "same": None}
    if not t.can_quantize:
        row["note"] = "no llamatool kernel"
        return row
    quantize(t, x[:4])  # compile (or load from the cache) before timing
    seconds, ours = median_seconds(lambda: quantize(t, x), repeats)
    row["ours"] = x.nbytes / seconds / 1e6
    qtype = gguf.GGMLQuantizationType[name]
    try:
        gguf_quantize(x[:4], qtype)
    except (NotImplementedError, gguf.quants.QuantError):
        row["note"] = "gguf.quants cannot quantize it"
        return row
    seconds, ref = median_seconds(lambda: gguf_quantize(x, qtype), ref_repeats)
    row["ref"] = x.nbytes / seconds / 1e6
    row["same"] = np.array_equal(np.asarray(ref).view(np.uint8).reshape(ours.shape), ours)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=4096, help="row length (a multiple of 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of llamatool per type")
    parser.add_argument("--ref-repeats", type=int, default=3, help="timed runs of gguf.quants per type")
    parser.add_argument("--threads", type=int, default=None, help="kernel threads (default: all cores)")
    parser.add_argument("--types", nargs="*", default=TYPES)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from llamatool.jit import set_threads

    threads = set_threads(args.threads)
    x = weights(args.rows, args.cols)
    table = Table(
        title=f"quantize throughput, MB/s of float32 input ({args.rows}x{args.cols} = {x.nbytes / 1e6:.0f} MB, "
        f"{threads} threads, median of {args.repeats} / {args.ref_repeats})",
        title_justify="left",
    )
    for col in ("type", "llamatool", "gguf.quants", "speed-up", "same bytes", "note"):
        table.add_column(col, justify="left" if col in ("type", "note") else "right")
    console = Console()
    with console.status("benchmarking") as status:
        for name in args.types:
            status.update(f"benchmarking {name}")
            r = bench_type(name.upper(), x, args.repeats, args.ref_repeats)
            fmt = lambda v: "-" if v is None else f"{v:,.1f}"  # noqa: E731
            ratio = f"{r['ours'] / r['ref']:.1f}x" if r["ours"] and r["ref"] else "-"
            same = "-" if r["same"] is None else ("yes" if r["same"] else "NO")
            table.add_row(r["type"], fmt(r["ours"]), fmt(r["ref"]), ratio, same, r.get("note", ""))
    console.print(table)


if __name__ == "__main__":
    main()
