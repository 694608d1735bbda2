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
one-row loop. Against a Q8_K activation (one token scale per 256 weights) the AVX-512 build
leaves the token scale for the end of each super-block (sb += float(sum) * row scales, then
acc += sb * token scale: see _per_superblock), one multiply fewer per chunk. Tokens go in
tiles of 2 x TILE, then TILE (a decoded weight vector feeds eight or four products from a
register); the panel is packed BLOCK_K weights at a time so it stays in L1 while every
token of the call streams past it. llvm-mca (Sapphire Rapids)
on the emitted Q4_0 tile loop: ~35 cycles per 4 tokens x 32 weights x 16 rows, ~8.7
cycles per 512 multiply-adds, ports 0 and 5 saturated (the one-row loop: ~33). Eight-token
tiles load (and unpack) each weight vector once for eight: a server step of eight slots
took 9.0 ms instead of 10.5, a 64-token prompt 53 ms instead of 58 (default model, one
thread, medians of 3 alternating runs).

Packing costs about one decode of the panel per call (each pair of chunks of the 16 rows
is decoded into a small square, transposed by vector shuffles and stored as 16 vectors),
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

from llamatool import host
from llamatool.jit import njit

from .amx import tile_config, tile_dot, tile_load, tile_release, tile_store, tile_zero
from .blocks import HALF_OFFSETS, decode_chunk, decode_pair_in_group, group_bytes, half_offsets
from .simd import (broadcast4, dot4_u8i8, extract, fma, get, interleave, load, load_f16, reinterpret, round_f16, splat,
                   stack_array, store, to_f32)
from .types import IQ1_S, IQ4_NL, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q8_0, Q8_K_ACTIVATION, TQ1_0, TQ2_0

from numba import float32, int32, int64, literally, uint32  # noqa: E402
from numba.core import errors, types  # noqa: E402
from numba.extending import overload  # noqa: E402

#: rows per panel: one int32 lane of a 512-bit vector each
PANEL = 16
#: weights of a row packed at a time (a multiple of 256, so K-quant super-blocks stay whole)
BLOCK_K = 2048
#: tokens per register tile (and twice as many, where there are)
TILE = 4
#: calls with fewer tokens keep the one-row loops (packing would cost more than it saves)
MIN_TOKENS = 8
#: 32 vector registers (see _per_superblock)
_WIDE_REGISTERS = host.features().avx512

_WORDS = BLOCK_K // 4 * PANEL  # uint32 words of a packed block
_UNITS = BLOCK_K // 16 * PANEL  # scale slots of a packed block (16-weight units at most)
_PANEL_BYTES = 4 * PANEL  # bytes of a packed vector

# What the product of a packed panel needs to know of its weight type: whether a chunk has
# two 16-weight scale units, whether block sums are read as f16, and whether the activation
# has one scale per 256-weight super-block (Q8_K: SUPER, and every HALVES type). The panel
# code is compiled once per kind, not once per type (warmup compiles every type).
PLAIN, HALVES, F16_SUMS, SUPER = 0, 1, 2, 3
# Panels packed once at load (pack_matrix) are kept as small as the type allows, since a
# decode step reads them all from DRAM: flags added to the kind say how.
#: weights as nibbles (the types whose packed bytes are all below 16)
NIBBLES = 4
NIBBLE_TYPES = (Q4_0, Q4_1, Q2_K, Q3_K, Q4_K, TQ1_0, TQ2_0, IQ1_S)
#: scales and mins as f16 (the types whose scales are the blocks' f16 scales, when every
#: value of the matrix converts exactly, as it does unless a scale is near f16's range)
F16_SCALES = 8
F16_SCALE_TYPES = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL)
N_PACKED_KINDS = 16


def panel_kind(qtype: int) -> int:
    if qtype in HALF_OFFSETS:
        return HALVES
    return F16_SUMS if qtype in (Q4_1, Q5_1) else SUPER if qtype in Q8_K_ACTIVATION else PLAIN


def packed_kind(qtype: int) -> int:
    """The most compact kind of a type's panels packed at load: its panel_kind + flags."""
    return panel_kind(qtype) + (NIBBLES if qtype in NIBBLE_TYPES else 0) + (F16_SCALES if qtype in F16_SCALE_TYPES else 0)


# --- packing a panel --------------------------------------------------------------------------


@njit(cache=True, _nrt=False, forceinline=True)
def _put_units(qtype, cb, r, s0, s1, m0, m1, scales, mins):
    """The scales and mins of chunk cb into lane r."""
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
def _interleave_rows(a, ao, b, bo):
    """Rows k and k + 8 of the 16 x 16 words at a[ao:] interleaved into rows 2k, 2k + 1 at
    b[bo:] (a perfect shuffle of the rows: four of them transpose the square)."""
    for k in range(8):
        store(b, bo + 32 * k, interleave(load(a, ao + 16 * k, 16), load(a, ao + 16 * (k + 8), 16)))


@njit(cache=True, _nrt=False, python_entry=False)
def _pack_panel(qtype, W, row0, row_bytes, n_valid, c0, c1, packed, scales, mins, stage):
    """Chunks c0..c1 (c0 a multiple of 8) of the panel whose first row is at byte row0 (lanes
    past n_valid repeat its last row). Each pair of chunks is decoded row by row into
    `stage` (16 words per row) and transposed there in four vector shuffles of every row
    pair, so that word i of the 16 rows is one 64-byte store. (Stored word by word, packing
    took 11% of a 1B Q5_K_M file's pp256 on Zen 4, the products 60%.)"""
    c = c0
    while c + 2 <= c1:
        bo = (c // 8) * group_bytes(qtype)
        for r in range(PANEL):
            row = row0 + min(r, n_valid - 1) * row_bytes
            w, sa0, sa1, sb0, sb1, ma0, ma1, mb0, mb1 = decode_pair_in_group(qtype, W, row + bo, c % 8)
            store(stage, 16 * r, reinterpret(w, np.uint32))
            _put_units(qtype, c - c0, r, sa0, sa1, ma0, ma1, scales, mins)
            _put_units(qtype, c - c0 + 1, r, sb0, sb1, mb0, mb1, scales, mins)
        _interleave_rows(stage, int64(0), stage, int64(256))
        _interleave_rows(stage, int64(256), stage, int64(0))
        _interleave_rows(stage, int64(0), stage, int64(256))
        _interleave_rows(stage, int64(256), packed, (c - c0) * 8 * PANEL)
        c += 2
    if c < c1:  # an odd last chunk (32-weight types with an odd row length)
        for r in range(PANEL):
            w, s0, s1, m0, m1 = decode_chunk(qtype, W, row0 + min(r, n_valid - 1) * row_bytes, c)
            words = reinterpret(w, np.uint32)
            for i in range(8):
                packed[(c - c0) * 8 * PANEL + PANEL * i + r] = extract(words, i)
            _put_units(qtype, c - c0, r, s0, s1, m0, m1, scales, mins)


# --- a tile of tokens against the packed panel ----------------------------------------------------


@njit(cache=True, _nrt=False, forceinline=True)
def _words(packed, o, n, q, xo, p):
    """p + the n words of packed from word vector o . the activation bytes at xo (4 per word)."""
    for i in range(n):
        w = reinterpret(load(packed, (o + i) * PANEL, PANEL), np.uint8)
        p = dot4_u8i8(p, w, broadcast4(q, xo + 4 * i, _PANEL_BYTES))
    return p


@njit(cache=True, _nrt=False, forceinline=True)
def _nibble_words(packed, o, high, q, xo, p):
    """p + the 4 words in the low (high = 0) or high nibbles of the vectors from o . the
    activation bytes at xo (pack_panels keeps word i of a chunk in the low nibbles of its
    vector i % 4 and word i + 4 in the high ones)."""
    for i in range(4):
        v = load(packed, (o + i) * PANEL, PANEL)
        w = (v >> uint32(4) if high else v) & uint32(0x0F0F0F0F)
        p = dot4_u8i8(p, reinterpret(w, np.uint8), broadcast4(q, xo + 4 * i, _PANEL_BYTES))
    return p


@njit(cache=True, _nrt=False, forceinline=True)
def _chunk_words(kind, packed, cb, h, n, q, xo, p):
    """p + n = 4 or 8 words of chunk cb from word 4h . the activation bytes at xo."""
    if kind & NIBBLES:
        p = _nibble_words(packed, 4 * cb, h, q, xo, p)
        return _nibble_words(packed, 4 * cb, 1, q, xo + 16, p) if n == 8 else p
    return _words(packed, 8 * cb + 4 * h, n, q, xo, p)


@njit(cache=True, _nrt=False, forceinline=True)
def _block_sum(kind, s32, i):
    """The activation's scaled block sum as the weight type's ggml dot product reads it:
    Q4_1 and Q5_1 meet ggml's Q8_1, which stores it as f16."""
    if kind & 3 == F16_SUMS:
        return round_f16(get(s32, i))
    return get(s32, i)


def _units(values, u):
    """The 16 scales (or mins) of unit u: float32, or f16 bits (uint16) in panels packed with
    F16_SCALES (chosen by the array's type, as Numba types both sides of a branch)."""
    raise NotImplementedError("_units is only callable from compiled code")


@overload(_units)
def _units_of(values, u):
    if values.dtype == types.uint16:
        return lambda values, u: load_f16(values, u, PANEL)
    return lambda values, u: load(values, u, PANEL)


@njit(cache=True, _nrt=False, forceinline=True)
def _per_superblock(kind):
    """Whether a chunk's products meet the activation's scale only at the end of their
    super-block (kinds whose activation has one scale per 256 weights): one multiply fewer
    per chunk and token, the float operations being what bounds the tiles on Zen 4 (pp256
    one thread, alternating: 1B Q6_K 1.12x, Q5_K_M 1.08x). With AVX-512 only: it doubles a
    tile's accumulators, and 16 registers (AVX2) already hold only those."""
    return _WIDE_REGISTERS and (kind & 3 == HALVES or kind & 3 == SUPER)


@njit(cache=True, _nrt=False, forceinline=True)
def _scaled_products(kind, p, row_scales, dx, acc, sb):
    """The int32 products p times the rows' scales, into sb where _per_superblock(kind), else
    times the token's scale dx too, into acc."""
    if _per_superblock(kind):
        return acc, fma(to_f32(p), row_scales, sb)
    return fma(to_f32(p), row_scales * dx, acc), sb


@njit(cache=True, _nrt=False, forceinline=True)
def _chunk(kind, packed, scales, mins, cb, c, q, d, s16, s32, K, t, acc, sb):
    """(acc, sb) + packed chunk cb (chunk c of the row) . token t: acc the panel's 16 rows .
    token t so far; sb, where _per_superblock(kind), the current super-block's products not
    yet times the activation's scale (added to acc after its last chunk)."""
    zero = splat(int32(0), PANEL)
    xo = t * K + 32 * c
    dx = get(d, t * (K // 32) + c)
    if kind & 3 == HALVES:
        for h in range(2):
            p = _chunk_words(kind, packed, cb, h, 4, q, xo + 16 * h, zero)
            u = (2 * cb + h) * PANEL
            acc, sb = _scaled_products(kind, p, _units(scales, u), dx, acc, sb)
            acc = fma(_units(mins, u), splat(get(s16, t * (K // 16) + 2 * c + h), PANEL), acc)
    else:
        p = _chunk_words(kind, packed, cb, 0, 8, q, xo, zero)
        u = cb * PANEL
        acc, sb = _scaled_products(kind, p, _units(scales, u), dx, acc, sb)
        acc = fma(_units(mins, u), splat(_block_sum(kind, s32, t * (K // 32) + c), PANEL), acc)
    if _per_superblock(kind) and c % 8 == 7:
        return fma(sb, splat(dx, PANEL), acc), splat(float32(0), PANEL)
    return acc, sb


@njit(cache=True, _nrt=False, forceinline=True)
def _chunk4(kind, packed, scales, mins, cb, c, q, d, s16, s32, K, t, a0, a1, a2, a3, s0, s1, s2, s3):
    """Packed chunk cb (chunk c of the row) . tokens t..t+3."""
    a0, s0 = _chunk(kind, packed, scales, mins, cb, c, q, d, s16, s32, K, t, a0, s0)
    a1, s1 = _chunk(kind, packed, scales, mins, cb, c, q, d, s16, s32, K, t + 1, a1, s1)
    a2, s2 = _chunk(kind, packed, scales, mins, cb, c, q, d, s16, s32, K, t + 2, a2, s2)
    a3, s3 = _chunk(kind, packed, scales, mins, cb, c, q, d, s16, s32, K, t + 3, a3, s3)
    return a0, a1, a2, a3, s0, s1, s2, s3


@njit(cache=True, _nrt=False, forceinline=True)
def _tile(kind, packed, scales, mins, c0, nc, q, d, s16, s32, K, t, a0, a1, a2, a3):
    """Tokens t..t+3 over the packed chunks (chunks c0.. of the row, whole super-blocks for
    the kinds _per_superblock): each weight vector is loaded once for the four (the
    compiler merges the four identical loads)."""
    s0 = s1 = s2 = s3 = splat(float32(0), PANEL)
    for cb in range(nc):
        a0, a1, a2, a3, s0, s1, s2, s3 = _chunk4(kind, packed, scales, mins, cb, c0 + cb, q, d, s16, s32, K, t,
                                                 a0, a1, a2, a3, s0, s1, s2, s3)
    return a0, a1, a2, a3


@njit(cache=True, _nrt=False, forceinline=True)
def _tile8(kind, packed, scales, mins, c0, nc, q, d, s16, s32, K, t, a0, a1, a2, a3, a4, a5, a6, a7):
    """Tokens t..t+7 as _tile (a weight vector loaded, and unpacked, once for eight)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = splat(float32(0), PANEL)
    for cb in range(nc):
        a0, a1, a2, a3, s0, s1, s2, s3 = _chunk4(kind, packed, scales, mins, cb, c0 + cb, q, d, s16, s32, K, t,
                                                 a0, a1, a2, a3, s0, s1, s2, s3)
        a4, a5, a6, a7, s4, s5, s6, s7 = _chunk4(kind, packed, scales, mins, cb, c0 + cb, q, d, s16, s32, K, t + 4,
                                                 a4, a5, a6, a7, s4, s5, s6, s7)
    return a0, a1, a2, a3, a4, a5, a6, a7


@njit(cache=True, _nrt=False, forceinline=True)
def _single(kind, packed, scales, mins, c0, nc, q, d, s16, s32, K, t, a):
    sb = splat(float32(0), PANEL)
    for cb in range(nc):
        a, sb = _chunk(kind, packed, scales, mins, cb, c0 + cb, q, d, s16, s32, K, t, a, sb)
    return a


# --- partial sums in the output ---------------------------------------------------------------


@njit(cache=True, _nrt=False, forceinline=True)
def _resume(first, out, o, l0, l1, tmp):
    """The panel's sums so far for one token (lanes l0..l1 of out[o:o+PANEL]; zero before
    the first block)."""
    if first:
        return splat(float32(0), PANEL)
    if l0 == 0 and l1 == PANEL:
        return load(out, o, PANEL)
    for i in range(PANEL):
        tmp[i] = out[o + i] if l0 <= i < l1 else float32(0)
    return load(tmp, 0, PANEL)


@njit(cache=True, _nrt=False, forceinline=True)
def _save(acc, out, o, l0, l1, tmp):
    """Lanes l0..l1 of acc into out[o + lane]."""
    if l0 == 0 and l1 == PANEL:
        store(out, o, acc)
        return
    store(tmp, 0, acc)
    for i in range(l0, l1):
        out[o + i] = tmp[i]


@njit(cache=True, _nrt=False, forceinline=True)
def _resume4(first, out, o, ldo, l0, l1, tmp):
    """_resume of tokens at out[o], out[o + ldo], ... (four)."""
    return (_resume(first, out, o, l0, l1, tmp), _resume(first, out, o + ldo, l0, l1, tmp),
            _resume(first, out, o + 2 * ldo, l0, l1, tmp), _resume(first, out, o + 3 * ldo, l0, l1, tmp))


@njit(cache=True, _nrt=False, forceinline=True)
def _save4(a0, a1, a2, a3, out, o, ldo, l0, l1, tmp):
    _save(a0, out, o, l0, l1, tmp)
    _save(a1, out, o + ldo, l0, l1, tmp)
    _save(a2, out, o + 2 * ldo, l0, l1, tmp)
    _save(a3, out, o + 3 * ldo, l0, l1, tmp)


@njit(cache=True, _nrt=False, python_entry=False)
def _panel_block(kind, packed, scales, mins, c0, nc, first, l0, l1, t0, t1, q, d, s16, s32, K, out, ldo, o0,
                 out_t0, tmp):
    """Every token t0..t1 against the packed panel; lanes l0..l1 go to
    out[(t - out_t0)*ldo + o0 + lane]."""
    t = t0
    while t + 2 * TILE <= t1:
        o = (t - out_t0) * ldo + o0
        a0, a1, a2, a3 = _resume4(first, out, o, ldo, l0, l1, tmp)
        a4, a5, a6, a7 = _resume4(first, out, o + 4 * ldo, ldo, l0, l1, tmp)
        a0, a1, a2, a3, a4, a5, a6, a7 = _tile8(kind, packed, scales, mins, c0, nc, q, d, s16, s32, K, t, a0, a1, a2, a3,
                                                a4, a5, a6, a7)
        _save4(a0, a1, a2, a3, out, o, ldo, l0, l1, tmp)
        _save4(a4, a5, a6, a7, out, o + 4 * ldo, ldo, l0, l1, tmp)
        t += 2 * TILE
    while t + TILE <= t1:
        o = (t - out_t0) * ldo + o0
        a0, a1, a2, a3 = _resume4(first, out, o, ldo, l0, l1, tmp)
        a0, a1, a2, a3 = _tile(kind, packed, scales, mins, c0, nc, q, d, s16, s32, K, t, a0, a1, a2, a3)
        _save4(a0, a1, a2, a3, out, o, ldo, l0, l1, tmp)
        t += TILE
    for tt in range(t, t1):
        o = (tt - out_t0) * ldo + o0
        a = _single(kind, packed, scales, mins, c0, nc, q, d, s16, s32, K, tt, _resume(first, out, o, l0, l1, tmp))
        _save(a, out, o, l0, l1, tmp)


@njit(_nrt=False, inline="always")
def quant_gemm(qtype, kind, W, w_off, row_bytes, K, r0, r1, t0, t1, q, d, s16, s32, out, ldo, col0, out_t0):
    """matmul's rows() for a quantized type (same arguments, minus the float activation, plus
    the type's panel_kind), panel by panel: out[(t - out_t0)*ldo + col0 + r] = row r .
    activation row t. Inlined into the caller's Numba IR (see matmul._quant_rows)."""
    packed = stack_array(_WORDS, np.uint32)
    scales = stack_array(_UNITS, np.float32)
    mins = stack_array(_UNITS, np.float32)
    tmp = stack_array(PANEL, np.float32)
    stage = stack_array(512, np.uint32)
    n_chunks = K // 32
    for rp in range(r0, r1, PANEL):
        n_valid = min(PANEL, r1 - rp)
        for c0 in range(0, n_chunks, BLOCK_K // 32):
            c1 = min(n_chunks, c0 + BLOCK_K // 32)
            # lanes past the last row repeat it (their sums are dropped)
            _pack_panel(qtype, W, w_off + rp * row_bytes, row_bytes, n_valid, c0, c1, packed, scales, mins, stage)
            _panel_block(kind, packed, scales, mins, c0, c1 - c0, c0 == 0, 0, n_valid, t0, t1, q, d, s16, s32, K, out,
                         ldo, col0 + rp, out_t0, tmp)


# --- weights packed once, at load ---------------------------------------------------------------
# A server's decode step multiplies each matrix by one token of every busy slot. Packing the
# panels once, when the model loads, lets any number of tokens, one included, take the panel
# product above: a token's sums are then the same whatever else is in the call (the one-row
# loops and the panels differ in float summation order), and a step of eight tokens costs
# about three single-token steps instead of five or six. A matrix's packed panels follow each
# other in a uint32 buffer, each as its words, then its scales, then its mins (float32 bits,
# or f16 pairs with F16_SCALES), the same values quant_gemm packs per call (pack_matrix makes
# them compact without changing one), so the products agree with it bit for bit.


def packed_panel_words(kind: int, K: int) -> int:
    """uint32 words of one 16-row panel of a row length K packed at load as `kind`."""
    units = K // 32 * (2 if kind & 3 == HALVES else 1) * PANEL
    return K // 32 * (4 if kind & NIBBLES else 8) * PANEL + (units if kind & F16_SCALES else 2 * units)


def packed_words(kind: int, K: int, n_rows: int) -> int:
    """uint32 words of a whole matrix packed at load as `kind`."""
    return (n_rows + PANEL - 1) // PANEL * packed_panel_words(kind, K)


def _literal_kind(kind) -> int:
    if not isinstance(kind, types.IntegerLiteral):
        raise errors.TypingError("a packed panel's kind must be a constant")
    return kind.literal_value


def _panel_words(kind, n_chunks):
    """packed_panel_words(kind, 32 * n_chunks) in compiled code (kind: a constant)."""
    raise NotImplementedError("_panel_words is only callable from compiled code")


@overload(_panel_words, prefer_literal=True)
def _panel_words_of(kind, n_chunks):
    per_chunk = packed_panel_words(_literal_kind(kind), 32)
    return lambda kind, n_chunks: n_chunks * per_chunk


def _panel_parts(kind, P, o, n_chunks):
    """Views of the words, scales and mins of the panel packed at word o of P as `kind` (a
    constant: the scales' array type depends on it)."""
    raise NotImplementedError("_panel_parts is only callable from compiled code")


@overload(_panel_parts, prefer_literal=True)
def _panel_parts_of(kind, P, o, n_chunks):
    k = _literal_kind(kind)
    words_per_chunk = (4 if k & NIBBLES else 8) * PANEL
    units_per_chunk = (2 if k & 3 == HALVES else 1) * PANEL

    if k & F16_SCALES:
        def parts(kind, P, o, n_chunks):
            s = o + n_chunks * words_per_chunk
            n = n_chunks * units_per_chunk
            halves = P[s:s + n].view(np.uint16)
            return P[o:s], halves[:n], halves[n:]
        return parts

    def parts(kind, P, o, n_chunks):
        s = o + n_chunks * words_per_chunk
        n = n_chunks * units_per_chunk
        return P[o:s], P[s:s + n].view(np.float32), P[s + n:s + 2 * n].view(np.float32)
    return parts


@njit(cache=True, _nrt=False)
def pack_panels(qtype, kind, W, w_off, row_bytes, K, n_rows, p0, p1, out):
    """Panels p0..p1 of the matrix at byte w_off of W as quant_gemm packs them, one after
    the other in out; qtype: a constant type id, kind its panel_kind."""
    literally(qtype)
    n_chunks = K // 32
    size = _panel_words(kind, n_chunks)
    stage = stack_array(512, np.uint32)
    for p in range(p0, p1):
        words, scales, mins = _panel_parts(kind, out, (p - p0) * size, n_chunks)
        n_valid = min(PANEL, n_rows - p * PANEL)
        # lanes past the last row repeat it, as in quant_gemm
        _pack_panel(qtype, W, w_off + p * PANEL * row_bytes, row_bytes, n_valid, 0, n_chunks, words, scales, mins, stage)


def _compact(kind: int, panels: np.ndarray, K: int) -> np.ndarray | None:
    """Panels as pack_panels writes them (n, words) in the layout of `kind`; None if a scale
    or min does not convert to f16 exactly."""
    n_words = K // 32 * 8 * PANEL
    words, units = panels[:, :n_words], panels[:, n_words:]
    if kind & NIBBLES:  # word i of a chunk to the low nibbles of vector i % 4, word i + 4 to the high ones
        chunks = words.reshape(len(panels), K // 32, 2, 4 * PANEL)
        words = (chunks[:, :, 0] | (chunks[:, :, 1] << 4)).reshape(len(panels), -1)
    if kind & F16_SCALES:
        exact = units.view(np.float32)
        with np.errstate(over="ignore"):  # a value beyond f16 becomes inf, and the check below fails
            halves = exact.astype(np.float16)
        if not np.array_equal(halves.astype(np.float32).view(np.uint32), exact.view(np.uint32)):
            return None
        units = halves.view(np.uint32)
    return np.concatenate([words, units], axis=1)


def pack_matrix(packer, qtype: int, W, w_off: int, row_bytes: int, K: int, n_rows: int, out: np.ndarray, kind: int):
    """Pack the matrix into out (packed_panel_words(kind, K) per panel) as `kind`, by
    packer (pack_panels for qtype); False if its scales do not fit F16_SCALES."""
    n_panels = (n_rows + PANEL - 1) // PANEL
    plain_size = packed_panel_words(panel_kind(qtype), K)
    step = max(1, (1 << 18) // plain_size)  # panels at a time (1 MiB: freed memory of this size goes back to the system)
    panels = out.reshape(n_panels, packed_panel_words(kind, K))
    for p0 in range(0, n_panels, step):
        p1 = min(n_panels, p0 + step)
        plain = np.empty((p1 - p0, plain_size), np.uint32)
        packer(W, w_off, row_bytes, K, n_rows, p0, p1, plain.reshape(-1))
        compact = _compact(kind, plain, K)
        if compact is None:
            return False
        panels[p0:p1] = compact
    return True


@njit(_nrt=False, inline="always")
def packed_rows(kind, P, base, K, r0, r1, t0, t1, q, d, s16, s32, out, ldo, col0, out_t0):
    """quant_gemm's product for rows r0..r1 (any) and any number of tokens, from the panels
    pack_matrix wrote at word base of P as `kind` (a constant)."""
    n_chunks = K // 32
    size = _panel_words(kind, n_chunks)
    tmp = stack_array(PANEL, np.float32)
    for p in range(r0 // PANEL, (r1 + PANEL - 1) // PANEL):
        packed, scales, mins = _panel_parts(kind, P, base + p * size, n_chunks)
        rp = p * PANEL
        _panel_block(kind, packed, scales, mins, 0, n_chunks, True, max(r0 - rp, 0), min(r1 - rp, PANEL), t0, t1, q,
                     d, s16, s32, K, out, ldo, col0 + rp, out_t0, tmp)


# --- the product of packed panels by AMX tiles (kernels/amx.py) ---------------------------------
# A tile product takes 8 tokens x 32 weights x 16 rows in one instruction where vpdpbusd takes
# 16 rows x 4 weights of one token: the int32 sums of a chunk are the same (exact), and they
# are scaled and added as _chunk does, so a token gets the panel product's bits. Unpacked
# nibbles go through memory (a tile loads only from there), written some chunks ahead: a tile
# load right after the stores it reads waits for them.

#: tokens per tile product: the rows of the activation tile and of the int32 result
AMX_TOKENS = 8
_AMX_CHUNKS = 16  # chunks whose nibbles are unpacked at a time, before the tile loads that read them
_AMX_WORDS = _AMX_CHUNKS * 8 * PANEL  # their unpacked words
_AMX_SUMS = AMX_TOKENS * PANEL  # the int32 sums of one tile product
_C, _A, _B = 0, 4, 5  # tiles: the result, the activations, the weights


def amx_kind(kind: int) -> bool:
    """Whether panels of this kind have one scale per 32-weight chunk, as a tile product of 32
    needs, and meet the activation's scale per chunk, as the tile products do."""
    return kind & 3 == PLAIN or kind & 3 == F16_SUMS


def packed_entry(kind: int, amx: bool) -> str:
    """The saved C entry point of the product of panels packed as kind: by tiles where amx
    (host.amx_int8()) and the kind allows."""
    return f"packed_rows_amx_{kind}" if amx and amx_kind(kind) else f"packed_rows_{kind}"


@njit(cache=True, _nrt=False, forceinline=True)
def _tile_setup(cfg):
    """Result: 8 rows of 16 int32; activations: 8 rows of 32 bytes; weights: 8 rows of 16 x 4 bytes."""
    for i in range(64):
        cfg[i] = 0
    cfg[0] = 1  # palette 1
    cfg[16 + 2 * _C], cfg[48 + _C] = 64, AMX_TOKENS
    cfg[16 + 2 * _A], cfg[48 + _A] = 32, AMX_TOKENS
    cfg[16 + 2 * _B], cfg[48 + _B] = 64, 8
    tile_config(cfg.ctypes.data)


@njit(cache=True, _nrt=False, forceinline=True)
def _amx_token(kind, ibuf, j, sc, mn, d, s32, x, acc):
    """acc + the int32 sums of token j in ibuf, scaled as _chunk scales a chunk's."""
    acc = fma(to_f32(load(ibuf, j * PANEL, PANEL)), sc * get(d, x), acc)
    return fma(mn, splat(_block_sum(kind, s32, x), PANEL), acc)


@njit(cache=True, _nrt=False, forceinline=True)
def _amx_panel(kind, packed, scales, mins, n_chunks, l0, l1, t, q, d, s32, K, out, ldo, o0, out_t0, tmp, wbuf, ibuf):
    """Tokens t..t+8 against the packed panel (lanes l0..l1 to out), chunk by chunk."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = splat(float32(0), PANEL)
    nd = K // 32
    for c0 in range(0, n_chunks, _AMX_CHUNKS):
        c1 = min(n_chunks, c0 + _AMX_CHUNKS)
        if kind & NIBBLES:  # vector i % 4 holds word i in its low nibbles and word i + 4 in its high ones
            for cb in range(c0, c1):
                for i in range(4):
                    v = load(packed, (4 * cb + i) * PANEL, PANEL)
                    store(wbuf, (8 * (cb - c0) + i) * PANEL, v & uint32(0x0F0F0F0F))
                    store(wbuf, (8 * (cb - c0) + i + 4) * PANEL, (v >> uint32(4)) & uint32(0x0F0F0F0F))
        for cb in range(c0, c1):
            if kind & NIBBLES:
                tile_load(_B, wbuf.ctypes.data + _PANEL_BYTES * 8 * (cb - c0), _PANEL_BYTES)
            else:
                tile_load(_B, packed.ctypes.data + _PANEL_BYTES * 8 * cb, _PANEL_BYTES)
            tile_load(_A, q.ctypes.data + t * K + 32 * cb, K)
            tile_zero(_C)
            tile_dot(_C, _A, _B)
            tile_store(_C, ibuf.ctypes.data, _PANEL_BYTES)
            sc = _units(scales, cb * PANEL)
            mn = _units(mins, cb * PANEL)
            x = t * nd + cb
            a0 = _amx_token(kind, ibuf, 0, sc, mn, d, s32, x, a0)
            a1 = _amx_token(kind, ibuf, 1, sc, mn, d, s32, x + nd, a1)
            a2 = _amx_token(kind, ibuf, 2, sc, mn, d, s32, x + 2 * nd, a2)
            a3 = _amx_token(kind, ibuf, 3, sc, mn, d, s32, x + 3 * nd, a3)
            a4 = _amx_token(kind, ibuf, 4, sc, mn, d, s32, x + 4 * nd, a4)
            a5 = _amx_token(kind, ibuf, 5, sc, mn, d, s32, x + 5 * nd, a5)
            a6 = _amx_token(kind, ibuf, 6, sc, mn, d, s32, x + 6 * nd, a6)
            a7 = _amx_token(kind, ibuf, 7, sc, mn, d, s32, x + 7 * nd, a7)
    o = (t - out_t0) * ldo + o0
    _save4(a0, a1, a2, a3, out, o, ldo, l0, l1, tmp)
    _save4(a4, a5, a6, a7, out, o + 4 * ldo, ldo, l0, l1, tmp)


@njit(_nrt=False, inline="always")
def amx_packed_rows(kind, P, base, K, r0, r1, t0, t1, q, d, s16, s32, out, ldo, col0, out_t0):
    """packed_rows with the tokens in groups of 8 by tile products (the same bits); kind: a
    constant for which amx_kind holds."""
    n_amx = (t1 - t0) // AMX_TOKENS * AMX_TOKENS
    if n_amx > 0:
        n_chunks = K // 32
        size = _panel_words(kind, n_chunks)
        cfg = stack_array(64, np.uint8)
        tmp = stack_array(PANEL, np.float32)
        wbuf = stack_array(_AMX_WORDS, np.uint32)
        ibuf = stack_array(_AMX_SUMS, np.int32)
        _tile_setup(cfg)
        for p in range(r0 // PANEL, (r1 + PANEL - 1) // PANEL):
            packed, scales, mins = _panel_parts(kind, P, base + p * size, n_chunks)
            rp = p * PANEL
            for t in range(t0, t0 + n_amx, AMX_TOKENS):
                _amx_panel(kind, packed, scales, mins, n_chunks, max(r0 - rp, 0), min(r1 - rp, PANEL), t, q, d, s32, K,
                           out, ldo, col0 + rp, out_t0, tmp, wbuf, ibuf)
        tile_release()
    if t0 + n_amx < t1:
        packed_rows(kind, P, base, K, r0, r1, t0 + n_amx, t1, q, d, s16, s32, out, ldo, col0, out_t0)
