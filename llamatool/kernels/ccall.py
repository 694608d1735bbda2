"""Calling compiled kernels through C function pointers.

Numba links every function a kernel calls into the kernel and optimizes the result again,
so a forward pass that called the matmul kernels of all fifteen weight types directly would
compile (and re-optimize) all of them, even for a model that has two types. Instead each
kernel gets a C entry point (a Numba cfunc, compiled and cached on its own, on first use),
and the forward pass calls it through its address: a table lookup and an indirect call.

The C convention is mechanical: an array argument is passed as (data pointer, length), an
integer as int64. `c_signature` gives the cfunc signature for a list of argument kinds and
`call_c` makes the matching call from compiled code.
"""

from __future__ import annotations

import numpy as np

from llamatool import jit  # noqa: F401  (sets the Numba cache dir before numba is used)

from llvmlite import ir  # noqa: E402
from numba.core import types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402
from numba.np.numpy_support import from_dtype  # noqa: E402


def c_signature(kinds):
    """The cfunc signature for argument kinds: a numpy dtype (an array of it) or int."""
    args = []
    for kind in kinds:
        if kind is int:
            args.append(types.int64)
        else:
            args += [types.CPointer(from_dtype(np.dtype(kind))), types.int64]
    return types.void(*args)


@intrinsic
def call_c(typingctx, address, args):
    """Call the C function at `address` (int64) with the values of the tuple `args`, each
    array expanded to (data pointer, length) and each integer widened to int64."""
    if not isinstance(address, types.Integer) or not isinstance(args, types.BaseTuple):
        return None
    for t in args:
        if not (isinstance(t, types.Integer) or (isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C")):
            return None

    def codegen(context, builder, sig, llargs):
        values, params = [], []
        for i, t in enumerate(sig.args[1]):
            v = builder.extract_value(llargs[1], i)
            if isinstance(t, types.Array):
                ary = context.make_array(t)(context, builder, v)
                values += [ary.data, builder.extract_value(ary.shape, 0)]
                params += [ary.data.type, ir.IntType(64)]
            else:
                values.append(context.cast(builder, v, t, types.int64))
                params.append(ir.IntType(64))
        fnty = ir.FunctionType(ir.VoidType(), params)
        fn = builder.inttoptr(context.cast(builder, llargs[0], sig.args[0], types.int64), fnty.as_pointer())
        builder.call(fn, values)
        return context.get_dummy_value()

    return types.none(address, args), codegen
