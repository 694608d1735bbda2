"""The legacy block types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q8_1: 32 weights per block.

Quantizers are byte-exact with ggml's quantize_row_<type>_ref (what llama-quantize
writes without an importance matrix); dequantizers match dequantize_row_<type>.

Byte-exactness rules followed throughout:
- every intermediate is float32 as in C (constants are np.float32, ints are converted
  to np.float32 before they meet a float: in Numba int * float32 would be float64);
- float-to-integer casts reproduce C on x86: truncation toward zero, and the
  "integer indefinite" 0x80000000 (low byte 0) for NaN or out-of-range values;
- roundf rounds half away from zero; scales go through fp32_to_fp16_bits (nearest even).

Speed: each row is done in two passes so that LLVM vectorizes both without changing a
result. Pass 1 finds every block's scale; its per-block loop runs in C's element order,
and LLVM vectorizes across blocks (one block per SIMD lane). Pass 2 quantizes, a
vectorized loop over the 32 values of a block. Helpers are inlined at the Numba level
(inline="always") and index the 2-D arrays directly: calls and slices in the hot loops
would stop the vectorizer.

Block layouts (little-endian), all with fp16 scales:
  Q4_0  d, qs[16]            x = d * (q - 8)         q in 0..15, low nibbles hold x[0:16]
  Q4_1  d, m, qs[16]         x = d * q + m
  Q5_0  d, qh[4], qs[16]     x = d * (q - 16)        bit 4 of q(j) is bit j of qh
  Q5_1  d, m, qh[4], qs[16]  x = d * q + m
  Q8_0  d, qs[32] int8       x = d * q
  Q8_1  d, s, qs[32] int8    x = d * q, s = d * sum(q)
"""

from __future__ import annotations

import numpy as np

from ..jit import prange
from .floats import fp32_to_fp16_bits, inline, load_fp16, parallel_kernel, row_dequantizer, row_quantizer, store_fp16

QK = 32
_INT_INDEFINITE = np.int32(-2147483648)  # what x86 cvttss2si gives for NaN and out-of-range
_TWO_POW_31 = np.float32(2147483648.0)
_FLT_MAX = np.float32(3.4028234663852886e38)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)


# ----------------------------------------------------------------------------- C semantics


@inline
def _c_int(t):
    """(int)t as compiled C computes it on x86 (cvttss2si): truncation toward zero, and
    0x80000000 for NaN, inf and values out of range. A select, so loops still vectorize."""
    return np.int32(t) if abs(t) < _TWO_POW_31 else _INT_INDEFINITE


@inline
def _c_int8(t):
    """(int8_t)t: the low byte of the truncated int32, read as signed."""
    return np.int32(np.int8(_c_int(t)))


@inline
def _c_roundf(v):
    """roundf (half away from zero) of float32 v, as a float64 that truncates to it.

    v +- 0.5 is exact in float64, so truncating the sum rounds half away from zero;
    values too large for that are out of int range anyway.
    """
    v64 = np.float64(v)
    return v64 + (0.5 if v64 >= 0 else -0.5)


@inline
def _inverse(d):
    return _ONE / d if d != 0 else _ZERO


# ----------------------------------------------------------------------------- block statistics
# Each scans one block x[r, s:s + 32] in order, exactly as the C loop does.


@inline
def _signed_absmax(x, r, s):
    """The value of largest magnitude, first one on a tie, NaN never (Q4_0, Q5_0)."""
    amax = _ZERO
    vmax = _ZERO
    for j in range(s, s + QK):
        v = x[r, j]
        if amax < abs(v):
            amax = abs(v)
            vmax = v
    return vmax


@inline
def _absmax_c_max(x, r, s):
    """amax = MAX(amax, fabsf(v)) with C's macro: a NaN is taken, then dropped by the next value."""
    amax = _ZERO
    for j in range(s, s + QK):
        av = abs(x[r, j])
        amax = amax if amax > av else av
    return amax


# ----------------------------------------------------------------------------- quantizers
# Byte offsets inside each block are literal constants on purpose: passed in as
# arguments they would not fold in time, and the vectorizer would give up.

Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, Q5_1_BYTES, Q8_0_BYTES, Q8_1_BYTES = 18, 20, 22, 24, 34, 36


_GATHER_BITS = np.uint64(0x0102040810204080)


@inline
def _put_bits(out, r, pos, words):
    """Pack 32 flags (bytes 0 or 1, read as 4 uint64 words) as bit j of the little-endian
    uint32 at out[r, pos].

    Multiplying 8 flag bytes by _GATHER_BITS moves flag i to bit 56 + i with no
    carries: a byte of qh per multiply instead of 32 shifts.
    """
    for k in range(4):
        out[r, pos + k] = np.uint8((words[k] * _GATHER_BITS) >> np.uint64(56))


@inline
def _pack_nibbles(lo, hi):
    return np.uint8(lo & 0x0F) | np.uint8(np.uint8(hi & 0x0F) << 4)


# Pass 1: the scales of all the blocks of row r, with their inverses and fp16 bits
# (computing those here, vectorized across blocks, is cheaper than once per block).
# The helpers fill arrays the kernel allocated: returning new arrays from an inlined
# helper costs the vectorizer its alias analysis (measured: 2x slower).


@inline
def _signed_scales(x, r, divisor, inverse, half):
    """Q4_0, Q5_0: 1/d and fp16(d) for d = (the value of largest magnitude) / divisor."""
    for b in range(inverse.size):
        d = _signed_absmax(x, r, b * QK) / divisor
        inverse[b] = _inverse(d)
        half[b] = fp32_to_fp16_bits(d)


@inline
def _block_ranges(x, r, lows, highs):
    """Q4_1, Q5_1: each block's min and max. (Their d, 1/d and fp16 bits are left to
    pass 2 here: in this loop they would stop it vectorizing.)"""
    for b in range(lows.size):
        lo = _FLT_MAX
        hi = -_FLT_MAX
        for j in range(b * QK, b * QK + QK):  # C's `if (v < min) min = v;`, as selects
            v = x[r, j]
            lo = v if v < lo else lo
            hi = v if v > hi else hi
        lows[b] = lo
        highs[b] = hi


@inline
def _absmax_scales(x, r, scale, inverse, half):
    """Q8_0, Q8_1: d, 1/d and fp16(d) for d = max |x| / 127."""
    for b in range(inverse.size):
        d = _absmax_c_max(x, r, b * QK) / np.float32(127.0)
        scale[b] = d
        inverse[b] = _inverse(d)
        half[b] = fp32_to_fp16_bits(d)


@inline
def _floats(x):
    return np.empty(x.shape[1] // QK, np.float32)


@inline
def _halves(x):
    return np.empty(x.shape[1] // QK, np.uint16)


# Pass 2: the quants, block by block.


@inline
def _put_range_scale(out, r, pos, m, hi, steps):
    """Q4_1, Q5_1: store d = (hi - m) / steps and m as fp16 at out[r, pos:pos + 4]; return 1/d."""
    d = (hi - m) / steps
    store_fp16(out, r, pos, d)
    store_fp16(out, r, pos + 2, m)
    return _inverse(d)


@inline
def _put_half(out, r, pos, h):
    out[r, pos] = h & 0xFF
    out[r, pos + 1] = h >> 8


@inline
def _q8_quants(x, r, s, inv, out, pos):
    """roundf(x * inv) of one block into out[r, pos:pos + 32] as int8; returns their sum."""
    total = np.int32(0)
    for j in range(QK):
        q = _c_int8(_c_roundf(x[r, s + j] * inv))
        out[r, pos + j] = np.uint8(q & 0xFF)
        total += q
    return total


@parallel_kernel
def _quantize_q4_0(x, out):
    for r in prange(x.shape[0]):
        inverse, half = _floats(x), _halves(x)
        _signed_scales(x, r, np.float32(-8.0), inverse, half)
        for b in range(inverse.size):
            s, o, inv = b * QK, b * Q4_0_BYTES, inverse[b]
            _put_half(out, r, o, half[b])
            for j in range(QK // 2):
                lo = min(15, _c_int8(x[r, s + j] * inv + np.float32(8.5)))
                hi = min(15, _c_int8(x[r, s + QK // 2 + j] * inv + np.float32(8.5)))
                out[r, o + 2 + j] = _pack_nibbles(lo, hi)


@parallel_kernel
def _quantize_q4_1(x, out):
    for r in prange(x.shape[0]):
        lows, highs = _floats(x), _floats(x)
        _block_ranges(x, r, lows, highs)
        for b in range(lows.size):
            s, o, m = b * QK, b * Q4_1_BYTES, lows[b]
            inv = _put_range_scale(out, r, o, m, highs[b], np.float32(15.0))
            for j in range(QK // 2):
                lo = min(15, _c_int8((x[r, s + j] - m) * inv + _HALF))
                hi = min(15, _c_int8((x[r, s + QK // 2 + j] - m) * inv + _HALF))
                out[r, o + 4 + j] = _pack_nibbles(lo, hi)


@parallel_kernel
def _quantize_q5_0(x, out):
    for r in prange(x.shape[0]):
        inverse, half = _floats(x), _halves(x)
        _signed_scales(x, r, np.float32(-16.0), inverse, half)
        fifth = np.empty(QK, np.uint8)  # bit 4 of each quant of the block
        fifth_words = fifth.view(np.uint64)
        for b in range(inverse.size):
            s, o, inv = b * QK, b * Q5_0_BYTES, inverse[b]
            _put_half(out, r, o, half[b])
            for j in range(QK // 2):
                lo = min(31, _c_int8(x[r, s + j] * inv + np.float32(16.5)))
                hi = min(31, _c_int8(x[r, s + QK // 2 + j] * inv + np.float32(16.5)))
                out[r, o + 6 + j] = _pack_nibbles(lo, hi)
                fifth[j] = (lo >> 4) & 1
                fifth[j + QK // 2] = (hi >> 4) & 1
            _put_bits(out, r, o + 2, fifth_words)


@parallel_kernel
def _quantize_q5_1(x, out):
    for r in prange(x.shape[0]):
        lows, highs = _floats(x), _floats(x)
        _block_ranges(x, r, lows, highs)
        fifth = np.empty(QK, np.uint8)  # bit 4 of each quant of the block
        fifth_words = fifth.view(np.uint64)
        for b in range(lows.size):
            s, o, m = b * QK, b * Q5_1_BYTES, lows[b]
            inv = _put_range_scale(out, r, o, m, highs[b], np.float32(31.0))
            for j in range(QK // 2):
                # a (uint8_t) cast without a clamp: the C code relies on the value staying below 32
                lo = _c_int((x[r, s + j] - m) * inv + _HALF) & 0xFF
                hi = _c_int((x[r, s + QK // 2 + j] - m) * inv + _HALF) & 0xFF
                out[r, o + 8 + j] = _pack_nibbles(lo, hi)
                fifth[j] = (lo >> 4) & 1
                fifth[j + QK // 2] = (hi >> 4) & 1
            _put_bits(out, r, o + 4, fifth_words)


@parallel_kernel
def _quantize_q8_0(x, out):
    for r in prange(x.shape[0]):
        scale, inverse, half = _floats(x), _floats(x), _halves(x)
        _absmax_scales(x, r, scale, inverse, half)
        for b in range(inverse.size):
            o = b * Q8_0_BYTES
            _put_half(out, r, o, half[b])
            _q8_quants(x, r, b * QK, inverse[b], out, o + 2)


@parallel_kernel
def _quantize_q8_1(x, out):
    for r in prange(x.shape[0]):
        scale, inverse, half = _floats(x), _floats(x), _halves(x)
        _absmax_scales(x, r, scale, inverse, half)
        for b in range(inverse.size):
            o = b * Q8_1_BYTES
            _put_half(out, r, o, half[b])
            total = _q8_quants(x, r, b * QK, inverse[b], out, o + 4)
            store_fp16(out, r, o + 2, np.float32(total) * scale[b])


# ----------------------------------------------------------------------------- dequantizers


@parallel_kernel
def _dequantize_q4_0(raw, out):
    for r in prange(raw.shape[0]):
        for b in range(raw.shape[1] // Q4_0_BYTES):
            o, s = b * Q4_0_BYTES, b * QK
            d = load_fp16(raw, r, o)
            for j in range(QK // 2):
                q = np.int32(raw[r, o + 2 + j])
                out[r, s + j] = np.float32((q & 0x0F) - 8) * d
                out[r, s + QK // 2 + j] = np.float32((q >> 4) - 8) * d


@parallel_kernel
def _dequantize_q4_1(raw, out):
    for r in prange(raw.shape[0]):
        for b in range(raw.shape[1] // Q4_1_BYTES):
            o, s = b * Q4_1_BYTES, b * QK
            d, m = load_fp16(raw, r, o), load_fp16(raw, r, o + 2)
            for j in range(QK // 2):
                q = np.int32(raw[r, o + 4 + j])
                out[r, s + j] = np.float32(q & 0x0F) * d + m
                out[r, s + QK // 2 + j] = np.float32(q >> 4) * d + m


@inline
def _load_u32(raw, r, pos):
    v = np.int64(0)
    for k in range(4):
        v |= np.int64(raw[r, pos + k]) << (8 * k)
    return v


@inline
def _q5_value(q, qh, j):
    return np.int32(q | (((qh >> j) & 1) << 4))


@parallel_kernel
def _dequantize_q5_0(raw, out):
    for r in prange(raw.shape[0]):
        for b in range(raw.shape[1] // Q5_0_BYTES):
            o, s = b * Q5_0_BYTES, b * QK
            d, qh = load_fp16(raw, r, o), _load_u32(raw, r, o + 2)
            for j in range(QK // 2):
                q = np.int64(raw[r, o + 6 + j])
                out[r, s + j] = np.float32(_q5_value(q & 0x0F, qh, j) - 16) * d
                out[r, s + QK // 2 + j] = np.float32(_q5_value(q >> 4, qh, j + QK // 2) - 16) * d


@parallel_kernel
def _dequantize_q5_1(raw, out):
    for r in prange(raw.shape[0]):
        for b in range(raw.shape[1] // Q5_1_BYTES):
            o, s = b * Q5_1_BYTES, b * QK
            d, m, qh = load_fp16(raw, r, o), load_fp16(raw, r, o + 2), _load_u32(raw, r, o + 4)
            for j in range(QK // 2):
                q = np.int64(raw[r, o + 8 + j])
                out[r, s + j] = np.float32(_q5_value(q & 0x0F, qh, j)) * d + m
                out[r, s + QK // 2 + j] = np.float32(_q5_value(q >> 4, qh, j + QK // 2)) * d + m


@parallel_kernel
def _dequantize_q8_0(raw, out):
    for r in prange(raw.shape[0]):
        for b in range(raw.shape[1] // Q8_0_BYTES):
            o, s = b * Q8_0_BYTES, b * QK
            d = load_fp16(raw, r, o)
            for j in range(QK):
                out[r, s + j] = np.float32(np.int8(raw[r, o + 2 + j])) * d


@parallel_kernel
def _dequantize_q8_1(raw, out):
    for r in prange(raw.shape[0]):
        for b in range(raw.shape[1] // Q8_1_BYTES):
            o, s = b * Q8_1_BYTES, b * QK
            d = load_fp16(raw, r, o)  # the sum s at o + 2 is not needed
            for j in range(QK):
                out[r, s + j] = np.float32(np.int8(raw[r, o + 4 + j])) * d


# ----------------------------------------------------------------------------- public API


quantize_q4_0 = row_quantizer(_quantize_q4_0, QK, Q4_0_BYTES)
quantize_q4_1 = row_quantizer(_quantize_q4_1, QK, Q4_1_BYTES)
quantize_q5_0 = row_quantizer(_quantize_q5_0, QK, Q5_0_BYTES)
quantize_q5_1 = row_quantizer(_quantize_q5_1, QK, Q5_1_BYTES)
quantize_q8_0 = row_quantizer(_quantize_q8_0, QK, Q8_0_BYTES)
quantize_q8_1 = row_quantizer(_quantize_q8_1, QK, Q8_1_BYTES)
dequantize_q4_0 = row_dequantizer(_dequantize_q4_0, QK, Q4_0_BYTES)
dequantize_q4_1 = row_dequantizer(_dequantize_q4_1, QK, Q4_1_BYTES)
dequantize_q5_0 = row_dequantizer(_dequantize_q5_0, QK, Q5_0_BYTES)
dequantize_q5_1 = row_dequantizer(_dequantize_q5_1, QK, Q5_1_BYTES)
dequantize_q8_0 = row_dequantizer(_dequantize_q8_0, QK, Q8_0_BYTES)
dequantize_q8_1 = row_dequantizer(_dequantize_q8_1, QK, Q8_1_BYTES)
