"""Float32 matrix products summed in the order ggml's CPU backend sums them, so that a result
llama.cpp computes with ggml_mul_mat on F32 tensors (llama-export-lora's B.A) can be
reproduced bit for bit.

out[n, k] = x[k] . y[n] (rows of length r), as ggml_compute_forward_mul_mat computes dst
from src0 rows x (m of them) and src1 rows y (n of them), built for the host CPU with W
float32 lanes per vector (host.ggml_f32_lanes: 16 on AVX-512F, 8 on AVX2):

- llamafile's tinyBLAS takes the product when r is a multiple of W, m of 4 and n >= 2: one
  W-lane accumulator per output, fused multiply-adds over the chunks of W, then the lanes
  summed as a halving tree (lane i + lane i + W/2, ..., down to one), which is what both
  _mm512_reduce_add_ps (GCC) and tinyBLAS's hsum(__m256) do;
- otherwise ggml_vec_dot_f32: four W-lane accumulators over steps of 4W (FMA), the four
  added pairwise (0+2, 1+3, then 0+1), the lanes reduced (AVX-512: the halving tree; AVX2:
  the halves added, then two horizontal adds of neighbours), and the r mod 4W leftovers
  added one by one: GCC vectorizes that loop at the width it prefers for the CPU (V lanes:
  host.ggml_loop_lanes, W or W/2), so whole vectors of leftovers are rounded products (V
  wide, then on AVX-512 a V/2-wide epilogue) and only the last few are fused multiply-adds.

Every output is computed by one thread in that order, so threads do not change the bits.
"""

from __future__ import annotations

import numpy as np

from llamatool.jit import njit, prange

from .simd import extract, fma, splat


@njit(cache=True, forceinline=True)
def _fma(a, b, c):
    """a*b + c rounded once, on float32 scalars."""
    return extract(fma(splat(a, 1), splat(b, 1), splat(c, 1)), 0)


@njit(cache=True, forceinline=True)
def _halving_tree(acc, lanes):
    """acc[0:lanes] summed as (i, i + half) pairs, half = lanes/2, lanes/4, ..., 1."""
    half = lanes // 2
    while half >= 1:
        for i in range(half):
            acc[i] = acc[i] + acc[i + half]
        half //= 2
    return acc[0]


@njit(cache=True, forceinline=True)
def _avx2_reduce(acc):
    """GGML_F32x8_REDUCE's last step: halves added, then neighbours twice (two hadds)."""
    t0, t1, t2, t3 = acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]
    return (t0 + t1) + (t2 + t3)


@njit(cache=True, forceinline=True)
def _tinyblas_dot(x, xo, y, yo, r, lanes, acc):
    for j in range(lanes):
        acc[j] = np.float32(0)
    for c in range(0, r, lanes):
        for j in range(lanes):
            acc[j] = _fma(x[xo + c + j], y[yo + c + j], acc[j])
    return _halving_tree(acc, lanes)


@njit(cache=True, forceinline=True)
def _vec_dot(x, xo, y, yo, r, lanes, loop_lanes, acc):
    step = 4 * lanes
    n_simd = r - r % step
    for j in range(step):
        acc[j] = np.float32(0)
    for i in range(0, n_simd, step):
        for j in range(step):
            acc[j] = _fma(x[xo + i + j], y[yo + i + j], acc[j])
    for j in range(2 * lanes):  # vectors 0, 1 += 2, 3
        acc[j] = acc[j] + acc[j + 2 * lanes]
    for j in range(lanes):  # vector 0 += 1
        acc[j] = acc[j] + acc[j + lanes]
    total = _halving_tree(acc, lanes) if lanes == 16 else _avx2_reduce(acc)
    return _leftovers(x, xo, y, yo, n_simd, r, loop_lanes, lanes == 16, total)


@njit(cache=True, forceinline=True)
def _leftovers(x, xo, y, yo, i, r, loop_lanes, epilogue, total):
    """vec_dot's `sumf += x[i]*y[i]` loop as GCC vectorizes it: products of whole vectors of
    loop_lanes rounded, then added one by one; with AVX-512 (epilogue) a half-wide vector
    epilogue after that loop; the last few fused multiply-adds (seen in llama.cpp's AVX-512
    builds: 16 then 8 where GCC prefers 512-bit vectors, 8 then 4 where it prefers 256)."""
    while r - i >= loop_lanes:
        for j in range(loop_lanes):
            total = total + x[xo + i + j] * y[yo + i + j]
        i += loop_lanes
    half = loop_lanes // 2
    if epilogue and r - i >= half:
        for j in range(half):
            total = total + x[xo + i + j] * y[yo + i + j]
        i += half
    for k in range(i, r):
        total = _fma(x[xo + k], y[yo + k], total)
    return total


@njit(cache=True, parallel=True)
def ggml_f32_products(x, y, lanes, loop_lanes, out):
    """out[n, k] = x[k] . y[n] in ggml's order (see the module) for vectors of `lanes` and
    leftover loops vectorized by `loop_lanes`: x (m, r), y (n, r), float32, C order; out
    (n, m) float32."""
    m, r = x.shape
    n = y.shape[0]
    tiny = r % lanes == 0 and m % 4 == 0 and n >= 2
    xf, yf = x.reshape(-1), y.reshape(-1)
    for row in prange(n):
        acc = np.empty(4 * lanes, np.float32)
        for k in range(m):
            if tiny:
                out[row, k] = _tinyblas_dot(xf, k * r, yf, row * r, r, lanes, acc)
            else:
                out[row, k] = _vec_dot(xf, k * r, yf, row * r, r, lanes, loop_lanes, acc)
