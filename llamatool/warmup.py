"""`llamatool warmup`: compile every Numba kernel once and cache it.

Numba compiles a kernel the first time it runs and caches the machine code (see jit.py),
so the first command on a machine pays for compilation and later ones start in about a
second. A model only compiles the matmul kernels of its own weight types; warmup pays for
all of it up front: the matmul kernels of every supported type, the forward pass (run once
on a throw-away one-layer model) and the quantization kernels of every type the registry
knows.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import host


def warmup_command(threads: int | None = None) -> None:
    from .jit import cache_dir

    print(f"compiling kernels (cache: {cache_dir()}); the first time takes a few minutes...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    kernels_s = compile_matmul_kernels()
    print(f"  matmul kernels of every type: {kernels_s:.1f} s", file=sys.stderr, flush=True)
    forward_s, saved = compile_forward(threads)
    note = ("saved as machine code that loads without Numba" if saved
            else "in Numba's cache (saved machine code is off here)" if not host.saved_code()
            else "machine code could not be saved: runs through Numba")
    print(f"  forward pass: {forward_s:.1f} s ({note})", file=sys.stderr, flush=True)
    quant_s, missing = compile_quantizers()
    print(f"  quantize/dequantize: {quant_s:.1f} s" + (f" (failed: {', '.join(missing)})" if missing else ""),
          file=sys.stderr, flush=True)
    print(f"warmup done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def compile_matmul_kernels() -> float:
    """Build the matmul and dequantization kernels of every supported type."""
    from .kernels.matmul import kernel_tables
    from .kernels.types import SUPPORTED

    start = time.perf_counter()
    kernel_tables(SUPPORTED)
    return time.perf_counter() - start


def compile_forward(threads: int | None = None) -> tuple[float, bool]:
    """Compile (or load from the cache) the forward pass and save its machine code (see
    native_forward); returns the seconds it took and whether the machine code is saved."""
    from .model import Model
    from .native_forward import forget_failures

    start = time.perf_counter()
    forget_failures()
    with tempfile.TemporaryDirectory(prefix="llamatool-warmup-") as tmp:
        path = write_tiny_model(Path(tmp) / "tiny.gguf")
        model = Model.load(path, n_ctx=64, n_threads=threads)
        model.eval([1, 2, 3])
        model.eval([4])
        saved = model._forward_worker.saved
        del model
    return time.perf_counter() - start, saved


def compile_quantizers() -> tuple[float, list[str]]:
    """Compile the quantization kernels of every type, and save the machine code that
    `llamatool quantize` loads without Numba (quants.native)."""
    from .quants import native, registry

    start = time.perf_counter()
    x = np.linspace(-1, 1, 2 * 256, dtype=np.float32).reshape(2, 256)
    missing = []
    for t in registry.all_types():
        try:
            if t.can_quantize:
                registry.dequantize(t, registry.quantize(t, x))
                native.row_kernel(t, "quantize")
            if t.can_dequantize:
                native.row_kernel(t, "dequantize")
        except Exception:  # noqa: BLE001 - a warm-up: report a type that fails, do not stop
            missing.append(t.name)
    native.nonfinite_counter()
    return time.perf_counter() - start, missing


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
