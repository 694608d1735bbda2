"""References for the legacy, IQ4 and float quantization tests.

- `load()`: llama.cpp's own C quantizers and dequantizers through ctypes, for every
  type (K-quants too), from the libggml-base that llama-cpp-python ships (nothing is
  built here); None when llama-cpp-python is absent.
- `finite_rows()` / `special_rows()`: the inputs, finite and non-finite, every test uses.
- `random_blocks()`: raw blocks with random bits and finite fp16 scales.
- `ggml`: a pytest fixture of the C reference that skips without llama-cpp-python.
- `quantize()`, `dequantize()`: our kernels by type name; `elementwise()`: a loop to
  test their scalar helpers.
- `first_difference()`, `assert_same_bits()`: comparisons with readable failures.
- `VECTORS_*`, `load_vectors()`: the committed expected bytes made by
  scripts/gen_quant_vectors_legacy_iq.py from the C library, so CI checks byte-exactness
  without llama-cpp-python.
"""

from __future__ import annotations

import ctypes
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType

from llamatool.quants import registry
from tests.conftest import missing_reference

SKIP_REASON = "llama-cpp-python is not installed (its libggml-base is the C reference)"
DATA = Path(__file__).resolve().parent / "data"
VECTORS_LEGACY = DATA / "quant_vectors_legacy_ggml.npz"
VECTORS_IQ = DATA / "quant_vectors_iq_ggml.npz"

LEGACY_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1"]
IQ_TYPES = ["IQ4_NL", "IQ4_XS"]
FLOAT_TYPES = ["F16", "BF16"]

# Types ggml_quantize_chunk does not take (activation formats), and the row quantizer used
# for them instead.
_ROW_REF_ONLY = {"Q8_1": "quantize_row_q8_1_ref", "Q8_K": "quantize_row_q8_K_ref"}
_f32p = ctypes.POINTER(ctypes.c_float)


# ---------------------------------------------------------------- ggml through ctypes


def _library_path() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
            path = Path(folder) / "lib" / name
            if path.exists():
                return path
    return None


class GGMLReference:
    def __init__(self, path: Path):
        lib = self.lib = ctypes.CDLL(str(path))
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, _f32p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, _f32p]
        lib.ggml_blck_size.argtypes = [ctypes.c_int]
        lib.ggml_blck_size.restype = ctypes.c_int64
        lib.ggml_type_size.argtypes = [ctypes.c_int]
        lib.ggml_type_size.restype = ctypes.c_size_t
        for name in ["ggml_fp32_to_fp16_row", "ggml_fp32_to_bf16_row_ref", *_ROW_REF_ONLY.values()]:
            getattr(lib, name).argtypes = [_f32p, ctypes.c_void_p, ctypes.c_int64]
            getattr(lib, name).restype = None

    def block_geometry(self, type_name: str) -> tuple[int, int]:
        """(values per block, bytes per block) as this ggml build defines them."""
        qtype = int(GGMLQuantizationType[type_name])
        return self.lib.ggml_blck_size(qtype), self.lib.ggml_type_size(qtype)

    def quantize(self, type_name: str, x: np.ndarray, quant_weights: np.ndarray | None = None) -> np.ndarray:
        """Quantize float32 rows (n_rows, n_per_row) as llama-quantize does, without an imatrix
        or with quant_weights (float32[n_per_row], an imatrix's row)."""
        block_size, type_size = self.block_geometry(type_name)
        x = np.ascontiguousarray(x, dtype=np.float32)
        n_rows, n_per_row = x.shape
        out = np.zeros((n_rows, n_per_row // block_size * type_size), dtype=np.uint8)
        if type_name in _ROW_REF_ONLY:
            getattr(self.lib, _ROW_REF_ONLY[type_name])(x.ctypes.data_as(_f32p), out.ctypes.data, x.size)
        else:
            qtype = int(GGMLQuantizationType[type_name])
            qw = None if quant_weights is None else np.ascontiguousarray(quant_weights, dtype=np.float32)
            self.lib.ggml_quantize_chunk(qtype, x.ctypes.data_as(_f32p), out.ctypes.data, 0, n_rows, n_per_row,
                                         None if qw is None else qw.ctypes.data_as(_f32p))
        return out

    def dequantize(self, type_name: str, raw: np.ndarray) -> np.ndarray:
        """Dequantize raw rows (n_rows, row_bytes) with ggml's dequantize_row_<type>."""
        block_size, type_size = self.block_geometry(type_name)
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        out = np.empty(raw.size // type_size * block_size, dtype=np.float32)
        c_name = type_name.lower().replace("_k", "_K")  # ggml's spelling: q4_0, q4_K, iq4_xs
        fn = getattr(self.lib, f"dequantize_row_{c_name}")
        fn.argtypes = [ctypes.c_void_p, _f32p, ctypes.c_int64]
        fn.restype = None
        fn(raw.ctypes.data, out.ctypes.data_as(_f32p), out.size)
        return out.reshape(raw.shape[0], -1)


@lru_cache(maxsize=1)
def load() -> GGMLReference | None:
    path = _library_path()
    return GGMLReference(path) if path else None


@pytest.fixture(scope="module")
def ggml() -> GGMLReference:
    """The C reference; skips the test when llama-cpp-python is not installed (fails in CI)."""
    ref = load()
    if ref is None:
        missing_reference(SKIP_REASON)
    return ref


# ---------------------------------------------------------------- inputs


def _tie_rows(n: int) -> list[np.ndarray]:
    """Rows whose scaled values land exactly on .5: each type's d comes out as 1.

    Every block holds the value that sets the scale (127 for Q8, -8 / -16 for Q4_0 /
    Q5_0, min 0 and max 15 / 31 for Q4_1 / Q5_1) and then half-integers.
    """
    rng = np.random.default_rng(7)
    rows = []
    for lo, hi, anchors in [(-127, 127, [127.0]), (-8, 8, [-8.0]), (0, 15, [0.0, 15.0]),
                            (-16, 16, [-16.0]), (0, 31, [0.0, 31.0])]:
        row = rng.integers(lo, hi, n).astype(np.float32) + np.float32(0.5)
        for b in range(0, n, 32):
            row[b:b + len(anchors)] = anchors
        rows.append(row)
    return rows


def _fp16_tie_rows(n: int) -> list[np.ndarray]:
    """Blocks whose Q4_0 scale max/-8 sits exactly halfway between two fp16 values."""
    halfway = [1 + 2.0**-11, 1 + 3 * 2.0**-11, 2.0**-14 * (1 + 2.0**-11), 2.5 * 2.0**-24, 65504 + 16]
    rows = []
    for h in halfway:
        row = np.linspace(-1, 1, n, dtype=np.float32) * np.float32(h)
        row[::32] = np.float32(-8 * h)
        rows.append(row)
    return rows


def finite_rows(n: int, seed: int = 1234) -> dict[str, np.ndarray]:
    """Finite test inputs of n values per row, by case name (each float32[rows, n])."""
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal((4, n)).astype(np.float32)
    cases = {
        "normal": normal * np.float32(0.02),
        "uniform": rng.uniform(-1, 1, (3, n)).astype(np.float32),
        "heavy_tailed": rng.standard_t(2, (3, n)).astype(np.float32),
        "block_scales": normal * np.float32(10.0) ** rng.integers(-6, 5, (4, n // 32, 1)).repeat(32, 2).reshape(4, n).astype(np.float32),
        "constant": np.array([[0.3], [-1.7], [1e-3], [65504.0]], dtype=np.float32).repeat(n, 1),
        "zeros": np.zeros((1, n), np.float32),
        "signed_zeros": np.stack([np.full(n, -0.0, np.float32),
                                  np.where(rng.random(n) < 0.5, 0.0, -0.0).astype(np.float32)]),
        "tiny_fp16_subnormal": normal * np.float32(1e-6),
        "tiny_f32_subnormal": normal * np.float32(1e-41),
        "huge_fp16": normal * np.float32(6e4),
        "beyond_fp16": normal * np.float32(1e6),
        "near_f32_max": np.clip(normal, -3, 3) * np.float32(1e38),
        "one_outlier": np.where(np.arange(n) % 97 == 5, np.float32(50.0), normal * np.float32(0.01)).astype(np.float32),
        "negative_only": -np.abs(normal),
        "positive_only": np.abs(normal) + np.float32(3.0),
        "ties": np.stack(_tie_rows(n)),
        "fp16_scale_ties": np.stack(_fp16_tie_rows(n)),
        "repeated_extremes": np.tile(np.array([1.0, -1.0, 0.5, -0.5], np.float32), n // 4)[None],
        "integers": rng.integers(-20, 21, (2, n)).astype(np.float32),
    }
    return {name: np.ascontiguousarray(rows, dtype=np.float32) for name, rows in cases.items()}


def special_rows(n: int, seed: int = 99) -> dict[str, np.ndarray]:
    """Rows with NaN and infinities, where only llama.cpp itself defines the answer."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((3, n)).astype(np.float32)

    def with_values(values, positions):
        rows = base.copy()
        rows[:, [p % n for p in positions]] = values
        return rows

    return {
        "nan_inside": with_values(np.nan, [3, 40, n - 1]),
        "nan_first": with_values(np.nan, [0, 32]),
        "inf": with_values(np.inf, [7]),
        "minus_inf": with_values(-np.inf, [7, 100]),
        "both_infs": with_values([np.inf, -np.inf], [1, 2]),
        "all_nan": np.full((1, n), np.nan, np.float32),
        "all_inf": np.full((1, n), np.inf, np.float32),
        "f32_max": (np.sign(base) * np.finfo(np.float32).max).astype(np.float32),
    }


def all_rows(n: int, special: bool) -> np.ndarray:
    """Every case stacked into one array (with the non-finite ones if special)."""
    cases = dict(finite_rows(n))
    if special:
        cases.update(special_rows(n))
    return np.concatenate(list(cases.values()))


def iq_vector_inputs() -> np.ndarray:
    """The IQ4 vectors' inputs: every case, then the finite ones again, each row reversed
    (the scale search is order-sensitive, and there is no numpy reference to lean on)."""
    return np.ascontiguousarray(np.concatenate([all_rows(256, special=True), all_rows(256, special=False)[:, ::-1]]))


def float_values(seed: int = 5) -> np.ndarray:
    """float32 values for F16/BF16: random bit patterns, fp16 rounding ties and edges."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
    fp16_grid = np.arange(0, 0x7C00, 7, dtype=np.uint16).view(np.float16).astype(np.float32)
    ties = (fp16_grid[:-1].astype(np.float64) + fp16_grid[1:]) / 2  # halfway between fp16 neighbours
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 65504, 65519.996, 65520, 65536,
                      2.0**-14, 2.0**-24, 2.0**-25, 2.0**-26, 3 * 2.0**-26, 1e-45, -1e-45,
                      3.4028235e38, 1 + 2.0**-8, 1 + 3 * 2.0**-8], dtype=np.float32)
    payload_nans = np.array([0x7F800001, 0xFFC00001, 0x7FBFFFFF, 0x7F808000], dtype=np.uint32).view(np.float32)
    values = np.concatenate([bits.view(np.float32), fp16_grid, ties.astype(np.float32), -ties.astype(np.float32),
                             edges, payload_nans])
    return values[: values.size // 256 * 256].reshape(-1, 256)


def random_blocks(block_size: int, type_size: int, scale_offsets: list[int], n_rows: int,
                  n_blocks: int, seed: int = 11) -> np.ndarray:
    """Raw rows of random bytes whose fp16 fields at scale_offsets are finite."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n_rows, n_blocks, type_size), dtype=np.uint8)
    for offset in scale_offsets:
        halves = raw[:, :, offset:offset + 2].copy().view(np.uint16)
        exponent_all_ones = (halves & 0x7C00) == 0x7C00
        halves[exponent_all_ones] &= np.uint16(0xBFFF)  # clear one exponent bit: finite
        raw[:, :, offset:offset + 2] = halves.view(np.uint8)
    return raw.reshape(n_rows, n_blocks * type_size)


# fp16 fields of each block (byte offsets), for random_blocks
SCALE_OFFSETS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q8_1": [0, 2],
                 "IQ4_NL": [0], "IQ4_XS": [0]}


def load_vectors(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


# ---------------------------------------------------------------- ours


def ours(verb: str, name: str):
    """Our kernel quantize_<name> / dequantize_<name> (called directly: the registry
    sizes blocks with gguf-py's table, whose Q8_1 is a stale 40 bytes)."""
    module = importlib.import_module(f"llamatool.quants.{registry.ggml_type(name).family}")
    return getattr(module, f"{verb}_{name.lower()}")


def quantize(name: str, x: np.ndarray) -> np.ndarray:
    return ours("quantize", name)(x)


def dequantize(name: str, raw: np.ndarray) -> np.ndarray:
    return ours("dequantize", name)(raw)


def elementwise(scalar_fn, out_dtype):
    """A Numba loop applying an inlined scalar kernel helper to every value of a 1-D array."""
    from llamatool.jit import njit

    @njit
    def apply(values):
        out = np.empty(values.size, out_dtype)
        for i in range(values.size):
            out[i] = scalar_fn(values[i])
        return out

    return apply


# ---------------------------------------------------------------- comparisons


def first_difference(ours: np.ndarray, expected: np.ndarray, block_bytes: int) -> str:
    """A readable account of where two raw arrays first differ (block-wise hex)."""
    rows, cols = np.nonzero(ours != expected)
    if rows.size == 0:
        return "identical"
    r, b = rows[0], cols[0] // block_bytes
    block = slice(b * block_bytes, (b + 1) * block_bytes)
    return (f"{rows.size} bytes differ; first in row {r}, block {b}:\n"
            f"  ours     {ours[r, block].tobytes().hex()}\n  expected {expected[r, block].tobytes().hex()}")


def assert_same_bits(ours: np.ndarray, expected: np.ndarray, context: str = "") -> None:
    """float32 arrays equal bit for bit (so -0.0 and NaN payloads count too)."""
    assert ours.dtype == np.float32 and ours.shape == expected.shape, context
    same = ours.view(np.uint32) == np.ascontiguousarray(expected, dtype=np.float32).view(np.uint32)
    assert same.all(), f"{context} {(~same).sum()} values differ, first at {np.argwhere(~same)[0]}"
