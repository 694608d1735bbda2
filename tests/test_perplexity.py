"""Perplexity and KL divergence: the algorithm on a model with known logits, then on real models."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest

from llamatool.errors import LlamatoolError
from llamatool.perplexity import (
    KLDStats,
    LogitsFile,
    kl_divergence,
    perplexity,
    quantize_log_probs,
    token_nll,
)

DATA = Path(__file__).parent / "data"
SONNETS = DATA / "shakespeare-sonnets.txt"


class _Tok:
    def __init__(self, n_vocab, bos_id=None, add_bos=False):
        self.n_vocab, self.bos_id, self.add_bos = n_vocab, bos_id, add_bos


class BigramModel:
    """A stand-in with the Model API whose logits depend only on the current token,
    so the expected perplexity can be computed by hand."""

    def __init__(self, n_vocab=50, seed=0, add_bos=True, noise=0.0):
        rng = np.random.default_rng(seed)
        self.table = rng.standard_normal((n_vocab, n_vocab)).astype(np.float32) * 3
        if noise:
            self.table += noise * np.random.default_rng(seed + 1).standard_normal(self.table.shape).astype(np.float32)
        self.tokenizer = _Tok(n_vocab, bos_id=0, add_bos=add_bos)
        self.n_ctx = 4096
        self.evaluated: list[int] = []

    def reset(self):
        self.evaluated = []

    def eval(self, ids, all_logits=False):
        self.evaluated.extend(ids)
        logits = self.table[np.asarray(ids)]
        return logits if all_logits else logits[-1]


def expected_ppl(model, tokens, n_ctx, n_chunks):
    first = n_ctx // 2
    nll = []
    for c in range(n_chunks):
        chunk = list(tokens[c * n_ctx : (c + 1) * n_ctx])
        if model.tokenizer.add_bos:
            chunk[0] = model.tokenizer.bos_id
        for j in range(first, n_ctx - 1):
            row = model.table[chunk[j]].astype(np.float64)
            nll.append(-(row[chunk[j + 1]] - np.log(np.exp(row - row.max()).sum()) - row.max()))
    nll = np.array(nll)
    ppl = math.exp(nll.mean())
    err = math.sqrt((np.mean(nll**2) - nll.mean() ** 2) / (len(nll) - 1)) * ppl
    return ppl, err, len(nll)


def test_token_nll_matches_direct_softmax():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((7, 30)).astype(np.float32) * 10
    targets = rng.integers(0, 30, 7)
    probs = np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum(1, keepdims=True)
    np.testing.assert_allclose(token_nll(logits, targets), -np.log(probs[np.arange(7), targets]), rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("n_batch", [2048, 16, 7])
def test_perplexity_matches_hand_computation(n_batch):
    model = BigramModel()
    tokens = np.random.default_rng(2).integers(0, 50, 500).tolist()
    running = []
    result = perplexity(model, tokens, n_ctx=64, n_batch=n_batch, on_chunk=lambda i, p: running.append(p))
    ppl, err, count = expected_ppl(model, tokens, 64, 500 // 64)
    assert result.n_chunks == 7 and result.n_scored == count == 7 * 31
    assert result.ppl == pytest.approx(ppl, rel=1e-9)
    assert result.ppl_error == pytest.approx(err, rel=1e-6)
    assert running == result.chunk_ppl and len(running) == 7


def test_perplexity_chunk_limit_bos_and_too_short_text():
    model = BigramModel(add_bos=False)
    tokens = np.random.default_rng(3).integers(0, 50, 300).tolist()
    result = perplexity(model, tokens, n_ctx=32, n_chunks=2)
    ppl, _, _ = expected_ppl(model, tokens, 32, 2)
    assert result.n_chunks == 2 and result.ppl == pytest.approx(ppl, rel=1e-9)
    assert model.evaluated[0] == tokens[32]  # no BOS substitution without add_bos
    with pytest.raises(LlamatoolError, match="at least 128"):
        perplexity(model, tokens[:100], n_ctx=64)


def reference_log_probs_row(logits_row: np.ndarray) -> np.ndarray:
    """llama.cpp's log_softmax(..., uint16_t * log_prob, ...) written out scalar by scalar in float32."""
    f32 = np.float32
    n = len(logits_row)
    max_logit = f32(logits_row.max())
    min_logit = max(f32(logits_row.min()), f32(max_logit - f32(16)))
    sum_exp = 0.0
    for v in logits_row:
        sum_exp += float(np.exp(f32(v - max_logit)))
    log_sum_exp = f32(math.log(sum_exp))
    min_log_prob = f32(f32(min_logit - max_logit) - log_sum_exp)
    scale = f32(f32(max_logit - min_logit) / f32(65535))
    out = np.zeros(2 * ((n + 1) // 2) + 4, np.uint16)
    out[:4] = np.array([scale, min_log_prob], "<f4").view(np.uint16)
    inv = f32(1) / scale
    for i, v in enumerate(logits_row):
        if v > min_logit:
            x = f32(inv * f32(v - min_logit))
            out[4 + i] = int(np.rint(x))
    return out


def test_quantize_log_probs_matches_llama_cpp_arithmetic():
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal((5, 33)) * 6).astype(np.float32)
    logits[2, 5] = 40.0  # a row whose min is clamped to max - 16
    ours = quantize_log_probs(logits)
    assert ours.shape == (5, 2 * 17 + 4)
    for r in range(5):
        ref = reference_log_probs_row(logits[r])
        assert np.abs(ours[r].astype(int) - ref.astype(int))[4:].max() <= 1  # exp/log may differ in the last ulp
        np.testing.assert_array_equal(ours[r, :4], ref[:4])


def _write_base(model, tokens, n_ctx, path):
    with open(path, "wb") as f:
        result = perplexity(model, tokens, n_ctx=n_ctx, logits_out=f)
    return result


def test_kld_base_file_layout_and_self_divergence(tmp_path):
    model = BigramModel(n_vocab=51)  # odd vocab: rows are padded to an even count
    tokens = np.random.default_rng(5).integers(0, 51, 400).tolist()
    base_path = tmp_path / "base.kld"
    base_result = _write_base(model, tokens, 64, base_path)
    raw = base_path.read_bytes()
    assert raw[:8] == b"_logits_"
    assert struct.unpack("<Iii", raw[8:20]) == (64, 51, 6)
    assert len(raw) == 20 + 4 * 64 * 6 + 2 * 6 * 31 * (52 + 4)
    base = LogitsFile.open(base_path)
    assert base.tokens.tolist() == tokens[: 6 * 64]
    stats = kl_divergence(model, base)
    assert stats.count == 6 * 31
    assert 0 <= stats.kld()[0] < 1e-6  # only the 16-bit quantization of the base separates them
    assert stats.same_top()[0] == 1.0
    assert stats.ppl()[0] == pytest.approx(base_result.ppl, rel=1e-9)
    assert stats.ppl_base()[0] == pytest.approx(base_result.ppl, rel=1e-3)


def test_kld_grows_with_the_distance_from_the_base(tmp_path):
    tokens = np.random.default_rng(6).integers(0, 50, 400).tolist()
    base_path = tmp_path / "base.kld"
    _write_base(BigramModel(), tokens, 64, base_path)
    base = LogitsFile.open(base_path)
    klds = [kl_divergence(BigramModel(noise=n), base).kld()[0] for n in (0.0, 0.05, 0.2, 1.0)]
    assert klds == sorted(klds) and klds[-1] > 100 * max(klds[1], 1e-9) > 0
    tops = [kl_divergence(BigramModel(noise=n), base).same_top()[0] for n in (0.0, 1.0)]
    assert tops[0] == 1.0 > tops[1]


def test_kld_stats_match_a_direct_computation():
    rng = np.random.default_rng(7)
    base_logits = rng.standard_normal((40, 20)).astype(np.float32) * 2
    logits = base_logits + rng.standard_normal((40, 20)).astype(np.float32) * 0.3
    targets = rng.integers(0, 20, 40)
    stats = KLDStats()
    stats.add(logits, quantize_log_probs(base_logits), targets)
    p = np.exp(base_logits.astype(np.float64)) / np.exp(base_logits.astype(np.float64)).sum(1, keepdims=True)
    q = np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum(1, keepdims=True)
    kld = (p * (np.log(p) - np.log(q))).sum(1)
    assert stats.kld()[0] == pytest.approx(kld.mean(), rel=1e-3, abs=1e-6)
    assert stats.same_top()[0] == np.mean(base_logits.argmax(1) == logits.argmax(1))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:10], "does not look like"),
        (lambda b: b"_notlog_" + b[8:], "does not look like"),
        (lambda b: b[:-2], "truncated or corrupt"),
        (lambda b: b[:8] + struct.pack("<Iii", 64, 51, 10**6) + b[20:], "truncated or corrupt"),
        (lambda b: b[:8] + struct.pack("<Iii", 2, 51, 6) + b[20:], "invalid header"),
    ],
)
def test_bad_kld_base_files(tmp_path, mutate, message):
    model = BigramModel(n_vocab=51)
    tokens = np.random.default_rng(5).integers(0, 51, 400).tolist()
    good = tmp_path / "good.kld"
    _write_base(model, tokens, 64, good)
    bad = tmp_path / "bad.kld"
    bad.write_bytes(mutate(good.read_bytes()))
    with pytest.raises(LlamatoolError, match=message):
        LogitsFile.open(bad)


def test_shipped_text_is_documented():
    text = SONNETS.read_text(encoding="utf-8")
    assert 30_000 < len(text.encode()) < 60_000
    assert "From fairest creatures we desire increase" in text
    readme = (DATA / "README.md").read_text()
    assert "shakespeare-sonnets.txt" in readme and "public domain" in readme.lower()
