"""The register-tiled prompt-processing product (llamatool/kernels/gemm.py), every quantized
type, against the dequantized operands and against ggml's own dot products.

Shapes are chosen to hit every edge of the tiling: rows that do not fill a 16-row panel,
token counts that are not a multiple of the 4-token tile, rows that end inside a group of
8 chunks or on an odd chunk, and rows longer than one packed K block.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as GQ
from gguf.quants import dequantize as gguf_dequantize

from llamatool.kernels.gemm import BLOCK_K, MIN_TOKENS, PANEL, TILE
from tests.test_kernels import (K_TYPES, QUANT_TYPES, activation, ggml_cpu, ggml_quantize_activation, ggml_vec_dot,
                                random_blocks, run_matmul)

#: byte offset of the f16 block minimum of the types that meet ggml's Q8_1 activation
Q8_1_MIN_FIELD = {"Q4_1": 2, "Q5_1": 2}
N_TOK = 2 * TILE + 3 + MIN_TOKENS  # tiles of four plus a remainder, well above the threshold
N_ROWS = 2 * PANEL + 5  # two full panels and a partial one


def shape(name: str) -> int:
    """Row length: an odd number of chunks for 32-weight types, several super-blocks otherwise."""
    return 768 if name in K_TYPES else 608


def q8_1_sum_rounding(name: str, raw: np.ndarray, a, n_tok: int, k: int) -> np.ndarray:
    """What ggml's Q8_1 changes in the product: the activation's block sums are stored as f16,
    so the offset term is min * f16(s) instead of min * s. Zero for the other types."""
    if name not in Q8_1_MIN_FIELD:
        return np.zeros((n_tok, raw.shape[0]))
    size = raw.shape[1] // (k // 32)
    o = Q8_1_MIN_FIELD[name]
    blocks = raw.reshape(raw.shape[0], k // 32, size)
    mins = blocks[:, :, o : o + 2].copy().view(np.float16)[:, :, 0].astype(np.float64)
    s = a.s32.reshape(n_tok, k // 32)
    ds = s.astype(np.float16).astype(np.float64) - s.astype(np.float64)
    return ds @ mins.T


@pytest.mark.parametrize("name", QUANT_TYPES)
def test_prefill_product_is_the_dot_product_of_both_quantized_operands(name):
    """Only float32 rounding separates the tiled product from float64 products of the
    dequantized weights and activations (and Q4_1/Q5_1 read the block sums as ggml's Q8_1 does)."""
    rng = np.random.default_rng(21)
    k = shape(name)
    raw = random_blocks(name, N_ROWS, k, rng)
    w = gguf_dequantize(raw, GQ[name]).astype(np.float64)
    x = rng.standard_normal((N_TOK, k)).astype(np.float32)
    a, xq = activation("Q8_K" if name in K_TYPES else "Q8_0", x)
    out = run_matmul(name, raw, k, x, act=a)
    expected = xq @ w.T + q8_1_sum_rounding(name, raw, a, N_TOK, k)
    scale = np.abs(xq) @ np.abs(w).T
    assert np.all(np.abs(out - expected) <= 1e-5 * scale + 1e-7)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"])
def test_prefill_rows_longer_than_a_packed_block(name):
    rng = np.random.default_rng(22)
    k = BLOCK_K + (512 if name in K_TYPES else 288)
    raw = random_blocks(name, PANEL + 3, k, rng)
    w = gguf_dequantize(raw, GQ[name]).astype(np.float64)
    x = rng.standard_normal((MIN_TOKENS + 1, k)).astype(np.float32)
    a, xq = activation("Q8_K" if name in K_TYPES else "Q8_0", x)
    out = run_matmul(name, raw, k, x, act=a)
    expected = xq @ w.T + q8_1_sum_rounding(name, raw, a, x.shape[0], k)
    assert np.all(np.abs(out - expected) <= 1e-5 * (np.abs(xq) @ np.abs(w).T) + 1e-7)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K", "IQ4_XS"])
def test_prefill_results_do_not_depend_on_the_tiling(name):
    """A row's sums do not depend on its panel, lane, tile or the row and token ranges of
    the call (so thread count and batch splits give the same numbers), and a call computes
    exactly its own rows and tokens."""
    rng = np.random.default_rng(23)
    k = shape(name)
    raw = random_blocks(name, N_ROWS, k, rng)
    x = rng.standard_normal((N_TOK, k)).astype(np.float32)
    a, _ = activation("Q8_K" if name in K_TYPES else "Q8_0", x)
    full = run_matmul(name, raw, k, x, act=a)
    part = run_matmul(name, raw, k, x, act=a, r0=3, r1=N_ROWS - 2, t0=1, t1=N_TOK - 1)
    np.testing.assert_array_equal(part[1:-1, 3:-2], full[1:-1, 3:-2])
    assert np.isnan(part[0]).all() and np.isnan(part[-1]).all()
    assert np.isnan(part[:, :3]).all() and np.isnan(part[:, -2:]).all()
    for t0, t1 in ((0, MIN_TOKENS), (MIN_TOKENS - 3, N_TOK)):
        np.testing.assert_array_equal(run_matmul(name, raw, k, x, act=a, t0=t0, t1=t1)[t0:t1], full[t0:t1])


@pytest.mark.parametrize("name", QUANT_TYPES)
def test_prefill_product_matches_ggml_vec_dot(name):
    """Every token of a prompt against ggml's own vec_dot on the activation ggml quantizes:
    agreement to float32 summation-order rounding, Q4_1/Q5_1 included."""
    lib = ggml_cpu()
    rng = np.random.default_rng(24)
    k, rows, n_tok = 512, 5, MIN_TOKENS + 1
    raw = random_blocks(name, rows, k, rng)
    x = rng.standard_normal((n_tok, k)).astype(np.float32)
    ours = run_matmul(name, raw, k, x)
    kind = "Q8_K" if name in K_TYPES else ("Q8_1" if name in Q8_1_MIN_FIELD else "Q8_0")
    w = gguf_dequantize(raw, GQ[name]).astype(np.float64)
    for t in range(n_tok):
        act = ggml_quantize_activation(lib, kind, x[t])
        ref = np.array([ggml_vec_dot(lib, name, raw[r], act, k) for r in range(rows)])
        scale = np.abs(w) @ np.abs(x[t]).astype(np.float64)
        assert np.all(np.abs(ours[t] - ref) <= 1e-5 * scale + 1e-6), (t, ours[t], ref)
