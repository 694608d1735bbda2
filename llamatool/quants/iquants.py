"""IQ4_NL and IQ4_XS: 4-bit indices into a fixed non-linear table of 16 int8 levels.

Quantizers are byte-exact with ggml's tool path without an importance matrix:
quantize_iq4_nl / quantize_iq4_xs -> quantize_row_iq4_nl_impl with ntry = 7 and
weights x**2 (not quantize_row_iq4_nl_ref, which skips the scale search).

Per block of 32 the scale search is: start from d = max/127, get the weighted
least-squares scale for the levels that start picks, then try the 15 scales
(itry - 127)/max, keeping the best by sumqx**2/sumq2 (strictly better wins).
IQ4_NL stores that scale as fp16. IQ4_XS then quantizes the 8 block scales of a
256-superblock to 6 bits against d = -max_scale/32 and re-picks the levels with the
quantized scale. All arithmetic is float32, in C's order.

Block layouts (little-endian):
  IQ4_NL  d, qs[16]                               x = d * K[q]
  IQ4_XS  d, scales_h u16, scales_l[4], qs[128]   x = d * (ls - 32) * K[q]
          ls (6 bits) of sub-block ib: low nibble in scales_l[ib // 2] (ib odd: high
          nibble), high 2 bits at bit 2*ib of scales_h; qs packed as in IQ4_NL.
"""

from __future__ import annotations

import numpy as np

from .ggml_scalar import inverse, load_fp16, nearest_int, store_fp16
from .rows import dequantizer, inline, kernel, quantizer

# kvalues_iq4nl: the 16 levels, ascending
LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)
MIDPOINTS = (LEVELS[:-1] + LEVELS[1:]) / np.float32(2.0)  # exact: half-integers
QK4_NL = 32
QK_K = 256
NL_BYTES = 18
XS_BYTES = 136
_GROUP_MAX_EPS = np.float32(1e-15)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)


@inline
def _nearest_index(x):
    """ggml's best_index_int8: the nearest level, a tie going to the upper one, NaN to 15.

    C bisects the levels and then compares x - lower < upper - x in float32. Both
    differences are exact whenever x is near enough to their midpoint for the test to
    be close (|x| > 4 there, and the gaps are small), so the test is x < midpoint and
    the index is the count of midpoints <= x: branch-free, so loops over it vectorize.
    """
    index = 0
    for k in range(15):
        index += MIDPOINTS[k] <= x
    return 15 if x != x else index


@inline
def _nearest_level(x):
    """LEVELS[_nearest_index(x)], picked by selects rather than a (slow) gather."""
    level = LEVELS[0]
    for k in range(15):
        level = LEVELS[k + 1] if MIDPOINTS[k] <= x else level
    return LEVELS[15] if x != x else level


@inline
def _fill_weights(x, r, s, n, qw, w):
    """The weights of the n values of the super-block x[r, s:s + n] into w: x**2, or with
    importance weights qw (a row's worth; empty without) qw * sqrt(sigma2 + x**2), sigma2
    being twice the mean square of the super-block (quantize_row_iq4_nl_impl)."""
    if qw.size == 0:
        for j in range(n):
            w[j] = x[r, s + j] * x[r, s + j]
        return
    sigma2 = _ZERO
    for j in range(n):
        sigma2 += x[r, s + j] * x[r, s + j]
    sigma2 *= np.float32(2.0) / np.float32(n)
    for j in range(n):
        w[j] = qw[s + j] * np.sqrt(sigma2 + x[r, s + j] * x[r, s + j])


@inline
def _block_scale(x, r, s, w, inv, sumqx, sumq2):
    """The scale quantize_row_iq4_nl_impl settles on for the block x[r, s:s + 32], its
    values weighted by w[0:32].

    The 16 candidate scales (the start max/127, then (itry - 127)/max for itry in
    -7..7) are evaluated side by side, one per SIMD lane, each lane summing in C's
    order; the choice between them then follows C's sequence. inv, sumqx and sumq2
    are scratch arrays of 16.
    """
    amax = _ZERO
    vmax = _ZERO
    for j in range(s, s + 32):
        if abs(x[r, j]) > amax:
            amax = abs(x[r, j])
            vmax = x[r, j]
    if amax < _GROUP_MAX_EPS:
        return _ZERO
    inv[0] = _ONE / (-vmax / LEVELS[0])
    for t in range(1, 16):
        inv[t] = np.float32(t - 8 - 127) / vmax
    sumqx[:] = 0
    sumq2[:] = 0
    for j in range(32):
        v = x[r, s + j]
        wj = w[j]
        for t in range(16):
            q = _nearest_level(inv[t] * v)
            sumqx[t] += wj * q * v
            sumq2[t] += wj * q * q
    d = sumqx[0] / sumq2[0] if sumq2[0] > 0 else _ZERO
    best = d * sumqx[0]
    for t in range(1, 16):
        if sumq2[t] > 0 and sumqx[t] * sumqx[t] > best * sumq2[t]:
            d = sumqx[t] / sumq2[t]
            best = d * sumqx[t]
    return d


@inline
def _put_levels(x, r, s, inv, out, pos):
    """Pick each value's level at scale 1/inv and pack: byte j = L[j] | L[j + 16] << 4."""
    for j in range(16):
        lo = _nearest_index(inv * x[r, s + j])
        hi = _nearest_index(inv * x[r, s + 16 + j])
        out[r, pos + j] = np.uint8(lo | (hi << 4))


@kernel
def iq4_nl_rows(x, qw, out):
    """IQ4_NL rows of x, weighted by the importance weights qw (empty: none)."""
    w = np.empty(QK4_NL, np.float32)
    for r in range(x.shape[0]):
        inv, sumqx, sumq2 = np.empty(16, np.float32), np.empty(16, np.float32), np.empty(16, np.float32)
        for b in range(x.shape[1] // QK4_NL):
            s, o = b * QK4_NL, b * NL_BYTES
            _fill_weights(x, r, s, QK4_NL, qw, w)
            d = _block_scale(x, r, s, w, inv, sumqx, sumq2)
            store_fp16(out, r, o, d)
            _put_levels(x, r, s, inverse(d), out, o + 2)


@kernel
def iq4_xs_rows(x, qw, out):
    """IQ4_XS rows of x, weighted by the importance weights qw (empty: none)."""
    w = np.empty(QK_K, np.float32)
    for r in range(x.shape[0]):
        inv, sumqx, sumq2 = np.empty(16, np.float32), np.empty(16, np.float32), np.empty(16, np.float32)
        scales = np.empty(QK_K // 32, np.float32)
        for b in range(x.shape[1] // QK_K):
            s, o = b * QK_K, b * XS_BYTES
            max_scale = _ZERO
            amax_scale = _ZERO
            _fill_weights(x, r, s, QK_K, qw, w)
            for ib in range(QK_K // 32):
                scales[ib] = _block_scale(x, r, s + 32 * ib, w[32 * ib : 32 * ib + 32], inv, sumqx, sumq2)
                if abs(scales[ib]) > amax_scale:
                    amax_scale = abs(scales[ib])
                    max_scale = scales[ib]
            d = -max_scale / np.float32(32.0)
            store_fp16(out, r, o, d)
            id_ = inverse(d)
            scales_h = 0
            for ib in range(QK_K // 32):
                ls = max(-32, min(31, nearest_int(id_ * scales[ib])))
                dl = d * np.float32(ls)
                _put_levels(x, r, s + 32 * ib, inverse(dl), out, o + 8 + 16 * ib)
                ls += 32
                if ib % 2 == 0:
                    out[r, o + 4 + ib // 2] = ls & 0xF
                else:
                    out[r, o + 4 + ib // 2] |= (ls & 0xF) << 4
                scales_h |= (ls >> 4) << (2 * ib)
            out[r, o + 2] = scales_h & 0xFF
            out[r, o + 3] = scales_h >> 8


@inline
def _dequantize_levels(raw, r, pos, dl, out, s):
    for j in range(16):
        out[r, s + j] = dl * LEVELS[raw[r, pos + j] & 0x0F]
        out[r, s + 16 + j] = dl * LEVELS[raw[r, pos + j] >> 4]


@kernel
def _dequantize_iq4_nl(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // NL_BYTES):
            o = b * NL_BYTES
            _dequantize_levels(raw, r, o + 2, load_fp16(raw, r, o), out, b * QK4_NL)


@kernel
def _dequantize_iq4_xs(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // XS_BYTES):
            o = b * XS_BYTES
            d = load_fp16(raw, r, o)
            scales_h = np.int64(raw[r, o + 2]) | (np.int64(raw[r, o + 3]) << 8)
            for ib in range(QK_K // 32):
                ls = ((np.int64(raw[r, o + 4 + ib // 2]) >> (4 * (ib % 2))) & 0xF) | (((scales_h >> (2 * ib)) & 3) << 4)
                _dequantize_levels(raw, r, o + 8 + 16 * ib, d * np.float32(ls - 32), out, b * QK_K + 32 * ib)


@kernel
def _quantize_iq4_nl(x, out):
    iq4_nl_rows(x, np.empty(0, np.float32), out)


@kernel
def _quantize_iq4_xs(x, out):
    iq4_xs_rows(x, np.empty(0, np.float32), out)


quantize_iq4_nl = quantizer(_quantize_iq4_nl, "IQ4_NL", QK4_NL, NL_BYTES)
quantize_iq4_xs = quantizer(_quantize_iq4_xs, "IQ4_XS", QK_K, XS_BYTES)
dequantize_iq4_nl = dequantizer(_dequantize_iq4_nl, "IQ4_NL", QK4_NL, NL_BYTES)
dequantize_iq4_xs = dequantizer(_dequantize_iq4_xs, "IQ4_XS", QK_K, XS_BYTES)
