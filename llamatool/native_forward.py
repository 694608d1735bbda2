"""The forward pass as saved machine code: a warm `run` without importing Numba.

Loading `forward_worker` (llamatool/kernels/forward.py) from Numba's cache needs Numba:
importing it and loading the worker take about 0.6 s, more than half of a warm start. So,
as quants/native.py does for the quantizers and the matmul entry points, the worker is
kept a second way: the first run wraps it in a C function (a Numba cfunc) and saves that
function's machine code in the cache folder; later runs load it with llamatool.elf_loader
(neither Numba nor LLVM) and call it through ctypes, which releases the GIL, so the
driver's threads still run the worker in parallel. The cfunc inlines the worker's source in
Numba's IR (same types, same options; linking the compiled worker instead would optimize
and compile its whole body a second time), and the tests check that both give the same
logits bit for bit. Where the code can be saved, it is built before the first call, so a
cold cache compiles the pass once, not once for Numba and once more for the C function.

The C function takes flat tables instead of the worker's arguments (namedtuples of
arrays, ints and floats):

    entry(ith, P, I, F)    P: void*[]  data pointer of every array, in argument order
                           I: int64[]  every integer, and the shape of every array
                           F: double[] every float

and rebuilds the arguments inside (carray for arrays), so the worker runs on the same
types as under Numba. The wrapper is generated from the arguments themselves: their
`layout` (namedtuple fields, array dtypes and dimensions, scalar types) names the saved
object, so a field added to Scratch makes a new object and never a misread table.

The driver (`Forward`) and the namedtuples come from kernels/forward.py's plain-Python
part (llamatool.kernel_api); `ForwardWorker` is the worker it calls. Where the machine
code is missing, damaged or cannot be built, the worker runs through Numba as before.
LLAMATOOL_FORWARD=numba (or native) chooses one way. Saved code is off by design off
x86-64 Linux and under LLAMATOOL_NO_NATIVE (llamatool.host): there the worker always runs
through Numba, and nothing is built to be saved.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
import weakref
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import host, kernel_api
from .cache import source_hash, write_private
from .errors import LlamatoolError

BACKEND_ENV = "LLAMATOOL_FORWARD"
BACKENDS = ("auto", "native", "numba")
_SOURCE = Path(__file__).resolve()
_PROTOTYPE = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


# --- the layout of the arguments ------------------------------------------------------------


def layout(value) -> tuple:
    """How a value travels through the tables: ("array", dtype, ndim, readonly),
    ("int", dtype), ("float", dtype), ("bool",) or ("tuple", class name, fields, items)."""
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.ndim, not value.flags.writeable)
    if isinstance(value, tuple):
        fields = getattr(value, "_fields", None)
        name = type(value).__name__ if fields is not None else None
        return ("tuple", name, fields, tuple(layout(v) for v in value))
    if isinstance(value, (bool, np.bool_)):
        return ("bool",)
    if isinstance(value, (int, np.integer)):
        return ("int", np.dtype(type(value) if isinstance(value, np.integer) else np.int64).str)
    if isinstance(value, (float, np.floating)):
        return ("float", np.dtype(type(value) if isinstance(value, np.floating) else np.float64).str)
    raise LlamatoolError(f"internal error: the forward pass cannot take a {type(value).__name__}")


def _key(spec: tuple) -> str:
    """The saved object's name: this module's source (the wrapper) and the layout."""
    h = hashlib.sha256(source_hash(_SOURCE).encode())
    h.update(repr(spec).encode())
    return f"forward-{h.hexdigest()[:16]}"


def _flatten(value, spec, ptrs: list, ints: list, floats: list) -> None:
    """Append value (of layout spec) to the tables; refuse anything else."""
    kind = spec[0]
    if kind == "array":
        if not (isinstance(value, np.ndarray) and value.dtype.str == spec[1] and value.ndim == spec[2]
                and value.flags.c_contiguous and value.flags.writeable != spec[3]):
            raise LlamatoolError(f"internal error: the forward pass takes C-contiguous {spec[1]} arrays of {spec[2]} dimensions")
        ptrs.append(value.ctypes.data)
        ints.extend(value.shape)
    elif kind == "tuple":
        if not isinstance(value, tuple) or len(value) != len(spec[3]):
            raise LlamatoolError(f"internal error: the forward pass takes a {spec[1] or 'tuple'} of {len(spec[3])}")
        for v, s in zip(value, spec[3]):
            _flatten(v, s, ptrs, ints, floats)
    elif kind == "float":
        floats.append(float(value))
    else:
        ints.append(int(value))


# --- loading (no numba) -------------------------------------------------------------------------


class _NativeWorker:
    """The saved worker, called as worker(ith, args) with args of one layout.

    Flattening the arguments costs far more than a call (an array's address alone takes
    microseconds to read), and from call to call almost all of them are the same objects:
    each argument's part of the tables is kept while the argument is, and the tables while
    all of them are (the threads of one forward call share them). Arrays are remembered by
    weak reference, so a caller's logits or tokens are never kept alive here."""

    def __init__(self, address: int, spec: tuple):
        from .quants import native

        self._fn = _PROTOTYPE(address)
        self._spec = spec
        self._failed = native._engine().failed
        self._parts: list = [None] * len(spec[3])  # per argument: (reference, ptrs, ints, floats)
        self._tables = None  # (references to args, addresses of P, I, F, the arrays behind them)

    def _flat(self, args) -> tuple:
        ptrs, ints, floats = [], [], []
        for i, (value, spec) in enumerate(zip(args, self._spec[3])):
            part = self._parts[i]
            if part is None or not _same(part[0], value):
                part = (_reference(value), [], [], [])
                _flatten(value, spec, *part[1:])
                self._parts[i] = part
            ptrs += part[1]
            ints += part[2]
            floats += part[3]
        arrays = (np.array(ptrs or [0], np.uint64), np.array(ints or [0], np.int64), np.array(floats or [0.0], np.float64))
        return (tuple(_reference(a) for a in args), *(a.ctypes.data for a in arrays), arrays)

    def __call__(self, ith, args) -> None:
        tables = self._tables
        if tables is None or len(args) != len(tables[0]) or not all(_same(r, a) for r, a in zip(tables[0], args)):
            if len(args) != len(self._spec[3]):
                raise LlamatoolError(f"internal error: the forward pass takes {len(self._spec[3])} arguments")
            tables = self._tables = self._flat(args)
        self._fn(int(ith), tables[1], tables[2], tables[3])
        if self._failed.value:
            raise LlamatoolError("internal error: the forward pass failed")


def _reference(value):
    """A weak reference to an array; other values (the model's namedtuples, scalars) as they are."""
    return weakref.ref(value) if isinstance(value, np.ndarray) else value


def _same(reference, value) -> bool:
    return (reference() if isinstance(reference, weakref.ref) else reference) is value


_loaded: dict[str, int] = {}  # key -> address: an object is added to the process's engine once


def _load(spec: tuple) -> _NativeWorker | None:
    from .quants import native

    key = _key(spec)
    if key not in _loaded:
        addresses = native.cached_addresses(kernel_api.KERNELS, [key])
        if addresses is None:
            return None
        _loaded[key] = addresses[0]
    return _NativeWorker(_loaded[key], spec)


# --- building (numba) ---------------------------------------------------------------------------


def _real(value, classes: dict):
    """value with the namedtuples of kernel_api's modules replaced by the compiled modules' own."""
    if isinstance(value, tuple):
        items = [_real(v, classes) for v in value]
        fields = getattr(value, "_fields", None)
        if fields is None:
            return tuple(items)
        cls = classes.get((type(value).__name__, fields))
        if cls is None:
            raise LlamatoolError(f"internal error: no compiled namedtuple {type(value).__name__}{fields}")
        return cls(*items)
    return value


@lru_cache(maxsize=None)
def _compiled_classes() -> dict:
    """{(name, fields): namedtuple class} of every module of the kernels package."""
    import sys

    from . import kernels  # noqa: F401  (imports every kernel module)

    classes = {}
    # a copy taken in one step: another worker thread may be importing (and so adding to
    # sys.modules) while this one looks, and iterating the live dict then raises
    for name, module in sys.modules.copy().items():
        if name.startswith("llamatool.kernels."):
            for value in vars(module).values():
                if isinstance(value, type) and issubclass(value, tuple) and hasattr(value, "_fields"):
                    classes[(value.__name__, value._fields)] = value
    return classes


def _entry_source(spec: tuple, template) -> tuple[str, dict]:
    """Source of entry(ith, P, I, F) calling forward_worker(ith, *args) with args rebuilt
    from the tables, and the globals it needs."""
    names: dict = {}
    count = {"p": 0, "i": 0, "f": 0}

    def take(table: str) -> int:
        count[table] += 1
        return count[table] - 1

    def name_of(obj) -> str:
        key = f"_g{len(names)}"
        names[key] = obj
        return key

    def expr(s, value) -> str:
        kind = s[0]
        if kind == "array":
            p = take("p")
            shape = "".join(f"I[{take('i')}], " for _ in range(s[2]))
            a = f"carray(P[{p}], ({shape}), {name_of(np.dtype(s[1]).type)})"
            return f"_readonly({a})" if s[3] else a
        if kind == "tuple":
            items = ", ".join(expr(c, v) for c, v in zip(s[3], value))
            return f"{name_of(type(value))}({items})" if s[1] is not None else f"({items}{',' if len(value) == 1 else ''})"
        if kind == "bool":
            return f"I[{take('i')}] != 0"
        if kind == "int":
            return f"{name_of(np.dtype(s[1]).type)}(I[{take('i')}])"
        return f"{name_of(np.dtype(s[1]).type)}(F[{take('f')}])"

    args = "".join(f", {expr(s, v)}" for s, v in zip(spec[3], template))
    return f"def entry(ith, P, I, F):\n    forward_worker(ith{args})\n", names


@lru_cache(maxsize=None)
def _readonly():
    """An intrinsic viewing an array as read-only (the type Numba gives a read-only mmap)."""
    from numba.core import types
    from numba.core.imputils import impl_ret_borrowed
    from numba.extending import intrinsic

    @intrinsic
    def readonly(typingctx, arr):
        if not isinstance(arr, types.Array):
            return None

        def codegen(context, builder, sig, args):
            return impl_ret_borrowed(context, builder, sig.return_type, args[0])

        return arr.copy(readonly=True)(arr), codegen

    return readonly


def build(args) -> bool:
    """Compile the C wrapper of forward_worker for arguments like args and save its machine
    code; False when it cannot be (Numba then keeps running the worker). Building takes
    seconds, so a failure is noted in the cache folder and not tried again for this key
    (the key changes with the kernels, this module, Numba and the CPU), nor is a build tried
    where nothing can be saved."""
    from .quants import native

    spec = layout(args)
    key = _key(spec)
    folder = native._private(kernel_api.KERNELS)  # None: saved code is off here, or the cache refused
    if folder is None or not os.access(folder, os.W_OK):
        return False
    failed = folder / f"{key}.failed"
    if failed.exists():
        return False
    try:
        saved = native.save_cfunc(kernel_api.KERNELS, key, _compile(spec, args))
        reason = "the machine code could not be saved (see quants/native.py save_cfunc)"
    except Exception as e:  # noqa: BLE001 - Numba internals moved: Numba runs the worker
        saved, reason = False, f"{type(e).__name__}: {e}"
    if not saved:
        write_private(failed, (reason + "\n").encode())
    return saved


def forget_failures() -> None:
    """Let the next build try again where one failed (`llamatool warmup` does this)."""
    from .quants import native

    for marker in native._folder(kernel_api.KERNELS).glob("forward-*.failed"):
        marker.unlink(missing_ok=True)


def _compile(spec: tuple, args):
    """The cfunc entry(ith, P, I, F) around forward_worker for arguments of layout spec."""
    from numba import carray, cfunc, types

    from . import jit
    from .kernels import forward

    source, names = _entry_source(spec, _real(args, _compiled_classes()))
    inlined = jit.njit(_nrt=False, inline="always")(forward.forward_worker.py_func)
    scope = {"forward_worker": inlined, "carray": carray, "_readonly": _readonly(), **names}
    exec(source, scope)  # noqa: S102 - generated above from the layout
    sig = types.void(types.int64, types.CPointer(types.voidptr), types.CPointer(types.int64), types.CPointer(types.float64))
    return cfunc(sig, nogil=True)(scope["entry"])  # not cached by Numba: its machine code is saved instead


# --- the worker the driver calls ----------------------------------------------------------------


def _numba_worker(ith, args) -> None:
    from .kernels import forward

    forward.forward_worker(ith, *_real(args, _compiled_classes()))


class ForwardWorker:
    """forward_worker(ith, *args) as kernels/forward.py's driver calls it: the saved machine
    code for these arguments (built and saved at the first call if it is missing), else
    Numba's worker (where saved code is off, or it could not be built)."""

    def __init__(self, backend: str | None = None):
        backend = backend or os.environ.get(BACKEND_ENV) or "auto"
        if backend not in BACKENDS:
            raise LlamatoolError(f"{BACKEND_ENV} must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.requested = backend
        self.backend: str | None = None  # "native" or "numba", once the first call chose
        self.key: str | None = None  # the name of the saved machine code for these arguments
        self._worker = None
        self._lock = threading.Lock()

    @property
    def saved(self) -> bool:
        """Whether machine code for the arguments of the first call is saved (for the next process)."""
        from .quants import native

        return self.key is not None and (native._folder(kernel_api.KERNELS) / f"{self.key}.o").exists()

    def __call__(self, ith, *args) -> None:
        worker = self._worker or self._choose(args)
        worker(ith, args)

    def _choose(self, args):
        with self._lock:
            if self._worker is None:
                spec = layout(args)
                self.key = _key(spec)
                if self.requested != "numba":
                    from .precompile import wait_forward

                    wait_forward()  # started by kernel_tables on a cold cache
                native = None if self.requested == "numba" else _load(spec)
                if native is None and self.requested == "auto" and build(args):
                    native = _load(spec)
                if native is None and self.requested == "native":
                    if not host.saved_code():
                        raise LlamatoolError(f"{BACKEND_ENV}=native: saved machine code is off here (x86-64 Linux only, and not under {host.NO_NATIVE_ENV})")
                    raise LlamatoolError("the forward pass has no saved machine code (run `llamatool warmup`)")
                self.backend = "numba" if native is None else "native"
                self._worker = native or _numba_worker
            return self._worker


def driver(backend: str | None = None):
    """kernels/forward.py's plain-Python part (Net, Dims, FloatParams, Scratch, Forward, ...)
    with its Forward driving a ForwardWorker (as `.worker`)."""
    worker = ForwardWorker(backend)
    module = kernel_api.load("forward", forward_worker=worker)
    module.worker = worker
    return module


# --- the matmul entry points --------------------------------------------------------------------


# The names kernels.matmul saves its entry points under (_c_kernels, packer_address,
# _c_packed), for loading them here without importing it (it needs Numba).
def _kernel_keys(qtype: int) -> list[str]:
    return [f"rows_{qtype}", f"dequant_{qtype}"]


def _packer_keys(qtype: int) -> list[str]:
    return [f"pack_{qtype}"]


def _packed_keys(kind: int, amx: bool) -> list[str]:
    return [kernel_api.load("gemm").packed_entry(kind, amx)]


def compile_missing(matrix_types, pack_types=(), packed_kinds=()) -> None:
    """On a cold cache, compile what a model will load (the kernels of its matrix types, the
    packers and packed products of a repacked one) and the forward pass in worker processes
    (precompile.compile_apart), so the compiler's memory leaves with them; the functions
    below then find it all saved."""
    from .precompile import compile_apart, forward_saved
    from .quants import native

    amx = host.amx_int8()
    wanted = {**{f"rows:{t}": _kernel_keys(t) for t in sorted(matrix_types)},
              **{f"pack:{t}": _packer_keys(t) for t in sorted(pack_types)},
              **{f"packed:{k}": _packed_keys(k, amx) for k in sorted(packed_kinds)}}
    jobs = [job for job, keys in wanted.items() if not native.is_saved(kernel_api.KERNELS, keys)]
    if jobs and not forward_saved() and os.environ.get(BACKEND_ENV) != "numba":
        jobs.append("forward")
    compile_apart(jobs)


def kernel_tables(qtypes) -> tuple[np.ndarray, np.ndarray]:
    """kernels.matmul.kernel_tables(qtypes), from saved machine code when all of it is
    there (no Numba), else from kernels.matmul (which compiles what is missing, while the
    forward pass, if it has no machine code yet either, compiles in a background process:
    llamatool.precompile)."""
    from .quants import native

    supported = kernel_api.load("types").SUPPORTED
    rows = np.zeros(max(supported) + 1, np.int64)
    dequant = np.zeros_like(rows)
    for t in sorted({int(t) for t in qtypes}):
        addresses = native.cached_addresses(kernel_api.KERNELS, _kernel_keys(t))
        if addresses is None:  # a cold cache: the forward pass compiles meanwhile on another core
            from .kernels.matmul import kernel_tables as compiled_tables
            from .precompile import start_forward

            start_forward()
            return compiled_tables(qtypes)
        rows[t], dequant[t] = addresses
    return rows, dequant


def packed_table(kinds) -> np.ndarray:
    """kernels.matmul.packed_table(kinds), from saved machine code when it is all there (no Numba)."""
    from .quants import native

    gemm = kernel_api.load("gemm")
    table = np.zeros(gemm.N_PACKED_KINDS, np.int64)
    amx = host.amx_int8()
    for kind in sorted({int(k) for k in kinds}):
        found = native.cached_addresses(kernel_api.KERNELS, _packed_keys(kind, amx))
        if found is None:
            from .kernels.matmul import packed_table as compiled_table

            return compiled_table(kinds)
        table[kind] = found[0]
    return table


_PACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, *[ctypes.c_int64] * 6, ctypes.c_void_p, ctypes.c_int64)


def panel_packer(qtype: int):
    """pack(W, w_off, row_bytes, K, n_rows, p0, p1, out): kernels.gemm.pack_panels for a
    type (out: uint32), from saved machine code when there is some (no Numba)."""
    from .quants import native

    found = native.cached_addresses(kernel_api.KERNELS, _packer_keys(qtype))
    if found is None:
        from .kernels.matmul import packer_address

        found = [packer_address(qtype)]
    fn = _PACK(found[0])

    def pack(W, w_off, row_bytes, K, n_rows, p0, p1, out):
        fn(W.ctypes.data, W.size, w_off, row_bytes, K, n_rows, p0, p1, out.ctypes.data, out.size)

    return pack
