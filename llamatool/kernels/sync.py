"""Work sharing between the threads of one forward pass, without locks or a fixed split.

The forward pass runs as ONE parallel region: every thread executes the same sequence of
phases (norm, projections, attention, ...). Within a phase, work is cut into chunks that
threads claim with an atomic counter; a thread that runs out of chunks waits until the
phase's done-counter says every chunk is finished, then moves on. As in ggml's CPU backend
this costs a few hundred nanoseconds per phase instead of a thread-pool launch, and because
any thread can finish any chunk, a thread the OS has descheduled (or one that never
started) only slows the pass down, it never deadlocks it.

Counters live in one int64 array, zeroed before each pass: phase p uses slots
p*STRIDE (next chunk to claim) and p*STRIDE + STRIDE//2 (chunks done), each on its own
cache line so threads claiming chunks do not slow down threads reporting them done.
"""

from __future__ import annotations

from llamatool import jit  # noqa: F401  (sets the Numba cache dir before numba is used)

from llvmlite import ir  # noqa: E402
from numba.core import cgutils, types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from .simd import _IS_X86  # noqa: E402

STRIDE = 16  # int64 slots per phase: two 64-byte cache lines


def counters_size(n_phases: int) -> int:
    return n_phases * STRIDE


def _slot_ptr(context, builder, aryty, ary, index):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.gep(data, [index])


@intrinsic
def atomic_add(typingctx, arr, index, value):
    """arr[index] += value atomically (sequentially consistent); returns the old value."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _slot_ptr(context, builder, sig.args[0], args[0], args[1])
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, v, "seq_cst")

    return types.int64(arr, index, value), codegen


@intrinsic
def atomic_load(typingctx, arr, index):
    """arr[index] read atomically with acquire ordering (sees every write made before the
    atomic_add that published it)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _slot_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(arr, index), codegen


@intrinsic
def cpu_relax(typingctx):
    """A spin-wait hint (x86 `pause`): lets the sibling hyperthread run, saves power."""

    def codegen(context, builder, sig, args):
        if _IS_X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def sched_yield(typingctx):
    """Give the CPU away (libc sched_yield): used when a wait is long, e.g. when the machine
    is busier than our thread count assumes."""

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.none(), codegen


from llamatool.jit import njit  # noqa: E402

SPINS_BEFORE_YIELD = 200  # ~20 us of `pause`: a phase boundary is usually far shorter


@njit(cache=True, _nrt=False, forceinline=True)
def claim(counters, phase):
    """The next unclaimed chunk index of `phase` (>= the chunk count when none is left)."""
    return atomic_add(counters, phase * STRIDE, 1)


@njit(cache=True, _nrt=False, forceinline=True)
def finish(counters, phase, n_done):
    """Report n_done chunks of `phase` done by this thread (publishes everything it wrote for
    them): once per thread and phase, so the threads contend once for the counter."""
    if n_done:
        atomic_add(counters, phase * STRIDE + STRIDE // 2, n_done)


@njit(cache=True, _nrt=False)
def wait(counters, phase, n_chunks):
    """Return once all n_chunks chunks of `phase` are done: spin briefly, then yield."""
    spins = 0
    while atomic_load(counters, phase * STRIDE + STRIDE // 2) < n_chunks:
        spins += 1
        if spins < SPINS_BEFORE_YIELD:
            cpu_relax()
        else:
            sched_yield()
