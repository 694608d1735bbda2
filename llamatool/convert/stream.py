"""Write the GGUF one tensor at a time, straight from the memory-mapped checkpoint.

A tensor already in its output type (F16 -> F16, BF16 -> BF16, F32 -> F32, rows in
order) is copied from the mapping without conversion. Any other tensor is converted in
slabs of rows: widen to float32 (bf16 by a shift), reorder Q/K rows, quantize into the
output buffer. Memory therefore holds one output tensor plus one slab, never the model.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np

from ..gguf_io import GGUFWriter
from ..quants.registry import GGMLType, quantize
from .tensors import ModelTensor
from .tensor_files import Mapped, to_float32

SLAB_BYTES = 32 << 20  # float32 bytes converted at a time


def _as_rows(arr: np.ndarray) -> np.ndarray:
    return arr.reshape(-1, arr.shape[-1]) if arr.ndim else arr.reshape(1, 1)


def _direct(t: ModelTensor, qtype: GGMLType) -> bool:
    return t.row_order is None and not t.shift and t.source is not None and t.source.dtype == qtype.name


def shifted(values: np.ndarray, shift: float, dtype: str) -> np.ndarray:
    """values (widened to float32) + shift as the reference's torch arithmetic gives it: it
    reads bfloat16 tensors as float32, so they add in float32; float16 tensors add in float16
    (rounded to nearest even); measured against the vendored converter on both."""
    total = values + np.float32(shift)
    return total.astype(np.float16).astype(np.float32) if dtype == "F16" else total


def _converted(t: ModelTensor, mapped: Mapped, qtype: GGMLType, advance: Callable[[int], None]) -> np.ndarray:
    stored, order = mapped.array, t.row_order
    if order is not None and stored.ndim == 1:  # a Q/K bias: reorder its values
        stored, order = stored[order], None
    rows = _as_rows(stored)
    n_rows, n_per_row = rows.shape
    out = np.empty((n_rows, qtype.row_bytes(n_per_row)), np.uint8)
    step = max(1, SLAB_BYTES // (4 * max(1, n_per_row)))
    src_row_bytes = rows.itemsize * n_per_row
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        src = rows[order[r0:r1]] if order is not None else rows[r0:r1]
        values = to_float32(src, t.source.dtype)
        if t.shift:
            values = shifted(values, t.shift, t.source.dtype)
        out[r0:r1] = quantize(qtype, values)
        del src
        if order is None:
            mapped.release(r0 * src_row_bytes, r1 * src_row_bytes)
        advance((r1 - r0) * out.shape[1])
    return out


def write_tensor(writer: GGUFWriter, t: ModelTensor, qtype: GGMLType, advance: Callable[[int], None]) -> None:
    if t.source is None:  # generated (rope_freqs)
        data = quantize(qtype, _as_rows(t.values))
        writer.write_tensor(t.name, data)
        advance(data.nbytes)
        return
    with t.source.mapped() as mapped:
        if _direct(t, qtype):
            writer.write_tensor(t.name, mapped.array)
            advance(mapped.array.nbytes)
            return
        data = _converted(t, mapped, qtype, advance)
    del mapped
    writer.write_tensor(t.name, data)


@contextmanager
def progress_bar(total: int, enabled: bool) -> Iterator[Callable[[int, str | None], None]]:
    """A rich progress bar on stderr (bytes written, rate, time left); yields
    update(n_bytes, description). Silent when disabled or stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
    )
    task = bar.add_task("converting", total=total)

    def update(n: int, description: str | None = None) -> None:
        bar.update(task, advance=n, description=description)

    with bar:
        yield update
