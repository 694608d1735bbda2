"""`llamatool quantize`: GGUF in, smaller GGUF out, the way llama-quantize writes it.

The type of every tensor comes from quant_rules (llama-quantize's presets and recipe);
this module streams the tensors through the kernels: read rows from the memory-mapped
input, convert them to float32, quantize, write. The worker threads convert chunks of
rows (a few hundred KB of float32, which stay in cache) and run ahead of the writer, on
the tensors after the one being written, so that neither the writes nor a thread the OS
holds back (the machine may be busy) leave the others waiting. Memory holds the tensors
in flight (a few tens of MB, or the largest tensor) and a chunk per thread, never the
model; the input's pages are handed back to the OS tensor by tensor. The output is
written atomically (nothing is left behind on error, Ctrl-C or SIGTERM).

The file matches llama-quantize's: tensors in its loader order, metadata copied in
order with general.quantization_version and general.file_type moved to the end.
"""

from __future__ import annotations

import mmap
import os
import queue
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import LlamatoolError
from .fileio import check_output_path
from .imatrix_file import IMATRIX_KEYS, ImportanceWeights, load_importance_weights
from .gguf_io import Field, GGUFReader, GGUFWriter, StringArrayField, TensorInfo, ValueType, copy_fields
from .quant_rules import (
    QuantizeOptions,
    TypePlan,
    canonical_preset,
    is_preset,
    plan_types,
    preset_file_type,
    preset_names,
    requires_imatrix,
    tensor_types,
)
from .quants.registry import GGMLType, ggml_type

__all__ = ["QuantizeOptions", "tensor_types", "preset_file_type", "preset_names", "quantize_model", "QuantizeResult"]

GGML_QNT_VERSION = 2  # general.quantization_version llama.cpp writes
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
CHUNK_VALUES = 1 << 18  # float32 values a worker converts at once: 1 MiB, which stays in cache
AHEAD_BYTES = 32 << 20  # output converted ahead of the writer (one tensor more at most)
MIB = 1024 * 1024


@dataclass
class TensorJob:
    src: TensorInfo
    dst: GGMLType

    @property
    def name(self) -> str:
        return self.src.name

    @property
    def converts(self) -> bool:
        return self.src.type.id != self.dst.id

    @property
    def src_bytes(self) -> int:
        return self.src.nbytes

    @property
    def dst_bytes(self) -> int:
        return self.dst.nbytes(self.src.n_elements)


@dataclass
class QuantizeResult:
    input: Path
    output: Path | None  # None for a dry run
    preset: str
    jobs: list[TensorJob]
    plan: TypePlan
    n_elements: int
    seconds: float = 0.0
    file_size: int = 0
    threads: int = 1

    @property
    def size_before(self) -> int:
        return sum(j.src_bytes for j in self.jobs)

    @property
    def size_after(self) -> int:
        return sum(j.dst_bytes for j in self.jobs)

    def bpw(self, nbytes: int) -> float:
        return nbytes * 8.0 / self.n_elements if self.n_elements else 0.0


# --- command-line arguments -----------------------------------------------------------------


def parse_positional(args: Sequence[str]) -> tuple[Path, Path | None, str, int | None]:
    """llama-quantize's positional form: IN [OUT] TYPE [NTHREADS].

    As there, the second argument is the type if it names one, else the output path; a
    missing output is ggml-model-<TYPE>.gguf next to the input.
    """
    args = list(args)
    if len(args) < 2:
        raise LlamatoolError("usage: llamatool quantize IN.gguf [OUT.gguf] TYPE [NTHREADS]")
    inp = Path(args[0])
    if is_preset(args[1]):
        preset, out, rest = canonical_preset(args[1]), None, args[2:]
    else:
        if len(args) < 3:
            raise LlamatoolError(f"unknown quantization type {args[1]!r} (choose from {', '.join(preset_names())})")
        out, preset, rest = Path(args[1]), canonical_preset(args[2]), args[3:]
    if len(rest) > 1:
        raise LlamatoolError(f"unexpected arguments: {' '.join(rest[1:])}")
    nthreads = None
    if rest:
        try:
            nthreads = int(rest[0])
        except ValueError:
            raise LlamatoolError(f"invalid thread count {rest[0]!r}") from None
    return inp, out, preset, nthreads


def default_output(inp: Path, preset: str) -> Path:
    return inp.parent / f"ggml-model-{preset}.gguf"


# --- planning -------------------------------------------------------------------------------


def plan_jobs(reader: GGUFReader, options: QuantizeOptions) -> tuple[list[TensorJob], TypePlan]:
    """Every tensor with its target type, in llama-quantize's order."""
    if int(reader.get("split.count", 1) or 1) > 1:
        raise LlamatoolError(f"{reader.path}: split GGUF files are not supported; merge them first (llama-gguf-split --merge)")
    for name, opt in (("--output-tensor-type", options.output_tensor_type), ("--token-embedding-type", options.token_embedding_type)):
        if opt is not None:
            t = ggml_type(opt)
            if not t.can_quantize:
                raise LlamatoolError(f"{name} {t.name}: quantizing to {t.name} is not supported")
    plan = plan_types(
        [(t.name, t.ne) for t in reader.tensors],
        reader.metadata,
        options,
        current_types={t.name: t.type for t in reader.tensors},
    )
    jobs = [TensorJob(reader.tensor(name), t) for name, t in plan.types.items()]
    return jobs, plan


def requantized(jobs: list[TensorJob]) -> list[TensorJob]:
    """Jobs that would change the type of an already-quantized tensor."""
    return [j for j in jobs if j.converts and j.src.type.is_quantized]


def check_requantize(reader: GGUFReader, jobs: list[TensorJob], options: QuantizeOptions) -> None:
    """Refuse to requantize already-quantized tensors unless asked (llama-quantize's check)."""
    if options.allow_requantize:
        return
    requant = requantized(jobs)
    if requant:
        types = sorted({j.src.type.name for j in requant})
        raise LlamatoolError(
            f"{reader.path}: already quantized ({len(requant)} tensors are {'/'.join(types)}); requantizing "
            f"loses quality compared with quantizing from F32/F16/BF16 - pass --allow-requantize to do it anyway"
        )


def check_imatrix(plan: TypePlan, preset: str, weights: dict[str, np.ndarray] | None) -> None:
    """llama-quantize's refusals: the 1-3-bit types are garbage without importance weights."""
    for name, t in plan.types.items():
        if name not in plan.quantizable or not requires_imatrix(name, t.name, preset):
            continue
        if weights is None:
            raise LlamatoolError(f"this quantization requires an imatrix! (offending tensor: {name}, target type: "
                                 f"{t.name}): make one with `llamatool imatrix` and pass --imatrix FILE")
        if name not in weights:
            raise LlamatoolError(f"Missing importance matrix for tensor {name} in a very low-bit quantization")


@dataclass(frozen=True)
class Kernels:
    """The serial row kernels a job runs (see quants.native): None for float32 input."""

    dequantize: Callable | None
    quantize: Callable
    count_nonfinite: Callable


def load_kernels(jobs: list[TensorJob], weights: dict[str, np.ndarray] | None = None) -> dict[str, Kernels]:
    """The kernels of every job that converts, by tensor name; only the types the model
    uses are loaded. A clear error for a type without kernels, before anything is written.
    With importance weights (imatrix means by tensor name), the types ggml quantizes
    differently with weights use them."""
    from .quants.native import nonfinite_counter, row_kernel

    kernels = {}
    for j in jobs:
        if j.converts:
            reads = None if j.src.type.name == "F32" else row_kernel(j.src.type, "dequantize")
            kernels[j.name] = Kernels(reads, _quantizer(j, weights), nonfinite_counter())
    return kernels


def _quantizer(job: TensorJob, weights: dict[str, np.ndarray] | None):
    from .quants.native import row_kernel

    qw = (weights or {}).get(job.name)
    if qw is None:
        return row_kernel(job.dst, "quantize")
    from .quants.weighted import has_weighted, weighted_kernel

    if qw.size != job.src.ne[0] * (job.src.ne[2] if len(job.src.ne) > 2 else 1):
        if job.name == "token_embd.weight":  # llama-quantize ignores it there: never an input it measured
            return row_kernel(job.dst, "quantize")
        raise LlamatoolError(f"imatrix size {qw.size} is different from tensor size {job.src.ne[0]} for {job.name}: made for another model")
    if len(job.src.ne) > 2 and job.src.ne[2] > 1:
        raise LlamatoolError(f"{job.name}: importance weights for 3-D (expert) tensors are not supported")
    return weighted_kernel(job.dst.name, qw) if has_weighted(job.dst.name) else row_kernel(job.dst, "quantize")


def worker_count(nthreads: int | None) -> int:
    """Threads for the conversion: nthreads, or (None, 0 or less) every core we may use."""
    if nthreads and nthreads > 0:
        return int(nthreads)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --- writing --------------------------------------------------------------------------------


def _release_pages(reader: GGUFReader, t: TensorInfo) -> None:
    """Drop a tensor's input pages from our resident set once it is written (they stay in
    the page cache), as llama-quantize unmaps each weight: RSS then tracks the tensors in
    flight, not the model."""
    mm = getattr(reader, "_mmap", None)
    if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = reader.data_offset + t.offset
    aligned = start - start % mmap.PAGESIZE
    length = start + t.nbytes - aligned
    if length > 0:
        try:
            mm.madvise(mmap.MADV_DONTNEED, aligned, length)
        except (OSError, ValueError):
            pass


def _scratch(local: threading.local, n: int) -> np.ndarray:
    """A float32 buffer of at least n values, the calling thread's own."""
    buf = getattr(local, "buf", None)
    if buf is None or buf.size < n:
        buf = local.buf = np.empty(max(n, CHUNK_VALUES), np.float32)
    return buf[:n]


def _convert_rows(job: TensorJob, kernels: Kernels, out: np.ndarray, r0: int, r1: int, local: threading.local) -> None:
    """Rows r0:r1 of the job's tensor, read, widened to float32 and quantized into out."""
    n_per_row = job.src.ne[0]
    raw = job.src.data[r0:r1]
    if kernels.dequantize is None:
        x = raw.view(np.float32)
    else:
        x = _scratch(local, (r1 - r0) * n_per_row).reshape(r1 - r0, n_per_row)
        kernels.dequantize(raw, x)
    if kernels.count_nonfinite(x):
        bad = int(np.argwhere(~np.isfinite(x))[0][0])
        raise LlamatoolError(f"{job.name}: row {r0 + bad} holds NaN or infinite values; refusing to quantize it")
    kernels.quantize(x, out[r0:r1])


class _Tensor:
    """A tensor being converted: its output and the chunks of rows still to do."""

    def __init__(self, job: TensorJob, buffer: np.ndarray):
        n_rows, n_per_row = job.src.n_rows, job.src.ne[0]
        self.job = job
        self.buffer = buffer  # at least job.dst_bytes, flat
        self.out = buffer[: job.dst_bytes].reshape(n_rows, job.dst.row_bytes(n_per_row))
        rows = max(1, CHUNK_VALUES // max(1, n_per_row))
        self.chunks = [(r0, min(n_rows, r0 + rows)) for r0 in range(0, n_rows, rows)]
        self.left = len(self.chunks)
        self.error: BaseException | None = None
        self.done = threading.Event()
        if not self.chunks:
            self.done.set()


class _Converter:
    """The tensors of a model converted in order on worker threads, ahead of the writer.

    Workers take the next chunk of rows whatever tensor it belongs to, so they keep busy
    while the writer waits for (or writes) an earlier tensor; conversion starts as soon as
    the converter is entered (while the header is being written). Iterating gives
    (job, data) for every job in order: the input's bytes for a copy, the converted tensor
    otherwise."""

    def __init__(self, jobs: list[TensorJob], kernels: dict[str, Kernels], n_workers: int):
        self.jobs = jobs
        self.kernels = kernels
        self.n_workers = n_workers if any(j.converts for j in jobs) else 0
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.stopped = False
        self.workers: list = []
        self.pending: deque[_Tensor] = deque()
        self.upcoming = iter([j for j in jobs if j.converts])
        self.ahead = 0  # output bytes submitted and not yet handed to the writer
        self.spare: list[np.ndarray] = []  # buffers of tensors written, for the next ones

    def __enter__(self) -> "_Converter":
        if self.n_workers:
            self.workers = [threading.Thread(target=self._work, name=f"llamatool-quantize-{i}", daemon=True) for i in range(self.n_workers)]
            for w in self.workers:
                w.start()
            self._submit_ahead()
        return self

    def __exit__(self, *exc) -> None:
        """Stop the workers (chunks not started are dropped) and wait for them."""
        self.stopped = True
        for _ in self.workers:
            self.queue.put(None)
        for w in self.workers:
            w.join()

    def __iter__(self):
        for job in self.jobs:
            if not job.converts:
                yield job, job.src.data
                continue
            self._submit_ahead()
            tensor = self.pending.popleft()
            tensor.done.wait()
            if tensor.error is not None:
                raise tensor.error
            yield job, tensor.out
            self.ahead -= job.dst_bytes
            self._give_back(tensor.buffer)
            tensor.buffer = tensor.out = None

    def _submit_ahead(self) -> None:
        while not self.pending or self.ahead < AHEAD_BYTES:
            job = next(self.upcoming, None)
            if job is None:
                return
            tensor = _Tensor(job, self._buffer(job.dst_bytes))
            for r0, r1 in tensor.chunks:
                self.queue.put((tensor, r0, r1))
            self.pending.append(tensor)
            self.ahead += job.dst_bytes

    def _buffer(self, nbytes: int) -> np.ndarray:
        """The smallest spare buffer that holds nbytes, else a new one. Reusing them saves
        the page faults (and the zeroing) of fresh memory: the layers' tensors come in a
        few sizes again and again."""
        fits = [i for i, b in enumerate(self.spare) if b.size >= nbytes]
        if not fits:
            return np.empty(nbytes, np.uint8)
        return self.spare.pop(min(fits, key=lambda i: self.spare[i].size))

    def _give_back(self, buffer: np.ndarray) -> None:
        self.spare.append(buffer)
        while sum(b.size for b in self.spare) > AHEAD_BYTES:  # memory stays the tensors in flight
            self.spare.pop(min(range(len(self.spare)), key=lambda i: self.spare[i].size))

    def _work(self) -> None:
        local = threading.local()
        while (item := self.queue.get()) is not None:
            tensor, r0, r1 = item
            if tensor.error is None and not self.stopped:
                try:
                    _convert_rows(tensor.job, self.kernels[tensor.job.name], tensor.out, r0, r1, local)
                except BaseException as e:  # noqa: BLE001 - handed to the writer, which raises it
                    tensor.error = e
            with self.lock:
                tensor.left -= 1
                if tensor.left == 0:
                    tensor.done.set()


# --- the header ---------------------------------------------------------------------------

# llama-quantize copies every key in order, then re-sets these two, which moves them last.
RESET_KEYS = ("general.quantization_version", "general.file_type", *SPLIT_KEYS)
_KV_START = 24  # the metadata follows the magic, the version and the two counts
_VALUE_BYTES = {
    ValueType.UINT8: 1, ValueType.INT8: 1, ValueType.BOOL: 1, ValueType.UINT16: 2, ValueType.INT16: 2,
    ValueType.UINT32: 4, ValueType.INT32: 4, ValueType.FLOAT32: 4,
    ValueType.UINT64: 8, ValueType.INT64: 8, ValueType.FLOAT64: 8,
}  # fmt: skip


def _encoded_size(f: Field) -> int:
    """Bytes of f's value in a GGUF file, from its decoded value (KeyError for arrays of
    arrays, which no model needs copied fast)."""
    if f.type == ValueType.STRING:
        return 8 + len(f.value.encode("utf-8", "surrogateescape"))
    if f.type != ValueType.ARRAY:
        return _VALUE_BYTES[f.type]
    if isinstance(f, StringArrayField):
        return 12 + f.nbytes  # as the input stores them, never decoded
    if f.subtype == ValueType.STRING:  # one encode of the joined strings: their lengths add up
        return 12 + 8 * len(f.value) + len("".join(f.value).encode("utf-8", "surrogateescape"))
    return 12 + len(f.value) * _VALUE_BYTES[f.subtype]


def _key_bytes(key: str, vtype: int) -> bytes:
    k = key.encode("utf-8", "surrogateescape")
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype)


def copied_metadata(reader: GGUFReader, skip: Sequence[str] = RESET_KEYS) -> tuple[int, bytes] | None:
    """The input's metadata entries but `skip`, as their bytes in the file (and how many):
    what copy_fields would write, without encoding the vocabulary's ~100k strings again.
    None when the bytes do not check out: every key must sit where the decoded sizes put
    it, and the first tensor's name right after the last value."""
    if "general.alignment" in reader.fields or not reader.tensors:
        return None  # the writer must see the alignment; a file without tensors is small anyway
    with open(reader.path, "rb") as f:
        head = f.read(reader.data_offset)
    pos, parts, head = _KV_START, [], memoryview(head)
    try:
        for key, field in reader.fields.items():
            entry = _key_bytes(key, field.type)
            if head[pos : pos + len(entry)] != entry:  # (memoryview == bytes compares the bytes)
                return None
            end = pos + len(entry) + _encoded_size(field)
            if key not in skip:
                parts.append(head[pos:end])
            pos = end
    except (KeyError, TypeError, AttributeError):
        return None
    first = reader.tensors[0].name.encode("utf-8", "surrogateescape")
    if head[pos : pos + 8 + len(first)] != struct.pack("<Q", len(first)) + first:
        return None
    return len(parts), b"".join(parts)


class _Writer(GGUFWriter):
    """A GGUFWriter whose metadata starts with entries copied as bytes (copied_metadata)."""

    def __init__(self, path: Path, copied: tuple[int, bytes], **kw):
        super().__init__(path, **kw)
        self.copied = copied

    def _header_bytes(self) -> bytes:
        header = super()._header_bytes()
        count, entries = self.copied
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", header, 4)
        return header[:4] + struct.pack("<IQQ", version, n_tensors, count + n_kv) + entries + header[_KV_START:]


def _writer(out: Path, reader: GGUFReader, force: bool, skip: Sequence[str] = ()) -> GGUFWriter:
    copied = copied_metadata(reader, RESET_KEYS + tuple(skip))
    if copied is None:
        writer = GGUFWriter(out, force=force, inputs=[reader.path])
        copy_fields(reader, writer, skip=RESET_KEYS + tuple(skip))
        return writer
    return _Writer(out, copied, force=force, inputs=[reader.path])


def _write_header(writer: GGUFWriter, jobs: list[TensorJob], preset: str, imatrix_keys: dict | None = None) -> None:
    writer.add_field("general.quantization_version", GGML_QNT_VERSION, ValueType.UINT32)
    writer.add_field("general.file_type", preset_file_type(preset), ValueType.UINT32)
    for key, (vtype, value) in (imatrix_keys or {}).items():
        writer.add_field(key, value, vtype)
    for j in jobs:
        writer.add_tensor_info(j.name, j.dst, j.src.ne)


class _NoProgress:
    """What _progress gives when no bar can be drawn (rich is not even imported)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, task, **kw) -> None:
        pass

    def advance(self, task, amount) -> None:
        pass


def _may_be_terminal() -> bool:
    """False when rich would certainly not draw on stderr (no tty, no variable forcing it)."""
    return sys.stderr.isatty() or any(os.environ.get(k) for k in ("TTY_COMPATIBLE", "FORCE_COLOR", "TTY_INTERACTIVE"))


def _progress(total: int, enabled: bool):
    if not (enabled and _may_be_terminal()):
        return _NoProgress(), None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description:<40}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
    )
    return progress, progress.add_task("quantizing", total=total)


def quantize_model(
    inp: str | Path,
    out: str | Path | None,
    options: QuantizeOptions,
    *,
    nthreads: int | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    imatrix: ImportanceWeights | None = None,
) -> QuantizeResult:
    """Quantize `inp` to `out` with a llama-quantize preset; with dry_run only plan; with
    imatrix (see load_importance_weights) the weighted quantization llama-quantize --imatrix does."""
    inp = Path(inp)
    preset = canonical_preset(options.preset)
    if not dry_run:
        out = Path(out) if out is not None else default_output(inp, preset)
        if not inp.exists():
            raise LlamatoolError(f"{inp}: no such file")
        check_output_path(out, force=force, inputs=[inp])
    reader = GGUFReader(inp)
    try:
        jobs, plan = plan_jobs(reader, options)
        result = QuantizeResult(inp, None if dry_run else out, preset, jobs, plan, sum(t.n_elements for t in reader.tensors))
        if dry_run:
            return result
        check_requantize(reader, jobs, options)
        check_imatrix(plan, preset, imatrix.weights if imatrix else None)
        kernels = load_kernels(jobs, imatrix.weights if imatrix else None)
        result.threads = worker_count(nthreads)
        start = time.perf_counter()
        with _Converter(jobs, kernels, result.threads) as tensors:  # converting from here on
            bar, task = _progress(result.size_before, progress)
            with bar, _writer(out, reader, force, skip=IMATRIX_KEYS if imatrix else ()) as writer:
                _write_tensors(reader, writer, jobs, preset, tensors, bar, task, imatrix.metadata() if imatrix else None)
                bar.update(task, description=f"wrote {out.name}")
        result.seconds = time.perf_counter() - start
        result.file_size = Path(out).stat().st_size
        return result
    finally:
        reader.close()


def _write_tensors(reader: GGUFReader, writer: GGUFWriter, jobs: list[TensorJob], preset: str, tensors, bar, task,
                   imatrix_keys: dict | None = None) -> None:
    _write_header(writer, jobs, preset, imatrix_keys)
    for job, data in tensors:
        bar.update(task, description=f"{job.name} -> {job.dst.name}" if job.converts else job.name)
        writer.write_tensor(job.name, data)
        del data
        _release_pages(reader, job.src)
        bar.advance(task, job.src_bytes)


# --- reporting ------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / MIB:.2f} MiB"


def fallback_summary(result: QuantizeResult) -> str | None:
    """One line like llama-quantize's 'N of M tensor(s) required fallback quantization'."""
    fb = result.plan.fallbacks
    if not fb:
        return None
    from collections import Counter

    kinds = Counter((f.wanted.name, f.got.name) for f in fb)
    detail = ", ".join(f"{w}->{g} x{n}" for (w, g), n in kinds.items())
    rows = sorted({f.n_per_row for f in fb})
    return (
        f"warning: {len(fb)} of {len(result.jobs)} tensors required fallback quantization: rows of "
        f"{', '.join(map(str, rows))} values are not whole blocks of the chosen type ({detail})"
    )


def _console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a pipe or a log: do not wrap tensor names
    return console


def print_plan(result: QuantizeResult) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=f"{result.input} as {result.preset} (dry run)", title_justify="left", box=box.SIMPLE)
    for col in ("#", "tensor", "shape", "from", "to", "before", "after", "note"):
        right = col in ("#", "before", "after")
        table.add_column(col, justify="right" if right else "left", no_wrap=True)
    fallbacks = {f.name: f for f in result.plan.fallbacks}
    for i, j in enumerate(result.jobs, 1):
        fb = fallbacks.get(j.name)
        note = f"fallback from {fb.wanted.name}" if fb else ""
        to = j.dst.name if j.converts else "="
        shape = "x".join(map(str, j.src.ne))
        table.add_row(str(i), j.name, shape, j.src.type.name, to, _mib(j.src_bytes), _mib(j.dst_bytes), note)
    console = _console()
    console.print(table)
    _print_sizes(console.print, result)


def _print_sizes(say, result: QuantizeResult) -> None:
    say(f"model size  = {_mib(result.size_before):>12} ({result.bpw(result.size_before):.2f} BPW)")
    say(f"quant size  = {_mib(result.size_after):>12} ({result.bpw(result.size_after):.2f} BPW)")


def print_summary(result: QuantizeResult) -> None:
    """Plain lines (no rich: its import would cost more than the text needs)."""
    from collections import Counter

    converted = [j for j in result.jobs if j.converts]
    types = Counter(j.dst.name for j in result.jobs)
    print(f"quantized {result.input} -> {result.output} as {result.preset}")
    print(
        f"tensors     = {len(result.jobs)} ({len(converted)} converted, {len(result.jobs) - len(converted)} copied): "
        + ", ".join(f"{t} x{n}" for t, n in sorted(types.items()))
    )
    _print_sizes(print, result)
    rate = result.size_before / MIB / result.seconds if result.seconds else 0.0
    print(f"file        = {result.file_size:,} bytes")
    print(f"time        = {result.seconds:.2f} s ({rate:.1f} MiB/s)")


def run_quantize_command(
    args: Sequence[str],
    *,
    nthreads: int | None,
    allow_requantize: bool,
    leave_output_tensor: bool,
    pure: bool,
    output_tensor_type: str | None,
    token_embedding_type: str | None,
    dry_run: bool,
    force: bool,
    imatrix: str | None = None,
    include_weights: Sequence[str] = (),
    exclude_weights: Sequence[str] = (),
) -> None:
    inp, out, preset, positional_threads = parse_positional(args)
    if (include_weights or exclude_weights) and imatrix is None:
        raise LlamatoolError("--include-weights/--exclude-weights need --imatrix FILE")
    weights = load_importance_weights(imatrix, list(include_weights), list(exclude_weights)) if imatrix else None
    if nthreads is not None and positional_threads is not None and nthreads != positional_threads:
        raise LlamatoolError(f"two thread counts given: --nthreads {nthreads} and {positional_threads}")
    nthreads = nthreads if nthreads is not None else positional_threads
    if nthreads is not None and nthreads < 0:
        raise LlamatoolError(f"invalid thread count {nthreads}")
    options = QuantizeOptions(
        preset=preset,
        pure=pure,
        leave_output_tensor=leave_output_tensor,
        output_tensor_type=None if output_tensor_type is None else ggml_type(output_tensor_type).name,
        token_embedding_type=None if token_embedding_type is None else ggml_type(token_embedding_type).name,
        allow_requantize=allow_requantize,
        has_imatrix=weights is not None,
    )
    result = quantize_model(inp, out, options, nthreads=nthreads, force=force, dry_run=dry_run, imatrix=weights)
    warning = fallback_summary(result)
    if dry_run:
        print_plan(result)
    else:
        print_summary(result)
    if warning:
        print(warning, file=sys.stderr)
    if dry_run and not allow_requantize:
        requant = requantized(result.jobs)
        if requant:
            print(f"note: {len(requant)} tensors are already quantized: quantizing needs --allow-requantize", file=sys.stderr)
