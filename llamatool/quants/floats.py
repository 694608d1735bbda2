"""F32, F16 and BF16 "quantization": plain float conversions, with ggml's rounding.

F16 and BF16 round to nearest even, as GGML_FP32_TO_FP16 and ggml_compute_fp32_to_bf16
do, including NaNs: an F16 NaN becomes the quiet NaN 0x7E00 (sign kept, payload
dropped, unlike numpy's astype); a BF16 NaN keeps its top bits and is made quiet.
Both run as parallel Numba loops (numpy's conversions are single-threaded, and its
BF16 needs several passes); F32 and the way back are numpy views and casts.

Shared with the block quantizers of legacy.py and iquants.py: the fp16 conversions,
bit-exact with ggml's (`fp32_to_fp16_bits`, `fp16_bits_to_fp32`, and `store_fp16` /
`load_fp16` for a scale inside a block row), the kernel decorators, and the wrappers
that turn a row kernel into the public quantize_<type> / dequantize_<type>.
"""

from __future__ import annotations

import numpy as np

from ..jit import njit, prange

# The decorators of the float and block kernels (legacy.py and iquants.py use them too).
# error_model="numpy": a float division by zero gives inf/NaN as in C, not a Python
# exception (and no zero test in the loops to stop the vectorizer). inline="always"
# inlines at the Numba level, before LLVM's vectorizer runs: small helpers called in
# hot loops must be inlined for those loops to vectorize.
inline = njit(inline="always", error_model="numpy")
parallel_kernel = njit(cache=True, parallel=True, error_model="numpy")

# powers of two that move a float32's rounding point to fp16's (see fp32_to_fp16_bits)
_SCALE_TO_INF = np.float32(2.0**112)
_SCALE_TO_ZERO = np.float32(2.0**-110)
_U32 = np.uint32


@inline
def fp32_to_fp16_bits(f):
    """fp16 bits of float32 f, rounded to nearest even: GGML_FP32_TO_FP16's algorithm.

    Adding a power of two sized to f's exponent makes the float32 adder round f to
    fp16 precision; the fp16 exponent and mantissa are then read off the sum's bits.
    Overflow gives inf, NaN gives 0x7E00 with f's sign. Branch-free, so it vectorizes.
    """
    base = (abs(f) * _SCALE_TO_INF) * _SCALE_TO_ZERO
    w = np.float32(f).view(np.uint32)
    shl1_w = _U32(w + w)
    bias = shl1_w & _U32(0xFF000000)
    bias = bias if bias >= _U32(0x71000000) else _U32(0x71000000)
    base = _U32((bias >> 1) + _U32(0x07800000)).view(np.float32) + base
    bits = np.float32(base).view(np.uint32)
    nonsign = ((bits >> 13) & _U32(0x7C00)) + (bits & _U32(0xFFF))
    sign = (w & _U32(0x80000000)) >> 16
    return np.uint16(sign | (_U32(0x7E00) if shl1_w > _U32(0xFF000000) else nonsign))


@inline
def fp16_bits_to_fp32(h):
    """float32 value of fp16 bits h, as ggml_compute_fp16_to_fp32 (a NaN comes back quiet)."""
    sign = _U32(h & 0x8000) << 16
    exponent = (h >> 10) & 0x1F
    mantissa = _U32(h & 0x3FF)
    if exponent == 0:  # zero or subnormal: mantissa * 2**-24, exact
        bits = np.float32(np.float32(mantissa) * np.float32(2.0**-24)).view(np.uint32)
    elif exponent == 31:  # inf or NaN
        bits = _U32(0x7F800000) | (mantissa << 13) | (_U32(0x400000) if mantissa else _U32(0))
    else:
        bits = (_U32(exponent + 112) << 23) | (mantissa << 13)
    return _U32(bits | sign).view(np.float32)


@inline
def store_fp16(out, r, pos, f):
    """Write float32 f as a little-endian fp16 at out[r, pos:pos + 2]."""
    h = fp32_to_fp16_bits(f)
    out[r, pos] = h & 0xFF
    out[r, pos + 1] = h >> 8


@inline
def load_fp16(raw, r, pos):
    """The little-endian fp16 at raw[r, pos:pos + 2], as float32."""
    return fp16_bits_to_fp32(np.int64(raw[r, pos]) | (np.int64(raw[r, pos + 1]) << 8))


def _row_converter(kernel, in_dtype, out_dtype, in_unit: int, out_unit: int):
    """A function of C-contiguous rows around kernel(rows, out): every in_unit items of
    a row become out_unit items of out."""
    def convert(rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=in_dtype)
        out = np.empty((rows.shape[0], rows.shape[1] // in_unit * out_unit), dtype=out_dtype)
        kernel(rows, out)
        return out
    return convert


def row_quantizer(kernel, block_size: int, type_size: int):
    """The public quantize_<type>(x) around a kernel(x, out) that fills raw rows."""
    return _row_converter(kernel, np.float32, np.uint8, block_size, type_size)


def row_dequantizer(kernel, block_size: int, type_size: int):
    """The public dequantize_<type>(raw) around a kernel(raw, out) that fills float32 rows."""
    return _row_converter(kernel, np.uint8, np.float32, type_size, block_size)


@inline
def _fp32_to_bf16_bits(f):
    """ggml_compute_fp32_to_bf16: round to nearest even; a NaN keeps its top bits, made quiet."""
    u = np.float32(f).view(np.uint32)
    if (u & _U32(0x7FFFFFFF)) > _U32(0x7F800000):
        return np.uint16((u >> 16) | _U32(64))
    return np.uint16((np.uint64(u) + np.uint64(0x7FFF + ((u >> 16) & 1))) >> 16)


@parallel_kernel
def _quantize_f16(x, out):
    for r in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[r, j] = fp32_to_fp16_bits(x[r, j])


@parallel_kernel
def _quantize_bf16(x, out):
    for r in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[r, j] = _fp32_to_bf16_bits(x[r, j])


_quantize_f16_rows = _row_converter(_quantize_f16, np.float32, np.uint16, 1, 1)
_quantize_bf16_rows = _row_converter(_quantize_bf16, np.float32, np.uint16, 1, 1)


def quantize_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint8)


def dequantize_f32(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float32)


def quantize_f16(x: np.ndarray) -> np.ndarray:
    return _quantize_f16_rows(x).view(np.uint8)


def dequantize_f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def quantize_bf16(x: np.ndarray) -> np.ndarray:
    return _quantize_bf16_rows(x).view(np.uint8)


def dequantize_bf16(raw: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(raw).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
