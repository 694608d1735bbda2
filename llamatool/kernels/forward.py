"""The forward pass of every supported family as one compiled call over preallocated buffers.

The LLaMA pass; a family's differences (llamatool.arch) arrive as data: biases, Q/K norms,
post-attention and post-FFN norms (Gemma's sandwich) and a fused gate|up matrix (Phi-3)
wherever the layer table has them; NEOX rope, NoPE layers, GELU, sliding-window layers and
their own rope base as Dims switches; embedding scale, query scale and soft-caps as
FloatParams.

One call evaluates n_tok tokens (a prompt batch, a single decode step, or the tokens of
several sequences at once), appends their keys and values to the cache and writes logits.
A `Batch` says where each token goes: its position, and where its sequence's region starts
in the caches (several sequences share one cache array, each in its own range). Matrix
products go over all the tokens at once (the weights are read once per call, whatever the
number of sequences); attention goes over each sequence's own keys and values. All threads run
`forward_worker`, the same sequence of phases; each phase is cut into chunks claimed through
atomic counters (see sync.py), so threads meet once per call, not once per op:

    embed        token rows of token_embd (dequantized), RoPE angles of each position
    per layer    attn norm + activation quantization      (chunk = token)
                 Q, K, V projections, then RoPE and K, V   (chunk = rows of one matrix)
                 into the f16 cache
                 attention       (chunk = query heads of a KV head x 8 tokens, split
                                  into runs of one sequence at consecutive positions)
                 quantize attention output                (chunk = token)
                 output projection + residual             (chunk = rows)
                 [post-attention norm + residual]         (chunk = token)
                 ffn norm + activation quantization       (chunk = token)
                 gate and up projections, SwiGLU/GEGLU    (chunk = rows of both)
                 quantize                                 (chunk = token)
                 down projection + residual               (chunk = rows)
                 [post-FFN norm + residual]               (chunk = token)
    output       final norm, quantization, logits         (tokens that need logits only)

In the last layer only the tokens that need logits go through attention, the output
projection and the FFN (their keys and values for the cache were already made), as
llama.cpp does.

Batch invariance: the products of many tokens (gemm.py, from gemm.MIN_TOKENS tokens up)
sum in another order than those of one token, so a token's bits would depend on how many
tokens share its call. Tokens Batch.n_fast.. therefore go through the one-token steps only,
in groups of up to gemm.MIN_TOKENS - 1 tokens (a small batch runs every token by the
one-token steps while the weights are in L1): a server's slot gets the same logits alone or
beside others. Tokens ..n_fast share the
fast products (prompts; Model.eval uses them for every token); with gemm.MIN_TOKENS of them
or more, a token's result there does not depend on the others either (gemm.py). A model
loaded with repack=True has its quantized matrices packed once (gemm.pack_panels): their
products take every token by the panels, any number at once, one included, so every token
gets the same bits in any call and a step of several slots costs little more than one.

The model arrives as a `Net` (built by llamatool.model): the mapped file `data`; `tensors`
with one row per tensor (byte offset in data, ggml type, row length, row count, bytes per
row, where its packed panels start in `packed`, or -1); `layers` holding per layer the tensor index of each role (LAYER_* below, -1 if
absent); `globals` (token embedding, output norm, output matrix); `rows`/`dequant`, the C
entry points of the matmul kernels by type id (matmul.kernel_tables), `packed_rows` those of
the products of packed panels by kind (matmul.packed_table); `freq_factors` for
RoPE; `lora`, the low-rank terms of LoRA adapters (kernels/lora.py: the phase preparing an
input computes the A.x of the matrices it feeds, and every product adds its B.u).
"""

from __future__ import annotations

from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from llamatool.jit import njit

from .actquant import quantize_q8_0, quantize_q8_k, round_row_bf16, round_row_f16
from .ccall import call_c
from .attention import attend_tile, cache_positions, scratch_floats, store_key16, store_value16
from .gemm import MIN_TOKENS as GEMM_MIN_TOKENS
from .lora import lora_down3, lora_embed, lora_up
from .matmul import call_dequant, call_rows
from .norm import rmsnorm
from .rope import rope_angles, rope_rotate, rope_rotate_neox
from .simd import load, load_f32, round_f16, store
from .sync import claim, finish, wait
from .types import BF16, F16, F32, IQ1_M, IQ1_S, IQ2_S, IQ2_XS, IQ2_XXS, IQ3_S, IQ3_XXS, IQ4_XS, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, TQ1_0, TQ2_0
from .vmath import geglu, swiglu

from numba import float32, int64  # noqa: E402  (int64(0): a plain int, not a literal; see jit.njit)

# columns of the tensor table; T_PACKED: where the matrix's panels packed at load start in
# Net.packed, -1 if it has none; T_PACKED_KIND: their gemm.packed_kind
T_OFFSET, T_TYPE, T_K, T_ROWS, T_ROW_BYTES, T_PACKED, T_PACKED_KIND = 0, 1, 2, 3, 4, 5, 6
N_TENSOR_COLUMNS = 7
# roles of a layer's tensors (columns of the layer table)
LAYER_ATTN_NORM = 0
LAYER_WQ = 1
LAYER_WK = 2
LAYER_WV = 3
LAYER_WQKV = 4
LAYER_WO = 5
LAYER_FFN_NORM = 6
LAYER_GATE = 7
LAYER_UP = 8
LAYER_DOWN = 9
LAYER_BQ = 10
LAYER_BK = 11
LAYER_BV = 12
LAYER_BQKV = 13
LAYER_BO = 14
LAYER_BGATE = 15
LAYER_BUP = 16
LAYER_BDOWN = 17
LAYER_Q_NORM = 18  # per-head RMSNorm of Q and K before RoPE (Qwen3)
LAYER_K_NORM = 19
LAYER_ATTN_POST_NORM = 20  # RMSNorm of the attention output before the residual (Gemma 2/3)
LAYER_FFN_POST_NORM = 21  # ... and of the FFN output
N_LAYER_ROLES = 22
# global tensors
GLOBAL_TOK_EMBD, GLOBAL_OUTPUT_NORM, GLOBAL_OUTPUT = 0, 1, 2

# A matrix is cut into CHUNKS_PER_THREAD chunks per thread (of at least MIN_CHUNK_ROWS rows):
# enough for threads to even out, few enough that claiming them costs little (a claim is an
# atomic add on a cache line the threads share: ~100 ns when they contend for it).
CHUNKS_PER_THREAD = 4
MIN_CHUNK_ROWS = 16
TOKENS_PER_ATTENTION_CHUNK = 8

# activation formats a group of weights needs (bit flags)
NEED_Q8_0, NEED_Q8_K, NEED_F16, NEED_BF16 = 1, 2, 4, 8

# packed: uint32 panels of the matrices packed at load (empty if none), packed_rows: the C entry
# points of their products by packed kind (matmul.packed_table)
Net = namedtuple("Net", "data tensors layers globals rows dequant freq_factors lora packed packed_rows")
# Dims.n_ctx is the cache's positions per layer and KV head: kv_cache_positions(context size)
# rope_neox: 1 rotates the two halves of a head (llama.cpp's NEOX rope), 0 adjacent pairs;
# nope_every: > 0 leaves RoPE out of layers il with (il + 1) % nope_every == 0 (SmolLM3);
# gelu: 1 for a GELU(tanh)-gated FFN (Gemma), 0 SwiGLU;
# n_swa > 0: sliding-window layers see only the last n_swa positions; which layers: those with
# swa_pattern == 0 or il % swa_pattern < swa_pattern - 1 (llama.cpp's set_swa_pattern);
# swa_rope: 1 if those layers rotate by their own angles (theta_scale_swa, freq_scale_swa)
Dims = namedtuple("Dims", "n_embd n_layer n_head n_head_kv head_dim n_ff n_vocab n_ctx n_rot n_threads rope_neox nope_every "
                          "gelu n_swa swa_pattern swa_rope")
# embd_scale: token embeddings are multiplied by it (Gemma: sqrt(n_embd)); q_scale multiplies
# the query before its f16 rounding and kq_scale the scores (llama.cpp scales one or the
# other by family); attn_softcap / final_softcap > 0 cap scores / logits with tanh (Gemma 2)
FloatParams = namedtuple("FloatParams", "theta_scale freq_scale ext_factor attn_factor corr0 corr1 eps kq_scale "
                                        "embd_scale q_scale attn_softcap final_softcap theta_scale_swa freq_scale_swa")
# a8/ak: Q8_0/Q8_K slots; scores: n_threads equal parts of attention_scratch_floats each;
# sq: empty, or the running sums of squares of every matrix input (see input_square_sums)
Scratch = namedtuple("Scratch", "x xn qkv att tmp gate up xr a8 ak angles scores sq")
# per token t < n_tok: pos[t] its position in its sequence, kv[t] where its sequence's region
# starts in the caches (0 for the model's own cache); tokens n_fast.. get one-token bits
Batch = namedtuple("Batch", "pos kv n_fast")


def kv_cache_positions(n_ctx: int) -> int:
    """Positions per layer and KV head to allocate in each cache for a context of n_ctx."""
    return cache_positions(n_ctx)


def attention_scratch_floats(n_head: int, n_head_kv: int, head_dim: int) -> int:
    """float32 attention scratch per thread (Scratch.scores holds one per thread)."""
    return scratch_floats(n_head, n_head_kv, head_dim, TOKENS_PER_ATTENTION_CHUNK)


def phases_per_call(n_layer: int) -> int:
    """Upper bound of the number of phases of one forward call (sizes the counters): 11 per
    layer (Gemma's two post-norms included) and 3 around them, and 4 per layer and 1 more when
    input squares are summed."""
    return 1 + 15 * n_layer + 3


# Where the sums of squares of each matrix input go in Scratch.sq: per layer the input of
# Q/K/V (n_embd), of the attention output (n_q), of gate/up (n_embd) and of down (n_ff),
# then the input of the output matrix (n_embd).
SQ_ATTN_IN, SQ_ATTN_OUT, SQ_FFN_IN, SQ_FFN_DOWN = 0, 1, 2, 3


def input_square_sums(n_embd: int, n_q: int, n_ff: int, n_layer: int) -> tuple[list[list[tuple[int, int]]], tuple[int, int]]:
    """(offset, width) in Scratch.sq of each layer's four inputs (SQ_* order) and of the
    output matrix's input."""
    widths = (n_embd, n_q, n_embd, n_ff)
    stride = sum(widths)
    layers = [[(il * stride + sum(widths[:k]), widths[k]) for k in range(4)] for il in range(n_layer)]
    return layers, (n_layer * stride, n_embd)


# --- pieces of a phase --------------------------------------------------------------------


@njit(cache=True, _nrt=False, python_entry=False)
def _formats(T, a, b, c):
    """NEED_* flags for the activation feeding tensors a, b, c (-1 = none)."""
    flags = 0
    for i in (a, b, c):
        if i < 0:
            continue
        t = T[i, T_TYPE]
        if t == F16:
            flags |= NEED_F16
        elif t == BF16:
            flags |= NEED_BF16
        elif t == Q2_K or t == Q3_K or t == Q4_K or t == Q5_K or t == Q6_K or t == IQ4_XS or t == TQ1_0 or t == TQ2_0 or t == IQ2_XXS or t == IQ3_S or t == IQ2_XS or t == IQ3_XXS or t == IQ2_S or t == IQ1_S or t == IQ1_M:
            flags |= NEED_Q8_K
        elif t != F32:
            flags |= NEED_Q8_0
    return flags


@njit(cache=True, _nrt=False, python_entry=False)
def _prepare(src, t, K, flags, s):
    """Row t of src (width K) into the activation slots the next matmuls need."""
    if flags & NEED_Q8_0:
        quantize_q8_0(src, t * K, K, s.a8, t)
    if flags & NEED_Q8_K:
        quantize_q8_k(src, t * K, K, s.ak, t)
    if flags & NEED_F16:
        round_row_f16(src, t * K, K, s.xr, t * K)
    elif flags & NEED_BF16:
        round_row_bf16(src, t * K, K, s.xr, t * K)


# Tokens one rows() call may take while giving each token the bits of a one-token call: below
# gemm.MIN_TOKENS every type runs each token of a call by the one-token steps (matmul._small_batch)
EXACT_GROUP = GEMM_MIN_TOKENS - 1


@njit(cache=True, _nrt=False, python_entry=False)
def _matmul(net, i, r0, r1, t0, t1, src, s, out, ldo, col0, out_t0, n_fast):
    """Rows r0..r1 of tensor i times activation rows t0..t1 (prepared from src); rows
    n_fast.. in groups that keep one-token bits (see the module docstring), unless the matrix
    is packed: its product gives a token the same bits in any call."""
    T = net.tensors
    qtype = T[i, T_TYPE]
    x = s.xr if qtype == F16 or qtype == BF16 else src
    a = s.ak if _formats(T, i, -1, -1) & NEED_Q8_K else s.a8
    if T[i, T_PACKED] >= 0:
        call_c(net.packed_rows[T[i, T_PACKED_KIND]], (net.packed, T[i, T_PACKED], T[i, T_K], r0, r1, t0, t1, a.q, a.d, a.s16, a.s32,
                                        out, ldo, col0, out_t0))
        lora_up(net.lora, i, r0, r1, t0, t1, out, ldo, col0, out_t0)
        return
    split = max(t0, min(t1, n_fast))
    if split > t0:
        call_rows(net.rows, qtype, net.data, T[i, T_OFFSET], T[i, T_ROW_BYTES], T[i, T_K], r0, r1, t0, split, x, a,
                  out, ldo, col0, out_t0)
    for g0 in range(split, t1, EXACT_GROUP):
        call_rows(net.rows, qtype, net.data, T[i, T_OFFSET], T[i, T_ROW_BYTES], T[i, T_K], r0, r1, g0,
                  min(g0 + EXACT_GROUP, t1), x, a, out, ldo, col0, out_t0)
    lora_up(net.lora, i, r0, r1, t0, t1, out, ldo, col0, out_t0)


@njit(cache=True, _nrt=False, python_entry=False)
def _add_bias(net, b, r0, r1, t0, t1, out, ldo, col0):
    if b < 0:
        return
    for t in range(t0, t1):
        for r in range(r0, r1):
            out[t * ldo + col0 + r] += load_f32(net.data, net.tensors[b, T_OFFSET] + 4 * r, 1)


@njit(cache=True, _nrt=False, forceinline=True)
def _chunk_rows(T, i, nth, unit=16):
    """Rows per chunk of tensor i for nth threads: a multiple of unit (16, or a head's rows
    where a chunk must hold whole heads)."""
    n_chunks = CHUNKS_PER_THREAD * nth
    per = (T[i, T_ROWS] + n_chunks - 1) // n_chunks
    return max(MIN_CHUNK_ROWS, (per + unit - 1) // unit * unit)


@njit(cache=True, _nrt=False, forceinline=True)
def _ffn_chunk_rows(n_ff, nth):
    """Rows per chunk of the gate and up projections (as _chunk_rows for an n_ff-row matrix)."""
    n_chunks = CHUNKS_PER_THREAD * nth
    per = (n_ff + n_chunks - 1) // n_chunks
    return max(MIN_CHUNK_ROWS, (per + 15) // 16 * 16)


@njit(cache=True, _nrt=False, forceinline=True)
def _n_row_chunks(T, i, nth, unit=16):
    return 0 if i < 0 else (T[i, T_ROWS] + _chunk_rows(T, i, nth, unit) - 1) // _chunk_rows(T, i, nth, unit)


# --- phases: each claims chunks until none is left, then waits for the others -----------------


@njit(_nrt=False, inline="always")
def _phase_embed(ctr, ph, net, dims, fp, tokens, n_tok, batch, s):
    """Token embeddings into s.x (scaled by embd_scale) and the RoPE angles of every position
    (chunk = token); with swa_rope, sliding-window layers' angles after all of them."""
    T = net.tensors
    emb = net.globals[GLOBAL_TOK_EMBD]
    E = dims.n_embd
    done = 0
    while True:
        t = claim(ctr, ph)
        if t >= n_tok:
            break
        row = T[emb, T_OFFSET] + tokens[t] * T[emb, T_ROW_BYTES]
        call_dequant(net.dequant, T[emb, T_TYPE], net.data, row, E, s.x, t * E)
        lora_embed(net.lora, emb, tokens[t], s.x, t * E, E)
        if fp.embd_scale != 1:
            for i in range(t * E, (t + 1) * E):
                s.x[i] *= fp.embd_scale
        rope_angles(batch.pos[t], dims.n_rot, fp.theta_scale, fp.freq_scale, fp.ext_factor, fp.attn_factor,
                    fp.corr0, fp.corr1, net.freq_factors, s.angles, t * dims.n_rot)
        if dims.swa_rope != 0:
            rope_angles(batch.pos[t], dims.n_rot, fp.theta_scale_swa, fp.freq_scale_swa, fp.ext_factor, fp.attn_factor,
                        fp.corr0, fp.corr1, net.freq_factors, s.angles, (n_tok + t) * dims.n_rot)
        done += 1
    finish(ctr, ph, done)
    wait(ctr, ph, n_tok)
    return ph + 1


@njit(_nrt=False, inline="always")
def _phase_norm(ctr, ph, net, norm, t0, t1, K, eps, src, dst, flags, s, mats):
    """dst[t] = rmsnorm(src[t]) * weight, then prepared for the products with the tensors
    `mats` (their LoRA A.x too) (chunk = token)."""
    n = t1 - t0
    done = 0
    while True:
        c = claim(ctr, ph)
        if c >= n:
            break
        t = t0 + c
        rmsnorm(src, t * K, K, eps, net.data, net.tensors[norm, T_OFFSET], dst, t * K)
        _prepare(dst, t, K, flags, s)
        lora_down3(net.lora, mats[0], mats[1], mats[2], dst, t, K)
        done += 1
    finish(ctr, ph, done)
    wait(ctr, ph, n)
    return ph + 1


@njit(_nrt=False, inline="always")
def _phase_prepare(ctr, ph, t0, t1, K, src, flags, s, net, w):
    """src[t] prepared for the product with tensor w (its LoRA A.x too) (chunk = token)."""
    n = t1 - t0
    done = 0
    while True:
        c = claim(ctr, ph)
        if c >= n:
            break
        _prepare(src, t0 + c, K, flags, s)
        lora_down3(net.lora, w, int64(-1), int64(-1), src, t0 + c, K)
        done += 1
    finish(ctr, ph, done)
    wait(ctr, ph, n)
    return ph + 1


@njit(_nrt=False, inline="always")
def _phase_square_sums(ctr, ph, t0, t1, K, src, sq, offset):
    """sq[offset + c] += src[t, c]**2 for t0 <= t < t1, token by token in float32 (the order
    llama-imatrix adds them in); nothing when sq is empty (chunk = 64 columns)."""
    if sq.size == 0:
        return ph
    n = (K + 63) // 64
    done = 0
    while True:
        c = claim(ctr, ph)
        if c >= n:
            break
        c0 = c * 64
        c1 = min(c0 + 64, K)
        for t in range(t0, t1):
            for j in range(c0, c1):
                v = src[t * K + j]
                sq[offset + j] += v * v
        done += 1
    finish(ctr, ph, done)
    wait(ctr, ph, n)
    return ph + 1


@njit(_nrt=False, inline="always")
def _phase_post_norm(ctr, ph, net, norm, t0, t1, K, eps, src, x):
    """x[t] += rmsnorm(src[t]) * weight for t0 <= t < t1 (src is overwritten; chunk = token):
    Gemma's norms of the attention and FFN outputs before their residual additions."""
    n = t1 - t0
    done = 0
    while True:
        c = claim(ctr, ph)
        if c >= n:
            break
        o = (t0 + c) * K
        rmsnorm(src, o, K, eps, net.data, net.tensors[norm, T_OFFSET], src, o)
        for i in range(o, o + K):
            x[i] += src[i]
        done += 1
    finish(ctr, ph, done)
    wait(ctr, ph, n)
    return ph + 1


@njit(cache=True, _nrt=False, forceinline=True)
def is_swa_layer(dims, layer):
    """Whether the layer attends through a sliding window (llama.cpp's hparams.is_swa)."""
    if dims.n_swa <= 0:
        return False
    return dims.swa_pattern == 0 or layer % dims.swa_pattern < dims.swa_pattern - 1


@njit(_nrt=False, inline="always")
def _phase_qkv(ctr, ph, net, dims, layer, n_tok, batch, src, s, k_cache, v_cache, ldo, n_q, n_kv, eps, q_scale):
    """Q, K, V projections of all tokens into s.qkv (row t: q | k | v), biases added, Q/K
    normed per head where the layer has the norms, RoPE applied; keys and values appended
    to the cache."""
    T, L = net.tensors, net.layers
    fused = L[layer, LAYER_WQKV]
    if fused >= 0:
        mats = (fused, -1, -1)
        biases = (L[layer, LAYER_BQKV], -1, -1)
    else:
        mats = (L[layer, LAYER_WQ], L[layer, LAYER_WK], L[layer, LAYER_WV])
        biases = (L[layer, LAYER_BQ], L[layer, LAYER_BK], L[layer, LAYER_BV])
    cols = (0, n_q, n_q + n_kv)
    rotate = dims.nope_every == 0 or (layer + 1) % dims.nope_every != 0
    # this layer's angles: the sliding-window layers' own ones follow the others (see _phase_embed)
    a0 = n_tok * dims.n_rot if dims.swa_rope != 0 and is_swa_layer(dims, layer) else 0
    # NEOX rope and Q/K norms read a whole head: chunks then hold whole heads
    per_head = dims.rope_neox != 0 or L[layer, LAYER_Q_NORM] >= 0
    unit = dims.head_dim if per_head else 16
    n0 = _n_row_chunks(T, mats[0], dims.n_threads, unit)
    n1 = _n_row_chunks(T, mats[1], dims.n_threads, unit)
    n = n0 + n1 + _n_row_chunks(T, mats[2], dims.n_threads, unit)
    done = 0
    while True:
        c = claim(ctr, ph)
        if c >= n:
            break
        m = 0 if c < n0 else (1 if c < n0 + n1 else 2)
        first = 0 if m == 0 else (n0 if m == 1 else n0 + n1)
        i = mats[m]
        r0 = (c - first) * _chunk_rows(T, i, dims.n_threads, unit)
        r1 = min(r0 + _chunk_rows(T, i, dims.n_threads, unit), T[i, T_ROWS])
        _matmul(net, i, r0, r1, int64(0), n_tok, src, s, s.qkv, ldo, cols[m], int64(0), batch.n_fast)
        _add_bias(net, biases[m], r0, r1, 0, n_tok, s.qkv, ldo, cols[m])
        if per_head:
            _norm_and_rope_heads(net, dims, layer, n_tok, s, ldo, cols[m] + r0, cols[m] + r1, eps, rotate, a0)
        _rope_and_store(dims, layer, n_tok, batch, s, k_cache, v_cache, ldo, cols[m] + r0, cols[m] + r1, rotate, a0, q_scale)
        done += 1
    finish(ctr, ph, done)
    wait(ctr, ph, n)
    return ph + 1


@njit(_nrt=False, inline="always")
def _norm_and_rope_heads(net, dims, layer, n_tok, s, ldo, c0, c1, eps, rotate, a0):
    """The whole-head steps on columns c0..c1 (whole heads) of every token's q | k | v row:
    RMSNorm of each Q and K head by its norm weights (if the layer has them), then NEOX RoPE
    (if the model uses it), as llama.cpp orders them."""
    hd = dims.head_dim
    n_q = dims.n_head * hd
    n_qk = n_q + dims.n_head_kv * hd
    q_norm = net.layers[layer, LAYER_Q_NORM]
    k_norm = net.layers[layer, LAYER_K_NORM]
    for t in range(n_tok):
        row = t * ldo
        for c in range(c0, min(c1, n_qk), hd):
            norm = q_norm if c < n_q else k_norm
            if norm >= 0:
                rmsnorm(s.qkv, row + c, hd, eps, net.data, net.tensors[norm, T_OFFSET], s.qkv, row + c)
            if rotate and dims.rope_neox != 0:
                rope_rotate_neox(s.qkv, row + c, dims.n_rot, s.angles, a0 + t * dims.n_rot)


@njit(_nrt=False, inline="always")
def _rope_and_store(dims, layer, n_tok, batch, s, k_cache, v_cache, ldo, c0, c1, rotate, a0, q_scale):
    """Columns c0..c1 (multiples of 16) of every token's q | k | v row, just projected:
    rotate q and k (adjacent pairs, unless a NoPE layer; NEOX heads were rotated whole
    before; angles from s.angles[a0:]), scale q by q_scale (the families whose llama.cpp
    graph scales Q rather than K.Q), round q to f16 for the K.Q products (as ggml does for an
    f16 cache), and append k and v to each token's sequence in the cache. A chunk of the
    projections does this for its own rows, so no phase (and no barrier) is needed between the projections and attention."""
    hd = dims.head_dim
    n_q = dims.n_head * hd
    n_kv = dims.n_head_kv * hd
    for t in range(n_tok):
        row = t * ldo
        pos = batch.pos[t]
        for c in range(c0, c1, 16):
            d = c % hd  # rotated pairs never straddle a 16-column group: n_rot is even
            if rotate and dims.rope_neox == 0 and d < dims.n_rot and c < n_q + n_kv:
                rope_rotate(s.qkv, row + c, min(16, dims.n_rot - d), s.angles, a0 + t * dims.n_rot + d)
            x = load(s.qkv, row + c, 16)
            if c < n_q:
                if q_scale != 1:
                    x = x * q_scale
                store(s.qkv, row + c, round_f16(x))
            elif c < n_q + n_kv:
                region = batch.kv[t] + (layer * dims.n_head_kv + (c - n_q) // hd) * dims.n_ctx * hd
                store_key16(k_cache, region, pos, hd, d, x)
            else:
                region = batch.kv[t] + (layer * dims.n_head_kv + (c - n_q - n_kv) // hd) * dims.n_ctx * hd
                store_value16(v_cache, region, pos, hd, d, x)


@njit(cache=True, _nrt=False, python_entry=False)
def _run_end(batch, t, end):
    """End of the run from token t: the tokens before `end` that continue t's sequence at
    the next positions (one tile of attention)."""
    u = t + 1
    while u < end and batch.kv[u] == batch.kv[t] and batch.pos[u] == batch.pos[u - 1] + 1:
        u += 1
    return u


@njit(_nrt=False, inline="always")
def _phase_attention(ctr, ph, ith, dims, layer, first, n_tok, batch, s, k_cache, v_cache, ldo, kq_scale, softcap):
    """Attention output of tokens first..n_tok-1 into s.att (chunk = the query heads of one
    KV head x 8 tokens, the latest tokens, which see the most positions, first; each run of
    one sequence in them attends to its own region of the cache)."""
    hd = dims.head_dim
    group = dims.n_head // dims.n_head_kv
    tiles = (n_tok - first + TOKENS_PER_ATTENTION_CHUNK - 1) // TOKENS_PER_ATTENTION_CHUNK
    n = dims.n_head_kv * tiles
    work = ith * (s.scores.size // dims.n_threads)
    n_q = dims.n_head * hd
    window = dims.n_swa if is_swa_layer(dims, layer) else 0
    done = 0
    while True:
        c = claim(ctr, ph)
        if c >= n:
            break
        g = c % dims.n_head_kv
        w0 = first + (tiles - 1 - c // dims.n_head_kv) * TOKENS_PER_ATTENTION_CHUNK
        w1 = min(w0 + TOKENS_PER_ATTENTION_CHUNK, n_tok)
        region = (layer * dims.n_head_kv + g) * dims.n_ctx * hd
        t0 = w0
        while t0 < w1:
            t1 = _run_end(batch, t0, w1)
            attend_tile(s.qkv, t0 * ldo + g * group * hd, ldo, t1 - t0, group, hd, batch.pos[t0], k_cache, v_cache,
                        batch.kv[t0] + region, kq_scale, softcap, window, s.att, t0 * n_q + g * group * hd, n_q, s.scores, work)
            t0 = t1
        done += 1
    finish(ctr, ph, done)
    wait(ctr, ph, n)
    return ph + 1


@njit(_nrt=False, inline="always")
def _phase_residual(ctr, ph, net, dims, w, bias, t0, t1, src, s, x, n_embd, n_fast, add):
    """x[t] += W . src[t] (+ bias) for t0 <= t < t1: the attention output and FFN down
    projections. Each chunk owns its rows, so it adds them into x without a race. Without
    `add` the product stays in s.tmp (a post-norm comes first)."""
    T = net.tensors
    n = _n_row_chunks(T, w, dims.n_threads)
    done = 0
    while True:
        c = claim(ctr, ph)
        if c >= n:
            break
        r0 = c * _chunk_rows(T, w, dims.n_threads)
        r1 = min(r0 + _chunk_rows(T, w, dims.n_threads), T[w, T_ROWS])
        _matmul(net, w, r0, r1, t0, t1, src, s, s.tmp, n_embd, int64(0), int64(0), n_fast)
        _add_bias(net, bias, r0, r1, t0, t1, s.tmp, n_embd, 0)
        if add:
            for t in range(t0, t1):
                for r in range(r0, r1):
                    x[t * n_embd + r] += s.tmp[t * n_embd + r]
        done += 1
    finish(ctr, ph, done)
    wait(ctr, ph, n)
    return ph + 1


@njit(_nrt=False, inline="always")
def _phase_ffn_up(ctr, ph, net, dims, layer, t0, t1, src, s, n_ff, n_fast):
    """s.gate[t] = act(W_gate . src[t]) * (W_up . src[t]) for t0 <= t < t1, act SiLU or GELU
    (dims.gelu). Without a gate matrix, ffn_up holds the gate's rows then the up rows (Phi-3's
    fused gate_up_proj, split in halves as ggml_swiglu does)."""
    L = net.layers
    up = L[layer, LAYER_UP]
    gate = L[layer, LAYER_GATE]
    up_row0 = 0
    if gate < 0:
        gate, up_row0 = up, n_ff
    per = _ffn_chunk_rows(n_ff, dims.n_threads)
    n = (n_ff + per - 1) // per
    done = 0
    while True:
        c = claim(ctr, ph)
        if c >= n:
            break
        r0 = c * per
        r1 = min(r0 + per, n_ff)
        _matmul(net, gate, r0, r1, t0, t1, src, s, s.gate, n_ff, int64(0), int64(0), n_fast)
        _add_bias(net, L[layer, LAYER_BGATE], r0, r1, t0, t1, s.gate, n_ff, 0)
        _matmul(net, up, up_row0 + r0, up_row0 + r1, t0, t1, src, s, s.up, n_ff, -up_row0, int64(0), n_fast)
        _add_bias(net, L[layer, LAYER_BUP], r0, r1, t0, t1, s.up, n_ff, 0)
        for t in range(t0, t1):
            if dims.gelu != 0:
                geglu(s.gate, s.up, t * n_ff + r0, r1 - r0, s.gate)
            else:
                swiglu(s.gate, s.up, t * n_ff + r0, r1 - r0, s.gate)
        done += 1
    finish(ctr, ph, done)
    wait(ctr, ph, n)
    return ph + 1


@njit(_nrt=False, inline="always")
def _phase_logits(ctr, ph, net, dims, t0, t1, src, s, logits, n_vocab, n_fast, softcap):
    """logits[t - t0] = output . src[t] for t0 <= t < t1; soft-capped to
    softcap * tanh(logit / softcap) when softcap > 0 (Gemma 2), as ggml scales, tanh, scales."""
    out_w = net.globals[GLOBAL_OUTPUT]
    n = _n_row_chunks(net.tensors, out_w, dims.n_threads)
    done = 0
    while True:
        c = claim(ctr, ph)
        if c >= n:
            break
        r0 = c * _chunk_rows(net.tensors, out_w, dims.n_threads)
        r1 = min(r0 + _chunk_rows(net.tensors, out_w, dims.n_threads), n_vocab)
        _matmul(net, out_w, r0, r1, t0, t1, src, s, logits, n_vocab, int64(0), t0, n_fast)
        if softcap > 0:
            inv = float32(1) / softcap
            for t in range(t1 - t0):
                for r in range(r0, r1):
                    logits[t * n_vocab + r] = np.tanh(logits[t * n_vocab + r] * inv) * softcap
        done += 1
    finish(ctr, ph, done)
    wait(ctr, ph, n)
    return ph + 1


# --- the pass ---------------------------------------------------------------------------------


@njit(cache=True, _nrt=False, nogil=True)
def forward_worker(ith, net, dims, fp, k_cache, v_cache, tokens, n_tok, batch, out_t0, s, logits, ctr):
    """One thread's part of the forward pass (all threads run it; see the module docstring).
    ith numbers the thread, for its private attention scratch."""
    T, L = net.tensors, net.layers
    n_embd = dims.n_embd
    hd = dims.head_dim
    n_q = dims.n_head * hd
    n_kv = dims.n_head_kv * hd
    ld_qkv = n_q + 2 * n_kv
    eps = fp.eps
    sq_layer = 2 * n_embd + n_q + dims.n_ff  # see input_square_sums
    ph = _phase_embed(ctr, np.int64(0), net, dims, fp, tokens, n_tok, batch, s)
    for layer in range(dims.n_layer):
        sq0 = layer * sq_layer
        # tokens whose hidden state still matters after this layer's attention
        t0 = out_t0 if layer == dims.n_layer - 1 else 0
        qkv_formats = _formats(T, L[layer, LAYER_WQ], L[layer, LAYER_WK], L[layer, LAYER_WV])
        qkv_formats |= _formats(T, L[layer, LAYER_WQKV], -1, -1)
        fused = L[layer, LAYER_WQKV]
        qkv = (L[layer, LAYER_WQ] if fused < 0 else fused, L[layer, LAYER_WK], L[layer, LAYER_WV])
        ph = _phase_norm(ctr, ph, net, L[layer, LAYER_ATTN_NORM], 0, n_tok, n_embd, eps, s.x, s.xn, qkv_formats, s, qkv)
        ph = _phase_square_sums(ctr, ph, 0, n_tok, n_embd, s.xn, s.sq, sq0)
        ph = _phase_qkv(ctr, ph, net, dims, layer, n_tok, batch, s.xn, s, k_cache, v_cache, ld_qkv, n_q, n_kv, eps, fp.q_scale)
        ph = _phase_attention(ctr, ph, ith, dims, layer, t0, n_tok, batch, s, k_cache, v_cache, ld_qkv, fp.kq_scale,
                              fp.attn_softcap)
        wo = L[layer, LAYER_WO]
        ph = _phase_prepare(ctr, ph, t0, n_tok, n_q, s.att, _formats(T, wo, -1, -1), s, net, wo)
        ph = _phase_square_sums(ctr, ph, t0, n_tok, n_q, s.att, s.sq, sq0 + n_embd)
        post = L[layer, LAYER_ATTN_POST_NORM]
        ph = _phase_residual(ctr, ph, net, dims, wo, L[layer, LAYER_BO], t0, n_tok, s.att, s, s.x, n_embd, batch.n_fast, post < 0)
        if post >= 0:
            ph = _phase_post_norm(ctr, ph, net, post, t0, n_tok, n_embd, eps, s.tmp, s.x)
        ffn_formats = _formats(T, L[layer, LAYER_GATE], L[layer, LAYER_UP], -1)
        ffn = (L[layer, LAYER_GATE], L[layer, LAYER_UP], np.int64(-1))
        ph = _phase_norm(ctr, ph, net, L[layer, LAYER_FFN_NORM], t0, n_tok, n_embd, eps, s.x, s.xn, ffn_formats, s, ffn)
        ph = _phase_square_sums(ctr, ph, t0, n_tok, n_embd, s.xn, s.sq, sq0 + n_embd + n_q)
        ph = _phase_ffn_up(ctr, ph, net, dims, layer, t0, n_tok, s.xn, s, dims.n_ff, batch.n_fast)
        ph = _phase_square_sums(ctr, ph, t0, n_tok, dims.n_ff, s.gate, s.sq, sq0 + 2 * n_embd + n_q)
        down = L[layer, LAYER_DOWN]
        ph = _phase_prepare(ctr, ph, t0, n_tok, dims.n_ff, s.gate, _formats(T, down, -1, -1), s, net, down)
        post = L[layer, LAYER_FFN_POST_NORM]
        ph = _phase_residual(ctr, ph, net, dims, down, L[layer, LAYER_BDOWN], t0, n_tok, s.gate, s, s.x, n_embd, batch.n_fast,
                             post < 0)
        if post >= 0:
            ph = _phase_post_norm(ctr, ph, net, post, t0, n_tok, n_embd, eps, s.tmp, s.x)
    out_formats = _formats(T, net.globals[GLOBAL_OUTPUT], -1, -1)
    out_mats = (net.globals[GLOBAL_OUTPUT], np.int64(-1), np.int64(-1))
    ph = _phase_norm(ctr, ph, net, net.globals[GLOBAL_OUTPUT_NORM], out_t0, n_tok, n_embd, eps, s.x, s.xn, out_formats, s,
                     out_mats)
    ph = _phase_square_sums(ctr, ph, out_t0, n_tok, n_embd, s.xn, s.sq, dims.n_layer * sq_layer)
    _phase_logits(ctr, ph, net, dims, out_t0, n_tok, s.xn, s, logits, dims.n_vocab, batch.n_fast, fp.final_softcap)


class Forward:
    """Runs the forward pass on n_threads threads: the calling thread and a pool of n-1.

    Every thread runs `forward_worker` (compiled with nogil); they share the work through
    the phase counters. Python threads instead of a Numba parallel loop: Numba re-optimizes
    every function a parallel region calls when it compiles the region, which would double
    the compile time of the whole pass, and a pool that is already running wakes faster
    than a parallel region starts.
    """

    def __init__(self, n_threads: int):
        self.n_threads = max(1, int(n_threads))
        self._pool = ThreadPoolExecutor(self.n_threads - 1, "llamatool") if self.n_threads > 1 else None

    def __call__(self, net, dims, fp, k_cache, v_cache, tokens, n_tok, batch, out_t0, s, logits, counters):
        """Evaluate tokens[:n_tok] where batch says (positions, cache regions); logits of tokens
        out_t0..n_tok-1 go to logits[(t - out_t0) * n_vocab:]. Keys and values go to the caches."""
        counters.fill(0)
        args = (net, dims, fp, k_cache, v_cache, tokens, np.int64(n_tok), batch, np.int64(out_t0), s, logits, counters)
        helpers = [self._pool.submit(forward_worker, np.int64(i), *args) for i in range(1, self.n_threads)]
        forward_worker(np.int64(0), *args)
        for h in helpers:
            h.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
