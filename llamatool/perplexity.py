"""`llamatool perplexity`: quality measured the way llama-perplexity measures it.

The text is tokenized once (with BOS if the model adds one) and cut into chunks of
n_ctx tokens. Each chunk is evaluated from an empty KV cache, its first token
replaced by BOS when the model uses one, and only the second half is scored: the
logits at positions first..n_ctx-2 (first = n_ctx/2) predict the tokens after them, so
every scored token has at least n_ctx/2 tokens of context. PPL = exp(mean NLL), and
its ± is the standard error propagated through exp, as llama.cpp reports it.

KL divergence, as llama-perplexity's --kl-divergence-base / --kl-divergence: a
reference model's run saves, for every scored position, its log-probabilities over
the whole vocabulary quantized to 16 bits (llama.cpp's own file layout, so files are
interchangeable); a second model's run over the same tokens reports the mean KL
divergence from the reference, how often both pick the same top token, the change in
the probability of the right token (Δp), and the PPL ratio and difference.
"""

from __future__ import annotations

import math
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import LlamatoolError

LOGITS_MAGIC = b"_logits_"


@dataclass
class PerplexityResult:
    ppl: float
    ppl_error: float
    n_chunks: int
    n_ctx: int
    n_scored: int
    chunk_ppl: list[float] = field(default_factory=list)  # running estimate after each chunk
    seconds: float = 0.0


def _row_stats(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: max logit (float32) and log(sum(exp(logit - max))) (float64)."""
    max_logit = logits.max(axis=1)
    sum_exp = np.exp((logits - max_logit[:, None]).astype(np.float64)).sum(axis=1)
    return max_logit, np.log(sum_exp)


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each target under the softmax of its row of logits."""
    max_logit, log_sum_exp = _row_stats(logits)
    picked = logits[np.arange(len(targets)), targets].astype(np.float64)
    return max_logit.astype(np.float64) + log_sum_exp - picked


def _mean_and_error(total: float, total_sq: float, count: int) -> tuple[float, float]:
    """Mean and its standard error (llama.cpp's mean_and_uncertainty)."""
    if count < 1:
        return 0.0, 0.0
    m = total / count
    var = total_sq / count - m * m
    return m, (math.sqrt(var / (count - 1)) if var > 0 and count > 1 else 0.0)


# --- evaluation of chunks --------------------------------------------------------------


def tokenize_text(model, text: str) -> list[int]:
    return model.tokenizer.encode(text, add_special=True, parse_special=False)


def chunk_logits(model, tokens: Sequence[int], first: int, n_batch: int) -> np.ndarray:
    """Logits of positions first..len-2 of one chunk, evaluated from an empty cache."""
    tok = model.tokenizer
    chunk = list(tokens)
    if getattr(tok, "add_bos", False) and tok.bos_id is not None:
        chunk[0] = tok.bos_id
    model.reset()
    rows = []
    for start in range(0, len(chunk), n_batch):
        batch = chunk[start : start + n_batch]
        if start + len(batch) <= first:
            model.eval(batch)
            continue
        logits = model.eval(batch, all_logits=True)
        lo = max(first - start, 0)
        rows.append(np.asarray(logits[lo:], dtype=np.float32))
    logits = np.concatenate(rows) if len(rows) > 1 else rows[0]
    return logits[: len(chunk) - 1 - first]


def _check_tokens(tokens: Sequence[int], n_ctx: int) -> int:
    if n_ctx < 8:
        raise LlamatoolError(f"context size {n_ctx} is too small for perplexity (use -c 8 or more)")
    if len(tokens) < 2 * n_ctx:
        raise LlamatoolError(
            f"the text tokenizes to {len(tokens)} tokens; perplexity with a context of {n_ctx} needs at least {2 * n_ctx}"
        )
    return len(tokens) // n_ctx


def perplexity(
    model,
    tokens: Sequence[int],
    n_ctx: int = 512,
    n_chunks: int = -1,
    n_batch: int = 2048,
    on_chunk: Callable[[int, float], None] | None = None,
    logits_out=None,
) -> PerplexityResult:
    """llama-perplexity's algorithm; with logits_out (a binary file) also writes a KLD base file."""
    n_max = _check_tokens(tokens, n_ctx)
    n = n_max if n_chunks is None or n_chunks < 0 else min(n_chunks, n_max)
    if n < 1:
        raise LlamatoolError("--chunks must be at least 1")
    first = n_ctx // 2
    tokens = np.asarray(tokens, dtype=np.int32)
    if logits_out is not None:
        write_logits_header(logits_out, n_ctx, model.tokenizer.n_vocab, n, tokens[: n * n_ctx])
    total = total_sq = 0.0
    count = 0
    result = PerplexityResult(0.0, 0.0, n, n_ctx, 0)
    t0 = time.perf_counter()
    for i in range(n):
        chunk = tokens[i * n_ctx : (i + 1) * n_ctx]
        logits = chunk_logits(model, chunk.tolist(), first, n_batch)
        targets = chunk[first + 1 :]
        nll = token_nll(logits, targets)
        total += float(nll.sum())
        total_sq += float((nll * nll).sum())
        count += len(nll)
        if logits_out is not None:
            logits_out.write(quantize_log_probs(logits).tobytes())
        estimate = math.exp(total / count)
        result.chunk_ppl.append(estimate)
        if on_chunk:
            on_chunk(i + 1, estimate)
    m, err = _mean_and_error(total, total_sq, count)
    result.ppl = math.exp(m)
    result.ppl_error = err * result.ppl
    result.n_scored = count
    result.seconds = time.perf_counter() - t0
    return result


# --- the KL-divergence base file (llama.cpp's layout) ------------------------------------
#   "_logits_" | u32 n_ctx | i32 n_vocab | i32 n_chunk | i32 tokens[n_chunk * n_ctx]
#   then per chunk, per scored position (n_ctx - 1 - n_ctx/2 of them): nv uint16, where
#   nv = 2 * ((n_vocab + 1) / 2) + 4: two float32 (scale, min_log_prob) then the n_vocab
#   log-probabilities as round((logit - min_logit) / scale), min_logit >= max_logit - 16.


def _row_width(n_vocab: int) -> int:
    return 2 * ((n_vocab + 1) // 2) + 4


def write_logits_header(f, n_ctx: int, n_vocab: int, n_chunk: int, tokens: np.ndarray) -> None:
    f.write(LOGITS_MAGIC + struct.pack("<Iii", n_ctx, n_vocab, n_chunk))
    f.write(np.asarray(tokens, dtype="<i4").tobytes())


def quantize_log_probs(logits: np.ndarray) -> np.ndarray:
    """Rows of logits -> uint16 rows of width nv, in llama.cpp's float32 arithmetic."""
    logits = np.asarray(logits, dtype=np.float32)
    rows, n_vocab = logits.shape
    max_logit = logits.max(axis=1)
    min_logit = np.maximum(logits.min(axis=1), max_logit - np.float32(16))
    sum_exp = np.exp(logits - max_logit[:, None]).astype(np.float64).sum(axis=1)
    log_sum_exp = np.log(sum_exp).astype(np.float32)
    min_log_prob = (min_logit - max_logit - log_sum_exp).astype(np.float32)
    scale = ((max_logit - min_logit) / np.float32(65535)).astype(np.float32)
    out = np.zeros((rows, _row_width(n_vocab)), dtype=np.uint16)
    head = np.stack([scale, min_log_prob], axis=1).astype("<f4")
    out[:, :4] = head.view(np.uint16)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(scale != 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    q = np.rint(inv_scale[:, None] * (logits - min_logit[:, None]))
    q = np.where(logits > min_logit[:, None], q, 0)
    out[:, 4 : 4 + n_vocab] = np.clip(q, 0, 65535).astype(np.uint16)
    return out


@dataclass
class LogitsFile:
    """A KLD base file, validated against its own size before anything is trusted."""

    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray
    log_probs: np.ndarray  # uint16 (n_chunk, n_ctx - 1 - n_ctx/2, nv), memory-mapped

    @classmethod
    def open(cls, path: str | Path) -> "LogitsFile":
        path = Path(path)
        if not path.is_file():
            raise LlamatoolError(f"{path}: no such file")
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(20)
        if len(head) < 20 or head[:8] != LOGITS_MAGIC:
            raise LlamatoolError(f"{path}: does not look like a file of log-probabilities (llama-perplexity --kl-divergence-base)")
        n_ctx, n_vocab, n_chunk = struct.unpack("<Iii", head[8:20])
        if n_ctx < 8 or n_vocab < 1 or n_chunk < 1:
            raise LlamatoolError(f"{path}: invalid header (n_ctx={n_ctx}, n_vocab={n_vocab}, n_chunk={n_chunk})")
        n_rows = n_ctx - 1 - n_ctx // 2
        expected = 20 + 4 * n_ctx * n_chunk + 2 * n_chunk * n_rows * _row_width(n_vocab)
        if size != expected:
            raise LlamatoolError(f"{path}: {size} bytes, but its header describes {expected} (truncated or corrupt)")
        tokens = np.memmap(path, dtype="<i4", mode="r", offset=20, shape=(n_chunk * n_ctx,))
        log_probs = np.memmap(
            path, dtype="<u2", mode="r", offset=20 + 4 * n_ctx * n_chunk, shape=(n_chunk, n_rows, _row_width(n_vocab))
        )
        if tokens.size and (tokens.min() < 0 or tokens.max() >= n_vocab):
            raise LlamatoolError(f"{path}: token ids outside the vocabulary of {n_vocab}")
        return cls(n_ctx, n_vocab, n_chunk, np.asarray(tokens), log_probs)


@dataclass
class KLDStats:
    """Running sums of llama.cpp's kl_divergence_result, plus the per-token values."""

    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    n_same_top: int = 0
    count: int = 0
    kld_values: list = field(default_factory=list)
    p_diff_values: list = field(default_factory=list)

    def add(self, logits: np.ndarray, base_rows: np.ndarray, targets: np.ndarray) -> None:
        logits = np.asarray(logits, dtype=np.float32)
        n_vocab = logits.shape[1]
        head = np.ascontiguousarray(base_rows[:, :4]).view("<f4")
        scale, min_log_prob = head[:, 0], head[:, 1]
        log_p_base = scale[:, None] * base_rows[:, 4 : 4 + n_vocab].astype(np.float32) + min_log_prob[:, None]
        max_logit, log_sum_exp = _row_stats(logits)
        log_p = logits.astype(np.float64) - (max_logit.astype(np.float64) + log_sum_exp)[:, None]
        rows = np.arange(len(targets))
        nll = -log_p[rows, targets]
        nll_base = -log_p_base[rows, targets].astype(np.float64)
        keep = log_p_base > -16.0
        p_base = np.where(keep, np.exp(log_p_base.astype(np.float64)), 0.0)
        kld = (p_base * np.where(keep, log_p_base - log_p, 0.0)).sum(axis=1)
        p_diff = np.exp(-nll) - np.exp(-nll_base)
        self.sum_nll += nll.sum()
        self.sum_nll2 += (nll * nll).sum()
        self.sum_nll_base += nll_base.sum()
        self.sum_nll_base2 += (nll_base * nll_base).sum()
        self.sum_nll_nll_base += (nll * nll_base).sum()
        self.sum_kld += kld.sum()
        self.sum_kld2 += (kld * kld).sum()
        self.sum_p_diff += p_diff.sum()
        self.sum_p_diff2 += (p_diff**2).sum()
        self.sum_p_diff4 += (p_diff**4).sum()
        self.n_same_top += int((logits.argmax(axis=1) == log_p_base.argmax(axis=1)).sum())
        self.count += len(targets)
        self.kld_values.extend(kld.tolist())
        self.p_diff_values.extend(p_diff.tolist())

    # derived figures, as llama-perplexity prints them
    def ppl(self) -> tuple[float, float]:
        m, e = _mean_and_error(self.sum_nll, self.sum_nll2, self.count)
        return math.exp(m), math.exp(m) * e

    def ppl_base(self) -> tuple[float, float]:
        m, e = _mean_and_error(self.sum_nll_base, self.sum_nll_base2, self.count)
        return math.exp(m), math.exp(m) * e

    def _cov(self) -> float:
        n = self.count
        if n < 10:
            return 0.0
        return (self.sum_nll_nll_base / n - (self.sum_nll / n) * (self.sum_nll_base / n)) / (n - 1)

    def log_ppl_ratio(self) -> tuple[float, float]:
        a, ea = _mean_and_error(self.sum_nll, self.sum_nll2, self.count)
        b, eb = _mean_and_error(self.sum_nll_base, self.sum_nll_base2, self.count)
        return a - b, math.sqrt(max(ea * ea + eb * eb - 2 * self._cov(), 0.0))

    def ppl_diff(self) -> tuple[float, float]:
        (p, ep), (pb, epb) = self.ppl(), self.ppl_base()
        cov = p * pb * self._cov()
        return p - pb, math.sqrt(max(ep * ep + epb * epb - 2 * cov, 0.0))

    def kld(self) -> tuple[float, float]:
        m, e = _mean_and_error(self.sum_kld, self.sum_kld2, self.count)
        return m, (e if self.count > 10 else 0.0)

    def same_top(self) -> tuple[float, float]:
        p = self.n_same_top / self.count if self.count else 0.0
        return p, (math.sqrt(p * (1 - p) / (self.count - 1)) if self.count > 1 else 0.0)

    def p_diff_rms(self) -> tuple[float, float]:
        m, e = _mean_and_error(self.sum_p_diff2, self.sum_p_diff4, self.count)
        rms = math.sqrt(max(m, 0.0))
        return rms, (0.5 / rms * e if rms > 0 else 0.0)

    def percentile(self, values: list, fraction: float) -> float:
        v = sorted(values)
        if fraction <= 0:
            return v[0]
        if fraction >= 1:
            return v[-1]
        p = fraction * (len(v) - 1)
        i = int(p)
        p -= i
        return (1 - p) * v[i] + p * v[min(i + 1, len(v) - 1)]


def kl_divergence(
    model,
    base: LogitsFile,
    n_chunks: int = -1,
    n_batch: int = 2048,
    on_chunk: Callable[[int, KLDStats], None] | None = None,
) -> KLDStats:
    """Compare `model` with the reference log-probabilities of `base` over the same tokens."""
    if base.n_vocab != model.tokenizer.n_vocab:
        raise LlamatoolError(f"inconsistent vocabulary: the base file has {base.n_vocab} tokens, the model {model.tokenizer.n_vocab}")
    if base.n_ctx > model.n_ctx:
        raise LlamatoolError(f"the base file was computed with a context of {base.n_ctx}; load the model with -c {base.n_ctx} or more")
    n = base.n_chunk if n_chunks is None or n_chunks < 0 else min(n_chunks, base.n_chunk)
    first = base.n_ctx // 2
    stats = KLDStats()
    for i in range(n):
        chunk = base.tokens[i * base.n_ctx : (i + 1) * base.n_ctx]
        logits = chunk_logits(model, chunk.tolist(), first, n_batch)
        stats.add(logits, np.asarray(base.log_probs[i]), chunk[first + 1 :])
        if on_chunk:
            on_chunk(i + 1, stats)
    return stats


# --- the command ------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise LlamatoolError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LlamatoolError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def format_kld_report(stats: KLDStats) -> str:
    """The final statistics blocks of llama-perplexity --kl-divergence."""
    out = []
    p, pe = stats.ppl()
    pb, pbe = stats.ppl_base()
    lr, lre = stats.log_ppl_ratio()
    d, de = stats.ppl_diff()
    k, ke = stats.kld()
    st, ste = stats.same_top()
    rms, rmse = stats.p_diff_rms()
    out.append("====== Perplexity statistics ======")
    out.append(f"Mean PPL(Q)                   : {p:10.6f} ± {pe:10.6f}")
    out.append(f"Mean PPL(base)                : {pb:10.6f} ± {pbe:10.6f}")
    out.append(f"Mean ln(PPL(Q)/PPL(base))     : {lr:10.6f} ± {lre:10.6f}")
    out.append(f"Mean PPL(Q)/PPL(base)         : {math.exp(lr):10.6f} ± {math.exp(lr) * lre:10.6f}")
    out.append(f"Mean PPL(Q)-PPL(base)         : {d:10.6f} ± {de:10.6f}")
    out.append("")
    out.append("====== KL divergence statistics ======")
    out.append(f"Mean    KLD: {k:10.6f} ± {ke:10.6f}")
    if stats.kld_values:
        for label, frac in [("Maximum", 1.0), ("99.9%  ", 0.999), ("99.0%  ", 0.99), ("95.0%  ", 0.95), ("Median ", 0.5), ("Minimum", 0.0)]:
            out.append(f"{label} KLD: {stats.percentile(stats.kld_values, frac):10.6f}")
    out.append("")
    out.append("====== Token probability statistics ======")
    pd, pde = _mean_and_error(stats.sum_p_diff, stats.sum_p_diff2, stats.count)
    out.append(f"Mean    Δp: {100 * pd:6.3f} ± {100 * pde:5.3f} %")
    out.append(f"RMS Δp    : {100 * rms:6.3f} ± {100 * rmse:5.3f} %")
    out.append(f"Same top p: {100 * st:6.3f} ± {100 * ste:5.3f} %")
    return "\n".join(out) + "\n"


def perplexity_command(
    model_path: Path,
    text_file: Path | None,
    n_ctx: int = 512,
    n_chunks: int = -1,
    n_batch: int = 2048,
    n_threads: int | None = None,
    kld_base: Path | None = None,
    kld: bool = False,
    force: bool = False,
    lora=(),
) -> None:
    from .fileio import atomic_output
    from .model import Model

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if kld:
        if kld_base is None:
            raise LlamatoolError("--kl-divergence needs --kl-divergence-base FILE (the reference model's saved log-probabilities)")
        base = LogitsFile.open(kld_base)
        model = Model.load(model_path, n_ctx=base.n_ctx, n_threads=n_threads, lora=lora)
        log(f"kl-divergence: {base.n_chunk} chunks of {base.n_ctx} tokens from {kld_base}")
        print("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p")

        def show(i: int, s: KLDStats) -> None:
            p, pe = s.ppl()
            lr, lre = s.log_ppl_ratio()
            k, ke = s.kld()
            rms, rmse = s.p_diff_rms()
            st, ste = s.same_top()
            print(
                f"{i:4d}    {p:9.4f} ± {pe:9.4f}    {lr:10.5f} ± {lre:10.5f}    {k:10.5f} ± {ke:10.5f}"
                f"    {100 * rms:6.3f} ± {100 * rmse:6.3f} %    {100 * st:6.3f} ± {100 * ste:6.3f} %",
                flush=True,
            )

        stats = kl_divergence(model, base, n_chunks=n_chunks, n_batch=n_batch, on_chunk=show)
        print()
        sys.stdout.write(format_kld_report(stats))
        return

    if text_file is None:
        raise LlamatoolError("perplexity needs a text: -f FILE")
    text = _read_text(text_file)
    model = Model.load(model_path, n_ctx=n_ctx, n_threads=n_threads, lora=lora)
    tokens = tokenize_text(model, text)
    _check_tokens(tokens, n_ctx)
    n_available = len(tokens) // n_ctx
    n_run = n_available if n_chunks < 0 else min(n_chunks, n_available)
    log(f"perplexity: {len(tokens)} tokens; calculating perplexity over {n_run} of {n_available} chunks, n_ctx={n_ctx}")
    started = time.perf_counter()

    def show(i: int, estimate: float) -> None:
        if i == 1:  # llama-perplexity's estimate of the whole run, from the first chunk
            per_chunk = time.perf_counter() - started
            log(f"perplexity: {per_chunk:.2f} seconds per pass - ETA {per_chunk * (n_run - 1) / 60:.2f} minutes")
        print(f"[{i}]{estimate:.4f},", end="", flush=True)

    if kld_base is not None:
        with atomic_output(kld_base, force=force, inputs=[model_path, text_file]) as f:
            result = perplexity(model, tokens, n_ctx, n_chunks, n_batch, on_chunk=show, logits_out=f)
    else:
        result = perplexity(model, tokens, n_ctx, n_chunks, n_batch, on_chunk=show)
    print()
    print(f"Final estimate: PPL = {result.ppl:.4f} +/- {result.ppl_error:.5f}", flush=True)
    if kld_base is not None:
        log(f"saved log-probabilities of {result.n_chunks} chunks to {kld_base}")
    log(
        f"perplexity: {result.n_chunks} chunks, {result.n_scored} scored tokens, {result.seconds:.2f} s "
        f"({result.n_chunks * n_ctx / max(result.seconds, 1e-9):.1f} tokens/s evaluated)"
    )
