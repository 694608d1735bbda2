"""F32, F16, BF16 and the fp16 scale conversions the block quantizers share.

References: gguf-py (BF16 quantize, F16/F32/BF16 dequantize; its F16 quantize is
numpy's astype), llama.cpp's C conversions (live through ctypes, and the vectors
committed from them), and numpy's IEEE float16 for every fp16 value there is.
"""

from __future__ import annotations

import gguf.quants
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType

from llamatool.quants import floats, ggml_scalar, registry
from tests.quant_reference import (
    FLOAT_TYPES, VECTORS_LEGACY, assert_same_bits, dequantize, elementwise, float_values, ggml, load_vectors, quantize,
)


_fp16_bits_of = elementwise(ggml_scalar.fp32_to_fp16_bits, np.uint16)
_fp32_of_fp16_bits = elementwise(ggml_scalar.fp16_bits_to_fp32, np.float32)


@pytest.fixture(scope="module")
def values():
    return float_values()


# ---------------------------------------------------------------- fp32 -> fp16 / bf16


@pytest.mark.parametrize("name", FLOAT_TYPES)
def test_quantize_matches_committed_ggml_vectors(name):
    vectors = load_vectors(VECTORS_LEGACY)
    assert np.array_equal(quantize(name, vectors["float_values"]), vectors[f"quantized_{name}"])


def test_committed_float_values_are_the_test_inputs(values):
    stored = load_vectors(VECTORS_LEGACY)["float_values"]
    assert np.array_equal(stored.view(np.uint32), values.view(np.uint32))


@pytest.mark.parametrize("name", FLOAT_TYPES)
def test_quantize_matches_ggml_live(ggml, values, name):
    assert np.array_equal(quantize(name, values), ggml.quantize(name, values))


def test_f16_matches_numpy_rounding_except_nan_payloads(values):
    """numpy's float16 cast rounds to nearest even too; ggml differs only in making every
    NaN the quiet 0x7E00 (with its sign)."""
    ours = quantize("F16", values).view(np.uint16)
    with np.errstate(all="ignore"):
        numpy_bits = values.astype(np.float16).view(np.uint16)
        gguf_bits = gguf.quants.quantize(values, GGMLQuantizationType.F16).view(np.uint16)
    nan = np.isnan(values)
    assert np.array_equal(ours[~nan], numpy_bits[~nan]) and np.array_equal(ours[~nan], gguf_bits[~nan])
    sign = (values[nan].view(np.uint32) >> 16) & 0x8000
    assert np.array_equal(ours[nan], sign | 0x7E00)


def test_bf16_matches_gguf_py(values):
    assert np.array_equal(quantize("BF16", values), gguf.quants.quantize(values, GGMLQuantizationType.BF16))


def test_fp16_scalar_conversion_is_exact_for_every_rounding_case():
    """fp32_to_fp16_bits (used for block scales) against numpy on all fp16 midpoints,
    their neighbours, and a sweep of float32 exponents from subnormal to overflow."""
    halves = np.arange(0, 0x7C00, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    midpoints = ((halves[:-1].astype(np.float64) + halves[1:]) / 2).astype(np.float32)
    around = np.concatenate([midpoints, np.nextafter(midpoints, 0), np.nextafter(midpoints, np.inf)])
    sweep = np.random.default_rng(0).integers(0, 0x7F800000, 200_000, dtype=np.uint32).view(np.float32)
    x = np.concatenate([around, -around, sweep, -sweep, [65519.998, 65520, 1e30, np.inf, -np.inf]]).astype(np.float32)
    with np.errstate(over="ignore"):
        assert np.array_equal(_fp16_bits_of(x), x.astype(np.float16).view(np.uint16))


def test_fp16_scalar_conversion_matches_ggml_on_random_bits(ggml):
    bits = np.random.default_rng(1).integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    assert np.array_equal(_fp16_bits_of(x), ggml.quantize("F16", x.reshape(1, -1)).view(np.uint16).ravel())


def test_fp16_back_to_fp32_is_exact_for_every_half():
    """Every one of the 65536 halves; a NaN keeps sign and payload and comes back quiet,
    as ggml_compute_fp16_to_fp32 (and the hardware conversion) make it."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    nan = ((bits & 0x7C00) == 0x7C00) & ((bits & 0x3FF) != 0)
    ours = _fp32_of_fp16_bits(bits)
    assert_same_bits(ours[~nan], bits[~nan].view(np.float16).astype(np.float32))
    wide = bits[nan].astype(np.uint32)
    quiet_nans = ((wide & 0x8000) << 16) | 0x7FC00000 | ((wide & 0x3FF) << 13)
    assert np.array_equal(ours[nan].view(np.uint32), quiet_nans)


def test_fp16_of_nan_is_ggml_quiet_nan_with_the_sign():
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFBFFFFF, 0x7FFFFFFF], np.uint32).view(np.float32)
    assert list(_fp16_bits_of(nans)) == [0x7E00, 0xFE00, 0x7E00, 0xFE00, 0x7E00]
    assert list(quantize("F16", nans.reshape(1, -1)).view(np.uint16)[0]) == [0x7E00, 0xFE00, 0x7E00, 0xFE00, 0x7E00]


# ---------------------------------------------------------------- dequantize and F32


@pytest.mark.parametrize("name", ["F32", "F16", "BF16"])
def test_dequantize_matches_gguf_py_on_random_bits(name):
    raw = np.random.default_rng(4).integers(0, 256, (16, 512), dtype=np.uint8)
    with np.errstate(all="ignore"):
        expected = gguf.quants.dequantize(raw, GGMLQuantizationType[name])
    ours = dequantize(name, raw)
    assert ours.shape == expected.shape
    finite = np.isfinite(expected)
    assert_same_bits(ours[finite], expected[finite])
    assert np.array_equal(np.isnan(ours), np.isnan(expected))


@pytest.mark.parametrize("name", ["F32", "F16", "BF16"])
def test_round_trip_error(name, values):
    x = values[np.isfinite(values) & (np.abs(values) < 6e4) & (np.abs(values) > 1e-4)]
    y = dequantize(name, quantize(name, x.reshape(1, -1))).ravel()
    relative = {"F32": 0.0, "F16": 2.0**-11, "BF16": 2.0**-8}[name]
    assert (np.abs(y.astype(np.float64) - x) <= np.abs(x) * relative).all()


@pytest.mark.parametrize("name", FLOAT_TYPES)
def test_registry_dispatches_to_these_kernels(name, values):
    x = values[:68].reshape(4, -1, 256)
    raw = registry.quantize(name, x)
    assert raw.shape == (4, 17, 512)
    assert np.array_equal(raw.reshape(68, -1), quantize(name, values[:68]))


# ---------------------------------------------------------------- line stores (floats.py)


def _expected_halves(name: str, x: np.ndarray) -> np.ndarray:
    if name == "F16":
        return _fp16_bits_of(x)  # ggml's algorithm, checked against numpy and ggml above
    return gguf.quants.quantize(x.reshape(1, -1), GGMLQuantizationType.BF16).view(np.uint16).ravel()


@pytest.mark.parametrize("name", ["F16", "BF16"])
def test_quantize_into_every_alignment_and_length(name, values):
    """The F16/BF16 quantizers store whole aligned 64-byte lines of output (non-temporally)
    and do the head before the first line and the tail after the last one value by value:
    every output offset (odd ones have no aligned lines at all) and every length around a
    line must give the same bytes, NaNs, infinities, subnormals and ties included, and
    write nothing outside the output."""
    flat = values.reshape(-1)
    kernel = getattr(floats, f"quantize_{name.lower()}")
    for n in (1, 31, 32, 33, 63, 64, 65, 97, 1000, flat.size - 64):
        expected = _expected_halves(name, flat[:n])
        for offset in range(0, 66):
            buf = np.zeros(2 * n + 160, np.uint8)
            out = buf[16 + offset : 16 + offset + 2 * n].reshape(1, 2 * n)
            kernel(flat[:n].reshape(1, n), out=out)
            assert np.array_equal(out.copy().view(np.uint16).ravel(), expected), (n, offset)
            assert not buf[: 16 + offset].any() and not buf[16 + offset + 2 * n :].any(), (n, offset)


@pytest.mark.parametrize("name", ["F16", "BF16"])
def test_quantize_many_rows_on_threads(name, values):
    """Rows shared between threads in chunks whose starts fall anywhere in a line."""
    x = np.tile(values.reshape(-1)[: 16 * 1001].reshape(16, 1001), (100, 1))  # chunk starts 16 bytes past a line
    assert np.array_equal(quantize(name, x).view(np.uint16).ravel(), _expected_halves(name, x.ravel()))
