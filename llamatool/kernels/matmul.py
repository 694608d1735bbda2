"""Matrix products straight from the mapped GGUF: out[t, col0 + r] = W[r] . x[t].

W is the whole mapped file (uint8); a weight tensor is (byte offset, ggml type, row length K).
Quantized rows meet an activation slot (see actquant.py) chunk by chunk (see blocks.py):
per 64 weights one byte dot product (vpdpbusd), one int->float conversion and one FMA
into a 16-lane accumulator; per-row sums happen once at the end. Float rows (F32, F16,
BF16) meet the activation rounded to their type, 16 lanes at a time.

Two loop shapes:
    one token      decode: a matrix-vector product, bound by reading the weights once
    four tokens    prompt processing: each decoded weight chunk feeds four tokens, so the
                   unpacking is paid once per four products (tile, not stream)

Every type gets its own compiled pair of kernels with one signature (`kernels(qtype)`):

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

from functools import lru_cache

import numpy as np

from llamatool.jit import njit

from .blocks import (
    iq4_nl_chunk, iq4_xs_chunk, q2_k_chunk, q3_k_chunk, q4_0_chunk, q4_1_chunk, q4_k_chunk, q5_0_chunk,
    q5_1_chunk, q5_k_chunk, q6_k_chunk, q8_0_chunk,
)
from .simd import concat, dot4_u8i8, fma, get, hsum, load, load_bf16, load_f16, load_f32, low_half, high_half, splat, splat4, store, to_f32
from .ccall import c_signature, call_c
from .types import BF16, F16, F32, IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, SUPPORTED

from numba import carray, cfunc, float32, int32  # noqa: E402


# --- quantized rows -----------------------------------------------------------------------


def _quantized_kernels(decode, half_offsets: bool):
    """The loops of one quantized type, with its chunk decoder (blocks.py) compiled in.

    A closure per type rather than the decoder as an argument: Numba can cache code that
    calls a known function, not code that receives one as a value. Chunks go by pairs: 64
    weight bytes against 64 activation bytes in one vpdpbusd, whose 16 int32 lanes hold
    four sums of 16 products each (chunk c's halves, then chunk c+1's). half_offsets: the
    type's offsets differ between the halves of a chunk (Q2_K, Q3_K, Q6_K), else one per chunk.
    """

    @njit(cache=True, _nrt=False, forceinline=True)
    def offset(m0, m1, s16, s32, t, K, c):
        """Chunk c's offsets times activation row t's scaled sums over the chunk."""
        if half_offsets:
            k = t * (K // 16) + 2 * c
            return m0 * get(s16, k) + m1 * get(s16, k + 1)
        return m0 * get(s32, t * (K // 32) + c)

    @njit(cache=True, _nrt=False, forceinline=True)
    def odd_chunk(W, row, c, q, d, s16, s32, t, K):
        """A last chunk without a partner: 32 bytes, halves summed separately."""
        w, s0, s1, m0, m1 = decode(W, row, c)
        p = to_f32(dot4_u8i8(splat(int32(0), 8), w, load(q, t * K + 32 * c, 32)))
        dx = get(d, t * (K // 32) + c)
        return (hsum(low_half(p)) * s0 + hsum(high_half(p)) * s1) * dx + offset(m0, m1, s16, s32, t, K, c)

    @njit(cache=True, _nrt=False, inline="always")
    def dot1(W, row, n_chunks, q, d, s16, s32, t, K):
        """One row . activation row t."""
        acc = splat(float32(0), 16)
        offs = float32(0)
        qo = t * K
        do = t * (K // 32)
        c = 0
        while c + 2 <= n_chunks:
            w0, a0, b0, m0, n0 = decode(W, row, c)
            w1, a1, b1, m1, n1 = decode(W, row, c + 1)
            x0 = get(d, do + c)
            x1 = get(d, do + c + 1)
            p = dot4_u8i8(splat(int32(0), 16), concat(w0, w1), load(q, qo + 32 * c, 64))
            acc = fma(to_f32(p), splat4(a0 * x0, b0 * x0, a1 * x1, b1 * x1), acc)
            offs += offset(m0, n0, s16, s32, t, K, c) + offset(m1, n1, s16, s32, t, K, c + 1)
            c += 2
        total = hsum(acc) + offs
        if c < n_chunks:
            total += odd_chunk(W, row, c, q, d, s16, s32, t, K)
        return total

    @njit(cache=True, _nrt=False, inline="always")
    def dot4(W, row, n_chunks, q, d, s16, s32, t, K):
        """One row . activation rows t..t+3: each chunk is decoded once for four tokens."""
        z = splat(float32(0), 16)
        zi = splat(int32(0), 16)
        a0, a1, a2, a3 = z, z, z, z
        o0 = o1 = o2 = o3 = float32(0)
        nd = K // 32
        c = 0
        while c + 2 <= n_chunks:
            wa, sa0, sa1, ma0, ma1 = decode(W, row, c)
            wb, sb0, sb1, mb0, mb1 = decode(W, row, c + 1)
            w = concat(wa, wb)
            i = t * K + 32 * c
            j = t * nd + c
            xa, xb = get(d, j), get(d, j + 1)
            a0 = fma(to_f32(dot4_u8i8(zi, w, load(q, i, 64))), splat4(sa0 * xa, sa1 * xa, sb0 * xb, sb1 * xb), a0)
            o0 += offset(ma0, ma1, s16, s32, t, K, c) + offset(mb0, mb1, s16, s32, t, K, c + 1)
            xa, xb = get(d, j + nd), get(d, j + nd + 1)
            a1 = fma(to_f32(dot4_u8i8(zi, w, load(q, i + K, 64))), splat4(sa0 * xa, sa1 * xa, sb0 * xb, sb1 * xb), a1)
            o1 += offset(ma0, ma1, s16, s32, t + 1, K, c) + offset(mb0, mb1, s16, s32, t + 1, K, c + 1)
            xa, xb = get(d, j + 2 * nd), get(d, j + 2 * nd + 1)
            a2 = fma(to_f32(dot4_u8i8(zi, w, load(q, i + 2 * K, 64))), splat4(sa0 * xa, sa1 * xa, sb0 * xb, sb1 * xb), a2)
            o2 += offset(ma0, ma1, s16, s32, t + 2, K, c) + offset(mb0, mb1, s16, s32, t + 2, K, c + 1)
            xa, xb = get(d, j + 3 * nd), get(d, j + 3 * nd + 1)
            a3 = fma(to_f32(dot4_u8i8(zi, w, load(q, i + 3 * K, 64))), splat4(sa0 * xa, sa1 * xa, sb0 * xb, sb1 * xb), a3)
            o3 += offset(ma0, ma1, s16, s32, t + 3, K, c) + offset(mb0, mb1, s16, s32, t + 3, K, c + 1)
            c += 2
        y0, y1, y2, y3 = hsum(a0) + o0, hsum(a1) + o1, hsum(a2) + o2, hsum(a3) + o3
        if c < n_chunks:
            y0 += odd_chunk(W, row, c, q, d, s16, s32, t, K)
            y1 += odd_chunk(W, row, c, q, d, s16, s32, t + 1, K)
            y2 += odd_chunk(W, row, c, q, d, s16, s32, t + 2, K)
            y3 += odd_chunk(W, row, c, q, d, s16, s32, t + 3, K)
        return y0, y1, y2, y3

    @njit(cache=True, _nrt=False)
    def rows(W, w_off, row_bytes, K, r0, r1, t0, t1, x, q, d, s16, s32, out, ldo, col0, out_t0):
        n_chunks = K // 32
        t = t0
        while t + 4 <= t1:
            for r in range(r0, r1):
                y0, y1, y2, y3 = dot4(W, w_off + r * row_bytes, n_chunks, q, d, s16, s32, t, K)
                o = (t - out_t0) * ldo + col0 + r
                out[o] = y0
                out[o + ldo] = y1
                out[o + 2 * ldo] = y2
                out[o + 3 * ldo] = y3
            t += 4
        for tt in range(t, t1):
            for r in range(r0, r1):
                out[(tt - out_t0) * ldo + col0 + r] = dot1(W, w_off + r * row_bytes, n_chunks, q, d, s16, s32, tt, K)

    @njit(cache=True, _nrt=False)
    def dequant(W, row, K, out, oo):
        for c in range(K // 32):
            w, s0, s1, m0, m1 = decode(W, row, c)
            wf = to_f32(w)
            store(out, oo + 32 * c, fma(low_half(wf), splat(s0, 16), splat(m0, 16)))
            store(out, oo + 32 * c + 16, fma(high_half(wf), splat(s1, 16), splat(m1, 16)))

    return rows, dequant


# --- float rows -------------------------------------------------------------------------------


def _float_kernels(width: int, load_weights, load_weight):
    """The loops of a float type: `width` bytes per weight, read by the given loaders."""

    @njit(cache=True, _nrt=False)
    def dot(W, row, K, x, xo):
        acc = splat(float32(0), 16)
        n16 = K - K % 16
        for i in range(0, n16, 16):
            acc = fma(load_weights(W, row + width * i, 16), load(x, xo + i, 16), acc)
        total = hsum(acc)
        for i in range(n16, K):
            total += load_weight(W, row + width * i, 1) * x[xo + i]
        return total

    @njit(cache=True, _nrt=False)
    def rows(W, w_off, row_bytes, K, r0, r1, t0, t1, x, q, d, s16, s32, out, ldo, col0, out_t0):
        for t in range(t0, t1):
            for r in range(r0, r1):
                out[(t - out_t0) * ldo + col0 + r] = dot(W, w_off + r * row_bytes, K, x, t * K)

    @njit(cache=True, _nrt=False)
    def dequant(W, row, K, out, oo):
        n16 = K - K % 16
        for i in range(0, n16, 16):
            store(out, oo + i, load_weights(W, row + width * i, 16))
        for i in range(n16, K):
            out[oo + i] = load_weight(W, row + width * i, 1)

    return rows, dequant


# --- the kernels of every type ------------------------------------------------------------------

_BUILDERS = {
    Q4_0: lambda: _quantized_kernels(q4_0_chunk, False),
    Q4_1: lambda: _quantized_kernels(q4_1_chunk, False),
    Q5_0: lambda: _quantized_kernels(q5_0_chunk, False),
    Q5_1: lambda: _quantized_kernels(q5_1_chunk, False),
    Q8_0: lambda: _quantized_kernels(q8_0_chunk, False),
    IQ4_NL: lambda: _quantized_kernels(iq4_nl_chunk, False),
    Q2_K: lambda: _quantized_kernels(q2_k_chunk, True),
    Q3_K: lambda: _quantized_kernels(q3_k_chunk, True),
    Q4_K: lambda: _quantized_kernels(q4_k_chunk, False),
    Q5_K: lambda: _quantized_kernels(q5_k_chunk, False),
    Q6_K: lambda: _quantized_kernels(q6_k_chunk, True),
    IQ4_XS: lambda: _quantized_kernels(iq4_xs_chunk, False),
    F32: lambda: _float_kernels(4, load_f32, load_f32),
    F16: lambda: _float_kernels(2, load_f16, load_f16),
    BF16: lambda: _float_kernels(2, load_bf16, load_bf16),
}


@lru_cache(maxsize=None)
def kernels(qtype: int):
    """(rows, dequant) of a ggml type id, as Numba functions (see the module docstring)."""
    return _BUILDERS[int(qtype)]()


@lru_cache(maxsize=None)
def _c_kernels(qtype: int):
    return _c_rows(kernels(qtype)[0]), _c_dequant(kernels(qtype)[1])


# argument kinds of the two kernel signatures (arrays by dtype), for their C entry points
ROWS_ARGS = (np.uint8, int, int, int, int, int, int, int, np.float32, np.int8, np.float32, np.float32, np.float32, np.float32,
             int, int, int)
DEQUANT_ARGS = (np.uint8, int, int, np.float32, int)


def _c_rows(rows):
    @cfunc(c_signature(ROWS_ARGS), cache=True)
    def entry(W, nW, w_off, row_bytes, K, r0, r1, t0, t1, x, nx, q, nq, d, nd, s16, n16, s32, n32, out, nout, ldo, col0,
              out_t0):
        rows(carray(W, nW), w_off, row_bytes, K, r0, r1, t0, t1, carray(x, nx), carray(q, nq), carray(d, nd),
             carray(s16, n16), carray(s32, n32), carray(out, nout), ldo, col0, out_t0)

    return entry


def _c_dequant(dequant):
    @cfunc(c_signature(DEQUANT_ARGS), cache=True)
    def entry(W, nW, row, K, out, nout, oo):
        dequant(carray(W, nW), row, K, carray(out, nout), oo)

    return entry


def kernel_tables(qtypes) -> tuple[np.ndarray, np.ndarray]:
    """C entry points of the rows and dequant kernels of the given types, indexed by type id
    (0 for the others). Compiles the kernels that are not in the cache yet."""
    rows = np.zeros(max(SUPPORTED) + 1, np.int64)
    dequant = np.zeros_like(rows)
    for t in sorted({int(t) for t in qtypes}):
        rows[t], dequant[t] = (c.address for c in _c_kernels(t))
    return rows, dequant


@njit(cache=True, _nrt=False)
def call_rows(table, qtype, W, w_off, row_bytes, K, r0, r1, t0, t1, x, a, out, ldo, col0, out_t0):
    """rows() of type qtype through its C entry point in table (see kernel_tables), with the
    activation slot a."""
    call_c(table[qtype], (W, w_off, row_bytes, K, r0, r1, t0, t1, x, a.q, a.d, a.s16, a.s32, out, ldo, col0, out_t0))


@njit(cache=True, _nrt=False)
def call_dequant(table, qtype, W, row, K, out, oo):
    """dequant() of type qtype through its C entry point in table (see kernel_tables)."""
    call_c(table[qtype], (W, row, K, out, oo))
