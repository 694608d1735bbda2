"""Numba kernels of the forward pass, one module per concern:

    simd.py       explicit SIMD vectors (LLVM vector IR through Numba intrinsics)
    lanes.py      lane shuffles and reinterpretations with compile-time patterns
    types.py      ggml type ids the kernels specialize on
    blocks.py     every quantized block type read in place as 32-weight chunks (and the
                  K-quants as whole 256-weight super-blocks)
    actquant.py   8-bit activation quantization (ggml's Q8_0/Q8_1/Q8_K) and f16/bf16 rounding
    matmul.py     matrix-vector and matrix-matrix products straight from the mapped file
    gemm.py       prompt processing: register-tiled panels of 16 rows x 4 tokens
    norm.py       RMSNorm;  rope.py  rotary embeddings;  attention.py  attention over the cache
    lora.py       LoRA adapters' low-rank terms, added to the products of the matrices they adapt
    vmath.py      vectorized exp / SiLU / SwiGLU
    sync.py       chunk claiming and phase barriers between threads
    forward.py    the whole forward pass as one compiled call

Kernels are compiled without Numba's reference counting (`_nrt=False`): they never
allocate, and counting references costs an atomic increment and decrement per array
argument per call, which for the forward pass's hundreds of calls per phase chunk (on
arrays shared between threads) cost more than the math.

Importing this package imports every kernel module with Numba's cache pointed at a folder
named after a hash of these sources. Numba only checks the timestamp of a cached function's
own file, so a kernel that inlines code from another module (all of them do) would otherwise
keep running the old code after that module changes.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from llamatool import jit as _jit


@contextmanager
def versioned_cache():
    """Numba functions defined inside this block cache their code in this version's folder."""
    with _jit.cache_keyed_on(Path(__file__).parent, "kernels"):
        yield


with versioned_cache():
    from . import actquant, attention, blocks, forward, gemm, lora, matmul, norm, rope, simd, sync, types, vmath  # noqa: F401,E402
