"""`llamatool quantize`: GGUF in, smaller GGUF out, the way llama-quantize writes it.

The type of every tensor comes from quant_rules (llama-quantize's presets and recipe);
this module streams the tensors through the kernels: read rows from the memory-mapped
input, convert them to float32, quantize, write. Rows go in slabs, so memory holds one
output tensor and one slab of float32 at a time, never the model; the input's pages are
handed back to the OS slab by slab. The output is written atomically
(nothing is left behind on error, Ctrl-C or SIGTERM).

The file matches llama-quantize's: tensors in its loader order, metadata copied in
order with general.quantization_version and general.file_type moved to the end.
"""

from __future__ import annotations

import mmap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import LlamatoolError
from .fileio import check_output_path
from .gguf_io import GGUFReader, GGUFWriter, TensorInfo, ValueType, copy_fields
from .quant_rules import (
    QuantizeOptions,
    TypePlan,
    canonical_preset,
    is_preset,
    plan_types,
    preset_file_type,
    preset_names,
    tensor_types,
)
from .quants.registry import GGMLType, dequantize, ggml_type, quantize

__all__ = ["QuantizeOptions", "tensor_types", "preset_file_type", "preset_names", "quantize_model", "QuantizeResult"]

GGML_QNT_VERSION = 2  # general.quantization_version llama.cpp writes
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
SLAB_BYTES = 16 << 20  # float32 rows converted at once
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


def check_kernels(jobs: list[TensorJob]) -> None:
    for j in jobs:
        if not j.converts:
            continue
        if not j.src.type.can_dequantize:
            raise LlamatoolError(f"{j.name}: reading {j.src.type.name} tensors is not supported")
        if not j.dst.can_quantize:
            raise LlamatoolError(f"{j.name}: quantizing to {j.dst.name} is not supported")


# --- writing --------------------------------------------------------------------------------


def _release_pages(reader: GGUFReader, t: TensorInfo, first: int = 0, size: int | None = None) -> None:
    """Drop input pages we are done with from our resident set (they stay in the page
    cache), as llama-quantize unmaps each weight: RSS then tracks a slab, not the model."""
    mm = getattr(reader, "_mmap", None)
    if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = reader.data_offset + t.offset + first
    aligned = start - start % mmap.PAGESIZE
    length = start + (t.nbytes - first if size is None else size) - aligned
    if length > 0:
        try:
            mm.madvise(mmap.MADV_DONTNEED, aligned, length)
        except (OSError, ValueError):
            pass


def _convert(job: TensorJob, reader: GGUFReader, on_bytes) -> np.ndarray:
    """The job's tensor in its new type, converted slab by slab of rows."""
    src = job.src
    n_per_row, n_rows = src.ne[0], src.n_rows
    out = np.empty((n_rows, job.dst.row_bytes(n_per_row)), dtype=np.uint8)
    rows_per_slab = max(1, SLAB_BYTES // (4 * n_per_row))
    src_row_bytes = src.data.shape[1] if n_rows else 0
    for r0 in range(0, n_rows, rows_per_slab):
        r1 = min(n_rows, r0 + rows_per_slab)
        x = dequantize(src.type, src.data[r0:r1])
        if not np.isfinite(x).all():
            row = r0 + int(np.argwhere(~np.isfinite(x))[0][0])
            raise LlamatoolError(f"{job.name}: row {row} holds NaN or infinite values; refusing to quantize it")
        out[r0:r1] = quantize(job.dst, x)
        del x
        _release_pages(reader, src, r0 * src_row_bytes, (r1 - r0) * src_row_bytes)
        on_bytes((r1 - r0) * src_row_bytes)
    return out


def _write_header(writer: GGUFWriter, reader: GGUFReader, jobs: list[TensorJob], preset: str) -> None:
    # llama-quantize copies every key in order, then re-sets these two, which moves them last.
    copy_fields(reader, writer, skip=("general.quantization_version", "general.file_type", *SPLIT_KEYS))
    writer.add_field("general.quantization_version", GGML_QNT_VERSION, ValueType.UINT32)
    writer.add_field("general.file_type", preset_file_type(preset), ValueType.UINT32)
    for j in jobs:
        writer.add_tensor_info(j.name, j.dst, j.src.ne)


def _progress(total: int, enabled: bool):
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
) -> QuantizeResult:
    """Quantize `inp` to `out` with a llama-quantize preset; with dry_run only plan."""
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
        check_kernels(jobs)
        if any(j.converts for j in jobs):
            from .jit import set_threads

            set_threads(nthreads)
        start = time.perf_counter()
        bar, task = _progress(result.size_before, progress)
        with bar, GGUFWriter(out, force=force, inputs=[inp]) as writer:
            _write_header(writer, reader, jobs, preset)
            for job in jobs:
                bar.update(task, description=f"{job.name} -> {job.dst.name}" if job.converts else job.name)
                if job.converts:
                    data = _convert(job, reader, lambda n: bar.advance(task, n))
                else:
                    data = job.src.data
                    bar.advance(task, job.src_bytes)
                writer.write_tensor(job.name, data)
                del data
                _release_pages(reader, job.src)
            bar.update(task, description=f"wrote {out.name}")
        result.seconds = time.perf_counter() - start
        result.file_size = Path(out).stat().st_size
        return result
    finally:
        reader.close()


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
    _print_sizes(console, result)


def _print_sizes(console, result: QuantizeResult) -> None:
    console.print(f"model size  = {_mib(result.size_before):>12} ({result.bpw(result.size_before):.2f} BPW)")
    console.print(f"quant size  = {_mib(result.size_after):>12} ({result.bpw(result.size_after):.2f} BPW)")


def print_summary(result: QuantizeResult) -> None:
    from collections import Counter

    console = _console()
    converted = [j for j in result.jobs if j.converts]
    types = Counter(j.dst.name for j in result.jobs)
    console.print(f"quantized {result.input} -> {result.output} as {result.preset}")
    console.print(
        f"tensors     = {len(result.jobs)} ({len(converted)} converted, {len(result.jobs) - len(converted)} copied): "
        + ", ".join(f"{t} x{n}" for t, n in sorted(types.items()))
    )
    _print_sizes(console, result)
    rate = result.size_before / MIB / result.seconds if result.seconds else 0.0
    console.print(f"file        = {result.file_size:,} bytes")
    console.print(f"time        = {result.seconds:.2f} s ({rate:.1f} MiB/s)")


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
) -> None:
    import sys

    inp, out, preset, positional_threads = parse_positional(args)
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
    )
    result = quantize_model(inp, out, options, nthreads=nthreads, force=force, dry_run=dry_run)
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
