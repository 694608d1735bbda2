"""Row kernels as machine code that loads without Numba: what `llamatool quantize` runs.

Numba's cache keeps compiled kernels across runs, but loading one still needs Numba:
importing it and setting up its compiler before the first cached kernel runs takes about
half a second, as long as llama-quantize takes for the whole default model. So the
kernels a quantize run needs are kept a second way too. The first run builds a C entry
point for each (a Numba cfunc around the cached kernel, compiled under the same
vectorizer options) and saves its object code in the cache folder; later runs load that
object with llamatool.elf_loader (a few milliseconds, neither Numba nor LLVM) and call
it through ctypes, which releases the GIL. It is the same machine code Numba runs, so the
bytes are the same; the cache is keyed on this package's sources, the Numba and llvmlite
versions and the host CPU. Where any of that fails, the kernels run through Numba.

Only on x86-64 Linux (elf_loader reads x86-64 ELF objects) and not under
LLAMATOOL_NO_NATIVE (llamatool.host decides): elsewhere nothing is built or loaded here, and
Numba's own cache keeps the kernels. The cache folder and every object are checked before
use (llamatool.cache: the user's own, nobody else can write them).

A row kernel is serial: kernel(src, dst) on C-contiguous 2-D arrays (rows of float32 and
rows of blocks); callers share rows between their own threads.

The object code leaves a few symbols to the loader: Python's C API and libm (found in the
process), and Numba's runtime, of which the kernels use only allocation (scratch arrays)
and, on an error path no kernel takes, exception reporting. _RUNTIME_IR implements those.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import host
from ..cache import cache_dir, private_folder, read_trusted, source_hash, write_private
from ..errors import LlamatoolError
from .registry import ggml_type

_PACKAGE = Path(__file__).resolve().parent

# Numba's NRT_MemInfo (refct, dtor, dtor_info, data, size, external_allocator): kernels
# read `data` at offset 24 and decrement `refct` at 0 themselves. A kernel error would
# report itself under the GIL (numba_gil_ensure): that sets llamatool_kernel_failed.
_RUNTIME_IR = r"""
declare ptr @malloc(i64)
declare void @free(ptr)
declare i32 @PyGILState_Ensure()
declare void @PyGILState_Release(i32)

@llamatool_kernel_failed = global i32 0

define ptr @NRT_MemInfo_alloc_aligned(i64 %size, i32 %align) {
entry:
  %a32 = icmp eq i32 %align, 0
  %a1 = select i1 %a32, i32 1, i32 %align
  %a = zext i32 %a1 to i64
  %t0 = add i64 %size, 48
  %total = add i64 %t0, %a
  %mi = call ptr @malloc(i64 %total)
  %null = icmp eq ptr %mi, null
  br i1 %null, label %fail, label %ok
fail:
  ret ptr null
ok:
  %base = ptrtoint ptr %mi to i64
  %start = add i64 %base, 48
  %am1 = sub i64 %a, 1
  %up = add i64 %start, %am1
  %mask = sub i64 0, %a
  %aligned = and i64 %up, %mask
  %data = inttoptr i64 %aligned to ptr
  store i64 1, ptr %mi
  %f1 = getelementptr i8, ptr %mi, i64 8
  store ptr null, ptr %f1
  %f2 = getelementptr i8, ptr %mi, i64 16
  store ptr null, ptr %f2
  %f3 = getelementptr i8, ptr %mi, i64 24
  store ptr %data, ptr %f3
  %f4 = getelementptr i8, ptr %mi, i64 32
  store i64 %size, ptr %f4
  %f5 = getelementptr i8, ptr %mi, i64 40
  store ptr null, ptr %f5
  ret ptr %mi
}

define ptr @NRT_MemInfo_alloc(i64 %size) {
  %mi = call ptr @NRT_MemInfo_alloc_aligned(i64 %size, i32 0)
  ret ptr %mi
}

define ptr @NRT_Allocate(i64 %size) {
  %p = call ptr @malloc(i64 %size)
  ret ptr %p
}

define void @NRT_MemInfo_call_dtor(ptr %mi) {
  call void @free(ptr %mi)
  ret void
}

define void @NRT_Free(ptr %p) {
  call void @free(ptr %p)
  ret void
}

define void @numba_gil_ensure(ptr %state) {
  store i32 1, ptr @llamatool_kernel_failed
  %s = call i32 @PyGILState_Ensure()
  store i32 %s, ptr %state
  ret void
}

define void @numba_gil_release(ptr %state) {
  %s = load i32, ptr %state
  call void @PyGILState_Release(i32 %s)
  ret void
}

define ptr @numba_unpickle(ptr %data, i32 %n, ptr %hash) {
  ret ptr null
}

define ptr @numba_runtime_build_excinfo_struct(ptr %a, ptr %b) {
  ret ptr null
}

define void @numba_do_raise(ptr %exc) {
  ret void
}
"""
_RUNTIME_SYMBOLS = {
    "NRT_MemInfo_alloc_aligned",
    "NRT_MemInfo_alloc",
    "NRT_Allocate",
    "NRT_MemInfo_call_dtor",
    "NRT_Free",
    "numba_gil_ensure",
    "numba_gil_release",
    "numba_unpickle",
    "numba_runtime_build_excinfo_struct",
    "numba_do_raise",
}

NONFINITE = "count_nonfinite"  # the key of floats._count_nonfinite
_RUNTIME_KEY = "runtime-" + hashlib.sha256(_RUNTIME_IR.encode()).hexdigest()[:16]  # _RUNTIME_IR's object code
_PROTOTYPES = (  # [key == NONFINITE]: row kernels, the counter
    ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64),
    ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64),
)


# --- the cache folder ---------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _folder_name(package: Path) -> str:
    """Named after everything the object code depends on: the sources of the package that
    defines the kernels, Numba, llvmlite and the host CPU."""
    h = hashlib.sha256(source_hash(package).encode())
    h.update(_toolchain_and_host())
    return f"{package.name}-{h.hexdigest()[:16]}"


def _folder(package: Path = _PACKAGE) -> Path:
    """Where a package's objects are saved (unchecked: see _private)."""
    return cache_dir() / "native" / _folder_name(package)


def _private(package: Path = _PACKAGE) -> Path | None:
    """The package's object folder, made and checked (the user's own, nobody else can write
    it), or None where saved code is off, the folder is refused, or this process could not
    make its loader (then building objects would only cost time)."""
    if not host.saved_code() or _engine_made == [None]:
        return None
    return private_folder("native", _folder_name(package))


@lru_cache(maxsize=None)
def _toolchain_and_host() -> bytes:
    """The Numba and llvmlite versions and the host CPU, read without importing either
    (importing llvmlite alone costs 25 ms of a warm start)."""
    import importlib.util

    parts = []
    for name in ("numba", "llvmlite"):
        spec = importlib.util.find_spec(name)
        parts.append(Path(spec.origin).with_name("_version.py").read_bytes() if spec and spec.origin else b"-")
    return b"\0".join(parts) + _host_cpu()


def _host_cpu() -> bytes:
    """What LLVM compiles for on this machine: the CPU's identity and feature flags (Linux's
    /proc/cpuinfo, first processor), or LLVM's own answer where that file is missing."""
    fields = host.cpuinfo()
    keys = ("vendor_id", "cpu family", "model", "stepping", "flags")
    if all(k in fields for k in keys):
        return "|".join(fields[k] for k in keys).encode()
    import llvmlite.binding as llvm

    return f"{llvm.get_process_triple()} {llvm.get_host_cpu_name()} {llvm.get_host_cpu_features().flatten()}".encode()


# --- loading (no numba) -------------------------------------------------------------------------


class _Engine:
    """The loader holding the runtime shims and every object loaded so far (no LLVM: see
    llamatool.elf_loader)."""

    def __init__(self):
        from ..elf_loader import Loader

        self.loader = Loader()
        self.loader.load(_runtime_object())
        self.failed = ctypes.c_int32.from_address(self.loader.symbol("llamatool_kernel_failed"))

    def load(self, symbol: str, obj: bytes) -> int:
        from ..elf_loader import ObjectError

        try:
            return self.loader.load(obj).get(symbol, 0)
        except (ObjectError, OSError):
            return 0  # the caller compiles it instead


def _runtime_object() -> bytes:
    """_RUNTIME_IR as machine code: saved beside the kernels' objects, made with llvmlite
    the first time (for the large code model, as Numba's kernels are)."""
    found = _read(_RUNTIME_KEY)
    if found is not None:
        return found[1]
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    tm = llvm.Target.from_default_triple().create_target_machine(codemodel="large")
    module = llvm.parse_assembly(_RUNTIME_IR)
    module.verify()
    obj = tm.emit_object(module)
    _write(_RUNTIME_KEY, "llamatool_kernel_failed", obj)
    return obj


_engine_lock = threading.Lock()
_engine_made: list[_Engine | None] = []


def _engine() -> _Engine | None:
    """The process's engine, made on first use; None when it cannot be (then Numba runs the
    kernels): whatever stops it, it must not stop the command."""
    with _engine_lock:
        if not _engine_made:
            try:
                engine = _Engine()
            except Exception:  # noqa: BLE001 - ObjectError, mmap refused, LLVM failing to build the shims
                engine = None
            _engine_made.append(engine)
        return _engine_made[0]


# A saved object starts with the line "sha256:<hex digest of the object> <symbol>": a
# truncation check (loading a half-written object would crash the process), not a guard
# against other users, which ownership and modes are (see llamatool.cache for why).
_DIGEST = b"sha256:"


def _read(key: str, package: Path = _PACKAGE) -> tuple[str, bytes] | None:
    """The saved symbol and object code under key, or None when missing, damaged (then
    built again) or not to be trusted."""
    folder = _private(package)
    blob = read_trusted(folder / f"{key}.o") if folder is not None else None
    if blob is None:
        return None
    head, _, obj = blob.partition(b"\n")
    if not head.startswith(_DIGEST):
        return None
    digest, _, symbol = head[len(_DIGEST):].partition(b" ")
    if hashlib.sha256(obj).hexdigest().encode() != digest:
        return None
    return symbol.decode(errors="replace"), obj


def _write(key: str, symbol: str, obj: bytes, package: Path = _PACKAGE) -> None:
    folder = _private(package)
    if folder is not None:  # else (or when it is read-only) built again next time
        write_private(folder / f"{key}.o", _DIGEST + hashlib.sha256(obj).hexdigest().encode() + b" " + symbol.encode() + b"\n" + obj)


def _checked(engine: _Engine, fn, name: str):
    def call(*args):
        result = fn(*args)
        if engine.failed.value:
            raise LlamatoolError(f"internal error: the {name} kernel failed")
        return result

    return call


def _load(key: str):
    """The cached object's entry point as a checked ctypes function of `prototype`, or None."""
    addresses = cached_addresses(_PACKAGE, [key])
    if addresses is None:
        return None
    return _checked(_engine(), _PROTOTYPES[key == NONFINITE](addresses[0]), key)


def _native_rows(key: str, src_dtype, dst_dtype):
    """The cached object's kernel as kernel(src, dst), or None when there is none."""
    fn = _load(key)
    if fn is None:
        return None

    def kernel(src: np.ndarray, dst: np.ndarray) -> None:
        if src.dtype != src_dtype or dst.dtype != dst_dtype or not (src.flags.c_contiguous and dst.flags.c_contiguous):
            raise LlamatoolError(f"internal error: {key} takes C-contiguous {src_dtype} and {dst_dtype} rows")
        if src.shape[0] != dst.shape[0]:
            raise LlamatoolError(f"internal error: {key}: {src.shape[0]} rows in, {dst.shape[0]} out")
        if src.shape[0]:
            fn(src.ctypes.data, dst.ctypes.data, src.shape[0], src.shape[1], dst.shape[1])

    return kernel


def _native_count(key: str):
    fn = _load(key)
    if fn is None:
        return None

    def count(x: np.ndarray) -> int:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(x.shape[0], -1) if x.ndim else x.reshape(1, 1)
        return int(fn(x.ctypes.data, x.shape[0], x.shape[1])) if x.size else 0

    return count


def is_saved(package: Path, keys) -> bool:
    """Whether machine code is saved under every key for a kernel package: the files exist
    (cached_addresses reads and checks them when they are loaded; a damaged one is built
    again then, as ever)."""
    folder = _private(package)
    return folder is not None and all((folder / f"{key}.o").exists() for key in keys)


def cached_addresses(package: Path, keys) -> list[int] | None:
    """Entry points of the C functions saved under keys for a kernel package (see
    save_cfunc), loaded without Numba; None unless every one is there."""
    found = [_read(key, package) for key in keys]
    if any(f is None for f in found):
        return None
    engine = _engine()
    if engine is None:
        return None
    addresses = [engine.load(*f) for f in found]
    return addresses if all(addresses) else None


# --- building (numba) ---------------------------------------------------------------------------


def _undefined_symbols(module) -> list[str]:
    names = [f.name for f in module.functions if f.is_declaration and not f.name.startswith("llvm.")]
    return names + [g.name for g in module.global_variables if g.is_declaration]


def _object_code(entry) -> tuple[str, bytes]:
    """A cfunc's machine code (Numba's own, as it runs and caches it: emitting the module a
    second time cost ~8% of the matmul kernels' compile time) and its symbol; raises when it
    needs a symbol the loader cannot provide."""
    lib = entry._library
    lib._ensure_finalized()
    process = ctypes.CDLL(None)
    for name in _undefined_symbols(lib._final_module):
        if name not in _RUNTIME_SYMBOLS and not hasattr(process, name):
            raise LookupError(f"{entry.native_name} needs {name}")
    return entry.native_name, lib._get_compiled_object()


def save_cfunc(package: Path, key: str, entry) -> bool:
    """Save the machine code of a Numba cfunc compiled in this process for cached_addresses;
    False (nothing saved) when it came from Numba's cache, needs a symbol the loader lacks,
    or the cache is read-only or refused, or saved code is off here (llamatool.host)."""
    if _private(package) is None:
        return False
    try:
        entry._library._ensure_finalized()
        module = entry._library._final_module
        if not any(f.name == entry.native_name and not f.is_declaration for f in module.functions):
            return False  # loaded from Numba's cache as bare machine code: nothing to check it by
        _write(key, *_object_code(entry), package=package)
    except Exception:  # noqa: BLE001 - Numba internals moved, or a symbol we lack: Numba keeps running it
        return False
    return _read(key, package) is not None


def _save(key: str, entry, sig) -> None:
    """Compile entry as a cfunc of sig and save its object code (quietly not, if that fails)."""
    from numba import cfunc

    from .. import jit

    try:
        with jit.vectorizer_options():
            save_cfunc(_PACKAGE, key, cfunc(sig, nogil=True, error_model="numpy")(entry))
    except Exception:  # noqa: BLE001 - Numba internals moved: Numba runs the kernel
        pass


def _build(key: str, kernel, src_dtype, dst_dtype) -> None:
    from numba import carray, types

    def entry(src, dst, n_rows, src_cols, dst_cols):
        kernel(carray(src, (n_rows, src_cols), src_dtype), carray(dst, (n_rows, dst_cols), dst_dtype))

    _save(key, entry, types.void(types.voidptr, types.voidptr, types.int64, types.int64, types.int64))


def _build_count(key: str, kernel) -> None:
    from numba import carray, types

    def entry(src, n_rows, cols):
        return kernel(carray(src, (n_rows, cols), np.float32))

    _save(key, entry, types.int64(types.voidptr, types.int64, types.int64))


# --- the row kernels ----------------------------------------------------------------------------


def _copy_f32(src: np.ndarray, dst: np.ndarray) -> None:
    dst.view(np.float32)[...] = src.view(np.float32)


def _numba_kernel(family: str, name: str):
    public = getattr(importlib.import_module(f"llamatool.quants.{family}"), name, None)
    return getattr(public, "kernel", None)


@lru_cache(maxsize=None)
def row_kernel(qtype, verb: str):
    """The serial kernel that quantizes float32 rows to qtype (verb "quantize") or
    dequantizes qtype's rows to float32 ("dequantize"); a clear error if there is none."""
    t = ggml_type(qtype)
    if t.name == "F32":
        return _copy_f32
    key = f"{verb}_{t.name.lower()}"
    src_dtype, dst_dtype = (np.float32, np.uint8) if verb == "quantize" else (np.uint8, np.float32)
    if t.family is not None:
        kernel = _native_rows(key, src_dtype, dst_dtype)
        if kernel is not None:
            return kernel
        kernel = _numba_kernel(t.family, key)
        if kernel is not None:
            if _private() is None:  # saved code off here, or the cache refused
                return kernel
            _build(key, kernel, src_dtype, dst_dtype)
            return _native_rows(key, src_dtype, dst_dtype) or kernel
    raise LlamatoolError(f"{'quantizing to' if verb == 'quantize' else 'reading'} {t.name} tensors is not supported")


@lru_cache(maxsize=None)
def nonfinite_counter():
    """count(x): how many values of float32 rows x are NaN or infinite."""
    count = _native_count(NONFINITE)
    if count is None:
        from . import floats

        if _private() is not None:
            _build_count(NONFINITE, floats._count_nonfinite)
        count = _native_count(NONFINITE) or (lambda x: int(floats._count_nonfinite(np.ascontiguousarray(x, np.float32))))
    return count
