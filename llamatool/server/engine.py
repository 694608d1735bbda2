"""Slots and the scheduler: one worker thread owns the model and serves every request.

The model is used by one thread only (its forward pass already spreads each call over all
cores). The server has -np slots; each slot has its own KV cache, kept after its request
ends, so the next request that starts with the same tokens (a chat's history, a shared
system prompt) evaluates only what is new. A request goes to the free slot whose cache
shares the longest prefix with its prompt (else the one idle longest); beyond the slots,
requests wait in a queue, first come first served.

Scheduling: the worker steps every busy slot in turn, one forward call each (a prompt
block of CACHE_BLOCK tokens, or one new token), through the single-sequence forward pass.
Each slot's tokens depend only on its own cache, its sampler and the fixed way prompts are
cut into blocks (see Slot), so a greedy request gives the same tokens alone or beside
others, with its prompt cached or not, at any -np. (Not yet continuous batching: the
forward pass takes one sequence per call, so slots take turns rather than share a call.)

A request is a Job: the HTTP side submits it and reads its events (Delta, Finished,
Failed) from an asyncio queue; setting job.cancelled (a client that went away, shutdown)
frees its slot at the worker's next step.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import LlamatoolError
from ..sampling import Sampler, SamplingParams
from .errors import APIError, bad_request, server_error, unavailable
from .stops import StopFilter

MAX_WAITING = 512  # requests queued beyond the slots before the server answers 503
CACHE_BLOCK = 64  # prompt tokens per forward call while reading a prompt (see Slot)


# --- what flows from the worker to a request ----------------------------------------------------


@dataclass
class Delta:
    text: str
    logprobs: list[dict]  # one entry per token whose text this delta completes (when asked for)


@dataclass
class Finished:
    reason: str  # "stop" or "length" (OpenAI's finish_reason)
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass
class Failed:
    error: APIError


@dataclass
class Job:
    prompt_ids: list[int]
    max_tokens: int  # -1: until end of generation or a full context
    sampling: SamplingParams
    emit: Callable[[object], None]  # delivers an event to the request (thread-safe)
    stops: list[str] = field(default_factory=list)
    top_logprobs: int | None = None  # None: no logprobs; else how many alternatives per token
    constraint: object | None = None  # grammar.Constraint
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    _ended: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def cancel(self) -> None:
        self.cancelled = True

    def send(self, event) -> None:
        """emit(event), unless the job has already ended (Finished or Failed): shutdown may
        fail a job while the worker is still finishing its step."""
        with self._lock:
            if self._ended:
                return
            self._ended = isinstance(event, (Finished, Failed))
            self.emit(event)


# --- one request's sampling: grammar mask, log-probabilities --------------------------------------


def logprob_entry(tokenizer, logprobs: np.ndarray, token: int, n_top: int) -> dict:
    """OpenAI's per-token logprobs entry (token text, its log-probability, the n_top best)."""

    def item(t: int) -> dict:
        piece = tokenizer.token_to_piece(int(t), special=False)
        return {"token": piece.decode("utf-8", "replace"), "logprob": float(logprobs[t]), "bytes": list(piece)}

    top = np.argpartition(-logprobs, n_top)[:n_top] if 0 < n_top < logprobs.size else np.arange(min(n_top, logprobs.size))
    top = top[np.argsort(-logprobs[top], kind="stable")]
    return {**item(token), "top_logprobs": [item(t) for t in top]}


class JobSampler:
    """Sampler(logits, history) for one job: masks what the grammar forbids, then samples
    with the job's chain; records each token's log-probability under the model."""

    def __init__(self, job: Job, tokenizer):
        self.job = job
        self.tokenizer = tokenizer
        self.inner = Sampler(job.sampling)
        self.entries: list[dict] = []

    def __call__(self, logits: np.ndarray, history) -> int:
        c = self.job.constraint
        token = self.inner(c.mask(logits) if c is not None else logits, history)
        if c is not None:
            c.accept(token)
        if self.job.top_logprobs is not None:
            x = logits.astype(np.float64)
            x -= x.max()
            logprobs = x - np.log(np.exp(x).sum())
            self.entries.append(logprob_entry(self.tokenizer, logprobs, token, self.job.top_logprobs))
        return token


# --- slots -------------------------------------------------------------------------------------


class Slot:
    """A KV cache and the request using it. A prompt is read in CACHE_BLOCK-token blocks
    aligned to absolute positions (one block per scheduler step), then its last, partial
    block and the generation go through llamatool.generate.Generation.

    Why aligned blocks: a token's keys and values depend, in their last bits, on how many
    tokens the forward call held (the prompt path's matrix products are not bit-identical to
    the one-token path's, nor across batch sizes). Reading every prompt in the same blocks,
    and reusing only whole blocks that were read that way, makes a cached prompt give
    exactly the tokens an uncached one gives."""

    def __init__(self, index: int, cache):
        self.index = index
        self.cache = cache
        self.canonical = 0  # leading cache positions read as aligned whole blocks (reusable)
        self.job: Job | None = None
        self.last_used = 0.0
        self._gen = None
        self._tokens = None
        self._sampler: JobSampler | None = None
        self._stop: StopFilter | None = None
        self._pieces: list[str] = []
        self.reused = 0  # prompt tokens of the current job taken from the cache
        self._read_to = 0  # prompt position the block reading has reached
        self._blocks_end = 0  # where block reading ends and Generation takes over
        self.generated = 0  # tokens sampled for the current job
        self.sent_tokens = 0  # of which the text has been sent

    def common_prefix(self, ids: list[int]) -> int:
        n = 0
        for a, b in zip(self.cache.history[: self.canonical], ids):
            if a != b:
                break
            n += 1
        return n

    def assign(self, job: Job, model) -> None:
        """Take job; model's cache is this slot's (the caller swapped it in)."""
        self.job = job
        self._sampler = JobSampler(job, model.tokenizer)
        self._stop = StopFilter(job.stops)
        self._pieces, self.generated, self.sent_tokens = [], 0, 0
        self._blocks_end = CACHE_BLOCK * ((len(job.prompt_ids) - 1) // CACHE_BLOCK)
        self.reused = self._read_to = min(self.common_prefix(job.prompt_ids), self._blocks_end) // CACHE_BLOCK * CACHE_BLOCK
        model.truncate(self.reused)
        self.canonical = self.reused

    def advance(self, model) -> bool:
        """One step: read a prompt block, or sample one token. False once generation has
        ended (then .result_reason says why)."""
        if self._read_to < self._blocks_end:
            end = self._read_to + CACHE_BLOCK
            model.eval(self.job.prompt_ids[self._read_to:end])
            self._read_to = self.canonical = end
            return True
        if self._tokens is None:
            from ..generate import Generation

            self._gen = Generation(model, self.job.prompt_ids, max_tokens=self.job.max_tokens,
                                   on_text=self._pieces.append, sampler=self._sampler)
            self._tokens = iter(self._gen)
        try:
            next(self._tokens)
        except StopIteration:
            return False
        self.generated += 1
        return True

    @property
    def result_reason(self) -> str:
        result = self._gen.result if self._gen is not None else None
        return "stop" if result is not None and result.stop_reason == "eog" else "length"

    def clear(self) -> None:
        if self._tokens is not None:
            self._tokens.close()
        self.job = self._gen = self._tokens = self._sampler = self._stop = None
        self.last_used = time.perf_counter()


class Engine:
    """The worker thread, its slots and the queue (see the module docstring)."""

    def __init__(self, model, n_slots: int, metrics=None):
        self.model = model
        self.tokenizer = model.tokenizer
        self.metrics = metrics
        # each slot its own cache; the model's own one stays installed between steps (embeddings use it)
        self.slots = [Slot(i, model.new_cache()) for i in range(n_slots)]
        self._waiting: deque[Job] = deque()
        self._calls: deque[tuple[Callable, Future]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="llamatool-engine", daemon=True)

    # -- the HTTP side ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise unavailable("the server is shutting down")
            if len(self._waiting) >= MAX_WAITING:
                raise unavailable(f"too many requests waiting ({MAX_WAITING}); try again later")
            self._waiting.append(job)
            self._cond.notify()

    def call(self, fn: Callable) -> Future:
        """Run fn(model) on the worker between steps (embeddings), in the model's own cache:
        the slots' caches are not touched."""
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise unavailable("the server is shutting down")
            self._calls.append((fn, future))
            self._cond.notify()
        return future

    def stop(self) -> None:
        """Cancel every request (running or waiting) and wait for the worker to end."""
        self.stop_accepting()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    def stop_accepting(self) -> None:
        """Refuse new requests, cancel every one in flight (their streams end), and tell the
        worker to end; does not wait (safe in a signal handler: the lock is re-entrant)."""
        with self._cond:
            self._stopping = True
            for job in list(self._waiting) + [s.job for s in self.slots if s.job is not None]:
                job.cancel()
                job.send(Failed(unavailable("the server is shutting down")))
            self._waiting.clear()
            self._cond.notify()

    @property
    def busy_slots(self) -> int:
        return sum(s.job is not None for s in self.slots)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- the worker -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._calls and not self.busy_slots:
                    self._cond.wait()
                if self._stopping:
                    break
                calls = list(self._calls)
                self._calls.clear()
                self._admit()
            for fn, future in calls:
                self._run_call(fn, future)
            for slot in self.slots:
                if slot.job is not None:
                    self._step(slot)
        for slot in self.slots:
            if slot.job is not None:
                slot.clear()
        for _, future in self._calls:
            future.set_exception(unavailable("the server is shutting down"))

    def _admit(self) -> None:
        """Move waiting jobs into free slots (called with the lock held)."""
        while self._waiting:
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            job = self._waiting.popleft()
            if job.cancelled:
                continue
            best = max(free, key=lambda s: (s.common_prefix(job.prompt_ids), -s.last_used))
            with self._using(best):
                best.assign(job, self.model)

    def _using(self, slot: Slot):
        return _CacheSwap(self.model, slot)

    def _run_call(self, fn: Callable, future: Future) -> None:
        try:
            future.set_result(fn(self.model))
        except BaseException as e:  # the caller turns it into an HTTP error
            future.set_exception(e)

    def _step(self, slot: Slot) -> None:
        job = slot.job
        if job.cancelled:
            self._count("requests_cancelled")
            slot.clear()
            return
        generated = slot.generated
        try:
            with self._using(slot):
                going = slot.advance(self.model)
        except LlamatoolError as e:
            self._fail(slot, bad_request(str(e)))
            return
        except Exception as e:  # a bug must fail this request only, and be visible in the log
            traceback.print_exc(file=sys.stderr)
            self._fail(slot, server_error(f"internal error: {type(e).__name__}: {e}"))
            return
        if not going:
            self._finish(slot, slot.result_reason)
            return
        if slot.generated == generated:
            return  # a prompt block was read
        if slot.generated == 1 and self.metrics:
            self.metrics.first_token(time.perf_counter() - job.submitted)
        self._emit_text(slot)
        if slot._stop.stopped:
            self._finish(slot, "stop")

    def _emit_text(self, slot: Slot, final: bool = False) -> None:
        """Send the text made so far (minus what a stop string may still claim), with the
        log-probabilities of the tokens it completes."""
        text = "".join(slot._pieces)
        slot._pieces.clear()
        out = slot._stop.push(text)
        if final:
            out += slot._stop.flush()
        if out:
            n = slot.generated - slot.sent_tokens
            entries = slot._sampler.entries
            slot.job.send(Delta(out, entries[:n]))
            del entries[:n]
            slot.sent_tokens = slot.generated

    def _finish(self, slot: Slot, reason: str) -> None:
        job = slot.job
        self._emit_text(slot, final=True)
        cached = slot.reused
        completion = slot.generated
        if self.metrics:
            self.metrics.finished(len(job.prompt_ids) - cached, cached, completion, time.perf_counter() - job.submitted)
        job.send(Finished("stop" if slot._stop.stopped else reason, len(job.prompt_ids), completion, cached))
        slot.clear()

    def _fail(self, slot: Slot, error: APIError) -> None:
        self._count("requests_failed")
        slot.job.send(Failed(error))
        slot.clear()

    def _count(self, name: str) -> None:
        if self.metrics:
            self.metrics.count(name)


class _CacheSwap:
    """with: the model evaluates into slot's cache (the model's own one is put back after)."""

    def __init__(self, model, slot: Slot):
        self.model, self.slot = model, slot

    def __enter__(self):
        self._outer = self.model.select_cache(self.slot.cache)

    def __exit__(self, *exc):
        self.slot.cache = self.model.select_cache(self._outer)
        return False
