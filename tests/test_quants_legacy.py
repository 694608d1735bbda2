"""Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1: byte-exact with llama.cpp, checked three ways.

1. gguf-py's numpy reference (gguf.quants), for the types it implements;
2. llama.cpp's C code, live through ctypes when llama-cpp-python is installed;
3. the vectors committed from that C code (tests/data/quant_vectors_legacy_ggml.npz),
   so that CI checks byte-exactness without llama-cpp-python.
"""

from __future__ import annotations

import gguf.quants
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType

from llamatool.quants import registry
from tests.quant_reference import (
    LEGACY_TYPES, SCALE_OFFSETS, VECTORS_LEGACY, all_rows, assert_same_bits, dequantize, finite_rows,
    first_difference, ggml, load_vectors, quantize, random_blocks, special_rows,
)

# What gguf.quants implements among these (Q8_1, an activation-only format, it does not).
GGUF_PY_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
# gguf.quants keeps the sign of a -0.0 maximum where C keeps its +0.0 start value: C is the reference.
GGUF_PY_DIFFERS_FROM_C = {"signed_zeros"}
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34, "Q8_1": 36}


def gguf_type(name: str) -> GGMLQuantizationType:
    return GGMLQuantizationType[name]


@pytest.fixture(scope="module")
def vectors():
    return load_vectors(VECTORS_LEGACY)


# ---------------------------------------------------------------- quantize


def test_gguf_py_implements_the_types_compared_with_it():
    x = finite_rows(32)["normal"]
    for name in GGUF_PY_TYPES:
        gguf.quants.quantize(x, gguf_type(name))
    with pytest.raises(NotImplementedError):
        gguf.quants.quantize(x, gguf_type("Q8_1"))


@pytest.mark.parametrize("n_per_row", [32, 256, 4096])
@pytest.mark.parametrize("name", GGUF_PY_TYPES)
def test_quantize_matches_gguf_py(name, n_per_row):
    for case, x in finite_rows(n_per_row).items():
        if case in GGUF_PY_DIFFERS_FROM_C:
            continue
        with np.errstate(all="ignore"):
            expected = gguf.quants.quantize(x, gguf_type(name))
        ours = quantize(name, x)
        assert ours.shape == expected.shape, case
        assert np.array_equal(ours, expected), f"{case}: {first_difference(ours, expected, BLOCK_BYTES[name])}"


@pytest.mark.parametrize("n_per_row", [32, 256, 1024])
@pytest.mark.parametrize("name", LEGACY_TYPES)
def test_quantize_matches_ggml_live(ggml, name, n_per_row):
    cases = {**finite_rows(n_per_row, seed=n_per_row), **special_rows(n_per_row)}
    for case, x in cases.items():
        ours, expected = quantize(name, x), ggml.quantize(name, x)
        assert np.array_equal(ours, expected), f"{case}: {first_difference(ours, expected, BLOCK_BYTES[name])}"


@pytest.mark.parametrize("name", LEGACY_TYPES)
def test_quantize_matches_committed_ggml_vectors(vectors, name):
    expected = vectors[f"quantized_{name}"]
    ours = quantize(name, vectors["x"])
    assert np.array_equal(ours, expected), first_difference(ours, expected, BLOCK_BYTES[name])


def test_committed_vectors_cover_nonfinite_and_tie_cases(vectors):
    x = vectors["x"]
    assert np.isnan(x).any() and np.isposinf(x).any() and np.isneginf(x).any()
    assert (np.abs(x[np.isfinite(x)]) < 1e-38).any()  # float32 subnormals
    finite = np.where(np.isfinite(x), x, 0)
    assert (np.mod(finite, 1) == 0.5).all(axis=1).sum() == 0 and (np.mod(finite, 1) == 0.5).mean(axis=1).max() > 0.9
    # the inputs are tests/quant_reference.py's: if these differ, regenerate the vectors
    assert np.array_equal(x, all_rows(256, special=True), equal_nan=True)


def test_committed_vectors_are_current(ggml, vectors):
    """The committed bytes are what this llama.cpp build writes (regenerate them if not)."""
    for name in LEGACY_TYPES:
        assert np.array_equal(ggml.quantize(name, vectors["x"]), vectors[f"quantized_{name}"]), name


# ---------------------------------------------------------------- dequantize


def blocks_for(name: str, seed: int) -> np.ndarray:
    return random_blocks(32, BLOCK_BYTES[name], SCALE_OFFSETS[name], n_rows=8, n_blocks=16, seed=seed)


@pytest.mark.parametrize("name", GGUF_PY_TYPES)
def test_dequantize_matches_gguf_py_on_random_blocks(name):
    for seed in range(3):
        raw = blocks_for(name, seed)
        with np.errstate(all="ignore"):
            expected = gguf.quants.dequantize(raw, gguf_type(name))
        assert_same_bits(dequantize(name, raw), expected)


@pytest.mark.parametrize("name", GGUF_PY_TYPES)
def test_dequantize_matches_gguf_py_on_quantized_rows(name):
    raw = quantize(name, np.concatenate(list(finite_rows(256).values())))
    with np.errstate(all="ignore"):  # rows past fp16's range have infinite scales
        expected = gguf.quants.dequantize(raw, gguf_type(name))
    assert_same_bits(dequantize(name, raw), expected)


@pytest.mark.parametrize("name", [t for t in LEGACY_TYPES if t != "Q8_1"])
def test_dequantize_matches_ggml_live(ggml, name):
    for seed in range(3):
        raw = blocks_for(name, seed)
        assert_same_bits(dequantize(name, raw), ggml.dequantize(name, raw))


@pytest.mark.parametrize("name", [t for t in LEGACY_TYPES if t != "Q8_1"])
def test_dequantize_matches_committed_ggml_vectors(vectors, name):
    assert_same_bits(dequantize(name, vectors[f"raw_{name}"]), vectors[f"dequantized_{name}"])


def test_q8_1_dequantizes_like_q8_0_and_keeps_d_times_sum():
    """ggml has no Q8_1 dequantizer: a Q8_1 block is Q8_0's d and quants plus s = d * sum(q)."""
    x = np.concatenate([finite_rows(256)["normal"], finite_rows(256)["heavy_tailed"]])
    q8_1 = quantize("Q8_1", x).reshape(-1, 36)
    q8_0 = quantize("Q8_0", x).reshape(-1, 34)
    assert np.array_equal(q8_1[:, :2], q8_0[:, :2]) and np.array_equal(q8_1[:, 4:], q8_0[:, 2:])
    d = q8_1[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]
    sums = q8_1[:, 4:].view(np.int8).astype(np.int32).sum(axis=1)
    # s is fp16(sum * d) with d unrounded; it must be within fp16 rounding of the rounded d's product
    s = q8_1[:, 2:4].copy().view(np.float16).astype(np.float32)[:, 0]
    assert np.allclose(s, sums * d, rtol=2e-3, atol=1e-6)
    assert_same_bits(dequantize("Q8_1", q8_1.reshape(x.shape[0], -1)), dequantize("Q8_0", q8_0.reshape(x.shape[0], -1)))


# ---------------------------------------------------------------- round trip


def fp16_error(v: np.ndarray) -> np.ndarray:
    """How far fp16 rounding can move v: half an ulp, relative 2**-11 or 2**-25 absolute."""
    return np.maximum(np.abs(v) * 2.0**-11, 2.0**-25)


def block_bound(name: str, x: np.ndarray) -> np.ndarray:
    """The largest |error| the format allows in each block: half a step of the scale (a
    full step for the _0 types, whose top level is one step short of the extreme), plus
    the fp16 rounding of d times the largest quant, plus that of the min."""
    blocks = x.reshape(-1, 32).astype(np.float64)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    lo, hi = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
    if name in ("Q8_0", "Q8_1"):
        d = amax / 127
        bound = d / 2 + 127 * fp16_error(d)
    elif name in ("Q4_0", "Q5_0"):
        levels = 8 if name == "Q4_0" else 16
        d = amax / levels
        bound = d + levels * fp16_error(d)
    else:
        levels = 15 if name == "Q4_1" else 31
        d = (hi - lo) / levels
        bound = d / 2 + levels * fp16_error(d) + fp16_error(lo)
    return np.broadcast_to(bound * 1.0001 + 1e-30, blocks.shape).reshape(x.shape)


@pytest.mark.parametrize("name", LEGACY_TYPES)
def test_round_trip_error_within_format_bounds(name):
    for case, x in finite_rows(256).items():
        x = x[np.abs(x).max(axis=1) <= 65504]  # larger scales overflow fp16 to inf, by design
        error = np.abs(dequantize(name, quantize(name, x)).astype(np.float64) - x)
        bound = block_bound(name, x)
        assert (error <= bound).all(), f"{case}: error {error.max()} > bound at {np.argmax(error - bound)}"


# measured 0.086, 0.078, 0.042, 0.038, 0.0053; uniform rounding predicts step/sqrt(12)
@pytest.mark.parametrize("name, max_rel_rmse", [("Q4_0", 0.10), ("Q4_1", 0.09), ("Q5_0", 0.05),
                                                ("Q5_1", 0.045), ("Q8_0", 0.0065), ("Q8_1", 0.0065)])
def test_round_trip_rmse_on_gaussian_weights(name, max_rel_rmse):
    x = np.random.default_rng(3).standard_normal((64, 1024)).astype(np.float32) * np.float32(0.02)
    rmse = np.sqrt(np.mean((dequantize(name, quantize(name, x)) - x) ** 2)) / x.std()
    assert rmse < max_rel_rmse


def test_scales_beyond_fp16_range_become_infinite():
    x = finite_rows(32)["beyond_fp16"]  # max/8 is past fp16's 65504
    d = quantize("Q4_0", x)[:, :2].copy().view(np.float16)
    assert np.isinf(d).all()


# ---------------------------------------------------------------- interface


@pytest.mark.parametrize("name", GGUF_PY_TYPES)
def test_registry_dispatches_to_these_kernels(name):
    x = finite_rows(64)["uniform"][:2].reshape(2, 1, 64)
    raw = registry.quantize(name, x)
    assert raw.shape == (2, 1, 2 * BLOCK_BYTES[name])
    assert np.array_equal(raw.reshape(2, -1), quantize(name, x.reshape(2, 64)))
    assert_same_bits(registry.dequantize(name, raw).reshape(2, 64), dequantize(name, raw.reshape(2, -1)))


def test_any_float_layout_is_accepted():
    x = finite_rows(256)["normal"]
    expected = quantize("Q4_1", x)
    assert np.array_equal(quantize("Q4_1", np.asfortranarray(x)), expected)
    assert np.array_equal(quantize("Q4_1", x.astype(np.float64)), expected)
    strided = np.zeros((x.shape[0], 512), np.float32)
    strided[:, ::2] = x
    assert np.array_equal(quantize("Q4_1", strided[:, ::2]), expected)
