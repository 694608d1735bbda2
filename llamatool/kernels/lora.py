"""LoRA adapters at run time: y = W.x + B.(f * A.x) beside every adapted matrix's product.

The base weights stay as they are (quantized or not); each adapted matrix gets two small
products, which is what keeps the fused pass fast: u = f * A.x (the rank dot products of
the input row, f being each adapter's scale * alpha / rank), made by the phase that
prepares the input (chunk = token), so the row chunks of the matrix share it and no
barrier is added (a phase of its own, split finer, was slower: with two threads on a busy
machine a barrier costs more than those few dot products); and B.u, added by each row chunk
of the matrix to its own output rows right after its product, before biases, RoPE or
SwiGLU. Several adapters on one matrix are one product of their ranks stacked.

A and B are held in the adapter's own precision, as llama.cpp computes with them: IEEE
halves for an F16 adapter (half the bytes to read per decoded token, which is what decode
spends), float32 otherwise; products and sums are float32.

`Lora` (a field of the forward pass's Net) holds, per tensor of the model's tensor table:

    table[i]   where A (rank x K, row-major) and B transposed (rank x N) start in `w32`
               (float32) or, if HALF, in `w16` (uint16 halves), the rank (0: tensor i is not
               adapted), where its rank values sit in each token's row of `u`, N, where its
               rank factors are in `factors`, and HALF
    u          per token, `stride` floats: the f * A.x of the matrices of one layer
An embedding's A is stored transposed (vocab x rank: the row of a token is its A.x), as
llama.cpp's adapters store it.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from llamatool.jit import njit

from .simd import extract, fma, hsum, load, load_f16, splat, store

from numba import float32  # noqa: E402

Lora = namedtuple("Lora", "table w32 w16 factors u stride")
# columns of Lora.table
LORA_A, LORA_BT, LORA_RANK, LORA_U, LORA_N, LORA_F, LORA_HALF = 0, 1, 2, 3, 4, 5, 6
LORA_COLUMNS = 7


def no_lora(n_tensors: int) -> Lora:
    """The Lora of a model without adapters: every rank 0."""
    return Lora(np.zeros((max(1, n_tensors), LORA_COLUMNS), np.int64), np.zeros(16, np.float32),
                np.zeros(16, np.uint16), np.zeros(16, np.float32), np.zeros(16, np.float32), 0)


@njit(cache=True, _nrt=False, forceinline=True)
def _w16(lora, half, o):
    """16 weights from offset o, as float32."""
    return load_f16(lora.w16, o, 16) if half else load(lora.w32, o, 16)


@njit(cache=True, _nrt=False, forceinline=True)
def _w1(lora, half, o):
    return load_f16(lora.w16, o, 1) if half else lora.w32[o]


@njit(cache=True, _nrt=False, forceinline=True)
def _fma1(a, b, c):
    """a*b + c rounded once on float32 scalars: what one lane of a vector fma computes."""
    return extract(fma(splat(a, 1), splat(b, 1), splat(c, 1)), 0)


@njit(cache=True, _nrt=False, forceinline=True)
def _dot_tail(lora, half, wo, x, xo, k0, K, acc):
    """hsum(acc) plus weights wo+k0..wo+K times x[xo+k0 : xo+K], one by one."""
    total = hsum(acc)
    for k in range(k0, K):
        total = _fma1(_w1(lora, half, wo + k), x[xo + k], total)
    return total


@njit(cache=True, _nrt=False, python_entry=False)
def _down_rows(lora, half, wo, j0, j1, K, x, xo, f, fo, u, uo):
    """u[uo+j] = f[fo+j] * (A_j . x) for rank rows j0..j1 of A (at wo, rows of K). Four rows
    at a time share each load of x (four independent fma chains); a row's sum is the same
    whichever group it is in."""
    n16 = K - K % 16
    j = j0
    while j + 4 <= j1:
        a0 = splat(float32(0), 16)
        a1, a2, a3 = a0, a0, a0
        w0 = wo + j * K
        for k in range(0, n16, 16):
            xv = load(x, xo + k, 16)
            a0 = fma(_w16(lora, half, w0 + k), xv, a0)
            a1 = fma(_w16(lora, half, w0 + K + k), xv, a1)
            a2 = fma(_w16(lora, half, w0 + 2 * K + k), xv, a2)
            a3 = fma(_w16(lora, half, w0 + 3 * K + k), xv, a3)
        u[uo + j] = f[fo + j] * _dot_tail(lora, half, w0, x, xo, n16, K, a0)
        u[uo + j + 1] = f[fo + j + 1] * _dot_tail(lora, half, w0 + K, x, xo, n16, K, a1)
        u[uo + j + 2] = f[fo + j + 2] * _dot_tail(lora, half, w0 + 2 * K, x, xo, n16, K, a2)
        u[uo + j + 3] = f[fo + j + 3] * _dot_tail(lora, half, w0 + 3 * K, x, xo, n16, K, a3)
        j += 4
    while j < j1:
        a0 = splat(float32(0), 16)
        w0 = wo + j * K
        for k in range(0, n16, 16):
            a0 = fma(_w16(lora, half, w0 + k), load(x, xo + k, 16), a0)
        u[uo + j] = f[fo + j] * _dot_tail(lora, half, w0, x, xo, n16, K, a0)
        j += 1


@njit(cache=True, _nrt=False, python_entry=False)
def lora_down(lora, i, src, t, K):
    """u of tensor i for token t: f_j * A_j . src[t*K : t*K+K] (nothing if i is not adapted)."""
    if i < 0:
        return
    T = lora.table
    rank = T[i, LORA_RANK]
    if rank == 0:
        return
    _down_rows(lora, T[i, LORA_HALF] != 0, T[i, LORA_A], 0, rank, K, src, t * K, lora.factors, T[i, LORA_F],
               lora.u, t * lora.stride + T[i, LORA_U])


@njit(cache=True, _nrt=False, python_entry=False)
def lora_down3(lora, a, b, c, src, t, K):
    """lora_down for the (up to three, -1: none) tensors reading one input row."""
    lora_down(lora, a, src, t, K)
    lora_down(lora, b, src, t, K)
    lora_down(lora, c, src, t, K)


@njit(cache=True, _nrt=False, python_entry=False)
def lora_up(lora, i, r0, r1, t0, t1, out, ldo, col0, out_t0):
    """out[(t - out_t0)*ldo + col0 + r] += (B.u_t)[r] for rows r0..r1 of tensor i, tokens t0..t1.

    Each row's B.u is summed over the rank in a register (fma, rank order), then added to
    out once; four 16-row blocks at a time (independent chains). A row's value does not
    depend on the block it is grouped with, nor on r0..r1."""
    rank = lora.table[i, LORA_RANK]
    if rank == 0:
        return
    n_rows = r1 - r0
    n16 = n_rows - n_rows % 16
    bt = lora.table[i, LORA_BT]
    N = lora.table[i, LORA_N]
    half = lora.table[i, LORA_HALF] != 0
    for t in range(t0, t1):
        uo = t * lora.stride + lora.table[i, LORA_U]
        o = (t - out_t0) * ldo + col0
        r = r0
        while r + 64 <= r0 + n16:
            a0 = splat(float32(0), 16)
            a1, a2, a3 = a0, a0, a0
            for j in range(rank):
                uj = splat(lora.u[uo + j], 16)
                row = bt + j * N + r
                a0 = fma(_w16(lora, half, row), uj, a0)
                a1 = fma(_w16(lora, half, row + 16), uj, a1)
                a2 = fma(_w16(lora, half, row + 32), uj, a2)
                a3 = fma(_w16(lora, half, row + 48), uj, a3)
            store(out, o + r, load(out, o + r, 16) + a0)
            store(out, o + r + 16, load(out, o + r + 16, 16) + a1)
            store(out, o + r + 32, load(out, o + r + 32, 16) + a2)
            store(out, o + r + 48, load(out, o + r + 48, 16) + a3)
            r += 64
        while r < r0 + n16:
            a0 = splat(float32(0), 16)
            for j in range(rank):
                a0 = fma(_w16(lora, half, bt + j * N + r), splat(lora.u[uo + j], 16), a0)
            store(out, o + r, load(out, o + r, 16) + a0)
            r += 16
        for r in range(r0 + n16, r1):
            acc = float32(0)
            for j in range(rank):
                acc = _fma1(_w1(lora, half, bt + j * N + r), lora.u[uo + j], acc)
            out[o + r] += acc


@njit(cache=True, _nrt=False, python_entry=False)
def lora_embed(lora, i, token, out, oo, n_embd):
    """out[oo:oo+n_embd] += B.(f * A_T[token]) for an adapted token embedding i."""
    T = lora.table
    rank = T[i, LORA_RANK]
    if rank == 0:
        return
    a = T[i, LORA_A] + token * rank
    bt = T[i, LORA_BT]
    half = T[i, LORA_HALF] != 0
    n16 = n_embd - n_embd % 16
    for j in range(rank):
        uj = lora.factors[T[i, LORA_F] + j] * _w1(lora, half, a + j)
        row = bt + j * n_embd
        for r in range(0, n16, 16):
            store(out, oo + r, load(out, oo + r, 16) + _w16(lora, half, row + r) * uj)
        for r in range(n16, n_embd):
            out[oo + r] += _w1(lora, half, row + r) * uj
