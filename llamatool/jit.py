"""Numba, configured once: the compiled-kernel cache lives in a user cache folder.

Import numba only through this module (`from .jit import njit, prange`), so that
the cache location is set before numba reads it and so that commands which need
no kernels (`--help`, `info`) never import numba at all.

Cache: $LLAMATOOL_CACHE_DIR, else $XDG_CACHE_HOME/llamatool, else ~/.cache/llamatool.
Kernels are compiled on first use and cached there (`llamatool warmup` compiles them
all ahead of time), so the JIT cost is paid once per machine, not once per run.
Numba's cache runs what it finds, so its folders are checked as llamatool.cache checks
its own (the user's, 0700); when refused, Numba caches in a private folder of this
process instead; an entry Numba cannot read back (a file cut short) is compiled again.
LLAMATOOL_NO_NATIVE=1 compiles for a portable CPU (llamatool.host).

Threads: `set_threads(n)` sets how many threads kernels use, both Numba's parallel
regions and `for_each_chunk`, which shares work between Python threads that run
nogil kernels: a thread takes the next chunk when it is done with one, so a thread
the OS has descheduled (the machine is shared) slows the call by one chunk at most
instead of holding back the half of the rows a static split would have given it.
"""

from __future__ import annotations

import atexit
import copy
import itertools
import os
import shutil
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path


from . import host
from .cache import cache_dir, private_folder, source_hash  # noqa: F401  (cache_dir re-exported: jit.cache_dir)


@lru_cache(maxsize=None)
def _scratch_cache() -> str:
    """A fresh private folder for Numba's cache in this process only, removed at exit: where
    Numba caches when the user's cache folder is refused (see llamatool.cache)."""
    path = tempfile.mkdtemp(prefix="llamatool-numba-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def numba_cache(*parts: str) -> str:
    """The checked folder cache_dir()/numba/parts... for Numba's cache, or the scratch folder."""
    folder = private_folder("numba", *parts)
    return str(folder) if folder is not None else _scratch_cache()


def _target_numba() -> None:
    """Point Numba at the portable CPU when forced (see llamatool.host); Numba reads these
    when it is imported (or, if something imported it first, when it makes its compiler),
    and keys its cache on them as well. A CPU the user chose for Numba is kept."""
    target = host.numba_target()
    if target is None or "NUMBA_CPU_NAME" in os.environ:
        return
    os.environ["NUMBA_CPU_NAME"], os.environ["NUMBA_CPU_FEATURES"] = target
    config = sys.modules.get("numba.core.config")
    if config is not None:
        config.CPU_NAME, config.CPU_FEATURES = target


_target_numba()
os.environ.setdefault("NUMBA_CACHE_DIR", numba_cache())

import llvmlite.binding as llvm  # noqa: E402  (loaded by numba anyway)
import numba  # noqa: E402
from numba import prange  # noqa: E402,F401


# --- Numba's module optimization ----------------------------------------------------------------

def _optimize_final_module(self):
    """Numba optimizes every library's linked module twice: a cheap pipeline that inlines
    reference-count operations into one function so a pruning pass can drop them, then the
    full one. Our kernels run without reference counting (_nrt=False): where a module calls no
    NRT function, the full pipeline alone runs. Warmup 89.9 vs 93.4 s (174 vs 181 CPU s), the
    same vector instructions, bench's pp and tg unchanged (default model, 1B Q4_0 and Q4_K_M)."""
    if any(f.name.startswith("NRT_") for f in self._final_module.functions):
        return _numba_optimize_final_module(self)
    mpm, mpb = self._codegen._module_pass_manager()
    mpm.run(self._final_module, mpb)


from numba.core import codegen as _codegen  # noqa: E402  (a private method: numba is pinned below 0.69)

_numba_optimize_final_module = _codegen.CPUCodeLibrary._optimize_final_module
_codegen.CPUCodeLibrary._optimize_final_module = _optimize_final_module


# --- Numba's inlining of inline="always" functions ------------------------------------------


class _BlockCopier:
    """Stands in for the `copy` module in numba.core.inline_closurecall, whose one use of it
    copies a callee's IR block by block before inlining it at a call site (twice per site).

    Each block's deepcopy began with an empty memo, so it copied the function's scope, and
    with it every variable of the function, once per block: quadratic in the callee's size,
    23% of the forward pass's compile time. Here the blocks of one copy (one scope, each block
    once) share a memo, so the scope is copied once; the inlined IR is the same (the saved
    kernels' machine code was compared instruction for instruction)."""

    def __init__(self):
        self._memo: dict = {}

    def deepcopy(self, block, memo=None):
        if memo is not None:  # a caller with a memo of its own gets copy.deepcopy as such
            return copy.deepcopy(block, memo)
        if id(block.scope) not in self._memo or id(block) in self._memo:
            self._memo = {}  # another function's blocks, or a new copy of the same ones
        return copy.deepcopy(block, self._memo)


from numba.core import inline_closurecall as _inline_closurecall  # noqa: E402

_inline_closurecall.copy = _BlockCopier()


# --- libraries of functions only compiled code calls -----------------------------------------


class _Library(_codegen.JITCodeLibrary):
    """Numba's JIT code library, which may be link-only: the library of a function without a
    Python entry (python_entry=False) is optimized and then linked into the libraries of its
    callers, which inline it, but gets no machine code of its own. Numba would emit it (~10%
    of the matmul kernels' compile time) only to leave it unused. Its callers now inline its
    optimized IR as such; before, they inlined what Numba's code generation had left of it
    (LLVM rewrites IR in place to select instructions), so their machine code changes a
    little, with the same results (the kernels' bit-exact tests) and speed (see README)."""

    link_only = False

    def _finalize_final_module(self):
        if not self.link_only:
            return super()._finalize_final_module()
        self._finalize_dynamic_globals()
        self._verify_declare_only_symbols()
        self._finalized = True

    def get_pointer_to_function(self, name):
        if not self.link_only:
            return super().get_pointer_to_function(name)
        self._ensure_finalized()
        return 0  # no machine code here (Numba's own answer for a function it lacks)

    def serialize_using_object_code(self):
        if not self.link_only:
            return super().serialize_using_object_code()
        return (self.name, _LINK_ONLY, self._get_module_for_linking().as_bitcode())

    @classmethod
    def _unserialize(cls, codegen, state):
        name, kind, bitcode = state
        if kind != _LINK_ONLY:
            return super()._unserialize(codegen, state)
        library = codegen.create_library(name)
        library.link_only = True
        library._final_module = library._shared_module = llvm.parse_bitcode(bitcode)
        library._finalize_final_module()
        return library


_LINK_ONLY = "llamatool-link-only"  # how a link-only library is cached: its IR for linking, as bitcode
_codegen.JITCPUCodegen._library_class = _Library
_numba_set_env = _codegen.JITCPUCodegen.set_env


def _set_env(self, env_name, env):
    """Numba's, except where the function has no machine code to point at the environment:
    a link-only library's functions (Numba would write through a null pointer)."""
    if self._engine.get_global_value_address(env_name):
        _numba_set_env(self, env_name, env)


_codegen.JITCPUCodegen.set_env = _set_env


# --- a damaged cache entry is a miss ------------------------------------------------------------
# Numba's cache files are pickles it reads without a guard: a file cut short (a full disk, a
# copy interrupted, a process killed where renames are not atomic) made every later use of
# that function end in an UnpicklingError traceback until the user found and deleted it.
# Here such an entry is not there: the function compiles again and its entry is rewritten.

from numba.core import caching as _caching  # noqa: E402  (private methods: numba is pinned below 0.69)

_numba_load_index = _caching.IndexDataCacheFile._load_index
_numba_load_overload = _caching.Cache._load_overload


def _load_index(self):
    """Numba's, with a damaged index read as an empty one (the next save writes a whole one)."""
    try:
        return _numba_load_index(self)
    except Exception:  # noqa: BLE001 - whatever unpickling a damaged file raises
        return {}


def _load_overload(self, sig, target_context):
    """Numba's, with a damaged entry (its data or the machine code in it) read as a miss."""
    try:
        return _numba_load_overload(self, sig, target_context)
    except Exception:  # noqa: BLE001 - whatever unpickling or rebuilding a damaged entry raises
        return None


_caching.IndexDataCacheFile._load_index = _load_index
_caching.Cache._load_overload = _load_overload


from numba.core import compiler as _compiler, compiler_machinery as _machinery, typed_passes as _typed_passes  # noqa: E402


@_machinery.register_pass(mutates_CFG=False, analysis_only=False)
class _LinkOnlyLibrary(_machinery.LoweringPass):
    """Gives the function being compiled a link-only library (see _Library)."""

    _name = "llamatool_link_only_library"

    def __init__(self):
        _machinery.LoweringPass.__init__(self)

    def run_pass(self, state):
        if state.library is None:  # as Numba's lowering would make it, marked link-only
            state.library = state.targetctx.codegen().create_library(state.func_id.func_qualname)
            state.library.enable_object_caching()
            state.library.link_only = True
        return True


class _CompiledOnlyPipeline(_compiler.CompilerBase):
    """Numba's nopython pipeline, lowering into a link-only library."""

    def define_pipelines(self):
        pipeline = _compiler.DefaultPassBuilder.define_nopython_pipeline(self.state)
        pipeline.add_pass_after(_LinkOnlyLibrary, _typed_passes.NopythonTypeInference)
        pipeline.finalize()
        return [pipeline]


def njit(*args, python_entry: bool | None = None, **options):
    """numba.njit without the C-callable wrapper Numba adds to every function for use as a
    first-class function value, which none of ours is: a forceinline helper's wrapper
    inlines its whole body once more, and the wrappers cost ~7% of warmup's compile time.

    A function only compiled code calls (python_entry=False; the default for forceinline
    helpers, which are compiled into their callers) gets no CPython entry either: Numba would
    lower, optimize and emit one (unboxing every argument) for each specialization, ~12% of
    the matmul kernels' compile time, while the kernels' machine code is the same instruction
    for instruction. Calling such a function from Python is a TypeError (_CompiledOnly).
    Nor does it get machine code of its own: its library is link-only (_Library).

    Numba also compiles a function once more for every literal argument (`f(x, 0)` and
    `f(x, 2)` are two specializations): a call passes `int64(0)` where the constant buys
    nothing (LLVM still sees it after inlining), and a literal where it was measured to help."""
    options.setdefault("no_cfunc_wrapper", True)
    if python_entry is None:
        python_entry = not options.get("forceinline")
    if python_entry:
        return numba.njit(*args, **options)
    options["no_cpython_wrapper"] = True
    options["pipeline_class"] = _CompiledOnlyPipeline
    decorate = numba.njit(**options)

    def compiled_only(fn):
        dispatcher = decorate(fn)
        dispatcher.__class__ = _CompiledOnly
        return dispatcher

    return compiled_only(args[0]) if args else compiled_only


class _CompiledOnly(numba.core.registry.CPUDispatcher):
    """A dispatcher without a CPython entry: callable from compiled code only."""

    def __call__(self, *args, **kwargs):
        raise TypeError(f"{self.py_func.__qualname__} is compiled into the kernels that call it and has no Python entry")


def set_threads(n: int | None) -> int:
    """Use n threads for parallel kernels (None or <= 0: all cores). Returns the count used.

    The count belongs to the calling thread (as Numba's does)."""
    limit = numba.config.NUMBA_NUM_THREADS
    n = limit if not n or n <= 0 else min(int(n), limit)
    numba.set_num_threads(n)
    return n


def threads() -> int:
    """The calling thread's kernel thread count (1 inside a for_each_chunk worker)."""
    return numba.get_num_threads()


# --- cache folders keyed on sources ---------------------------------------------------------


@contextmanager
def cache_keyed_on(folder: Path, name: str):
    """Within this context, njit(cache=True) caches into a folder named after a hash of
    folder's sources and the build's flavour (native or forced portable). Numba keys a cached
    kernel on its own file only, so a kernel that inlines helpers from a sibling module would
    otherwise run stale code after that module changed; and the portable build chooses other
    instructions from the same sources. Numba reads the folder when a function is decorated."""
    previous = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = numba_cache(_keyed_folder(Path(folder), name))
    try:
        yield
    finally:
        numba.config.CACHE_DIR = previous


@lru_cache(maxsize=None)
def _keyed_folder(folder: Path, name: str) -> str:
    return f"{name}-{host.cache_flavour()}-{source_hash(folder)}"


# --- compiling ------------------------------------------------------------------------------

# LLVM's loop vectorizer gives up on a loop when proving its index arithmetic safe takes
# more than 16 runtime checks ("Too many SCEV assumptions"); Numba's 2-D indexing with
# wraparound of negative indices needs more than that in the quantizers' block loops.
# A higher limit only lets it vectorize more loops (each still checked at run time).
_VECTORIZER_OPTIONS = {"vectorize-scev-check-threshold": ("128", "16")}


@contextmanager
def vectorizer_options():
    """Compile what runs inside this context with the vectorizer limits above (call a
    kernel in it to compile or load it). Numba's compiler lock is held meanwhile, since
    LLVM options are global to the process."""
    from numba.core.compiler_lock import global_compiler_lock

    with global_compiler_lock:
        for name, (value, _) in _VECTORIZER_OPTIONS.items():
            llvm.set_option("", f"-{name}={value}")
        try:
            yield
        finally:
            for name, (_, default) in _VECTORIZER_OPTIONS.items():
                llvm.set_option("", f"-{name}={default}")


# --- work sharing ---------------------------------------------------------------------------

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _single_threaded() -> None:
    numba.set_num_threads(1)  # a worker's kernels must not share their work again


def worker_pool() -> ThreadPoolExecutor:
    """The process's kernel worker threads (their own kernel thread count is 1)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=numba.config.NUMBA_NUM_THREADS, thread_name_prefix="llamatool-kernel", initializer=_single_threaded
            )
        return _pool


def for_each_chunk(fn, n_items: int, chunk: int) -> None:
    """Call fn(start, stop) for consecutive chunks of range(n_items), on the calling thread
    and up to threads() - 1 pool workers; each takes the next chunk when it is ready.

    fn must release the GIL for its work (a nogil kernel). Returns when every chunk is
    done; a worker that had not started by then is cancelled rather than waited for.
    """
    chunk = max(1, int(chunk))
    n_chunks = -(-n_items // chunk)
    helpers = min(threads(), n_chunks) - 1
    if helpers <= 0:
        if n_items > 0:
            fn(0, n_items)
        return
    claims = itertools.count()  # next() on it is atomic (it runs under the GIL)

    def work() -> None:
        while (i := next(claims)) < n_chunks:
            fn(i * chunk, min(n_items, (i + 1) * chunk))

    pool = worker_pool()
    futures = [pool.submit(work) for _ in range(helpers)]
    try:
        work()
    finally:
        for f in futures:
            if not f.cancel():
                f.result()
