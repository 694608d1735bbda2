"""Causal attention over the KV cache, tiled: a block of queries against a block of positions.

The cache holds keys and values as IEEE halves (llama.cpp's default F16 cache), one region
per layer and KV head of `ctx` positions (the context size rounded up to STEP):

    values  [position][head dim]                         row-major, as llama.cpp's V
    keys    [position // 16][head dim][position % 16]    16 positions side by side

Keys are stored transposed in blocks of 16 positions so that one vector FMA, a broadcast
query element times 16 keys' element d, advances 16 dot products at once: the scores of 16
positions come out as one vector, with no horizontal sum per position.

A tile is every query head of a GQA group (they share the KV head) for a few consecutive
tokens. It walks the positions STEP at a time; each step's keys and values are read once
for all the tile's queries (they stay in L1), SUB queries at a time:

    scores    S = scale * Q K^T over the step, masked causally (a query at position p sees
              positions 0..p)
    softmax   online, as in FlashAttention: per query a running maximum m and sum l; when
              the maximum grows, the sum and the output accumulated so far are scaled by
              exp(m_old - m_new), so no query ever needs more scratch than one step
    output    O = O * alpha + P V, accumulated in place in the attention output rows, and
              divided by l at the end

As in ggml, the query is rounded to f16 before the dot products (the K cache's
vec_dot_type: the RoPE phase rounds it in place); scores, softmax and the weighted sum of
values stay in float32. A query's result does not depend on the tile it is in: a step a
query cannot see leaves its sum and output bit for bit unchanged (alpha = 1, weights 0).
"""

from __future__ import annotations

import numpy as np

from llamatool import jit  # noqa: F401  (sets the Numba cache dir before numba is used)

from llvmlite import ir  # noqa: E402
from numba import float32  # noqa: E402
from numba.core import types  # noqa: E402
from numba.extending import intrinsic, overload  # noqa: E402

from llamatool.jit import njit  # noqa: E402

from .simd import (  # noqa: E402
    _NATIVE_HALF, _element_ptr, _f16_bits_portable, Vector, extract, fma, fmax, get, hmax, hsum, load, load_f16, prefetch,
    splat, splat4, store,
)
from .vmath import vexp  # noqa: E402

KEY_BLOCK = 16  # positions side by side in the key layout
STEP = 32  # positions per step of a tile: two key blocks, two vectors of scores per query
SUB = 4  # queries whose scores and outputs are computed together (8 accumulators each way)
_NEG_INF = float32(-float("inf"))
_M_START = float32(-3.0e38)  # running maximum before any position: finite, so m - m stays 0


def cache_positions(n_ctx: int) -> int:
    """Positions per layer and KV head in the cache: n_ctx rounded up to a whole step, so a
    step never reads past its head's region."""
    return -(-n_ctx // STEP) * STEP


def scratch_floats(n_head: int, n_head_kv: int, head_dim: int, tokens_per_tile: int) -> int:
    """float32 scratch one thread needs for attend_tile: m and l of every query of a tile
    (and of SUB padding queries), the weights of SUB queries over one step, and one step's
    keys and values as float32."""
    return 2 * ((n_head // n_head_kv) * tokens_per_tile + SUB) + SUB * STEP + 2 * STEP * head_dim


# --- SIMD helpers of this module --------------------------------------------------------------


def _lane_mask_intrinsic(keep_below: bool):
    """An intrinsic f(v, n, fill): v with its lanes i < n (keep_below) or i >= n (otherwise)
    as they are and `fill` in the others; n may be <= 0 or >= the lane count."""

    @intrinsic
    def _mask(typingctx, v, n, fill):
        if not (isinstance(v, Vector) and isinstance(n, types.Integer) and fill == v.dtype):
            return None

        def codegen(context, builder, sig, args):
            vec, count, value = args
            i32 = ir.IntType(32)
            lanes = v.lanes
            count = context.cast(builder, count, sig.args[1], types.int64)
            count = builder.select(builder.icmp_signed("<", count, ir.Constant(count.type, 0)), ir.Constant(count.type, 0), count)
            count = builder.select(builder.icmp_signed(">", count, ir.Constant(count.type, lanes)),
                                   ir.Constant(count.type, lanes), count)
            nvec = ir.VectorType(i32, lanes)
            limit = builder.insert_element(ir.Constant(nvec, ir.Undefined), builder.trunc(count, i32), ir.Constant(i32, 0))
            limit = builder.shuffle_vector(limit, ir.Constant(nvec, ir.Undefined), ir.Constant(nvec, [0] * lanes))
            keep = builder.icmp_signed("<" if keep_below else ">=", ir.Constant(nvec, list(range(lanes))), limit)
            other = builder.insert_element(ir.Constant(vec.type, ir.Undefined), value, ir.Constant(i32, 0))
            other = builder.shuffle_vector(other, ir.Constant(vec.type, ir.Undefined), ir.Constant(nvec, [0] * lanes))
            return builder.select(keep, vec, other)

        return v(v, n, fill), codegen

    return _mask


keep_first = _lane_mask_intrinsic(True)  # lanes i < n kept
drop_first = _lane_mask_intrinsic(False)  # lanes i < n replaced (a sliding window's older positions)


@intrinsic
def scatter_f16(typingctx, arr, index, stride, v):
    """arr[index + i * stride] = v[i] as an IEEE half (round to nearest even), uint16 array."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint16 and isinstance(index, types.Integer)
            and isinstance(stride, types.Integer) and isinstance(v, Vector) and v.dtype == types.float32):
        return None

    def codegen(context, builder, sig, args):
        n = v.lanes
        i16, i32, i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
        if _NATIVE_HALF:
            bits = builder.bitcast(builder.fptrunc(args[3], ir.VectorType(ir.HalfType(), n)), ir.VectorType(i16, n))
        base = context.cast(builder, args[1], sig.args[1], types.int64)
        step = context.cast(builder, args[2], sig.args[2], types.int64)
        for i in range(n):
            k = ir.Constant(i32, i)
            lane = builder.extract_element(bits, k) if _NATIVE_HALF else _f16_bits_portable(
                builder, builder.extract_element(args[3], k))
            at = builder.add(base, builder.mul(step, ir.Constant(i64, i)))
            builder.store(lane, _element_ptr(context, builder, sig.args[0], args[0], at, i16))
        return context.get_dummy_value()

    return types.none(arr, index, stride, v), codegen


def load16(arr, index):
    """16 float32 lanes from a float32 array, or from a uint16 array of halves."""


@overload(load16)
def _load16(arr, index):
    if isinstance(arr, types.Array) and arr.dtype == types.uint16:
        return lambda arr, index: load_f16(arr, index, 16)
    if isinstance(arr, types.Array) and arr.dtype == types.float32:
        return lambda arr, index: load(arr, index, 16)


# --- the cache layout -------------------------------------------------------------------------


@njit(cache=True, _nrt=False, forceinline=True)
def key_offset(pos, head_dim):
    """Offset of element 0 of position pos's key within its head's region (the next element
    is KEY_BLOCK further)."""
    return (pos // KEY_BLOCK) * KEY_BLOCK * head_dim + pos % KEY_BLOCK


@njit(cache=True, _nrt=False, forceinline=True)
def store_key16(k_cache, region, pos, head_dim, d, k):
    """Key elements d..d+15 (a float32 vector) of position pos into a head's region."""
    scatter_f16(k_cache, region + key_offset(pos, head_dim) + d * KEY_BLOCK, KEY_BLOCK, k)


@njit(cache=True, _nrt=False, forceinline=True)
def store_value16(v_cache, region, pos, head_dim, d, v):
    """Value elements d..d+15 of position pos into a head's region."""
    scatter_f16(v_cache, region + pos * head_dim + d, 1, v)


@njit(cache=True, _nrt=False)
def store_kv(k, ko, v, vo, head_dim, pos, k_cache, v_cache, region):
    """Append one position's key k[ko:ko+head_dim] and value v[vo:...] to a head's region."""
    for d in range(0, head_dim, 16):
        store_key16(k_cache, region, pos, head_dim, d, load(k, ko + d, 16))
        store_value16(v_cache, region, pos, head_dim, d, load(v, vo + d, 16))


# --- one step of SUB queries ------------------------------------------------------------------


@njit(cache=True, _nrt=False, forceinline=True)
def _scores(q, qa, qb, qc, qd, k_cache, kb, head_dim):
    """Dot products of 4 queries (at q[qa], q[qb], ...) with the STEP keys of the key blocks
    at kb and kb + KEY_BLOCK * head_dim: two vectors per query."""
    z = splat(float32(0), 16)
    a0, a1, b0, b1, c0, c1, d0, d1 = z, z, z, z, z, z, z, z
    kb2 = kb + KEY_BLOCK * head_dim
    for d in range(head_dim):
        k0 = load16(k_cache, kb + d * KEY_BLOCK)
        k1 = load16(k_cache, kb2 + d * KEY_BLOCK)
        a0, a1 = _fma_both(get(q, qa + d), k0, k1, a0, a1)
        b0, b1 = _fma_both(get(q, qb + d), k0, k1, b0, b1)
        c0, c1 = _fma_both(get(q, qc + d), k0, k1, c0, c1)
        d0, d1 = _fma_both(get(q, qd + d), k0, k1, d0, d1)
    return a0, a1, b0, b1, c0, c1, d0, d1


@njit(cache=True, _nrt=False, forceinline=True)
def _fma_both(x, k0, k1, acc0, acc1):
    """One query element times both key blocks' lanes, into that query's two accumulators."""
    xs = splat(x, 16)
    return fma(xs, k0, acc0), fma(xs, k1, acc1)


@njit(cache=True, _nrt=False, forceinline=True)
def _masked_max(s0, s1, n_visible, n_hidden):
    """The scores with invisible positions set to -inf (the step's first n_hidden ones are
    older than a sliding window), and the largest visible one."""
    if n_visible < STEP:
        s0 = keep_first(s0, n_visible, _NEG_INF)
        s1 = keep_first(s1, n_visible - 16, _NEG_INF)
    if n_hidden > 0:
        s0 = drop_first(s0, n_hidden, _NEG_INF)
        s1 = drop_first(s1, n_hidden - 16, _NEG_INF)
    return s0, s1, hmax(fmax(s0, s1))


@njit(cache=True, _nrt=False, forceinline=True)
def _weights(s0, s1, m, n_visible, n_hidden, work, po):
    """exp(s - m) of the visible positions (exactly 0 for the others) into work[po:po+STEP];
    returns their sum."""
    p0 = vexp(s0 - m)
    p1 = vexp(s1 - m)
    if n_visible < STEP:
        p0 = keep_first(p0, n_visible, float32(0))
        p1 = keep_first(p1, n_visible - 16, float32(0))
    if n_hidden > 0:
        p0 = drop_first(p0, n_hidden, float32(0))
        p1 = drop_first(p1, n_hidden - 16, float32(0))
    store(work, po, p0)
    store(work, po + 16, p1)
    return hsum(p0 + p1)


@njit(cache=True, _nrt=False, forceinline=True)
def _store4(out, oa, ob, oc, od, n_real, a, b, c, d):
    """Store the vectors of the first n_real of 4 queries."""
    store(out, oa, a)
    if n_real > 1:
        store(out, ob, b)
    if n_real > 2:
        store(out, oc, c)
    if n_real > 3:
        store(out, od, d)


@njit(cache=True, _nrt=False, forceinline=True)
def _accumulate(out, oa, ob, oc, od, n_real, alpha, v_cache, vb, n_pos, head_dim, work, po):
    """out[o:o+head_dim] = out * alpha + sum over j < n_pos of weight j . value j, for 4
    queries' output rows; the weights are work[po + k*STEP + j] for query k, alpha is
    splat4(alpha_a, ...). Values are read 32 dims at a time, each once for the 4 queries.
    Only the first n_real rows are stored (the others are padding)."""
    aa, ab, ac, ad = extract(alpha, 0), extract(alpha, 4), extract(alpha, 8), extract(alpha, 12)
    for dd in range(0, head_dim - head_dim % 32, 32):
        a0 = load(out, oa + dd, 16) * aa
        a1 = load(out, oa + dd + 16, 16) * aa
        b0 = load(out, ob + dd, 16) * ab
        b1 = load(out, ob + dd + 16, 16) * ab
        c0 = load(out, oc + dd, 16) * ac
        c1 = load(out, oc + dd + 16, 16) * ac
        d0 = load(out, od + dd, 16) * ad
        d1 = load(out, od + dd + 16, 16) * ad
        for j in range(n_pos):
            v0 = load16(v_cache, vb + j * head_dim + dd)
            v1 = load16(v_cache, vb + j * head_dim + dd + 16)
            x = splat(get(work, po + j), 16)
            a0 = fma(x, v0, a0)
            a1 = fma(x, v1, a1)
            x = splat(get(work, po + STEP + j), 16)
            b0 = fma(x, v0, b0)
            b1 = fma(x, v1, b1)
            x = splat(get(work, po + 2 * STEP + j), 16)
            c0 = fma(x, v0, c0)
            c1 = fma(x, v1, c1)
            x = splat(get(work, po + 3 * STEP + j), 16)
            d0 = fma(x, v0, d0)
            d1 = fma(x, v1, d1)
        _store4(out, oa + dd, ob + dd, oc + dd, od + dd, n_real, a0, b0, c0, d0)
        _store4(out, oa + dd + 16, ob + dd + 16, oc + dd + 16, od + dd + 16, n_real, a1, b1, c1, d1)
    if head_dim % 32:
        dd = head_dim - 16
        a0 = load(out, oa + dd, 16) * aa
        b0 = load(out, ob + dd, 16) * ab
        c0 = load(out, oc + dd, 16) * ac
        d0 = load(out, od + dd, 16) * ad
        for j in range(n_pos):
            v0 = load16(v_cache, vb + j * head_dim + dd)
            a0 = fma(splat(get(work, po + j), 16), v0, a0)
            b0 = fma(splat(get(work, po + STEP + j), 16), v0, b0)
            c0 = fma(splat(get(work, po + 2 * STEP + j), 16), v0, c0)
            d0 = fma(splat(get(work, po + 3 * STEP + j), 16), v0, d0)
        _store4(out, oa + dd, ob + dd, oc + dd, od + dd, n_real, a0, b0, c0, d0)


@njit(cache=True, _nrt=False, forceinline=True)
def _online_softmax(s0, s1, n_visible, n_hidden, work, mi, po):
    """Fold one query's step scores into its running maximum work[mi]; the weights go to
    work[po:po+STEP]. Returns m_old - m_new (the log of the factor for its sum and output)
    and the sum of the weights."""
    s0, s1, best = _masked_max(s0, s1, n_visible, n_hidden)
    m_old = work[mi]
    m_new = max(m_old, best)
    work[mi] = m_new
    return m_old - m_new, _weights(s0, s1, m_new, n_visible, n_hidden, work, po)


@njit(cache=True, _nrt=False, forceinline=True)
def _scaled(s0, s1, scale, softcap, work, po):
    """A query's step scores times the scale; soft-capped to cap * tanh(s * scale / cap) when
    softcap > 0 (Gemma 2), as ggml's flash attention folds the scale into the division.
    The tanh is libm's tanhf, lane by lane through work[po:po+STEP] (the step's weights go
    there next): a vector tanh from exp loses the small scores' relative precision."""
    if softcap > 0:
        f = scale / softcap
        store(work, po, s0 * f)
        store(work, po + 16, s1 * f)
        for i in range(po, po + STEP):
            work[i] = np.tanh(work[i]) * softcap
        return load(work, po, 16), load(work, po + 16, 16)
    return s0 * scale, s1 * scale


@njit(cache=True, _nrt=False, forceinline=True)
def _hidden(limit, window, j0):
    """How many of the step's first positions a query at position `limit` cannot see because
    they are `window` or more positions older (0 without a window, or for padding queries)."""
    if window <= 0 or limit < 0:
        return 0
    return limit - window + 1 - j0


@njit(cache=True, _nrt=False, forceinline=True)
def _query(i, n_real, n_heads, q0, ldq, o0, ldo, head_dim, pos, state):
    """Where query i of a tile lives: q row, output row, last visible position, and its slot
    of m and l in the tile's state. Queries past n_real pad a group of SUB: they repeat the
    last query's row but see nothing and have slots of their own."""
    r = min(i, n_real - 1)
    t, h = r // n_heads, r % n_heads
    limit = pos + t if i < n_real else -1
    return q0 + t * ldq + h * head_dim, o0 + t * ldo + h * head_dim, limit, state + i


@njit(cache=True, _nrt=False, python_entry=False)
def _step(q, q0, out, o0, i0, n_q, n_heads, ldq, ldo, head_dim, pos, k_cache, v_cache, kb, vb, j0, scale, softcap, window,
          work, state, ls, po):
    """One step (positions j0..j0+STEP-1) of queries i0..i0+SUB-1 of a tile; m of query i at
    work[state + i], l at work[ls + i]."""
    qa, oa, la, ma = _query(i0, n_q, n_heads, q0, ldq, o0, ldo, head_dim, pos, state)
    qb, ob, lb, mb = _query(i0 + 1, n_q, n_heads, q0, ldq, o0, ldo, head_dim, pos, state)
    qc, oc, lc, mc = _query(i0 + 2, n_q, n_heads, q0, ldq, o0, ldo, head_dim, pos, state)
    qd, od, ld, md = _query(i0 + 3, n_q, n_heads, q0, ldq, o0, ldo, head_dim, pos, state)
    a0, a1, b0, b1, c0, c1, d0, d1 = _scores(q, qa, qb, qc, qd, k_cache, kb, head_dim)
    a0, a1 = _scaled(a0, a1, scale, softcap, work, po)
    b0, b1 = _scaled(b0, b1, scale, softcap, work, po + STEP)
    c0, c1 = _scaled(c0, c1, scale, softcap, work, po + 2 * STEP)
    d0, d1 = _scaled(d0, d1, scale, softcap, work, po + 3 * STEP)
    da, sa = _online_softmax(a0, a1, la + 1 - j0, _hidden(la, window, j0), work, ma, po)
    db, sb = _online_softmax(b0, b1, lb + 1 - j0, _hidden(lb, window, j0), work, mb, po + STEP)
    dc, sc = _online_softmax(c0, c1, lc + 1 - j0, _hidden(lc, window, j0), work, mc, po + 2 * STEP)
    dd, sd = _online_softmax(d0, d1, ld + 1 - j0, _hidden(ld, window, j0), work, md, po + 3 * STEP)
    alpha = vexp(splat4(da, db, dc, dd))  # the 4 rescale factors in one exp
    li = ls - state
    work[ma + li] = work[ma + li] * extract(alpha, 0) + sa
    work[mb + li] = work[mb + li] * extract(alpha, 4) + sb
    work[mc + li] = work[mc + li] * extract(alpha, 8) + sc
    work[md + li] = work[md + li] * extract(alpha, 12) + sd
    n_pos = min(STEP, max(max(la, lb), max(lc, ld)) + 1 - j0)
    _accumulate(out, oa, ob, oc, od, min(SUB, n_q - i0), alpha, v_cache, vb, n_pos, head_dim, work, po)


@njit(cache=True, _nrt=False, forceinline=True)
def _prefetch_step(k_cache, v_cache, at, head_dim):
    """Ask for the keys and values of the step at `at` (STEP * head_dim halves of each).
    A step's keys fill a 4 KiB page at head_dim 64, and the hardware prefetcher stops at
    every page: without this, each step of a long context would start with a DRAM miss."""
    for e in range(0, STEP * head_dim, 32):  # one 64-byte line per 32 halves
        prefetch(k_cache, at + e)
        prefetch(v_cache, at + e)


# --- a tile -----------------------------------------------------------------------------------


@njit(cache=True, _nrt=False)
def attend_tile(q, q0, ldq, n_tok, n_heads, head_dim, pos, k_cache, v_cache, region, scale, softcap, window, out, o0, ldo,
                work, wo):
    """Attention of n_heads query heads sharing one KV head, for n_tok consecutive tokens.

    Query (token t, head h) is q[q0 + t * ldq + h * head_dim:][:head_dim], already rounded
    to f16; its output goes to out[o0 + t * ldo + h * head_dim:]. Token t is at position pos + t and
    sees positions 0..pos + t of the head's cache region (starting at `region`, in the
    layout of the module docstring); with window > 0 only the last `window` of them
    (sliding-window attention, llama.cpp's LLAMA_SWA_TYPE_STANDARD). softcap > 0 caps the
    scaled scores at +-softcap (tanh). work[wo:wo + scratch_floats(...)] is scratch: m of
    every query (and SUB padding slots), then l, the weights of one step, and the step's
    keys and values in float32 when more than SUB queries share them.
    """
    n_q = n_tok * n_heads
    ms = wo
    ls = wo + n_q + SUB
    po = ls + n_q + SUB
    for i in range(n_q + SUB):
        work[ms + i] = _M_START
        work[ls + i] = float32(0)
    for i in range(n_q):
        o = o0 + (i // n_heads) * ldo + (i % n_heads) * head_dim
        for d in range(0, head_dim, 16):
            store(out, o + d, splat(float32(0), 16))
    keys = po + SUB * STEP
    values = keys + STEP * head_dim
    end = pos + n_tok
    first_step = 0 if window <= 0 else max(0, pos - window + 1) // STEP * STEP
    for j0 in range(first_step, end, STEP):
        kb = region + j0 * head_dim  # STEP is a multiple of KEY_BLOCK: block j0 // 16 starts here
        vb = region + j0 * head_dim
        if j0 + STEP < end:
            _prefetch_step(k_cache, v_cache, kb + STEP * head_dim, head_dim)
        if n_q > SUB:
            # several groups of queries read this step: convert its keys and values once
            for e in range(0, STEP * head_dim, 16):
                store(work, keys + e, load_f16(k_cache, kb + e, 16))
                store(work, values + e, load_f16(v_cache, vb + e, 16))
        for i0 in range(0, n_q, SUB):
            if pos + (min(i0 + SUB, n_q) - 1) // n_heads < j0:
                continue  # these queries' positions all come before the step
            if window > 0 and pos + i0 // n_heads - window + 1 >= j0 + STEP:
                continue  # the step is older than all these queries' windows
            if n_q > SUB:
                _step(q, q0, out, o0, i0, n_q, n_heads, ldq, ldo, head_dim, pos, work, work, keys, values, j0, scale, softcap,
                      window, work, ms, ls, po)
            else:
                _step(q, q0, out, o0, i0, n_q, n_heads, ldq, ldo, head_dim, pos, k_cache, v_cache, kb, vb, j0, scale, softcap,
                      window, work, ms, ls, po)
    for i in range(n_q):
        inv = float32(1) / work[ls + i]
        o = o0 + (i // n_heads) * ldo + (i % n_heads) * head_dim
        for d in range(0, head_dim, 16):
            store(out, o + d, load(out, o + d, 16) * inv)
