"""The sampler chain: each step against its definition in llama.cpp's llama-sampler.cpp, and
the chain's defaults and reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from llamatool.errors import LlamatoolError
from llamatool.sampling import Sampler, SamplingParams, apply_penalties, min_p, sample, softmax, top_k, top_p


def test_defaults_are_llama_cli_defaults():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == (0.8, 40, 0.95, 0.05)
    assert (p.repeat_penalty, p.repeat_last_n, p.frequency_penalty, p.presence_penalty) == (1.0, 64, 0.0, 0.0)


def test_greedy_is_argmax_after_penalties():
    logits = np.array([1.0, 5.0, 4.9, -2.0], np.float32)
    assert Sampler(temperature=0)(logits) == 1
    assert Sampler(temperature=0, repeat_penalty=1.1)(logits, history=[1]) == 2  # 5.0 / 1.1 < 4.9
    assert Sampler(temperature=-1)(logits) == 1


def test_penalties_follow_llama_cpp():
    logits = np.array([2.0, -2.0, 3.0, 0.5], np.float32)
    out = apply_penalties(logits, [0, 1, 1, 3], repeat=2.0, frequency=0.5, presence=0.25)
    # positive logits divided, negative multiplied; then count * frequency + presence
    np.testing.assert_allclose(out, [2.0 / 2 - 0.5 - 0.25, -2.0 * 2 - 1.0 - 0.25, 3.0, 0.5 / 2 - 0.5 - 0.25])
    assert apply_penalties(logits, [], 2.0, 0, 0) is logits
    np.testing.assert_array_equal(logits, [2.0, -2.0, 3.0, 0.5])  # the input is untouched


def test_penalty_window():
    s = Sampler(repeat_last_n=3)
    assert s.recent([1, 2, 3, 4, 5]) == [3, 4, 5]
    assert Sampler(repeat_last_n=0).recent([1, 2]) == []
    assert Sampler(repeat_last_n=-1).recent([1, 2]) == [1, 2]


def test_top_k_sorts_and_cuts():
    ids = np.arange(6)
    logits = np.array([0.1, 3.0, -1.0, 2.0, 2.5, 0.0], np.float32)
    kept, values = top_k(ids, logits, 3)
    assert kept.tolist() == [1, 4, 3] and values.tolist() == [3.0, 2.5, 2.0]
    assert top_k(ids, logits, 0)[0].tolist() == [1, 4, 3, 0, 5, 2]  # <= 0: all, sorted


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    ids = np.arange(4)
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    assert top_p(ids, logits, 0.45)[0].tolist() == [0]
    assert top_p(ids, logits, 0.79)[0].tolist() == [0, 1]
    assert top_p(ids, logits, 0.81)[0].tolist() == [0, 1, 2]
    assert top_p(ids, logits, 1.0)[0].tolist() == [0, 1, 2, 3]


def test_min_p_is_relative_to_the_best_token():
    ids = np.arange(4)
    logits = np.log(np.array([0.5, 0.3, 0.02, 0.18], np.float32))
    assert min_p(ids, logits, 0.05)[0].tolist() == [0, 1, 3]  # 0.02 < 0.05 * 0.5
    assert min_p(ids, logits, 0.0)[0].tolist() == [0, 1, 2, 3]


def test_sample_draws_from_the_softmax():
    rng = np.random.default_rng(0)
    ids = np.array([7, 8, 9])
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    draws = np.array([sample(ids, logits, rng) for _ in range(20000)])
    freq = np.array([(draws == i).mean() for i in ids])
    np.testing.assert_allclose(freq, [0.6, 0.3, 0.1], atol=0.015)  # 4 standard deviations
    np.testing.assert_allclose(softmax(logits), [0.6, 0.3, 0.1])


def test_temperature_sharpens_and_flattens():
    logits = np.array([2.0, 1.0, 0.0, -1.0], np.float32)

    def top_share(temp):
        s = Sampler(temperature=temp, top_k=0, top_p=1.0, min_p=0.0, seed=1)
        return np.mean([s(logits) == 0 for _ in range(4000)])

    cold, warm = top_share(0.3), top_share(3.0)
    assert cold > 0.9 and warm < 0.5


def test_seed_makes_sampling_reproducible():
    logits = np.random.default_rng(3).standard_normal(500).astype(np.float32)
    a = Sampler(seed=42, temperature=1.5)
    b = Sampler(seed=42, temperature=1.5)
    c = Sampler(seed=43, temperature=1.5)
    seq_a = [a(logits) for _ in range(50)]
    assert seq_a == [b(logits) for _ in range(50)]
    assert seq_a != [c(logits) for _ in range(50)]


def test_chain_only_draws_from_allowed_tokens():
    logits = np.random.default_rng(4).standard_normal(1000).astype(np.float32) * 3
    s = Sampler(seed=5, temperature=1.0, top_k=10, top_p=0.9, min_p=0.1)
    allowed = set(np.argsort(-logits)[:10].tolist())
    assert all(s(logits) in allowed for _ in range(200))


def test_bad_parameters_are_errors():
    with pytest.raises(LlamatoolError):
        Sampler(repeat_penalty=0)
    with pytest.raises(LlamatoolError):
        Sampler(repeat_last_n=-5)
