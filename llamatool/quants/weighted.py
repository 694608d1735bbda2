"""Quantization weighted by an importance matrix: ggml's quantize_row_<type>_impl with
quant_weights, what llama-quantize --imatrix writes, byte for byte.

    quantize_weighted_<type>(x: float32[n_rows, n_per_row], qw: float32[n_per_row]) -> raw rows

qw is the imatrix's mean of x**2 per input column (the same for every row of a matrix).
The searches are ggml's, translated statement by statement in float32 (C's order, no
fused multiply-adds: ggml-base, where they live, is built for baseline x86-64):

    Q4_0, Q5_0   make_qx_quants (symmetric, weights qw * sqrt(sigma2 + x**2))
    Q4_1, Q5_1   make_qkx3_quants (scale and min by weighted least squares)
    Q2_K         make_qkx3_quants per 16, then make_qp_quants for the 4-bit scales and mins
    Q3_K         make_qx_quants per 16, then make_qx_quants for the 6-bit scales
    Q4_K, Q5_K   make_qkx3_quants per 32, then make_qp_quants for the 6-bit scales and mins
    Q6_K         make_qx_quants per 16 with qw itself as the weights
    IQ4_NL/XS    iquants' own search, weights qw * sqrt(sigma2 + x**2)
"""

from __future__ import annotations

import numpy as np

from .ggml_scalar import get_fp16, nearest_int, put_fp16
from .iquants import iq4_nl_rows, iq4_xs_rows
from .kquants import QK_K, QX_LANES, _make_qkx2_quants, _make_qx_quants, _pack_2bit, _q3_scale, _scale_min_k4, store_q6_k
from .rows import helper, kernel, run_rows
from ..errors import LlamatoolError

_f32 = np.float32
_F0 = _f32(0.0)
_F1 = _f32(1.0)
_GROUP_MAX_EPS = _f32(1e-15)
_TENTH = _f32(0.1)

BLOCK = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
         "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
         "IQ4_NL": (32, 18), "IQ4_XS": (256, 136), "IQ2_XXS": (256, 66), "IQ3_S": (256, 110), "IQ2_XS": (256, 74), "IQ3_XXS": (256, 98), "IQ2_S": (256, 82), "IQ1_S": (256, 50), "IQ1_M": (256, 56)}  # fmt: skip


# ----------------------------------------------------------------------------- ggml's searches


@helper
def _make_qkx3_quants(n, nmax, x, weights, L, Laux):
    """make_qkx3_quants as the *_impl functions call it (weights given, rmin -0.9, rdelta
    0.05, 36 steps, squared errors): the same search as kquants' make_qkx2_quants."""
    return _make_qkx2_quants(n, nmax, x, weights, L, Laux, _f32(-0.9), _f32(0.05), 36, False)


@helper
def _weights_sum(qw, x, sigma2, out):
    """out = qw * sqrt(sigma2 + x**2); returns their sum (the sub-block's weight)."""
    _block_weights(qw, x, sigma2, out)
    total = _F0
    for j in range(out.size):
        total += out[j]
    return total


@helper
def _make_qp_quants(n, nmax, x, L, qw):
    """make_qp_quants: non-negative levels 0..nmax for the scales x (L is uint8, as in C)."""
    vmax = _F0
    for i in range(n):
        vmax = vmax if vmax > x[i] else x[i]
    if vmax < _GROUP_MAX_EPS:
        L[:n] = 0
        return _F0
    iscale = _f32(nmax) / vmax
    for i in range(n):
        L[i] = nearest_int(iscale * x[i]) & 0xFF
    scale = _F1 / iscale
    best_mse = _F0
    for i in range(n):
        diff = x[i] - scale * _f32(L[i])
        best_mse += qw[i] * diff * diff
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (_TENTH * _f32(step) + _f32(nmax)) / vmax
        scale_is = _F1 / iscale_is
        mse = _F0
        for i in range(n):
            l = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * _f32(l)
            mse += qw[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = _F0
    suml2 = _F0
    for i in range(n):
        l = min(nmax, nearest_int(iscale * x[i]))
        L[i] = l & 0xFF
        w = qw[i]
        sumlx += w * x[i] * _f32(l)
        suml2 += w * _f32(l) * _f32(l)
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = qw[i]
            fl = _f32(L[i])
            slx = sumlx - w * x[i] * fl
            sl2 = suml2 - w * fl * fl
            if slx > _F0 and sl2 > _F0:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != np.int64(L[i]):
                    slx += w * x[i] * _f32(new_l)
                    sl2 += w * _f32(new_l) * _f32(new_l)
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > _F0 else _F0


@helper
def _sum_squares(x, n):
    total = _F0
    for j in range(n):
        total += x[j] * x[j]
    return total


@helper
def _block_weights(qw, x, sigma2, out):
    for j in range(out.size):
        out[j] = qw[j] * np.sqrt(sigma2 + x[j] * x[j])


# ----------------------------------------------------------------------------- legacy 32-blocks


@helper
def _legacy_rows(x, qw, out, kind):
    """kind: 0 Q4_0, 1 Q4_1, 2 Q5_0, 3 Q5_1 (quantize_row_q*_impl)."""
    block_bytes = (18, 20, 22, 24)[kind]
    nmax = (8, 15, 16, 31)[kind]
    n = x.shape[1]
    weight = np.empty(32, np.float32)
    L = np.empty(32, np.int64)
    Lu = np.empty(32, np.uint8)
    Laux = np.empty(32, np.uint8)
    lanes = np.empty((3, QX_LANES), np.float32)
    for r in range(x.shape[0]):
        row = x[r]
        sigma2 = _sum_squares(row, n) / _f32(n)
        for b in range(n // 32):
            xb = row[32 * b : 32 * b + 32]
            _block_weights(qw[32 * b : 32 * b + 32], xb, sigma2, weight)
            o = b * block_bytes
            if kind == 0 or kind == 2:
                d = _make_qx_quants(32, nmax, xb, weight, L, lanes)
                put_fp16(out[r], o, d)
                q0 = o + (2 if kind == 0 else 6)
            else:
                d, m = _make_qkx3_quants(32, nmax, xb, weight, Lu, Laux)
                put_fp16(out[r], o, d)
                put_fp16(out[r], o + 2, -m)  # C stores -the_min
                for j in range(32):
                    L[j] = Lu[j]
                q0 = o + (4 if kind == 1 else 8)
            qh = 0
            for j in range(16):
                out[r, q0 + j] = ((L[j] & 0xF) | ((L[j + 16] & 0xF) << 4)) & 0xFF
                qh |= ((L[j] >> 4) & 1) << j
                qh |= ((L[j + 16] >> 4) & 1) << (j + 16)
            if kind >= 2:
                for k in range(4):
                    out[r, q0 - 4 + k] = (qh >> (8 * k)) & 0xFF


# ----------------------------------------------------------------------------- K-quants


@kernel
def _q2_k_rows(x, qw, out):
    L = np.empty(QK_K, np.uint8)
    Laux = np.empty(16, np.uint8)
    mins = np.empty(16, np.float32)
    scales = np.empty(16, np.float32)
    sw = np.empty(16, np.float32)
    weight = np.empty(16, np.float32)
    Ls = np.empty(16, np.uint8)
    Lm = np.empty(16, np.uint8)
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            xb = x[r, b * QK_K : (b + 1) * QK_K]
            y = out[r]
            pos = b * 84
            sigma2 = _sum_squares(xb, QK_K) / _f32(QK_K)
            for j in range(16):
                sw[j] = _weights_sum(qw[b * QK_K + 16 * j : b * QK_K + 16 * j + 16], xb[16 * j : 16 * j + 16], sigma2, weight)
                scales[j], mins[j] = _make_qkx3_quants(16, 3, xb[16 * j : 16 * j + 16], weight, L[16 * j : 16 * j + 16], Laux)
            dm = _make_qp_quants(16, 15, scales, Ls, sw)
            mm = _make_qp_quants(16, 15, mins, Lm, sw)
            dm = put_fp16(y, pos + 80, dm)
            mm = put_fp16(y, pos + 82, mm)
            for j in range(16):
                y[pos + j] = (Ls[j] | (Lm[j] << 4)) & 0xFF
            for j in range(16):
                d = dm * _f32(y[pos + j] & 0xF)
                if d == _F0:
                    continue
                m = mm * _f32(y[pos + j] >> 4)
                for ii in range(16):
                    L[16 * j + ii] = min(max(nearest_int((xb[16 * j + ii] + m) / d), 0), 3)
            _pack_2bit(L, y, pos + 16)


@kernel
def _q3_k_rows(x, qw, out):
    L = np.empty(QK_K, np.int64)
    scales = np.empty(16, np.float32)
    weight = np.empty(16, np.float32)
    sw = np.empty(16, np.float32)
    Ls = np.empty(16, np.int64)
    lanes = np.empty((3, QX_LANES), np.float32)
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            xb = x[r, b * QK_K : (b + 1) * QK_K]
            y = out[r]
            pos = b * 110
            sigma2 = _f32(2.0) * _sum_squares(xb, QK_K) / _f32(QK_K)
            for j in range(16):
                sw[j] = _weights_sum(qw[b * QK_K + 16 * j : b * QK_K + 16 * j + 16], xb[16 * j : 16 * j + 16], sigma2, weight)
                scales[j] = _make_qx_quants(16, 4, xb[16 * j : 16 * j + 16], weight, L[16 * j : 16 * j + 16], lanes)
            sc = pos + 96
            y[sc : sc + 12] = 0
            d_block = _make_qx_quants(16, 32, scales, sw, Ls, lanes)
            for j in range(16):
                l = Ls[j]
                if j < 8:
                    y[sc + j] = l & 0xF
                else:
                    y[sc + j - 8] |= (l & 0xF) << 4
                l >>= 4
                y[sc + 8 + j % 4] |= (l << (2 * (j // 4))) & 0xFF
            d_all = put_fp16(y, pos + 108, d_block)
            for j in range(16):
                d = d_all * _f32(_q3_scale(j, y, sc))
                if d == _F0:
                    continue
                for ii in range(16):
                    L[16 * j + ii] = min(max(nearest_int(xb[16 * j + ii] / d), -4), 3) + 4
            y[pos : pos + 32] = 0
            for j in range(QK_K):
                if L[j] > 3:
                    y[pos + j % 32] |= 1 << (j // 32)
                    L[j] -= 4
            _pack_2bit(L, y, pos + 32)


@helper
def _k4_rows(x, qw, out, nmax, block_bytes):
    """Q4_K (nmax 15, 144 bytes) and Q5_K (nmax 31, 176 bytes)."""
    L = np.empty(QK_K, np.uint8)
    Laux = np.empty(32, np.uint8)
    Ls = np.empty(8, np.uint8)
    Lm = np.empty(8, np.uint8)
    weights = np.empty(32, np.float32)
    sw = np.empty(8, np.float32)
    mins = np.empty(8, np.float32)
    scales = np.empty(8, np.float32)
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            xb = x[r, b * QK_K : (b + 1) * QK_K]
            y = out[r]
            pos = b * block_bytes
            sigma2 = _f32(2.0) * _sum_squares(xb, QK_K) / _f32(QK_K)
            for j in range(8):
                sw[j] = _weights_sum(qw[b * QK_K + 32 * j : b * QK_K + 32 * j + 32], xb[32 * j : 32 * j + 32], sigma2, weights)
                scales[j], mins[j] = _make_qkx3_quants(32, nmax, xb[32 * j : 32 * j + 32], weights, L[32 * j : 32 * j + 32], Laux)
            d_block = _make_qp_quants(8, 63, scales, Ls, sw)
            m_block = _make_qp_quants(8, 63, mins, Lm, sw)
            s = pos + 4
            for j in range(8):
                ls = Ls[j]
                lm = Lm[j]
                if nmax == 31:  # only ggml's Q5_K clamps them: Q4_K stores a wrapped level as is
                    ls = min(63, ls)
                    lm = min(63, lm)
                if j < 4:
                    y[s + j] = ls
                    y[s + j + 4] = lm
                else:
                    y[s + j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
                    y[s + j - 4] |= (ls >> 4) << 6
                    y[s + j] |= (lm >> 4) << 6
            d_all = put_fp16(y, pos, d_block)
            dmin_all = put_fp16(y, pos + 2, m_block)
            for j in range(8):
                sc, m = _scale_min_k4(j, y, s)
                d = d_all * _f32(sc)
                if d == _F0:
                    continue
                dm = dmin_all * _f32(m)
                for ii in range(32):
                    L[32 * j + ii] = min(max(nearest_int((xb[32 * j + ii] + dm) / d), 0), nmax)
            if nmax == 15:
                for chunk in range(4):
                    for l in range(32):
                        y[pos + 16 + 32 * chunk + l] = L[64 * chunk + l] | (L[64 * chunk + l + 32] << 4)
            else:
                qh = pos + 16
                ql = pos + 48
                y[qh : qh + 32] = 0
                for chunk in range(4):
                    for l in range(32):
                        l1 = L[64 * chunk + l]
                        l2 = L[64 * chunk + l + 32]
                        if l1 > 15:
                            l1 -= 16
                            y[qh + l] |= 1 << (2 * chunk)
                        if l2 > 15:
                            l2 -= 16
                            y[qh + l] |= 2 << (2 * chunk)
                        y[ql + 32 * chunk + l] = l1 | (l2 << 4)


@kernel
def _q6_k_rows(x, qw, out):
    L = np.empty(QK_K, np.int64)
    scales = np.empty(16, np.float32)
    lanes = np.empty((3, QX_LANES), np.float32)
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            xb = x[r, b * QK_K : (b + 1) * QK_K]
            for ib in range(16):
                scales[ib] = _make_qx_quants(16, 32, xb[16 * ib : 16 * ib + 16], qw[b * QK_K + 16 * ib : b * QK_K + 16 * ib + 16],
                                             L[16 * ib : 16 * ib + 16], lanes)  # fmt: skip
            store_q6_k(xb, L, scales, out[r], b * 210)


# ----------------------------------------------------------------------------- public API


@kernel
def _q4_0(x, qw, out):
    _legacy_rows(x, qw, out, 0)


@kernel
def _q4_1(x, qw, out):
    _legacy_rows(x, qw, out, 1)


@kernel
def _q5_0(x, qw, out):
    _legacy_rows(x, qw, out, 2)


@kernel
def _q5_1(x, qw, out):
    _legacy_rows(x, qw, out, 3)


@kernel
def _q4_k(x, qw, out):
    _k4_rows(x, qw, out, 15, 144)


@kernel
def _q5_k(x, qw, out):
    _k4_rows(x, qw, out, 31, 176)


_KERNELS = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q2_K": _q2_k_rows, "Q3_K": _q3_k_rows,
            "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k_rows, "IQ4_NL": iq4_nl_rows, "IQ4_XS": iq4_xs_rows}  # fmt: skip


# The 1-3-bit IQ types (quants.lowbit, which imports this module): ggml quantizes them only
# with weights. Their kernels take the grid tables, which their wrappers pass.
_LOWBIT = {"IQ2_XXS": "iq2_xxs_weighted", "IQ3_S": "iq3_s_weighted", "IQ2_XS": "iq2_xs_weighted", "IQ3_XXS": "iq3_xxs_weighted", "IQ2_S": "iq2_s_weighted", "IQ1_S": "iq1_s_weighted",
           "IQ1_M": "iq1_m_weighted"}


def has_weighted(type_name: str) -> bool:
    """True if an importance matrix changes how ggml quantizes this type (and we do it)."""
    return type_name in _KERNELS or type_name in _LOWBIT


def _kernel_for(type_name: str):
    if type_name in _LOWBIT:
        from . import lowbit

        return getattr(lowbit, _LOWBIT[type_name])
    return _KERNELS[type_name]


def weighted_kernel(type_name: str, qw: np.ndarray):
    """The serial kernel(x, out) quantizing rows of x to type_name weighted by qw."""
    fn = _kernel_for(type_name)
    qw = np.ascontiguousarray(qw, dtype=np.float32)

    def run(x: np.ndarray, out: np.ndarray) -> None:
        fn(x, qw, out)

    return run


def quantize_weighted(type_name: str, x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """float32[n_rows, n_per_row] weighted by qw[n_per_row] -> raw rows of type_name."""
    block, size = BLOCK[type_name]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % block or qw.shape != (x.shape[1],):
        raise LlamatoolError(f"{type_name}: rows must be whole blocks of {block} with one weight per column")
    out = np.zeros((x.shape[0], x.shape[1] // block * size), np.uint8)
    run_rows(weighted_kernel(type_name, qw), x, out, 4 * x.shape[1])
    return out
