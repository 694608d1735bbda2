#!/usr/bin/env python3
"""Generation speed with a LoRA adapter applied at run time, against the base alone.

    python scripts/bench_lora.py models/SmolLM2-135M-Instruct.Q4_1.gguf --rank 16 --reps 9

Writes a random adapter of the given rank on q/k/v/o/gate/up/down of every layer (--type
f16, the runtime then holds halves; or f32, convert-lora's default) into a temporary
folder, loads the model with and without it, and times tg (single-token decode steps after
a short prompt) alternately, so that the load of a shared machine hits both alike. Prints
each round's tokens/s and the median of the per-round ratios (with the spread of the
ratios, so the noise is visible).

--cpu-time runs one thread and counts that thread's CPU time instead of wall time: on a
machine busy with other jobs, time spent descheduled then does not count (cache and memory
bandwidth are still shared), which makes the ratio far steadier than wall time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from llamatool.gguf_io import GGUFReader, GGUFWriter
from llamatool.model import Model

TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def write_random_adapter(base: Path, out: Path, rank: int, qtype: str = "F16", seed: int = 0) -> Path:
    reader = GGUFReader(base)
    rng = np.random.default_rng(seed)
    tensors = []
    for t in reader.tensors:
        if t.name.startswith("blk.") and t.name.split(".")[2] in TARGETS:
            k, n = t.ne[0], t.ne[1]
            dtype = np.float16 if qtype == "F16" else np.float32
            tensors.append((t.name + ".lora_a", (rng.standard_normal((rank, k)) / np.sqrt(k)).astype(dtype)))
            tensors.append((t.name + ".lora_b", (rng.standard_normal((n, rank)) * 0.01).astype(dtype)))
    with GGUFWriter(out, force=True) as w:
        w.add_field("general.architecture", reader.architecture)
        w.add_field("general.type", "adapter")
        w.add_field("adapter.type", "lora")
        w.add_field("adapter.lora.alpha", float(rank))
        for name, values in tensors:
            w.add_tensor_info(name, qtype, tuple(reversed(values.shape)))
        for name, values in tensors:
            w.write_tensor(name, values)
    return out


def tg(model: Model, n_gen: int, clock=time.perf_counter) -> float:
    """Tokens per second of n_gen decode steps after a 16-token prompt."""
    model.reset()
    model.eval(list(range(1, 17)))
    start = clock()
    for i in range(n_gen):
        model.eval([100 + i % 50])
    return n_gen / (clock() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--type", choices=["f16", "f32"], default="f16", help="the adapter's tensor type")
    ap.add_argument("--cpu-time", action="store_true", help="one thread, timed by its CPU time (see above)")
    args = ap.parse_args()
    clock = time.thread_time if args.cpu_time else time.perf_counter
    if args.cpu_time:
        args.threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        adapter = write_random_adapter(args.model, Path(tmp) / "lora.gguf", args.rank, args.type.upper())
        base = Model.load(args.model, n_ctx=256, n_threads=args.threads)
        lora = Model.load(args.model, n_ctx=256, n_threads=args.threads, lora=[adapter])
        tg(base, 8, clock), tg(lora, 8, clock)  # warm up
        ratios = []
        for rep in range(args.reps):
            first, second = (base, lora) if rep % 2 == 0 else (lora, base)
            speed = {id(first): tg(first, args.n_gen, clock), id(second): tg(second, args.n_gen, clock)}
            b, lo = speed[id(base)], speed[id(lora)]
            ratios.append(lo / b)
            print(f"round {rep + 1}: base {b:7.2f} t/s   with rank-{args.rank} LoRA {lo:7.2f} t/s   ratio {lo / b:.3f}", flush=True)
    med = statistics.median(ratios)
    how = "1 thread, CPU time" if args.cpu_time else f"{base.n_threads} threads, wall time"
    print(f"{args.model.name} ({how}): tg{args.n_gen} with a rank-{args.rank} {args.type.upper()} adapter on q/k/v/o/gate/up/down runs at "
          f"{med:.3f} x the base's speed (median of {len(ratios)} alternating rounds; ratios "
          f"{min(ratios):.3f}..{max(ratios):.3f}), i.e. {100 * (1 / med - 1):.1f}% slower")


if __name__ == "__main__":
    main()
