"""scripts/make_random_model.py: the random-weight scale fixtures convert, quantize and run."""

from __future__ import annotations

import numpy as np
import pytest

from llamatool.gguf_io import GGUFReader

from .conftest import load_script

make_random_model = load_script("make_random_model")


@pytest.mark.parametrize("name, n_params", [
    # parameter counts of the released checkpoints (their model cards: 1.24 B, 3.21 B)
    ("llama-3.2-1b", 1_235_814_400),
    ("llama-3.2-3b", 3_212_749_824),
])
def test_real_shapes_have_the_released_parameter_counts(name, n_params):
    specs = make_random_model.tensor_specs(make_random_model.SHAPES[name], 128256)
    assert sum(int(np.prod(dims)) for _, dims, _ in specs) == n_params


def test_weights_are_deterministic_per_seed_and_scaled():
    a = make_random_model.random_tensor("w", (300, 64), 0.125, seed=1)
    assert np.array_equal(a, make_random_model.random_tensor("w", (300, 64), 0.125, seed=1))
    assert not np.array_equal(a, make_random_model.random_tensor("w", (300, 64), 0.125, seed=2))
    assert not np.array_equal(a, make_random_model.random_tensor("v", (300, 64), 0.125, seed=1))
    assert a.dtype == np.float16 and abs(float(a.astype(np.float32).std()) - 0.125) < 0.01


@pytest.mark.slow
def test_tiny_shape_converts_quantizes_and_runs(tmp_path, tokenizer_vectors):
    from llamatool.model import Model

    vocab_path = tokenizer_vectors / "ggml-vocab-gpt-2.gguf"
    made = make_random_model.make("tiny", tmp_path, ["Q4_0"], vocab_path, seed=0, force=False, log=lambda *_: None)
    shape = make_random_model.SHAPES["tiny"]
    meta = GGUFReader(made["Q4_0"]).metadata
    source = GGUFReader(vocab_path).metadata
    # the tokenizer went through tokenizer.json and came back as llama.cpp's vocab file has it
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id"):
        assert meta[key] == source[key]
    assert list(meta["tokenizer.ggml.tokens"]) == list(source["tokenizer.ggml.tokens"])
    assert list(meta["tokenizer.ggml.merges"]) == list(source["tokenizer.ggml.merges"])
    assert list(meta["tokenizer.ggml.token_type"]) == list(source["tokenizer.ggml.token_type"])
    assert (meta["llama.embedding_length"], meta["llama.block_count"]) == (shape.n_embd, shape.n_layer)
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (shape.n_head, shape.n_head_kv)
    assert meta["llama.feed_forward_length"] == shape.n_ff

    logits = Model.load(made["Q4_0"], n_ctx=64, n_threads=1).eval([1, 200, 3000, 40000])
    # activations stay sane: finite logits of about unit spread, not a collapsed or exploded pass
    assert np.isfinite(logits).all()
    assert 0.2 < float(np.std(logits)) < 5.0

    # a second call keeps what exists (same bytes), --force is needed to remake
    before = made["Q4_0"].stat().st_mtime_ns
    make_random_model.make("tiny", tmp_path, ["Q4_0"], vocab_path, seed=0, force=False, log=lambda *_: None)
    assert made["Q4_0"].stat().st_mtime_ns == before
