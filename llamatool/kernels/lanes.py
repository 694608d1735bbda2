"""Lane rearrangements with compile-time patterns, beyond simd.py's.

    repeat_slice(v, start, count, times)   [v[start] x times, ..., v[start+count-1] x times]

One shuffle with a constant mask (a vpermps / vpermd): how a super-block's per-sub-block
scales, decoded once as one vector, are spread over the lanes of each chunk pair's dot
product (see blocks.py's super-block decoders).
"""

from __future__ import annotations

from .simd import Vector

from llvmlite import ir  # noqa: E402
from numba.core import types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402


def _literal(t) -> int | None:
    return int(t.literal_value) if isinstance(t, types.IntegerLiteral) else None


@intrinsic
def repeat_slice(typingctx, v, start, count, times):
    """Lanes start..start+count-1 of v, each `times` times in a row (count * times lanes);
    start, count and times are compile-time constants."""
    s, n, r = _literal(start), _literal(count), _literal(times)
    if not isinstance(v, Vector) or None in (s, n, r) or n <= 0 or r <= 0 or s < 0 or s + n > v.lanes:
        return None
    vt = Vector(v.dtype, n * r)

    def codegen(context, builder, sig, args):
        mask = ir.Constant(ir.VectorType(ir.IntType(32), n * r), [s + i // r for i in range(n * r)])
        return builder.shuffle_vector(args[0], ir.Constant(args[0].type, ir.Undefined), mask)

    return vt(v, start, count, times), codegen


def _reinterpreter(target):
    @intrinsic
    def _cast(typingctx, v):
        if not isinstance(v, Vector) or (v.dtype.bitwidth * v.lanes) % target.bitwidth:
            return None
        vt = Vector(target, v.dtype.bitwidth * v.lanes // target.bitwidth)

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], context.get_value_type(vt))

        return vt(v), codegen

    return _cast


#: the same bits as other lanes: 64 bytes as 8 uint64 (for shifts that differ per 8-byte lane
#: where bytes would need a shift each), and back
as_u64_lanes = _reinterpreter(types.uint64)
as_u8_lanes = _reinterpreter(types.uint8)
