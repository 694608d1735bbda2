"""The 1-3-bit IQ types: groups of 8 (or 4) weights as indices into fixed grids of points.

Each group of weights is stored as the index of a grid point (magnitudes) plus sign bits
and a scale per 32; ggml's quantizers search the scale and, for each group, the grid point
nearest to the scaled magnitudes. They need an importance matrix (quantize_row_*_impl
asserts one): they exist here only as weighted kernels (quants.weighted calls them).

The grids come from gguf-py (quants.grids): the quantizer's points are 2l + 1 for a
point's level indices l. The neighbour lists the search uses for scaled
points that are not on the grid are computed from the grid as ggml's iq2xs_init_impl
does: for every off-grid point, the grid points at its `nwant` smallest distinct squared
distances, ordered by (distance, index).

Block layouts (little-endian):
  IQ2_XXS  d, qs u32[16]: per 32 weights two u32: byte k of the first is the grid index of
           weights 8k..8k+7 (256 points of 8 magnitudes in {8, 25, 43}); the second holds
           four 7-bit sign indices (bits 7k) and the 4-bit scale ls (bits 28-31):
           x = d * (0.5 + ls) / 4 * grid * sign, the sign's 8th bit making the count even.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .ggml_scalar import fp16_bits_to_fp32, fp32_to_fp16_bits, load_fp16, nearest_int, store_fp16
from .grids import IQ1_S_LEVELS, IQ2_S_GRID, IQ2_XS_GRID, IQ2_XXS_GRID, IQ3_S_GRID, IQ3_XXS_GRID, KSIGNS, grid_levels
from .rows import dequantizer, helper, inline, kernel, quantizer
from .weighted import _make_qp_quants

QK_K = 256
IQ2_XXS_BYTES = 66
IQ3_S_BYTES = 110
IQ2_XS_BYTES = 74
IQ3_XXS_BYTES = 98
IQ2_S_BYTES = 82
IQ1_S_BYTES = 50
IQ1_M_BYTES = 56
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)
_TENTH = np.float32(0.1)
_GROUP_MAX_EPS = np.float32(1e-15)
_GROUP_MAX_EPS_IQ3_XXS = np.float32(1e-8)
_GROUP_MAX_EPS_IQ2_S = np.float32(1e-8)
_GROUP_MAX_EPS_IQ1_S = np.float32(1e-12)
_GROUP_MAX_EPS_IQ1_M = np.float32(1e-7)
_IQ1_DELTA = np.float32(0.125)
_FLT_MAX = np.float32(np.finfo(np.float32).max)
_KMAP_2BIT = 43692  # ggml's kmap_size: every 8-digit base-4 key up to 0b10...10 (digits 0..2)


# ----------------------------------------------------------------------------- grids from gguf-py


def _keys(levels: np.ndarray, bits: int) -> np.ndarray:
    return (levels.astype(np.int64) << (bits * np.arange(levels.shape[1]))).sum(axis=1)


@lru_cache(maxsize=None)
def neighbour_tables(type_name: str, nwant: int, kmap_size: int, bits: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grid points 2l + 1 as int8[n, group], kmap int32[kmap_size], neighbours uint16[...]),
    as iq2xs_init_impl / iq3xs_init_impl build them: kmap[key] is the grid index of a point
    on the grid, or -(offset + 1) where neighbours[offset] is the count of its neighbours,
    which follow."""
    levels, _ = grid_levels(type_name)
    points = (2 * levels.astype(np.int32) + 1).astype(np.int8)
    kmap = np.full(kmap_size, -1, np.int32)
    kmap[_keys(levels, bits)] = np.arange(len(levels), dtype=np.int32)
    missing = np.flatnonzero(kmap < 0)
    group, n = levels.shape[1], len(levels)
    grid = points.astype(np.float32)  # whole numbers below 2**24: the distances are exact
    norms = (grid * grid).sum(axis=1)
    parts, counts = [], []
    step = max(64, (1 << 22) // n)  # bounds the distance table's size
    for start in range(0, len(missing), step):
        keys = missing[start : start + step]
        pos = (2 * ((keys[:, None] >> (bits * np.arange(group))) & ((1 << bits) - 1)) + 1).astype(np.float32)
        d2 = (pos * pos).sum(axis=1)[:, None] - 2 * (pos @ grid.T) + norms
        table, count = _nearest_lists(d2, nwant)
        parts.append(table)
        counts.append(count)
    count = np.concatenate(counts)
    offsets = np.concatenate([[0], np.cumsum(count + 1)[:-1]])
    kmap[missing] = -(offsets + 1)
    return points, kmap, np.concatenate(parts).astype(np.uint16)


def _nearest_lists(d2: np.ndarray, nwant: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of squared distances d2[keys, points] (whole numbers): the points at its
    nwant smallest distinct distances, by (distance, index) as ggml's comparator orders
    them, each list led by its count; (the lists one after another, the counts). Only the
    points kept are sorted: a full sort of every row cost 5 times as much (IQ1_S: 2048
    points for each of 41,644 keys)."""
    rows, n = d2.shape
    limit = d2.min(axis=1)
    for _ in range(nwant - 1):  # the next distinct distance (none left: every point)
        limit = np.where(d2 > limit[:, None], d2, np.inf).min(axis=1)
    keep = d2 <= limit[:, None]
    count = keep.sum(axis=1)
    r, c = np.nonzero(keep)
    distance = d2[r, c].astype(np.int64)
    order = np.sort((r * (distance.max() + 1) + distance) * n + c) % n
    starts = np.concatenate([[0], np.cumsum(count + 1)[:-1]])
    table = np.empty(len(order) + rows, np.int64)
    is_count = np.zeros(len(table), bool)
    is_count[starts] = True
    table[starts] = count
    table[~is_count] = order
    return table, count


# ----------------------------------------------------------------------------- shared search steps


@inline
def _best_neighbour(neighbours, start, grid, xval, weight, o, scale, L):
    """iq2_find_best_neighbour / iq3_find_best_neighbour: of the listed neighbours, the grid
    point nearest (weighted) to xval[o:o + group] / scale; its levels into L[o:o + group];
    returns its index."""
    group = grid.shape[1]
    best_d2 = _FLT_MAX
    best = -1
    for j in range(1, np.int64(neighbours[start]) + 1):
        g = np.int64(neighbours[start + j])
        d2 = _F0
        for i in range(group):
            diff = scale * np.float32(grid[g, i]) - xval[o + i]
            d2 += weight[o + i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            best = g
    for i in range(group):
        L[o + i] = (grid[best, i] - 1) // 2
    return best


@inline
def _key(L, o, group, bits):
    u = 0
    for i in range(group):
        u |= np.int64(L[o + i]) << (bits * i)
    return u


@inline
def _grid_index(kmap, neighbours, grid, xval, weight, o, scale, L, bits):
    """The grid index of the levels L[o:o + group] (`bits` bits each), or of the neighbour
    that replaces them (whose levels then overwrite L[o:o + group]); negative (-1 - index)
    when it is a neighbour."""
    index = np.int64(kmap[_key(L, o, grid.shape[1], bits)])
    if index < 0:
        index = -1 - _best_neighbour(neighbours, -index - 1, grid, xval, weight, o, scale, L)
    return index


@inline
def _flip_signs(xb, weight, xval, k):
    """Magnitudes of xb[8k:8k + 8] into xval, and their sign bits; with an odd count of
    negatives, the least important value (smallest weight * x**2) is flipped so that the
    count is even (the 8th sign is implied)."""
    nflip = 0
    s = 0
    for i in range(8):
        v = xb[8 * k + i]
        if v >= 0:
            xval[8 * k + i] = v
        else:
            xval[8 * k + i] = -v
            nflip += 1
            s |= 1 << i
    if nflip % 2:
        imin = 0
        vmin = weight[8 * k] * xb[8 * k] * xb[8 * k]
        for i in range(1, 8):
            ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i]
            if ax < vmin:
                vmin = ax
                imin = i
        xval[8 * k + imin] = -xval[8 * k + imin]
        s ^= 1 << imin
    return s


@inline
def _sigma2(x, r, s, factor):
    """factor * the mean square of the super-block x[r, s:s + QK_K]: the sigma2 of ggml's
    weighted searches."""
    sumx2 = _F0
    for i in range(QK_K):
        sumx2 += x[r, s + i] * x[r, s + i]
    return factor * sumx2 / np.float32(QK_K)


@inline
def _importance(qw, q0, xb, sigma2, offset, weight):
    """How much each weight of the block xb counts in the search, into weight: with an
    imatrix qw[q0:] * sqrt(sigma2 + x**2), without one offset + x**2 (ggml's fallbacks)."""
    for i in range(xb.size):
        if qw.size:
            weight[i] = qw[q0 + i] * np.sqrt(sigma2 + xb[i] * xb[i])
        else:
            weight[i] = offset + xb[i] * xb[i]


@inline
def _sums(weight, xval, L, n):
    sumqx = _F0
    sumq2 = _F0
    for i in range(n):
        w = weight[i]
        q = np.float32(2 * L[i] + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


# ----------------------------------------------------------------------------- IQ2_XXS


@helper
def _iq2_xxs_scale(xval, weight, waux, L, Laux, Lqp, grid, kmap, neighbours):
    """quantize_row_iq2_xxs_impl's search for one block of 32: (scale, found), L its levels;
    found is False for a block ggml leaves empty (all zero, or no positive scale)."""
    kmax = 3
    vmax = xval[0]
    for i in range(1, 32):
        vmax = vmax if vmax > xval[i] else xval[i]
    if vmax < _GROUP_MAX_EPS:
        return _F0, False
    scale = _make_qp_quants(32, kmax + 1, xval, Lqp, weight)
    eff_max = scale * np.float32(kmax)
    if eff_max <= 0:
        return _F0, False
    best = _F0
    for step in range(-6, 7):
        id_ = (np.float32(2 * kmax - 1) + np.float32(step) * _TENTH) / eff_max
        this_scale = _F1 / id_
        for k in range(4):
            for i in range(8):
                l = nearest_int(_HALF * (id_ * xval[8 * k + i] - _F1))
                Laux[8 * k + i] = max(0, min(kmax - 1, l))
            _grid_index(kmap, neighbours, grid, xval, waux, 8 * k, this_scale, Laux, 2)
        sumqx, sumq2 = _sums(weight, xval, Laux, 32)
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            L[:] = Laux
    if scale > 0:
        id_ = _F1 / scale
        for k in range(4):
            for i in range(8):
                l = nearest_int(_HALF * (id_ * xval[8 * k + i] - _F1))
                L[8 * k + i] = max(0, min(kmax - 1, l))
            g = _grid_index(kmap, neighbours, grid, xval, waux, 8 * k, scale, L, 2)
            g = g if g >= 0 else -1 - g
            for i in range(8):
                L[8 * k + i] = (grid[g, i] - 1) // 2
        sumqx, sumq2 = _sums(weight, xval, L, 32)
        if sumq2 > 0:
            scale = sumqx / sumq2
    return scale, True


@kernel
def _iq2_xxs_rows(x, qw, out, grid, kmap, neighbours):
    weight = np.empty(32, np.float32)
    waux = np.empty(32, np.float32)
    xval = np.empty(32, np.float32)
    L = np.zeros(32, np.int64)
    Laux = np.zeros(32, np.int64)
    Lqp = np.zeros(32, np.uint8)
    scales = np.empty(8, np.float32)
    q2 = np.zeros(16, np.uint32)
    signs = np.zeros(4, np.int64)
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            s, o = b * QK_K, b * IQ2_XXS_BYTES
            q2[:] = 0
            sigma2 = _sigma2(x, r, s, _F1)
            max_scale = _F0
            for ib in range(8):
                xb = x[r, s + 32 * ib : s + 32 * ib + 32]
                _importance(qw, s + 32 * ib, xb, sigma2, _F0, weight)
                for i in range(32):
                    waux[i] = np.sqrt(weight[i])
                for k in range(4):
                    signs[k] = _flip_signs(xb, weight, xval, k) & 127
                scale, found = _iq2_xxs_scale(xval, weight, waux, L, Laux, Lqp, grid, kmap, neighbours)
                scales[ib] = _F0
                if not found:  # its words stay 0
                    continue
                if scale < 0:  # ggml guards against it (and never sees it): flip the signs
                    scale = -scale
                    for k in range(4):
                        signs[k] = (~signs[k]) & 127
                for k in range(4):
                    u = 0
                    for i in range(8):
                        u |= L[8 * k + i] << (2 * i)
                    q2[2 * ib] |= np.uint32(np.int64(kmap[u]) << (8 * k))
                    q2[2 * ib + 1] |= np.uint32(signs[k] << (7 * k))
                scales[ib] = scale
                max_scale = max(max_scale, scale)
            for i in range(o, o + IQ2_XXS_BYTES):
                out[r, i] = 0
            if max_scale == 0:
                continue
            d = max_scale / np.float32(31)
            store_fp16(out, r, o, d)
            id_ = _F1 / d
            for ib in range(8):
                l = max(0, min(15, nearest_int(_HALF * (id_ * scales[ib] - _F1))))
                q2[2 * ib + 1] |= np.uint32(l << 28)
            for w in range(16):
                for byte in range(4):
                    out[r, o + 2 + 4 * w + byte] = (q2[w] >> np.uint32(8 * byte)) & np.uint32(0xFF)


def iq2_xxs_weighted(x: np.ndarray, qw: np.ndarray, out: np.ndarray) -> None:
    """IQ2_XXS rows of x weighted by qw (quantize_iq2_xxs with quant_weights)."""
    _iq2_xxs_rows(x, qw, out, *neighbour_tables("IQ2_XXS", 2, _KMAP_2BIT))


# ----------------------------------------------------------------------------- dequantizers

@kernel
def _dequantize_iq2_xxs(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // IQ2_XXS_BYTES):
            o, s = b * IQ2_XXS_BYTES, b * QK_K
            d = load_fp16(raw, r, o)
            for ib in range(8):
                p = o + 2 + 8 * ib
                aux1 = np.int64(raw[r, p + 4]) | (np.int64(raw[r, p + 5]) << 8) | (np.int64(raw[r, p + 6]) << 16) | (np.int64(raw[r, p + 7]) << 24)
                db = d * (_HALF + np.float32(aux1 >> 28)) * np.float32(0.25)
                for k in range(4):
                    g = np.int64(raw[r, p + k])
                    signs = np.int64(KSIGNS[(aux1 >> (7 * k)) & 127])
                    for i in range(8):
                        v = db * np.float32(IQ2_XXS_GRID[g, i])
                        out[r, s + 32 * ib + 8 * k + i] = -v if (signs >> i) & 1 else v


dequantize_iq2_xxs = dequantizer(_dequantize_iq2_xxs, "IQ2_XXS", QK_K, IQ2_XXS_BYTES)


# ----------------------------------------------------------------------------- IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S search


@helper
def _grid_search(weight, waux, xval, L, Laux, on_grid, on_grid_aux, grid, kmap, neighbours, bits, kmax, n_steps, step_size,
                 eps, iq3_s):
    """The scale search of quantize_row_iq2_xs_impl, iq2_s, iq3_xxs and iq3_s for one block
    of magnitudes xval: (scale, found), L its levels (0..kmax-1, grid.shape[1] values per grid
    point, `bits` bits each in the keys). Scales (2 kmax - 1 + step * step_size) / max for
    step in -n_steps..n_steps, the best by sumqx**2 / sumq2; then the groups found off the
    grid are placed again at the chosen scale (IQ3_S: every group) and the scale refitted.
    found is False for a block ggml leaves empty: max < eps (IQ3_S, eps 0: max == 0)."""
    n = xval.size
    group = grid.shape[1]
    vmax = xval[0]
    for i in range(1, n):
        vmax = vmax if vmax > xval[i] else xval[i]
    L[:] = 0
    if (vmax == 0) if eps == 0 else (vmax < eps):
        return _F0, False
    best = _F0
    scale = vmax / np.float32(2 * kmax - 1)
    on_grid[:] = not iq3_s
    for step in range(-n_steps, n_steps + 1):
        id_ = (np.float32(2 * kmax - 1) + np.float32(step) * step_size) / vmax
        this_scale = _F1 / id_
        for k in range(n // group):
            for i in range(group):
                l = nearest_int(_HALF * (id_ * xval[group * k + i] - _F1))
                Laux[group * k + i] = max(0, min(kmax - 1, l))
            on_grid_aux[k] = _grid_index(kmap, neighbours, grid, xval, waux, group * k, this_scale, Laux, bits) >= 0
        sumqx, sumq2 = _sums(weight, xval, Laux, n)
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            # element by element: an array assignment would compile Numba's shape-mismatch
            # message (string formatting, ~1.7 s in every process that quantizes)
            for i in range(L.size):
                L[i] = Laux[i]
            for k in range(on_grid.size):
                on_grid[k] = on_grid_aux[k]
    n_off_grid = 0
    for k in range(n // group):
        n_off_grid += not on_grid[k]
    if n_off_grid > 0 and scale > 0:
        id_ = _F1 / scale
        for k in range(n // group):
            if on_grid[k] and not iq3_s:
                continue
            for i in range(group):
                l = nearest_int(_HALF * (id_ * xval[group * k + i] - _F1))
                L[group * k + i] = max(0, min(kmax - 1, l))
            g = _grid_index(kmap, neighbours, grid, xval, waux, group * k, scale, L, bits)
            g = g if g >= 0 else -1 - g
            for i in range(group):
                L[group * k + i] = (grid[g, i] - 1) // 2
        sumqx, sumq2 = _sums(weight, xval, L, n)
        if sumq2 > 0:
            scale = sumqx / sumq2
    return scale, True


# ----------------------------------------------------------------------------- IQ2_XS


@kernel
def _iq2_xs_rows(x, qw, out, grid, kmap, neighbours):
    """Layout (74 bytes): d, qs u16[32] (per 8 weights a 9-bit grid index and 7 sign bits
    above it), scales[8] (4 bits per 16 weights)."""
    weight = np.empty(16, np.float32)
    waux = np.empty(16, np.float32)
    xval = np.empty(16, np.float32)
    L = np.zeros(16, np.int64)
    Laux = np.zeros(16, np.int64)
    on_grid = np.zeros(2, np.bool_)
    on_grid_aux = np.zeros(2, np.bool_)
    scales = np.empty(16, np.float32)
    q2 = np.zeros(32, np.int64)
    signs = np.zeros(2, np.int64)
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            s, o = b * QK_K, b * IQ2_XS_BYTES
            out[r, o : o + IQ2_XS_BYTES] = 0
            q2[:] = 0
            sigma2 = _sigma2(x, r, s, _F1)
            max_scale = _F0
            for ib in range(16):
                xb = x[r, s + 16 * ib : s + 16 * ib + 16]
                _importance(qw, s + 16 * ib, xb, sigma2, _F0, weight)
                for i in range(16):
                    waux[i] = np.sqrt(weight[i])
                for k in range(2):
                    signs[k] = _flip_signs(xb, weight, xval, k) & 127
                scale, found = _grid_search(weight, waux, xval, L, Laux, on_grid, on_grid_aux, grid, kmap, neighbours,
                                            2, 3, 9, _TENTH, _GROUP_MAX_EPS, False)
                scales[ib] = _F0
                if not found:
                    continue
                if scale < 0:  # ggml guards against it (and never sees it): flip the signs
                    scale = -scale
                    for k in range(2):
                        signs[k] = (~signs[k]) & 127
                for k in range(2):
                    q2[2 * ib + k] = np.int64(kmap[_key(L, 8 * k, 8, 2)]) | (signs[k] << 9)
                scales[ib] = scale
                max_scale = max(max_scale, scale)
            if max_scale == 0:
                continue
            d = max_scale / np.float32(31)
            store_fp16(out, r, o, d)
            id_ = _F1 / d
            for ib in range(16):
                l = max(0, min(15, nearest_int(_HALF * (id_ * scales[ib] - _F1))))
                out[r, o + 66 + ib // 2] |= l << (4 * (ib % 2))
            for w in range(32):
                out[r, o + 2 + 2 * w] = q2[w] & 0xFF
                out[r, o + 3 + 2 * w] = (q2[w] >> 8) & 0xFF


def iq2_xs_weighted(x: np.ndarray, qw: np.ndarray, out: np.ndarray) -> None:
    """IQ2_XS rows of x weighted by qw (quantize_iq2_xs with quant_weights)."""
    _iq2_xs_rows(x, qw, out, *neighbour_tables("IQ2_XS", 2, _KMAP_2BIT))


@kernel
def _dequantize_iq2_xs(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // IQ2_XS_BYTES):
            o, s = b * IQ2_XS_BYTES, b * QK_K
            d = load_fp16(raw, r, o)
            for g in range(32):
                ls = (np.int64(raw[r, o + 66 + g // 4]) >> (4 * ((g // 2) % 2))) & 15
                db = d * (_HALF + np.float32(ls)) * np.float32(0.25)
                q = np.int64(raw[r, o + 2 + 2 * g]) | (np.int64(raw[r, o + 3 + 2 * g]) << 8)
                signs = np.int64(KSIGNS[q >> 9])
                for i in range(8):
                    v = db * np.float32(IQ2_XS_GRID[q & 511, i])
                    out[r, s + 8 * g + i] = -v if (signs >> i) & 1 else v


dequantize_iq2_xs = dequantizer(_dequantize_iq2_xs, "IQ2_XS", QK_K, IQ2_XS_BYTES)


# ----------------------------------------------------------------------------- IQ2_S


@kernel
def iq2_s_rows(x, qw, out, grid, kmap, neighbours):
    """IQ2_S rows of x (quantize_iq2_s), weighted by qw (empty: by sigma2 / 4 + x**2).

    Layout (82 bytes): d (stored times 0.9875), qs[32] (low 8 bits of a 10-bit grid index
    per 8 weights), signs[32] (a bit per weight), qh[8] (the top 2 bits, 4 groups per
    byte), scales[8] (4 bits per 16 weights).
    """
    weight = np.empty(16, np.float32)
    waux = np.empty(16, np.float32)
    xval = np.empty(16, np.float32)
    L = np.zeros(16, np.int64)
    Laux = np.zeros(16, np.int64)
    on_grid = np.zeros(2, np.bool_)
    on_grid_aux = np.zeros(2, np.bool_)
    scales = np.empty(16, np.float32)
    signs = np.zeros(2, np.int64)
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            s, o = b * QK_K, b * IQ2_S_BYTES
            out[r, o : o + IQ2_S_BYTES] = 0
            sigma2 = _sigma2(x, r, s, np.float32(2))
            max_scale = _F0
            for ib in range(16):
                xb = x[r, s + 16 * ib : s + 16 * ib + 16]
                _importance(qw, s + 16 * ib, xb, sigma2, np.float32(0.25) * sigma2, weight)
                for i in range(16):
                    waux[i] = np.sqrt(weight[i])
                for k in range(2):
                    bits = 0
                    for i in range(8):
                        v = xb[8 * k + i]
                        if v >= 0:
                            xval[8 * k + i] = v
                        else:
                            xval[8 * k + i] = -v
                            bits |= 1 << i
                    signs[k] = bits
                scale, found = _grid_search(weight, waux, xval, L, Laux, on_grid, on_grid_aux, grid, kmap, neighbours,
                                            2, 3, 9, _TENTH, _GROUP_MAX_EPS_IQ2_S, False)
                scales[ib] = _F0
                if not found:
                    continue
                if scale < 0:  # ggml guards against it (and never sees it): flip the signs
                    scale = -scale
                    for k in range(2):
                        signs[k] = (~signs[k]) & 0xFF
                for k in range(2):
                    g = np.int64(kmap[_key(L, 8 * k, 8, 2)])
                    i8 = 2 * ib + k
                    out[r, o + 2 + i8] = g & 255
                    out[r, o + 66 + i8 // 4] |= (g >> 8) << (2 * (i8 % 4))
                    out[r, o + 34 + i8] = signs[k]
                scales[ib] = scale
                max_scale = max(max_scale, scale)
            if max_scale == 0:
                continue
            d = max_scale / np.float32(31)
            store_fp16(out, r, o, d * np.float32(0.9875))
            id_ = _F1 / d
            for ib in range(16):
                l = max(0, min(15, nearest_int(_HALF * (id_ * scales[ib] - _F1))))
                out[r, o + 74 + ib // 2] |= l << (4 * (ib % 2))


def _iq2_s_tables():
    return neighbour_tables("IQ2_S", 1, _KMAP_2BIT)


@kernel
def _quantize_iq2_s_with(x, out, grid, kmap, neighbours):
    iq2_s_rows(x, np.empty(0, np.float32), out, grid, kmap, neighbours)


def _quantize_iq2_s(x: np.ndarray, out: np.ndarray) -> None:
    """quantize_iq2_s without weights (the tables are arguments: too big for constants)."""
    _quantize_iq2_s_with(x, out, *_iq2_s_tables())


def iq2_s_weighted(x: np.ndarray, qw: np.ndarray, out: np.ndarray) -> None:
    """IQ2_S rows of x weighted by qw (quantize_iq2_s with quant_weights)."""
    iq2_s_rows(x, qw, out, *_iq2_s_tables())


@kernel
def _dequantize_iq2_s(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // IQ2_S_BYTES):
            o, s = b * IQ2_S_BYTES, b * QK_K
            d = load_fp16(raw, r, o)
            for g in range(32):
                ls = (np.int64(raw[r, o + 74 + g // 4]) >> (4 * ((g // 2) % 2))) & 15
                db = d * (_HALF + np.float32(ls)) * np.float32(0.25)
                index = np.int64(raw[r, o + 2 + g]) | (((np.int64(raw[r, o + 66 + g // 4]) >> (2 * (g % 4))) & 3) << 8)
                signs = np.int64(raw[r, o + 34 + g])
                for i in range(8):
                    v = db * np.float32(IQ2_S_GRID[index, i])
                    out[r, s + 8 * g + i] = -v if (signs >> i) & 1 else v


quantize_iq2_s = quantizer(_quantize_iq2_s, "IQ2_S", QK_K, IQ2_S_BYTES)
dequantize_iq2_s = dequantizer(_dequantize_iq2_s, "IQ2_S", QK_K, IQ2_S_BYTES)


# ----------------------------------------------------------------------------- IQ3_S


@kernel
def iq3_s_rows(x, qw, out, grid, kmap, neighbours):
    """IQ3_S rows of x (quantize_iq3_s), weighted by qw (empty: by x**2).

    Layout (110 bytes): d, qs[64] (low 8 bits of each grid index), qh[8] (their 9th bits),
    signs[32] (a bit per weight), scales[4] (4 bits per 32). d is stored times 1.033.
    ggml's quirk kept: a block of 32 zeros leaves its qs and signs slots to the next block
    (their write positions only advance for blocks that are not all zero).
    """
    weight = np.empty(32, np.float32)
    waux = np.empty(32, np.float32)
    xval = np.empty(32, np.float32)
    L = np.zeros(32, np.int64)
    Laux = np.zeros(32, np.int64)
    on_grid = np.zeros(8, np.bool_)
    on_grid_aux = np.zeros(8, np.bool_)
    scales = np.empty(8, np.float32)
    signs = np.zeros(4, np.int64)
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            s, o = b * QK_K, b * IQ3_S_BYTES
            out[r, o : o + IQ3_S_BYTES] = 0
            qs, qh, sg = o + 2, o + 66, o + 74
            sigma2 = _sigma2(x, r, s, np.float32(2))
            max_scale = _F0
            for ib in range(8):
                xb = x[r, s + 32 * ib : s + 32 * ib + 32]
                _importance(qw, s + 32 * ib, xb, sigma2, _F0, weight)
                for i in range(32):
                    waux[i] = np.sqrt(weight[i])
                for k in range(4):
                    bits = 0
                    for i in range(8):
                        v = xb[8 * k + i]
                        if v >= 0:
                            xval[8 * k + i] = v
                        else:
                            xval[8 * k + i] = -v
                            bits |= 1 << i
                    signs[k] = bits
                scale, found = _grid_search(weight, waux, xval, L, Laux, on_grid, on_grid_aux, grid, kmap, neighbours,
                                            3, 8, 9, np.float32(0.2), _F0, True)
                scales[ib] = _F0
                if not found:
                    continue
                if scale < 0:  # ggml guards against it (and never sees it): flip the signs
                    scale = -scale
                    for k in range(4):
                        signs[k] = (~signs[k]) & 0xFF
                for k in range(8):
                    g = np.int64(kmap[_key(L, 4 * k, 4, 3)])
                    out[r, qs + k] = g & 255
                    out[r, qh + (8 * ib + k) // 8] |= (g >> 8) << ((8 * ib + k) % 8)
                qs += 8
                for k in range(4):
                    out[r, sg + k] = signs[k]
                sg += 4
                scales[ib] = scale
                max_scale = max(max_scale, scale)
            if max_scale == 0:
                continue
            d = max_scale / np.float32(31)
            store_fp16(out, r, o, d * np.float32(1.033))
            id_ = _F1 / d
            for ib in range(0, 8, 2):
                l1 = max(0, min(15, nearest_int(_HALF * (id_ * scales[ib] - _F1))))
                l2 = max(0, min(15, nearest_int(_HALF * (id_ * scales[ib + 1] - _F1))))
                out[r, o + 106 + ib // 2] = l1 | (l2 << 4)


IQ3_S_POINTS, IQ3_S_KMAP, IQ3_S_NEIGHBOURS = neighbour_tables("IQ3_S", 3, 4096, 3)


@kernel
def _quantize_iq3_s(x, out):
    iq3_s_rows(x, np.empty(0, np.float32), out, IQ3_S_POINTS, IQ3_S_KMAP, IQ3_S_NEIGHBOURS)


def iq3_s_weighted(x: np.ndarray, qw: np.ndarray, out: np.ndarray) -> None:
    """IQ3_S rows of x weighted by qw (quantize_iq3_s with quant_weights)."""
    iq3_s_rows(x, qw, out, IQ3_S_POINTS, IQ3_S_KMAP, IQ3_S_NEIGHBOURS)


@kernel
def _dequantize_iq3_s(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // IQ3_S_BYTES):
            o, s = b * IQ3_S_BYTES, b * QK_K
            d = load_fp16(raw, r, o)
            for ib in range(8):
                ls = (np.int64(raw[r, o + 106 + ib // 2]) >> (4 * (ib % 2))) & 15
                db = d * np.float32(1 + 2 * ls)
                qh = np.int64(raw[r, o + 66 + ib])
                for k in range(8):
                    g = np.int64(raw[r, o + 2 + 8 * ib + k]) | (((qh >> k) & 1) << 8)
                    signs = np.int64(raw[r, o + 74 + 4 * ib + k // 2])
                    for i in range(4):
                        v = db * np.float32(IQ3_S_GRID[g, i])
                        out[r, s + 32 * ib + 4 * k + i] = -v if (signs >> (4 * (k % 2) + i)) & 1 else v


quantize_iq3_s = quantizer(_quantize_iq3_s, "IQ3_S", QK_K, IQ3_S_BYTES)
dequantize_iq3_s = dequantizer(_dequantize_iq3_s, "IQ3_S", QK_K, IQ3_S_BYTES)


# ----------------------------------------------------------------------------- IQ3_XXS


@kernel
def iq3_xxs_rows(x, qw, out, grid, kmap, neighbours):
    """IQ3_XXS rows of x (quantize_iq3_xxs), weighted by qw (empty: by x**2).

    Layout (98 bytes): d (stored times 1.0125), qs[64] (a grid index per 4 weights), then per
    32 weights a u32 of four 7-bit sign indices (bits 7k) and the 4-bit scale (bits 28-31).
    """
    weight = np.empty(32, np.float32)
    waux = np.empty(32, np.float32)
    xval = np.empty(32, np.float32)
    L = np.zeros(32, np.int64)
    Laux = np.zeros(32, np.int64)
    on_grid = np.zeros(8, np.bool_)
    on_grid_aux = np.zeros(8, np.bool_)
    scales = np.empty(8, np.float32)
    words = np.zeros(8, np.int64)
    signs = np.zeros(4, np.int64)
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            s, o = b * QK_K, b * IQ3_XXS_BYTES
            out[r, o : o + IQ3_XXS_BYTES] = 0
            words[:] = 0
            sigma2 = _sigma2(x, r, s, np.float32(2))
            max_scale = _F0
            for ib in range(8):
                xb = x[r, s + 32 * ib : s + 32 * ib + 32]
                _importance(qw, s + 32 * ib, xb, sigma2, _F0, weight)
                for i in range(32):
                    waux[i] = np.sqrt(weight[i])
                for k in range(4):
                    signs[k] = _flip_signs(xb, weight, xval, k) & 127
                scale, found = _grid_search(weight, waux, xval, L, Laux, on_grid, on_grid_aux, grid, kmap, neighbours,
                                            3, 8, 15, np.float32(0.2), _GROUP_MAX_EPS_IQ3_XXS, False)
                scales[ib] = _F0
                if not found:
                    continue
                if scale < 0:  # ggml guards against it (and never sees it): flip the signs
                    scale = -scale
                    for k in range(4):
                        signs[k] = (~signs[k]) & 127
                for k in range(8):
                    out[r, o + 2 + 8 * ib + k] = kmap[_key(L, 4 * k, 4, 3)]
                words[ib] = signs[0] | (signs[1] << 7) | (signs[2] << 14) | (signs[3] << 21)
                scales[ib] = scale
                max_scale = max(max_scale, scale)
            if max_scale == 0:
                out[r, o + 2 : o + IQ3_XXS_BYTES] = 0
                continue
            d = max_scale / np.float32(31)
            store_fp16(out, r, o, d * np.float32(1.0125))
            id_ = _F1 / d
            for ib in range(8):
                l = max(0, min(15, nearest_int(_HALF * (id_ * scales[ib] - _F1))))
                w = words[ib] | (l << 28)
                for byte in range(4):
                    out[r, o + 66 + 4 * ib + byte] = (w >> (8 * byte)) & 0xFF


IQ3_XXS_POINTS, IQ3_XXS_KMAP, IQ3_XXS_NEIGHBOURS = neighbour_tables("IQ3_XXS", 2, 4096, 3)


@kernel
def _quantize_iq3_xxs(x, out):
    iq3_xxs_rows(x, np.empty(0, np.float32), out, IQ3_XXS_POINTS, IQ3_XXS_KMAP, IQ3_XXS_NEIGHBOURS)


def iq3_xxs_weighted(x: np.ndarray, qw: np.ndarray, out: np.ndarray) -> None:
    """IQ3_XXS rows of x weighted by qw (quantize_iq3_xxs with quant_weights)."""
    iq3_xxs_rows(x, qw, out, IQ3_XXS_POINTS, IQ3_XXS_KMAP, IQ3_XXS_NEIGHBOURS)


@kernel
def _dequantize_iq3_xxs(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // IQ3_XXS_BYTES):
            o, s = b * IQ3_XXS_BYTES, b * QK_K
            d = load_fp16(raw, r, o)
            for ib in range(8):
                p = o + 66 + 4 * ib
                aux = np.int64(raw[r, p]) | (np.int64(raw[r, p + 1]) << 8) | (np.int64(raw[r, p + 2]) << 16) | (np.int64(raw[r, p + 3]) << 24)
                db = d * (_HALF + np.float32(aux >> 28)) * _HALF
                for k in range(8):
                    g = np.int64(raw[r, o + 2 + 8 * ib + k])
                    signs = np.int64(KSIGNS[(aux >> (7 * (k // 2))) & 127])
                    for i in range(4):
                        v = db * np.float32(IQ3_XXS_GRID[g, i])
                        out[r, s + 32 * ib + 4 * k + i] = -v if (signs >> (4 * (k % 2) + i)) & 1 else v


quantize_iq3_xxs = quantizer(_quantize_iq3_xxs, "IQ3_XXS", QK_K, IQ3_XXS_BYTES)
dequantize_iq3_xxs = dequantizer(_dequantize_iq3_xxs, "IQ3_XXS", QK_K, IQ3_XXS_BYTES)


# ----------------------------------------------------------------------------- IQ1_S
# Values -1, 0, 1 plus a shift of +-IQ1S_DELTA per 32: the three levels of a block are
# (-1, 0, 1) + delta (shift 1) or - delta (shift -1). The grid points are 2l + 1 as above.


@inline
def _sorted_order(xb, order):
    """The indices of xb in ascending order, equal values in their original order (glibc's
    qsort, a merge sort for arrays this small, keeps them so)."""
    n = xb.size
    for j in range(n):
        order[j] = j
    for j in range(1, n):
        v = order[j]
        i = j - 1
        while i >= 0 and xb[v] < xb[order[i]]:
            order[i + 1] = order[i]
            i -= 1
        order[i + 1] = v


@inline
def _split_score(sumx, sumw, i1, i2, n, levels):
    sumqx = (sumx[i1] - sumx[0]) * levels[0] + (sumx[i2] - sumx[i1]) * levels[1] + (sumx[n] - sumx[i2]) * levels[2]
    sumq2 = ((sumw[i1] - sumw[0]) * levels[0] * levels[0] + (sumw[i2] - sumw[i1]) * levels[1] * levels[1]
             + (sumw[n] - sumw[i2]) * levels[2] * levels[2])
    return sumqx, sumq2


@inline
def _best_neighbour2(neighbours, start, grid, xb, weight, o, scale, levels, L):
    """iq1_find_best_neighbour2: the listed neighbour nearest (weighted) to xb[o:o + 8] /
    scale, its levels meaning levels[l]; a full search of the grid if none is (only
    non-finite input gets there; ggml's reads x at the grid index there, out of range)."""
    best_d2 = _FLT_MAX
    best = -1
    for j in range(1, np.int64(neighbours[start]) + 1):
        g = np.int64(neighbours[start + j])
        d2 = _F0
        for i in range(8):
            diff = scale * levels[(grid[g, i] - 1) // 2] - xb[o + i]
            d2 += weight[o + i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            best = g
    if best < 0:
        for g in range(grid.shape[0]):
            d2 = _F0
            for i in range(8):
                diff = scale * levels[(grid[g, i] - 1) // 2] - xb[o + i]
                d2 += weight[o + i] * diff * diff
            if d2 < best_d2:
                best_d2 = d2
                best = g
    for i in range(8):
        L[o + i] = (grid[best, i] - 1) // 2
    return best


@inline
def _abs_max(xb):
    vmax = abs(xb[0])
    for i in range(1, xb.size):
        vmax = vmax if vmax > abs(xb[i]) else abs(xb[i])
    return vmax


@inline
def _iq1_grid_points(xb, weight, L, scale, minus, index, grid, kmap, neighbours, x_p, x_m):
    """The grid index of each group of 8 levels L into index[k]; where the levels are off
    the grid, the listed neighbour nearest at this scale (iq1_find_best_neighbour2), group
    k's three values being x_m if minus[k] else x_p. If any group was off the grid, the
    scale refitted to the points chosen (when the fit is positive). Returns the scale."""
    all_on_grid = True
    for k in range(xb.size // 8):
        g = np.int64(kmap[_key(L, 8 * k, 8, 2)])
        if g < 0:
            all_on_grid = False
            g = _best_neighbour2(neighbours, -g - 1, grid, xb, weight, 8 * k, scale, x_m if minus[k] else x_p, L)
        index[k] = g
    if all_on_grid:
        return scale
    sumqx = _F0
    sumq2 = _F0
    for k in range(xb.size // 8):
        levels = x_m if minus[k] else x_p
        for j in range(8):
            w = weight[8 * k + j]
            q = levels[(grid[index[k], j] - 1) // 2]
            sumqx += w * q * xb[8 * k + j]
            sumq2 += w * q * q
    if sumqx > 0 and sumq2 > 0:
        return sumqx / sumq2
    return scale


@kernel
def _iq1_s_rows(x, qw, out, grid, kmap, neighbours):
    """Layout (50 bytes): d (stored times 1.125), qs[32] (low 8 bits of an 11-bit grid index
    per 8 weights), qh u16[8] per 32 weights: the 3 top bits of its 4 indices (bits 3k),
    the 3-bit scale (bits 12-14) and the shift's sign (bit 15: -delta)."""
    n = 32
    x_p = np.array([-1 + _IQ1_DELTA, _IQ1_DELTA, 1 + _IQ1_DELTA], np.float32)
    x_m = np.array([-1 - _IQ1_DELTA, -_IQ1_DELTA, 1 - _IQ1_DELTA], np.float32)
    weight = np.empty(n, np.float32)
    sumx = np.empty(n + 1, np.float32)
    sumw = np.empty(n + 1, np.float32)
    order = np.empty(n, np.int64)
    L = np.zeros(n, np.int64)
    index = np.zeros(4, np.int64)
    minus = np.zeros(4, np.bool_)
    scales = np.empty(8, np.float32)
    shifts = np.empty(8, np.int64)
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            s, o = b * QK_K, b * IQ1_S_BYTES
            out[r, o : o + IQ1_S_BYTES] = 0
            sigma2 = _sigma2(x, r, s, np.float32(2))
            max_scale = _F0
            qh = np.zeros(8, np.int64)
            for ib in range(8):
                xb = x[r, s + n * ib : s + n * ib + n]
                _importance(qw, s + n * ib, xb, sigma2, _F0, weight)
                vmax = _abs_max(xb)
                scales[ib] = _F0
                shifts[ib] = 1
                if vmax < _GROUP_MAX_EPS_IQ1_S:
                    continue
                _sorted_order(xb, order)
                sumx[0] = _F0
                sumw[0] = _F0
                for j in range(n):
                    i = order[j]
                    sumx[j + 1] = sumx[j] + weight[i] * xb[i]
                    sumw[j + 1] = sumw[j] + weight[i]
                best_score = -_FLT_MAX
                scale = vmax
                besti1 = -1
                besti2 = -1
                best_shift = 0
                for i1 in range(n + 1):
                    for i2 in range(i1, n + 1):
                        sumqx, sumq2 = _split_score(sumx, sumw, i1, i2, n, x_p)
                        if sumq2 > 0 and sumqx * sumqx > best_score * sumq2:
                            scale = sumqx / sumq2
                            best_score = scale * sumqx
                            besti1, besti2, best_shift = i1, i2, 1
                        sumqx, sumq2 = _split_score(sumx, sumw, i1, i2, n, x_m)
                        if sumq2 > 0 and sumqx * sumqx > best_score * sumq2:
                            scale = sumqx / sumq2
                            best_score = scale * sumqx
                            besti1, besti2, best_shift = i1, i2, -1
                if besti1 < 0 or besti2 < 0 or best_shift == 0:
                    continue
                for j in range(n):
                    L[order[j]] = 0 if j < besti1 else 1 if j < besti2 else 2
                if scale < 0:
                    for j in range(n):
                        L[j] = 2 - L[j]
                    scale = -scale
                    best_shift = -best_shift
                minus[:] = best_shift == -1
                scale = _iq1_grid_points(xb, weight, L, scale, minus, index, grid, kmap, neighbours, x_p, x_m)
                h = 0
                for k in range(4):
                    out[r, o + 2 + 4 * ib + k] = index[k] & 255
                    h |= (index[k] >> 8) << (3 * k)
                qh[ib] = h
                scales[ib] = scale
                shifts[ib] = best_shift
                max_scale = max(max_scale, scale)
            if max_scale == 0:
                continue
            d = max_scale / np.float32(15)
            store_fp16(out, r, o, d * np.float32(1.125))
            id_ = _F1 / d
            for ib in range(8):
                l = max(0, min(7, nearest_int(_HALF * (id_ * scales[ib] - _F1))))
                if shifts[ib] == -1:
                    l |= 8
                h = qh[ib] | (l << 12)
                out[r, o + 34 + 2 * ib] = h & 0xFF
                out[r, o + 35 + 2 * ib] = (h >> 8) & 0xFF


def iq1_s_weighted(x: np.ndarray, qw: np.ndarray, out: np.ndarray) -> None:
    """IQ1_S rows of x weighted by qw (quantize_iq1_s)."""
    _iq1_s_rows(x, qw, out, *neighbour_tables("IQ1_S", 3, _KMAP_2BIT))


@kernel
def _dequantize_iq1_s(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // IQ1_S_BYTES):
            o, s = b * IQ1_S_BYTES, b * QK_K
            d = load_fp16(raw, r, o)
            for ib in range(8):
                qh = np.int64(raw[r, o + 34 + 2 * ib]) | (np.int64(raw[r, o + 35 + 2 * ib]) << 8)
                dl = d * np.float32(2 * ((qh >> 12) & 7) + 1)
                delta = -_IQ1_DELTA if qh & 0x8000 else _IQ1_DELTA
                for k in range(4):
                    g = np.int64(raw[r, o + 2 + 4 * ib + k]) | (((qh >> (3 * k)) & 7) << 8)
                    for i in range(8):
                        out[r, s + 32 * ib + 8 * k + i] = dl * (np.float32(np.int64(IQ1_S_LEVELS[g, i]) - 1) + delta)


dequantize_iq1_s = dequantizer(_dequantize_iq1_s, "IQ1_S", QK_K, IQ1_S_BYTES)


# ----------------------------------------------------------------------------- IQ1_M
# IQ1_S's grid, levels and neighbour lists, in blocks of 16 whose two groups of 8 each have
# their own shift: the split search scores the 4 combinations (shifts of the first half,
# second half: ++, +-, -+, --) at once, from prefix sums kept per half.

#: qh bits of the shifts of a block of 16 by combination (bit 3: first group -delta, bit 7: second)
_IQ1_M_SHIFT_BITS = np.array([0x00, 0x80, 0x08, 0x88], np.int64)


@inline
def _iq1_m_split(xb, weight, order, px, pw, x_p, x_m, scale):
    """quantize_row_iq1_m_impl's exhaustive search of a block of 16 sorted by order:
    (scale, i1, i2, k) of the best split into levels 0 | 1 | 2 at sorted positions i1, i2
    and shift combination k, i1 = -1 if none scores. As ggml sums it: with v0 - v1 = v1 - v2
    = -1 for either shift, a half's sum over a split is its total times v2 less the prefix
    sums at i1 and i2."""
    n = 16
    for h in range(2):
        px[h, 0] = _F0
        pw[h, 0] = _F0
    for j in range(n):
        i = order[j]
        h = 0 if i < n // 2 else 1
        px[h, j + 1] = px[h, j] + weight[i] * xb[i]
        px[1 - h, j + 1] = px[1 - h, j]
        pw[h, j + 1] = pw[h, j] + weight[i]
        pw[1 - h, j + 1] = pw[1 - h, j]
    p2 = x_p[2]
    m2 = x_m[2]
    cp1 = x_p[0] * x_p[0] - x_p[1] * x_p[1]
    cp2 = x_p[1] * x_p[1] - x_p[2] * x_p[2]
    cm1 = x_m[0] * x_m[0] - x_m[1] * x_m[1]
    cm2 = x_m[1] * x_m[1] - x_m[2] * x_m[2]
    best_score = -_FLT_MAX
    best_i1 = -1
    best_i2 = -1
    best_k = -1
    for i1 in range(n + 1):
        for i2 in range(i1, n + 1):
            sx0 = px[0, i1] + px[0, i2]
            sx1 = px[1, i1] + px[1, i2]
            qx_p0 = px[0, n] * p2 - sx0
            qx_p1 = px[1, n] * p2 - sx1
            qx_m0 = px[0, n] * m2 - sx0
            qx_m1 = px[1, n] * m2 - sx1
            q2_p0 = pw[0, n] * p2 * p2 + pw[0, i1] * cp1 + pw[0, i2] * cp2
            q2_p1 = pw[1, n] * p2 * p2 + pw[1, i1] * cp1 + pw[1, i2] * cp2
            q2_m0 = pw[0, n] * m2 * m2 + pw[0, i1] * cm1 + pw[0, i2] * cm2
            q2_m1 = pw[1, n] * m2 * m2 + pw[1, i1] * cm1 + pw[1, i2] * cm2
            for k in range(4):
                sumqx = (qx_m0 if k >= 2 else qx_p0) + (qx_m1 if k % 2 else qx_p1)
                sumq2 = (q2_m0 if k >= 2 else q2_p0) + (q2_m1 if k % 2 else q2_p1)
                if sumq2 > 0 and sumqx * sumqx > best_score * sumq2:
                    scale = sumqx / sumq2
                    best_score = scale * sumqx
                    best_i1, best_i2, best_k = i1, i2, k
    return scale, best_i1, best_i2, best_k


@inline
def _iq1_m_point(out, r, o, ib, k):
    """The grid index of group k (0, 1) of block ib, as stored: qs[2 ib + k] and 3 bits of qh[ib]."""
    return np.int64(out[r, o + 2 * ib + k]) | ((np.int64(out[r, o + 32 + ib]) >> (4 * k)) & 7) << 8


@kernel
def _iq1_m_rows(x, qw, out, grid, kmap, neighbours):
    """IQ1_M rows of x (quantize_iq1_m), weighted by qw (empty: by x**2).

    Layout (56 bytes): qs[32] (low 8 bits of an 11-bit grid index per 8 weights), qh[16]
    per 16 weights: the top 3 bits of its 2 indices (bits 0-2, 4-6) and their shifts' signs
    (bits 3, 7: -delta), scales u16[4]: 3-bit scales per 16 weights (bits 3i, i < 4) and the
    fp16 super-block scale (times 1.1125) in their top nibbles, low nibble first."""
    n = 16
    x_p = np.array([-1 + _IQ1_DELTA, _IQ1_DELTA, 1 + _IQ1_DELTA], np.float32)
    x_m = np.array([-1 - _IQ1_DELTA, -_IQ1_DELTA, 1 - _IQ1_DELTA], np.float32)
    weight = np.empty(n, np.float32)
    px = np.empty((2, n + 1), np.float32)
    pw = np.empty((2, n + 1), np.float32)
    order = np.empty(n, np.int64)
    L = np.zeros(n, np.int64)
    index = np.zeros(2, np.int64)
    minus = np.zeros(2, np.bool_)
    scales = np.empty(16, np.float32)
    shifts = np.empty(16, np.int64)
    sc = np.zeros(4, np.int64)
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            s, o = b * QK_K, b * IQ1_M_BYTES
            out[r, o : o + IQ1_M_BYTES] = 0
            sigma2 = _sigma2(x, r, s, np.float32(2))
            max_scale = _F0
            for ib in range(16):
                xb = x[r, s + n * ib : s + n * ib + n]
                _importance(qw, s + n * ib, xb, sigma2, _F0, weight)
                vmax = _abs_max(xb)
                scales[ib] = _F0
                shifts[ib] = 0
                if vmax < _GROUP_MAX_EPS_IQ1_M:
                    continue
                _sorted_order(xb, order)
                scale, i1, i2, k = _iq1_m_split(xb, weight, order, px, pw, x_p, x_m, vmax)
                if i1 < 0 or i2 < 0 or k < 0:
                    continue
                for j in range(n):
                    L[order[j]] = 0 if j < i1 else 1 if j < i2 else 2
                if scale < 0:
                    for j in range(n):
                        L[j] = 2 - L[j]
                    scale = -scale
                    k = 3 - k
                minus[0] = k >= 2
                minus[1] = k % 2 == 1
                scale = _iq1_grid_points(xb, weight, L, scale, minus, index, grid, kmap, neighbours, x_p, x_m)
                out[r, o + 2 * ib] = index[0] & 255
                out[r, o + 2 * ib + 1] = index[1] & 255
                out[r, o + 32 + ib] = (index[0] >> 8) | ((index[1] >> 8) << 4)
                scales[ib] = scale
                shifts[ib] = k
                max_scale = max(max_scale, scale)
            if max_scale == 0:
                continue
            # The 3-bit scales, then d refitted to them over the whole super-block.
            d = max_scale / np.float32(15)
            id_ = _F1 / d
            sumqx = _F0
            sumq2 = _F0
            sc[:] = 0
            for ib in range(16):
                l = max(0, min(7, nearest_int(_HALF * (id_ * scales[ib] - _F1))))
                sc[ib // 4] |= l << (3 * (ib % 4))
                out[r, o + 32 + ib] |= _IQ1_M_SHIFT_BITS[shifts[ib]]
                xb = x[r, s + n * ib : s + n * ib + n]
                _importance(qw, s + n * ib, xb, sigma2, _F0, weight)
                for k in range(2):
                    levels = x_m if (shifts[ib] >= 2 if k == 0 else shifts[ib] % 2 == 1) else x_p
                    g = _iq1_m_point(out, r, o, ib, k)
                    for j in range(8):
                        w = weight[8 * k + j]
                        q = levels[(grid[g, j] - 1) // 2] * np.float32(2 * l + 1)
                        sumqx += w * q * xb[8 * k + j]
                        sumq2 += w * q * q
            if sumq2 > 0:
                d = sumqx / sumq2
            h = fp32_to_fp16_bits(d * np.float32(1.1125))
            for i in range(4):
                v = sc[i] | (((h >> (4 * i)) & 15) << 12)
                out[r, o + 48 + 2 * i] = v & 0xFF
                out[r, o + 49 + 2 * i] = (v >> 8) & 0xFF


def _quantize_iq1_m(x: np.ndarray, out: np.ndarray) -> None:
    """quantize_iq1_m without weights (the tables are arguments: too big for constants)."""
    _iq1_m_rows(x, np.empty(0, np.float32), out, *neighbour_tables("IQ1_S", 3, _KMAP_2BIT))


def iq1_m_weighted(x: np.ndarray, qw: np.ndarray, out: np.ndarray) -> None:
    """IQ1_M rows of x weighted by qw (quantize_iq1_m with quant_weights)."""
    _iq1_m_rows(x, qw, out, *neighbour_tables("IQ1_S", 3, _KMAP_2BIT))


@inline
def _iq1_m_scale(raw, r, o):
    """The fp16 super-block scale of the IQ1_M block at o, from the scales' top nibbles."""
    h = 0
    for i in range(4):
        h |= (np.int64(raw[r, o + 49 + 2 * i]) >> 4) << (4 * i)
    return fp16_bits_to_fp32(h)


@kernel
def _dequantize_iq1_m(raw, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // IQ1_M_BYTES):
            o, s = b * IQ1_M_BYTES, b * QK_K
            d = _iq1_m_scale(raw, r, o)
            for ib in range(16):
                sc = np.int64(raw[r, o + 48 + 2 * (ib // 4)]) | (np.int64(raw[r, o + 49 + 2 * (ib // 4)]) << 8)
                dl = d * np.float32(2 * ((sc >> (3 * (ib % 4))) & 7) + 1)
                qh = np.int64(raw[r, o + 32 + ib])
                for k in range(2):
                    g = np.int64(raw[r, o + 2 * ib + k]) | (((qh >> (4 * k)) & 7) << 8)
                    delta = -_IQ1_DELTA if (qh >> (4 * k + 3)) & 1 else _IQ1_DELTA
                    for i in range(8):
                        out[r, s + 16 * ib + 8 * k + i] = dl * (np.float32(np.int64(IQ1_S_LEVELS[g, i]) - 1) + delta)


quantize_iq1_m = quantizer(_quantize_iq1_m, "IQ1_M", QK_K, IQ1_M_BYTES)
dequantize_iq1_m = dequantizer(_dequantize_iq1_m, "IQ1_M", QK_K, IQ1_M_BYTES)
