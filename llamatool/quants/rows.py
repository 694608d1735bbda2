"""What every quantization kernel shares: its decorators, and the wrappers that turn a
serial kernel over rows into the public quantize_<type> / dequantize_<type>.

A kernel is a serial loop over the rows of C-contiguous 2-D arrays, `kernel(src, dst)`,
that releases the GIL. The wrappers check shapes, allocate the output (or fill one the
caller passes in) and run the kernel over chunks of rows on all threads
(`jit.for_each_chunk`): chunks are claimed as threads become free, so on a busy machine
a thread that gets less CPU simply does fewer chunks.

Kernels are cached in a folder named after a hash of this package's sources (kernels
inline helpers from sibling modules, and Numba's own cache check only looks at the
kernel's file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import jit
from ..errors import LlamatoolError

_PACKAGE = Path(__file__).resolve().parent
CHUNK_BYTES = 1 << 20  # float32 values per chunk of rows: big enough to make a call's cost vanish
CHUNKS_PER_THREAD = 4  # at least, so that threads even out


def _cached(**options):
    """njit(cache=True, **options), cached in the package's folder and compiled (whoever
    calls it first) with the vectorizer limits the kernels are written for."""

    def decorate(fn):
        with jit.cache_keyed_on(_PACKAGE, "quants"):
            dispatcher = jit.njit(cache=True, **options)(fn)
        compile_or_load = dispatcher.compile

        def compile(sig):
            with jit.vectorizer_options():
                return compile_or_load(sig)

        dispatcher.compile = compile  # what Numba calls for a new signature, from Python or a kernel
        return dispatcher

    return decorate


# error_model="numpy": a float division by zero gives inf/NaN as in C, not a Python
# exception (and no zero test in the loops to stop the vectorizer). inline="always"
# inlines at the Numba level, before LLVM's vectorizer runs: small helpers called in
# hot loops must be inlined for those loops to vectorize.
inline = jit.njit(inline="always", error_model="numpy")
kernel = _cached(nogil=True, error_model="numpy")
# a kernel only other kernels call: no CPython entry to compile (see jit.njit)
helper = _cached(nogil=True, error_model="numpy", python_entry=False)


def run_rows(kernel, src: np.ndarray, dst: np.ndarray, row_cost: int) -> None:
    """kernel(src[a:b], dst[a:b]) over chunks of rows, on all threads; row_cost is a
    row's size in bytes of float32 (the chunk size is set from it)."""
    n_rows = src.shape[0]
    if jit.threads() == 1:
        kernel(src, dst)
        return
    rows = max(1, CHUNK_BYTES // max(1, row_cost))
    rows = min(rows, -(-n_rows // (CHUNKS_PER_THREAD * jit.threads())))
    jit.for_each_chunk(lambda a, b: kernel(src[a:b], dst[a:b]), n_rows, rows)


def _output(out, shape: tuple[int, int], dtype) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise LlamatoolError(f"output must be a C-contiguous {np.dtype(dtype)} array of shape {shape}, got {out.dtype} {out.shape}")
    return out


def quantizer(kernel, name: str, block_size: int, type_size: int):
    """The public quantize_<name>(x, out=None): float32[n_rows, n_per_row] -> raw blocks."""

    def quantize(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] % block_size:
            raise LlamatoolError(f"{name} quantizes rows whose length is a multiple of {block_size}, got shape {x.shape}")
        out = _output(out, (x.shape[0], x.shape[1] // block_size * type_size), np.uint8)
        run_rows(kernel, x, out, 4 * x.shape[1])
        return out

    quantize.__name__ = quantize.__qualname__ = f"quantize_{name.lower()}"
    quantize.__doc__ = f"float32[n_rows, n_per_row] -> {name} blocks, byte-exact with ggml."
    quantize.kernel = kernel  # serial, for callers with threads of their own (native.py)
    return quantize


def dequantizer(kernel, name: str, block_size: int, type_size: int):
    """The public dequantize_<name>(raw, out=None): raw blocks -> float32[n_rows, n_per_row]."""

    def dequantize(raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        raw = np.ascontiguousarray(raw).view(np.uint8)
        if raw.ndim != 2 or raw.shape[1] % type_size:
            raise LlamatoolError(f"{name} rows must be whole {type_size}-byte blocks, got shape {raw.shape}")
        n_per_row = raw.shape[1] // type_size * block_size
        out = _output(out, (raw.shape[0], n_per_row), np.float32)
        run_rows(kernel, raw, out, 4 * n_per_row)
        return out

    dequantize.__name__ = dequantize.__qualname__ = f"dequantize_{name.lower()}"
    dequantize.__doc__ = f"{name} blocks -> float32[n_rows, n_per_row], as ggml's dequantize_row_{name.lower()}."
    dequantize.kernel = kernel
    return dequantize
