"""Reading ggml's quantized blocks in place: every type as 32-weight chunks.

Every quantized row, whatever its type, is a sequence of 32-weight chunks, and each chunk
decodes to the same five things:

    w        Vector(uint8, 32)  the weights as unsigned integers q
    s0, s1   float32            scale of weights 0-15 and 16-31
    m0, m1   float32            offset of weights 0-15 and 16-31

so that weight i = s * q_i + m. A dot product with an 8-bit activation x = dx * qx then is
`s * dx * sum(q * qx) + m * dx * sum(qx)`: unsigned-by-signed byte products (vpdpbusd)
plus the per-16 sums of qx that activation quantization provides (ggml's Q8_1 `s` / Q8_K
`bsums`). Signed formats are shifted to unsigned and the shift goes into the offset (Q8_0:
q + 128, offset -128 d), as ggml does for Q6_K's -32. This is the arithmetic of ggml's
vec_dot kernels, factored so that one dot loop serves all types (kernels/matmul.py).
Layouts follow ggml-common.h (block_q4_0 ...).

Each type has its own decoder function (`q4_0_chunk`, ...) reading chunk j of a group of 8
chunks (a K-quant super-block, or 8 blocks of a 32-weight type); the 4-bit legacy types also
decode two chunks at once (`q4_1_pair`). The loops in matmul.py call
`decode_pair_in_group(qtype, ...)` with the type id as a compile-time constant; Numba
resolves it to the one decoder while typing, so each type gets its own straight-line loop
and compiling one type does not compile the others.

The K-quants also decode a whole 256-weight super-block at once (`q6_k_superblock`, ...):
the dot product against a Q8_K activation, whose scale is one per super-block, then
needs no per-chunk scalars at all. The packed sub-block scales are unpacked once and
spread over each chunk pair's dot lanes by one constant shuffle, as floats
(`decode_superblock`) or, for Q4_K, Q5_K and Q6_K, as integers that scale the byte products
before they leave int32 (`decode_superblock_int`, scaled_dot4); the offsets become one vector
of coefficients for the activation's per-16 or per-32 sums.
"""

from __future__ import annotations

import numpy as np

from llamatool.jit import njit

from .actquant import paired_start
from .lanes import as_u8_lanes, as_u64_lanes, repeat_slice
from .simd import (bit_mask, concat, dot4_u7i8, dot4_u8i8, even_lanes, extract, f16_bits_to_f32, f16_lanes, f16_pairs2, gather, get,
                   load, low_half, high_half, odd_lanes, zip16, load_f16, load_f16_pair, interleave, load_u16, load_u32, load_u64,
                   lookup16, pick_pair, pick_pair2, reinterpret, shift_bits, splat, split_nibbles, to_f32, to_i8, to_i16, to_i32, to_u64, where_bits)
from .types import IQ1_M, IQ1_S, IQ2_S, IQ2_XS, IQ2_XXS, IQ3_S, IQ3_XXS, IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, TQ1_0, TQ2_0

from llamatool.quants.grids import IQ1_S_LEVELS, IQ2_S_GRID, IQ2_XS_GRID, IQ2_XXS_GRID, IQ3_S_GRID, IQ3_XXS_GRID  # noqa: E402

from numba import float32, int32, int64, uint8, uint16, uint32, uint64  # noqa: E402  (numba is already imported by .simd)
from numba.core import errors, types  # noqa: E402
from numba.extending import overload  # noqa: E402

#: IQ4_NL / IQ4_XS non-linear 4-bit codebook (kvalues_iq4nl in ggml-common.h), shifted by
#: +128 to unsigned bytes (the -128 goes into the chunk offset)
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
IQ4_VALUES_U8 = (IQ4_VALUES.astype(np.int16) + 128).astype(np.uint8)


@njit(cache=True, _nrt=False, forceinline=True)
def _b(W, i):
    """Byte i of W as int64 (Numba would mix uint8 and int64 arithmetic into float64)."""
    return int64(get(W, i))  # get: no negative-index wraparound (a compare and select per byte)


@njit(cache=True, _nrt=False, forceinline=True)
def _i8(v):
    """A byte value 0..255 read as int8."""
    return v - 256 if v > 127 else v


@njit(cache=True, _nrt=False, forceinline=True)
def _nibbles(W, o):
    """16 bytes at o -> 32 uint8: low nibbles (weights 0-15) then high nibbles (16-31)."""
    q = load(W, o, 16)
    return concat(q & uint8(15), q >> uint8(4))


@njit(cache=True, _nrt=False, forceinline=True)
def _high_bits(qh, shift):
    """Bit 4 of weight i (i < 32) from bit (shift + i) of the 32-bit word qh, as 0 or 16."""
    return bit_mask(qh, 32, shift) << uint8(4)


@njit(cache=True, _nrt=False, forceinline=True)
def _k4_scale_min(W, o, j):
    """Q4_K/Q5_K: 6-bit scale and min of sub-block j from the 12 packed bytes at o."""
    if j < 4:
        sc = _b(W, o + j) & 63
        mn = _b(W, o + j + 4) & 63
    else:
        sc = (_b(W, o + j + 4) & 0xF) | ((_b(W, o + j - 4) >> 6) << 4)
        mn = (_b(W, o + j + 4) >> 4) | ((_b(W, o + j) >> 6) << 4)
    return float32(sc), float32(mn)


@njit(cache=True, _nrt=False, forceinline=True)
def _q3k_scale(W, o, k):
    """Q3_K: signed 6-bit scale k (0..15) from the 12 packed bytes at o."""
    low = _b(W, o + k) & 0xF if k < 8 else _b(W, o + k - 8) >> 4
    high = (_b(W, o + 8 + k % 4) >> (2 * (k // 4))) & 3
    return float32(int32(low | (high << 4)) - 32)


# --- one decoder per type: chunk j (0..7) of the group of 8 chunks at byte offset bo ---------
# A group is one K-quant super-block, or eight blocks of a 32-weight type. Each decoder
# returns (w, s0, s1, m0, m1) (see the module docstring). They are small and forced inline:
# the loops in matmul.py unroll a group's four chunk pairs, so j is a constant there and
# the K-quants' scale unpacking (which bytes, which shifts) is decided at compile time.


@njit(cache=True, _nrt=False, forceinline=True)
def q4_0_chunk(W, bo, j):
    o = bo + j * 18
    d = load_f16(W, o, 1)
    m = float32(-8) * d
    return _nibbles(W, o + 2), d, d, m, m


@njit(cache=True, _nrt=False, forceinline=True)
def q4_1_chunk(W, bo, j):
    o = bo + j * 20
    d = load_f16(W, o, 1)
    m = load_f16(W, o + 2, 1)
    return _nibbles(W, o + 4), d, d, m, m


@njit(cache=True, _nrt=False, forceinline=True)
def q5_0_chunk(W, bo, j):
    o = bo + j * 22
    d = load_f16(W, o, 1)
    m = float32(-16) * d
    q = _nibbles(W, o + 6) | _high_bits(load_u32(W, o + 2, 1), 0)
    return q, d, d, m, m


@njit(cache=True, _nrt=False, forceinline=True)
def q5_1_chunk(W, bo, j):
    o = bo + j * 24
    d = load_f16(W, o, 1)
    m = load_f16(W, o + 2, 1)
    q = _nibbles(W, o + 8) | _high_bits(load_u32(W, o + 4, 1), 0)
    return q, d, d, m, m


@njit(cache=True, _nrt=False, forceinline=True)
def q8_0_chunk(W, bo, j):
    o = bo + j * 34
    d = load_f16(W, o, 1)
    m = float32(-128) * d
    return load(W, o + 2, 32) ^ uint8(0x80), d, d, m, m  # int8 q + 128, as unsigned


@njit(cache=True, _nrt=False, forceinline=True)
def iq4_nl_chunk(W, bo, j):
    o = bo + j * 18
    d = load_f16(W, o, 1)
    m = float32(-128) * d
    return lookup16(load(IQ4_VALUES_U8, 0, 16), _nibbles(W, o + 2)), d, d, m, m


# Pairs of chunks (j, j+1) of the 4-bit types at once: both chunks' bytes shifted and masked
# in one 32-byte register, then interleaved into chunk order by one permute (per chunk that
# would be three lane inserts and two shifts).


@njit(cache=True, _nrt=False, forceinline=True)
def _nibble_pair(W, o0, o1):
    """16 bytes at o0 and 16 at o1 -> 64 uint8: nibbles of the first (low then high), then the second's."""
    q = concat(load(W, o0, 16), load(W, o1, 16))
    return zip16(q & uint8(15), q >> uint8(4))


@njit(cache=True, _nrt=False, forceinline=True)
def q4_0_pair(W, bo, j):
    o = bo + j * 18
    d0 = load_f16(W, o, 1)
    d1 = load_f16(W, o + 18, 1)
    m0 = float32(-8) * d0
    m1 = float32(-8) * d1
    return _nibble_pair(W, o + 2, o + 20), d0, d0, d1, d1, m0, m0, m1, m1


@njit(cache=True, _nrt=False, forceinline=True)
def q4_1_pair(W, bo, j):
    o = bo + j * 20
    d0 = load_f16(W, o, 1)
    m0 = load_f16(W, o + 2, 1)
    d1 = load_f16(W, o + 20, 1)
    m1 = load_f16(W, o + 22, 1)
    return _nibble_pair(W, o + 4, o + 24), d0, d0, d1, d1, m0, m0, m1, m1


# K-quants: a group is one 256-weight super-block


@njit(cache=True, _nrt=False, forceinline=True)
def q2_k_chunk(W, bo, j):
    o = bo
    d = load_f16(W, o + 80, 1)
    dmin = load_f16(W, o + 82, 1)
    q = (load(W, o + 16 + 32 * (j // 4), 32) >> uint8(2 * (j % 4))) & uint8(3)
    sc0 = _b(W, o + 2 * j)
    sc1 = _b(W, o + 2 * j + 1)
    return (
        q,
        d * float32(sc0 & 0xF),
        d * float32(sc1 & 0xF),
        -dmin * float32(sc0 >> 4),
        -dmin * float32(sc1 >> 4),
    )


@njit(cache=True, _nrt=False, forceinline=True)
def q3_k_chunk(W, bo, j):
    o = bo
    d = load_f16(W, o + 108, 1)
    low = (load(W, o + 32 + 32 * (j // 4), 32) >> uint8(2 * (j % 4))) & uint8(3)
    high = (load(W, o, 32) >> uint8(j)) & uint8(1)  # value = low - 4 unless the high bit is set
    s0 = d * _q3k_scale(W, o + 96, 2 * j)
    s1 = d * _q3k_scale(W, o + 96, 2 * j + 1)
    return low | (high << uint8(2)), s0, s1, float32(-4) * s0, float32(-4) * s1


@njit(cache=True, _nrt=False, forceinline=True)
def q4_k_chunk(W, bo, j):
    o = bo
    d = load_f16(W, o, 1)
    dmin = load_f16(W, o + 2, 1)
    sc, mn = _k4_scale_min(W, o + 4, j)
    q = (load(W, o + 16 + 32 * (j // 2), 32) >> uint8(4 * (j % 2))) & uint8(15)
    return q, d * sc, d * sc, -dmin * mn, -dmin * mn


@njit(cache=True, _nrt=False, forceinline=True)
def q5_k_chunk(W, bo, j):
    o = bo
    d = load_f16(W, o, 1)
    dmin = load_f16(W, o + 2, 1)
    sc, mn = _k4_scale_min(W, o + 4, j)
    q = (load(W, o + 48 + 32 * (j // 2), 32) >> uint8(4 * (j % 2))) & uint8(15)
    q = q | (((load(W, o + 16, 32) >> uint8(j)) & uint8(1)) << uint8(4))
    return q, d * sc, d * sc, -dmin * mn, -dmin * mn


@njit(cache=True, _nrt=False, forceinline=True)
def q6_k_chunk(W, bo, j):
    o = bo
    d = load_f16(W, o + 208, 1)
    half, g = j // 4, j % 4
    ql = (load(W, o + 64 * half + 32 * (g % 2), 32) >> uint8(4 * (g // 2))) & uint8(15)
    qh = (load(W, o + 128 + 32 * half, 32) >> uint8(2 * g)) & uint8(3)
    s0 = d * float32(_i8(_b(W, o + 192 + 2 * j)))
    s1 = d * float32(_i8(_b(W, o + 192 + 2 * j + 1)))
    return ql | (qh << uint8(4)), s0, s1, float32(-32) * s0, float32(-32) * s1  # q6 - 32


@njit(cache=True, _nrt=False, forceinline=True)
def iq4_xs_chunk(W, bo, j):
    o = bo
    d = load_f16(W, o, 1)
    ls = ((_b(W, o + 4 + j // 2) >> (4 * (j % 2))) & 0xF) | (((int64(load_u16(W, o + 2, 1)) >> (2 * j)) & 3) << 4)
    dl = d * float32(int32(ls) - 32)
    m = float32(-128) * dl
    return lookup16(load(IQ4_VALUES_U8, 0, 16), _nibbles(W, o + 8 + 16 * j)), dl, dl, m, m


# --- whole super-blocks of the K-quants --------------------------------------------------------
# Each returns (w0, w1, w2, w3, l0, l1, l2, l3, m) for the super-block at bo:
#   w_p   uint8 x 64   the weights q of chunk pair p (chunks 2p, 2p+1), as for decode_pair_in_group;
#                      IQ4_XS (PAIRED_ACTIVATION): chunks (0, 2), (1, 3), (4, 6), (5, 7)
#   l_p   float32 x 16 the scale of each dot lane of that pair (lane i covers weights 4i..4i+3)
#                      times dx, the activation's scale (one per super-block for Q8_K)
#   m     float32 x 16 the offset of each 16 weights, to multiply by the activation's s16 sums
# so the super-block's dot product is sum_p to_f32(dot(w_p, x_p)) * l_p + sum(m * s16).
#
# Q4_K, Q5_K and Q6_K, whose sub-block scales are small integers, keep them integers instead
# (INT_SCALE_DECODERS), as ggml's vec_dot does: (w0, w1, w2, w3, k0, k1, k2, k3, d, m) with
#   w_p   uint8 x 64   Q6_K: chunks 2p, 2p+1 as above; Q4_K, Q5_K (PAIRED_ACTIVATION): the low
#                      and high nibbles of one 64-byte load, chunks (0, 2), (1, 3), (4, 6),
#                      (5, 7), to meet the activation's paired copy (actquant.py)
#   k_p   int16 x 32   the scale of each byte pair of w_p (scaled_dot4's lanes)
#   d     float32      the super-block's scale
#   m     float32 x 8  Q4_K/Q5_K: -dmin * min of each 32 weights, for the activation's s32 sums;
#         float32 x 16 Q6_K: the offset of each 16 weights, for its s16 sums
# so the whole super-block sums exactly in int32 (scaled_dot4 of the four pairs) and meets
# d * dx once: per 256 weights one conversion and one FMA instead of four of each, and no
# float scale vectors to build.


@njit(cache=True, _nrt=False, forceinline=True)
def _both_halves(W, o):
    """The 32 bytes at o in both halves of a uint8 x 64 (one broadcast load): the high bits of
    Q5_K and Q6_K, which shift_bits moves by one amount in the first half, another in the last."""
    q = load(W, o, 32)
    return concat(q, q)


@njit(cache=True, _nrt=False, forceinline=True)
def _twice(W, o, shift):
    """The 32 bytes at o, then the same 32 bytes shifted right by `shift` bits, in one broadcast
    load and one 64-bit shift (no lane-crossing insert). The top `shift` bits of each byte
    of the second half are the next byte's low bits: callers mask them off."""
    amounts = concat(splat(uint64(0), 4), splat(uint64(shift), 4))
    return as_u8_lanes(as_u64_lanes(_both_halves(W, o)) >> amounts)


@njit(cache=True, _nrt=False, forceinline=True)
def _k4_scale_min_words(W, o):
    """Q4_K/Q5_K: the 8 scales and 8 mins packed in the 12 bytes at o (ggml's get_scale_min_k4),
    as two uint64 of 8 bytes each, by scalar operations (off the vector units): sub-blocks 0-3
    keep their scale and min in the low 6 bits of bytes 0-3 and 4-7; sub-blocks 4-7 their low
    4 bits in the nibbles of bytes 8-11 (scale low, min high), their top 2 bits in the top
    bits of bytes 0-3 (scales) and 4-7 (mins)."""
    first = load_u64(W, o, 1)
    last = uint64(load_u32(W, o + 8, 1))
    low6 = first & uint64(0x3F3F3F3F3F3F3F3F)  # scales 0-3, mins 0-3
    top2 = (first >> uint64(6)) & uint64(0x0303030303030303)  # bits 4-5 of scales 4-7, mins 4-7
    nibbles = (last & uint64(0x0F0F0F0F)) | (((last >> uint64(4)) & uint64(0x0F0F0F0F)) << uint64(32))
    high = nibbles | (top2 << uint64(4))  # scales 4-7, mins 4-7
    return (low6 & uint64(0xFFFFFFFF)) | (high << uint64(32)), (low6 >> uint64(32)) | (high & uint64(0xFFFFFFFF00000000))


@njit(cache=True, _nrt=False, forceinline=True)
def _bytes8(word):
    """The 8 bytes of a uint64 as uint8 lanes."""
    return as_u8_lanes(splat(word, 1))


@njit(cache=True, _nrt=False, forceinline=True)
def _paired_order(word):
    """The bytes b0..b7 of a uint64 as b0 b2 b1 b3 b4 b6 b5 b7 (bytes 1, 2 and 5, 6 swapped)."""
    t = ((word >> uint64(8)) ^ word) & uint64(0x0000FF000000FF00)
    return word ^ t ^ (t << uint64(8))


@njit(cache=True, _nrt=False, forceinline=True)
def _k4_int_scales(W, bo):
    """Q4_K/Q5_K: (k0, k1, k2, k3, d, m) of the super-block at bo (see above): the scales in the
    paired order, the mins in the natural one (they meet the activation's s32 sums)."""
    scales, mins = _k4_scale_min_words(W, bo + 4)
    k = to_i16(_bytes8(_paired_order(scales)))
    m = to_f32(to_i32(_bytes8(mins))) * -load_f16(W, bo + 2, 1)
    return (repeat_slice(k, 0, 2, 16), repeat_slice(k, 2, 2, 16), repeat_slice(k, 4, 2, 16), repeat_slice(k, 6, 2, 16),
            load_f16(W, bo, 1), m)


@njit(cache=True, _nrt=False, forceinline=True)
def _nibble_pairs(W, o):
    """The 64 bytes at o (Q4_K/Q5_K chunks 0-3 or 4-7) as their low nibbles (chunks 0, 2) and
    their high ones (1, 3): one load, one mask, one shift with mask."""
    b = load(W, o, 64)
    return b & uint8(15), b >> uint8(4)


@njit(cache=True, _nrt=False, forceinline=True)
def q4_k_superblock(W, bo):
    k0, k1, k2, k3, d, m = _k4_int_scales(W, bo)
    w0, w1 = _nibble_pairs(W, bo + 16)
    w2, w3 = _nibble_pairs(W, bo + 80)
    return w0, w1, w2, w3, k0, k1, k2, k3, d, m


@njit(cache=True, _nrt=False, forceinline=True)
def q5_k_superblock(W, bo):
    k0, k1, k2, k3, d, m = _k4_int_scales(W, bo)
    # chunk j's fifth bit is bit j of qh; pair p holds chunks p / 2 * 4 + p % 2 (first 32
    # lanes) and that + 2 (last 32), so its bits come from bits 0 / 2, 1 / 3, 4 / 6 and 5 / 7
    qh = _both_halves(W, bo + 16)
    w0, w1 = _nibble_pairs(W, bo + 48)
    w2, w3 = _nibble_pairs(W, bo + 112)
    return (w0 | shift_bits(qh, 4, 2, 16), w1 | shift_bits(qh, 3, 1, 16), w2 | shift_bits(qh, 0, -2, 16),
            w3 | shift_bits(qh, -1, -3, 16), k0, k1, k2, k3, d, m)


@njit(cache=True, _nrt=False, forceinline=True)
def _q6_k_half(W, bo, h):
    """Q6_K: chunk pairs 2h and 2h+1, the 128 weights of half h of the super-block. Their low
    4 bits are the 64 bytes ql[64h:] (low nibbles, then high); their top 2 bits come from the
    32 bytes qh[32h:], bits 0-1 / 2-3 for the first pair and 4-5 / 6-7 for the second."""
    ql = load(W, bo + 64 * h, 64)
    qh = _both_halves(W, bo + 128 + 32 * h)
    w_a = (ql & uint8(15)) | shift_bits(qh, 4, 2, 48)
    w_b = (ql >> uint8(4)) | shift_bits(qh, 0, -2, 48)
    return w_a, w_b


@njit(cache=True, _nrt=False, forceinline=True)
def _per16_lanes(l):
    """Scales of the 16 sub-blocks of 16 weights as the dot lanes of the four chunk pairs."""
    return repeat_slice(l, 0, 4, 4), repeat_slice(l, 4, 4, 4), repeat_slice(l, 8, 4, 4), repeat_slice(l, 12, 4, 4)


@njit(cache=True, _nrt=False, forceinline=True)
def q6_k_superblock(W, bo):
    d = load_f16(W, bo + 208, 1)
    sc = to_i8(load(W, bo + 192, 16))  # 16 signed 8-bit scales, one per 16 weights
    k = to_i16(sc)
    w0, w1 = _q6_k_half(W, bo, 0)
    w2, w3 = _q6_k_half(W, bo, 1)
    return (w0, w1, w2, w3, repeat_slice(k, 0, 4, 8), repeat_slice(k, 4, 4, 8), repeat_slice(k, 8, 4, 8),
            repeat_slice(k, 12, 4, 8), d, to_f32(to_i32(sc)) * (d * float32(-32)))  # q6 - 32


@njit(cache=True, _nrt=False, forceinline=True)
def _crumbs(W, o):
    """Q2_K/Q3_K: the 2-bit fields of the 32 bytes at o as two chunk pairs: bits 0-1 then 2-3,
    and bits 4-5 then 6-7 (64 uint8 each)."""
    b = _twice(W, o, 2)
    return b & uint8(3), (b >> uint8(4)) & uint8(3)


@njit(cache=True, _nrt=False, forceinline=True)
def q2_k_superblock(W, bo, dx):
    d = load_f16(W, bo + 80, 1)
    dmin = load_f16(W, bo + 82, 1)
    b = load(W, bo, 16)  # per 16 weights: the scale in the low nibble, the min in the high one
    l0, l1, l2, l3 = _per16_lanes(to_f32(to_i32(b & uint8(15))) * (d * dx))
    w0, w1 = _crumbs(W, bo + 16)
    w2, w3 = _crumbs(W, bo + 48)
    return w0, w1, w2, w3, l0, l1, l2, l3, to_f32(to_i32(b >> uint8(4))) * -dmin


def _q3k_table(fn):
    return np.array([fn(k) for k in range(16)], np.int32)


# Q3_K packs sixteen signed 6-bit scales in 12 bytes: the low 4 bits of scale k in the low
# (k < 8) or high nibble of byte k % 8, the top 2 bits in bits 2(k // 4) of byte 8 + k % 4.
# The 16 bytes read end at the 12 bytes' end (offset -4: the block has only 2 bytes after them).
Q3K_LOW_BYTE = _q3k_table(lambda k: 4 + k % 8).astype(np.uint8)
Q3K_LOW_SHIFT = _q3k_table(lambda k: 0 if k < 8 else 4)
Q3K_HIGH_BYTE = _q3k_table(lambda k: 4 + 8 + k % 4).astype(np.uint8)
Q3K_HIGH_SHIFT = _q3k_table(lambda k: 2 * (k // 4))


@njit(cache=True, _nrt=False, forceinline=True)
def _q3k_scales(W, o):
    """Q3_K: the 16 scales packed in the 12 bytes at o, as int32 (-32..31)."""
    b = load(W, o - 4, 16)
    low = to_i32(lookup16(b, load(Q3K_LOW_BYTE, 0, 16)))
    high = to_i32(lookup16(b, load(Q3K_HIGH_BYTE, 0, 16)))
    low = (low >> load(Q3K_LOW_SHIFT, 0, 16)) & 15
    return (low | (((high >> load(Q3K_HIGH_SHIFT, 0, 16)) & 3) << 4)) - 32


@njit(cache=True, _nrt=False, forceinline=True)
def q3_k_superblock(W, bo, dx):
    d = load_f16(W, bo + 108, 1)
    sc = to_f32(_q3k_scales(W, bo + 96)) * d
    l0, l1, l2, l3 = _per16_lanes(sc * dx)
    hm = _twice(W, bo, 1)  # chunk j's third bit is bit j of hmask: pair p's are bit 2p of these
    w0, w1 = _crumbs(W, bo + 32)
    w2, w3 = _crumbs(W, bo + 64)
    w0 = w0 | ((hm << uint8(2)) & uint8(4))
    w1 = w1 | (hm & uint8(4))
    w2 = w2 | ((hm >> uint8(2)) & uint8(4))
    w3 = w3 | ((hm >> uint8(4)) & uint8(4))
    return w0, w1, w2, w3, l0, l1, l2, l3, sc * float32(-4)  # value = q - 4


# IQ4_XS: the 6-bit scale of sub-block j has its low 4 bits in nibble j % 2 of byte 4 + j // 2
# and its top 2 bits in bits 2j of the little-endian 16-bit word at byte 2.
@njit(cache=True, _nrt=False, forceinline=True)
def _xs_scale_bytes(W, bo):
    """IQ4_XS: the 8 scales of the super-block at bo as the bytes of a uint64, in the order
    0, 2, 4, 6, 1, 3, 5, 7 (the even sub-blocks' bits sit together in both fields), by scalar
    operations (off the vector units)."""
    word = load_u64(W, bo, 1)
    low = word >> uint64(32)
    high = (word >> uint64(16)) & uint64(0xFFFF)
    low = (low & uint64(0x0F0F0F0F)) | (((low >> uint64(4)) & uint64(0x0F0F0F0F)) << uint64(32))
    # top bits of the even sub-blocks are nibbles 0-3 of high & 0x3333, of the odd ones of high >> 2:
    # each nibble to a byte of its own, both halves at once
    top = (high & uint64(0x3333)) | (((high >> uint64(2)) & uint64(0x3333)) << uint64(32))
    top = (top | (top << uint64(8))) & uint64(0x00FF00FF00FF00FF)
    top = (top | (top << uint64(4))) & uint64(0x0F0F0F0F0F0F0F0F)
    return low | (top << uint64(4))


@njit(cache=True, _nrt=False, forceinline=True)
def iq4_xs_superblock(W, bo, dx):
    """IQ4_XS in the paired activation's order (PAIRED_ACTIVATION): chunk j is the nibbles of
    the 16 bytes at 16j, its first 16 weights low and its last 16 high, so the bytes of
    chunks 0 and 2, each twice (one permute of a 64-byte load), split into nibbles give those
    two chunks whole, as the paired copy holds them; likewise 1 and 3, 4 and 6, 5 and 7. The
    scales follow: lanes 0-7 of w0's products are chunk 0's, lanes 8-15 chunk 2's."""
    dl = to_f32(to_i32(_bytes8(_xs_scale_bytes(W, bo))) - 32) * load_f16(W, bo, 1)  # sub-blocks 0, 2, 4, 6, 1, ..
    sc = dl * dx
    table = load(IQ4_VALUES_U8, 0, 16)
    a = load(W, bo + 8, 64)
    b = load(W, bo + 72, 64)
    in_order = interleave(low_half(dl), high_half(dl))
    return (lookup16(table, split_nibbles(pick_pair(a, 0, 32))), lookup16(table, split_nibbles(pick_pair(a, 16, 48))),
            lookup16(table, split_nibbles(pick_pair(b, 0, 32))), lookup16(table, split_nibbles(pick_pair(b, 16, 48))),
            repeat_slice(sc, 0, 2, 8), repeat_slice(sc, 4, 2, 8), repeat_slice(sc, 2, 2, 8), repeat_slice(sc, 6, 2, 8),
            repeat_slice(in_order * float32(-128), 0, 8, 2))  # codebook + 128


# --- the ternary types: weights d * (q - 1), q in 0..2 -------------------------------------------
# TQ2_0 (66 bytes: qs[64], d) packs q as Q2_K packs its levels; TQ1_0 (54 bytes: qs[48], qh[4],
# d) as base-3 digits: digit n of byte b is ((b * 3**n) mod 256) * 3 >> 8 (see quants/ternary.py).

TQ1_POW3 = np.array([1, 3, 9, 27, 81], np.uint8)
#: chunk 7's second half, weights 240 + 4n + j: byte j of qh (at 10 + j of the 16 bytes read
#: from bo + 38, which end with the block's d) times 3**n
TQ1_QH_INDEX = np.array([10, 11, 12, 13] * 4, np.uint8)
TQ1_QH_POW3 = np.array([1] * 4 + [3] * 4 + [9] * 4 + [27] * 4, np.uint8)


@njit(cache=True, _nrt=False, forceinline=True)
def tq2_0_chunk(W, bo, j):
    d = load_f16(W, bo + 64, 1)
    q = (load(W, bo + 32 * (j // 4), 32) >> uint8(2 * (j % 4))) & uint8(3)
    return q, d, d, -d, -d


@njit(cache=True, _nrt=False, forceinline=True)
def tq2_0_superblock(W, bo, dx):
    d = load_f16(W, bo + 64, 1)
    w0, w1 = _crumbs(W, bo)
    w2, w3 = _crumbs(W, bo + 32)
    sc = splat(d * dx, 16)
    return w0, w1, w2, w3, sc, sc, sc, sc, splat(-d, 16)


@njit(cache=True, _nrt=False, forceinline=True)
def _base3_digit(q):
    """Each byte q (already times 3**n, mod 256) -> q * 3 >> 8, in 16-bit lanes."""
    w = reinterpret(q, np.uint16)
    low = ((w & uint16(0xFF)) * uint16(3)) >> uint16(8)
    high = ((w >> uint16(8)) * uint16(3)) & uint16(0xFF00)
    return reinterpret(low | high, np.uint8)


@njit(cache=True, _nrt=False, forceinline=True)
def _tq1_chunk_bytes(W, bo, j):
    """Chunk j's 32 bytes, each times the power of 3 whose digit is the chunk's weight."""
    if j < 5:
        return load(W, bo, 32) * splat(get(TQ1_POW3, j), 32)
    x = load(W, bo + 32, 16)
    if j == 5:
        return concat(x, x * splat(uint8(3), 16))
    if j == 6:
        return concat(x * splat(uint8(9), 16), x * splat(uint8(27), 16))
    qh = lookup16(load(W, bo + 38, 16), load(TQ1_QH_INDEX, 0, 16)) * load(TQ1_QH_POW3, 0, 16)
    return concat(x * splat(uint8(81), 16), qh)


@njit(cache=True, _nrt=False, forceinline=True)
def tq1_0_chunk(W, bo, j):
    d = load_f16(W, bo + 52, 1)
    return _base3_digit(_tq1_chunk_bytes(W, bo, j)), d, d, -d, -d


@njit(cache=True, _nrt=False, forceinline=True)
def tq1_0_superblock(W, bo, dx):
    d = load_f16(W, bo + 52, 1)
    w0 = _base3_digit(concat(_tq1_chunk_bytes(W, bo, 0), _tq1_chunk_bytes(W, bo, 1)))
    w1 = _base3_digit(concat(_tq1_chunk_bytes(W, bo, 2), _tq1_chunk_bytes(W, bo, 3)))
    w2 = _base3_digit(concat(_tq1_chunk_bytes(W, bo, 4), _tq1_chunk_bytes(W, bo, 5)))
    w3 = _base3_digit(concat(_tq1_chunk_bytes(W, bo, 6), _tq1_chunk_bytes(W, bo, 7)))
    sc = splat(d * dx, 16)
    return w0, w1, w2, w3, sc, sc, sc, sc, splat(-d, 16)


# --- the grid types: 8 weights = a grid point's magnitudes, with signs ---------------------------
# simd.gather does not check bounds; it need not: every index is built from as many block bits
# as its table has points (a byte, plus 1-3 bits from qh, masked), so no block, however
# corrupt, reads outside its grid.
# IQ2_XXS (66 bytes: d, then per 32 weights 4 grid-index bytes and a u32 of four 7-bit sign
# indices and the 4-bit scale ls in bits 28-31): weight = d * (2 ls + 1) / 8 * magnitude * sign,
# magnitudes in {8, 25, 43}. As unsigned bytes: 128 +- magnitude, the -128 in the offset.

#: the grid's points one after another, 8 magnitudes each
IQ2_XXS_POINTS = np.ascontiguousarray(IQ2_XXS_GRID.reshape(-1))
#: the same, one 64-bit word per point (gather's elements)
IQ2_XXS_WORDS = IQ2_XXS_POINTS.view(np.uint64)


@njit(cache=True, _nrt=False, forceinline=True)
def _signed_u8(g, signs):
    """128 + g or 128 - g per byte of g, as bit i of the integer signs says (one masked
    subtract with AVX-512)."""
    return where_bits(signs, uint8(128) - g, uint8(128) + g)


@njit(cache=True, _nrt=False, forceinline=True)
def _iq2_xxs_scale_word(W, bo, j):
    return uint32(load_u32(W, bo + 6 + 8 * j, 1))


@njit(cache=True, _nrt=False, forceinline=True)
def _ksigns(x):
    """ggml's ksigns_iq2xs of each byte of x (uint32, scalar or vector; every byte a 7-bit index):
    the index with its parity as bit 7 (quants.grids.sign_table), computed, not looked up: the
    parity of a byte folded into its bit 0 by three shifts within the byte."""
    t = x ^ (x >> uint32(4))
    t = t ^ (t >> uint32(2))
    t = t ^ (t >> uint32(1))
    return x | ((t & uint32(0x01010101)) << uint32(7))


@njit(cache=True, _nrt=False, forceinline=True)
def _sign_bits(aux):
    """The 32 sign bits of four 7-bit ksigns indices at bits 0, 7, 14, 21 of aux (uint32, scalar
    or vector): the indices spread to one byte each, then their ksigns."""
    return _ksigns((aux & uint32(0x7F)) | ((aux << uint32(1)) & uint32(0x7F00)) | ((aux << uint32(2)) & uint32(0x7F0000))
                   | ((aux << uint32(3)) & uint32(0x7F000000)))


@njit(cache=True, _nrt=False, forceinline=True)
def _iq2_xxs_weights(W, bo, j, aux):
    o = bo + 2 + 8 * j
    g = concat(concat(load(IQ2_XXS_POINTS, 8 * _b(W, o), 8), load(IQ2_XXS_POINTS, 8 * _b(W, o + 1), 8)),
               concat(load(IQ2_XXS_POINTS, 8 * _b(W, o + 2), 8), load(IQ2_XXS_POINTS, 8 * _b(W, o + 3), 8)))
    return _signed_u8(g, _sign_bits(aux))


@njit(cache=True, _nrt=False, forceinline=True)
def _iq2_xxs_dl(W, bo, j, aux):
    return load_f16(W, bo, 1) * float32(2 * int32(aux >> 28) + 1) * float32(0.125)


@njit(cache=True, _nrt=False, forceinline=True)
def iq2_xxs_chunk(W, bo, j):
    aux = _iq2_xxs_scale_word(W, bo, j)
    dl = _iq2_xxs_dl(W, bo, j, aux)
    m = float32(-128) * dl
    return _iq2_xxs_weights(W, bo, j, aux), dl, dl, m, m


@njit(cache=True, _nrt=False, forceinline=True)
def _aux_scales(W, bo, aux, unit):
    """IQ2_XXS/IQ3_XXS: float32 x 8, the chunks' d * (2 ls + 1) * unit, ls the top 4 bits of
    each chunk's aux word (uint32 x 8), rounded as _iq2_xxs_dl / _iq3_xxs_dl round them."""
    return splat(load_f16(W, bo, 1), 8) * to_f32(reinterpret((aux >> uint32(28)) * uint32(2) + uint32(1), np.int32)) * unit


@njit(cache=True, _nrt=False, forceinline=True)
def _iq2_xxs_pair(indices, signs):
    """A chunk pair's weights from its 8 grid indices (uint8 x 8) and 64 sign bits: the
    points in one gather, signed."""
    return _signed_u8(reinterpret(gather(IQ2_XXS_WORDS, to_i32(indices)), np.uint8), signs)


@njit(cache=True, _nrt=False, forceinline=True)
def iq2_xxs_superblock(W, bo, dx):
    # the 64 bytes after d as 16 words: per chunk 4 grid indices, then its aux word
    words = reinterpret(load(W, bo + 2, 64), np.uint32)
    aux = odd_lanes(words)
    ix = reinterpret(even_lanes(words), np.uint8)
    signs = reinterpret(_sign_bits(aux), np.uint64)  # a chunk pair's 64 sign bits per lane
    dl = _aux_scales(W, bo, aux, float32(0.125))
    sc = dl * dx
    return (_iq2_xxs_pair(repeat_slice(ix, 0, 8, 1), extract(signs, 0)), _iq2_xxs_pair(repeat_slice(ix, 8, 8, 1), extract(signs, 1)),
            _iq2_xxs_pair(repeat_slice(ix, 16, 8, 1), extract(signs, 2)), _iq2_xxs_pair(repeat_slice(ix, 24, 8, 1), extract(signs, 3)),
            repeat_slice(sc, 0, 2, 8), repeat_slice(sc, 2, 2, 8), repeat_slice(sc, 4, 2, 8), repeat_slice(sc, 6, 2, 8),
            repeat_slice(dl * float32(-128), 0, 8, 2))


# IQ2_XS (74 bytes: d, qs u16[32], scales[8]): per 8 weights a u16 of a 9-bit grid index (512
# points, magnitudes as IQ2_XXS) and a 7-bit sign index; a 4-bit scale per 16 weights:
# weight = d * (2 ls + 1) / 8 * magnitude * sign.

IQ2_XS_POINTS = np.ascontiguousarray(IQ2_XS_GRID.reshape(-1))
#: the same, one 64-bit word per point (gather's elements)
IQ2_XS_WORDS = IQ2_XS_POINTS.view(np.uint64)


@njit(cache=True, _nrt=False, forceinline=True)
def _iq2_xs_group(W, o):
    """(8 magnitudes, 8 sign bits) of the u16 at o."""
    q = int64(load_u16(W, o, 1))
    return load(IQ2_XS_POINTS, 8 * (q & 511), 8), _ksigns(uint32(q >> 9))


@njit(cache=True, _nrt=False, forceinline=True)
def _iq2_xs_weights(W, bo, j):
    o = bo + 2 + 8 * j
    g0, s0 = _iq2_xs_group(W, o)
    g1, s1 = _iq2_xs_group(W, o + 2)
    g2, s2 = _iq2_xs_group(W, o + 4)
    g3, s3 = _iq2_xs_group(W, o + 6)
    return _signed_u8(concat(concat(g0, g1), concat(g2, g3)), s0 | (s1 << 8) | (s2 << 16) | (s3 << 24))


@njit(cache=True, _nrt=False, forceinline=True)
def _half_scale16(W, bo, at, j, half):
    """IQ2_XS/IQ2_S: d * (2 ls + 1) / 8 for the 4-bit ls of half `half` of chunk j, nibble
    `half` of byte at + j."""
    ls = (_b(W, bo + at + j) >> (4 * half)) & 15
    return load_f16(W, bo, 1) * float32(2 * ls + 1) * float32(0.125)


@njit(cache=True, _nrt=False, forceinline=True)
def _scales16(W, bo, at):
    """float32 x 16: the super-block's scales, one per 16 weights (the 16 nibbles of the 8 bytes
    at `at`, low one first), as _half_scale16 computes each."""
    b = load(W, bo + at, 8)
    ls = to_i32(interleave(b & uint8(15), b >> uint8(4)))
    return splat(load_f16(W, bo, 1), 16) * to_f32(ls * int32(2) + int32(1)) * float32(0.125)


@njit(cache=True, _nrt=False, forceinline=True)
def iq2_xs_chunk(W, bo, j):
    s0, s1 = _half_scale16(W, bo, 66, j, 0), _half_scale16(W, bo, 66, j, 1)
    return _iq2_xs_weights(W, bo, j), s0, s1, float32(-128) * s0, float32(-128) * s1


@njit(cache=True, _nrt=False, forceinline=True)
def _iq2_xs_pair(q, signs):
    """A chunk pair's weights from its 8 u16 (uint16 x 8) and 64 sign bits."""
    return _signed_u8(reinterpret(gather(IQ2_XS_WORDS, to_i32(q & uint16(511))), np.uint8), signs)


@njit(cache=True, _nrt=False, forceinline=True)
def iq2_xs_superblock(W, bo, dx):
    q = reinterpret(load(W, bo + 2, 64), np.uint16)  # per 8 weights: grid index | sign index << 9
    signs = reinterpret(reinterpret(to_i8(_ksigns(q >> uint16(9))), np.uint8), np.uint64)
    dl = _scales16(W, bo, 66)
    sc = dl * dx
    return (_iq2_xs_pair(repeat_slice(q, 0, 8, 1), extract(signs, 0)), _iq2_xs_pair(repeat_slice(q, 8, 8, 1), extract(signs, 1)),
            _iq2_xs_pair(repeat_slice(q, 16, 8, 1), extract(signs, 2)), _iq2_xs_pair(repeat_slice(q, 24, 8, 1), extract(signs, 3)),
            repeat_slice(sc, 0, 4, 4), repeat_slice(sc, 4, 4, 4), repeat_slice(sc, 8, 4, 4), repeat_slice(sc, 12, 4, 4),
            dl * float32(-128))


# IQ2_S (82 bytes: d, qs[32], signs[32], qh[8], scales[8]): per 8 weights a 10-bit grid index
# (1024 points, magnitudes as IQ2_XXS), qs[g] | bits 2(g % 4) of qh[g // 4] << 8, and a sign byte.

IQ2_S_POINTS = np.ascontiguousarray(IQ2_S_GRID.reshape(-1))
#: the same, one 64-bit word per point (gather's elements)
IQ2_S_WORDS = IQ2_S_POINTS.view(np.uint64)
#: a chunk pair's 8 grid indices take their bits 8-9 from bits 2i, 2i + 1 of the pair's two qh bytes
IQ2_S_HIGH_SHIFTS = np.arange(0, 16, 2, dtype=np.int32)


@njit(cache=True, _nrt=False, forceinline=True)
def _iq2_s_point(W, bo, j, high, l):
    return load(IQ2_S_POINTS, 8 * (_b(W, bo + 2 + 4 * j + l) | (((high >> (2 * l)) & 3) << 8)), 8)


@njit(cache=True, _nrt=False, forceinline=True)
def _iq2_s_weights(W, bo, j):
    high = _b(W, bo + 66 + j)
    g = concat(concat(_iq2_s_point(W, bo, j, high, 0), _iq2_s_point(W, bo, j, high, 1)),
               concat(_iq2_s_point(W, bo, j, high, 2), _iq2_s_point(W, bo, j, high, 3)))
    return _signed_u8(g, uint32(load_u32(W, bo + 34 + 4 * j, 1)))


@njit(cache=True, _nrt=False, forceinline=True)
def iq2_s_chunk(W, bo, j):
    s0, s1 = _half_scale16(W, bo, 74, j, 0), _half_scale16(W, bo, 74, j, 1)
    return _iq2_s_weights(W, bo, j), s0, s1, float32(-128) * s0, float32(-128) * s1


@njit(cache=True, _nrt=False, forceinline=True)
def _iq2_s_pair(W, bo, p):
    """Chunk pair p's weights: 8 grid indices (qs bytes, bits 8-9 from the pair's qh bytes) in
    one gather, signed by the pair's 8 sign bytes."""
    high = ((splat(int32(load_u16(W, bo + 66 + 2 * p, 1)), 8) >> load(IQ2_S_HIGH_SHIFTS, 0, 8)) & int32(3)) << int32(8)
    g = reinterpret(gather(IQ2_S_WORDS, to_i32(load(W, bo + 2 + 8 * p, 8)) | high), np.uint8)
    return _signed_u8(g, load_u64(W, bo + 34 + 8 * p, 1))


@njit(cache=True, _nrt=False, forceinline=True)
def iq2_s_superblock(W, bo, dx):
    dl = _scales16(W, bo, 74)
    sc = dl * dx
    return (_iq2_s_pair(W, bo, 0), _iq2_s_pair(W, bo, 1), _iq2_s_pair(W, bo, 2), _iq2_s_pair(W, bo, 3),
            repeat_slice(sc, 0, 4, 4), repeat_slice(sc, 4, 4, 4), repeat_slice(sc, 8, 4, 4), repeat_slice(sc, 12, 4, 4),
            dl * float32(-128))


# IQ3_XXS (98 bytes: d, qs[64], then per 32 weights a u32 as IQ2_XXS's second word): per 32
# weights (chunk j) 8 grid indices qs[8j + k] of 4 magnitudes in {4, 12, ..., 62};
# weight = d * (2 ls + 1) / 4 * magnitude * sign.

IQ3_XXS_POINTS = np.ascontiguousarray(IQ3_XXS_GRID.reshape(-1))
#: the same, one 32-bit word per point (gather's elements)
IQ3_XXS_WORDS = IQ3_XXS_POINTS.view(np.uint32)


@njit(cache=True, _nrt=False, forceinline=True)
def _iq3_xxs_point(W, qs, k):
    return load(IQ3_XXS_POINTS, 4 * _b(W, qs + k), 4)


@njit(cache=True, _nrt=False, forceinline=True)
def _iq3_xxs_weights(W, bo, j, aux):
    qs = bo + 2 + 8 * j
    g = concat(concat(concat(_iq3_xxs_point(W, qs, 0), _iq3_xxs_point(W, qs, 1)),
                      concat(_iq3_xxs_point(W, qs, 2), _iq3_xxs_point(W, qs, 3))),
               concat(concat(_iq3_xxs_point(W, qs, 4), _iq3_xxs_point(W, qs, 5)),
                      concat(_iq3_xxs_point(W, qs, 6), _iq3_xxs_point(W, qs, 7))))
    return _signed_u8(g, _sign_bits(aux))


@njit(cache=True, _nrt=False, forceinline=True)
def _iq3_xxs_word(W, bo, j):
    return uint32(load_u32(W, bo + 66 + 4 * j, 1))


@njit(cache=True, _nrt=False, forceinline=True)
def _iq3_xxs_dl(W, bo, aux):
    return load_f16(W, bo, 1) * float32(2 * int32(aux >> 28) + 1) * float32(0.25)


@njit(cache=True, _nrt=False, forceinline=True)
def iq3_xxs_chunk(W, bo, j):
    aux = _iq3_xxs_word(W, bo, j)
    dl = _iq3_xxs_dl(W, bo, aux)
    m = float32(-128) * dl
    return _iq3_xxs_weights(W, bo, j, aux), dl, dl, m, m


@njit(cache=True, _nrt=False, forceinline=True)
def _iq3_xxs_pair(W, bo, p, signs):
    """Chunk pair p's weights: its 16 grid points in one gather, signed by its 64 sign bits."""
    return _signed_u8(reinterpret(gather(IQ3_XXS_WORDS, to_i32(load(W, bo + 2 + 16 * p, 16))), np.uint8), signs)


@njit(cache=True, _nrt=False, forceinline=True)
def iq3_xxs_superblock(W, bo, dx):
    aux = reinterpret(load(W, bo + 66, 32), np.uint32)  # per chunk: 4 sign indices and the scale
    signs = reinterpret(_sign_bits(aux), np.uint64)  # a chunk pair's 64 sign bits per lane
    dl = _aux_scales(W, bo, aux, float32(0.25))
    sc = dl * dx
    return (_iq3_xxs_pair(W, bo, 0, extract(signs, 0)), _iq3_xxs_pair(W, bo, 1, extract(signs, 1)),
            _iq3_xxs_pair(W, bo, 2, extract(signs, 2)), _iq3_xxs_pair(W, bo, 3, extract(signs, 3)),
            repeat_slice(sc, 0, 2, 8), repeat_slice(sc, 2, 2, 8), repeat_slice(sc, 4, 2, 8), repeat_slice(sc, 6, 2, 8),
            repeat_slice(dl * float32(-128), 0, 8, 2))


# IQ1_S (50 bytes: d, qs[32], qh u16[8]): per 32 weights (chunk j) 4 11-bit grid indices of 8
# levels l in 0..2 (qs[4j + k] | bits 3k of qh[j] << 8), a 3-bit scale ls (bits 12-14) and the
# sign of delta (bit 15): weight = d (2 ls + 1) (l - 1 + delta), delta = +-1/8. q is l itself,
# the rest an offset.

IQ1_S_POINTS = np.ascontiguousarray(IQ1_S_LEVELS.reshape(-1))
#: the same, one 64-bit word per point (gather's elements)
IQ1_S_WORDS = IQ1_S_POINTS.view(np.uint64)
#: a chunk pair's 8 grid indices take their bits 8-10 from bits 3k of its two qh words, read as one u32
IQ1_S_HIGH_SHIFTS = np.array([16 * (i // 4) + 3 * (i % 4) for i in range(8)], np.int32)


@njit(cache=True, _nrt=False, forceinline=True)
def _iq1_s_point(W, bo, j, qh, k):
    return load(IQ1_S_POINTS, 8 * (_b(W, bo + 2 + 4 * j + k) | (((qh >> (3 * k)) & 7) << 8)), 8)


@njit(cache=True, _nrt=False, forceinline=True)
def _iq1_s_qh(W, bo, j):
    return int64(load_u16(W, bo + 34 + 2 * j, 1))


@njit(cache=True, _nrt=False, forceinline=True)
def _iq1_s_weights(W, bo, j, qh):
    return concat(concat(_iq1_s_point(W, bo, j, qh, 0), _iq1_s_point(W, bo, j, qh, 1)),
                  concat(_iq1_s_point(W, bo, j, qh, 2), _iq1_s_point(W, bo, j, qh, 3)))


@njit(cache=True, _nrt=False, forceinline=True)
def _iq1_s_scale_offset(W, bo, qh):
    dl = load_f16(W, bo, 1) * float32(2 * ((qh >> 12) & 7) + 1)
    delta = float32(-0.125) if qh & 0x8000 else float32(0.125)
    return dl, dl * (delta - float32(1))


@njit(cache=True, _nrt=False, forceinline=True)
def iq1_s_chunk(W, bo, j):
    qh = _iq1_s_qh(W, bo, j)
    dl, m = _iq1_s_scale_offset(W, bo, qh)
    return _iq1_s_weights(W, bo, j, qh), dl, dl, m, m


@njit(cache=True, _nrt=False, forceinline=True)
def _iq1_s_pair(W, bo, p):
    """Chunk pair p's weights: 8 grid indices (qs bytes, bits 8-10 from the pair's qh words) in one gather."""
    qh = splat(int32(load_u32(W, bo + 34 + 4 * p, 1)), 8)
    high = ((qh >> load(IQ1_S_HIGH_SHIFTS, 0, 8)) & int32(7)) << int32(8)
    return reinterpret(gather(IQ1_S_WORDS, to_i32(load(W, bo + 2 + 8 * p, 8)) | high), np.uint8)


@njit(cache=True, _nrt=False, forceinline=True)
def iq1_s_superblock(W, bo, dx):
    qh = to_i32(reinterpret(load(W, bo + 34, 16), np.uint16))  # per chunk: index bits, ls (bits 12-14), delta's sign (15)
    dl = splat(load_f16(W, bo, 1), 8) * to_f32(((qh >> int32(12)) & int32(7)) * int32(2) + int32(1))
    # delta - 1: -0.875, or -1.125 where the sign bit is set (both exact, as _iq1_s_scale_offset's)
    m = dl * (to_f32(qh >> int32(15)) * float32(-0.25) + float32(-0.875))
    sc = dl * dx
    return (_iq1_s_pair(W, bo, 0), _iq1_s_pair(W, bo, 1), _iq1_s_pair(W, bo, 2), _iq1_s_pair(W, bo, 3),
            repeat_slice(sc, 0, 2, 8), repeat_slice(sc, 2, 2, 8), repeat_slice(sc, 4, 2, 8), repeat_slice(sc, 6, 2, 8),
            repeat_slice(m, 0, 8, 2))


# IQ1_M (56 bytes: qs[32], qh[16], scales u16[4]): per 16 weights (block b = 2j + h, half h of
# chunk j) 2 11-bit grid indices of 8 levels l in 0..2 (qs[2b + k] | bits 4k..4k+2 of qh[b] << 8),
# the sign of each one's delta (bit 4k + 3: -1/8) and a 3-bit scale ls (bits 3(b % 4) of
# scales[b // 4]); the fp16 d is in the scales' top nibbles. weight = d (2 ls + 1) (l - 1 + delta)
# = d (2 ls + 1) / 8 * (q - 16) with q = 8 l + 8 + 8 delta (7..25): a delta per 8 weights fits in
# q, and the scale and offset are per half, as IQ2_XS's.


@njit(cache=True, _nrt=False, forceinline=True)
def _iq1_m_scale_word(W, bo):
    """The four u16 scales as one 64-bit word."""
    return int64(load_u32(W, bo + 48, 1)) | (int64(load_u32(W, bo + 52, 1)) << 32)


@njit(cache=True, _nrt=False, forceinline=True)
def _iq1_m_d(u):
    return f16_bits_to_f32(((u >> 12) & 0xF) | ((u >> 24) & 0xF0) | ((u >> 36) & 0xF00) | ((u >> 48) & 0xF000))


@njit(cache=True, _nrt=False, forceinline=True)
def _iq1_m_dl(d, u, b):
    """d (2 ls + 1) / 8 of block b (16 weights)."""
    return d * float32(2 * ((u >> (16 * (b // 4) + 3 * (b % 4))) & 7) + 1) * float32(0.125)


@njit(cache=True, _nrt=False, forceinline=True)
def _iq1_m_group(W, bo, b, k):
    """8 weights q = 8 l + 8 +- 1 of group k of block b."""
    qh = _b(W, bo + 32 + b) >> (4 * k)
    g = load(IQ1_S_POINTS, 8 * (_b(W, bo + 2 * b + k) | ((qh & 7) << 8)), 8)
    return g * splat(uint8(8), 8) + splat(uint8(7 if qh & 8 else 9), 8)


@njit(cache=True, _nrt=False, forceinline=True)
def _iq1_m_weights(W, bo, j):
    return concat(concat(_iq1_m_group(W, bo, 2 * j, 0), _iq1_m_group(W, bo, 2 * j, 1)),
                  concat(_iq1_m_group(W, bo, 2 * j + 1, 0), _iq1_m_group(W, bo, 2 * j + 1, 1)))


@njit(cache=True, _nrt=False, forceinline=True)
def iq1_m_chunk(W, bo, j):
    u = _iq1_m_scale_word(W, bo)
    d = _iq1_m_d(u)
    s0, s1 = _iq1_m_dl(d, u, 2 * j), _iq1_m_dl(d, u, 2 * j + 1)
    return _iq1_m_weights(W, bo, j), s0, s1, float32(-16) * s0, float32(-16) * s1


#: group i (block 4p + i // 2, group i % 2) of chunk pair p: its qh bits 4i..4i+3 in the pair's
#: four qh bytes read as one u32 (three index bits, then delta's sign)
IQ1_M_GROUP_SHIFTS = np.arange(0, 32, 4, dtype=np.int32)
#: block b's 3-bit scale: bits 3(b % 4) of the u16 b // 4 of the scales' 64-bit word
IQ1_M_SCALE_SHIFTS = np.array([16 * (b // 4) + 3 * (b % 4) for b in range(16)], np.int64)
#: q = 8 l + 9, or + 7 where delta's sign is set: the 8 bytes of a group at once in a u64 lane
IQ1_M_PLUS_9 = np.uint64(0x0909090909090909)
IQ1_M_TWOS = np.uint64(0x0202020202020202)


@njit(cache=True, _nrt=False, forceinline=True)
def _iq1_m_pair(W, bo, p):
    """Chunk pair p's weights q = 8 l + 8 +- 1: 8 grid indices (qs bytes, bits 8-10 from the
    pair's qh bytes) in one gather, each group's 8 levels times 8 and offset in one u64 lane."""
    qh = splat(int32(load_u32(W, bo + 32 + 4 * p, 1)), 8) >> load(IQ1_M_GROUP_SHIFTS, 0, 8)
    levels = gather(IQ1_S_WORDS, to_i32(load(W, bo + 8 * p, 8)) | ((qh & int32(7)) << int32(8)))
    minus = to_u64((qh >> int32(3)) & int32(1))
    return reinterpret((levels << uint64(3)) + (IQ1_M_PLUS_9 - minus * IQ1_M_TWOS), np.uint8)


@njit(cache=True, _nrt=False, forceinline=True)
def iq1_m_superblock(W, bo, dx):
    u = _iq1_m_scale_word(W, bo)
    d = _iq1_m_d(u)
    ls = (splat(u, 16) >> load(IQ1_M_SCALE_SHIFTS, 0, 16)) & int64(7)
    dl = splat(d, 16) * to_f32(to_i32(ls) * int32(2) + int32(1)) * float32(0.125)
    sc = dl * dx
    return (_iq1_m_pair(W, bo, 0), _iq1_m_pair(W, bo, 1), _iq1_m_pair(W, bo, 2), _iq1_m_pair(W, bo, 3),
            repeat_slice(sc, 0, 4, 4), repeat_slice(sc, 4, 4, 4), repeat_slice(sc, 8, 4, 4), repeat_slice(sc, 12, 4, 4),
            dl * float32(-16))


# IQ3_S (110 bytes: d, qs[64], qh[8], signs[32], scales[4]): per 32 weights (chunk j) 8 grid
# points of 4 magnitudes in {1, 3, ..., 15}, point k's index qs[8j + k] | bit k of qh[j] << 8,
# the signs one bit per weight in the u32 at signs[4j], weight = d * (1 + 2 ls) * magnitude * sign.

IQ3_S_POINTS = np.ascontiguousarray(IQ3_S_GRID.reshape(-1))
#: the same, one 32-bit word per point (gather's elements)
IQ3_S_WORDS = IQ3_S_POINTS.view(np.uint32)
#: chunk j's 4-bit scale: nibble j of the little-endian u32 of the four scale bytes
IQ3_S_SCALE_SHIFTS = np.arange(0, 32, 4, dtype=np.uint32)


@njit(cache=True, _nrt=False, forceinline=True)
def _iq3_point(W, qs, high, k):
    return load(IQ3_S_POINTS, 4 * (_b(W, qs + k) | (((high >> k) & 1) << 8)), 4)


@njit(cache=True, _nrt=False, forceinline=True)
def _iq3_s_weights(W, bo, j):
    qs = bo + 2 + 8 * j
    high = _b(W, bo + 66 + j)
    g = concat(concat(concat(_iq3_point(W, qs, high, 0), _iq3_point(W, qs, high, 1)),
                      concat(_iq3_point(W, qs, high, 2), _iq3_point(W, qs, high, 3))),
               concat(concat(_iq3_point(W, qs, high, 4), _iq3_point(W, qs, high, 5)),
                      concat(_iq3_point(W, qs, high, 6), _iq3_point(W, qs, high, 7))))
    return _signed_u8(g, uint32(load_u32(W, bo + 74 + 4 * j, 1)))


@njit(cache=True, _nrt=False, forceinline=True)
def _iq3_s_dl(W, bo, j):
    return load_f16(W, bo, 1) * float32(1 + 2 * ((_b(W, bo + 106 + j // 2) >> (4 * (j % 2))) & 15))


@njit(cache=True, _nrt=False, forceinline=True)
def iq3_s_chunk(W, bo, j):
    dl = _iq3_s_dl(W, bo, j)
    m = float32(-128) * dl
    return _iq3_s_weights(W, bo, j), dl, dl, m, m


@njit(cache=True, _nrt=False, forceinline=True)
def _iq3_s_pair(W, bo, p):
    """Chunk pair p's weights: 16 grid indices (qs bytes, the 9th bit from the pair's two qh
    bytes) in one gather, signed by the pair's 64 sign bits."""
    high = where_bits(load_u16(W, bo + 66 + 2 * p, 1), splat(int32(256), 16), splat(int32(0), 16))
    g = reinterpret(gather(IQ3_S_WORDS, to_i32(load(W, bo + 2 + 16 * p, 16)) | high), np.uint8)
    return _signed_u8(g, load_u64(W, bo + 74 + 8 * p, 1))


@njit(cache=True, _nrt=False, forceinline=True)
def iq3_s_superblock(W, bo, dx):
    ls = (splat(load_u32(W, bo + 106, 1), 8) >> load(IQ3_S_SCALE_SHIFTS, 0, 8)) & uint32(15)
    dl = splat(load_f16(W, bo, 1), 8) * to_f32(reinterpret(ls * uint32(2) + uint32(1), np.int32))
    sc = dl * dx
    return (_iq3_s_pair(W, bo, 0), _iq3_s_pair(W, bo, 1), _iq3_s_pair(W, bo, 2), _iq3_s_pair(W, bo, 3),
            repeat_slice(sc, 0, 2, 8), repeat_slice(sc, 2, 2, 8), repeat_slice(sc, 4, 2, 8), repeat_slice(sc, 6, 2, 8),
            repeat_slice(dl * float32(-128), 0, 8, 2))


# --- choosing a decoder at compile time -----------------------------------------------------

CHUNK_DECODERS = {
    Q4_0: q4_0_chunk, Q4_1: q4_1_chunk, Q5_0: q5_0_chunk, Q5_1: q5_1_chunk, Q8_0: q8_0_chunk,
    IQ4_NL: iq4_nl_chunk, Q2_K: q2_k_chunk, Q3_K: q3_k_chunk, Q4_K: q4_k_chunk, Q5_K: q5_k_chunk,
    Q6_K: q6_k_chunk, IQ4_XS: iq4_xs_chunk, TQ1_0: tq1_0_chunk, TQ2_0: tq2_0_chunk, IQ2_XXS: iq2_xxs_chunk,
    IQ3_S: iq3_s_chunk, IQ2_XS: iq2_xs_chunk, IQ3_XXS: iq3_xxs_chunk,
    IQ2_S: iq2_s_chunk, IQ1_S: iq1_s_chunk, IQ1_M: iq1_m_chunk,
}  # fmt: skip
#: decoders of chunk pairs, for types where decoding two chunks at once saves work
PAIR_DECODERS = {Q4_0: q4_0_pair, Q4_1: q4_1_pair}
#: bytes of a group of 8 chunks: a super-block, or 8 blocks of a 32-weight type
GROUP_BYTES = {
    Q4_0: 8 * 18, Q4_1: 8 * 20, Q5_0: 8 * 22, Q5_1: 8 * 24, Q8_0: 8 * 34, IQ4_NL: 8 * 18,
    Q2_K: 84, Q3_K: 110, Q4_K: 144, Q5_K: 176, Q6_K: 210, IQ4_XS: 136, TQ1_0: 54, TQ2_0: 66, IQ2_XXS: 66,
    IQ3_S: 110, IQ2_XS: 74, IQ3_XXS: 98, IQ2_S: 82, IQ1_S: 50, IQ1_M: 56,
}  # fmt: skip
#: decoders of whole super-blocks (see "whole super-blocks" above), for the K-quants that have one:
#: with float lane scales, or with integer ones (INT_SCALE_DECODERS)
SUPERBLOCK_DECODERS = {Q2_K: q2_k_superblock, Q3_K: q3_k_superblock, IQ4_XS: iq4_xs_superblock, TQ1_0: tq1_0_superblock,
                       TQ2_0: tq2_0_superblock, IQ2_XXS: iq2_xxs_superblock, IQ3_S: iq3_s_superblock,
                       IQ2_XS: iq2_xs_superblock, IQ3_XXS: iq3_xxs_superblock,
                       IQ2_S: iq2_s_superblock, IQ1_S: iq1_s_superblock, IQ1_M: iq1_m_superblock}
INT_SCALE_DECODERS = {Q4_K: q4_k_superblock, Q5_K: q5_k_superblock, Q6_K: q6_k_superblock}
#: integer-scaled types whose offsets m go by 32 weights (8 lanes, against the s32 sums)
PER32_OFFSETS = (Q4_K, Q5_K)
#: types whose super-block weights come in the order of the activation's paired copy
PAIRED_ACTIVATION = (Q4_K, Q5_K, IQ4_XS)
#: types whose two chunk halves have scales and offsets of their own (else one of each per chunk)
HALF_OFFSETS = (Q2_K, Q3_K, Q6_K, TQ1_0, TQ2_0, IQ2_XS, IQ2_S, IQ1_M)


# --- the 32-weight types by chunk pairs, for the decode loops (matmul.py) ------------------------
# Their weights are either d * (q - k) for a constant k (Q4_0 8, Q5_0 16, Q8_0 and IQ4_NL 128:
# q as decoded above is the stored value plus 128) or d * q + m with a stored min m (Q4_1,
# Q5_1). A chunk pair's two scales (and mins) come out as one small vector: two 16-bit
# loads and one conversion instead of a conversion and an insert per scalar.

#: bytes of one block of a 32-weight type
BLOCK32_BYTES = {Q4_0: 18, Q4_1: 20, Q5_0: 22, Q5_1: 24, Q8_0: 34, IQ4_NL: 18}
#: k of the types whose weights are d * (q - k); the others store a min
WEIGHT_SHIFT = {Q4_0: 8, Q5_0: 16, Q8_0: 128, IQ4_NL: 128}


def is_block32(qtype) -> bool:
    """Whether a type id (a Numba integer literal, while typing) is a 32-weight type."""
    return literal_type_id(qtype) in BLOCK32_BYTES


def int_scales(qtype) -> bool:
    """Whether a type id (a Numba integer literal, while typing) decodes by INT_SCALE_DECODERS."""
    return literal_type_id(qtype) in INT_SCALE_DECODERS


def weight_shift_of(qtype) -> int:
    """WEIGHT_SHIFT of a type id (a Numba integer literal, while typing), 0 for the others."""
    return WEIGHT_SHIFT.get(literal_type_id(qtype), 0)


def weight_shift(qtype):
    """k of a type whose weights are d * (q - k), 0 for a type with mins (compile-time constant)."""
    raise NotImplementedError("weight_shift is only callable from compiled code")


#: Types whose decoded weight bytes are all below 128 (unsigned 2-6 bit values; Q8_0 and the
#: IQ4 codebooks are shifted signed bytes): their dot products may take simd.dot4_u7i8.
SMALL_WEIGHTS = frozenset({Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K})


def weight_dot(qtype, acc, w, x):
    """acc + the byte dot product (dot4_u8i8) of decoded weights w with activation bytes x,
    by the cheaper dot4_u7i8 where the type's weights are below 128 (the same bits: both
    sums are exact); compiled code only."""
    raise NotImplementedError("weight_dot is only callable from compiled code")


def pair_scales(qtype, W, bo, j):
    """Chunks j, j+1 of the group at bo, 32-weight types: float32 x 2 [d_j, d_j+1] for the
    types without mins, float32 x 4 [d_j, m_j, d_j+1, m_j+1] for Q4_1/Q5_1 (their d and m
    are adjacent: two 32-bit loads); compiled code only."""
    raise NotImplementedError("pair_scales is only callable from compiled code")


def decode_group(qtype, W, bo):
    """The group of 8 blocks at bo, 32-weight types: (w0, w1, w2, w3, d) with w_p the 64
    weight bytes of chunk pair p (as decode_pair_in_group) and d the blocks' scales:
    float32 x 8, or for Q4_1/Q5_1 float32 x 16 [d0, m0, d1, m1, ...] with their mins;
    compiled code only."""
    raise NotImplementedError("decode_group is only callable from compiled code")


@njit(cache=True, _nrt=False, forceinline=True)
def _group18(W, bo):
    """Eight 18-byte blocks (Q4_0, IQ4_NL: an f16 d, then 16 bytes of nibbles) at bo, read as
    two registers of the first 128 bytes and one of the last 64: the four pairs' nibbles
    and the eight scales come out of them by permutes, not by a load and an insert each."""
    z = load(W, bo, 128)
    tail = load(W, bo + 80, 64)
    return (split_nibbles(pick_pair(z, 2, 20)), split_nibbles(pick_pair(z, 38, 56)),
            split_nibbles(pick_pair(z, 74, 92)), split_nibbles(pick_pair(tail, 30, 48)), f16_lanes(z, 0, 18, 8))


@njit(cache=True, _nrt=False, forceinline=True)
def q4_0_group(W, bo):
    return _group18(W, bo)


@njit(cache=True, _nrt=False, forceinline=True)
def iq4_nl_group(W, bo):
    w0, w1, w2, w3, d = _group18(W, bo)
    t = load(IQ4_VALUES_U8, 0, 16)
    return lookup16(t, w0), lookup16(t, w1), lookup16(t, w2), lookup16(t, w3), d


@njit(cache=True, _nrt=False, forceinline=True)
def q4_1_group(W, bo):
    """Eight 20-byte Q4_1 blocks (f16 d, f16 m, 16 bytes of nibbles) at bo, from the first
    128 bytes and the last 64 (see _group18); d and m come as one vector, [d0, m0, d1, ...]."""
    z = load(W, bo, 128)
    tail = load(W, bo + 96, 64)
    return (split_nibbles(pick_pair2(z, tail, 96, 4, 24)), split_nibbles(pick_pair2(z, tail, 96, 44, 64)),
            split_nibbles(pick_pair2(z, tail, 96, 84, 104)), split_nibbles(pick_pair2(z, tail, 96, 124, 144)),
            f16_pairs2(z, tail, 96, 0, 20, 8))


GROUP_DECODERS = {Q4_0: q4_0_group, Q4_1: q4_1_group, IQ4_NL: iq4_nl_group}


@njit(cache=True, _nrt=False, forceinline=True)
def _group_halves(W, o, size):
    """float32 x 8: the halves at o, o + size, ..., o + 7 size (a field of 8 blocks)."""
    return concat(concat(load_f16_pair(W, o, o + size), load_f16_pair(W, o + 2 * size, o + 3 * size)),
                  concat(load_f16_pair(W, o + 4 * size, o + 5 * size), load_f16_pair(W, o + 6 * size, o + 7 * size)))


@njit(cache=True, _nrt=False, forceinline=True)
def _pairs_of_group(qtype, W, bo):
    # plain ints, not literals (see jit.njit)
    return (decode_pair_in_group(qtype, W, bo, int64(0))[0], decode_pair_in_group(qtype, W, bo, int64(2))[0],
            decode_pair_in_group(qtype, W, bo, int64(4))[0], decode_pair_in_group(qtype, W, bo, int64(6))[0])


@overload(decode_group, jit_options={"_nrt": False, "forceinline": True})
def _decode_group(qtype, W, bo):
    qt = literal_type_id(qtype)
    if qt in GROUP_DECODERS:
        decoder = GROUP_DECODERS[qt]
        return lambda qtype, W, bo: decoder(W, bo)
    size = BLOCK32_BYTES[qt]
    if qt in WEIGHT_SHIFT:
        return lambda qtype, W, bo: (*_pairs_of_group(qtype, W, bo), _group_halves(W, bo, size))
    return lambda qtype, W, bo: (*_pairs_of_group(qtype, W, bo),
                                 interleave(_group_halves(W, bo, size), _group_halves(W, bo + 2, size)))


@overload(weight_shift, jit_options={"_nrt": False, "forceinline": True})
def _weight_shift(qtype):
    value = WEIGHT_SHIFT.get(literal_type_id(qtype), 0)
    return lambda qtype: value


@overload(weight_dot, jit_options={"_nrt": False, "forceinline": True})
def _weight_dot(qtype, acc, w, x):
    dot = dot4_u7i8 if literal_type_id(qtype) in SMALL_WEIGHTS else dot4_u8i8
    return lambda qtype, acc, w, x: dot(acc, w, x)


@overload(pair_scales, jit_options={"_nrt": False, "forceinline": True})
def _pair_scales(qtype, W, bo, j):
    qt = literal_type_id(qtype)
    size = BLOCK32_BYTES[qt]
    if qt in WEIGHT_SHIFT:
        return lambda qtype, W, bo, j: load_f16_pair(W, bo + j * size, bo + (j + 1) * size)
    return lambda qtype, W, bo, j: concat(load_f16(W, bo + j * size, 2), load_f16(W, bo + (j + 1) * size, 2))


def decode_chunk(qtype, W, row, c):
    """Chunk c of the row at byte offset `row`, for a type id that is a compile-time constant.

    (An overload: Numba picks the one decoder while typing, so a kernel specialized for a
    type compiles that type's code only.)"""
    raise NotImplementedError("decode_chunk is only callable from compiled code")


def decode_in_group(qtype, W, bo, j):
    """Chunk j (0..7) of the group at byte offset bo (see GROUP_BYTES); compiled code only."""
    raise NotImplementedError("decode_in_group is only callable from compiled code")


def decode_pair_in_group(qtype, W, bo, j):
    """Chunks j, j+1 of the group at bo: (w: 64 uint8, s0, s1 of chunk j, s0, s1 of chunk j+1,
    m0, m1 of chunk j, m0, m1 of chunk j+1); compiled code only."""
    raise NotImplementedError("decode_pair_in_group is only callable from compiled code")


def decode_superblock(qtype, W, bo, dx):
    """The super-block at bo with activation scale dx: (w0..w3, l0..l3, m), see
    q6_k_superblock; types in SUPERBLOCK_DECODERS only, compiled code only."""
    raise NotImplementedError("decode_superblock is only callable from compiled code")


def group_bytes(qtype):
    """GROUP_BYTES of the type (compile-time constant)."""
    raise NotImplementedError("group_bytes is only callable from compiled code")


def half_offsets(qtype):
    """Whether the type's chunk halves have scales and offsets of their own (compile-time constant)."""
    raise NotImplementedError("half_offsets is only callable from compiled code")


def literal_type_id(qtype) -> int:
    if not isinstance(qtype, types.IntegerLiteral):
        raise errors.TypingError("the quantization type must be a compile-time constant")
    return int(qtype.literal_value)


@overload(decode_chunk, jit_options={"_nrt": False, "forceinline": True})
def _decode_chunk(qtype, W, row, c):
    decoder = CHUNK_DECODERS[literal_type_id(qtype)]
    size = GROUP_BYTES[literal_type_id(qtype)]
    return lambda qtype, W, row, c: decoder(W, row + (c >> 3) * size, c & 7)


@overload(decode_in_group, jit_options={"_nrt": False, "forceinline": True})
def _decode_in_group(qtype, W, bo, j):
    decoder = CHUNK_DECODERS[literal_type_id(qtype)]
    return lambda qtype, W, bo, j: decoder(W, bo, j)


@overload(decode_pair_in_group, jit_options={"_nrt": False, "forceinline": True})
def _decode_pair_in_group(qtype, W, bo, j):
    qt = literal_type_id(qtype)
    if qt in PAIR_DECODERS:
        pair = PAIR_DECODERS[qt]
        return lambda qtype, W, bo, j: pair(W, bo, j)
    decoder = CHUNK_DECODERS[qt]

    def two_chunks(qtype, W, bo, j):
        # a plain int (see jit.njit): the chunk decoders gain nothing from a literal j
        wa, sa0, sa1, ma0, ma1 = decoder(W, bo, int64(j))
        wb, sb0, sb1, mb0, mb1 = decoder(W, bo, j + 1)
        return concat(wa, wb), sa0, sa1, sb0, sb1, ma0, ma1, mb0, mb1

    return two_chunks


@overload(decode_superblock, jit_options={"_nrt": False, "forceinline": True})
def _decode_superblock(qtype, W, bo, dx):
    decoder = SUPERBLOCK_DECODERS[literal_type_id(qtype)]
    return lambda qtype, W, bo, dx: decoder(W, bo, dx)


def decode_superblock_int(qtype, W, bo):
    """The super-block at bo: (w0..w3, k0..k3, d, m), see "whole super-blocks" above; types in
    INT_SCALE_DECODERS only, compiled code only."""
    raise NotImplementedError("decode_superblock_int is only callable from compiled code")


def activation_start(qtype, q, t, K):
    """Where the super-block decoder of qtype reads row t (width K) of a Q8_K slot's q: its
    paired copy (PAIRED_ACTIVATION) or the row itself; compiled code only."""
    raise NotImplementedError("activation_start is only callable from compiled code")


def zero_offsets(qtype):
    """Zeros as many as the type's super-block offsets m (8 or 16 float32); compiled code only."""
    raise NotImplementedError("zero_offsets is only callable from compiled code")


def offset_sums(qtype, s16, s32, i16, i32):
    """The activation sums the type's super-block offsets m multiply: 8 per-32 sums from
    s32[i32:] (Q4_K, Q5_K) or 16 per-16 sums from s16[i16:]; compiled code only."""
    raise NotImplementedError("offset_sums is only callable from compiled code")


@overload(decode_superblock_int, jit_options={"_nrt": False, "forceinline": True})
def _decode_superblock_int(qtype, W, bo):
    decoder = INT_SCALE_DECODERS[literal_type_id(qtype)]
    return lambda qtype, W, bo: decoder(W, bo)


@overload(activation_start, jit_options={"_nrt": False, "forceinline": True})
def _activation_start(qtype, q, t, K):
    if literal_type_id(qtype) in PAIRED_ACTIVATION:
        return lambda qtype, q, t, K: paired_start(q, t, K)
    return lambda qtype, q, t, K: t * K


@overload(zero_offsets, jit_options={"_nrt": False, "forceinline": True})
def _zero_offsets(qtype):
    if literal_type_id(qtype) in PER32_OFFSETS:
        return lambda qtype: splat(float32(0), 8)
    return lambda qtype: splat(float32(0), 16)


@overload(offset_sums, jit_options={"_nrt": False, "forceinline": True})
def _offset_sums(qtype, s16, s32, i16, i32):
    if literal_type_id(qtype) in PER32_OFFSETS:
        return lambda qtype, s16, s32, i16, i32: load(s32, i32, 8)
    return lambda qtype, s16, s32, i16, i32: load(s16, i16, 16)


@overload(group_bytes, jit_options={"_nrt": False, "forceinline": True})
def _group_bytes(qtype):
    value = GROUP_BYTES[literal_type_id(qtype)]
    return lambda qtype: value


@overload(half_offsets, jit_options={"_nrt": False, "forceinline": True})
def _half_offsets(qtype):
    value = literal_type_id(qtype) in HALF_OFFSETS
    return lambda qtype: value
