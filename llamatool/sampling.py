"""Choosing the next token from logits, the way llama-cli does by default.

llama.cpp's default sampler chain (common/sampling.cpp), with its default values
(common/common.h), made of small functions over a candidate set (token ids + logits):

    penalties    repeat 1.0 (off), frequency 0, presence 0, over the last 64 tokens
    top_k        40 best logits (<= 0: all)
    top_p        0.95: smallest prefix whose softmax mass reaches p (>= 1: off)
    min_p        0.05: drop tokens whose probability is below p x the best one (<= 0: off)
    temperature  0.8: logits / t; t <= 0 means greedy (the best token, after penalties)
    sample       draw from the softmax of what is left, with a seeded generator

A fixed seed makes a run reproducible (same prompt, same model, same options).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .errors import LlamatoolError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None

    def check(self) -> "SamplingParams":
        if self.repeat_penalty <= 0:
            raise LlamatoolError(f"repeat penalty must be positive, got {self.repeat_penalty}")
        if self.repeat_last_n < -1:
            raise LlamatoolError(f"repeat-last-n must be -1 (whole context), 0 (off) or positive, got {self.repeat_last_n}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise LlamatoolError(f"seed must be between 0 and 2^64-1, got {self.seed}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


# --- the steps of the chain: (ids, logits) -> (ids, logits) ----------------------------------


def apply_penalties(logits: np.ndarray, recent, repeat: float, frequency: float, presence: float) -> np.ndarray:
    """llama_sampler_penalties: tokens seen in `recent` get their logit divided by `repeat`
    (multiplied when negative), minus count * frequency and presence once. Returns a copy."""
    if not len(recent) or (repeat == 1.0 and frequency == 0.0 and presence == 0.0):
        return logits
    out = logits.copy()
    counts = Counter(int(t) for t in recent)
    ids = np.fromiter(counts.keys(), np.int64, len(counts))
    n = np.fromiter(counts.values(), np.float32, len(counts))
    v = out[ids]
    v = np.where(v <= 0, v * repeat, v / repeat)
    out[ids] = v - n * frequency - presence
    return out


def top_k(ids: np.ndarray, logits: np.ndarray, k: int):
    """The k best candidates, sorted by logit, best first (k <= 0: all, sorted)."""
    if k <= 0 or k >= logits.size:
        order = np.argsort(-logits, kind="stable")
    else:
        part = np.argpartition(-logits, k - 1)[:k]
        order = part[np.argsort(-logits[part], kind="stable")]
    return ids[order], logits[order]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(), dtype=np.float64)
    return e / e.sum()


def top_p(ids: np.ndarray, logits: np.ndarray, p: float, min_keep: int = 1):
    """Keep the best tokens (sorted input) until their probability mass reaches p."""
    if p >= 1.0:
        return ids, logits
    cum = np.cumsum(softmax(logits))
    keep = int(np.searchsorted(cum, p) + 1)
    keep = max(keep, min_keep)
    return ids[:keep], logits[:keep]


def min_p(ids: np.ndarray, logits: np.ndarray, p: float, min_keep: int = 1):
    """Keep tokens whose probability is at least p times the best one's."""
    if p <= 0.0 or logits.size == 0:
        return ids, logits
    keep = logits >= logits.max() + np.log(p)
    if keep.sum() < min_keep:
        return ids, logits
    return ids[keep], logits[keep]


def sample(ids: np.ndarray, logits: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one token from the softmax of the candidates (llama_sampler_dist)."""
    if ids.size == 1:
        return int(ids[0])
    probs = softmax(logits)
    cum = np.cumsum(probs)
    i = int(np.searchsorted(cum, rng.random() * cum[-1], side="left"))
    return int(ids[min(i, ids.size - 1)])


# --- the chain ---------------------------------------------------------------------------------


class Sampler:
    """The llama-cli chain as one callable: sampler(logits, recent_tokens) -> token id."""

    def __init__(self, params: SamplingParams | None = None, **overrides):
        params = params or SamplingParams()
        if overrides:
            params = SamplingParams(**{**params.__dict__, **overrides})
        self.params = params.check()
        self.rng = np.random.default_rng(params.seed)

    def recent(self, history) -> list:
        n = self.params.repeat_last_n
        if n == 0:
            return []
        return list(history) if n < 0 else list(history[-n:])

    def __call__(self, logits: np.ndarray, history=()) -> int:
        p = self.params
        logits = apply_penalties(np.asarray(logits, np.float32), self.recent(history), p.repeat_penalty,
                                 p.frequency_penalty, p.presence_penalty)
        if p.greedy:
            return int(np.argmax(logits))
        ids = np.arange(logits.size)
        ids, cand = top_k(ids, logits, p.top_k)
        ids, cand = top_p(ids, cand, p.top_p)
        ids, cand = min_p(ids, cand, p.min_p)
        return sample(ids, cand / p.temperature, self.rng)
