"""IQ4_NL and IQ4_XS: byte-exact with what llama-quantize writes without an imatrix.

gguf-py has dequantizers for both but no quantizer, so quantization is checked against
llama.cpp's C code: live through ctypes when llama-cpp-python is installed, and always
against the vectors committed from it (tests/data/quant_vectors_iq_ggml.npz).
"""

from __future__ import annotations

import gguf.quants
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType

from llamatool.quants import iquants, registry
from tests.quant_reference import (
    IQ_TYPES, SCALE_OFFSETS, VECTORS_IQ, assert_same_bits, dequantize, elementwise, finite_rows, first_difference,
    ggml, iq_vector_inputs, load_vectors, quantize, random_blocks, special_rows,
)

BLOCK = {"IQ4_NL": (32, 18), "IQ4_XS": (256, 136)}
# kvalues_iq4nl, from gguf-py (the file format's own definition)
LEVELS = np.array(gguf.quants.IQ4_NL.kvalues, dtype=np.float32)


@pytest.fixture(scope="module")
def vectors():
    return load_vectors(VECTORS_IQ)


# ---------------------------------------------------------------- quantize


def test_gguf_py_has_no_iq4_quantizer():
    """Why these types are checked against C only: if gguf-py gains one, compare with it too."""
    for name in IQ_TYPES:
        with pytest.raises(NotImplementedError):
            gguf.quants.quantize(np.zeros((1, 256), np.float32), GGMLQuantizationType[name])


@pytest.mark.parametrize("name", IQ_TYPES)
def test_quantize_matches_committed_ggml_vectors(vectors, name):
    expected = vectors[f"quantized_{name}"]
    ours = quantize(name, vectors["x"])
    assert np.array_equal(ours, expected), first_difference(ours, expected, BLOCK[name][1])


def test_committed_vectors_hold_every_test_case(vectors):
    x = vectors["x"]
    assert np.isnan(x).any() and np.isinf(x).any() and (x == 0).all(axis=1).any()
    # the inputs are tests/quant_reference.py's: if these differ, regenerate the vectors
    assert np.array_equal(x, iq_vector_inputs(), equal_nan=True)


@pytest.mark.parametrize("n_per_row", [256, 1024])
@pytest.mark.parametrize("name", IQ_TYPES)
def test_quantize_matches_ggml_live(ggml, name, n_per_row):
    cases = {**finite_rows(n_per_row, seed=n_per_row + 1), **special_rows(n_per_row)}
    for case, x in cases.items():
        ours, expected = quantize(name, x), ggml.quantize(name, x)
        assert np.array_equal(ours, expected), f"{case}: {first_difference(ours, expected, BLOCK[name][1])}"


def test_iq4_nl_single_block_rows_match_ggml_live(ggml):
    for case, x in {**finite_rows(32), **special_rows(32)}.items():
        ours, expected = quantize("IQ4_NL", x), ggml.quantize("IQ4_NL", x)
        assert np.array_equal(ours, expected), f"{case}: {first_difference(ours, expected, 18)}"


@pytest.mark.parametrize("name", IQ_TYPES)
def test_quantize_matches_ggml_live_on_many_random_rows(ggml, name):
    """The scale search has many close calls (ties between trial scales and levels):
    a broad sample of shapes and magnitudes."""
    rng = np.random.default_rng(2024)
    x = (rng.standard_normal((96, 512)) * rng.lognormal(0, 2, (96, 1))).astype(np.float32)
    x[::3] = np.round(x[::3] * 4) / 4  # coarse values: many exact ties
    x[1::3] = rng.laplace(size=(32, 512)).astype(np.float32)
    ours, expected = quantize(name, x), ggml.quantize(name, x)
    assert np.array_equal(ours, expected), first_difference(ours, expected, BLOCK[name][1])


def test_committed_vectors_are_current(ggml, vectors):
    for name in IQ_TYPES:
        assert np.array_equal(ggml.quantize(name, vectors["x"]), vectors[f"quantized_{name}"]), name


def test_tool_path_is_not_the_ref_function(ggml):
    """IQ4_NL's quantize_row_iq4_nl_ref skips the scale search (ntry -1); llama-quantize
    (and so we) use the search. The two give different bytes on ordinary data."""
    import ctypes

    x = finite_rows(256)["normal"]
    ref_out = np.zeros((x.shape[0], 8 * 18), np.uint8)
    fn = ggml.lib.quantize_row_iq4_nl_ref
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn(x.ctypes.data, ref_out.ctypes.data, x.size)
    ours = quantize("IQ4_NL", x)
    assert np.array_equal(ours, ggml.quantize("IQ4_NL", x))
    assert not np.array_equal(ours, ref_out)


def c_best_index_int8(x: np.ndarray) -> np.ndarray:
    """ggml's best_index_int8, step by step in float32: the bisection, then the
    x - lower < upper - x test."""
    x = x.astype(np.float32)
    lo, hi = np.zeros(x.shape, np.int64), np.full(x.shape, 15)
    for _ in range(4):
        active = hi - lo > 1
        mid = (lo + hi) // 2
        below = x < LEVELS[mid]
        hi = np.where(active & below, mid, hi)
        lo = np.where(active & ~below, mid, lo)
    upper_wins = ~((x - LEVELS[hi - 1]) < (LEVELS[hi] - x))
    index = np.where(upper_wins, hi, hi - 1)
    return np.where(x <= LEVELS[0], 0, np.where(x >= LEVELS[15], 15, index))


_kernel_indices = elementwise(iquants._nearest_index, np.int64)
_kernel_levels = elementwise(iquants._nearest_level, np.float32)


def test_level_search_is_c_best_index_int8():
    """The kernels count midpoints instead of bisecting: same answer everywhere,
    including every float32 within 3000 ulps of each midpoint (where C's float32
    differences decide) and NaN."""
    midpoints = (LEVELS[:-1] + LEVELS[1:]) / 2
    steps = np.arange(-3000, 3001)
    near = (midpoints.view(np.int32)[:, None] + np.sign(midpoints)[:, None].astype(np.int32) * steps).astype(np.int32)
    rng = np.random.default_rng(0)
    x = np.concatenate([near.view(np.float32).ravel(), rng.uniform(-300, 300, 200_000).astype(np.float32),
                        LEVELS, np.float32([np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30])])
    x = np.concatenate([x, -x])
    expected = c_best_index_int8(x)
    assert np.array_equal(_kernel_indices(x), expected)
    assert np.array_equal(_kernel_levels(x), LEVELS[expected])
    assert _kernel_indices(np.float32([np.nan]))[0] == 15 and _kernel_levels(np.float32([np.nan]))[0] == 113


# ---------------------------------------------------------------- dequantize


def blocks_for(name: str, seed: int) -> np.ndarray:
    block_size, type_size = BLOCK[name]
    return random_blocks(block_size, type_size, SCALE_OFFSETS[name], n_rows=8, n_blocks=1024 // block_size, seed=seed)


@pytest.mark.parametrize("name", IQ_TYPES)
def test_dequantize_matches_gguf_py_on_random_blocks(name):
    for seed in range(3):
        raw = blocks_for(name, seed)
        assert_same_bits(dequantize(name, raw), gguf.quants.dequantize(raw, GGMLQuantizationType[name]))


@pytest.mark.parametrize("name", IQ_TYPES)
def test_dequantize_matches_gguf_py_on_quantized_rows(name):
    raw = quantize(name, np.concatenate(list(finite_rows(256).values())))
    with np.errstate(all="ignore"):  # rows past fp16's range have infinite scales
        expected = gguf.quants.dequantize(raw, GGMLQuantizationType[name])
    assert_same_bits(dequantize(name, raw), expected)


@pytest.mark.parametrize("name", IQ_TYPES)
def test_dequantize_matches_ggml(vectors, name):
    assert_same_bits(dequantize(name, vectors[f"raw_{name}"]), vectors[f"dequantized_{name}"])


@pytest.mark.parametrize("name", IQ_TYPES)
def test_dequantize_matches_ggml_live(ggml, name):
    raw = blocks_for(name, 7)
    assert_same_bits(dequantize(name, raw), ggml.dequantize(name, raw))


# ---------------------------------------------------------------- round trip


def test_iq4_nl_values_land_on_the_nearest_level_of_the_stored_scale():
    """Every index is the nearest level to x / d for the stored d (up to fp16 rounding of d)."""
    x = np.random.default_rng(5).standard_normal((32, 256)).astype(np.float32)
    raw = quantize("IQ4_NL", x).reshape(-1, 18)
    d = raw[:, :2].copy().view(np.float16).astype(np.float64)
    y = dequantize("IQ4_NL", raw.reshape(32, -1)).reshape(-1, 32)
    scaled = x.reshape(-1, 32) / d
    nearest = LEVELS[np.abs(scaled[:, :, None] - LEVELS).argmin(axis=2)]
    gaps = np.abs(np.abs(scaled[:, :, None] - LEVELS).min(axis=2) - np.abs(y / d - scaled))
    assert (gaps <= np.abs(scaled) * 2.0**-10 + 1e-6).all()
    assert (y / d == nearest).mean() > 0.99


@pytest.mark.parametrize("name", IQ_TYPES)
def test_round_trip_error_beats_q4_0_and_stays_small(name):
    """Non-linear levels and the scale search buy IQ4 lower error than Q4_0 at the
    same 4.5 (IQ4_NL) or fewer (IQ4_XS, 4.25) bits per weight; measured 0.076/0.080
    relative RMSE against Q4_0's 0.086 on Gaussian weights."""
    x = np.random.default_rng(3).standard_normal((64, 1024)).astype(np.float32) * np.float32(0.02)
    rmse = np.sqrt(np.mean((dequantize(name, quantize(name, x)) - x) ** 2)) / x.std()
    q4_0 = np.sqrt(np.mean((dequantize("Q4_0", quantize("Q4_0", x)) - x) ** 2)) / x.std()
    assert rmse < q4_0
    assert rmse < 0.085


@pytest.mark.parametrize("name", IQ_TYPES)
def test_zero_blocks_stay_zero(name):
    x = np.zeros((2, 512), np.float32)
    x[1, :32] = np.linspace(-1, 1, 32)
    y = dequantize(name, quantize(name, x))
    assert (y[0] == 0).all() and (y[1, 32:] == 0).all()
    assert np.abs(y[1, :32] - x[1, :32]).max() < 0.1


# ---------------------------------------------------------------- interface


@pytest.mark.parametrize("name", IQ_TYPES)
def test_registry_dispatches_to_these_kernels(name):
    x = finite_rows(512)["uniform"][:2]
    raw = registry.quantize(name, x)
    assert np.array_equal(raw, quantize(name, x))
    assert_same_bits(registry.dequantize(name, raw), dequantize(name, raw))
