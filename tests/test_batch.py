"""Several sequences in one forward call (Model.eval_many, the server's continuous batching):
each sequence gets exactly the logits it gets alone, whatever shares the call."""

from __future__ import annotations

import numpy as np
import pytest

from llamatool.errors import LlamatoolError
from llamatool.model import Model, Part

from .tiny_llama import TinyLlama, random_weights, write_gguf

# a float type, the 32-weight types (four-token groups) and K-quants (one-token groups)
TYPES = ["F16", "Q4_0", "Q4_1", "Q8_0", "IQ4_NL", "Q4_K", "Q6_K", "IQ4_XS"]
PROMPTS = [[256, 72, 101, 108, 108, 111], [256, 84, 104, 101, 32, 115, 107, 121, 32, 105, 115], [256, 33]]
BLOCK = list(range(100, 164))  # a whole prompt block (64 tokens: the fast products' path)


def tiny(tmp_path, qtype: str) -> Model:
    spec = TinyLlama()
    written = write_gguf(tmp_path / f"tiny-{qtype}.gguf", spec, random_weights(spec), qtype)
    return Model.load(written.path, n_ctx=256, n_threads=2)


def greedy_alone(model, pool, index: int, prompt: list[int], steps: int) -> list[np.ndarray]:
    state = pool.states[index]
    state.truncate(0)
    out = [model.eval_many(pool, [Part(state, prompt)])[0].copy()]
    for _ in range(steps):
        out.append(model.eval_many(pool, [Part(state, [int(out[-1].argmax())])])[0].copy())
    return out


@pytest.mark.parametrize("qtype", TYPES)
def test_sequences_in_one_call_get_their_logits_alone(tmp_path, qtype):
    """Three sequences read their prompts and generate side by side, while a fourth reads a
    prompt block through the fast products in the same calls: every logit is bit for bit
    the one of the sequence alone, which is also token-by-token Model.eval's."""
    model = tiny(tmp_path, qtype)
    pool = model.new_caches(4)
    steps = 5
    alone = [greedy_alone(model, pool, i, p, steps) for i, p in enumerate(PROMPTS)]
    for state in pool.states:
        state.truncate(0)
    together = [[] for _ in PROMPTS]
    for step in range(steps + 1):
        parts = [Part(pool.states[i], PROMPTS[i] if step == 0 else [int(together[i][-1].argmax())])
                 for i in range(len(PROMPTS))]
        if step < 3:  # a block of another sequence in the same call (its keys must stay its own)
            parts.insert(1, Part(pool.states[3], BLOCK, exact=False, logits=False))
        for i, logits in enumerate(model.eval_many(pool, parts)):
            together[i].append(logits.copy())
    for i in range(len(PROMPTS)):
        for a, b in zip(alone[i], together[i]):
            assert np.array_equal(a, b), (qtype, i)
    assert pool.states[3].n_past == 3 * len(BLOCK)
    model.reset()  # the one-token path of Model.eval
    one_by_one = [model.eval([t]) for t in PROMPTS[1]][-1]
    assert np.array_equal(one_by_one, alone[1][0])


@pytest.mark.parametrize("qtype", ["Q4_1", "Q6_K"])
def test_prompt_pieces_in_a_batch_get_model_eval_bits(tmp_path, qtype):
    """Fast parts (prompt pieces of 8 tokens or more) get the bits Model.eval gives the whole
    prompt in one call, however the prompt is cut and whatever shares the calls: what the
    server's prompt-cache reuse relies on."""
    model = tiny(tmp_path, qtype)
    prompt = BLOCK + PROMPTS[1]
    reference = model.eval(prompt)
    after = model.eval([7])
    pool = model.new_caches(3)
    a, b, c = pool.states
    model.eval_many(pool, [Part(a, PROMPTS[0]), Part(b, BLOCK, exact=False, logits=False)])
    first, _ = model.eval_many(pool, [Part(b, PROMPTS[1], exact=False), Part(c, BLOCK[:20], exact=False, logits=False),
                                      Part(a, PROMPTS[2])])
    assert np.array_equal(first, reference)
    assert np.array_equal(model.eval_many(pool, [Part(a, [9]), Part(b, [7])])[1], after)
    assert b.history == prompt + [7] and a.history == PROMPTS[0] + PROMPTS[2] + [9] and c.n_past == 20


def test_eval_many_refuses_what_it_cannot_do(tmp_path):
    model = tiny(tmp_path, "Q8_0")
    pool = model.new_caches(2)
    a, b = pool.states
    with pytest.raises(LlamatoolError, match="context is full"):
        model.eval_many(pool, [Part(a, [1] * 257)])
    with pytest.raises(LlamatoolError, match="outside the vocabulary"):
        model.eval_many(pool, [Part(a, [1]), Part(b, [10_000])])
    with pytest.raises(LlamatoolError, match="fast part needs at least 8 tokens"):
        model.eval_many(pool, [Part(a, BLOCK[:7], exact=False)])
    assert a.n_past == b.n_past == 0 and a.history == b.history == []
