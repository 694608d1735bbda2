"""The ternary types TQ1_0 and TQ2_0: 256 weights of -1, 0 or +1 times one fp16 scale, the
largest |x| of the block. Byte-exact with ggml's quantize_row_tq*_ref (llama-quantize
ignores an importance matrix for them) and dequantize_row_tq*.

Block layouts (little-endian):
  TQ2_0  qs[64], d         weight 128h + 32l + m: bits 2l of qs[32h + m], value q - 1
  TQ1_0  qs[48], qh[4], d  base-3 digits, 5 per byte of qs and 4 per byte of qh, stored as
                           ceil(v * 256 / 243) so that digit n is ((byte * 3**n) mod 256) * 3 >> 8:
                           weights 0-159 in qs[0:32] (digit n: weights 32n..), 160-239 in
                           qs[32:48] (16 per digit), 240-255 in qh (4 per digit)
"""

from __future__ import annotations

import numpy as np

from .ggml_scalar import c_roundf, inverse, load_fp16, store_fp16
from .rows import dequantizer, inline, kernel, quantizer

QK_K = 256
TQ1_BYTES = 54
TQ2_BYTES = 66
_ZERO = np.float32(0.0)


@inline
def _absmax(x, r, s):
    amax = _ZERO
    for j in range(s, s + QK_K):
        a = abs(x[r, j])
        amax = amax if amax > a else a
    return amax


@inline
def _trit(v, inv):
    """lroundf(v * id) + 1: -1, 0, 1 -> 0, 1, 2."""
    return np.int64(c_roundf(v * inv)) + 1


@inline
def _pack_base3(x, r, s, stride, n_digits, inv):
    """The digits of x[r, s], x[r, s + stride], ... (most significant first) as one byte."""
    q = 0
    for n in range(n_digits):
        q = (q * 3 + _trit(x[r, s + n * stride], inv)) & 0xFF
    return q


@inline
def _ceil_243(q):
    return ((q * 256 + 242) // 243) & 0xFF


@kernel
def _quantize_tq1_0(x, out):
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            s, o = b * QK_K, b * TQ1_BYTES
            d = _absmax(x, r, s)
            inv = inverse(d)
            store_fp16(out, r, o + 52, d)
            for m in range(32):
                out[r, o + m] = _ceil_243(_pack_base3(x, r, s + m, 32, 5, inv))
            for m in range(16):
                out[r, o + 32 + m] = _ceil_243(_pack_base3(x, r, s + 160 + m, 16, 5, inv))
            for j in range(4):
                q = (_pack_base3(x, r, s + 240 + j, 4, 4, inv) * 3) & 0xFF  # the first digit to the top trit
                out[r, o + 48 + j] = _ceil_243(q)


@kernel
def _quantize_tq2_0(x, out):
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            s, o = b * QK_K, b * TQ2_BYTES
            d = _absmax(x, r, s)
            inv = inverse(d)
            store_fp16(out, r, o + 64, d)
            for h in range(2):
                for m in range(32):
                    q = 0
                    for n in range(4):
                        q += (_trit(x[r, s + 128 * h + m + 32 * n], inv) & 3) << (2 * n)
                    out[r, o + 32 * h + m] = q & 0xFF


_POW3 = np.array([1, 3, 9, 27, 81, 243], np.int64)


@inline
def _digit(byte, n):
    return ((((np.int64(byte) * _POW3[n]) & 0xFF) * 3) >> 8) - 1


@kernel
def _dequantize_tq1_0(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // TQ1_BYTES):
            o, s = b * TQ1_BYTES, b * QK_K
            d = load_fp16(raw, r, o + 52)
            for n in range(5):
                for m in range(32):
                    out[r, s + 32 * n + m] = np.float32(_digit(raw[r, o + m], n)) * d
                for m in range(16):
                    out[r, s + 160 + 16 * n + m] = np.float32(_digit(raw[r, o + 32 + m], n)) * d
            for n in range(4):
                for j in range(4):
                    out[r, s + 240 + 4 * n + j] = np.float32(_digit(raw[r, o + 48 + j], n)) * d


@kernel
def _dequantize_tq2_0(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // TQ2_BYTES):
            o, s = b * TQ2_BYTES, b * QK_K
            d = load_fp16(raw, r, o + 64)
            for h in range(2):
                for n in range(4):
                    for m in range(32):
                        q = (np.int64(raw[r, o + 32 * h + m]) >> (2 * n)) & 3
                        out[r, s + 128 * h + 32 * n + m] = np.float32(q - 1) * d


quantize_tq1_0 = quantizer(_quantize_tq1_0, "TQ1_0", QK_K, TQ1_BYTES)
quantize_tq2_0 = quantizer(_quantize_tq2_0, "TQ2_0", QK_K, TQ2_BYTES)
dequantize_tq1_0 = dequantizer(_dequantize_tq1_0, "TQ1_0", QK_K, TQ1_BYTES)
dequantize_tq2_0 = dequantizer(_dequantize_tq2_0, "TQ2_0", QK_K, TQ2_BYTES)
