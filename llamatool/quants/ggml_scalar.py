"""Scalar arithmetic exactly as ggml's C code does it, inlined into every kernel.

- fp16 and bf16: GGML_FP32_TO_FP16 / ggml_compute_fp16_to_fp32 / ggml_compute_fp32_to_bf16,
  bit for bit (round to nearest even; NaNs as ggml makes them);
- `nearest_int`: ggml's nearest_int, the 1.5 * 2**23 trick read off the float's bits;
- C's float-to-int casts as x86 does them (`c_int`, `c_int8`) and `c_roundf`;
- little-endian fp16 fields in byte rows (`store_fp16` / `load_fp16` on one row of a 2-D
  array, `put_fp16` / `get_fp16` on a 1-D block buffer).

Every intermediate is float32 as in C: constants are np.float32, and ints meet floats
only through np.float32() (in Numba, int * float32 is float64). All of it is
branch-free or select-based, so the loops that call it still vectorize.
"""

from __future__ import annotations

import numpy as np

from .rows import inline

_U32 = np.uint32
_F32 = np.float32
_ONE = _F32(1.0)
_ZERO = _F32(0.0)
# powers of two that move a float32's rounding point to fp16's (see fp32_to_fp16_bits)
_SCALE_TO_INF = _F32(2.0**112)
_SCALE_TO_ZERO = _F32(2.0**-110)
_MAGIC = _F32(12582912.0)  # 1.5 * 2**23: adding it leaves the rounded integer in the mantissa
_INT_INDEFINITE = np.int32(-2147483648)  # what x86 cvttss2si gives for NaN and out-of-range
_TWO_POW_31 = _F32(2147483648.0)


# ----------------------------------------------------------------------------- fp16 / bf16


@inline
def fp32_to_fp16_bits(f):
    """fp16 bits of float32 f, rounded to nearest even: GGML_FP32_TO_FP16's algorithm.

    Adding a power of two sized to f's exponent makes the float32 adder round f to
    fp16 precision; the fp16 exponent and mantissa are then read off the sum's bits.
    Overflow gives inf, NaN gives 0x7E00 with f's sign.
    """
    base = (abs(f) * _SCALE_TO_INF) * _SCALE_TO_ZERO
    w = _F32(f).view(np.uint32)
    shl1_w = _U32(w + w)
    bias = shl1_w & _U32(0xFF000000)
    bias = bias if bias >= _U32(0x71000000) else _U32(0x71000000)
    base = _U32((bias >> 1) + _U32(0x07800000)).view(np.float32) + base
    bits = _F32(base).view(np.uint32)
    nonsign = ((bits >> 13) & _U32(0x7C00)) + (bits & _U32(0xFFF))
    sign = (w & _U32(0x80000000)) >> 16
    return np.uint16(sign | (_U32(0x7E00) if shl1_w > _U32(0xFF000000) else nonsign))


@inline
def fp16_bits_to_fp32(h):
    """float32 value of fp16 bits h, as ggml_compute_fp16_to_fp32 (a NaN comes back quiet)."""
    sign = _U32(h & 0x8000) << 16
    exponent = (h >> 10) & 0x1F
    mantissa = _U32(h & 0x3FF)
    if exponent == 0:  # zero or subnormal: mantissa * 2**-24, exact
        bits = _F32(_F32(mantissa) * _F32(2.0**-24)).view(np.uint32)
    elif exponent == 31:  # inf or NaN
        bits = _U32(0x7F800000) | (mantissa << 13) | (_U32(0x400000) if mantissa else _U32(0))
    else:
        bits = (_U32(exponent + 112) << 23) | (mantissa << 13)
    return _U32(bits | sign).view(np.float32)


@inline
def fp32_to_bf16_bits(f):
    """ggml_compute_fp32_to_bf16: round to nearest even; a NaN keeps its top bits, made quiet."""
    u = _F32(f).view(np.uint32)
    if (u & _U32(0x7FFFFFFF)) > _U32(0x7F800000):
        return np.uint16((u >> 16) | _U32(64))
    return np.uint16((np.uint64(u) + np.uint64(0x7FFF + ((u >> 16) & 1))) >> 16)


# ----------------------------------------------------------------------------- fp16 fields


@inline
def store_fp16(out, r, pos, f):
    """Write float32 f as a little-endian fp16 at out[r, pos:pos + 2]."""
    h = fp32_to_fp16_bits(f)
    out[r, pos] = h & 0xFF
    out[r, pos + 1] = h >> 8


@inline
def load_fp16(raw, r, pos):
    """The little-endian fp16 at raw[r, pos:pos + 2], as float32."""
    return fp16_bits_to_fp32(np.int64(raw[r, pos]) | (np.int64(raw[r, pos + 1]) << 8))


@inline
def put_u16(out, pos, v):
    out[pos] = v & 0xFF
    out[pos + 1] = (v >> 8) & 0xFF


@inline
def put_fp16(out, pos, f):
    """Write f as a little-endian fp16 at out[pos:pos + 2]; return the float32 it now stands for."""
    h = fp32_to_fp16_bits(f)
    put_u16(out, pos, h)
    return fp16_bits_to_fp32(h)


@inline
def get_fp16(raw, pos):
    """The little-endian fp16 at raw[pos:pos + 2], as float32."""
    return fp16_bits_to_fp32(np.int64(raw[pos]) | (np.int64(raw[pos + 1]) << 8))


# ----------------------------------------------------------------------------- C casts and rounding


@inline
def nearest_int(f):
    """ggml's nearest_int(float) as C computes it: add 1.5 * 2**23 in float32 and read the
    mantissa bits. Round half to even; for out-of-range input (inf, NaN, overflowed scales)
    the same values as C."""
    return (_F32(f + _MAGIC).view(np.int32) & 0x7FFFFF) - 0x400000


@inline
def c_int(t):
    """(int)t as compiled C computes it on x86 (cvttss2si): truncation toward zero, and
    0x80000000 for NaN, inf and values out of range. A select, so loops still vectorize."""
    return np.int32(t) if abs(t) < _TWO_POW_31 else _INT_INDEFINITE


@inline
def c_int8(t):
    """(int8_t)t: the low byte of the truncated int32, read as signed."""
    return np.int32(np.int8(c_int(t)))


@inline
def c_roundf(v):
    """roundf (half away from zero) of float32 v, as a float64 that truncates to it.

    v +- 0.5 is exact in float64, so truncating the sum rounds half away from zero;
    values too large for that are out of int range anyway.
    """
    v64 = np.float64(v)
    return v64 + (0.5 if v64 >= 0 else -0.5)


@inline
def inverse(d):
    """1/d, or 0 for d == 0 (ggml's `d ? 1.0f/d : 0.0f`)."""
    return _ONE / d if d != 0 else _ZERO
