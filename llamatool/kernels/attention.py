"""Causal attention of one query head over the KV cache, linear in the context length.

The cache holds keys and values as IEEE halves (llama.cpp's default F16 cache), laid out
[layer][kv head][position][head dim] so one head's keys for all positions are one stream.
As in ggml, the query is rounded to f16 before the Q.K dot products (the K cache's
vec_dot_type); scores, softmax and the weighted sum of values stay in float32.
"""

from __future__ import annotations

from llamatool.jit import njit

from .simd import fma, hmax, hsum, load, load_f16, round_f16, splat, store
from .vmath import vexp

from numba import float32  # noqa: E402


@njit(cache=True, _nrt=False)
def attend(q, qo, k_cache, v_cache, kv_off, n_pos, head_dim, scale, scores, so, out, oo):
    """out[oo:oo+head_dim] = softmax(scale * K q) . V over positions 0..n_pos-1.

    q[qo:qo+head_dim] is the (roped) query; k_cache/v_cache are uint16 halves with this
    head's position 0 at kv_off; scores[so:so+n_pos] is scratch.
    """
    best = float32(-3.0e38)
    for j in range(n_pos):
        acc = splat(float32(0), 16)
        row = kv_off + j * head_dim
        for d in range(0, head_dim, 16):
            acc = fma(round_f16(load(q, qo + d, 16)), load_f16(k_cache, row + d, 16), acc)
        s = hsum(acc) * scale
        scores[so + j] = s
        best = max(best, s)
    # softmax weights, 16 positions at a time
    total = float32(0)
    n16 = n_pos - n_pos % 16
    for j in range(so, so + n16, 16):
        e = vexp(load(scores, j, 16) - best)
        store(scores, j, e)
        total += hsum(e)
    for j in range(so + n16, so + n_pos):
        e = vexp(splat(scores[j] - best, 16))
        scores[j] = hmax(e)
        total += scores[j]
    inv = float32(1) / total
    for d in range(0, head_dim, 16):
        acc = splat(float32(0), 16)
        for j in range(n_pos):
            acc = fma(splat(scores[so + j], 16), load_f16(v_cache, kv_off + j * head_dim + d, 16), acc)
        store(out, oo + d, acc * inv)
