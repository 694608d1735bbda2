"""Slots and the scheduler: one worker thread owns the model and serves every request.

The model is used by one thread only (its forward pass already spreads each call over all
cores). The server has -np slots; each slot has its own KV cache, kept after its request
ends, so the next request that starts with the same tokens (a chat's history, a shared
system prompt) evaluates only what is new. A request goes to the free slot whose cache
shares the longest prefix with its prompt (else the one idle longest); beyond the slots,
requests wait in a queue, first come first served.

Scheduling (continuous batching): each step of the worker is one forward call over every
busy slot: the next token of each slot that is generating, then prompt pieces of slots
still reading theirs as long as the call has room (Model.eval_many). The weights are read
once per step, whatever the number of slots. A slot's tokens depend only on its own cache,
its sampler and the fixed way prompts are cut into blocks (see Slot), never on the other
slots in the call, so a greedy request gives the same tokens alone or beside others, with
its prompt cached or not, at any -np.

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


def last_piece_start(n_prompt: int, min_fast: int) -> int:
    """Where the last piece of an n_prompt-token prompt starts: after its whole
    CACHE_BLOCK-token blocks, but leaving the piece at least min_fast tokens (the fast
    products' minimum) unless the prompt itself is shorter."""
    start = CACHE_BLOCK * ((n_prompt - 1) // CACHE_BLOCK)
    return start - CACHE_BLOCK if 0 < n_prompt - start < min_fast and start > 0 else start


class Slot:
    """A KV cache (one sequence of the engine's CachePool) and the request using it.

    A request goes through three kinds of step: its prompt's whole CACHE_BLOCK-token blocks,
    aligned to absolute positions; the last piece of the prompt (its last token gives the
    first logits); then one token per step. Prompt pieces of gemm.MIN_TOKENS tokens or more
    take the fast products for many tokens, whose bits for a token do not depend on the
    other tokens in the call; shorter prompts and generated tokens take the one-token
    products (Model.eval_many's exact parts), whose bits do not either.

    Reuse: a slot keeps the whole aligned blocks it read (`canonical`); a later prompt that
    starts with them reads only the rest, with the bits it would give them anyway, so a
    cached prompt gives exactly the tokens an uncached one gives.

    A repacked model (Model.split_invariant) gives a token the same bits however the tokens
    are cut into calls: then the prompt is read in CACHE_BLOCK pieces from wherever the
    cache stops matching, and everything the cache holds is reusable (a shared system
    prompt, the history of a chat), up to the prompt's last token, which gives the logits."""

    def __init__(self, index: int, cache, any_split: bool = False):
        self.index = index
        self.cache = cache  # model.CacheState
        self.any_split = any_split  # the model's split_invariant
        self.canonical = 0  # leading cache positions read as aligned whole blocks (reusable)
        self.job: Job | None = None
        self.last_used = 0.0
        self.reused = 0  # prompt tokens of the current job taken from the cache
        self.generated = 0  # tokens sampled for the current job
        self.stopped_by: str | None = None  # "stop" or "length" once generation has ended

    def common_prefix(self, ids: list[int]) -> int:
        n = 0
        reusable = self.cache.n_past if self.any_split else self.canonical
        for a, b in zip(self.cache.history[:reusable], ids):
            if a != b:
                break
            n += 1
        return n

    def assign(self, job: Job, tokenizer, n_ctx: int, min_fast: int) -> None:
        self.job = job
        self.sampler = JobSampler(job, tokenizer)
        self.stop = StopFilter(job.stops)
        self.decoder = tokenizer.incremental_decoder(skip_special=True)
        self.eog = tokenizer.eog_ids
        self.n_ctx = n_ctx
        self.generated, self.stopped_by, self._next = 0, None, None
        self.pending = ""  # text decoded and not yet through the stop filter
        self.decoded = self.sent = 0  # characters decoded so far, and sent
        self.token_ends: list[int] = []  # per token whose log-probability is not sent: where its text ends
        self.min_fast = min_fast
        if self.any_split:
            self._blocks_end = 0
            self.reused = self._read_to = min(self.common_prefix(job.prompt_ids), len(job.prompt_ids) - 1)
        else:
            self._blocks_end = last_piece_start(len(job.prompt_ids), min_fast)
            self.reused = self._read_to = min(self.common_prefix(job.prompt_ids), self._blocks_end) // CACHE_BLOCK * CACHE_BLOCK
        self.cache.truncate(self.reused)
        self.canonical = self.reused

    @property
    def reading(self) -> bool:
        """Still reading its prompt."""
        return self._read_to < len(self.job.prompt_ids)

    def part(self, budget: int):
        """This slot's tokens for the next forward call (a model.Part), None if they do not
        fit in budget tokens."""
        from ..model import Part

        ids = self.job.prompt_ids
        if self._read_to < self._blocks_end:
            return Part(self.cache, ids[self._read_to:self._read_to + CACHE_BLOCK], exact=False, logits=False) \
                if budget >= CACHE_BLOCK else None
        if not self.reading:
            return Part(self.cache, [self._next]) if budget >= 1 else None
        rest = ids[self._read_to:]
        if self.any_split and len(rest) > CACHE_BLOCK:
            return Part(self.cache, rest[:CACHE_BLOCK], exact=False, logits=False) if budget >= CACHE_BLOCK else None
        return Part(self.cache, rest, exact=len(rest) < self.min_fast) if len(rest) <= budget else None

    def advance(self, logits) -> None:
        """After the forward call that evaluated part(): note a block read, or sample the
        next token from logits (sets stopped_by when generation ends)."""
        if self._read_to < self._blocks_end:
            self._read_to = self.canonical = self._read_to + CACHE_BLOCK
            return
        if self.reading:
            n = len(self.job.prompt_ids)
            if self.any_split and n - self._read_to > CACHE_BLOCK:  # a piece without logits
                self._read_to += CACHE_BLOCK
                return
            if n - self._read_to >= self.min_fast:  # read by the fast products: whole blocks in it are reusable
                self.canonical = n // CACHE_BLOCK * CACHE_BLOCK
            self._read_to = n
        limit = self.job.max_tokens
        if 0 <= limit <= self.generated:
            self._end("length")
            return
        token = self.sampler(logits, self.cache.history)
        if token in self.eog:  # not part of the completion
            if self.job.top_logprobs is not None:
                self.sampler.entries.pop()
            self._end("stop")
            return
        self.generated += 1
        self._add_text(self.decoder.add(token))
        self.token_ends.append(self.decoded)
        self._next = token
        if 0 <= limit <= self.generated or self.cache.n_past >= self.n_ctx:
            self._end("length")

    def _add_text(self, text: str) -> None:
        self.pending += text
        self.decoded += len(text)

    def _end(self, reason: str) -> None:
        self._add_text(self.decoder.flush())
        self.stopped_by = reason

    def take_text(self, final: bool = False) -> tuple[str, list[dict]]:
        """The text that may go out now (stop strings held back or cut) and the
        log-probabilities of the tokens whose text it completes (at the end: all the rest)."""
        out = self.stop.push(self.pending)
        self.pending = ""
        if final:
            out += self.stop.flush()
        if not out and not final:
            return "", []  # a token without text of its own goes out with the next text
        self.sent += len(out)
        n = len(self.token_ends) if final else sum(1 for end in self.token_ends if end <= self.sent)
        del self.token_ends[:n]
        entries = self.sampler.entries[:n]
        del self.sampler.entries[:n]
        return out, entries

    def clear(self) -> None:
        self.job = self.sampler = self.stop = self.decoder = None
        self.last_used = time.perf_counter()


class Engine:
    """The worker thread, its slots and the queue (see the module docstring)."""

    def __init__(self, model, n_slots: int, metrics=None, deliver: Callable[[], None] | None = None):
        self.model = model
        # called by the worker between steps (and by stop_accepting): the requests' side
        # delivers everything a step sent at once (app.EventPump.flush)
        self._deliver = deliver or (lambda: None)
        self.tokenizer = model.tokenizer
        self.metrics = metrics
        # each slot its own cache, all in one pool (one forward call extends them all); the
        # model's own cache is left to embeddings
        self.pool = model.new_caches(n_slots)
        any_split = model.split_invariant
        self.slots = [Slot(i, cache, any_split) for i, cache in enumerate(self.pool.states)]
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
        self._deliver()

    @property
    def busy_slots(self) -> int:
        return sum(s.job is not None for s in self.slots)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- the worker -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            # the last step's events: the event loop handles them while the next forward call
            # runs (without the GIL), not while this thread needs the GIL between calls
            self._deliver()
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
            self._step()
        for slot in self.slots:
            if slot.job is not None:
                slot.clear()
        for _, future in self._calls:
            future.set_exception(unavailable("the server is shutting down"))
        self._deliver()

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
            best.assign(job, self.tokenizer, self.model.n_ctx, self.model.min_fast_tokens)

    def _run_call(self, fn: Callable, future: Future) -> None:
        try:
            future.set_result(fn(self.model))
        except BaseException as e:  # the caller turns it into an HTTP error
            future.set_exception(e)

    def _step(self) -> None:
        """One forward call over every busy slot: the next token of those generating, then
        prompt blocks as long as the call has room (slots that have waited longest first)."""
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                self._count("requests_cancelled")
                slot.clear()
        busy = [s for s in self.slots if s.job is not None]
        busy.sort(key=lambda s: (s.reading, s.job.submitted))
        budget, planned = self.model.n_batch, []
        for slot in busy:
            part = slot.part(budget)
            if part is None:
                break
            planned.append((slot, part))
            budget -= len(part.ids)
        if not planned:
            return
        try:
            logits = iter(self.model.eval_many(self.pool, [part for _, part in planned]))
        except Exception as e:  # a bug: fail the requests of this call, keep serving
            traceback.print_exc(file=sys.stderr)
            for slot, _ in planned:
                self._fail(slot, server_error(f"internal error: {type(e).__name__}: {e}"))
            return
        for slot, part in planned:
            self._advance(slot, next(logits) if part.logits else None)

    def _advance(self, slot: Slot, logits) -> None:
        job = slot.job
        generated = slot.generated
        try:
            slot.advance(logits)
        except LlamatoolError as e:
            self._fail(slot, bad_request(str(e)))
            return
        except Exception as e:  # a bug must fail this request only, and be visible in the log
            traceback.print_exc(file=sys.stderr)
            self._fail(slot, server_error(f"internal error: {type(e).__name__}: {e}"))
            return
        if slot.generated == 1 and generated == 0 and self.metrics:
            self.metrics.first_token(time.perf_counter() - job.submitted)
        if slot.stopped_by is not None:
            self._finish(slot, slot.stopped_by)
            return
        self._emit_text(slot)
        if slot.stop.stopped:
            self._finish(slot, "stop")

    def _emit_text(self, slot: Slot, final: bool = False) -> None:
        """Send the text made so far (minus what a stop string may still claim), with the
        log-probabilities of the tokens it completes."""
        out, entries = slot.take_text(final)
        if out or entries:
            slot.job.send(Delta(out, entries))

    def _finish(self, slot: Slot, reason: str) -> None:
        job = slot.job
        self._emit_text(slot, final=True)
        cached = slot.reused
        completion = slot.generated
        if self.metrics:
            self.metrics.finished(len(job.prompt_ids) - cached, cached, completion, time.perf_counter() - job.submitted)
        job.send(Finished("stop" if slot.stop.stopped else reason, len(job.prompt_ids), completion, cached))
        slot.clear()

    def _fail(self, slot: Slot, error: APIError) -> None:
        self._count("requests_failed")
        slot.job.send(Failed(error))
        slot.clear()

    def _count(self, name: str) -> None:
        if self.metrics:
            self.metrics.count(name)

