"""`llamatool warmup`: compile every Numba kernel once and cache it.

Numba compiles a kernel the first time it runs and caches the machine code (see jit.py),
so the first command on a machine pays for compilation and later ones start in about a
second. A model only compiles the matmul kernels of its own weight types; warmup pays for
all of it up front: the matmul kernels of every supported type, the forward pass (run once
on a throw-away one-layer model) and the quantization kernels of every type the registry
knows, as jobs shared between one process per core (llamatool.precompile).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import host


def warmup_command(jobs: int | None = None) -> None:
    """Compile every kernel (precompile.all_jobs) in `jobs` worker processes (default: one per
    core) and report where the time went: wall seconds, and CPU seconds per kind of job."""
    from .jit import cache_dir
    from .precompile import all_jobs, cores, run_jobs

    # Where saved machine code is off, Numba's cache is the only one, and two processes adding
    # specializations of one kernel to its index at once could each drop the other's: one process.
    workers = max(1, jobs or cores()) if host.saved_code() else 1
    print(f"compiling kernels (cache: {cache_dir()}) in {workers} process{'es' * (workers > 1)}; "
          "the first time takes a minute or two...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    results = run_jobs(all_jobs(), workers)
    kinds = {"forward": "forward pass", "rows": "matmul kernels of every type", "quant": "quantize/dequantize",
             "nonfinite": "quantize/dequantize"}
    cpu: dict[str, float] = {}
    for job, seconds, _ in results:
        kind = kinds[job.partition(":")[0]]
        cpu[kind] = cpu.get(kind, 0.0) + seconds
    for kind, seconds in cpu.items():
        print(f"  {kind}: {seconds:.1f} CPU s", file=sys.stderr, flush=True)
    forward_note = ("saved as machine code that loads without Numba" if host.saved_code()
                    else "in Numba's cache (saved machine code is off here)")
    failed = [f"{job} ({error})" for job, _, error in results if error is not None]
    if failed:
        print(f"  failed: {'; '.join(failed)}", file=sys.stderr, flush=True)
    print(f"warmup done in {time.perf_counter() - start:.1f} s (forward pass {forward_note})", file=sys.stderr, flush=True)


def compile_forward(threads: int | None = None) -> tuple[float, bool]:
    """Compile (or load from the cache) the forward pass and save its machine code (see
    native_forward); returns the seconds it took and whether the machine code is saved."""
    from .model import Model
    from .native_forward import BACKEND_ENV, forget_failures

    start = time.perf_counter()
    forget_failures()
    # compiled to be saved, whatever LLAMATOOL_FORWARD asks of the runs that will load it
    # (=native would refuse to run the pass before its machine code exists)
    requested = os.environ.pop(BACKEND_ENV, None)
    try:
        with tempfile.TemporaryDirectory(prefix="llamatool-warmup-") as tmp:
            path = write_tiny_model(Path(tmp) / "tiny.gguf")
            model = Model.load(path, n_ctx=64, n_threads=threads)
            model.eval([1, 2, 3])
            model.eval([4])
            saved = model._forward_worker.saved
            del model
    finally:
        if requested is not None:
            os.environ[BACKEND_ENV] = requested
    return time.perf_counter() - start, saved


def compile_quantizer(name: str) -> None:
    """Compile the quantization kernels of one registry type, and save the machine code
    that `llamatool quantize` loads without Numba (quants.native)."""
    from .quants import native, registry

    t = registry.ggml_type(name)
    x = np.linspace(-1, 1, 2 * 256, dtype=np.float32).reshape(2, 256)
    if t.can_quantize:
        registry.dequantize(t, registry.quantize(t, x))
        native.row_kernel(t, "quantize")
    if t.can_dequantize:
        native.row_kernel(t, "dequantize")


def write_tiny_model(path: Path) -> Path:
    """A one-layer llama GGUF with random F32 weights and no tokenizer."""
    from .gguf_io import GGUFWriter, ValueType as V

    rng = np.random.default_rng(0)
    n_embd, n_ff, n_vocab, n_head = 64, 128, 32, 4
    shapes = {
        "token_embd.weight": (n_vocab, n_embd),
        "output_norm.weight": (n_embd,),
        "blk.0.attn_norm.weight": (n_embd,),
        "blk.0.attn_q.weight": (n_embd, n_embd),
        "blk.0.attn_k.weight": (n_embd, n_embd),
        "blk.0.attn_v.weight": (n_embd, n_embd),
        "blk.0.attn_output.weight": (n_embd, n_embd),
        "blk.0.ffn_norm.weight": (n_embd,),
        "blk.0.ffn_gate.weight": (n_ff, n_embd),
        "blk.0.ffn_up.weight": (n_ff, n_embd),
        "blk.0.ffn_down.weight": (n_embd, n_ff),
    }
    fields = {
        "general.architecture": ("llama", V.STRING),
        "llama.context_length": (64, V.UINT32),
        "llama.embedding_length": (n_embd, V.UINT32),
        "llama.block_count": (1, V.UINT32),
        "llama.feed_forward_length": (n_ff, V.UINT32),
        "llama.attention.head_count": (n_head, V.UINT32),
        "llama.attention.layer_norm_rms_epsilon": (1e-5, V.FLOAT32),
    }
    with GGUFWriter(path, force=True) as w:
        for key, (value, vtype) in fields.items():
            w.add_field(key, value, vtype)
        for name, shape in shapes.items():
            w.add_tensor_info(name, "F32", tuple(reversed(shape)))
        for name, shape in shapes.items():
            w.write_tensor(name, (0.1 * rng.standard_normal(shape)).astype(np.float32))
    return path
