"""Tiled attention over the f16 KV cache against float64 numpy: causal masks, grouped-query
heads, tiles and contexts that are not multiples of the kernel's blocks, a cache already
holding earlier positions, and the cache layout itself."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llamatool.kernels.attention import KEY_BLOCK, attend_tile, cache_positions, scratch_floats, store_kv


def layout(keys: np.ndarray, values: np.ndarray, n_ctx: int):
    """One head's cache region as the module docstring describes it, built with numpy:
    keys [p // 16][d][p % 16], values [p][d], halves as uint16."""
    n_pos, hd = keys.shape
    ctx = cache_positions(n_ctx)
    k = np.zeros((ctx // KEY_BLOCK, hd, KEY_BLOCK), np.float16)
    v = np.zeros((ctx, hd), np.float16)
    for p in range(n_pos):
        k[p // KEY_BLOCK, :, p % KEY_BLOCK] = keys[p]
    v[:n_pos] = values
    return k.reshape(-1).view(np.uint16), v.reshape(-1).view(np.uint16)


def reference(q16: np.ndarray, keys: np.ndarray, values: np.ndarray, pos: int, scale: float, softcap: float = 0.0,
              window: int = 0) -> np.ndarray:
    """Causal softmax attention in float64: q16 (n_tok, n_heads, hd) at positions pos...
    (transformers' Gemma 2: scores soft-capped to softcap * tanh(s / softcap), and a query at
    position p seeing p - window < j <= p)."""
    n_tok, n_heads, hd = q16.shape
    out = np.zeros((n_tok, n_heads, hd))
    K, V = keys.astype(np.float64), values.astype(np.float64)
    for t in range(n_tok):
        n = pos + t + 1
        lo = max(0, n - window) if window > 0 else 0
        s = q16[t].astype(np.float64) @ K[lo:n].T * scale  # (heads, n - lo)
        if softcap > 0:
            s = softcap * np.tanh(s / softcap)
        p = np.exp(s - s.max(1, keepdims=True))
        out[t] = (p / p.sum(1, keepdims=True)) @ V[lo:n]
    return out


def run_tile(q16, keys, values, pos, scale, n_ctx, *, ldq_pad=5, ldo_pad=3, offset=7, region=0, softcap=0.0, window=0):
    """attend_tile on padded q/out rows at nonzero offsets, the head's region at `region`."""
    n_tok, n_heads, hd = q16.shape
    k_region, v_region = layout(keys, values, n_ctx)
    k_cache = np.concatenate([np.full(region, 0x7C00, np.uint16), k_region])  # +inf before: must not be read
    v_cache = np.concatenate([np.full(region, 0x7C00, np.uint16), v_region])
    ldq, ldo = n_heads * hd + ldq_pad, n_heads * hd + ldo_pad
    q = np.zeros(offset + n_tok * ldq, np.float32)
    out = np.full(offset + n_tok * ldo, 99.0, np.float32)
    for t in range(n_tok):
        q[offset + t * ldq: offset + t * ldq + n_heads * hd] = q16[t].reshape(-1)
    work = np.zeros(11 + scratch_floats(n_heads, 1, hd, n_tok), np.float32)
    attend_tile(q, offset, ldq, n_tok, n_heads, hd, pos, k_cache, v_cache, region, np.float32(scale), np.float32(softcap),
                np.int64(window), out, offset, ldo, work, 11)
    got = np.stack([out[offset + t * ldo: offset + t * ldo + n_heads * hd].reshape(n_heads, hd) for t in range(n_tok)])
    untouched = np.ones(out.size, bool)
    for t in range(n_tok):
        untouched[offset + t * ldo: offset + t * ldo + n_heads * hd] = False
    assert (out[untouched] == 99.0).all()  # nothing written outside the output rows
    return got


def random_case(rng, n_tok, n_heads, hd, pos, spread=1.0):
    n_pos = pos + n_tok
    q16 = (spread * rng.standard_normal((n_tok, n_heads, hd))).astype(np.float16).astype(np.float32)
    keys = rng.standard_normal((n_pos, hd)).astype(np.float16)
    values = rng.standard_normal((n_pos, hd)).astype(np.float16)
    return q16, keys, values


@pytest.mark.parametrize(
    "n_tok, n_heads, hd, pos",
    [
        (1, 1, 64, 0),  # one position
        (1, 3, 64, 36),  # a decode step, SmolLM2's group of 3: one padding query
        (8, 3, 64, 0),  # a whole prefill tile from position 0
        (5, 3, 64, 27),  # a short tile across a step boundary, cache already holding 27
        (8, 4, 32, 70),  # 4 heads per KV head, 32-dim heads
        (7, 1, 48, 13),  # a head dim that is not a multiple of 32
        (1, 4, 48, 50),  # ... in a decode step (the keys and values read as halves directly)
        (3, 2, 128, 95),  # 128-dim heads
    ],
)
def test_tile_matches_float64_reference(n_tok, n_heads, hd, pos):
    rng = np.random.default_rng(n_tok * 1000 + pos)
    q16, keys, values = random_case(rng, n_tok, n_heads, hd, pos)
    scale = 1 / math.sqrt(hd)
    got = run_tile(q16, keys, values, pos, scale, n_ctx=pos + n_tok + 3, region=3 * hd)
    np.testing.assert_allclose(got, reference(q16, keys, values, pos, scale), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize(
    "n_tok, n_heads, pos, window",
    [
        (1, 3, 100, 16),  # a decode step far past the window: the early steps are skipped
        (8, 2, 40, 16),  # a prefill tile whose window starts inside a step
        (8, 4, 0, 5),  # from position 0, a window shorter than the tile
        (5, 1, 60, 33),  # a window one past a step
        (3, 3, 20, 64),  # a window longer than the context: plain causal attention
    ],
)
def test_sliding_window_matches_float64_reference(n_tok, n_heads, pos, window):
    rng = np.random.default_rng(pos + window)
    q16, keys, values = random_case(rng, n_tok, n_heads, 64, pos)
    got = run_tile(q16, keys, values, pos, 0.125, n_ctx=pos + n_tok, window=window)
    np.testing.assert_allclose(got, reference(q16, keys, values, pos, 0.125, window=window), rtol=1e-5, atol=2e-6)
    # and it differs from attention over every position (when the window hides some)
    if pos + n_tok > window:
        assert np.abs(got - reference(q16, keys, values, pos, 0.125)).max() > 1e-3


def test_soft_capped_scores_match_float64_reference():
    # large scores, capped at +-5: without the cap the softmax would be far more peaked
    rng = np.random.default_rng(11)
    q16, keys, values = random_case(rng, 6, 2, 64, 30, spread=4.0)
    got = run_tile(q16, keys, values, 30, 0.25, n_ctx=40, softcap=5.0, window=20)
    expected = reference(q16, keys, values, 30, 0.25, softcap=5.0, window=20)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected - reference(q16, keys, values, 30, 0.25, window=20)).max() > 1e-2


def test_peaked_scores_and_a_growing_maximum():
    # large scores that keep growing along the positions make the online softmax rescale
    # its sum and output at every step; exp must neither overflow nor lose the early terms
    rng = np.random.default_rng(3)
    n_tok, n_heads, hd, pos = 4, 3, 64, 200
    q16, keys, values = random_case(rng, n_tok, n_heads, hd, pos, spread=4.0)
    keys = (keys.astype(np.float32) * np.linspace(0.2, 3, pos + n_tok)[:, None]).astype(np.float16)
    got = run_tile(q16, keys, values, pos, 0.125, n_ctx=512)
    # scores reach ~30 here: float32 rounding of the dot products alone (~1e-6 relative, of
    # sum |q k| ~ 80) moves each weight by ~5e-6 relative, and the output with it
    np.testing.assert_allclose(got, reference(q16, keys, values, pos, 0.125), rtol=1e-5, atol=2e-5)


def test_a_query_does_not_depend_on_its_tile():
    # the same query alone, or with later tokens in its tile (which see more positions),
    # gives the same bits: prefill in chunks of any size and decode agree exactly (a tile
    # of 24 queries reads the keys and values converted to float32, one of 3 reads halves)
    rng = np.random.default_rng(5)
    q16, keys, values = random_case(rng, 8, 3, 64, 40)
    whole = run_tile(q16, keys, values, 40, 0.125, n_ctx=64)
    for t in (0, 3, 7):
        alone = run_tile(q16[t:t + 1], keys[:41 + t], values[:41 + t], 40 + t, 0.125, n_ctx=64)
        np.testing.assert_array_equal(alone[0], whole[t])


def test_store_kv_writes_the_documented_layout():
    rng = np.random.default_rng(9)
    hd, n_ctx, n_pos, region = 64, 40, 37, 2 * 64 * cache_positions(40)
    keys = rng.standard_normal((n_pos, hd)).astype(np.float32)
    values = rng.standard_normal((n_pos, hd)).astype(np.float32)
    size = region + hd * cache_positions(n_ctx)
    k_cache = np.zeros(size, np.uint16)
    v_cache = np.zeros(size, np.uint16)
    src_k = np.concatenate([np.zeros(5, np.float32), keys.reshape(-1)])
    src_v = np.concatenate([np.zeros(9, np.float32), values.reshape(-1)])
    for p in rng.permutation(n_pos):  # any order: each position has its own slots
        store_kv(src_k, 5 + p * hd, src_v, 9 + p * hd, hd, p, k_cache, v_cache, region)
    k_ref, v_ref = layout(keys.astype(np.float16), values.astype(np.float16), n_ctx)  # round to nearest even
    np.testing.assert_array_equal(k_cache[region:], k_ref)
    np.testing.assert_array_equal(v_cache[region:], v_ref)
    assert not k_cache[:region].any() and not v_cache[:region].any()


def test_cache_positions_cover_whole_steps():
    assert [cache_positions(n) for n in (1, 31, 32, 33, 4096)] == [32, 32, 32, 64, 4096]
