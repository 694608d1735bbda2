"""`llamatool imatrix`: the importance matrix, collected the way llama-imatrix collects it.

The text is tokenized once (with BOS if the model adds one) and cut into chunks of n_ctx
tokens; each chunk is evaluated from an empty KV cache with its first token replaced by
BOS, and every token goes through every layer (all logits are asked for, as llama-imatrix
does). For every matrix `blk.*` (and `output.weight` with --process-output, when the model
has one: a tied output is token_embd.weight, which llama-imatrix never collects), the
forward pass adds the square of each input column of every token, in float32 and token
order, to a running sum (Model.sum_input_squares); the count is the tokens summed. The
matrices that share an input (Q, K and V; gate and up) get the same sums.

llama-imatrix hands the model its chunks in batches of 2048 tokens split into micro-batches
of 512, and skips a matrix product of fewer than 16 rows: with one sequence per batch (a
context above 1024) the tail of a chunk can be such a micro-batch, left out here too.

Like llama-imatrix it prints the perplexity of the second half of each chunk as it goes,
with a progress line on stderr. --in-file adds earlier files (GGUF or .dat) first; without
a text, the files are only combined.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import LlamatoolError
from .imatrix_file import Entry, Imatrix, read_imatrix, write_dat, write_gguf

LLAMA_N_BATCH = 2048  # llama-imatrix's default batch and micro-batch sizes
LLAMA_N_UBATCH = 512
MIN_ROWS = 16  # llama-imatrix ignores matrix products of fewer rows


@dataclass
class _Slot:
    """A range of the forward pass's sums and the matrices whose input it is."""

    offset: int
    width: int
    names: list[str]


def _slots(model, process_output: bool) -> list[_Slot]:
    """Where each matrix's input sums are in the model's Scratch.sq layout."""
    from . import kernel_api

    fw = kernel_api.load("forward")
    a, w = model.args, model.weights
    layers, output = fw.input_square_sums(a.n_embd, a.n_head * a.head_dim, a.n_ff, a.n_layer)
    roles = {
        fw.SQ_ATTN_IN: (fw.LAYER_WQ, fw.LAYER_WK, fw.LAYER_WV, fw.LAYER_WQKV),
        fw.SQ_ATTN_OUT: (fw.LAYER_WO,),
        fw.SQ_FFN_IN: (fw.LAYER_GATE, fw.LAYER_UP),
        fw.SQ_FFN_DOWN: (fw.LAYER_DOWN,),
    }
    slots = []
    for il, places in enumerate(layers):
        for sq, role_ids in roles.items():
            names = [w.names[w.layers[il, r]] for r in role_ids if w.layers[il, r] >= 0]
            slots.append(_Slot(*places[sq], names))
    out_name = w.names[w.globals[fw.GLOBAL_OUTPUT]]
    if process_output and out_name == "output.weight":
        slots.append(_Slot(*output, [out_name]))
    return slots


def _matrix_widths(model) -> dict[str, int]:
    """Input width of every matrix of the model that an imatrix entry may name."""
    r = model.reader
    return {t.name: t.ne[0] * (t.ne[2] if len(t.ne) > 2 else 1) for t in r.tensors if len(t.ne) >= 2 and t.ne[1] > 1}


def counted_ranges(n_ctx: int) -> list[tuple[int, int, bool]]:
    """(start, end, counted) ranges of a chunk: llama-imatrix's micro-batches when a batch
    holds one sequence; those of fewer than MIN_ROWS tokens are not counted. Several
    sequences per batch (n_ctx <= 1024) make micro-batches of whole multi-chunk batches,
    all counted at the default sizes."""
    if LLAMA_N_BATCH // n_ctx >= 2:
        return [(0, n_ctx, True)]
    n_batch = min(LLAMA_N_BATCH, n_ctx)
    ranges = []
    for b0 in range(0, n_ctx, n_batch):
        b1 = min(b0 + n_batch, n_ctx)
        for u0 in range(b0, b1, LLAMA_N_UBATCH):
            u1 = min(u0 + LLAMA_N_UBATCH, b1)
            ranges.append((u0, u1, u1 - u0 >= MIN_ROWS))
    return ranges


@dataclass
class Collection:
    ppl: float
    ppl_error: float
    chunk_ppl: list[float]


def collect(
    model,
    tokens: Sequence[int],
    n_ctx: int,
    n_chunks: int,
    imatrix: Imatrix,
    process_output: bool = False,
    on_chunk: Callable[[int, int, float], None] | None = None,
) -> Collection:
    """Add the input statistics of n_chunks chunks of tokens to imatrix (llama-imatrix's
    compute_imatrix); returns the perplexity it measured on the way."""
    from .perplexity import token_nll

    slots = _slots(model, process_output)
    widths = _matrix_widths(model)
    for s in slots:
        for name in s.names:
            if name in imatrix.entries and imatrix.entries[name].sums.size != s.width:
                raise LlamatoolError(f"{name}: the loaded importance matrix has {imatrix.entries[name].sums.size} values, the model {widths.get(name)}")
    sums = np.zeros(model.input_square_sums_size, np.float32)
    tokens = np.asarray(tokens, dtype=np.int64)
    tok = model.tokenizer
    bos = tok.bos_id if getattr(tok, "add_bos", False) and tok.bos_id is not None else None
    ranges = counted_ranges(n_ctx)
    counted_per_chunk = sum(e - s for s, e, c in ranges if c)
    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    chunk_ppl = []
    try:
        for i in range(n_chunks):
            chunk = tokens[i * n_ctx : (i + 1) * n_ctx].copy()
            if bos is not None:
                chunk[0] = bos
            model.reset()
            logits = []
            for start, end, counted in ranges:
                model.sum_input_squares(sums if counted else None)
                for b0 in range(start, end, model.n_batch):
                    logits.append(model.eval(chunk[b0 : min(b0 + model.n_batch, end)], all_logits=True)[:, :])
            model.sum_input_squares(None)
            all_logits = np.concatenate(logits)
            v = token_nll(all_logits[first : n_ctx - 1], chunk[first + 1 :])
            nll += float(v.sum())
            nll2 += float((v * v).sum())
            count += v.size
            chunk_ppl.append(math.exp(nll / count))
            if on_chunk:
                on_chunk(i + 1, n_chunks, chunk_ppl[-1])
    finally:
        model.sum_input_squares(None)
    collected = n_chunks * counted_per_chunk
    for s in slots:
        values = sums[s.offset : s.offset + s.width]
        for name in s.names:
            e = imatrix.entries.get(name)
            if e is None:
                imatrix.entries[name] = Entry(values.copy(), np.array([collected], np.int64))
            else:
                e.sums = (e.sums + values).astype(np.float32)
                e.counts = e.counts + collected
    imatrix.chunk_size = n_ctx
    imatrix.chunk_count = imatrix.max_count() // n_ctx
    mean = nll / count
    var = nll2 / count - mean * mean
    error = math.sqrt(var / (count - 1)) * math.exp(mean) if var > 0 and count > 1 else 0.0
    return Collection(math.exp(mean), error, chunk_ppl)


# --- the command ------------------------------------------------------------------------------


def _log(msg: str, end: str = "\n") -> None:
    print(msg, file=sys.stderr, end=end, flush=True)


def _progress(i: int, n: int, started: float) -> None:
    """One line on stderr, rewritten after every chunk: a bar, chunks done, time left."""
    width = 30
    done = width * i // n
    elapsed = time.perf_counter() - started
    left = elapsed / i * (n - i)
    _log(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{n} chunks, {elapsed:.0f} s, ~{left:.0f} s left", end="" if i < n else "\n")


def imatrix_command(
    model_path: Path | None,
    text_file: Path | None,
    out_file: Path = Path("imatrix.gguf"),
    n_ctx: int = 512,
    n_chunks: int = -1,
    output_format: str = "gguf",
    in_files: Sequence[Path] = (),
    process_output: bool = False,
    n_threads: int | None = None,
    force: bool = False,
) -> None:
    from .perplexity import _read_text, tokenize_text

    if output_format not in ("gguf", "dat"):
        raise LlamatoolError(f"--output-format must be gguf or dat, got {output_format!r}")
    if n_ctx < 1:
        raise LlamatoolError("imatrix needs a context size (-c) of at least 1")
    m = Imatrix()
    for f in in_files:
        _log(f"imatrix: loading {f}")
        m.add(read_imatrix(f), n_ctx, str(f))
    inputs = [p for p in (model_path, text_file, *in_files) if p is not None]
    if text_file is None:
        if not in_files:
            raise LlamatoolError("imatrix needs a text (-f FILE) or files to combine (--in-file)")
        _log(f"imatrix: no text; combining {len(in_files)} file(s) into {out_file}")
        _save(m, out_file, output_format, force, inputs)
        return
    if model_path is None:
        raise LlamatoolError("imatrix needs a model: -m MODEL")
    from .model import Model

    text = _read_text(text_file)
    model = Model.load(model_path, n_ctx=n_ctx, n_threads=n_threads)
    m.check_against(_matrix_widths(model), str(model_path), ", ".join(map(str, in_files)))
    tokens = tokenize_text(model, text)
    if len(tokens) < 2 * n_ctx:
        raise LlamatoolError(f"you need at least {2 * n_ctx} tokens for a context of {n_ctx}; {text_file} tokenizes to only {len(tokens)}")
    n_max = len(tokens) // n_ctx
    n = n_max if n_chunks < 0 else min(n_chunks, n_max)
    if n < 1:
        raise LlamatoolError("--chunks must be at least 1")
    _log(f"imatrix: computing over {n} chunks, n_ctx={n_ctx}")
    started = time.perf_counter()

    def show(i: int, total: int, ppl: float) -> None:
        print(f"[{i}]{ppl:.4f},", end="", flush=True)
        _progress(i, total, started)

    m.datasets.append(str(text_file))
    result = collect(model, tokens, n_ctx, n, m, process_output, on_chunk=show)
    print()
    print(f"Final estimate: PPL = {result.ppl:.4f} +/- {result.ppl_error:.5f}", flush=True)
    _save(m, out_file, output_format, force, inputs)
    _log(f"imatrix: {len(m.entries)} matrices, {m.chunk_count} chunks of {n_ctx}, saved to {out_file}")


def _save(m: Imatrix, out_file: Path, output_format: str, force: bool, inputs) -> None:
    if output_format == "dat":
        write_dat(m, out_file, force=force, inputs=inputs)
    else:
        write_gguf(m, out_file, force=force, inputs=inputs)
