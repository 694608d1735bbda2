"""F32, F16 and BF16 "quantization": plain float conversions, with ggml's rounding.

F16 and BF16 round to nearest even, as GGML_FP32_TO_FP16 and ggml_compute_fp32_to_bf16
do, including NaNs: an F16 NaN becomes the quiet NaN 0x7E00 (sign kept, payload
dropped, unlike numpy's astype); a BF16 NaN keeps its top bits and is made quiet.
F32 is a numpy view (or copy); the others are Numba loops run on all threads.

Where the CPU converts halves itself (x86 F16C, ARM), the F16 loops use the hardware
conversion, which rounds to nearest even like ggml's bit trick (cmath.fp32_to_fp16_bits,
used elsewhere) and differs from it only in NaN payloads, which ggml's rule overrides.
"""

from __future__ import annotations

import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .cmath import fp16_bits_to_fp32, fp32_to_bf16_bits, fp32_to_fp16_bits
from .rows import dequantizer, inline, kernel, quantizer

_FEATURES = llvm_binding.get_host_cpu_features()
# without F16C an x86 LLVM lowers half conversions to runtime-library calls Numba may lack
NATIVE_HALF = "sse2" not in _FEATURES or bool(_FEATURES.get("f16c", False))
_F16_NAN = np.uint16(0x7E00)
_U32_EXPONENT = np.uint32(0x7F800000)


@intrinsic
def _hw_fp32_to_fp16_bits(typingctx, f):
    """fptrunc float -> half (round to nearest even), as its bits."""
    if f != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@intrinsic
def _hw_fp16_bits_to_fp32(typingctx, h):
    """fpext half -> float of fp16 bits (exact; a NaN comes back quiet)."""
    if h != types.uint16:
        return None

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@inline
def _to_fp16(f):
    if NATIVE_HALF:
        return _F16_NAN | np.uint16(np.float32(f).view(np.uint32) >> 16 & 0x8000) if f != f else _hw_fp32_to_fp16_bits(f)
    return fp32_to_fp16_bits(f)


@inline
def _from_fp16(h):
    if NATIVE_HALF:
        return _hw_fp16_bits_to_fp32(h)
    return fp16_bits_to_fp32(h)


# The byte rows are C-contiguous (the wrappers see to it), so they can be viewed as uint16.


@kernel
def _quantize_f16(x, out):
    halves = out.view(np.uint16)
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            halves[r, j] = _to_fp16(x[r, j])


@kernel
def _dequantize_f16(raw, out):
    halves = raw.view(np.uint16)
    for r in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[r, j] = _from_fp16(halves[r, j])


@kernel
def _quantize_bf16(x, out):
    halves = out.view(np.uint16)
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            halves[r, j] = fp32_to_bf16_bits(x[r, j])


@kernel
def _dequantize_bf16(raw, out):
    halves = raw.view(np.uint16)
    for r in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[r, j] = np.uint32(np.uint32(halves[r, j]) << np.uint32(16)).view(np.float32)


quantize_f16 = quantizer(_quantize_f16, "F16", 1, 2)
quantize_bf16 = quantizer(_quantize_bf16, "BF16", 1, 2)
dequantize_f16 = dequantizer(_dequantize_f16, "F16", 1, 2)
dequantize_bf16 = dequantizer(_dequantize_bf16, "BF16", 1, 2)


@kernel
def _count_nonfinite(x):
    bits = x.view(np.uint32)
    count = 0
    for r in range(bits.shape[0]):
        for j in range(bits.shape[1]):
            count += np.int64((bits[r, j] & _U32_EXPONENT) == _U32_EXPONENT)
    return count


def quantize_f32(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if out is None:
        return x.view(np.uint8)
    out.view(np.float32)[...] = x
    return out


def dequantize_f32(raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    values = np.ascontiguousarray(raw).view(np.uint8).view(np.float32)
    if out is None:
        return values
    out[...] = values
    return out
