"""K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K): super-blocks of 256 weights.

The quantizers reproduce, bit for bit, what llama-quantize writes without an
importance matrix: ggml's `quantize_row_q*_K_ref` and the searches they call
(make_qkx2_quants, make_q3_quants, make_qx_quants). Byte-exactness rests on
three things, each of which the kernels below are careful about:

- Every intermediate is float32, evaluated in C's order. Numba promotes
  float32 mixed with a Python float or int to float64, so all constants are
  np.float32 and every int that meets a float goes through `_f32()`.
  No fastmath (it would reassociate sums and fuse multiply-adds).
- `_nearest_int` is ggml's magic-number rounding done as C does it (add
  1.5 * 2**23 in float32, read the mantissa bits): round half to even, and
  the same results as C for out-of-range input (infinities, NaN, overflowed
  scales).
- Scales are stored through ggml's fp32 -> fp16 (round to nearest even,
  NaN -> 0x7E00) and read back exactly; the stored, rounded values are what
  the second quantization pass divides by.

Block layouts (bytes, little-endian), as ggml's block_q*_K structs:
    Q2_K  84: scales[16] (low nibble scale, high nibble min), qs[64], d, dmin
    Q3_K 110: hmask[32], qs[64], scales[12] (6-bit, packed), d
    Q4_K 144: d, dmin, scales[12] (6-bit scale/min pairs), qs[128]
    Q5_K 176: d, dmin, scales[12], qh[32], qs[128]
    Q6_K 210: ql[128], qh[64], scales[16] (int8), d
    Q8_K 292: d (float32), qs[256] (int8), bsums[16] (int16)
d and dmin are fp16 except in Q8_K, which is not a storage type but the 8-bit
activation format K-quant dot products pair with (ggml's quantize_row_q8_K_ref).

Each public function takes or returns C-contiguous 2-D arrays (one row per
matrix row). Every type has its own small prange driver over rows: Numba does
not cache a driver that takes (or closes over) the block kernel it calls.
Importing this module imports numba, so only modules that need kernels import it.
"""

from __future__ import annotations

import numpy as np

from .ggml_scalar import get_fp16, nearest_int, put_fp16, put_u16
from .rows import dequantizer, helper, inline, kernel, quantizer

QK_K = 256
BLOCK_BYTES = {"q2_k": 84, "q3_k": 110, "q4_k": 144, "q5_k": 176, "q6_k": 210, "q8_k": 292}

_f32 = np.float32
_F0 = _f32(0.0)
_F1 = _f32(1.0)
_GROUP_MAX_EPS = _f32(1e-15)
_TENTH = _f32(0.1)

# ---------------------------------------------------------------- ggml's scale searches


@helper
def _make_qkx2_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """Asymmetric levels 0..nmax for x: a grid search over the scale, refitting scale
    and min by weighted least squares at each step. Returns (scale, -min); L gets the levels."""
    fmax = _f32(nmax)
    lo = x[0]
    hi = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < lo:
            lo = x[i]
        if x[i] > hi:
            hi = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if lo > _F0:
        lo = _F0
    if hi == lo:
        L[:n] = 0
        return _F0, -lo
    iscale = fmax / (hi - lo)
    scale = _F1 / iscale
    best_error = _F0
    for i in range(n):
        l = min(max(nearest_int(iscale * (x[i] - lo)), 0), nmax)
        L[i] = l
        diff = scale * _f32(l) + lo - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    if nstep < 1:
        return scale, -lo
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * _f32(step) + fmax) / (hi - lo)
        sum_l = _F0
        sum_l2 = _F0
        sum_xl = _F0
        for i in range(n):
            l = min(max(nearest_int(iscale * (x[i] - lo)), 0), nmax)
            Laux[i] = l
            w = weights[i]
            fl = _f32(l)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > _F0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > _F0:
                this_min = _F0
                this_scale = sum_xl / sum_l2
            cur_error = _F0
            for i in range(n):
                diff = this_scale * _f32(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                lo = this_min
    return scale, -lo


@helper
def _abs_max(n, x):
    """The element of largest magnitude (the first one on ties) and that magnitude."""
    amax = _F0
    vmax = _F0
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            vmax = x[i]
    return vmax, amax


QX_LANES = 32  # make_qx_quants' 19 candidate scales, one per SIMD lane (two AVX-512 vectors)


@inline
def _qx_level(iscale, v, nmax):
    return min(max(nearest_int(iscale * v), -nmax), nmax - 1)


@helper
def _make_qx_quants(n, nmax, x, weights, L, lanes):
    """ggml's make_qx_quants with rmse_type 1: symmetric levels, then a search over 18
    nearby scales, the error weighted by weights (x**2 without an importance matrix, as
    Q6_K's path gives them; derived from it with one). Returns the scale; L gets levels
    0..2*nmax-1.

    The 19 scales (C's first pass, then its steps -9..9 without 0) do not depend on each
    other, so they are tried at once, one per lane of lanes[3, QX_LANES] (scales, sums of
    l*x*w, sums of l*l*w); each lane adds its terms in C's order. C's choice among them
    is then made in its order, and only the chosen scale's levels are written."""
    vmax, amax = _abs_max(n, x)
    if amax < _GROUP_MAX_EPS:
        L[:n] = 0
        return _F0
    iscales, sumlx, suml2 = lanes[0], lanes[1], lanes[2]
    iscales[0] = _f32(-nmax) / vmax
    for k in range(1, QX_LANES):
        step = k - 10 if k < 10 else k - 9
        iscales[k] = -(_f32(nmax) + _TENTH * _f32(step)) / vmax if k < 19 else _F0
    sumlx[:] = _F0
    suml2[:] = _F0
    for i in range(n):
        xi = x[i]
        w = weights[i]
        for k in range(QX_LANES):
            fl = _f32(_qx_level(iscales[k], xi, nmax))
            sumlx[k] += w * xi * fl
            suml2[k] += w * fl * fl
    scale = sumlx[0] / suml2[0] if suml2[0] != _F0 else _F0
    best = scale * sumlx[0]
    chosen = 0
    for k in range(1, 19):
        if suml2[k] > _F0 and sumlx[k] * sumlx[k] > best * suml2[k]:
            scale = sumlx[k] / suml2[k]
            best = scale * sumlx[k]
            chosen = k
    for i in range(n):
        L[i] = nmax + _qx_level(iscales[chosen], x[i], nmax)
    return scale


@helper
def _make_q3_quants_rmse(n, nmax, x, L):
    """ggml's make_q3_quants with do_rmse: symmetric levels, then up to 5 passes of
    coordinate descent on each level (weights x**2). Returns the scale; L gets 0..2*nmax-1."""
    vmax, amax = _abs_max(n, x)
    if amax < _GROUP_MAX_EPS:
        L[:n] = 0
        return _F0
    iscale = _f32(-nmax) / vmax
    sumlx = _F0
    suml2 = _F0
    for i in range(n):
        l = min(max(nearest_int(iscale * x[i]), -nmax), nmax - 1)
        L[i] = l
        w = x[i] * x[i]
        fl = _f32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = x[i] * x[i]
            fl = _f32(L[i])
            slx = sumlx - w * x[i] * fl
            if slx > _F0:
                sl2 = suml2 - w * fl * fl
                new_l = min(max(nearest_int(x[i] * sl2 / slx), -nmax), nmax - 1)
                if new_l != L[i]:
                    fn = _f32(new_l)
                    slx += w * x[i] * fn
                    sl2 += w * fn * fn
                    if sl2 > _F0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > _F0 else _F0


# ---------------------------------------------------------------- bit packing


@helper
def _pack_2bit(L, out, pos):
    """qs of Q2_K/Q3_K: byte l of each 128-weight half holds weights l, l+32, l+64, l+96."""
    for half in range(0, QK_K, 128):
        for l in range(32):
            out[pos + half // 4 + l] = (
                L[half + l] | (L[half + l + 32] << 2) | (L[half + l + 64] << 4) | (L[half + l + 96] << 6)
            ) & 0xFF


@helper
def _pack_scale_min_k4(scales, mins, inv_scale, inv_min, out, pos):
    """Q4_K/Q5_K's 12 bytes of eight 6-bit (scale, min) pairs; see _scale_min_k4."""
    for j in range(8):
        ls = min(nearest_int(inv_scale * scales[j]) & 0xFF, 63)  # C stores into uint8_t first
        lm = min(nearest_int(inv_min * mins[j]) & 0xFF, 63)
        if j < 4:
            out[pos + j] = ls
            out[pos + j + 4] = lm
        else:
            out[pos + j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            out[pos + j - 4] |= (ls >> 4) << 6
            out[pos + j] |= (lm >> 4) << 6


@helper
def _scale_min_k4(j, raw, pos):
    """ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7)."""
    if j < 4:
        return raw[pos + j] & 63, raw[pos + j + 4] & 63
    sc = (raw[pos + j + 4] & 0xF) | ((raw[pos + j - 4] >> 6) << 4)
    m = (raw[pos + j + 4] >> 4) | ((raw[pos + j] >> 6) << 4)
    return sc, m


@helper
def _q3_scale(j, raw, pos):
    """Q3_K's signed 6-bit scale of sub-block j (0..15): 4 low bits, 2 high bits, minus 32."""
    if j < 8:
        low = np.int64(raw[pos + j]) & 0xF
    else:
        low = np.int64(raw[pos + j - 8]) >> 4
    high = (np.int64(raw[pos + 8 + j % 4]) >> (2 * (j // 4))) & 3
    return (low | (high << 4)) - 32


@helper
def _qkx2_scratch(sub):
    """Per-row scratch of the make_qkx2_quants types, for sub-blocks of `sub` weights:
    levels L (a whole block), Laux, weights, and the sub-blocks' scales and mins."""
    n_sub = QK_K // sub
    return (
        np.empty(QK_K, np.uint8),
        np.empty(sub, np.uint8),
        np.empty(sub, np.float32),
        np.empty(n_sub, np.float32),
        np.empty(n_sub, np.float32),
    )


# ---------------------------------------------------------------- Q2_K


@helper
def _quantize_block_q2_k(x, out, pos):
    L, Laux, weights, scales, mins = _qkx2_scratch(16)
    max_scale = _F0
    max_min = _F0
    for j in range(16):
        xs = x[16 * j : 16 * j + 16]
        for l in range(16):
            weights[l] = abs(xs[l])
        scales[j], mins[j] = _make_qkx2_quants(
            16, 3, xs, weights, L[16 * j : 16 * j + 16], Laux, _f32(-0.5), _f32(0.1), 15, True
        )
        if scales[j] > max_scale:
            max_scale = scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
    q4scale = _f32(15.0)
    sc = pos  # scales[16]: 4-bit scale in the low nibble, 4-bit min in the high one
    if max_scale > _F0:
        iscale = q4scale / max_scale
        for j in range(16):
            out[sc + j] = nearest_int(iscale * scales[j]) & 0xFF
        d = put_fp16(out, pos + 80, max_scale / q4scale)
    else:
        out[sc : sc + 16] = 0
        d = put_fp16(out, pos + 80, _F0)
    if max_min > _F0:
        iscale = q4scale / max_min
        for j in range(16):
            out[sc + j] |= (nearest_int(iscale * mins[j]) << 4) & 0xFF
        dmin = put_fp16(out, pos + 82, max_min / q4scale)
    else:
        dmin = put_fp16(out, pos + 82, _F0)
    for j in range(16):
        dl = d * _f32(out[sc + j] & 0xF)
        if dl == _F0:
            continue  # keeps the first pass's levels, as C does
        ml = dmin * _f32(out[sc + j] >> 4)
        for ii in range(16):
            L[16 * j + ii] = min(max(nearest_int((x[16 * j + ii] + ml) / dl), 0), 3)
    _pack_2bit(L, out, pos + 16)


@kernel
def _quantize_rows_q2_k(x, out):
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            _quantize_block_q2_k(x[r, b * QK_K : (b + 1) * QK_K], out[r], b * 84)


@helper
def _dequantize_row_q2_k(raw, y):
    for b in range(y.size // QK_K):
        pos = b * 84
        d = get_fp16(raw, pos + 80)
        dmin = get_fp16(raw, pos + 82)
        for e in range(QK_K):
            sc = raw[pos + e // 16]
            q = (raw[pos + 16 + (e // 128) * 32 + e % 32] >> (2 * ((e % 128) // 32))) & 3
            y[b * QK_K + e] = d * _f32(sc & 0xF) * _f32(q) - dmin * _f32(sc >> 4)


@kernel
def _dequantize_rows_q2_k(raw, y):
    for r in range(raw.shape[0]):
        _dequantize_row_q2_k(raw[r], y[r])


# ---------------------------------------------------------------- Q3_K


@helper
def _quantize_block_q3_k(x, out, pos):
    L = np.empty(QK_K, np.int8)
    scales = np.empty(16, np.float32)
    max_scale = _F0
    amax = _F0
    for j in range(16):
        scales[j] = _make_q3_quants_rmse(16, 4, x[16 * j : 16 * j + 16], L[16 * j : 16 * j + 16])
        a = abs(scales[j])
        if a > amax:
            amax = a
            max_scale = scales[j]
    sc = pos + 96  # scales[12]: low nibbles of the 16 scales in bytes 0..7, their top 2 bits in 8..11
    out[sc : sc + 12] = 0
    if max_scale != _F0:
        iscale = _f32(-32.0) / max_scale
        for j in range(16):
            l = nearest_int(iscale * scales[j])
            l = ((l + 128) & 0xFF) - 128  # C stores into int8_t before clamping
            l = min(max(l, -32), 31) + 32
            if j < 8:
                out[sc + j] = l & 0xF
            else:
                out[sc + j - 8] |= (l & 0xF) << 4
            out[sc + 8 + j % 4] |= (l >> 4) << (2 * (j // 4))
        d_all = put_fp16(out, pos + 108, _F1 / iscale)
    else:
        d_all = put_fp16(out, pos + 108, _F0)
    for j in range(16):
        d = d_all * _f32(_q3_scale(j, out, sc))
        if d == _F0:
            continue  # keeps the first pass's levels, as C does
        for ii in range(16):
            L[16 * j + ii] = min(max(nearest_int(x[16 * j + ii] / d), -4), 3) + 4
    # the third bit of weight j goes to bit j // 32 of hmask[j % 32]
    out[pos : pos + 32] = 0
    for j in range(QK_K):
        if L[j] > 3:
            out[pos + j % 32] |= 1 << (j // 32)
            L[j] -= 4
    _pack_2bit(L, out, pos + 32)


@kernel
def _quantize_rows_q3_k(x, out):
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            _quantize_block_q3_k(x[r, b * QK_K : (b + 1) * QK_K], out[r], b * 110)


@helper
def _dequantize_row_q3_k(raw, y):
    for b in range(y.size // QK_K):
        pos = b * 110
        d_all = get_fp16(raw, pos + 108)
        for j in range(16):
            dl = d_all * _f32(_q3_scale(j, raw, pos + 96))
            for e in range(16 * j, 16 * j + 16):
                q = (raw[pos + 32 + (e // 128) * 32 + e % 32] >> (2 * ((e % 128) // 32))) & 3
                high = (raw[pos + e % 32] >> (e // 32)) & 1  # set: q as is; clear: q - 4
                y[b * QK_K + e] = dl * _f32(np.int64(q) - (0 if high else 4))


@kernel
def _dequantize_rows_q3_k(raw, y):
    for r in range(raw.shape[0]):
        _dequantize_row_q3_k(raw[r], y[r])


# ---------------------------------------------------------------- Q4_K and Q5_K


@helper
def _qkx2_sub_blocks(x, nmax, rmin, nstep, L, Laux, weights, scales, mins):
    """Q4_K/Q5_K's first pass: make_qkx2_quants on each 32-weight sub-block, weighted by
    rms + |x|. Returns the largest scale and the largest min."""
    max_scale = _F0
    max_min = _F0
    for j in range(8):
        xs = x[32 * j : 32 * j + 32]
        sum_x2 = _F0
        for l in range(32):
            sum_x2 += xs[l] * xs[l]
        av_x = np.sqrt(sum_x2 / _f32(32.0))
        for l in range(32):
            weights[l] = av_x + abs(xs[l])
        scales[j], mins[j] = _make_qkx2_quants(
            32, nmax, xs, weights, L[32 * j : 32 * j + 32], Laux, rmin, _f32(0.1), nstep, False
        )
        if scales[j] > max_scale:
            max_scale = scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
    return max_scale, max_min


@helper
def _requantize_k4(x, nmax, out, pos, L, max_scale, max_min, scales, mins):
    """Store d, dmin and the packed 6-bit scales, then requantize each sub-block with
    the stored (rounded) scale and min."""
    sixty3 = _f32(63.0)
    inv_scale = sixty3 / max_scale if max_scale > _F0 else _F0
    inv_min = sixty3 / max_min if max_min > _F0 else _F0
    _pack_scale_min_k4(scales, mins, inv_scale, inv_min, out, pos + 4)
    d_all = put_fp16(out, pos, max_scale / sixty3)
    dmin_all = put_fp16(out, pos + 2, max_min / sixty3)
    for j in range(8):
        sc, m = _scale_min_k4(j, out, pos + 4)
        d = d_all * _f32(sc)
        if d == _F0:
            continue  # keeps the first pass's levels, as C does
        dm = dmin_all * _f32(m)
        for ii in range(32):
            L[32 * j + ii] = min(max(nearest_int((x[32 * j + ii] + dm) / d), 0), nmax)


@helper
def _quantize_block_q4_k(x, out, pos):
    L, Laux, weights, scales, mins = _qkx2_scratch(32)
    max_scale, max_min = _qkx2_sub_blocks(x, 15, _f32(-1.0), 20, L, Laux, weights, scales, mins)
    _requantize_k4(x, 15, out, pos, L, max_scale, max_min, scales, mins)
    qs = pos + 16
    for chunk in range(4):
        for l in range(32):
            out[qs + 32 * chunk + l] = L[64 * chunk + l] | (L[64 * chunk + l + 32] << 4)


@helper
def _quantize_block_q5_k(x, out, pos):
    L, Laux, weights, scales, mins = _qkx2_scratch(32)
    max_scale, max_min = _qkx2_sub_blocks(x, 31, _f32(-0.5), 15, L, Laux, weights, scales, mins)
    _requantize_k4(x, 31, out, pos, L, max_scale, max_min, scales, mins)
    qh = pos + 16
    ql = pos + 48
    for l in range(32):
        out[qh + l] = 0
    # weight 64c + l: low nibble of ql[32c + l], fifth bit in bit 2c of qh[l]; weight 64c + 32 + l:
    # high nibble, bit 2c + 1
    for chunk in range(4):
        for l in range(32):
            l1 = L[64 * chunk + l]
            l2 = L[64 * chunk + l + 32]
            if l1 > 15:
                l1 -= 16
                out[qh + l] |= 1 << (2 * chunk)
            if l2 > 15:
                l2 -= 16
                out[qh + l] |= 2 << (2 * chunk)
            out[ql + 32 * chunk + l] = l1 | (l2 << 4)


@helper
def _dequantize_row_k4(raw, y, block_bytes, with_fifth_bit):
    """Q4_K and Q5_K: d * scale * q - dmin * min per 32-weight sub-block; Q5_K adds
    qh[32] (bit j of qh[l] is the fifth bit of weight l of sub-block j) before qs."""
    qs = 48 if with_fifth_bit else 16
    for b in range(y.size // QK_K):
        pos = b * block_bytes
        d = get_fp16(raw, pos)
        dmin = get_fp16(raw, pos + 2)
        for j in range(8):
            sc, m = _scale_min_k4(j, raw, pos + 4)
            dl = d * _f32(sc)
            ml = dmin * _f32(m)
            for l in range(32):
                q = (raw[pos + qs + 32 * (j // 2) + l] >> (4 * (j % 2))) & 0xF
                if with_fifth_bit:
                    q += 16 * ((raw[pos + 16 + l] >> j) & 1)
                y[b * QK_K + 32 * j + l] = dl * _f32(q) - ml


@kernel
def _quantize_rows_q4_k(x, out):
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            _quantize_block_q4_k(x[r, b * QK_K : (b + 1) * QK_K], out[r], b * 144)


@kernel
def _quantize_rows_q5_k(x, out):
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            _quantize_block_q5_k(x[r, b * QK_K : (b + 1) * QK_K], out[r], b * 176)


@kernel
def _dequantize_rows_q4_k(raw, y):
    for r in range(raw.shape[0]):
        _dequantize_row_k4(raw[r], y[r], 144, False)


@kernel
def _dequantize_rows_q5_k(raw, y):
    for r in range(raw.shape[0]):
        _dequantize_row_k4(raw[r], y[r], 176, True)


# ---------------------------------------------------------------- Q6_K


@helper
def _quantize_block_q6_k(x, out, pos):
    L = np.empty(QK_K, np.int8)
    scales = np.empty(16, np.float32)
    weights = np.empty(16, np.float32)
    lanes = np.empty((3, QX_LANES), np.float32)
    for ib in range(16):
        xs = x[16 * ib : 16 * ib + 16]
        for l in range(16):
            weights[l] = xs[l] * xs[l]  # rmse_type 1's weights
        scales[ib] = _make_qx_quants(16, 32, xs, weights, L[16 * ib : 16 * ib + 16], lanes)
    store_q6_k(x, L, scales, out, pos)


@helper
def store_q6_k(x, L, scales, out, pos):
    """Q6_K's block from its 16 sub-block scales and first-pass levels L (0..63): the scale
    of largest magnitude sets d, the others become int8 multiples of it, and the levels are
    found again with the stored scales (those of a zero scale stay L's)."""
    max_scale = _F0
    max_abs_scale = _F0
    for ib in range(16):
        a = abs(scales[ib])
        if a > max_abs_scale:
            max_abs_scale = a
            max_scale = scales[ib]
    if max_abs_scale < _GROUP_MAX_EPS:
        out[pos : pos + 210] = 0
        return
    iscale = _f32(-128.0) / max_scale
    d_all = put_fp16(out, pos + 208, _F1 / iscale)
    sc = pos + 192  # int8 scales[16]
    for ib in range(16):
        out[sc + ib] = min(nearest_int(iscale * scales[ib]), 127) & 0xFF
    for j in range(16):
        s = np.int64(out[sc + j])
        d = d_all * _f32(s - 256 if s > 127 else s)
        if d == _F0:
            continue  # keeps the first pass's levels, as C does
        for ii in range(16):
            L[16 * j + ii] = min(max(nearest_int(x[16 * j + ii] / d), -32), 31) + 32
    # per 128 weights: ql holds the low nibbles of weights l and l+64 (bytes 0..31) and of
    # l+32 and l+96 (bytes 32..63); qh[l] holds the 2 high bits of l, l+32, l+64, l+96
    for half in range(2):
        ql = pos + 64 * half
        qh = pos + 128 + 32 * half
        for l in range(32):
            a = L[128 * half + l]
            b = L[128 * half + l + 32]
            c = L[128 * half + l + 64]
            e = L[128 * half + l + 96]
            out[ql + l] = (a & 0xF) | ((c & 0xF) << 4)
            out[ql + l + 32] = (b & 0xF) | ((e & 0xF) << 4)
            out[qh + l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)


@kernel
def _quantize_rows_q6_k(x, out):
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            _quantize_block_q6_k(x[r, b * QK_K : (b + 1) * QK_K], out[r], b * 210)


@helper
def _dequantize_row_q6_k(raw, y):
    for b in range(y.size // QK_K):
        pos = b * 210
        d = get_fp16(raw, pos + 208)
        for e in range(QK_K):
            half = e // 128
            quarter = (e % 128) // 32  # which of l, l+32, l+64, l+96
            l = e % 32
            low = (raw[pos + 64 * half + 32 * (quarter % 2) + l] >> (4 * (quarter // 2))) & 0xF
            high = (raw[pos + 128 + 32 * half + l] >> (2 * quarter)) & 3
            q = np.int64(low | (high << 4)) - 32
            s = np.int64(raw[pos + 192 + e // 16])
            y[b * QK_K + e] = d * _f32(s - 256 if s > 127 else s) * _f32(q)


@kernel
def _dequantize_rows_q6_k(raw, y):
    for r in range(raw.shape[0]):
        _dequantize_row_q6_k(raw[r], y[r])


# ---------------------------------------------------------------- Q8_K


@helper
def _quantize_row_q8_k(x, out):
    for b in range(x.size // QK_K):
        xb = x[b * QK_K : (b + 1) * QK_K]
        pos = b * 292
        vmax, amax = _abs_max(QK_K, xb)
        if amax == _F0:
            # ggml leaves bsums untouched here; a zeroed block is what it writes into a fresh buffer
            out[pos : pos + 292] = 0
            continue
        iscale = _f32(-127.0) / vmax
        for j in range(16):
            total = 0
            for ii in range(16):
                v = min(nearest_int(iscale * xb[16 * j + ii]), 127)
                v = ((v + 128) & 0xFF) - 128  # int8_t
                out[pos + 4 + 16 * j + ii] = v & 0xFF
                total += v
            put_u16(out, pos + 260 + 2 * j, total & 0xFFFF)
        bits = np.float32(_F1 / iscale).view(np.uint32)  # d is a plain float32
        for k in range(4):
            out[pos + k] = (bits >> (8 * k)) & 0xFF


@helper
def _dequantize_row_q8_k(raw, y):
    for b in range(y.size // QK_K):
        pos = b * 292
        bits = np.uint32(0)
        for k in range(4):
            bits |= np.uint32(raw[pos + k]) << np.uint32(8 * k)
        d = np.uint32(bits).view(np.float32)
        for e in range(QK_K):
            q = np.int64(raw[pos + 4 + e])
            y[b * QK_K + e] = d * _f32(q - 256 if q > 127 else q)


@kernel
def _quantize_rows_q8_k(x, out):
    for r in range(x.shape[0]):
        _quantize_row_q8_k(x[r], out[r])


@kernel
def _dequantize_rows_q8_k(raw, y):
    for r in range(raw.shape[0]):
        _dequantize_row_q8_k(raw[r], y[r])


# ---------------------------------------------------------------- public API


quantize_q2_k = quantizer(_quantize_rows_q2_k, "Q2_K", QK_K, BLOCK_BYTES["q2_k"])
quantize_q3_k = quantizer(_quantize_rows_q3_k, "Q3_K", QK_K, BLOCK_BYTES["q3_k"])
quantize_q4_k = quantizer(_quantize_rows_q4_k, "Q4_K", QK_K, BLOCK_BYTES["q4_k"])
quantize_q5_k = quantizer(_quantize_rows_q5_k, "Q5_K", QK_K, BLOCK_BYTES["q5_k"])
quantize_q6_k = quantizer(_quantize_rows_q6_k, "Q6_K", QK_K, BLOCK_BYTES["q6_k"])
quantize_q8_k = quantizer(_quantize_rows_q8_k, "Q8_K", QK_K, BLOCK_BYTES["q8_k"])
dequantize_q2_k = dequantizer(_dequantize_rows_q2_k, "Q2_K", QK_K, BLOCK_BYTES["q2_k"])
dequantize_q3_k = dequantizer(_dequantize_rows_q3_k, "Q3_K", QK_K, BLOCK_BYTES["q3_k"])
dequantize_q4_k = dequantizer(_dequantize_rows_q4_k, "Q4_K", QK_K, BLOCK_BYTES["q4_k"])
dequantize_q5_k = dequantizer(_dequantize_rows_q5_k, "Q5_K", QK_K, BLOCK_BYTES["q5_k"])
dequantize_q6_k = dequantizer(_dequantize_rows_q6_k, "Q6_K", QK_K, BLOCK_BYTES["q6_k"])
dequantize_q8_k = dequantizer(_dequantize_rows_q8_k, "Q8_K", QK_K, BLOCK_BYTES["q8_k"])
