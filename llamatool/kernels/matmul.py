"""Matrix products straight from the mapped GGUF: out[t, col0 + r] = W[r] . x[t].

W is the whole mapped file (uint8); a weight tensor is (byte offset, ggml type, row length K).
Quantized rows meet an activation slot (see actquant.py) chunk by chunk (see blocks.py):
per 64 weights one byte dot product (vpdpbusd), one int->float conversion and one FMA
into a 16-lane accumulator; per-row sums happen once at the end. Float rows (F32, F16,
BF16) meet the activation rounded to their type, 16 lanes at a time.

Loop shapes:
    one token      decode: a matrix-vector product, bound by reading the weights once;
                   rows of 2048 weights or more (matrices from DRAM) one at a time, the
                   matrix read as one forward stream; shorter rows (matrices in cache) on
                   Intel four per pass for the 32-weight types (each activation pair is read
                   and prepared once for four rows; four independent FMA chains); asking
                   meanwhile for the weights further on (software prefetch: see
                   STREAM_BY_BYTES)
    a few tokens   fewer than gemm.MIN_TOKENS (a server's decode step: one token per
                   slot): the 32-weight types decode four rows once into a stack buffer
                   and run the one-token steps of every token on it, so each token gets
                   the bits of a one-token call (batch invariance) while the weights are
                   read and decoded once per call; the other types run the one-token loop
                   of every token on 16 rows at a time, while they are in L1
    many tokens    prompt processing (gemm.py, from gemm.MIN_TOKENS tokens up): panels of
                   16 rows decoded once per call into a transposed stack buffer, 16 rows x
                   4 tokens per register tile

All walk a row in groups of 8 chunks with the group's four chunk pairs unrolled, so a
decoder sees the chunk's place in its group as a constant (a K-quant's scale bytes and
shifts are chosen at compile time). The 32-weight types decode a whole group at once
(blocks.decode_group: Q4_0's 144 bytes as three registers, its nibbles and its 8 scales
picked out by permutes). Measured on one matrix in L2 (Sapphire Rapids, one thread):
Q4_0 576-wide rows ~24 ns per row, was ~35 by one row per pass with per-pair scales.

Decode of the K-quants (Q2_K..Q6_K, IQ4_XS: the types with a super-block decoder in
blocks.py) goes by whole super-blocks instead: the Q8_K activation has one scale per 256 values, so the
sub-block scales are unpacked once per super-block as one vector and spread over each
pair's dot lanes by one shuffle, and the offsets are one FMA against the activation's
per-16 sums. llvm-mca: Q6_K ~17 cycles per 256 weights (was ~19 per 64), Q4_K ~19.5.
Q4_K, Q5_K and Q6_K, whose sub-block scales are small integers, apply them before leaving
int32 (vpmaddubsw, then vpdpwssd against the scales: blocks.INT_SCALE_DECODERS), as ggml
does: one conversion and one FMA per super-block; Q4_K/Q5_K unpack their packed 6-bit
scales and mins with scalar operations, off the vector units, and their mins meet the
activation's per-32 sums. On Zen 4 (one thread, a matrix in L3) a Q4_K super-block took
5.6 ns instead of 7.5 (Q4_K matrices 18.5 -> 25 GB/s, Q5_K 16.7 -> 21). Their nibbles then
came as two 64-byte loads split by one mask and one shift, against the activation's paired
copy (blocks.PAIRED_ACTIVATION): 5.1 ns with the weights in L2 (was 5.6).

Every type gets its own compiled pair of kernels with one signature (specialized on the
type id, a compile-time constant; `kernels(qtype)` binds it):

    rows(W, w_off, row_bytes, K, r0, r1, t0, t1, x, q, d, s16, s32, out, ldo, col0, out_t0)
        out[(t - out_t0)*ldo + col0 + r] = row r . activation row t, r0 <= r < r1, t0 <= t < t1;
        x (float32[n_tok*K]) is the activation for float weights, already rounded to the
        weight's type; (q, d, s16, s32) is the activation slot in the weight's 8-bit format
        (actquant.Activation).
    dequant(W, row, K, out, oo)
        out[oo:oo+K] = the row at byte offset `row` as float32 (embedding lookups)

They are built on first use, so a model compiles only the types it has, and the forward
pass calls them through C function pointers (`kernel_tables`): code that is linked into a
caller is optimized again with it, and the forward pass would otherwise carry (and
re-optimize) every kernel of every type.
"""

from __future__ import annotations

from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from llamatool import host
from llamatool.jit import njit

from .blocks import (activation_start, decode_chunk, decode_pair_in_group, decode_superblock, decode_superblock_int,
                     group_bytes, half_offsets, int_scales, offset_sums, zero_offsets,
                     decode_group, is_block32, pair_scales, weight_dot, weight_shift,
                     weight_shift_of)
from .simd import (even_lanes, extract, odd_lanes, fma, get, hsum, interleave, load, load_bf16, load_f16,
                   load_f32, low_half, high_half, prefetch, prefetch_l2, repeat_lanes, scaled_dot4, splat, stack_array, store, to_f32)
from .ccall import c_signature, call_c
from .lanes import repeat_slice
from .gemm import (MIN_TOKENS as GEMM_MIN_TOKENS, N_PACKED_KINDS, amx_kind, amx_packed_rows, pack_panels, packed_entry,
                   packed_rows, panel_kind, quant_gemm)
from .types import F16, F32, FLOAT_TYPES, SUPPORTED

from numba import carray, cfunc, float32, int32, int64, literally, uint8  # noqa: E402
from numba.extending import overload  # noqa: E402


# --- quantized rows -----------------------------------------------------------------------
# All specialized on the type id `qtype`, a compile-time constant. Chunks go by pairs: 64
# weight bytes against 64 activation bytes in one vpdpbusd, whose 16 int32 lanes hold four
# sums of 16 products each (chunk c's halves, then chunk c+1's).


@njit(cache=True, _nrt=False, forceinline=True)
def _offset(qtype, m0, m1, s16, s32, t, K, c):
    """Chunk c's offsets times activation row t's scaled sums over the chunk."""
    if half_offsets(qtype):
        k = t * (K // 16) + 2 * c
        return m0 * get(s16, k) + m1 * get(s16, k + 1)
    return m0 * get(s32, t * (K // 32) + c)


@njit(cache=True, _nrt=False, forceinline=True)
def _odd_chunk(qtype, W, row, c, q, d, s16, s32, t, K):
    """A last chunk without a partner: 32 bytes, halves summed separately."""
    w, s0, s1, m0, m1 = decode_chunk(qtype, W, row, c)
    p = to_f32(weight_dot(qtype, splat(int32(0), 8), w, load(q, t * K + 32 * c, 32)))
    dx = get(d, t * (K // 32) + c)
    return (hsum(low_half(p)) * s0 + hsum(high_half(p)) * s1) * dx + _offset(qtype, m0, m1, s16, s32, t, K, c)


# --- the 32-weight types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) ----------------------------------
# A chunk pair of activation row t is read once (`_x_pair`) and meets several weight rows (decode:
# four rows per pass; a small batch: four rows decoded once, then every token).
#   - For the types whose weights are d * (q - k), the shift goes into the integer dot
#     product: vpdpbusd starts from -k times the activation's sums of four (made once per
#     pair, for every row), so each lane holds the exact sum of (q - k) * qx, as ggml's own
#     vec_dot computes it, and a row pays no offset at all.
#   - A whole group of 8 blocks comes out of blocks.decode_group with its 8 scales d (and
#     Q4_1/Q5_1 their mins m, as [d0, m0, d1, ...]) as one vector: one product with the
#     activation's scales (and block sums) makes every lane scale and offset of the group,
#     and one permute per chunk pair spreads its two scales over the dot's lanes.
#   - Pairs after the last whole group (rows of 64 weights that are not a multiple of 256)
#     read their two scales as one small vector (`pair_scales`).
# Every path does one row and one token by the same steps in the same order, so one token
# gives the same numbers whatever the tiling. A row's state is (acc: 16 dot lanes, offs16:
# the group offsets in its odd lanes, offs4: the pair offsets in lanes 1 and 3).


@njit(cache=True, _nrt=False, forceinline=True)
def _x_pair(qtype, q, d, s32, t, K, c):
    """Chunks c, c+1 of activation row t: (64 bytes qx, the dot's starting lanes, [dx_c, dx_c+1],
    [dx_c, s_c, dx_c+1, s_c+1])."""
    x = t * (K // 32) + c
    xq = load(q, t * K + 32 * c, 64)
    zi = splat(int32(0), 16)
    k = weight_shift(qtype)
    start = zi - weight_dot(qtype, zi, splat(uint8(k), 64), xq) if k > 0 else zi  # k < 128: small weights
    dx = load(d, x, 2)
    return xq, start, dx, interleave(dx, load(s32, x, 2))


@njit(cache=True, _nrt=False, forceinline=True)
def _x_group(qtype, q, d, s32, t, K, c):
    """Chunks c..c+7 of activation row t: their 8 scales, 8 block sums and four chunk pairs."""
    x = t * (K // 32) + c
    return (load(d, x, 8), load(s32, x, 8), _x_pair(qtype, q, d, s32, t, K, c), _x_pair(qtype, q, d, s32, t, K, c + 2),
            _x_pair(qtype, q, d, s32, t, K, c + 4), _x_pair(qtype, q, d, s32, t, K, c + 6))


@njit(cache=True, _nrt=False, forceinline=True)
def _lanes_dot(qtype, W, bo, j, xp):
    """Chunks j, j+1 of the group at bo . an activation pair: 16 exact integer sums, as float32."""
    xq, start = xp[0], xp[1]
    return to_f32(weight_dot(qtype, start, decode_pair_in_group(qtype, W, bo, j)[0], xq))


@njit(cache=True, _nrt=False, forceinline=True)
def _group_dots(qtype, w0, w1, w2, w3, sc, xg, acc):
    """The four chunk pairs of a group . an activation group, sc: the 8 blocks' scales."""
    x0, x1, x2, x3 = xg[2], xg[3], xg[4], xg[5]
    acc = fma(to_f32(weight_dot(qtype, x0[1], w0, x0[0])), repeat_slice(sc, 0, 2, 8), acc)
    acc = fma(to_f32(weight_dot(qtype, x1[1], w1, x1[0])), repeat_slice(sc, 2, 2, 8), acc)
    acc = fma(to_f32(weight_dot(qtype, x2[1], w2, x2[0])), repeat_slice(sc, 4, 2, 8), acc)
    return fma(to_f32(weight_dot(qtype, x3[1], w3, x3[0])), repeat_slice(sc, 6, 2, 8), acc)


@njit(cache=True, _nrt=False, forceinline=True)
def _decoded_step_shifted(qtype, group, xg, st):
    acc, offs16, offs4 = st
    w0, w1, w2, w3, dw = group
    return _group_dots(qtype, w0, w1, w2, w3, dw * xg[0], xg, acc), offs16, offs4


@njit(cache=True, _nrt=False, forceinline=True)
def _decoded_step_with_mins(qtype, group, xg, st):
    acc, offs16, offs4 = st
    w0, w1, w2, w3, dm = group
    p = dm * interleave(xg[0], xg[1])  # [d dx, m s] of the 8 blocks
    return _group_dots(qtype, w0, w1, w2, w3, even_lanes(p), xg, acc), offs16 + p, offs4


def _decoded_step(qtype, group, xg, st):
    """A decoded group of 8 blocks (decode_group's result) . an activation group (_x_group),
    into a row's state st (the offsets of a group: lanes 1, 3, .. of offs16); compiled code only."""
    raise NotImplementedError("_decoded_step is only callable from compiled code")


@overload(_decoded_step, jit_options={"_nrt": False, "forceinline": True})
def _decoded_step_for_type(qtype, group, xg, st):
    step = _decoded_step_shifted if weight_shift_of(qtype) else _decoded_step_with_mins
    return lambda qtype, group, xg, st: step(qtype, group, xg, st)


@njit(cache=True, _nrt=False, forceinline=True)
def _group_step(qtype, W, bo, xg, st):
    """The group of 8 blocks at bo . an activation group (_x_group), into a row's state st."""
    return _decoded_step(qtype, decode_group(qtype, W, bo), xg, st)


@njit(cache=True, _nrt=False, forceinline=True)
def _pair_step_shifted(qtype, W, bo, j, xp, st):
    acc, offs16, offs4 = st
    sc = pair_scales(qtype, W, bo, j) * xp[2]
    return fma(_lanes_dot(qtype, W, bo, j, xp), repeat_lanes(sc, 8), acc), offs16, offs4


@njit(cache=True, _nrt=False, forceinline=True)
def _pair_step_with_mins(qtype, W, bo, j, xp, st):
    acc, offs16, offs4 = st
    dm = pair_scales(qtype, W, bo, j) * xp[3]  # [d dx, m s] of both chunks
    return fma(_lanes_dot(qtype, W, bo, j, xp), repeat_lanes(even_lanes(dm), 8), acc), offs16, offs4 + dm


def _pair_step(qtype, W, bo, j, xp, st):
    """Chunks j, j+1 of the group at bo . an activation pair (_x_pair), into a row's state st;
    compiled code only."""
    raise NotImplementedError("_pair_step is only callable from compiled code")


@overload(_pair_step, jit_options={"_nrt": False, "forceinline": True})
def _pair_step_for_type(qtype, W, bo, j, xp, st):
    step = _pair_step_shifted if weight_shift_of(qtype) else _pair_step_with_mins
    return lambda qtype, W, bo, j, xp, st: step(qtype, W, bo, j, xp, st)


@njit(cache=True, _nrt=False, forceinline=True)
def _start():
    return splat(float32(0), 16), splat(float32(0), 16), splat(float32(0), 4)


@njit(cache=True, _nrt=False, forceinline=True)
def _total(qtype, W, row, n_chunks, c, q, d, s16, s32, t, K, st):
    """A row's dot product from its state, plus its odd last chunk c if it has one."""
    acc, offs16, offs4 = st
    total = hsum(acc)
    if weight_shift(qtype) == 0:
        total += hsum(odd_lanes(offs16)) + (extract(offs4, 1) + extract(offs4, 3))
    if c < n_chunks:
        total += _odd_chunk(qtype, W, row, c, q, d, s16, s32, t, K)
    return total


#: How one-token decode walks a matrix, as measured. Rows of STREAM_L2_MIN_K weights or more
#: (the 1B and 3B shapes: matrices from DRAM), on every host: every type row by row, the
#: matrix read as one forward stream, asking for the bytes DECODE_PREFETCH_BYTES further on
#: (K-quants SUPERBLOCK_L2_AHEAD_BYTES) into L2 (_stream_into_l2). Shorter rows (the default
#: model's 576 and 1536: matrices in cache) by the CPU's vendor: on AMD EPYC (Zen 4) the same
#: stream into every level; elsewhere (tuned on Intel Xeons: Sapphire Rapids) the 32-weight
#: types four rows per pass (each activation group is prepared once for four rows), asking
#: for the rows PREFETCH_ROWS further on, the K-quants row by row, asking for the row
#: SUPERBLOCK_PREFETCH_ROWS further on.
#: Measured on Zen 4, one thread, the 1B shape's 113 matrices in turn from memory, stream vs
#: four rows: Q8_0 10.7 -> 21.8 GB/s, Q4_0 10.6 -> 18.5, Q6_K 19.5-20.6 -> 23.5 (with a
#: matrix in L2 both ways go at about the same speed); K-quants' L2 distance, `bench` tg32
#: alternating with 8 KiB: 1B Q6_K 22.5 -> 24.8 t/s, 1B Q4_K_M 23.8 -> 27.0. On an Intel Xeon
#: with AMX (2026-12-08, `bench` tg32, 2 alternating rounds, stream vs the Intel scheme for
#: long rows too): one thread 3B Q4_K_M 4.91-4.93 -> 6.00-6.08 t/s, 1B Q6_K 10.2-10.4 ->
#: 12.1-12.4, Q4_0 15.3 -> 16.0-16.5, Q8_0 9.6-9.7 -> 9.8; two threads 3B Q4_K_M 9.3-9.9 ->
#: 11.2-11.5, 1B Q6_K 18.2-18.4 -> 22.7-22.8, Q8_0 18.2-18.6 -> 18.6-19.2.
STREAM_BY_BYTES = host.cpu_vendor() == "AuthenticAMD"
PREFETCH_ROWS = 8
DECODE_PREFETCH_BYTES = 8192
SUPERBLOCK_L2_AHEAD_BYTES = 16384
SUPERBLOCK_PREFETCH_ROWS = 4
STREAM_L2_MIN_K = 2048


@njit(cache=True, _nrt=False, forceinline=True)
def _prefetch_rows4(qtype, W, bo, rb):
    ahead = bo + PREFETCH_ROWS * rb
    _prefetch_group(qtype, W, ahead)
    _prefetch_group(qtype, W, ahead + rb)
    _prefetch_group(qtype, W, ahead + 2 * rb)
    _prefetch_group(qtype, W, ahead + 3 * rb)


@njit(cache=True, _nrt=False, forceinline=True)
def _rows4_block32(qtype, W, row, rb, n_chunks, q, d, s16, s32, t, K):
    """Rows at row, row + rb, row + 2 rb, row + 3 rb . activation row t (32-weight types)."""
    s0 = s1 = s2 = s3 = _start()
    n_groups = n_chunks // 8
    for g in range(n_groups):
        bo = row + g * group_bytes(qtype)
        _prefetch_rows4(qtype, W, bo, rb)
        xg = _x_group(qtype, q, d, s32, t, K, 8 * g)
        s0 = _group_step(qtype, W, bo, xg, s0)
        s1 = _group_step(qtype, W, bo + rb, xg, s1)
        s2 = _group_step(qtype, W, bo + 2 * rb, xg, s2)
        s3 = _group_step(qtype, W, bo + 3 * rb, xg, s3)
    bo = row + n_groups * group_bytes(qtype)
    c = 8 * n_groups
    if c + 2 <= n_chunks:
        _prefetch_rows4(qtype, W, bo, rb)
    while c + 2 <= n_chunks:
        xp = _x_pair(qtype, q, d, s32, t, K, c)
        j = c - 8 * n_groups
        s0 = _pair_step(qtype, W, bo, j, xp, s0)
        s1 = _pair_step(qtype, W, bo + rb, j, xp, s1)
        s2 = _pair_step(qtype, W, bo + 2 * rb, j, xp, s2)
        s3 = _pair_step(qtype, W, bo + 3 * rb, j, xp, s3)
        c += 2
    return (_total(qtype, W, row, n_chunks, c, q, d, s16, s32, t, K, s0),
            _total(qtype, W, row + rb, n_chunks, c, q, d, s16, s32, t, K, s1),
            _total(qtype, W, row + 2 * rb, n_chunks, c, q, d, s16, s32, t, K, s2),
            _total(qtype, W, row + 3 * rb, n_chunks, c, q, d, s16, s32, t, K, s3))


@njit(cache=True, _nrt=False, forceinline=True)
def _dot1_block32(qtype, W, row, n_chunks, q, d, s16, s32, t, K, ahead=0):
    """One row . activation row t (32-weight types), by the steps of _rows4_block32; ahead > 0:
    meanwhile asks for the bytes that far on."""
    st = _start()
    n_groups = n_chunks // 8
    into_l2 = _stream_into_l2(K)
    for g in range(n_groups):
        bo = row + g * group_bytes(qtype)
        if ahead:
            _prefetch_group(qtype, W, bo + ahead, into_l2)
        st = _group_step(qtype, W, bo, _x_group(qtype, q, d, s32, t, K, 8 * g), st)
    bo = row + n_groups * group_bytes(qtype)
    c = 8 * n_groups
    while c + 2 <= n_chunks:
        st = _pair_step(qtype, W, bo, c - 8 * n_groups, _x_pair(qtype, q, d, s32, t, K, c), st)
        c += 2
    return _total(qtype, W, row, n_chunks, c, q, d, s16, s32, t, K, st)


@njit(cache=True, _nrt=False, forceinline=True)
def _superblock1(qtype, W, bo, g, q, d, s16, t, K, acc, offs):
    """Super-block g of a row (at byte offset bo) . activation row t, into acc/offs. Q8_K has
    one activation scale per super-block, so every scale is a lane vector made once here."""
    w0, w1, w2, w3, l0, l1, l2, l3, m = decode_superblock(qtype, W, bo, get(d, t * (K // 32) + 8 * g))
    i = activation_start(qtype, q, t, K) + 256 * g
    zi = splat(int32(0), 16)
    p0 = to_f32(weight_dot(qtype, zi, w0, load(q, i, 64)))
    p1 = to_f32(weight_dot(qtype, zi, w1, load(q, i + 64, 64)))
    p2 = to_f32(weight_dot(qtype, zi, w2, load(q, i + 128, 64)))
    p3 = to_f32(weight_dot(qtype, zi, w3, load(q, i + 192, 64)))
    acc = acc + (fma(p0, l0, p1 * l1) + fma(p2, l2, p3 * l3))  # one add on the loop-carried chain
    offs = fma(m, load(s16, t * (K // 16) + 16 * g, 16), offs)
    return acc, offs


@njit(cache=True, _nrt=False, forceinline=True)
def _prefetch_group(qtype, W, bo, into_l2=False):
    """Ask for the cache lines of the group (or super-block) at byte offset bo: one line per
    64 bytes of it, so that the groups of a row, back to back, leave no line out; into L2
    only when into_l2 (see _stream_into_l2), else into every level."""
    for i in range(0, group_bytes(qtype), 64):
        if into_l2:
            prefetch_l2(W, bo + i)
        else:
            prefetch(W, bo + i)


@njit(cache=True, _nrt=False, forceinline=True)
def _stream_into_l2(K):
    """Whether a matrix is read as one stream with its bytes asked for into L2 rather than
    every level: measured on Zen 4 (one thread, alternating), rows of 2048 weights or more
    went faster into L2 (the 1B and 3B shapes: 3B Q4_K_M matrices 92-95 -> 86-90 ms per
    token, 1B Q8_0 tg 16.7-17.2 -> 18.0-18.7 t/s), the default model's rows of 576 and 1536
    slower (Q8_0 tg 110-137 -> 90-93 t/s, Q4_0 161-168 -> 141-150); on Intel see above."""
    return K >= STREAM_L2_MIN_K


@njit(cache=True, _nrt=False, forceinline=True)
def _dot1_superblocks(qtype, W, row, n_chunks, q, d, s16, s32, t, K, ahead=0):
    """One row of a K-quant with a super-block decoder . activation row t (a Q8_K one);
    ahead > 0: meanwhile asks for the bytes that far on (the same place some rows later)."""
    acc = splat(float32(0), 16)
    offs = acc
    into_l2 = _stream_into_l2(K)
    for g in range(n_chunks // 8):
        bo = row + g * group_bytes(qtype)
        if ahead:
            _prefetch_group(qtype, W, bo + ahead, into_l2)
        acc, offs = _superblock1(qtype, W, bo, g, q, d, s16, t, K, acc, offs)
    return hsum(acc + offs)


@njit(cache=True, _nrt=False, forceinline=True)
def _dot1_int_scales(qtype, W, row, n_chunks, q, d, s16, s32, t, K, ahead):
    """The _dot1_superblocks of a type with integer sub-block scales (blocks.INT_SCALE_DECODERS):
    a super-block's products meet their scales in int32 and sum there exactly (one chain of
    four vpdpwssd: see simd.scaled_dot4), then take d * dx in one conversion and one FMA."""
    acc = splat(float32(0), 16)
    offs = zero_offsets(qtype)
    zero = splat(int32(0), 16)
    into_l2 = _stream_into_l2(K)
    x0 = activation_start(qtype, q, t, K)
    for g in range(n_chunks // 8):
        bo = row + g * group_bytes(qtype)
        if ahead:
            _prefetch_group(qtype, W, bo + ahead, into_l2)
        w0, w1, w2, w3, k0, k1, k2, k3, dw, m = decode_superblock_int(qtype, W, bo)
        i = x0 + 256 * g
        sums = scaled_dot4(scaled_dot4(zero, w0, load(q, i, 64), k0), w1, load(q, i + 64, 64), k1)
        sums = scaled_dot4(scaled_dot4(sums, w2, load(q, i + 128, 64), k2), w3, load(q, i + 192, 64), k3)
        acc = fma(to_f32(sums), splat(dw * get(d, t * (K // 32) + 8 * g), 16), acc)
        offs = fma(m, offset_sums(qtype, s16, s32, t * (K // 16) + 16 * g, t * (K // 32) + 8 * g), offs)
    return hsum(acc) + hsum(offs)


def _decode_rows(qtype, W, w_off, row_bytes, n_chunks, r0, r1, q, d, s16, s32, t, K, out, o):
    """out[o + r] = row r . activation row t for r0 <= r < r1; compiled code only."""
    raise NotImplementedError("_decode_rows is only callable from compiled code")


@overload(_decode_rows, jit_options={"_nrt": False, "forceinline": True})
def _decode_rows_for_type(qtype, W, w_off, row_bytes, n_chunks, r0, r1, q, d, s16, s32, t, K, out, o):
    if not is_block32(qtype):
        by_bytes = STREAM_BY_BYTES
        dot1 = _dot1_int_scales if int_scales(qtype) else _dot1_superblocks

        def one_by_one(qtype, W, w_off, row_bytes, n_chunks, r0, r1, q, d, s16, s32, t, K, out, o):
            if _stream_into_l2(K):
                ahead = SUPERBLOCK_L2_AHEAD_BYTES
            elif by_bytes:
                ahead = DECODE_PREFETCH_BYTES
            else:
                ahead = SUPERBLOCK_PREFETCH_ROWS * row_bytes
            for r in range(r0, r1):
                out[o + r] = dot1(qtype, W, w_off + r * row_bytes, n_chunks, q, d, s16, s32, t, K, ahead)

        return one_by_one

    if STREAM_BY_BYTES:
        def streamed(qtype, W, w_off, row_bytes, n_chunks, r0, r1, q, d, s16, s32, t, K, out, o):
            block32_rows_singly(qtype, W, w_off, row_bytes, n_chunks, r0, r1, q, d, s16, s32, t, K, out, o)

        return streamed

    def by_row_length(qtype, W, w_off, row_bytes, n_chunks, r0, r1, q, d, s16, s32, t, K, out, o):
        if _stream_into_l2(K):
            block32_rows_singly(qtype, W, w_off, row_bytes, n_chunks, r0, r1, q, d, s16, s32, t, K, out, o)
        else:
            block32_rows_by_four(qtype, W, w_off, row_bytes, n_chunks, r0, r1, q, d, s16, s32, t, K, out, o)

    return by_row_length


@njit(_nrt=False, inline="always")
def block32_rows_by_four(qtype, W, w_off, row_bytes, n_chunks, r0, r1, q, d, s16, s32, t, K, out, o):
    """_decode_rows of a 32-weight type, four rows per pass (Intel, short rows: see STREAM_BY_BYTES)."""
    r = r0
    while r + 4 <= r1:
        y0, y1, y2, y3 = _rows4_block32(qtype, W, w_off + r * row_bytes, row_bytes, n_chunks, q, d, s16, s32, t, K)
        out[o + r] = y0
        out[o + r + 1] = y1
        out[o + r + 2] = y2
        out[o + r + 3] = y3
        r += 4
    for rr in range(r, r1):
        out[o + rr] = _dot1_block32(qtype, W, w_off + rr * row_bytes, n_chunks, q, d, s16, s32, t, K)


@njit(_nrt=False, inline="always")
def block32_rows_singly(qtype, W, w_off, row_bytes, n_chunks, r0, r1, q, d, s16, s32, t, K, out, o):
    """_decode_rows of a 32-weight type, one row per pass: one forward stream (see STREAM_BY_BYTES)."""
    for r in range(r0, r1):
        out[o + r] = _dot1_block32(qtype, W, w_off + r * row_bytes, n_chunks, q, d, s16, s32, t, K,
                                   DECODE_PREFETCH_BYTES)


# Inlined in Numba's IR into the type's entry points (see kernels, _c_rows): each library Numba
# builds is optimized and compiled to machine code with everything it calls, so every level
# of calls between an entry point and the loops would compile them all once more per type.
@njit(_nrt=False, inline="always")
def _quant_rows(qtype, kind, W, w_off, row_bytes, K, r0, r1, t0, t1, x, q, d, s16, s32, out, ldo, col0, out_t0):
    """rows() of a quantized type (see the module docstring); qtype: a constant type id, kind
    its gemm.panel_kind."""
    if t1 - t0 >= GEMM_MIN_TOKENS:
        quant_gemm(qtype, kind, W, w_off, row_bytes, K, r0, r1, t0, t1, q, d, s16, s32, out, ldo, col0, out_t0)
        return
    if t1 - t0 == 1:
        _decode_rows(qtype, W, w_off, row_bytes, K // 32, r0, r1, q, d, s16, s32, t0, K, out, (t0 - out_t0) * ldo + col0)
        return
    _small_batch(qtype, W, w_off, row_bytes, K, r0, r1, t0, t1, q, d, s16, s32, out, ldo, col0, out_t0)


#: A call of a few tokens goes SMALL_BATCH_ROWS rows at a time, every token meeting them while
#: they are in L1: the weights come from memory once per call, not once per token or tile.
SMALL_BATCH_ROWS = 16
#: Four rows of up to SMALL_BATCH_K weights are decoded once into a stack buffer for all the
#: tokens of a small batch (longer rows go row block by row block, token by token)
SMALL_BATCH_K = 16384
_DECODED_BYTES = 4 * SMALL_BATCH_K  # weight bytes of four decoded rows
_DECODED_SCALES = 4 * SMALL_BATCH_K // 16  # their scales (and mins): 16 floats per group of 256


def _group_scales(qtype, buf, o):
    """The scales decode_group gives a group (8 floats, or 16 with mins), from buf at o;
    compiled code only."""
    raise NotImplementedError("_group_scales is only callable from compiled code")


@overload(_group_scales, jit_options={"_nrt": False, "forceinline": True})
def _group_scales_for_type(qtype, buf, o):
    if weight_shift_of(qtype):
        return lambda qtype, buf, o: load(buf, o, 8)
    return lambda qtype, buf, o: load(buf, o, 16)


@njit(cache=True, _nrt=False, forceinline=True)
def _decode_rows4(qtype, W, row, rb, n_groups, wbuf, sbuf):
    """The whole groups of the rows at row, row + rb, row + 2 rb, row + 3 rb as decode_group
    gives them: group g of row i at wbuf[256 (4 g + i)], its scales at sbuf[16 (4 g + i)]."""
    for g in range(n_groups):
        bo = row + g * group_bytes(qtype)
        _prefetch_rows4(qtype, W, bo, rb)
        for i in range(4):
            w0, w1, w2, w3, sc = decode_group(qtype, W, bo + i * rb)
            o = 256 * (4 * g + i)
            store(wbuf, o, w0)
            store(wbuf, o + 64, w1)
            store(wbuf, o + 128, w2)
            store(wbuf, o + 192, w3)
            store(sbuf, 16 * (4 * g + i), sc)


@njit(cache=True, _nrt=False, forceinline=True)
def _decoded(qtype, wbuf, sbuf, g, i):
    o = 256 * (4 * g + i)
    return (load(wbuf, o, 64), load(wbuf, o + 64, 64), load(wbuf, o + 128, 64), load(wbuf, o + 192, 64),
            _group_scales(qtype, sbuf, 16 * (4 * g + i)))


@njit(cache=True, _nrt=False, forceinline=True)
def _rows4_decoded(qtype, W, row, rb, n_chunks, wbuf, sbuf, q, d, s16, s32, t, K):
    """_rows4_block32 with the rows' whole groups read from _decode_rows4's buffers: the same
    steps, so the same bits."""
    s0 = s1 = s2 = s3 = _start()
    n_groups = n_chunks // 8
    for g in range(n_groups):
        xg = _x_group(qtype, q, d, s32, t, K, 8 * g)
        s0 = _decoded_step(qtype, _decoded(qtype, wbuf, sbuf, g, int64(0)), xg, s0)  # int64: see jit.njit
        s1 = _decoded_step(qtype, _decoded(qtype, wbuf, sbuf, g, int64(1)), xg, s1)
        s2 = _decoded_step(qtype, _decoded(qtype, wbuf, sbuf, g, int64(2)), xg, s2)
        s3 = _decoded_step(qtype, _decoded(qtype, wbuf, sbuf, g, int64(3)), xg, s3)
    bo = row + n_groups * group_bytes(qtype)
    c = 8 * n_groups
    while c + 2 <= n_chunks:
        xp = _x_pair(qtype, q, d, s32, t, K, c)
        j = c - 8 * n_groups
        s0 = _pair_step(qtype, W, bo, j, xp, s0)
        s1 = _pair_step(qtype, W, bo + rb, j, xp, s1)
        s2 = _pair_step(qtype, W, bo + 2 * rb, j, xp, s2)
        s3 = _pair_step(qtype, W, bo + 3 * rb, j, xp, s3)
        c += 2
    return (_total(qtype, W, row, n_chunks, c, q, d, s16, s32, t, K, s0),
            _total(qtype, W, row + rb, n_chunks, c, q, d, s16, s32, t, K, s1),
            _total(qtype, W, row + 2 * rb, n_chunks, c, q, d, s16, s32, t, K, s2),
            _total(qtype, W, row + 3 * rb, n_chunks, c, q, d, s16, s32, t, K, s3))


@njit(_nrt=False, inline="always")  # typed in its caller's context, so _decode_rows is compiled once per type (see _small_batch)
def _row_blocks_token_by_token(qtype, W, w_off, row_bytes, K, r0, r1, t0, t1, q, d, s16, s32, out, ldo, col0, out_t0):
    """Rows r0..r1 . tokens t0..t1 by the one-token loop, SMALL_BATCH_ROWS rows at a time (while
    they are in L1, every token meets them)."""
    for b0 in range(r0, r1, SMALL_BATCH_ROWS):
        for t in range(t0, t1):
            _decode_rows(qtype, W, w_off, row_bytes, K // 32, b0, min(b0 + SMALL_BATCH_ROWS, r1), q, d, s16, s32, t, K,
                         out, (t - out_t0) * ldo + col0)


def _small_batch(qtype, W, w_off, row_bytes, K, r0, r1, t0, t1, q, d, s16, s32, out, ldo, col0, out_t0):
    """Rows r0..r1 . tokens t0..t1 (fewer than gemm.MIN_TOKENS, more than one); compiled code only."""
    raise NotImplementedError("_small_batch is only callable from compiled code")


# Numba compiles an overload's implementation once for every set of compiler flags its callers
# have: this one's callers are the types' C entry points, so it is compiled with their flags
# (and its own calls of _decode_rows meet the same flags as _quant_rows' call).
@overload(_small_batch)
def _small_batch_for_type(qtype, W, w_off, row_bytes, K, r0, r1, t0, t1, q, d, s16, s32, out, ldo, col0, out_t0):
    if is_block32(qtype):
        def four_rows_all_tokens(qtype, W, w_off, row_bytes, K, r0, r1, t0, t1, q, d, s16, s32, out, ldo, col0, out_t0):
            """One-token bits: four rows are decoded once, then meet every token."""
            if K > SMALL_BATCH_K:
                _row_blocks_token_by_token(qtype, W, w_off, row_bytes, K, r0, r1, t0, t1, q, d, s16, s32, out, ldo, col0,
                                           out_t0)
                return
            wbuf = stack_array(_DECODED_BYTES, np.uint8)
            sbuf = stack_array(_DECODED_SCALES, np.float32)
            n_chunks = K // 32
            r = r0
            while r + 4 <= r1:
                row = w_off + r * row_bytes
                _decode_rows4(qtype, W, row, row_bytes, n_chunks // 8, wbuf, sbuf)
                for t in range(t0, t1):
                    y0, y1, y2, y3 = _rows4_decoded(qtype, W, row, row_bytes, n_chunks, wbuf, sbuf, q, d, s16, s32, t, K)
                    o = (t - out_t0) * ldo + col0 + r
                    out[o] = y0
                    out[o + 1] = y1
                    out[o + 2] = y2
                    out[o + 3] = y3
                r += 4
            for t in range(t0, t1):
                _decode_rows(qtype, W, w_off, row_bytes, n_chunks, r, r1, q, d, s16, s32, t, K, out,
                             (t - out_t0) * ldo + col0)

        return four_rows_all_tokens

    def token_by_token(qtype, W, w_off, row_bytes, K, r0, r1, t0, t1, q, d, s16, s32, out, ldo, col0, out_t0):
        """One-token bits, and measured faster than a tile of four tokens decoded once for the
        K-quants (1B Q4_K_M, Q6_K: 0.65-0.93x the time); slower for IQ2_XXS (1.2-1.3x)."""
        _row_blocks_token_by_token(qtype, W, w_off, row_bytes, K, r0, r1, t0, t1, q, d, s16, s32, out, ldo, col0,
                                   out_t0)

    return token_by_token


@njit(cache=True, _nrt=False)
def quant_dequant(qtype, W, row, K, out, oo):
    """dequant() of a quantized type; qtype: a constant type id."""
    literally(qtype)
    for c in range(K // 32):
        w, s0, s1, m0, m1 = decode_chunk(qtype, W, row, c)
        wf = to_f32(w)
        store(out, oo + 32 * c, fma(low_half(wf), splat(s0, 16), splat(m0, 16)))
        store(out, oo + 32 * c + 16, fma(high_half(wf), splat(s1, 16), splat(m1, 16)))


# --- float rows -------------------------------------------------------------------------------


@njit(cache=True, _nrt=False, forceinline=True)
def _load_weights(qtype, W, o):
    """16 float weights of a F32/F16/BF16 row at byte offset o."""
    if qtype == F32:
        return load_f32(W, o, 16)
    if qtype == F16:
        return load_f16(W, o, 16)
    return load_bf16(W, o, 16)


@njit(cache=True, _nrt=False, forceinline=True)
def _load_weight(qtype, W, o):
    if qtype == F32:
        return load_f32(W, o, 1)
    if qtype == F16:
        return load_f16(W, o, 1)
    return load_bf16(W, o, 1)


@njit(cache=True, _nrt=False, forceinline=True)
def _float_dot(qtype, W, row, K, x, xo):
    width = 4 if qtype == F32 else 2
    acc = splat(float32(0), 16)
    n16 = K - K % 16
    for i in range(0, n16, 16):
        acc = fma(_load_weights(qtype, W, row + width * i), load(x, xo + i, 16), acc)
    total = hsum(acc)
    for i in range(n16, K):
        total += _load_weight(qtype, W, row + width * i) * x[xo + i]
    return total


@njit(cache=True, _nrt=False)
def float_rows(qtype, W, w_off, row_bytes, K, r0, r1, t0, t1, x, q, d, s16, s32, out, ldo, col0, out_t0):
    """rows() of F32/F16/BF16 (x already rounded to the weight's type); qtype: a constant."""
    literally(qtype)
    for t in range(t0, t1):
        for r in range(r0, r1):
            out[(t - out_t0) * ldo + col0 + r] = _float_dot(qtype, W, w_off + r * row_bytes, K, x, t * K)


@njit(cache=True, _nrt=False)
def float_dequant(qtype, W, row, K, out, oo):
    """dequant() of F32/F16/BF16; qtype: a constant."""
    literally(qtype)
    width = 4 if qtype == F32 else 2
    n16 = K - K % 16
    for i in range(0, n16, 16):
        store(out, oo + i, _load_weights(qtype, W, row + width * i))
    for i in range(n16, K):
        out[oo + i] = _load_weight(qtype, W, row + width * i)


# --- the kernels of every type, and their C entry points -----------------------------------------


def kernels(qtype: int):
    """(rows, dequant) of a ggml type id, as Python-callable Numba kernels."""
    qtype = int(qtype)
    if qtype in FLOAT_TYPES:
        return partial(float_rows, qtype), partial(float_dequant, qtype)
    return _python_rows(qtype), partial(quant_dequant, qtype)


@lru_cache(maxsize=None)
def _python_rows(qtype: int):
    from . import versioned_cache

    kind = panel_kind(qtype)  # closures over ints only: Numba keys a cached closure on its (pickled) cell values
    # decorated in this version's cache folder (after the package import chose it, as in _c_entry):
    # Numba checks only matmul.py's time stamp, and this kernel inlines gemm.py and blocks.py too
    with versioned_cache():
        @njit(cache=True, _nrt=False)
        def rows(W, w_off, row_bytes, K, r0, r1, t0, t1, x, q, d, s16, s32, out, ldo, col0, out_t0):
            _quant_rows(qtype, kind, W, w_off, row_bytes, K, r0, r1, t0, t1, x, q, d, s16, s32, out, ldo, col0, out_t0)

    return rows


# argument kinds of the two kernel signatures (arrays by dtype), for their C entry points
ROWS_ARGS = (np.uint8, int, int, int, int, int, int, int, np.float32, np.int8, np.float32, np.float32, np.float32, np.float32,
             int, int, int)
DEQUANT_ARGS = (np.uint8, int, int, np.float32, int)
PACK_ARGS = (np.uint8, int, int, int, int, int, int, np.uint32)
PACKED_ARGS = (np.uint32, int, int, int, int, int, int, np.int8, np.float32, np.float32, np.float32, np.float32, int, int,
               int)


def _c_rows(qtype: int):
    # closures over an int only: Numba keys a cached closure on its (pickled) cell values
    if qtype in FLOAT_TYPES:

        @cfunc(c_signature(ROWS_ARGS), cache=True)
        def entry(W, nW, w_off, row_bytes, K, r0, r1, t0, t1, x, nx, q, nq, d, nd, s16, n16, s32, n32, out, nout, ldo,
                  col0, out_t0):
            float_rows(qtype, carray(W, nW), w_off, row_bytes, K, r0, r1, t0, t1, carray(x, nx), carray(q, nq),
                       carray(d, nd), carray(s16, n16), carray(s32, n32), carray(out, nout), ldo, col0, out_t0)

        return entry

    kind = panel_kind(qtype)

    @cfunc(c_signature(ROWS_ARGS), cache=True)
    def entry(W, nW, w_off, row_bytes, K, r0, r1, t0, t1, x, nx, q, nq, d, nd, s16, n16, s32, n32, out, nout, ldo,
              col0, out_t0):
        _quant_rows(qtype, kind, carray(W, nW), w_off, row_bytes, K, r0, r1, t0, t1, carray(x, nx), carray(q, nq),
                   carray(d, nd), carray(s16, n16), carray(s32, n32), carray(out, nout), ldo, col0, out_t0)

    return entry


def _c_dequant(qtype: int):
    if qtype in FLOAT_TYPES:

        @cfunc(c_signature(DEQUANT_ARGS), cache=True)
        def entry(W, nW, row, K, out, nout, oo):
            float_dequant(qtype, carray(W, nW), row, K, carray(out, nout), oo)

        return entry

    @cfunc(c_signature(DEQUANT_ARGS), cache=True)
    def entry(W, nW, row, K, out, nout, oo):
        quant_dequant(qtype, carray(W, nW), row, K, carray(out, nout), oo)

    return entry


def _c_packed_rows(product, kind: int):
    """The C entry point of product (gemm.packed_rows, or gemm.amx_packed_rows: a separate entry,
    not a branch in one, since an entry with tile instructions does not compile for a CPU
    without them) for panels of this kind."""

    @cfunc(c_signature(PACKED_ARGS), cache=True)
    def entry(P, nP, base, K, r0, r1, t0, t1, q, nq, d, nd, s16, n16, s32, n32, out, nout, ldo, col0, out_t0):
        product(kind, carray(P, nP), base, K, r0, r1, t0, t1, carray(q, nq), carray(d, nd), carray(s16, n16),
                carray(s32, n32), carray(out, nout), ldo, col0, out_t0)

    return entry


def _c_pack(qtype: int):
    kind = panel_kind(qtype)

    @cfunc(c_signature(PACK_ARGS), cache=True)
    def entry(W, nW, w_off, row_bytes, K, n_rows, p0, p1, out, nout):
        pack_panels(qtype, kind, carray(W, nW), w_off, row_bytes, K, n_rows, p0, p1, carray(out, nout))

    return entry


_PACKAGE_DIR = Path(__file__).resolve().parent


_compiled: dict = {}


def _c_entry(key: str, build) -> int:
    """Address of the C entry point build() compiles, saved under key. Loading a kernel
    through Numba's cache costs a quarter of a second, most of a warm start, so its machine
    code is also saved the first time it compiles and later loads without Numba or LLVM (a
    few milliseconds; see quants.native and elf_loader). Numba's cache serves where that
    cannot be done."""
    from ..quants import native

    addresses = native.cached_addresses(_PACKAGE_DIR, [key])
    if addresses is not None:
        return addresses[0]
    from . import versioned_cache

    with versioned_cache():  # built on first use, after the package import chose the cache
        entry = build()
    native.save_cfunc(_PACKAGE_DIR, key, entry)
    _compiled[key] = entry  # the code behind the address lives as long as this
    return entry.address


@lru_cache(maxsize=None)
def _c_kernels(qtype: int) -> tuple[int, int]:
    """Addresses of a type's rows and dequant entry points (see _c_entry)."""
    return _c_entry(f"rows_{qtype}", partial(_c_rows, qtype)), _c_entry(f"dequant_{qtype}", partial(_c_dequant, qtype))


def kernel_tables(qtypes) -> tuple[np.ndarray, np.ndarray]:
    """C entry points of the rows and dequant kernels of the given types, indexed by type id
    (0 for the others). Compiles the kernels that are not in the cache yet."""
    rows = np.zeros(max(SUPPORTED) + 1, np.int64)
    dequant = np.zeros_like(rows)
    for t in sorted({int(t) for t in qtypes}):
        rows[t], dequant[t] = _c_kernels(t)
    return rows, dequant


@lru_cache(maxsize=None)
def packer_address(qtype: int) -> int:
    """C entry point of gemm.pack_panels for a type: (W, w_off, row_bytes, K, n_rows, p0, p1, out)."""
    return _c_entry(f"pack_{qtype}", partial(_c_pack, qtype))


@lru_cache(maxsize=None)
def _c_packed(kind: int, amx: bool = False) -> int:
    """C entry point of the product of panels packed at load as a gemm.packed_kind (by AMX
    tiles where amx and the kind allows: gemm.packed_entry)."""
    tiles = amx and amx_kind(kind)
    return _c_entry(packed_entry(kind, tiles), partial(_c_packed_rows, amx_packed_rows if tiles else packed_rows, kind))


def packed_table(kinds) -> np.ndarray:
    """C entry points of the products of panels packed at load (gemm.packed_rows) of the
    given kinds, indexed by kind (0 for the others)."""
    table = np.zeros(N_PACKED_KINDS, np.int64)
    amx = host.amx_int8()
    for kind in sorted({int(k) for k in kinds}):
        table[kind] = _c_packed(kind, amx)
    return table


@njit(cache=True, _nrt=False)
def call_rows(table, qtype, W, w_off, row_bytes, K, r0, r1, t0, t1, x, a, out, ldo, col0, out_t0):
    """rows() of type qtype through its C entry point in table (see kernel_tables), with the
    activation slot a."""
    call_c(table[qtype], (W, w_off, row_bytes, K, r0, r1, t0, t1, x, a.q, a.d, a.s16, a.s32, out, ldo, col0, out_t0))


@njit(cache=True, _nrt=False)
def call_dequant(table, qtype, W, row, K, out, oo):
    """dequant() of type qtype through its C entry point in table (see kernel_tables)."""
    call_c(table[qtype], (W, row, K, out, oo))

