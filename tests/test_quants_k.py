"""K-quant kernels (Q2_K..Q6_K, Q8_K) against references we did not write.

- Committed vectors: inputs and the bytes ggml's own quantizers wrote for them
  (tests/data/quant_vectors_k_*.npz), so CI checks byte-exactness without llama.cpp.
  Regenerate with `python -m tests.test_quants_k` (needs llama-cpp-python).
- gguf-py's numpy dequantizers (bit-exact), and its quantizers where it has them.
- ggml itself through ctypes (tests/quant_reference.py's binding to the libggml-base
  shipped in llama-cpp-python), when installed.
- Round-trip error within what each format can do.
"""

from __future__ import annotations

from pathlib import Path

import gguf.quants
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType

from llamatool.errors import LlamatoolError
from llamatool.quants import ggml_scalar, kquants, registry
from tests.quant_reference import assert_same_bits, elementwise, first_difference, ggml, load  # noqa: F401  (ggml: a fixture)

TYPES = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_k"]
DATA = Path(__file__).parent / "data"
INPUTS_FILE = DATA / "quant_vectors_k_inputs.npz"

# Offsets of the fp16 d (and dmin) inside each block, for building random blocks with finite scales.
FP16_SCALE_OFFSETS = {"q2_k": (80, 82), "q3_k": (108,), "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}


def quantize(name: str, x: np.ndarray) -> np.ndarray:
    return getattr(kquants, f"quantize_{name}")(x)


def dequantize(name: str, raw: np.ndarray) -> np.ndarray:
    return getattr(kquants, f"dequantize_{name}")(raw)


def ggml_quantize(ref, name: str, x: np.ndarray) -> np.ndarray:
    """What llama-quantize writes without an imatrix (Q8_K: ggml's _ref row function)."""
    return ref.quantize(name.upper(), x)


def ggml_dequantize(ref, name: str, raw: np.ndarray) -> np.ndarray:
    return ref.dequantize(name.upper(), raw)


def ggml_id(name: str) -> GGMLQuantizationType:
    return GGMLQuantizationType[name.upper()]


# ---------------------------------------------------------------- inputs


def reference_inputs(seed: int = 20240611) -> dict[str, np.ndarray]:
    """The input catalogue: named float32 matrices whose rows are whole super-blocks."""
    rng = np.random.default_rng(seed)

    llama = rng.standard_normal((6, 512)) * 0.02
    outliers = rng.random(llama.shape) < 0.01
    llama[outliers] *= rng.uniform(10, 60, outliers.sum())
    patchy = rng.standard_normal((2, 512))
    patchy[:, 16:48] = 0.0  # whole zero sub-blocks next to busy ones
    patchy[0, 256 + 100] = 40.0  # one outlier drives the block's scale
    nonfinite = rng.standard_normal((4, 256))
    nonfinite[0, ::37] = np.inf
    nonfinite[1, 5] = -np.inf
    nonfinite[2, ::41] = np.nan
    nonfinite[3, :] = np.inf
    cases = {
        "normal": rng.standard_normal((6, 512)),
        "uniform": rng.uniform(-1.0, 1.0, (4, 512)),
        "uniform_positive": rng.uniform(0.0, 1.0, (3, 256)),
        "heavy_tailed": rng.standard_t(2, (4, 512)),
        "cauchy": rng.standard_cauchy((2, 256)),
        "llama_like": llama,
        "constant": np.array([0.37, -2.5, 1.0, -1.0, 1e-3, 7.0])[:, None] * np.ones((1, 256)),
        "zeros": np.zeros((2, 256)),
        "all_negative": -np.abs(rng.standard_normal((3, 512))),
        "tiny": rng.standard_normal((5, 256)) * np.array([1e-8, 1e-15, 1e-20, 1e-30, 1e-38])[:, None],
        "subnormal": rng.standard_normal((1, 256)) * 1e-42,
        "huge": rng.standard_normal((5, 256)) * np.array([1e3, 1e5, 1e7, 1e20, 1e37])[:, None],
        "single_superblock": rng.standard_normal((8, 256)) * rng.uniform(0.01, 10, (8, 1)),
        "ties_halves": rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], (3, 256)),
        "ties_integers": rng.integers(-8, 8, (3, 256)).astype(float),
        "ties_two_values": rng.choice([0.0, 1.0], (2, 256)),
        "ties_sparse": np.where(rng.random((2, 256)) < 0.9, 0.0, rng.standard_normal((2, 256))),
        "ramp": np.linspace(-1.0, 1.0, 512)[None, :],
        "fp16_values": rng.standard_normal((2, 256)).astype(np.float16),
        "patchy": patchy,
        "nonfinite": nonfinite,
    }
    with np.errstate(over="ignore"):
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in cases.items()}


def committed_inputs() -> dict[str, np.ndarray]:
    with np.load(INPUTS_FILE) as f:
        return {k: f[k] for k in f.files}


def committed_expected(name: str) -> dict[str, np.ndarray]:
    with np.load(DATA / f"quant_vectors_k_{name}.npz") as f:
        return {k: f[k] for k in f.files}


def random_blocks(name: str, rng: np.random.Generator, n_rows: int = 16, n_blocks: int = 4) -> np.ndarray:
    """Random bytes in every field, with finite scales (fp16 d/dmin, or Q8_K's float32 d)."""
    size = kquants.BLOCK_BYTES[name]
    raw = rng.integers(0, 256, (n_rows, n_blocks, size), dtype=np.uint8)
    if name == "q8_k":
        raw[:, :, 0:4] = (rng.standard_normal((n_rows, n_blocks, 1)) * 1e-3).astype(np.float32).view(np.uint8)
    else:
        for off in FP16_SCALE_OFFSETS[name]:
            d = (rng.standard_normal((n_rows, n_blocks, 1)) * 0.01).astype(np.float16)
            raw[:, :, off : off + 2] = d.view(np.uint8)
    return raw.reshape(n_rows, n_blocks * size)


def write_reference_vectors(out_dir: Path = DATA) -> None:
    """Regenerate tests/data/quant_vectors_k_*.npz from ggml's C quantizers."""
    lib = load()
    if lib is None:
        raise SystemExit("llama-cpp-python is not installed")
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = reference_inputs()
    np.savez_compressed(out_dir / INPUTS_FILE.name, **inputs)
    for name in TYPES:
        expected = {case: ggml_quantize(lib, name, x) for case, x in inputs.items()}
        np.savez_compressed(out_dir / f"quant_vectors_k_{name}.npz", **expected)
    print(f"wrote {len(TYPES) + 1} files to {out_dir}")


# ---------------------------------------------------------------- byte-exactness, committed vectors


@pytest.mark.parametrize("name", TYPES)
def test_quantize_matches_ggml_vectors(name):
    inputs = committed_inputs()
    expected = committed_expected(name)
    assert set(expected) == set(inputs)
    for case, x in inputs.items():
        ours = quantize(name, x)
        assert ours.shape == expected[case].shape, case
        if not np.array_equal(ours, expected[case]):
            pytest.fail(f"{name} {case}: {first_difference(ours, expected[case], kquants.BLOCK_BYTES[name])}")


def test_committed_inputs_cover_the_edge_cases():
    inputs = committed_inputs()
    assert {"zeros", "constant", "all_negative", "tiny", "huge", "single_superblock", "nonfinite"} <= set(inputs)
    assert sum(x.nbytes for x in inputs.values()) > 50_000
    assert np.all(inputs["zeros"] == 0) and np.all(inputs["all_negative"] <= 0)
    assert all(x.dtype == np.float32 and x.shape[1] % 256 == 0 for x in inputs.values())


# ---------------------------------------------------------------- dequantization vs gguf-py


@pytest.mark.parametrize("name", [t for t in TYPES if t != "q8_k"])
def test_dequantize_matches_gguf_py_on_ggml_blocks(name):
    inputs = committed_inputs()
    expected = committed_expected(name)
    for case in inputs:
        raw = expected[case]
        with np.errstate(all="ignore"):
            want = gguf.quants.dequantize(raw, ggml_id(name))
        assert_same_bits(dequantize(name, raw), want, case)


@pytest.mark.parametrize("name", [t for t in TYPES if t != "q8_k"])
def test_dequantize_matches_gguf_py_on_random_blocks(name):
    rng = np.random.default_rng(7)
    raw = random_blocks(name, rng)
    assert_same_bits(dequantize(name, raw), gguf.quants.dequantize(raw, ggml_id(name)))
    # any bytes at all, scales that are inf or NaN included: still the same bits
    raw = rng.integers(0, 256, raw.shape, dtype=np.uint8)
    with np.errstate(all="ignore"):
        want = gguf.quants.dequantize(raw, ggml_id(name))
    assert_same_bits(dequantize(name, raw), want)


def test_dequantize_q8_k_is_d_times_qs():
    # gguf-py has no Q8_K (it is ggml's activation format); its layout is d, qs[256], bsums[16].
    raw = random_blocks("q8_k", np.random.default_rng(8))
    blocks = raw.reshape(-1, 292)
    d = blocks[:, 0:4].copy().view(np.float32)
    qs = blocks[:, 4:260].view(np.int8).astype(np.float32)
    want = (d * qs).reshape(raw.shape[0], -1)
    assert_same_bits(dequantize("q8_k", raw), want)


def test_q8_k_bsums_are_sums_of_16():
    x = committed_inputs()["normal"]
    blocks = quantize("q8_k", x).reshape(-1, 292)
    qs = blocks[:, 4:260].view(np.int8).astype(np.int32)
    bsums = blocks[:, 260:292].copy().view(np.int16)
    assert np.array_equal(bsums, qs.reshape(-1, 16, 16).sum(axis=2))


@pytest.mark.parametrize("name", [t for t in TYPES if t != "q8_k"])
def test_quantize_matches_gguf_py_where_it_can_quantize(name):
    x = committed_inputs()["normal"]
    try:
        want = gguf.quants.quantize(x, ggml_id(name))
    except NotImplementedError:
        pytest.skip(f"gguf-py has no {name.upper()} quantizer (only dequantizer)")
    assert np.array_equal(quantize(name, x), want)


# ---------------------------------------------------------------- ggml's C code (llama-cpp-python)


def fresh_rows(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs not in the committed vectors: other seeds, sizes and scales."""
    w = rng.standard_normal((24, 1024)) * 0.015
    w[rng.random(w.shape) < 0.002] *= 80
    cases = {
        "normal": rng.standard_normal((32, 768)) * rng.uniform(1e-3, 1e3, (32, 1)),
        "weights": w,
        "laplace": rng.laplace(size=(16, 512)),
        "skewed": rng.lognormal(size=(8, 512)) - 0.5,
        "quantized_grid": np.round(rng.standard_normal((8, 512)) * 4) / 4,
        "fp16_scale_edges": rng.standard_normal((8, 256)) * np.array([60000, 1e6, 6e-5, 6e-8] * 2)[:, None],
    }
    return {k: v.astype(np.float32) for k, v in cases.items()}


@pytest.mark.parametrize("name", TYPES)
def test_quantize_matches_ggml_c(ggml, name):
    for seed in (1, 2):
        for case, x in fresh_rows(np.random.default_rng(seed)).items():
            want = ggml_quantize(ggml, name, x)
            ours = quantize(name, x)
            if not np.array_equal(ours, want):
                pytest.fail(f"{name} {case} seed {seed}: {first_difference(ours, want, kquants.BLOCK_BYTES[name])}")


@pytest.mark.parametrize("name", TYPES)
def test_dequantize_matches_ggml_c(ggml, name):
    rng = np.random.default_rng(3)
    blocks = [
        random_blocks(name, rng),
        rng.integers(0, 256, (4, 2 * kquants.BLOCK_BYTES[name]), dtype=np.uint8),
        quantize(name, fresh_rows(rng)["weights"]),
    ]
    for raw in blocks:
        assert_same_bits(dequantize(name, raw), ggml_dequantize(ggml, name, raw))


def test_committed_vectors_are_what_ggml_writes(ggml):
    """The committed expectations came from ggml, not from our own kernels."""
    inputs = committed_inputs()
    regenerated = reference_inputs()
    assert set(inputs) == set(regenerated)
    for name in TYPES:
        expected = committed_expected(name)
        for case, x in inputs.items():
            assert np.array_equal(ggml_quantize(ggml, name, x), expected[case]), (name, case)


# ---------------------------------------------------------------- round trip


# Worst relative RMSE and worst |error| / block max on N(0, 1), uniform and LLaMA-like rows,
# about 1.3x what the formats achieve (Q8_K's max error is its exact bound, half a step).
ROUND_TRIP_BOUNDS = {
    "q2_k": (0.38, 0.52),
    "q3_k": (0.20, 0.32),
    "q4_k": (0.13, 0.14),
    "q5_k": (0.066, 0.082),
    "q6_k": (0.042, 0.026),
    "q8_k": (0.035, 0.5 / 127 * 1.0001),
}


@pytest.mark.parametrize("name", TYPES)
def test_round_trip_error_within_format_bounds(name):
    inputs = committed_inputs()
    max_rmse, max_peak = ROUND_TRIP_BOUNDS[name]
    for case in ("normal", "uniform", "llama_like", "single_superblock", "all_negative"):
        x = inputs[case]
        y = dequantize(name, quantize(name, x))
        err = y - x
        rmse = np.sqrt(np.mean(err**2) / np.mean(x**2))
        peak = np.max(np.abs(err).reshape(-1, 256).max(axis=1) / np.abs(x).reshape(-1, 256).max(axis=1))
        assert rmse < max_rmse, (case, rmse)
        assert peak < max_peak, (case, peak)


def test_more_bits_less_error():
    x = committed_inputs()["normal"]
    errors = [np.mean((dequantize(t, quantize(t, x)) - x) ** 2) for t in TYPES]
    assert errors == sorted(errors, reverse=True)


@pytest.mark.parametrize("name", TYPES)
def test_zero_rows_round_trip_to_zero(name):
    x = np.zeros((3, 512), np.float32)
    raw = quantize(name, x)
    assert not raw.any()
    assert np.array_equal(dequantize(name, raw), x)


@pytest.mark.parametrize("name", TYPES)
def test_constant_rows_round_trip_closely(name):
    x = committed_inputs()["constant"]
    x = x[np.abs(x[:, 0]) >= 0.3]  # at 1e-3, Q6_K's fp16 super-scale is subnormal and coarse
    y = dequantize(name, quantize(name, x))
    assert np.allclose(y, x, rtol=0.02, atol=0), np.abs(y - x).max()


# ---------------------------------------------------------------- interface


@pytest.mark.parametrize("name", TYPES)
def test_registry_shapes_and_sizes(name):
    t = registry.ggml_type(name)
    assert (t.block_size, t.type_size) == (256, kquants.BLOCK_BYTES[name])
    assert t.can_quantize and t.can_dequantize
    x = np.random.default_rng(0).standard_normal((2, 3, 512)).astype(np.float32)
    raw = registry.quantize(name, x)
    assert raw.shape == (2, 3, t.row_bytes(512)) and raw.dtype == np.uint8
    assert np.array_equal(raw.reshape(6, -1), quantize(name, x.reshape(6, 512)))
    y = registry.dequantize(name, raw)
    assert y.shape == x.shape and y.dtype == np.float32


def test_non_contiguous_and_float64_input():
    x = np.random.default_rng(1).standard_normal((512, 6))
    want = quantize("q4_k", np.ascontiguousarray(x.T, dtype=np.float32))
    assert np.array_equal(quantize("q4_k", x.T), want)


@pytest.mark.parametrize("name", TYPES)
def test_empty_input(name):
    assert quantize(name, np.zeros((0, 256), np.float32)).shape == (0, kquants.BLOCK_BYTES[name])
    assert dequantize(name, np.zeros((0, kquants.BLOCK_BYTES[name]), np.uint8)).shape == (0, 256)


@pytest.mark.parametrize("name", TYPES)
def test_bad_shapes_are_clear_errors(name):
    with pytest.raises(LlamatoolError, match="multiple of 256"):
        quantize(name, np.zeros((2, 300), np.float32))
    with pytest.raises(LlamatoolError, match="multiple of 256"):
        quantize(name, np.zeros(256, np.float32))
    with pytest.raises(LlamatoolError, match="whole"):
        dequantize(name, np.zeros((2, kquants.BLOCK_BYTES[name] + 1), np.uint8))
    with pytest.raises(LlamatoolError):
        registry.quantize(name, np.zeros((4, 320), np.float32))


# ---------------------------------------------------------------- scalar helpers
# (the fp16 conversions the K-quants share with the other kernels are tested in test_quants_floats.py)

_nearest_ints = elementwise(ggml_scalar.nearest_int, np.int64)


def test_nearest_int_is_ggml_magic_rounding():
    """Against the C definition evaluated in numpy: mantissa bits of (f + 1.5 * 2**23) - 2**22."""
    rng = np.random.default_rng(4)
    values = np.concatenate(
        [
            np.arange(-20, 20) / np.float32(2),  # every tie
            rng.standard_normal(2000) * 30,
            rng.standard_normal(200) * 1e7,  # beyond the range ggml asserts on
            [4194303.0, -4194303.0, 4194304.5, -12582912.0, 3e38, -3e38, np.inf, -np.inf, np.nan],
        ]
    ).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        summed = values + np.float32(12582912.0)
    want = (summed.view(np.int32) & 0x007FFFFF) - 0x00400000
    assert np.array_equal(_nearest_ints(values), want)


if __name__ == "__main__":
    write_reference_vectors()
