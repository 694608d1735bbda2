"""Vectorized float32 math: exp and SiLU on 16 lanes.

LLVM turns a scalar expf in a loop into one libm call per value (tens of ns each); SwiGLU
and softmax need hundreds of thousands per token. Like ggml's ggml_v_expf, we evaluate exp
with a range reduction and a polynomial on whole vectors (Cephes' expf: error ~1 ulp).
"""

from __future__ import annotations

import math

import numpy as np

from llamatool.jit import njit

from .simd import as_f32, fma, fmax, fmin, load, rint, round_f16, splat, store, to_i32

from numba import float32, int32  # noqa: E402

_LOG2E = float32(1.44269504088896341)
_LN2_HI = float32(0.693359375)
_LN2_LO = float32(-2.12194440e-4)
_MAX = float32(88.3762626647949)
_MIN = float32(-87.3365447505531)  # below this exp underflows; clamp (softmax weights ~1e-38)


@njit(cache=True, _nrt=False, forceinline=True)
def vexp(x):
    """exp of 16 float32 lanes."""
    x = fmin(fmax(x, splat(_MIN, 16)), splat(_MAX, 16))
    n = rint(x * _LOG2E)
    r = fma(n, splat(-_LN2_HI, 16), x)
    r = fma(n, splat(-_LN2_LO, 16), r)
    p = splat(float32(1.9875691500e-4), 16)
    p = fma(p, r, splat(float32(1.3981999507e-3), 16))
    p = fma(p, r, splat(float32(8.3334519073e-3), 16))
    p = fma(p, r, splat(float32(4.1665795894e-2), 16))
    p = fma(p, r, splat(float32(1.6666665459e-1), 16))
    p = fma(p, r, splat(float32(5.0000001201e-1), 16))
    p = fma(p, r * r, r) + float32(1)
    scale = as_f32((to_i32(n) + int32(127)) << int32(23))
    return p * scale


@njit(cache=True, _nrt=False, forceinline=True)
def vsilu(x):
    """x * sigmoid(x) on 16 lanes (ggml_silu_f32: x / (1 + exp(-x)))."""
    return x / (vexp(-x) + float32(1))


@njit(cache=True, _nrt=False)
def swiglu(gate, up, o, n, out):
    """out[o+i] = silu(gate[o+i]) * up[o+i] for i < n (SwiGLU: ggml_swiglu_split)."""
    n16 = n - n % 16
    for i in range(o, o + n16, 16):
        store(out, i, vsilu(load(gate, i, 16)) * load(up, i, 16))
    for i in range(o + n16, o + n):
        g = gate[i]
        out[i] = g / (float32(1) + float32(math.exp(-g))) * up[i]


_GELU_COEF_A = float32(0.044715)
_SQRT_2_OVER_PI = float32(0.79788456080286535587989211986876)


@njit(cache=True, _nrt=False, forceinline=True)
def round_half(x):
    """x (float32) rounded to the nearest IEEE half, ties to even, as float32 (|x| < 65504).
    Through simd.round_f16 (a half round trip), not frexp/ldexp: those are Numba helper calls
    the saved machine code of the forward pass cannot link (native_forward)."""
    return round_f16(float32(x))


@njit(cache=True, _nrt=False)
def geglu(gate, up, o, n, out):
    """out[o+i] = gelu(gate[o+i]) * up[o+i] for i < n, as ggml_vec_geglu_f32 computes it
    (GGML_GELU_FP16): the tanh GELU read from a table of halves, i.e. of x rounded to a half,
    itself rounded to a half; exactly 0 below -10 and the identity from 10 on."""
    for i in range(o, o + n):
        x = gate[i]
        if x <= float32(-10):
            out[i] = float32(0)
        elif x >= float32(10):
            out[i] = x * up[i]
        else:
            h = round_half(x)
            g = float32(0.5) * h * (float32(1) + np.tanh(_SQRT_2_OVER_PI * h * (float32(1) + _GELU_COEF_A * h * h)))
            out[i] = round_half(g) * up[i]
