"""Prompt processing: quantized matrix x many tokens as a register-tiled product.

The one-row loops of matmul.py spend a vpdpbusd's 16 int32 lanes on 16 slices of ONE row
and then pay, per 64 weights, an int->float conversion, a scale permute and an FMA, and
per row a horizontal sum. Here the lanes are 16 ROWS instead: a panel of 16 rows is
decoded once (blocks.py decoders) into a small stack buffer, transposed so that one
64-byte vector holds 4 consecutive weights of each of the 16 rows,

    packed[chunk][i][row] = the uint32 of weights 32*chunk + 4i .. +3 of that row   (8 per chunk)
    scales[unit][row], mins[unit][row]    unit = a chunk, or a 16-weight half (Q2_K, Q3_K, Q6_K)

and each token then meets it with one vpdpbusd per 4 weights, the token's 4 activation
bytes broadcast to every lane (a memory operand, no shuffle). A chunk's 8 products sum
exactly in int32, and only then, per chunk, 16 rows x 1 token at once:

    acc += float(sum) * (row scales * token scale) + row mins * token sum     (cvt, mul, 2 FMA)

so per 512 multiply-adds: 8 vpdpbusd + 4 float ops, against 8 x (vpdpbusd + ~4) in the
one-row loop. Tokens go in tiles of TILE (a decoded weight vector feeds TILE products
from a register); the panel is packed BLOCK_K weights at a time so it stays in L1 while
every token of the call streams past it. llvm-mca (Sapphire Rapids) on the emitted Q4_0
tile loop: ~35 cycles per 4 tokens x 32 weights x 16 rows, ~8.7 cycles per 512
multiply-adds, ports 0 and 5 saturated (the one-row loop: ~33).

Packing costs about one decode of the panel per call (one scalar store per 4 weights),
so it pays from a few tokens up; calls with fewer than MIN_TOKENS tokens keep the one-row
loops anyway, so that a short batch (a server's decode step: one token of each slot) gives
the same numbers as decoding token by token.
A row's arithmetic does not depend on its lane, its panel, the K blocking or which tile
its token falls in, so results do not change with thread count, row chunking or batch
split, as long as the tokens take this path (they differ from the one-row loops by float
summation order only, and for Q4_1/Q5_1 by reading the activation's block sums as f16,
as ggml's Q8_1 stores them).
"""

from __future__ import annotations

import numpy as np

from llamatool.jit import njit

from .blocks import HALF_OFFSETS, decode_chunk, decode_pair_in_group, group_bytes, half_offsets
from .simd import (broadcast4, dot4_u8i8, extract, fma, get, load, reinterpret, round_f16, splat, stack_array, store,
                   to_f32)
from .types import Q4_1, Q5_1

from numba import float32, int32, int64  # noqa: E402

#: rows per panel: one int32 lane of a 512-bit vector each
PANEL = 16
#: weights of a row packed at a time (a multiple of 256, so K-quant super-blocks stay whole)
BLOCK_K = 2048
#: tokens per register tile
TILE = 4
#: calls with fewer tokens keep the one-row loops (packing would cost more than it saves)
MIN_TOKENS = 8

_WORDS = BLOCK_K // 4 * PANEL  # uint32 words of a packed block
_UNITS = BLOCK_K // 16 * PANEL  # scale slots of a packed block (16-weight units at most)
_PANEL_BYTES = 4 * PANEL  # bytes of a packed vector

# What the product of a packed panel needs to know of its weight type: whether a chunk has
# two 16-weight scale units, and whether block sums are read as f16. The panel code is
# compiled once per kind, not once per type (warmup compiles every type).
PLAIN, HALVES, F16_SUMS = 0, 1, 2


def panel_kind(qtype: int) -> int:
    return HALVES if qtype in HALF_OFFSETS else F16_SUMS if qtype in (Q4_1, Q5_1) else PLAIN


# --- packing a panel --------------------------------------------------------------------------


@njit(cache=True, _nrt=False, forceinline=True)
def _put(qtype, words, k, s0, s1, m0, m1, cb, r, packed, scales, mins):
    """Chunk cb of the block (8 words of `words` from word k, and its scales) into lane r."""
    o = cb * 8 * PANEL + r
    for i in range(8):
        packed[o + PANEL * i] = extract(words, k + i)
    if half_offsets(qtype):
        u = 2 * cb * PANEL + r
        scales[u] = s0
        scales[u + PANEL] = s1
        mins[u] = m0
        mins[u + PANEL] = m1
    else:
        scales[cb * PANEL + r] = s0
        mins[cb * PANEL + r] = m0


@njit(cache=True, _nrt=False, forceinline=True)
def _put_pair(qtype, W, bo, j, cb, r, packed, scales, mins):
    """Chunks j, j+1 of the group at bo into chunks cb, cb+1 of lane r."""
    w, sa0, sa1, sb0, sb1, ma0, ma1, mb0, mb1 = decode_pair_in_group(qtype, W, bo, j)
    words = reinterpret(w, np.uint32)
    _put(qtype, words, int64(0), sa0, sa1, ma0, ma1, cb, r, packed, scales, mins)
    _put(qtype, words, int64(8), sb0, sb1, mb0, mb1, cb + 1, r, packed, scales, mins)


@njit(cache=True, _nrt=False)
def _pack_row(qtype, W, row, c0, c1, r, packed, scales, mins):
    """Chunks c0..c1 (c0 a multiple of 8) of the row at byte offset `row` into lane r."""
    c = c0
    while c + 8 <= c1:  # whole groups (the chunk places are plain ints: see jit.njit)
        bo = row + (c // 8) * group_bytes(qtype)
        _put_pair(qtype, W, bo, int64(0), c - c0, r, packed, scales, mins)
        _put_pair(qtype, W, bo, int64(2), c - c0 + 2, r, packed, scales, mins)
        _put_pair(qtype, W, bo, int64(4), c - c0 + 4, r, packed, scales, mins)
        _put_pair(qtype, W, bo, int64(6), c - c0 + 6, r, packed, scales, mins)
        c += 8
    bo = row + (c // 8) * group_bytes(qtype)
    while c + 2 <= c1:  # rows that end inside a group (32-weight types only)
        _put_pair(qtype, W, bo, c % 8, c - c0, r, packed, scales, mins)
        c += 2
    if c < c1:
        w, s0, s1, m0, m1 = decode_chunk(qtype, W, row, c)
        _put(qtype, reinterpret(w, np.uint32), int64(0), s0, s1, m0, m1, c - c0, r, packed, scales, mins)


# --- a tile of tokens against the packed panel ----------------------------------------------------


@njit(cache=True, _nrt=False, forceinline=True)
def _words(packed, o, n, q, xo, p):
    """p + the n words of packed from word vector o . the activation bytes at xo (4 per word)."""
    for i in range(n):
        w = reinterpret(load(packed, (o + i) * PANEL, PANEL), np.uint8)
        p = dot4_u8i8(p, w, broadcast4(q, xo + 4 * i, _PANEL_BYTES))
    return p


@njit(cache=True, _nrt=False, forceinline=True)
def _block_sum(kind, s32, i):
    """The activation's scaled block sum as the weight type's ggml dot product reads it:
    Q4_1 and Q5_1 meet ggml's Q8_1, which stores it as f16."""
    if kind == F16_SUMS:
        return round_f16(get(s32, i))
    return get(s32, i)


@njit(cache=True, _nrt=False, forceinline=True)
def _chunk(kind, packed, scales, mins, cb, c, q, d, s16, s32, K, t, acc):
    """acc (the panel's 16 rows . token t so far) + packed chunk cb (chunk c of the row) . token t."""
    zero = splat(int32(0), PANEL)
    xo = t * K + 32 * c
    dx = get(d, t * (K // 32) + c)
    if kind == HALVES:
        for h in range(2):
            p = _words(packed, 8 * cb + 4 * h, 4, q, xo + 16 * h, zero)
            u = (2 * cb + h) * PANEL
            acc = fma(to_f32(p), load(scales, u, PANEL) * dx, acc)
            acc = fma(load(mins, u, PANEL), splat(get(s16, t * (K // 16) + 2 * c + h), PANEL), acc)
        return acc
    p = _words(packed, 8 * cb, 8, q, xo, zero)
    u = cb * PANEL
    acc = fma(to_f32(p), load(scales, u, PANEL) * dx, acc)
    return fma(load(mins, u, PANEL), splat(_block_sum(kind, s32, t * (K // 32) + c), PANEL), acc)


@njit(cache=True, _nrt=False, forceinline=True)
def _tile(kind, packed, scales, mins, c0, nc, q, d, s16, s32, K, t, a0, a1, a2, a3):
    """Tokens t..t+3 over the packed chunks (chunks c0.. of the row): each weight vector
    is loaded once for the four (the compiler merges the four identical loads)."""
    for cb in range(nc):
        c = c0 + cb
        a0 = _chunk(kind, packed, scales, mins, cb, c, q, d, s16, s32, K, t, a0)
        a1 = _chunk(kind, packed, scales, mins, cb, c, q, d, s16, s32, K, t + 1, a1)
        a2 = _chunk(kind, packed, scales, mins, cb, c, q, d, s16, s32, K, t + 2, a2)
        a3 = _chunk(kind, packed, scales, mins, cb, c, q, d, s16, s32, K, t + 3, a3)
    return a0, a1, a2, a3


@njit(cache=True, _nrt=False, forceinline=True)
def _single(kind, packed, scales, mins, c0, nc, q, d, s16, s32, K, t, a):
    for cb in range(nc):
        a = _chunk(kind, packed, scales, mins, cb, c0 + cb, q, d, s16, s32, K, t, a)
    return a


# --- partial sums in the output ---------------------------------------------------------------


@njit(cache=True, _nrt=False, forceinline=True)
def _resume(first, out, o, n_valid, tmp):
    """The panel's sums so far for one token (out[o:o+n_valid]; zero before the first block)."""
    if first:
        return splat(float32(0), PANEL)
    if n_valid == PANEL:
        return load(out, o, PANEL)
    for i in range(PANEL):
        tmp[i] = out[o + i] if i < n_valid else float32(0)
    return load(tmp, 0, PANEL)


@njit(cache=True, _nrt=False, forceinline=True)
def _save(acc, out, o, n_valid, tmp):
    if n_valid == PANEL:
        store(out, o, acc)
        return
    store(tmp, 0, acc)
    for i in range(n_valid):
        out[o + i] = tmp[i]


@njit(cache=True, _nrt=False)
def _panel_block(kind, packed, scales, mins, c0, nc, first, n_valid, t0, t1, q, d, s16, s32, K, out, ldo, o0,
                 out_t0, tmp):
    """Every token t0..t1 against the packed panel; out[(t - out_t0)*ldo + o0 + lane]."""
    t = t0
    while t + TILE <= t1:
        o = (t - out_t0) * ldo + o0
        a0 = _resume(first, out, o, n_valid, tmp)
        a1 = _resume(first, out, o + ldo, n_valid, tmp)
        a2 = _resume(first, out, o + 2 * ldo, n_valid, tmp)
        a3 = _resume(first, out, o + 3 * ldo, n_valid, tmp)
        a0, a1, a2, a3 = _tile(kind, packed, scales, mins, c0, nc, q, d, s16, s32, K, t, a0, a1, a2, a3)
        _save(a0, out, o, n_valid, tmp)
        _save(a1, out, o + ldo, n_valid, tmp)
        _save(a2, out, o + 2 * ldo, n_valid, tmp)
        _save(a3, out, o + 3 * ldo, n_valid, tmp)
        t += TILE
    for tt in range(t, t1):
        o = (tt - out_t0) * ldo + o0
        a = _single(kind, packed, scales, mins, c0, nc, q, d, s16, s32, K, tt, _resume(first, out, o, n_valid, tmp))
        _save(a, out, o, n_valid, tmp)


@njit(_nrt=False, inline="always")
def quant_gemm(qtype, kind, W, w_off, row_bytes, K, r0, r1, t0, t1, q, d, s16, s32, out, ldo, col0, out_t0):
    """matmul's rows() for a quantized type (same arguments, minus the float activation, plus
    the type's panel_kind), panel by panel: out[(t - out_t0)*ldo + col0 + r] = row r .
    activation row t. Inlined into the caller's Numba IR (see matmul._quant_rows)."""
    packed = stack_array(_WORDS, np.uint32)
    scales = stack_array(_UNITS, np.float32)
    mins = stack_array(_UNITS, np.float32)
    tmp = stack_array(PANEL, np.float32)
    n_chunks = K // 32
    for rp in range(r0, r1, PANEL):
        n_valid = min(PANEL, r1 - rp)
        for c0 in range(0, n_chunks, BLOCK_K // 32):
            c1 = min(n_chunks, c0 + BLOCK_K // 32)
            for r in range(PANEL):  # lanes past the last row repeat it (their sums are dropped)
                _pack_row(qtype, W, w_off + (rp + min(r, n_valid - 1)) * row_bytes, c0, c1, r, packed, scales, mins)
            _panel_block(kind, packed, scales, mins, c0, c1 - c0, c0 == 0, n_valid, t0, t1, q, d, s16, s32, K, out,
                         ldo, col0 + rp, out_t0, tmp)
