"""F32, F16 and BF16 "quantization": plain float conversions, with ggml's rounding.

F16 and BF16 round to nearest even, as GGML_FP32_TO_FP16 and ggml_compute_fp32_to_bf16
do, including NaNs: an F16 NaN becomes the quiet NaN 0x7E00 (sign kept, payload
dropped, unlike numpy's astype); a BF16 NaN keeps its top bits and is made quiet.
F32 is a numpy view (or copy); the others are Numba loops run on all threads.

Converting floats is bound by memory, not arithmetic: on x86 the F16/BF16 quantizers
convert 32 values at a time in explicit 512-bit vector code and store each 64-byte line
of output non-temporally (straight to memory: the CPU does not first read the line it is
about to overwrite), which moves a third less data than plain stores. Their unaligned
head and their tail go one value at a time through the same rules.

Where the CPU converts halves itself (x86 F16C, ARM), the F16 loops use the hardware
conversion, which rounds to nearest even like ggml's bit trick (ggml_scalar.fp32_to_fp16_bits,
used elsewhere) and differs from it only in NaN payloads, which ggml's rule overrides.
"""

from __future__ import annotations

import numpy as np

from .. import host, jit  # noqa: F401  (jit configures Numba before anything imports it)

from llvmlite import ir  # noqa: E402
from numba.core import cgutils, types  # noqa: E402
from numba.core.imputils import impl_ret_borrowed  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from .ggml_scalar import fp16_bits_to_fp32, fp32_to_bf16_bits, fp32_to_fp16_bits
from .rows import dequantizer, inline, kernel, quantizer

_FEATURES = host.features()
_X86 = _FEATURES.x86
# without F16C an x86 LLVM lowers half conversions to runtime-library calls Numba may lack
NATIVE_HALF = not _X86 or _FEATURES.f16c
_F16_NAN = np.uint16(0x7E00)
_U32_EXPONENT = np.uint32(0x7F800000)
LINE = 32  # values per non-temporal store: 64 bytes of output, one cache line


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


# --- whole lines of output, stored non-temporally (x86) ------------------------------------


def _vector_at(builder, array, index, element: ir.Type) -> ir.Value:
    """Pointer to the LINE-vector of `element`s at array.data[index]."""
    data = builder.bitcast(array.data, element.as_pointer())
    return builder.bitcast(builder.gep(data, [index]), ir.VectorType(element, LINE).as_pointer())


def _splat(element: ir.Type, value: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(element, LINE), [ir.Constant(element, value)] * LINE)


def _line_intrinsic(convert, enabled: bool):
    """An intrinsic step(src, dst, i): dst[i:i+LINE] = convert(bits of src[i:i+LINE]), one
    non-temporal 64-byte store (dst + i must be 64-byte aligned). Empty where not enabled
    (the kernels then never call it)."""

    def typer(typingctx, src, dst, i):
        def codegen(context, builder, sig, args):
            if enabled:
                src_array = context.make_array(sig.args[0])(context, builder, args[0])
                dst_array = context.make_array(sig.args[1])(context, builder, args[1])
                i32 = ir.IntType(32)
                bits = builder.load(_vector_at(builder, src_array, args[2], i32), align=1)
                store = builder.store(convert(builder, bits), _vector_at(builder, dst_array, args[2], ir.IntType(16)), align=64)
                store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(i32, 1)]))
            return context.get_dummy_value()

        return types.void(src, dst, i), codegen

    return intrinsic(typer)


def _f16_line(builder, bits):
    """fp16 bits of float32 bits, rounded to nearest even; a NaN is 0x7E00 with its sign."""
    i32, i16 = ir.IntType(32), ir.IntType(16)
    f = builder.bitcast(bits, ir.VectorType(ir.FloatType(), LINE))
    halves = builder.bitcast(builder.fptrunc(f, ir.VectorType(ir.HalfType(), LINE)), ir.VectorType(i16, LINE))
    sign = builder.trunc(builder.and_(builder.lshr(bits, _splat(i32, 16)), _splat(i32, 0x8000)), ir.VectorType(i16, LINE))
    return builder.select(builder.fcmp_unordered("uno", f, f), builder.or_(sign, _splat(i16, 0x7E00)), halves)


def _bf16_line(builder, u):
    """fp32_to_bf16_bits on a vector: round to nearest even, a NaN keeps its top bits, made quiet."""
    i32 = ir.IntType(32)
    top = builder.lshr(u, _splat(i32, 16))
    nan = builder.icmp_unsigned(">", builder.and_(u, _splat(i32, 0x7FFFFFFF)), _splat(i32, 0x7F800000))
    rounded = builder.lshr(builder.add(builder.add(u, _splat(i32, 0x7FFF)), builder.and_(top, _splat(i32, 1))), _splat(i32, 16))
    return builder.trunc(builder.select(nan, builder.or_(top, _splat(i32, 64)), rounded), ir.VectorType(ir.IntType(16), LINE))


_f16_line_step = _line_intrinsic(_f16_line, _X86 and NATIVE_HALF)
_bf16_line_step = _line_intrinsic(_bf16_line, _X86)


@intrinsic
def _store_fence(typingctx):
    """sfence: the non-temporal stores are done before the kernel returns (they are weakly
    ordered, and another thread reads the output next)."""

    def codegen(context, builder, sig, args):
        if _X86:
            fence = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse.sfence")
            builder.call(fence, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _flat(typingctx, a):
    """The C-contiguous array a as 1-D, as a.reshape(-1) but without the C helper Numba's
    reshape calls, which the object code native.py saves could not link."""
    if not isinstance(a, types.Array) or a.layout != "C":
        return None

    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, args[0])
        flat = context.make_array(sig.return_type)(context, builder)
        n = ir.Constant(ir.IntType(64), 1)
        for extent in cgutils.unpack_tuple(builder, src.shape, sig.args[0].ndim):
            n = builder.mul(n, extent)
        context.populate_array(flat, data=src.data, shape=[n], strides=[src.itemsize], itemsize=src.itemsize, meminfo=src.meminfo, parent=src.parent)
        return impl_ret_borrowed(context, builder, sig.return_type, flat._getvalue())

    return a.copy(ndim=1, layout="C")(a), codegen


@inline
def _line_span(halves, enabled):
    """[start, stop): the part of the uint16 array `halves` stored as whole aligned lines."""
    n = halves.size
    address = halves.ctypes.data
    if not enabled or address & 1:
        return 0, 0
    start = min(n, (-address & 63) >> 1)
    return start, start + (n - start) // LINE * LINE


# The byte rows are C-contiguous (the wrappers see to it), so they can be viewed as uint16.


@kernel
def _quantize_f16(x, out):
    src, dst = _flat(x), _flat(out.view(np.uint16))
    start, stop = _line_span(dst, _X86 and NATIVE_HALF)
    for j in range(start):
        dst[j] = _to_fp16(src[j])
    for j in range(start, stop, LINE):
        _f16_line_step(src, dst, j)
    for j in range(stop, src.size):
        dst[j] = _to_fp16(src[j])
    _store_fence()


@kernel
def _dequantize_f16(raw, out):
    halves = raw.view(np.uint16)
    for r in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[r, j] = _from_fp16(halves[r, j])


@kernel
def _quantize_bf16(x, out):
    src, dst = _flat(x), _flat(out.view(np.uint16))
    start, stop = _line_span(dst, _X86)
    for j in range(start):
        dst[j] = fp32_to_bf16_bits(src[j])
    for j in range(start, stop, LINE):
        _bf16_line_step(src, dst, j)
    for j in range(stop, src.size):
        dst[j] = fp32_to_bf16_bits(src[j])
    _store_fence()


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
