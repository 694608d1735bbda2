"""Explicit SIMD vectors for Numba kernels: LLVM vector types, loads, stores and a few ops.

Why: Numba promotes every integer operation to 64 bits, so an int8 dot product written as
a plain loop never becomes vpmaddwd/vpdpbusd (see DESIGN.md), and reading an f16 scale at
an odd byte offset of the mmap'd file has no plain-Numba spelling at all. These intrinsics
emit LLVM vector IR directly, so a kernel says exactly which vector operations it wants:

    q = load(W, off, 16)                    # 16 x uint8 straight from the mapped file
    w = concat(q & 15, q >> 4)              # 32 nibbles
    acc = fma(to_f32(dot4_u8i8(zero, w, load(xq, i, 32))), splat(scale, 8), acc)

Everything is generic LLVM IR (portable; LLVM picks vcvtph2ps, vfmadd, vpshufb... for the
host), except two x86 instructions used when the CPU has them: `dot4_u8i8` is vpdpbusd
with AVX512-VNNI / AVX-VNNI (portable IR otherwise) and `lookup16` is pshufb. Vectors are
ordinary Numba values: they live in registers, flow through loops and can be passed to
functions.

Lane counts must be compile-time constants (literals or module-level ints).
"""

from __future__ import annotations

import operator

from llamatool import host, jit  # noqa: F401  (jit sets the Numba cache dir before numba is used)

import llvmlite.binding as llvm_binding  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba.core import cgutils, types  # noqa: E402
from numba.extending import intrinsic, models, overload, register_model  # noqa: E402

_FEATURES = host.features()  # what the kernels may use here (LLAMATOOL_NO_NATIVE: no VNNI)
_IS_X86 = _FEATURES.x86
# fpext/fptrunc on half compile to vcvtph2ps/vcvtps2ph with F16C (and natively on ARM);
# an x86 without F16C would need a runtime-library call Numba may not provide.
_NATIVE_HALF = not _IS_X86 or _FEATURES.f16c


class Vector(types.Type):
    """A SIMD vector of `lanes` values of the scalar Numba type `dtype`."""

    def __init__(self, dtype, lanes: int):
        self.dtype = dtype
        self.lanes = int(lanes)
        super().__init__(name=f"Vector({dtype}, {self.lanes})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


# --- helpers for the code generators ------------------------------------------------------


def _literal_int(t) -> int | None:
    if isinstance(t, types.IntegerLiteral):
        return int(t.literal_value)
    return None


def _vec_ir(context, vt) -> ir.VectorType:
    return context.get_value_type(vt)


def _element_ptr(context, builder, aryty, ary, index, pointee: ir.Type):
    """Pointer to `pointee` at element `index` of the array (no bounds check, like ary[i])."""
    data = context.make_array(aryty)(context, builder, ary).data
    ptr = builder.gep(data, [index])
    return builder.bitcast(ptr, pointee.as_pointer())


def _is_int(t) -> bool:
    return isinstance(t, types.Integer)


def _splat(builder, vecty: ir.VectorType, scalar):
    undef = ir.Constant(vecty, ir.Undefined)
    one = builder.insert_element(undef, scalar, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vecty.count), [0] * vecty.count)
    return builder.shuffle_vector(one, undef, mask)


def _intrinsic_fn(builder, name: str, ret: ir.Type, args: list[ir.Type]):
    module = builder.module
    fnty = ir.FunctionType(ret, args)
    return cgutils.get_or_insert_function(module, fnty, name)


def _llvm_suffix(t: ir.Type) -> str:
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{_llvm_suffix(t.element)}"
    if isinstance(t, ir.IntType):
        return f"i{t.width}"
    if isinstance(t, ir.FloatType):
        return "f32"
    if isinstance(t, ir.DoubleType):
        return "f64"
    raise TypeError(t)


# --- loads and stores -----------------------------------------------------------------------


@intrinsic
def load(typingctx, arr, index, lanes):
    """`lanes` consecutive elements of a 1-D array starting at element `index` (unaligned)."""
    n = _literal_int(lanes)
    if not isinstance(arr, types.Array) or not isinstance(index, types.Integer) or n is None:
        return None
    vt = Vector(arr.dtype, n)

    def codegen(context, builder, sig, args):
        vecty = _vec_ir(context, vt)
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1], vecty)
        return builder.load(ptr, align=1)

    return vt(arr, index, lanes), codegen


@intrinsic
def store(typingctx, arr, index, vec):
    """Write a vector to consecutive elements of a 1-D array from element `index`."""
    if not isinstance(arr, types.Array) or not isinstance(vec, Vector) or arr.dtype != vec.dtype:
        return None

    def codegen(context, builder, sig, args):
        vecty = _vec_ir(context, sig.args[2])
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1], vecty)
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()

    return types.none(arr, index, vec), codegen


def _typed_byte_load(elem_ir: ir.Type, out_dtype, convert):
    """An intrinsic reading `lanes` values of LLVM type elem_ir at an offset of a uint8/uint16 array."""

    @intrinsic
    def _load(typingctx, buf, offset, lanes):
        # offset counts elements of buf: bytes in the mapped file (uint8), halves in a
        # uint16 array such as the KV cache
        n = _literal_int(lanes)
        if not isinstance(buf, types.Array) or buf.dtype not in (types.uint8, types.uint16) or n is None:
            return None
        vt = Vector(out_dtype, n) if n > 1 else out_dtype

        def codegen(context, builder, sig, args):
            raw_ty = ir.VectorType(elem_ir, n) if n > 1 else elem_ir
            ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1], raw_ty)
            raw = builder.load(ptr, align=1)
            return convert(builder, raw, n)

        return vt(buf, offset, lanes), codegen

    return _load


def _f32_of_f16_bits(builder, raw, n):
    """IEEE half bits (i16 or <n x i16>) -> float32 values."""
    f32 = ir.FloatType()
    fty = ir.VectorType(f32, n) if n > 1 else f32
    if _NATIVE_HALF:
        hty = ir.VectorType(ir.HalfType(), n) if n > 1 else ir.HalfType()
        return builder.fpext(builder.bitcast(raw, hty), fty)
    # Portable: shift the exponent/mantissa into place and rescale by 2^112 in float
    # (handles subnormals exactly); infinities and NaNs get the all-ones exponent back.
    i32 = ir.VectorType(ir.IntType(32), n) if n > 1 else ir.IntType(32)

    def c(v, t=i32):
        return ir.Constant(t, [v] * n) if n > 1 else ir.Constant(t, v)

    h = builder.zext(raw, i32)
    magnitude = builder.shl(builder.and_(h, c(0x7FFF)), c(13))
    scaled = builder.fmul(builder.bitcast(magnitude, fty), c(5.192296858534828e33, fty))
    special = builder.fcmp_ordered(">=", scaled, c(65536.0, fty))
    bits = builder.bitcast(scaled, i32)
    bits = builder.select(special, builder.or_(bits, c(0x7F800000)), bits)
    sign = builder.shl(builder.and_(h, c(0x8000)), c(16))
    return builder.bitcast(builder.or_(bits, sign), fty)


def _f32_of_bf16_bits(builder, raw, n):
    i32 = ir.VectorType(ir.IntType(32), n) if n > 1 else ir.IntType(32)
    fty = ir.VectorType(ir.FloatType(), n) if n > 1 else ir.FloatType()
    shift = ir.Constant(i32, [16] * n) if n > 1 else ir.Constant(i32, 16)
    return builder.bitcast(builder.shl(builder.zext(raw, i32), shift), fty)


def _same(builder, raw, n):
    return raw


#: float32 value(s) of IEEE half(s) stored at a byte offset: load_f16(buf, off, 1) -> float32
load_f16 = _typed_byte_load(ir.IntType(16), types.float32, _f32_of_f16_bits)
#: float32 value(s) of bfloat16(s) stored at a byte offset
load_bf16 = _typed_byte_load(ir.IntType(16), types.float32, _f32_of_bf16_bits)
#: float32 value(s) stored at a byte offset
load_f32 = _typed_byte_load(ir.FloatType(), types.float32, _same)
#: little-endian integers stored at a byte offset
load_u16 = _typed_byte_load(ir.IntType(16), types.uint16, _same)
load_u32 = _typed_byte_load(ir.IntType(32), types.uint32, _same)
load_u64 = _typed_byte_load(ir.IntType(64), types.uint64, _same)


def _f16_bits_portable(builder, x):
    # float32 -> half bits, round to nearest even: the float-rescaling method of ggml's
    # scalar ggml_compute_fp32_to_fp16 (from the FP16 library), for CPUs without F16C.
    i32, f32 = ir.IntType(32), ir.FloatType()

    def c(v):
        return ir.Constant(i32, v)

    fabs = _intrinsic_fn(builder, "llvm.fabs.f32", f32, [f32])
    base = builder.fmul(builder.call(fabs, [x]), ir.Constant(f32, 2.0**112))
    base = builder.fmul(base, ir.Constant(f32, 2.0**-110))
    w = builder.bitcast(x, i32)
    shl1_w = builder.add(w, w)
    sign = builder.and_(w, c(0x80000000))
    bias = builder.and_(shl1_w, c(0xFF000000))
    bias = builder.select(builder.icmp_unsigned("<", bias, c(0x71000000)), c(0x71000000), bias)
    base = builder.fadd(builder.bitcast(builder.add(builder.lshr(bias, c(1)), c(0x07800000)), f32), base)
    bits = builder.bitcast(base, i32)
    nonsign = builder.add(builder.and_(builder.lshr(bits, c(13)), c(0x7C00)), builder.and_(bits, c(0x0FFF)))
    r = builder.select(builder.icmp_unsigned(">", shl1_w, c(0xFF000000)), c(0x7E00), nonsign)
    r = builder.or_(builder.lshr(sign, c(16)), r)
    return builder.trunc(r, ir.IntType(16))


# --- construction and lane shuffles --------------------------------------------------------


@intrinsic
def splat(typingctx, x, lanes):
    """A vector with every lane equal to the scalar x."""
    n = _literal_int(lanes)
    if n is None or not isinstance(x, (types.Integer, types.Float)):
        return None
    scalar = x.literal_type if isinstance(x, types.Literal) else x
    vt = Vector(scalar, n)

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], scalar)
        return _splat(builder, _vec_ir(context, vt), v)

    return vt(x, lanes), codegen


def _join_intrinsic(order_of, lanes_multiple=1):
    """An intrinsic joining two vectors of one type (n lanes each, n a multiple of
    lanes_multiple) into one of 2n lanes: order_of(n) lists the lanes of [a..., b...] it takes."""
    @intrinsic
    def _join(typingctx, a, b):
        if not isinstance(a, Vector) or a != b or a.lanes % lanes_multiple:
            return None
        vt = Vector(a.dtype, 2 * a.lanes)

        def codegen(context, builder, sig, args):
            mask = ir.Constant(ir.VectorType(ir.IntType(32), vt.lanes), list(order_of(a.lanes)))
            return builder.shuffle_vector(args[0], args[1], mask)

        return vt(a, b), codegen

    return _join


#: [a..., b...]
concat = _join_intrinsic(lambda n: range(2 * n))
#: [a0, b0, a1, b1, ...] (one unpack)
interleave = _join_intrinsic(lambda n: [src * n + i for i in range(n) for src in (0, 1)])
#: blocks of 16 lanes of a and b alternately: [a0..15, b0..15, a16..31, b16..31, ...] (one
#: lane-granular permute of two registers)
zip16 = _join_intrinsic(lambda n: [src * n + blk * 16 + i for blk in range(n // 16) for src in (0, 1) for i in range(16)],
                        lanes_multiple=16)


def _slice_intrinsic(lanes_of):
    """An intrinsic picking half of a vector's lanes: lanes_of(n) lists them."""
    @intrinsic
    def _half(typingctx, v):
        if not isinstance(v, Vector) or v.lanes % 2:
            return None
        vt = Vector(v.dtype, v.lanes // 2)

        def codegen(context, builder, sig, args):
            mask = ir.Constant(ir.VectorType(ir.IntType(32), vt.lanes), list(lanes_of(v.lanes)))
            return builder.shuffle_vector(args[0], ir.Constant(args[0].type, ir.Undefined), mask)

        return vt(v), codegen

    return _half


#: first and second half of a vector
low_half = _slice_intrinsic(lambda n: range(n // 2))
high_half = _slice_intrinsic(lambda n: range(n // 2, n))
#: [v0, v2, v4, ...] and [v1, v3, v5, ...]: the lanes of v at even and at odd positions
even_lanes = _slice_intrinsic(lambda n: range(0, n, 2))
odd_lanes = _slice_intrinsic(lambda n: range(1, n, 2))


@intrinsic
def extract(typingctx, v, i):
    """Lane i of v as a scalar."""
    if not isinstance(v, Vector) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], context.cast(builder, args[1], sig.args[1], types.int32))

    return v.dtype(v, i), codegen


# --- conversions -------------------------------------------------------------------------


def _convert(builder, value, fromty, toty, to_ir):
    if _is_int(fromty) and _is_int(toty):
        if toty.bitwidth > fromty.bitwidth:
            return (builder.sext if fromty.signed else builder.zext)(value, to_ir)
        if toty.bitwidth < fromty.bitwidth:
            return builder.trunc(value, to_ir)
        return value
    if _is_int(fromty):
        return (builder.sitofp if fromty.signed else builder.uitofp)(value, to_ir)
    if _is_int(toty):
        return (builder.fptosi if toty.signed else builder.fptoui)(value, to_ir)
    if toty.bitwidth > fromty.bitwidth:
        return builder.fpext(value, to_ir)
    if toty.bitwidth < fromty.bitwidth:
        return builder.fptrunc(value, to_ir)
    return value


def _converter(target):
    @intrinsic
    def _to(typingctx, v):
        if not isinstance(v, Vector):
            return None
        vt = Vector(target, v.lanes)

        def codegen(context, builder, sig, args):
            return _convert(builder, args[0], v.dtype, target, _vec_ir(context, vt))

        return vt(v), codegen

    return _to


#: lane-wise conversions: integers widen by sign (int8 sign-extends, uint8 zero-extends),
#: narrow by truncation; floats to ints truncate toward zero (round first with `rint`).
to_i8 = _converter(types.int8)
to_i16 = _converter(types.int16)
to_i32 = _converter(types.int32)
to_u64 = _converter(types.uint64)
to_f32 = _converter(types.float32)
to_f64 = _converter(types.float64)


# --- arithmetic ------------------------------------------------------------------------------


def _binary_codegen(op, vt):
    def codegen(context, builder, sig, args):
        a, b = args
        vecty = _vec_ir(context, vt)
        if not isinstance(sig.args[0], Vector):
            a = _splat(builder, vecty, context.cast(builder, a, sig.args[0], vt.dtype))
        if not isinstance(sig.args[1], Vector):
            b = _splat(builder, vecty, context.cast(builder, b, sig.args[1], vt.dtype))
        return op(builder, vt.dtype, a, b)

    return codegen


def _int_or_float(int_op, float_op):
    def op(builder, dtype, a, b):
        if _is_int(dtype):
            return int_op(builder, dtype, a, b)
        return float_op(builder, a, b)

    return op


_OPS = {
    operator.add: _int_or_float(lambda bl, t, a, b: bl.add(a, b), lambda bl, a, b: bl.fadd(a, b)),
    operator.sub: _int_or_float(lambda bl, t, a, b: bl.sub(a, b), lambda bl, a, b: bl.fsub(a, b)),
    operator.mul: _int_or_float(lambda bl, t, a, b: bl.mul(a, b), lambda bl, a, b: bl.fmul(a, b)),
    operator.truediv: lambda bl, t, a, b: bl.fdiv(a, b),
    operator.and_: lambda bl, t, a, b: bl.and_(a, b),
    operator.or_: lambda bl, t, a, b: bl.or_(a, b),
    operator.xor: lambda bl, t, a, b: bl.xor(a, b),
    operator.lshift: lambda bl, t, a, b: bl.shl(a, b),
    operator.rshift: lambda bl, t, a, b: (bl.ashr if t.signed else bl.lshr)(a, b),
}


def _operand_vector_type(a, b):
    """The vector type of `a op b` (vector op vector of one type, or vector op scalar)."""
    if isinstance(a, Vector) and isinstance(b, Vector):
        return a if a == b else None
    if isinstance(a, Vector) and isinstance(b, (types.Integer, types.Float)):
        return a
    if isinstance(b, Vector) and isinstance(a, (types.Integer, types.Float)):
        return b
    return None


def _make_binary(op, codegen_op):
    @intrinsic
    def _binary(typingctx, a, b):
        vt = _operand_vector_type(a, b)
        if vt is None:
            return None
        if op is operator.truediv and _is_int(vt.dtype):
            return None
        return vt(a, b), _binary_codegen(codegen_op, vt)

    @overload(op)
    def _overload(a, b):
        if _operand_vector_type(a, b) is not None:
            return lambda a, b: _binary(a, b)

    return _binary


for _op, _gen in _OPS.items():
    _make_binary(_op, _gen)


def _float_call(name: str, nargs: int):
    def typer(args):
        if not all(isinstance(a, Vector) and a == args[0] and not _is_int(a.dtype) for a in args):
            return None
        vt = args[0]

        def codegen(context, builder, sig, llargs):
            vecty = _vec_ir(context, vt)
            fn = _intrinsic_fn(builder, f"llvm.{name}.{_llvm_suffix(vecty)}", vecty, [vecty] * nargs)
            return builder.call(fn, list(llargs))

        return vt(*args), codegen

    # Numba intrinsics cannot take *args: one definition per arity.
    if nargs == 1:

        @intrinsic
        def _call1(typingctx, a):
            return typer((a,))

        return _call1
    if nargs == 2:

        @intrinsic
        def _call2(typingctx, a, b):
            return typer((a, b))

        return _call2

    @intrinsic
    def _call3(typingctx, a, b, c):
        return typer((a, b, c))

    return _call3


#: a * b + c, one rounding (vfmadd)
fma = _float_call("fma", 3)
#: round to nearest, ties to even (as _mm256_round_ps(_MM_ROUND_NEAREST))
rint = _float_call("rint", 1)
fabs = _float_call("fabs", 1)
fmax = _float_call("maxnum", 2)
fmin = _float_call("minnum", 2)


def _reduction(int_name: str, float_name: str):
    @intrinsic
    def _reduce(typingctx, v):
        if not isinstance(v, Vector):
            return None

        def codegen(context, builder, sig, args):
            vecty = args[0].type
            elem = vecty.element
            if _is_int(v.dtype):
                name = int_name.format(s="s" if v.dtype.signed else "u")
                fn = _intrinsic_fn(builder, f"llvm.vector.reduce.{name}.{_llvm_suffix(vecty)}", elem, [vecty])
                return builder.call(fn, [args[0]])
            if float_name == "fadd":
                fn = _intrinsic_fn(builder, f"llvm.vector.reduce.fadd.{_llvm_suffix(vecty)}", elem, [elem, vecty])
                # reassoc: a tree of adds instead of a serial chain
                return builder.call(fn, [ir.Constant(elem, -0.0), args[0]], fastmath=("reassoc",))
            fn = _intrinsic_fn(builder, f"llvm.vector.reduce.{float_name}.{_llvm_suffix(vecty)}", elem, [vecty])
            return builder.call(fn, [args[0]])

        return v.dtype(v), codegen

    return _reduce


#: sum of all lanes (floats summed as a tree)
hsum = _reduction("add", "fadd")
#: largest lane
hmax = _reduction("{s}max", "fmax")


@intrinsic
def bit_mask(typingctx, bits, lanes, shift):
    """uint8 vector: lane i = ((bits >> (shift + i)) & 1), for a uint32/uint64 `bits`."""
    n = _literal_int(lanes)
    if n is None or not isinstance(bits, types.Integer) or not isinstance(shift, types.Integer):
        return None
    vt = Vector(types.uint8, n)

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        word = context.cast(builder, args[0], sig.args[0], types.uint64)
        word = builder.lshr(word, context.cast(builder, args[2], sig.args[2], types.uint64))
        wide = ir.VectorType(i64, n)
        v = _splat(builder, wide, word)
        v = builder.lshr(v, ir.Constant(wide, list(range(n))))
        v = builder.and_(v, ir.Constant(wide, [1] * n))
        return builder.trunc(v, ir.VectorType(ir.IntType(8), n))

    return vt(bits, lanes, shift), codegen


@intrinsic
def lookup16(typingctx, table, idx):
    """out[i] = table[idx[i]] for a 16-entry int8 table and indices 0..15 (pshufb on x86)."""
    if not (isinstance(table, Vector) and table.lanes == 16 and table.dtype in (types.int8, types.uint8)):
        return None
    if not (isinstance(idx, Vector) and idx.dtype == types.uint8 and idx.lanes % 16 == 0):
        return None
    vt = Vector(table.dtype, idx.lanes)

    def codegen(context, builder, sig, args):
        tbl, ix = args
        n = idx.lanes
        i8x16 = ir.VectorType(ir.IntType(8), 16)
        if _IS_X86:
            fn = _intrinsic_fn(builder, "llvm.x86.ssse3.pshuf.b.128", i8x16, [i8x16, i8x16])
            parts = []
            for k in range(n // 16):
                mask = ir.Constant(ir.VectorType(ir.IntType(32), 16), list(range(16 * k, 16 * k + 16)))
                part = builder.shuffle_vector(ix, ir.Constant(ix.type, ir.Undefined), mask)
                parts.append(builder.call(fn, [tbl, part]))
            while len(parts) > 1:
                merged = []
                for a, b in zip(parts[::2], parts[1::2]):
                    w = a.type.count
                    mask = ir.Constant(ir.VectorType(ir.IntType(32), 2 * w), list(range(2 * w)))
                    merged.append(builder.shuffle_vector(a, b, mask))
                parts = merged
            return parts[0]
        out = ir.Constant(ir.VectorType(ir.IntType(8), n), ir.Undefined)
        for i in range(n):
            j = builder.extract_element(ix, ir.Constant(ir.IntType(32), i))
            out = builder.insert_element(out, builder.extract_element(tbl, j), ir.Constant(ir.IntType(32), i))
        return out

    return vt(table, idx), codegen


@intrinsic
def where_bits(typingctx, bits, a, b):
    """Lane i of a where bit i of the integer `bits` is set, else lane i of b (a and b of one
    vector type, at most 64 lanes). With AVX-512 the bits become a mask register and this one
    masked move (or the masked form of the instruction computing a); elsewhere LLVM spreads
    them over the lanes itself (a broadcast, an and and a compare)."""
    if not (isinstance(bits, types.Integer) and isinstance(a, Vector) and a == b and a.lanes <= 64):
        return None

    def codegen(context, builder, sig, args):
        n = a.lanes
        word = context.cast(builder, args[0], sig.args[0], types.uint64)
        word = builder.trunc(word, ir.IntType(n)) if n < 64 else word
        mask = builder.bitcast(word, ir.VectorType(ir.IntType(1), n))
        return builder.select(mask, args[1], args[2])

    return a(bits, a, b), codegen


@intrinsic
def gather(typingctx, arr, idx):
    """out[i] = arr[idx[i]]: the elements of a 1-D array at a vector of integer indices (no
    bounds check, like get). LLVM's masked.gather: one vpgatherdd / vpgatherdq with AVX-512;
    where LLVM deems gathers slow or missing (its x86-64-v3 tuning, other CPUs) a load and an
    insert per lane. How the IQ types look up the grid points of a chunk pair at once."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(idx, Vector) and _is_int(idx.dtype)):
        return None
    vt = Vector(arr.dtype, idx.lanes)

    def codegen(context, builder, sig, args):
        n = idx.lanes
        elem = context.get_data_type(arr.dtype)
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptrs_ty = ir.VectorType(elem.as_pointer(), n)
        # a vector GEP from one base (LLVM turns it into the gather's base + scaled index);
        # llvmlite types every GEP as a scalar pointer, so the vector type is set by hand
        ptrs = builder.gep(data, [args[1]], source_etype=elem)
        ptrs.type = ptrs_ty
        i32, out_ty = ir.IntType(32), _vec_ir(context, vt)
        fn = _intrinsic_fn(builder, f"llvm.masked.gather.v{n}{_llvm_suffix(elem)}.v{n}p0", out_ty,
                           [ptrs_ty, i32, ir.VectorType(ir.IntType(1), n), out_ty])
        every = ir.Constant(ir.VectorType(ir.IntType(1), n), [1] * n)
        align = ir.Constant(i32, context.get_abi_sizeof(elem))
        return builder.call(fn, [ptrs, align, every, ir.Constant(out_ty, ir.Undefined)])

    return vt(arr, idx), codegen


# --- bit-level reinterpretation and float formats -----------------------------------------


def _bitcaster(target):
    @intrinsic
    def _cast(typingctx, v):
        if not isinstance(v, Vector) or v.dtype.bitwidth != target.bitwidth:
            return None
        vt = Vector(target, v.lanes)

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], _vec_ir(context, vt))

        return vt(v), codegen

    return _cast


#: same bits, other lane type (e.g. float32 <-> uint32 to build or round floats by hand)
as_u32 = _bitcaster(types.uint32)
as_f32 = _bitcaster(types.float32)


@intrinsic
def f16_bits_to_f32(typingctx, bits):
    """The float32 value of IEEE half bits held in an integer scalar's low 16 bits (a half
    put together from pieces, as IQ1_M stores its scale)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        raw = args[0]
        if bits.bitwidth > 16:
            raw = builder.trunc(raw, ir.IntType(16))
        elif bits.bitwidth < 16:
            raw = builder.zext(raw, ir.IntType(16))
        return _f32_of_f16_bits(builder, raw, 1)

    return types.float32(bits), codegen


@intrinsic
def round_f16(typingctx, x):
    """x rounded to the nearest IEEE half (ties to even), returned as float32 (scalar or vector).

    This is what ggml does to an activation before an F16 dot product or an F16 KV cache.
    """
    if x == types.float32:
        n = 1
    elif isinstance(x, Vector) and x.dtype == types.float32:
        n = x.lanes
    else:
        return None

    def codegen(context, builder, sig, args):
        if _NATIVE_HALF:
            hty = ir.VectorType(ir.HalfType(), n) if n > 1 else ir.HalfType()
            return builder.fpext(builder.fptrunc(args[0], hty), args[0].type)
        if n == 1:
            return _f32_of_f16_bits(builder, _f16_bits_portable(builder, args[0]), 1)
        out = args[0]
        for i in range(n):
            k = ir.Constant(ir.IntType(32), i)
            lane = _f32_of_f16_bits(builder, _f16_bits_portable(builder, builder.extract_element(args[0], k)), 1)
            out = builder.insert_element(out, lane, k)
        return out

    return x(x), codegen


@intrinsic
def _negate(typingctx, v):
    if not isinstance(v, Vector):
        return None

    def codegen(context, builder, sig, args):
        if _is_int(v.dtype):
            return builder.neg(args[0])
        return builder.fneg(args[0])

    return v(v), codegen


@overload(operator.neg)
def _neg_overload(v):
    if isinstance(v, Vector):
        return lambda v: _negate(v)


@intrinsic
def get(typingctx, arr, index):
    """arr[index] for a 1-D array, without Numba's negative-index wraparound (which costs a
    compare and a select per access in hot loops; kernels never use negative indices)."""
    if not isinstance(arr, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1], context.get_data_type(arr.dtype))
        return builder.load(ptr)

    return arr.dtype(arr, index), codegen


# --- 8-bit dot products ----------------------------------------------------------------------

_VNNI_512 = _FEATURES.vnni_512
_VNNI_256 = _FEATURES.vnni_256
_AVX2 = _FEATURES.avx2


def _add_even_odd(builder, v, n: int):
    """Lanes 2i and 2i+1 of v added: n lanes of v's type."""
    undef = ir.Constant(v.type, ir.Undefined)
    lanes = ir.VectorType(ir.IntType(32), n)
    even = builder.shuffle_vector(v, undef, ir.Constant(lanes, list(range(0, 2 * n, 2))))
    odd = builder.shuffle_vector(v, undef, ir.Constant(lanes, list(range(1, 2 * n, 2))))
    return builder.add(even, odd)


def _dot4_avx2(builder, acc, a, b, n: int, below_128: bool):
    """dot4_u8i8 by vpmaddubsw + vpmaddwd, 32 bytes at a time (AVX2 without VNNI). vpmaddubsw
    adds two u8 x i8 products into an int16 with saturation, exact only while each byte of
    `a` is below 128 (2 * 127 * 128 < 2**15); so a byte is split into its low 7 bits and its top
    bit (2 * 128 * -128 = -2**15 still fits) unless the caller knows they are below 128.
    vpmaddwd against ones then adds adjacent pairs into int32: lane i sums bytes 4i..4i+3, the
    lanes of vpdpbusd, and every sum is exact, so the bits are vpdpbusd's."""
    i8x32, i16x16, i32x8 = ir.VectorType(ir.IntType(8), 32), ir.VectorType(ir.IntType(16), 16), ir.VectorType(ir.IntType(32), 8)
    maddubs = _intrinsic_fn(builder, "llvm.x86.avx2.pmadd.ub.sw", i16x16, [i8x32, i8x32])
    maddwd = _intrinsic_fn(builder, "llvm.x86.avx2.pmadd.wd", i32x8, [i16x16, i16x16])
    ones = ir.Constant(i16x16, [1] * 16)
    low7, top = ir.Constant(i8x32, [0x7F] * 32), ir.Constant(i8x32, [0x80] * 32)
    pieces = []
    for p in range(n // 8):
        sel = ir.Constant(ir.VectorType(ir.IntType(32), 32), list(range(32 * p, 32 * p + 32)))
        ap = builder.shuffle_vector(a, ir.Constant(a.type, ir.Undefined), sel)
        bp = builder.shuffle_vector(b, ir.Constant(b.type, ir.Undefined), sel)
        if below_128:
            s = builder.call(maddwd, [builder.call(maddubs, [ap, bp]), ones])
        else:
            s = builder.add(builder.call(maddwd, [builder.call(maddubs, [builder.and_(ap, low7), bp]), ones]),
                            builder.call(maddwd, [builder.call(maddubs, [builder.and_(ap, top), bp]), ones]))
        pieces.append(s)
    while len(pieces) > 1:  # concatenate the 8-lane sums back into n lanes, in order
        joined = []
        for x, y in zip(pieces[::2], pieces[1::2]):
            w = x.type.count
            joined.append(builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(ir.IntType(32), 2 * w), list(range(2 * w)))))
        pieces = joined
    return builder.add(acc, pieces[0])


def _dot4_intrinsic(below_128: bool):
    """An intrinsic f(acc, a, b) = acc[i] + sum over k < 4 of a[4i+k] * b[4i+k]: unsigned bytes
    times signed bytes, summed in groups of four into int32 lanes (below_128: the caller
    promises every byte of a is below 128, which lets AVX2 use half the instructions). One
    vpdpbusd with AVX512-VNNI / AVX-VNNI (64 or 32 bytes); with AVX2 vpmaddubsw + vpmaddwd
    (_dot4_avx2); elsewhere the same sums in portable IR (widened, multiplied, pairwise added)."""

    @intrinsic
    def dot4(typingctx, acc, a, b):
        if not (isinstance(acc, Vector) and acc.dtype == types.int32):
            return None
        if not (isinstance(a, Vector) and a.dtype == types.uint8 and isinstance(b, Vector) and b.dtype == types.int8):
            return None
        if a.lanes != b.lanes or a.lanes != 4 * acc.lanes:
            return None

        def codegen(context, builder, sig, args):
            n = acc.lanes
            i32v = ir.VectorType(ir.IntType(32), n)
            native = (n == 16 and _VNNI_512) or (n == 8 and _VNNI_256)
            if native:
                name = "llvm.x86.avx512.vpdpbusd.512" if n == 16 else "llvm.x86.avx512.vpdpbusd.256"
                fn = _intrinsic_fn(builder, name, i32v, [i32v, i32v, i32v])
                return builder.call(fn, [args[0], builder.bitcast(args[1], i32v), builder.bitcast(args[2], i32v)])
            if _AVX2 and n % 8 == 0:
                return _dot4_avx2(builder, args[0], args[1], args[2], n, below_128)
            # Products of 16-bit-range values, summed in even/odd pairs, twice: the first pair sum
            # is the shape LLVM lowers to vpmaddwd; the sums are exact, so the bits are vpdpbusd's.
            wide = ir.VectorType(ir.IntType(32), 4 * n)
            p = builder.mul(builder.zext(args[1], wide), builder.sext(args[2], wide))
            pairs = _add_even_odd(builder, p, 2 * n)
            return builder.add(args[0], _add_even_odd(builder, pairs, n))

        return acc(acc, a, b), codegen

    return dot4


dot4_u8i8 = _dot4_intrinsic(below_128=False)
dot4_u7i8 = _dot4_intrinsic(below_128=True)  # every byte of the first operand < 128


def _scaled_pairs_avx2(builder, acc, w, x, k):
    """scaled_dot4 by 32-byte vpmaddubsw and vpmaddwd (AVX2), half of the operands at a time."""
    i8x32, i16x16, i32x8 = ir.VectorType(ir.IntType(8), 32), ir.VectorType(ir.IntType(16), 16), ir.VectorType(ir.IntType(32), 8)
    maddubs = _intrinsic_fn(builder, "llvm.x86.avx2.pmadd.ub.sw", i16x16, [i8x32, i8x32])
    maddwd = _intrinsic_fn(builder, "llvm.x86.avx2.pmadd.wd", i32x8, [i16x16, i16x16])
    halves = []
    for h in range(2):
        bytes_h = ir.Constant(ir.VectorType(ir.IntType(32), 32), list(range(32 * h, 32 * h + 32)))
        words_h = ir.Constant(ir.VectorType(ir.IntType(32), 16), list(range(16 * h, 16 * h + 16)))
        undef_b, undef_k = ir.Constant(w.type, ir.Undefined), ir.Constant(k.type, ir.Undefined)
        pairs = builder.call(maddubs, [builder.shuffle_vector(w, undef_b, bytes_h), builder.shuffle_vector(x, undef_b, bytes_h)])
        halves.append(builder.call(maddwd, [pairs, builder.shuffle_vector(k, undef_k, words_h)]))
    both = builder.shuffle_vector(halves[0], halves[1], ir.Constant(ir.VectorType(ir.IntType(32), 16), list(range(16))))
    return builder.add(acc, both)


# vpdpwssd as inline assembly, not llvm.x86.avx512.vpdpwssd.512: LLVM's machine combiner
# splits a chain of the intrinsic into vpmaddwd + vpaddd (a shorter dependency chain, one
# more instruction on the two ports that run 512-bit integer work). A Q4_K super-block (four
# in one chain) went 6.6-6.9 -> 6.2 ns per 256 weights from L2 (Xeon, one thread).
_I32X16 = ir.VectorType(ir.IntType(32), 16)
_VPDPWSSD = ir.InlineAsm(ir.FunctionType(_I32X16, [_I32X16] * 3), "vpdpwssd $3, $2, $0", "=v,0,v,v")
llvm_binding.initialize_native_asmparser()  # LLVM assembles inline assembly with it


@intrinsic
def scaled_dot4(typingctx, acc, w, x, k):
    """acc[i] + k[2i] * (w[4i] x[4i] + w[4i+1] x[4i+1]) + k[2i+1] * (w[4i+2] x[4i+2] + w[4i+3] x[4i+3]):
    16 int32 lanes; w: 64 uint8 below 128, x: 64 int8, k: 32 int16 (a scale per byte pair).
    The byte pairs sum in int16 exactly (|2 * 127 * 128| < 2**15), then meet their scales in
    int32: vpmaddubsw + vpdpwssd (AVX512-VNNI), by 32 bytes with AVX2, else portable IR."""
    if not (isinstance(acc, Vector) and acc.dtype == types.int32 and acc.lanes == 16):
        return None
    if not (isinstance(w, Vector) and w.dtype == types.uint8 and w.lanes == 64 and isinstance(x, Vector)
            and x.dtype == types.int8 and x.lanes == 64 and isinstance(k, Vector) and k.dtype == types.int16
            and k.lanes == 32):
        return None

    def codegen(context, builder, sig, args):
        a, wv, xv, kv = args
        i8x64, i16x32, i32x16 = (ir.VectorType(ir.IntType(8), 64), ir.VectorType(ir.IntType(16), 32),
                                 ir.VectorType(ir.IntType(32), 16))
        if _VNNI_512:
            maddubs = _intrinsic_fn(builder, "llvm.x86.avx512.pmaddubs.w.512", i16x32, [i8x64, i8x64])
            pairs = builder.call(maddubs, [wv, xv])
            return builder.call(_VPDPWSSD, [a, builder.bitcast(pairs, i32x16), builder.bitcast(kv, i32x16)])
        if _AVX2:
            return _scaled_pairs_avx2(builder, a, wv, xv, kv)
        wide16 = ir.VectorType(ir.IntType(16), 64)
        pairs = _add_even_odd(builder, builder.mul(builder.zext(wv, wide16), builder.sext(xv, wide16)), 32)
        wide32 = ir.VectorType(ir.IntType(32), 32)
        scaled = builder.mul(builder.sext(pairs, wide32), builder.sext(kv, wide32))
        return builder.add(a, _add_even_odd(builder, scaled, 16))

    return acc(acc, w, x, k), codegen


@intrinsic
def splat4(typingctx, a, b, c, d):
    """float32 x 16: a in lanes 0-3, b in 4-7, c in 8-11, d in 12-15."""
    if not all(t == types.float32 for t in (a, b, c, d)):
        return None
    vt = Vector(types.float32, 16)

    def codegen(context, builder, sig, args):
        v = ir.Constant(ir.VectorType(ir.FloatType(), 16), ir.Undefined)
        for i, x in enumerate(args):
            v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), 4 * i))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), 16), [4 * (i // 4) for i in range(16)])
        return builder.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), mask)

    return vt(a, b, c, d), codegen


@intrinsic
def repeat_lanes(typingctx, v, times):
    """Each lane of v `times` times in a row: [v0 x times, v1 x times, ...] (one permute)."""
    n = _literal_int(times)
    if not isinstance(v, Vector) or n is None or n <= 0:
        return None
    vt = Vector(v.dtype, v.lanes * n)

    def codegen(context, builder, sig, args):
        mask = ir.Constant(ir.VectorType(ir.IntType(32), vt.lanes), [i // n for i in range(vt.lanes)])
        return builder.shuffle_vector(args[0], ir.Constant(args[0].type, ir.Undefined), mask)

    return vt(v, times), codegen


@intrinsic
def pack2(typingctx, a, b):
    """float32 x 2: [a, b]."""
    if not (a == types.float32 and b == types.float32):
        return None
    vt = Vector(types.float32, 2)

    def codegen(context, builder, sig, args):
        v = ir.Constant(ir.VectorType(ir.FloatType(), 2), ir.Undefined)
        v = builder.insert_element(v, args[0], ir.Constant(ir.IntType(32), 0))
        return builder.insert_element(v, args[1], ir.Constant(ir.IntType(32), 1))

    return vt(a, b), codegen


# --- register-tiled products: stack scratch, broadcasts, reinterpretation ---------------------


def _number_class(t):
    return t.instance_type if isinstance(t, types.NumberClass) else None


@intrinsic
def stack_array(typingctx, n, dtype):
    """A 1-D array of n (a compile-time constant) elements of dtype (np.uint32, np.float32, ...)
    on the calling function's stack, 64-byte aligned and uninitialized: scratch for a kernel
    that must not allocate (forward-pass threads have the default 8 MiB stack)."""
    size = _literal_int(n)
    elem = _number_class(dtype)
    if size is None or size <= 0 or elem is None:
        return None
    arrty = types.Array(elem, 1, "C")

    def codegen(context, builder, sig, args):
        llty = context.get_data_type(elem)
        with builder.goto_entry_block():  # once per call, not per loop iteration
            space = builder.alloca(ir.ArrayType(llty, size))
            space.align = 64
        data = builder.bitcast(space, llty.as_pointer())
        ary = context.make_array(arrty)(context, builder)
        itemsize = context.get_abi_sizeof(llty)
        intp = context.get_value_type(types.intp)
        context.populate_array(ary, data=data, shape=[ir.Constant(intp, size)], strides=[ir.Constant(intp, itemsize)],
                               itemsize=ir.Constant(intp, itemsize), meminfo=None)
        return ary._getvalue()

    return arrty(n, dtype), codegen


@intrinsic
def broadcast4(typingctx, arr, index, lanes):
    """The 4 bytes of a 1-D int8/uint8 array at `index`, repeated to fill `lanes` bytes (one
    vpbroadcastd, or a broadcast memory operand of the instruction that uses it)."""
    n = _literal_int(lanes)
    if not (isinstance(arr, types.Array) and arr.dtype in (types.int8, types.uint8) and isinstance(index, types.Integer)):
        return None
    if n is None or n % 4:
        return None
    vt = Vector(arr.dtype, n)

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1], i32)
        word = builder.load(ptr, align=1)
        return builder.bitcast(_splat(builder, ir.VectorType(i32, n // 4), word), _vec_ir(context, vt))

    return vt(arr, index, lanes), codegen


@intrinsic
def reinterpret(typingctx, v, dtype):
    """The bits of vector v as lanes of dtype (as many as fit: 32 uint8 -> 8 uint32)."""
    elem = _number_class(dtype)
    if not isinstance(v, Vector) or elem is None or (v.dtype.bitwidth * v.lanes) % elem.bitwidth:
        return None
    vt = Vector(elem, v.dtype.bitwidth * v.lanes // elem.bitwidth)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _vec_ir(context, vt))

    return vt(v, dtype), codegen


# --- decode helpers: two scattered halves, prefetch, lane picks ---------------------------------


@intrinsic
def load_f16_pair(typingctx, buf, o0, o1):
    """float32 x 2: the IEEE halves at byte offsets o0 and o1 of a uint8 array (two 16-bit
    loads into one register and one vcvtph2ps, where two scalar conversions and an insert
    would be three instructions)."""
    if not (isinstance(buf, types.Array) and buf.dtype == types.uint8):
        return None
    if not (isinstance(o0, types.Integer) and isinstance(o1, types.Integer)):
        return None
    vt = Vector(types.float32, 2)

    def codegen(context, builder, sig, args):
        i16 = ir.IntType(16)
        raw = ir.Constant(ir.VectorType(i16, 2), ir.Undefined)
        for k, (ty, off) in enumerate(zip(sig.args[1:], args[1:])):
            ptr = _element_ptr(context, builder, sig.args[0], args[0], off, i16)
            raw = builder.insert_element(raw, builder.load(ptr, align=1), ir.Constant(ir.IntType(32), k))
        return _f32_of_f16_bits(builder, raw, 2)

    return vt(buf, o0, o1), codegen


def _prefetch_intrinsic(locality: int, where: str):
    @intrinsic
    def _prefetch(typingctx, arr, index):
        if not isinstance(arr, types.Array) or not isinstance(index, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1], ir.IntType(8))
            fn = _intrinsic_fn(builder, "llvm.prefetch.p0i8", ir.VoidType(), [i8p, i32, i32, i32])
            # a read, the locality, the data cache
            builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, locality), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return types.none(arr, index), codegen

    _prefetch.__doc__ = f"""Ask for the line holding element `index` of a 1-D array {where} (a hint: never
    faults, no result). For a weight stream whose next bytes the hardware prefetcher would
    fetch too late (it stops at every 4 KiB page)."""
    return _prefetch


prefetch = _prefetch_intrinsic(3, "into every cache level (prefetcht0)")
prefetch_l2 = _prefetch_intrinsic(2, "into L2 and below, not L1 (prefetcht1)")


@intrinsic
def pick_pair(typingctx, v, s0, s1):
    """uint8 x 64 [v[s0:s0+16], v[s0:s0+16], v[s1:s1+16], v[s1:s1+16]] of a uint8 vector v
    (s0, s1 compile-time constants): the packed bytes of two 4-bit blocks, twice, from
    registers that hold a whole group of blocks (one vpermb / vpermt2b)."""
    a, b = _literal_int(s0), _literal_int(s1)
    if not (isinstance(v, Vector) and v.dtype == types.uint8) or a is None or b is None:
        return None
    if not (0 <= a <= v.lanes - 16 and 0 <= b <= v.lanes - 16):
        return None
    vt = Vector(types.uint8, 64)

    def codegen(context, builder, sig, args):
        order = [*range(a, a + 16), *range(a, a + 16), *range(b, b + 16), *range(b, b + 16)]
        mask = ir.Constant(ir.VectorType(ir.IntType(32), 64), order)
        return builder.shuffle_vector(args[0], ir.Constant(args[0].type, ir.Undefined), mask)

    return vt(v, s0, s1), codegen


_GFNI_512 = _FEATURES.gfni and _FEATURES.avx512


def _shift_matrix(shift: int, mask: int) -> int:
    """vgf2p8affineqb's bit matrix (one per 8 bytes; row 7 - i makes bit i of a byte) for
    (byte << shift) & mask, a negative shift moving bits down."""
    rows = [1 << (i - shift) if mask >> i & 1 else 0 for i in range(8)]
    return sum(row << 8 * (7 - i) for i, row in enumerate(rows))


def _shifted_by_quarters(builder, v, shifts, mask):
    """(byte << shifts[k]) & mask for the bytes of 16-byte quarter k of a uint8 x 64 value (a
    negative shift moving bits down; all shifts one way, every kept bit from its own byte).
    With GFNI one vgf2p8affineqb, whose bit matrix is given per 8 bytes; else a word shift by
    quarter and a mask."""
    i8x64, i16x32 = ir.VectorType(ir.IntType(8), 64), ir.VectorType(ir.IntType(16), 32)
    if _GFNI_512:
        matrix = ir.Constant(ir.VectorType(ir.IntType(64), 8), [_shift_matrix(k, mask) for k in shifts for _ in range(2)])
        affine = _intrinsic_fn(builder, "llvm.x86.vgf2p8affineqb.512", i8x64, [i8x64, i8x64, ir.IntType(8)])
        return builder.call(affine, [v, builder.bitcast(matrix, i8x64), ir.Constant(ir.IntType(8), 0)])
    words = builder.bitcast(v, i16x32)
    amounts = ir.Constant(i16x32, [abs(k) for k in shifts for _ in range(8)])
    shifted = builder.shl(words, amounts) if max(shifts) > 0 else builder.lshr(words, amounts)
    return builder.and_(builder.bitcast(shifted, i8x64), ir.Constant(i8x64, [mask] * 64))


@intrinsic
def split_nibbles(typingctx, v):
    """pick_pair's uint8 x 64 [x, x, y, y] -> [low nibbles of x, high nibbles of x, low of y,
    high of y]: a chunk pair's 4-bit weights in chunk order (see _shifted_by_quarters)."""
    if not (isinstance(v, Vector) and v.dtype == types.uint8 and v.lanes == 64):
        return None

    def codegen(context, builder, sig, args):
        return _shifted_by_quarters(builder, args[0], (0, -4, 0, -4), 15)

    return v(v), codegen


@intrinsic
def shift_bits(typingctx, v, first, second, mask):
    """uint8 x 64: each byte shifted by `first` bits in the first 32 bytes and by `second` in
    the last 32 (left; negative: right), then & mask (all compile-time constants; the mask
    keeps only bits that come from the same byte; see _shifted_by_quarters)."""
    a, b, m = _literal_int(first), _literal_int(second), _literal_int(mask)
    if not (isinstance(v, Vector) and v.dtype == types.uint8 and v.lanes == 64) or None in (a, b, m):
        return None
    if a * b < 0 or not all(0 <= i - s < 8 for s in (a, b) for i in range(8) if m >> i & 1):
        return None  # one word shift must serve both halves; every kept bit comes from its own byte

    def codegen(context, builder, sig, args):
        return _shifted_by_quarters(builder, args[0], (a, a, b, b), m)

    return v(v, first, second, mask), codegen


@intrinsic
def f16_lanes(typingctx, v, first, stride, lanes):
    """float32 x lanes: the IEEE halves at byte offsets first, first + stride, ... of a uint8
    vector v (all compile-time constants, offsets even): the scales of consecutive blocks
    picked from registers that hold a whole group (one word permute and one conversion)."""
    f, s, n = _literal_int(first), _literal_int(stride), _literal_int(lanes)
    if not (isinstance(v, Vector) and v.dtype == types.uint8 and v.lanes % 2 == 0) or None in (f, s, n):
        return None
    if f % 2 or s % 2 or n <= 0 or f + s * (n - 1) + 2 > v.lanes:
        return None
    vt = Vector(types.float32, n)

    def codegen(context, builder, sig, args):
        words = builder.bitcast(args[0], ir.VectorType(ir.IntType(16), v.lanes // 2))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), n), [(f + s * i) // 2 for i in range(n)])
        raw = builder.shuffle_vector(words, ir.Constant(words.type, ir.Undefined), mask)
        return _f32_of_f16_bits(builder, raw, n)

    return vt(v, first, stride, lanes), codegen


def _window_index(a_lanes: int, b_at: int, offset: int, width: int):
    """Where `width` lanes from byte `offset` of a group lie, given a window a at byte 0 and
    a window b at byte b_at: (0, offset) in a, else (1, offset - b_at) in b."""
    if offset + width <= a_lanes:
        return 0, offset
    return 1, offset - b_at


def _two_windows(builder, a, b):
    """b repeated to a's length (shufflevector wants one type; the copies are never picked)."""
    n, m = a.type.count, b.type.count
    if m == n:
        return b
    mask = ir.Constant(ir.VectorType(ir.IntType(32), n), [i % m for i in range(n)])
    return builder.shuffle_vector(b, ir.Constant(b.type, ir.Undefined), mask)


@intrinsic
def pick_pair2(typingctx, a, b, b_at, s0, s1):
    """pick_pair over two windows of a group: a (bytes 0..) and b (bytes b_at..), a run of
    16 bytes taken from a where it fits in a, else from b (all compile-time constants)."""
    at, x, y = _literal_int(b_at), _literal_int(s0), _literal_int(s1)
    if not (isinstance(a, Vector) and a.dtype == types.uint8 and isinstance(b, Vector) and b.dtype == types.uint8):
        return None
    if None in (at, x, y) or b.lanes > a.lanes:
        return None
    runs = [_window_index(a.lanes, at, s, 16) for s in (x, y)]
    if any(not (0 <= o and o + 16 <= (a.lanes if w == 0 else b.lanes)) for w, o in runs):
        return None
    vt = Vector(types.uint8, 64)

    def codegen(context, builder, sig, args):
        n = a.lanes
        order = []
        for w, o in (runs[0], runs[0], runs[1], runs[1]):
            order += [w * n + o + i for i in range(16)]
        mask = ir.Constant(ir.VectorType(ir.IntType(32), 64), order)
        return builder.shuffle_vector(args[0], _two_windows(builder, args[0], args[1]), mask)

    return vt(a, b, b_at, s0, s1), codegen


@intrinsic
def f16_pairs2(typingctx, a, b, b_at, first, stride, n):
    """float32 x 2n [h(first), h(first + 2), h(first + stride), h(first + stride + 2), ...]:
    the two adjacent halves at first + stride * i (i < n; a block's d and m, block after
    block) picked from two windows of a group, a (bytes 0..) and b (bytes b_at..), each
    half from a where it fits in a, else from b (all compile-time constants, offsets even)."""
    return _f16_picks(a, b, b_at, first, stride, n, 2)


def _f16_picks(a, b, b_at, first, stride, n_blocks, width):
    at, f, s, n = _literal_int(b_at), _literal_int(first), _literal_int(stride), _literal_int(n_blocks)
    if not (isinstance(a, Vector) and a.dtype == types.uint8 and isinstance(b, Vector) and b.dtype == types.uint8):
        return None
    if None in (at, f, s, n) or b.lanes > a.lanes or at % 2 or f % 2 or s % 2 or n <= 0:
        return None
    picks = [_window_index(a.lanes, at, f + s * i + 2 * h, 2) for i in range(n) for h in range(width)]
    if any(not (0 <= o and o + 2 <= (a.lanes if w == 0 else b.lanes)) for w, o in picks):
        return None
    vt = Vector(types.float32, n * width)

    def codegen(context, builder, sig, args):
        i16 = ir.IntType(16)
        # words first, then widened: a byte shuffle here becomes byte inserts
        wa = builder.bitcast(args[0], ir.VectorType(i16, a.lanes // 2))
        wb = _two_windows(builder, wa, builder.bitcast(args[1], ir.VectorType(i16, b.lanes // 2)))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), len(picks)), [w * (a.lanes // 2) + o // 2 for w, o in picks])
        return _f32_of_f16_bits(builder, builder.shuffle_vector(wa, wb, mask), len(picks))

    return vt(a, b, b_at, first, stride, n_blocks), codegen
