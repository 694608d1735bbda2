"""RMSNorm as ggml computes it: sum of squares in float64, then x * scale * weight in float32."""

from __future__ import annotations

import numpy as np

from llamatool.jit import njit

from .simd import hsum, load, load_f32, splat, store, to_f64

from numba import float32, float64  # noqa: E402


@njit(cache=True, _nrt=False)
def rmsnorm(x, xo, K, eps, W, w_off, out, oo):
    """out[oo:oo+K] = x[xo:xo+K] / sqrt(mean(x^2) + eps) * weight, the weight being K float32
    values at byte offset w_off of W (the mapped file)."""
    n16 = K - K % 16
    acc = splat(float64(0), 16)
    for i in range(0, n16, 16):
        v = load(x, xo + i, 16)
        acc = acc + to_f64(v * v)
    total = hsum(acc)
    for i in range(n16, K):
        total += float64(x[xo + i] * x[xo + i])
    mean = float32(total / K)
    scale = float32(1) / np.sqrt(mean + eps)
    for i in range(0, n16, 16):
        store(out, oo + i, (load(x, xo + i, 16) * scale) * load_f32(W, w_off + 4 * i, 16))
    for i in range(n16, K):
        out[oo + i] = (x[xo + i] * scale) * load_f32(W, w_off + 4 * i, 1)
