"""Text generation on a Model: prompt in, tokens and text out, with timings.

    result = generate(model, "The sky is", max_tokens=32, temperature=0)
    for piece in stream(model, "Once upon a time", seed=1): print(piece, end="")

The prompt goes through the model in batches (matrix-matrix products), then one token at a
time: sample, stream its text, feed it back. The KV cache is reused for the longest prefix
of the prompt that is already in it (as llama-server's prompt cache does), which is what
keeps a chat's history in the cache between turns. Generation stops at any
end-of-generation token (EOS, <|eot_id|>, <|im_end|>, ...), after max_tokens, or when the
context is full.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .errors import LlamatoolError
from .sampling import Sampler, SamplingParams


@dataclass
class Timings:
    """Where the time went, as llama.cpp's llama_perf_context_print reports it."""

    load_s: float = 0.0
    prompt_tokens: int = 0  # tokens evaluated for the prompt (cached ones excluded)
    prompt_s: float = 0.0
    generated_tokens: int = 0  # tokens sampled
    eval_tokens: int = 0  # generated tokens fed back through the model
    eval_s: float = 0.0
    sample_s: float = 0.0
    first_token_s: float = 0.0  # from the start of generate() to the first sampled token


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]  # generated token ids (an end-of-generation token is not included)
    prompt_tokens: int  # length of the prompt in tokens
    cached_tokens: int  # of which were already in the KV cache
    stop_reason: str  # "eog", "length" or "context"
    timings: Timings = field(default_factory=Timings)


def tokenize_prompt(model, prompt, add_special: bool = True) -> list[int]:
    if isinstance(prompt, str):
        return model.tokenizer.encode(prompt, add_special=add_special, parse_special=True)
    ids = [int(t) for t in prompt]
    return ids


def _reuse_cache(model, ids: list[int]) -> int:
    """Truncate the cache to its longest common prefix with ids (keeping at least one token
    of ids to evaluate, for its logits); returns how many tokens are reused."""
    same = 0
    for a, b in zip(model.history, ids):
        if a != b:
            break
        same += 1
    same = min(same, len(ids) - 1)
    model.truncate(same)
    return same


class Generation:
    """One generation: iterate to get token ids as they are sampled; `.result` at the end."""

    def __init__(self, model, prompt, max_tokens: int = 128, on_text=None, stop_at_eog: bool = True,
                 add_special: bool = True, sampler: Sampler | None = None, **sampling):
        self.model = model
        self.prompt_ids = tokenize_prompt(model, prompt, add_special)
        if not self.prompt_ids:
            raise LlamatoolError("the prompt is empty (no tokens)")
        if len(self.prompt_ids) > model.n_ctx:
            raise LlamatoolError(
                f"the prompt is {len(self.prompt_ids)} tokens, longer than the context size {model.n_ctx} (use -c to enlarge it)"
            )
        self.max_tokens = max_tokens
        self.on_text = on_text
        self.stop_at_eog = stop_at_eog
        self.sampler = sampler or Sampler(SamplingParams(**sampling))
        self.result: GenerationResult | None = None
        try:
            self._eog = model.tokenizer.eog_ids
        except LlamatoolError:
            self._eog = frozenset()

    def __iter__(self):
        model, timings = self.model, Timings(load_s=self.model.load_seconds)
        decoder = _decoder(model)
        start = time.perf_counter()
        cached = _reuse_cache(model, self.prompt_ids)
        logits = model.eval(self.prompt_ids[cached:])
        timings.prompt_tokens = len(self.prompt_ids) - cached
        timings.prompt_s = time.perf_counter() - start
        tokens, pieces, reason = [], [], "length"
        limit = self.max_tokens if self.max_tokens >= 0 else None
        while limit is None or len(tokens) < limit:
            t0 = time.perf_counter()
            token = self.sampler(logits, model.history)
            timings.sample_s += time.perf_counter() - t0
            if not tokens:
                timings.first_token_s = time.perf_counter() - start
            timings.generated_tokens += 1
            if self.stop_at_eog and token in self._eog:
                reason = "eog"
                break
            tokens.append(token)
            text = decoder.add(token) if decoder else ""
            if text:
                pieces.append(text)
                if self.on_text:
                    self.on_text(text)
            yield token
            if limit is not None and len(tokens) >= limit:
                break
            if model.n_past >= model.n_ctx:
                reason = "context"
                break
            t0 = time.perf_counter()
            logits = model.eval([token])
            timings.eval_s += time.perf_counter() - t0
            timings.eval_tokens += 1
        tail = decoder.flush() if decoder else ""
        if tail:
            pieces.append(tail)
            if self.on_text:
                self.on_text(tail)
        self.result = GenerationResult("".join(pieces), tokens, len(self.prompt_ids), cached, reason, timings)


def _decoder(model):
    try:
        return model.tokenizer.incremental_decoder(skip_special=True)
    except LlamatoolError:
        return None


def generate(model, prompt, max_tokens: int = 128, **options) -> GenerationResult:
    """Generate up to max_tokens (-1: until end of generation or a full context)."""
    g = Generation(model, prompt, max_tokens=max_tokens, **options)
    for _ in g:
        pass
    return g.result


def stream(model, prompt, max_tokens: int = 128, **options):
    """Yield the generated text piece by piece (a piece may span tokens: UTF-8 is kept whole)."""
    pieces: list[str] = []
    user_callback = options.pop("on_text", None)

    def collect(text: str) -> None:
        pieces.append(text)
        if user_callback:
            user_callback(text)

    g = Generation(model, prompt, max_tokens=max_tokens, on_text=collect, **options)
    for _ in g:
        while pieces:
            yield pieces.pop(0)
    while pieces:
        yield pieces.pop(0)
