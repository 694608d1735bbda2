"""LoRA adapters at run time: y = W.x + B'.(A.x) beside every adapted matrix's product.

The base weights stay as they are (quantized or not); each adapted matrix gets two small
float32 products, which is what keeps the fused pass fast: A.x (rank dot products of the
input row, done once per token in the phase that prepares the input, so the row chunks of
the matrix share it) and B'.u (added to the chunk's own output rows right after its
product, before biases, RoPE or SwiGLU). Several adapters on one matrix are one product of
their ranks stacked; each adapter's scale * alpha / rank is folded into its columns of B'.

`Lora` (a field of the forward pass's Net) holds, per tensor of the model's tensor table:

    table[i]   offset of A (rank x K, row-major) and of B' transposed (rank x N) in
               `weights`, the rank (0: tensor i is not adapted), where its rank values
               sit in each token's row of `u`, and N
    u          per token, `stride` floats: the A.x of the matrices of one layer
An embedding's A is stored transposed (vocab x rank, the row of a token is its u), as
llama.cpp's adapters store it.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from llamatool.jit import njit

from .simd import hsum, load, splat, store

from numba import float32  # noqa: E402

Lora = namedtuple("Lora", "table weights u stride")
# columns of Lora.table
LORA_A, LORA_BT, LORA_RANK, LORA_U, LORA_N = 0, 1, 2, 3, 4
LORA_COLUMNS = 5


def no_lora(n_tensors: int) -> Lora:
    """The Lora of a model without adapters: every rank 0."""
    return Lora(np.zeros((max(1, n_tensors), LORA_COLUMNS), np.int64), np.zeros(16, np.float32), np.zeros(16, np.float32), 0)


@njit(cache=True, _nrt=False, forceinline=True)
def _dot(a, ao, b, bo, n):
    n16 = n - n % 16
    acc = splat(float32(0), 16)
    for k in range(0, n16, 16):
        acc = acc + load(a, ao + k, 16) * load(b, bo + k, 16)
    total = hsum(acc)
    for k in range(n16, n):
        total += a[ao + k] * b[bo + k]
    return total


@njit(cache=True, _nrt=False)
def lora_down(lora, i, src, t, K):
    """u of tensor i for token t: A . src[t*K : t*K+K] (nothing if i is not adapted)."""
    if i < 0:
        return
    rank = lora.table[i, LORA_RANK]
    if rank == 0:
        return
    a = lora.table[i, LORA_A]
    uo = t * lora.stride + lora.table[i, LORA_U]
    for j in range(rank):
        lora.u[uo + j] = _dot(lora.weights, a + j * K, src, t * K, K)


@njit(cache=True, _nrt=False)
def lora_down3(lora, a, b, c, src, t, K):
    """lora_down for the (up to) three matrices reading one input row."""
    lora_down(lora, a, src, t, K)
    lora_down(lora, b, src, t, K)
    lora_down(lora, c, src, t, K)


@njit(cache=True, _nrt=False)
def lora_up(lora, i, r0, r1, t0, t1, out, ldo, col0, out_t0):
    """out[(t - out_t0)*ldo + col0 + r] += (B'.u_t)[r] for rows r0..r1 of tensor i, tokens t0..t1."""
    rank = lora.table[i, LORA_RANK]
    if rank == 0:
        return
    n_rows = r1 - r0
    n16 = n_rows - n_rows % 16
    bt = lora.table[i, LORA_BT]
    N = lora.table[i, LORA_N]
    for t in range(t0, t1):
        uo = t * lora.stride + lora.table[i, LORA_U]
        o = (t - out_t0) * ldo + col0
        for j in range(rank):
            uj = lora.u[uo + j]
            row = bt + j * N
            for r in range(r0, r0 + n16, 16):
                store(out, o + r, load(out, o + r, 16) + load(lora.weights, row + r, 16) * uj)
            for r in range(r0 + n16, r1):
                out[o + r] += lora.weights[row + r] * uj


@njit(cache=True, _nrt=False)
def lora_embed(lora, i, token, out, oo, n_embd):
    """out[oo:oo+n_embd] += B'.A_T[token] for an adapted token embedding i."""
    rank = lora.table[i, LORA_RANK]
    if rank == 0:
        return
    a = lora.table[i, LORA_A] + token * rank
    bt = lora.table[i, LORA_BT]
    for j in range(rank):
        uj = lora.weights[a + j]
        for r in range(n_embd):
            out[oo + r] += lora.weights[bt + j * n_embd + r] * uj
