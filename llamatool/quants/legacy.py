"""The legacy block types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q8_1: 32 weights per block.

Quantizers are byte-exact with ggml's quantize_row_<type>_ref (what llama-quantize
writes without an importance matrix); dequantizers match dequantize_row_<type>.

Byte-exactness rules followed throughout:
- every intermediate is float32 as in C (constants are np.float32, ints are converted
  to np.float32 before they meet a float: in Numba int * float32 would be float64);
- float-to-integer casts reproduce C on x86: truncation toward zero, and the
  "integer indefinite" 0x80000000 (low byte 0) for NaN or out-of-range values;
- roundf rounds half away from zero; scales go through fp32_to_fp16_bits (nearest even).

Speed: a row is done in three passes, each a loop LLVM vectorizes.
1. Block statistics (largest |x|, or min and max) as integer reductions over the
   float bits: unlike float comparisons these may be reordered, so the 32 values of a
   block are compared in a tree of vector max/min instructions. Each statistic is a
   key whose order is C's: for the value of largest magnitude, (|x| bits, then the
   earlier position), so the tree picks the value C's sequential scan picks. The few
   cases where C's scan depends on order in a way a key cannot express (a NaN in
   Q8_0's MAX macro, a block whose min or max is a zero of either sign) are redone by
   C's own sequential loop.
2. The scales, their inverses and fp16 bits of all the blocks of the row, one block
   per SIMD lane.
3. The quants, block by block, a vector loop over the 32 values.
Helpers are inlined at the Numba level (inline="always") and index the 2-D arrays
directly, and byte offsets inside a block are literal constants: otherwise the loops
would not vectorize.

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

from .ggml_scalar import c_int, c_int8, c_roundf, fp32_to_fp16_bits, inverse, load_fp16, store_fp16
from .rows import dequantizer, inline, kernel, quantizer

QK = 32
Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, Q5_1_BYTES, Q8_0_BYTES, Q8_1_BYTES = 18, 20, 22, 24, 34, 36

_U32 = np.uint32
_U64 = np.uint64
_FLT_MAX = np.float32(3.4028234663852886e38)
_HALF = np.float32(0.5)
_ZERO = np.float32(0.0)
_ABS = _U32(0x7FFFFFFF)
_INF_BITS = _U32(0x7F800000)
_SIGN = _U32(0x80000000)


# ----------------------------------------------------------------------------- pass 1: block statistics
# Each reads the block x[r, s:s + 32] (xi: the same values' bits).


@inline
def _magnitude_key(xi, r, s):
    """The largest key (|x| bits, 31 - position, sign) over the block: the first value of
    largest magnitude, as C's scans find it, and its sign. A NaN's |x| bits are above
    inf's: a key above _NAN_KEY means the block holds a NaN."""
    key = _U64(0)
    for j in range(QK):
        u = xi[r, s + j]
        key = max(key, (_U64(u & _ABS) << _U64(6)) | _U64((31 - j) << 1) | _U64(u >> _U32(31)))
    return key


_NAN_KEY = _U64(0x7F800000) << _U64(6) | _U64(63)  # keys above it hold a NaN's bits


@inline
def _signed_absmax_c(x, r, s):
    """Q4_0, Q5_0: C's `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`, in order: the
    first value of largest magnitude, NaNs never."""
    amax = _ZERO
    vmax = _ZERO
    for j in range(s, s + QK):
        v = x[r, j]
        if amax < abs(v):
            amax = abs(v)
            vmax = v
    return vmax


@inline
def _signed_absmax(x, xi, r, s):
    """What _signed_absmax_c finds, from the block's magnitude key; +0.0 (C's start value)
    when the largest magnitude is 0, and C's loop when there is a NaN to skip."""
    key = _magnitude_key(xi, r, s)
    if key > _NAN_KEY:
        return _signed_absmax_c(x, r, s)
    magnitude = _U32(key >> _U64(6))
    sign = _U32(_U32(key & _U64(1)) << _U32(31))
    return _U32(magnitude | sign if magnitude != 0 else 0).view(np.float32)


@inline
def _absmax_c_max(x, r, s):
    """Q8_0, Q8_1: amax = MAX(amax, fabsf(v)) with C's macro, in order: a NaN is taken,
    then dropped by the next value (the values before it are forgotten)."""
    amax = _ZERO
    for j in range(s, s + QK):
        av = abs(x[r, j])
        amax = amax if amax > av else av
    return amax


@inline
def _absmax(x, xi, r, s):
    """What _absmax_c_max finds: without NaNs the largest |x|, from the magnitude key."""
    key = _magnitude_key(xi, r, s)
    if key > _NAN_KEY:
        return _absmax_c_max(x, r, s)
    return _U32(key >> _U64(6)).view(np.float32)


@inline
def _order_key(u):
    """Bits of a float as a uint32 that orders as the floats do (-0.0 just below +0.0):
    negative floats have their bits flipped, positive ones their sign bit set."""
    flip = _U32(_U32(0) - _U32(u >> _U32(31)))
    return _U32(u ^ _U32(flip | _SIGN))


@inline
def _from_order_key(k):
    flip = _U32(_U32(0) - _U32(_U32(1) - _U32(k >> _U32(31))))
    return _U32(k ^ _U32(flip | _SIGN)).view(np.float32)


_FLT_MAX_KEY = _U32(0xFF7FFFFF)  # _order_key of FLT_MAX
_MINUS_FLT_MAX_KEY = _U32(0x00800000)  # of -FLT_MAX


@inline
def _range_c(x, r, s):
    """Q4_1, Q5_1: C's `if (v < min) min = v; if (v > max) max = v;` from +-FLT_MAX, in order."""
    lo = _FLT_MAX
    hi = -_FLT_MAX
    for j in range(s, s + QK):
        v = x[r, j]
        lo = v if v < lo else lo
        hi = v if v > hi else hi
    return lo, hi


@inline
def _range(x, xi, r, s):
    """The block's (min, max) as C's loop computes them. Ignoring NaNs and starting from
    +-FLT_MAX, the order keys give both in any order, except for which zero C keeps
    (the first, of either sign) when the min or the max is a zero: then C's own loop."""
    lo = _FLT_MAX_KEY
    hi = _MINUS_FLT_MAX_KEY
    for j in range(QK):
        u = xi[r, s + j]
        nan = (u & _ABS) > _INF_BITS
        k = _order_key(u)
        lo = _U32(min(lo, _FLT_MAX_KEY if nan else k))
        hi = _U32(max(hi, _MINUS_FLT_MAX_KEY if nan else k))
    low, high = _from_order_key(lo), _from_order_key(hi)
    if low == 0 or high == 0:
        return _range_c(x, r, s)
    return low, high


# ----------------------------------------------------------------------------- pass 2: scales
# For all the blocks of a row at once (their arrays are allocated once per call: returning
# new arrays from an inlined helper costs the vectorizer its alias analysis).


@inline
def _scales_of(values, divisor, inverses, halves):
    """d = value / divisor per block: 1/d and fp16(d)."""
    for b in range(values.size):
        d = values[b] / divisor
        inverses[b] = inverse(d)
        halves[b] = fp32_to_fp16_bits(d)


@inline
def _range_scales(lows, highs, steps, inverses, halves, low_halves):
    """Q4_1, Q5_1: d = (max - min) / steps per block: 1/d, fp16(d), fp16(min)."""
    for b in range(lows.size):
        d = (highs[b] - lows[b]) / steps
        inverses[b] = inverse(d)
        halves[b] = fp32_to_fp16_bits(d)
        low_halves[b] = fp32_to_fp16_bits(lows[b])


@inline
def _signed_absmax_row(x, xi, r, values):
    for b in range(values.size):
        values[b] = _signed_absmax(x, xi, r, b * QK)


@inline
def _absmax_row(x, xi, r, values):
    for b in range(values.size):
        values[b] = _absmax(x, xi, r, b * QK)


@inline
def _range_row(x, xi, r, lows, highs):
    for b in range(lows.size):
        lows[b], highs[b] = _range(x, xi, r, b * QK)


@inline
def _floats(x):
    return np.empty(x.shape[1] // QK, np.float32)


@inline
def _halves(x):
    return np.empty(x.shape[1] // QK, np.uint16)


# ----------------------------------------------------------------------------- pass 3: quants

_GATHER_BITS = _U64(0x0102040810204080)


@inline
def _put_bits(out, r, pos, words):
    """Pack 32 flags (bytes 0 or 1, read as 4 uint64 words) as bit j of the little-endian
    uint32 at out[r, pos].

    Multiplying 8 flag bytes by _GATHER_BITS moves flag i to bit 56 + i with no
    carries: a byte of qh per multiply instead of 32 shifts.
    """
    for k in range(4):
        out[r, pos + k] = np.uint8((words[k] * _GATHER_BITS) >> _U64(56))


@inline
def _pack_nibbles(lo, hi):
    return np.uint8(lo & 0x0F) | np.uint8(np.uint8(hi & 0x0F) << 4)


@inline
def _put_half(out, r, pos, h):
    out[r, pos] = h & 0xFF
    out[r, pos + 1] = h >> 8


@inline
def _q8_quants(x, r, s, inv, out, pos):
    """roundf(x * inv) of one block into out[r, pos:pos + 32] as int8; returns their sum."""
    total = np.int32(0)
    for j in range(QK):
        q = c_int8(c_roundf(x[r, s + j] * inv))
        out[r, pos + j] = np.uint8(q & 0xFF)
        total += q
    return total


@kernel
def _quantize_q4_0(x, out):
    xi = x.view(np.uint32)
    values, inverses, halves = _floats(x), _floats(x), _halves(x)
    for r in range(x.shape[0]):
        _signed_absmax_row(x, xi, r, values)
        _scales_of(values, np.float32(-8.0), inverses, halves)
        for b in range(values.size):
            s, o, inv = b * QK, b * Q4_0_BYTES, inverses[b]
            _put_half(out, r, o, halves[b])
            for j in range(QK // 2):
                lo = min(15, c_int8(x[r, s + j] * inv + np.float32(8.5)))
                hi = min(15, c_int8(x[r, s + QK // 2 + j] * inv + np.float32(8.5)))
                out[r, o + 2 + j] = _pack_nibbles(lo, hi)


@kernel
def _quantize_q4_1(x, out):
    xi = x.view(np.uint32)
    lows, highs, inverses, halves, low_halves = _floats(x), _floats(x), _floats(x), _halves(x), _halves(x)
    for r in range(x.shape[0]):
        _range_row(x, xi, r, lows, highs)
        _range_scales(lows, highs, np.float32(15.0), inverses, halves, low_halves)
        for b in range(lows.size):
            s, o, m, inv = b * QK, b * Q4_1_BYTES, lows[b], inverses[b]
            _put_half(out, r, o, halves[b])
            _put_half(out, r, o + 2, low_halves[b])
            for j in range(QK // 2):
                lo = min(15, c_int8((x[r, s + j] - m) * inv + _HALF))
                hi = min(15, c_int8((x[r, s + QK // 2 + j] - m) * inv + _HALF))
                out[r, o + 4 + j] = _pack_nibbles(lo, hi)


@kernel
def _quantize_q5_0(x, out):
    xi = x.view(np.uint32)
    values, inverses, halves = _floats(x), _floats(x), _halves(x)
    fifth = np.empty(QK, np.uint8)  # bit 4 of each quant of the block
    fifth_words = fifth.view(np.uint64)
    for r in range(x.shape[0]):
        _signed_absmax_row(x, xi, r, values)
        _scales_of(values, np.float32(-16.0), inverses, halves)
        for b in range(values.size):
            s, o, inv = b * QK, b * Q5_0_BYTES, inverses[b]
            _put_half(out, r, o, halves[b])
            for j in range(QK // 2):
                lo = min(31, c_int8(x[r, s + j] * inv + np.float32(16.5)))
                hi = min(31, c_int8(x[r, s + QK // 2 + j] * inv + np.float32(16.5)))
                out[r, o + 6 + j] = _pack_nibbles(lo, hi)
                fifth[j] = (lo >> 4) & 1
                fifth[j + QK // 2] = (hi >> 4) & 1
            _put_bits(out, r, o + 2, fifth_words)


@kernel
def _quantize_q5_1(x, out):
    xi = x.view(np.uint32)
    lows, highs, inverses, halves, low_halves = _floats(x), _floats(x), _floats(x), _halves(x), _halves(x)
    fifth = np.empty(QK, np.uint8)  # bit 4 of each quant of the block
    fifth_words = fifth.view(np.uint64)
    for r in range(x.shape[0]):
        _range_row(x, xi, r, lows, highs)
        _range_scales(lows, highs, np.float32(31.0), inverses, halves, low_halves)
        for b in range(lows.size):
            s, o, m, inv = b * QK, b * Q5_1_BYTES, lows[b], inverses[b]
            _put_half(out, r, o, halves[b])
            _put_half(out, r, o + 2, low_halves[b])
            for j in range(QK // 2):
                # a (uint8_t) cast without a clamp: the C code relies on the value staying below 32
                lo = c_int((x[r, s + j] - m) * inv + _HALF) & 0xFF
                hi = c_int((x[r, s + QK // 2 + j] - m) * inv + _HALF) & 0xFF
                out[r, o + 8 + j] = _pack_nibbles(lo, hi)
                fifth[j] = (lo >> 4) & 1
                fifth[j + QK // 2] = (hi >> 4) & 1
            _put_bits(out, r, o + 4, fifth_words)


@kernel
def _quantize_q8_0(x, out):
    xi = x.view(np.uint32)
    values, inverses, halves = _floats(x), _floats(x), _halves(x)
    for r in range(x.shape[0]):
        _absmax_row(x, xi, r, values)
        _scales_of(values, np.float32(127.0), inverses, halves)
        for b in range(values.size):
            o = b * Q8_0_BYTES
            _put_half(out, r, o, halves[b])
            _q8_quants(x, r, b * QK, inverses[b], out, o + 2)


@kernel
def _quantize_q8_1(x, out):
    xi = x.view(np.uint32)
    values, inverses, halves = _floats(x), _floats(x), _halves(x)
    for r in range(x.shape[0]):
        _absmax_row(x, xi, r, values)
        _scales_of(values, np.float32(127.0), inverses, halves)
        for b in range(values.size):
            o = b * Q8_1_BYTES
            _put_half(out, r, o, halves[b])
            total = _q8_quants(x, r, b * QK, inverses[b], out, o + 4)
            store_fp16(out, r, o + 2, np.float32(total) * (values[b] / np.float32(127.0)))


# ----------------------------------------------------------------------------- dequantizers


@kernel
def _dequantize_q4_0(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // Q4_0_BYTES):
            o, s = b * Q4_0_BYTES, b * QK
            d = load_fp16(raw, r, o)
            for j in range(QK // 2):
                q = np.int32(raw[r, o + 2 + j])
                out[r, s + j] = np.float32((q & 0x0F) - 8) * d
                out[r, s + QK // 2 + j] = np.float32((q >> 4) - 8) * d


@kernel
def _dequantize_q4_1(raw, out):
    for r in range(raw.shape[0]):
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


@kernel
def _dequantize_q5_0(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // Q5_0_BYTES):
            o, s = b * Q5_0_BYTES, b * QK
            d, qh = load_fp16(raw, r, o), _load_u32(raw, r, o + 2)
            for j in range(QK // 2):
                q = np.int64(raw[r, o + 6 + j])
                out[r, s + j] = np.float32(_q5_value(q & 0x0F, qh, j) - 16) * d
                out[r, s + QK // 2 + j] = np.float32(_q5_value(q >> 4, qh, j + QK // 2) - 16) * d


@kernel
def _dequantize_q5_1(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // Q5_1_BYTES):
            o, s = b * Q5_1_BYTES, b * QK
            d, m, qh = load_fp16(raw, r, o), load_fp16(raw, r, o + 2), _load_u32(raw, r, o + 4)
            for j in range(QK // 2):
                q = np.int64(raw[r, o + 8 + j])
                out[r, s + j] = np.float32(_q5_value(q & 0x0F, qh, j)) * d + m
                out[r, s + QK // 2 + j] = np.float32(_q5_value(q >> 4, qh, j + QK // 2)) * d + m


@kernel
def _dequantize_q8_0(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // Q8_0_BYTES):
            o, s = b * Q8_0_BYTES, b * QK
            d = load_fp16(raw, r, o)
            for j in range(QK):
                out[r, s + j] = np.float32(np.int8(raw[r, o + 2 + j])) * d


@kernel
def _dequantize_q8_1(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // Q8_1_BYTES):
            o, s = b * Q8_1_BYTES, b * QK
            d = load_fp16(raw, r, o)  # the sum s at o + 2 is not needed
            for j in range(QK):
                out[r, s + j] = np.float32(np.int8(raw[r, o + 4 + j])) * d


# ----------------------------------------------------------------------------- public API

quantize_q4_0 = quantizer(_quantize_q4_0, "Q4_0", QK, Q4_0_BYTES)
quantize_q4_1 = quantizer(_quantize_q4_1, "Q4_1", QK, Q4_1_BYTES)
quantize_q5_0 = quantizer(_quantize_q5_0, "Q5_0", QK, Q5_0_BYTES)
quantize_q5_1 = quantizer(_quantize_q5_1, "Q5_1", QK, Q5_1_BYTES)
quantize_q8_0 = quantizer(_quantize_q8_0, "Q8_0", QK, Q8_0_BYTES)
quantize_q8_1 = quantizer(_quantize_q8_1, "Q8_1", QK, Q8_1_BYTES)
dequantize_q4_0 = dequantizer(_dequantize_q4_0, "Q4_0", QK, Q4_0_BYTES)
dequantize_q4_1 = dequantizer(_dequantize_q4_1, "Q4_1", QK, Q4_1_BYTES)
dequantize_q5_0 = dequantizer(_dequantize_q5_0, "Q5_0", QK, Q5_0_BYTES)
dequantize_q5_1 = dequantizer(_dequantize_q5_1, "Q5_1", QK, Q5_1_BYTES)
dequantize_q8_0 = dequantizer(_dequantize_q8_0, "Q8_0", QK, Q8_0_BYTES)
dequantize_q8_1 = dequantizer(_dequantize_q8_1, "Q8_1", QK, Q8_1_BYTES)
