"""Activation quantization: what the other operand of a quantized dot product looks like.

ggml's CPU backend never multiplies quantized weights by floats: it first quantizes the
activation row to 8 bits (the weight type's `vec_dot_type`) and takes integer dot products.
We do the same, with the rounding of ggml's x86 kernels so our logits track llama.cpp's:

    Q8_0 / Q8_1  per 32 values: d = amax/127 (stored as f16), q = round_half_even(x * 127/amax)
    Q8_K         per 256 values: the value of largest magnitude `max`, iscale = -127/max,
                 q = min(127, round_half_even(iscale * x)), d = 1/iscale (float32)

Both land in one layout, an activation slot (`Activation`) of flat arrays for n_tok rows
of K values:

    q    int8[n_tok*K]        quantized values
    d    float32[n_tok*K/32]  scale of each 32-value chunk (Q8_K repeats its d 8 times)
    s16  float32[n_tok*K/16]  d times the sum of each 16 quantized values (Q8_K's bsums)
    s32  float32[n_tok*K/32]  d times the sum of each 32 (Q8_1's s)

The sums are what a weight offset multiplies (see blocks.py); made once per activation
row, they save every weight row the work. For the same reason a Q8_K slot keeps its q twice
(`activation_slot(n, paired=True)`): after the n values, from `paired_start`, each row again
with every 128 values in the order of their 32-value chunks 0, 2, 1, 3. That is the order in
which one 64-byte load of Q4_K or Q5_K weights gives them (its low nibbles are chunks 0 and
2, its high nibbles 1 and 3: see blocks.py), so their decode loops read one activation
vector per weight vector instead of gathering two halves (IQ4_XS's chunks come by halves,
and one permute of its two nibble vectors gives the same order).

Float weights get the activation rounded to their own type instead (F16 or BF16 values
kept in float32), as ggml converts src1 to the weight's vec_dot_type.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from llamatool.jit import njit

from .simd import as_f32, as_u32, extract, fabs, fmax, fmin, hmax, hsum, load, rint, round_f16, splat, store, to_i8, to_i32

from numba import float32, uint32  # noqa: E402

Activation = namedtuple("Activation", "q d s16 s32")


def activation_slot(n: int, paired: bool = False) -> Activation:
    """A slot for n activation values (rows of any width); paired: a Q8_K slot (see above)."""
    n32, n16 = -(-n // 32), -(-n // 16)
    return Activation(np.zeros(2 * n if paired else n, np.int8), np.zeros(n32, np.float32), np.zeros(n16, np.float32),
                      np.zeros(n32, np.float32))


@njit(cache=True, _nrt=False, forceinline=True)
def paired_start(q, t, K):
    """Where row t (of width K) of a Q8_K slot's paired copy starts in q."""
    return q.shape[0] // 2 + t * K


@njit(cache=True, _nrt=False, forceinline=True)
def paired_offset(c):
    """Where chunk c (of 8, in a group of 256 values) goes in the paired order."""
    return 128 * (c // 4) + 64 * (c % 2) + 32 * ((c % 4) // 2)


@njit(cache=True, _nrt=False)
def quantize_q8_0(x, xo, K, a, t):
    """Quantize x[xo:xo+K] into row t of the activation slot a, ggml Q8_0/Q8_1 style."""
    qo = t * K
    for b in range(K // 32):
        v0 = load(x, xo + 32 * b, 16)
        v1 = load(x, xo + 32 * b + 16, 16)
        amax = hmax(fmax(fabs(v0), fabs(v1)))
        dx = round_f16(amax / float32(127))
        inv = float32(127) / amax if amax != 0 else float32(0)
        q0 = to_i8(rint(v0 * inv))
        q1 = to_i8(rint(v1 * inv))
        store(a.q, qo + 32 * b, q0)
        store(a.q, qo + 32 * b + 16, q1)
        _set_scale_and_sums(a, t * (K // 32) + b, dx, hsum(to_i32(q0)), hsum(to_i32(q1)))


@njit(cache=True, _nrt=False, forceinline=True)
def _set_scale_and_sums(a, c, dx, sum0, sum1):
    """Chunk c of a slot: its scale, and the scaled sums of its two halves and of the whole."""
    a.d[c] = dx
    a.s16[2 * c] = dx * float32(sum0)
    a.s16[2 * c + 1] = dx * float32(sum1)
    a.s32[c] = dx * float32(sum0 + sum1)


@njit(cache=True, _nrt=False)
def _signed_absmax(x, o):
    """ggml's Q8_K `max`: the value of largest magnitude among x[o:o+256], first one on ties."""
    hi = load(x, o, 16)
    lo = hi
    for i in range(1, 16):
        v = load(x, o + 16 * i, 16)
        hi = fmax(hi, v)
        lo = fmin(lo, v)
    top = hmax(hi)
    bottom = -hmax(-lo)
    if top != -bottom:
        return top if top > -bottom else bottom
    for i in range(256):  # +a and -a both present: the first one wins
        if abs(x[o + i]) == top:
            return x[o + i]
    return top


@njit(cache=True, _nrt=False)
def quantize_q8_k(x, xo, K, a, t):
    """Quantize x[xo:xo+K] into row t of the activation slot a, ggml Q8_K style."""
    qo = t * K
    po = paired_start(a.q, t, K)
    for b in range(K // 256):
        o = xo + 256 * b
        vmax = _signed_absmax(x, o)
        if vmax == 0:
            iscale = float32(0)
            dd = float32(0)
        else:
            iscale = float32(-127) / vmax
            dd = float32(1) / iscale
        for c in range(8):
            # MIN(127, .) as ggml: only a rounding of 127.5 could go past it
            top = splat(float32(127), 16)
            v0 = to_i8(fmin(rint(load(x, o + 32 * c, 16) * iscale), top))
            v1 = to_i8(fmin(rint(load(x, o + 32 * c + 16, 16) * iscale), top))
            store(a.q, qo + 256 * b + 32 * c, v0)
            store(a.q, qo + 256 * b + 32 * c + 16, v1)
            store(a.q, po + 256 * b + paired_offset(c), v0)
            store(a.q, po + 256 * b + paired_offset(c) + 16, v1)
            _set_scale_and_sums(a, t * (K // 32) + 8 * b + c, dd, hsum(to_i32(v0)), hsum(to_i32(v1)))


@njit(cache=True, _nrt=False)
def round_row_f16(x, xo, K, out, oo):
    """out[oo:oo+K] = x[xo:xo+K] rounded to IEEE half (ggml's F16 vec_dot_type)."""
    n16 = K - K % 16
    for i in range(0, n16, 16):
        store(out, oo + i, round_f16(load(x, xo + i, 16)))
    for i in range(n16, K):
        out[oo + i] = round_f16(x[xo + i])


@njit(cache=True, _nrt=False, forceinline=True)
def _bf16(v):
    u = as_u32(v)
    u = (u + (((u >> uint32(16)) & uint32(1)) + uint32(0x7FFF))) & uint32(0xFFFF0000)
    return as_f32(u)


@njit(cache=True, _nrt=False)
def round_row_bf16(x, xo, K, out, oo):
    """out[oo:oo+K] = x[xo:xo+K] rounded to bfloat16, nearest even (ggml's BF16 vec_dot_type)."""
    n16 = K - K % 16
    for i in range(0, n16, 16):
        store(out, oo + i, _bf16(load(x, xo + i, 16)))
    for i in range(n16, K):
        out[oo + i] = extract(_bf16(splat(x[xo + i], 16)), 0)
