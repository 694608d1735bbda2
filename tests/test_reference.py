"""llamatool against Hugging Face transformers' LlamaForCausalLM (the optional reference tier).

Tiny random checkpoints are made by transformers itself (random init, a few layers, GQA,
a few hundred tokens), written to GGUF the way llama.cpp's converter writes them (Q/K rows
permuted for adjacent-pair RoPE), and run by both. Float files must give the same logits to
a tight tolerance and the same greedy tokens. For quantized files the tolerance comes from
the format itself: the logits may move away from transformers' by no more than quantizing
the weights moves them (measured with the float64 reference on the file's own dequantized
weights), plus the 8-bit activation rounding llama.cpp adds on top.
"""

from __future__ import annotations

import numpy as np
import pytest

from llamatool.model import Model

from .tiny_llama import TinyLlama, numpy_forward, write_gguf

pytestmark = pytest.mark.reference

torch = pytest.importorskip("torch", reason="the reference tier needs torch (pip install -e '.[reference]')")
transformers = pytest.importorskip("transformers", reason="the reference tier needs transformers")

PROMPT = [256, 84, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114, 111, 119, 110, 32, 102, 111, 120]
QUANT_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"]


def hf_checkpoint(spec: TinyLlama):
    """A randomly initialized LlamaForCausalLM (transformers' own init, seeded) and its weights.

    initializer_range is 1/sqrt(hidden) instead of 0.02, so activations keep unit scale
    through the layers and the logits are not all near zero."""
    torch.manual_seed(spec.seed)
    config = transformers.LlamaConfig(**spec.hf_config(), initializer_range=1 / np.sqrt(spec.n_embd))
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norm weights start at 1: perturb them so a wrong norm would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    weights = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    if spec.tied:
        weights.pop("lm_head.weight", None)
    return model, weights


def hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].double().numpy()


def hf_greedy(model, tokens, n) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([tokens]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(tokens):].tolist()


def relative_error(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def checkpoint():
    spec = TinyLlama(n_layer=3, n_head=4, n_head_kv=2)
    model, weights = hf_checkpoint(spec)
    return spec, model, weights


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16"])
def test_float_files_match_transformers(tmp_path, checkpoint, qtype):
    spec, hf, weights = checkpoint
    written = write_gguf(tmp_path / f"m-{qtype}.gguf", spec, weights, qtype)
    model = Model.load(written.path, n_threads=2)
    ours = model.eval(PROMPT, all_logits=True)
    expected = hf_logits(hf, PROMPT)
    # F32: only the f16 KV cache and f16 queries (as llama.cpp) differ: ~1e-3 of the logit
    # range; F16/BF16 also round every weight and activation (2^-11 / 2^-8 relative)
    tol = {"F32": 3e-3, "F16": 5e-3, "BF16": 3e-2}[qtype]
    assert relative_error(ours, expected) < tol
    assert (ours.argmax(1) == expected.argmax(1)).mean() >= (1.0 if qtype != "BF16" else 0.9)
    if qtype != "BF16":
        greedy = model.generate(PROMPT, max_tokens=10, temperature=0, stop_at_eog=False).tokens
        assert greedy == hf_greedy(hf, PROMPT, 10)


BITS_PER_WEIGHT = {"Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q5_1": 6.0, "Q8_0": 8.5, "IQ4_NL": 4.5, "Q2_K": 2.625,
                   "Q3_K": 3.4375, "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625, "IQ4_XS": 4.25}


@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_quantized_files_stay_within_their_format_error(tmp_path, checkpoint, qtype):
    spec, hf, weights = checkpoint
    written = write_gguf(tmp_path / f"m-{qtype}.gguf", spec, weights, qtype)
    ours = Model.load(written.path, n_threads=2).eval(PROMPT, all_logits=True)
    expected = hf_logits(hf, PROMPT)
    format_error = relative_error(numpy_forward(spec, written.weights, PROMPT), expected)
    # the file's own weights, computed exactly, are format_error away from transformers;
    # llamatool may add the 8-bit activation rounding (a few 1e-3 of the logit range)
    assert relative_error(ours, expected) <= 1.25 * format_error + 1e-2
    # the format's error itself scales with its step, 2^-bits of a block's range (the
    # factor, measured on these models, is 6 to 11; 16 leaves room without hiding a bug)
    assert format_error < 16 * 2.0 ** -BITS_PER_WEIGHT[qtype]


@pytest.mark.parametrize(
    "scaling",
    [
        {"type": "linear", "factor": 2.0},
        {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
    ],
    ids=lambda s: s["type"],
)
def test_rope_scaling_matches_transformers(tmp_path, scaling):
    spec = TinyLlama(n_layer=2, rope_base=500000.0, rope_scaling=scaling)
    hf, weights = hf_checkpoint(spec)
    written = write_gguf(tmp_path / "m.gguf", spec, weights, "F32")
    ours = Model.load(written.path, n_threads=1).eval(PROMPT, all_logits=True)
    assert relative_error(ours, hf_logits(hf, PROMPT)) < 3e-3


@pytest.mark.parametrize("tied,bias", [(True, False), (False, True)], ids=["tied", "biases"])
def test_tied_output_and_biases_match_transformers(tmp_path, tied, bias):
    spec = TinyLlama(n_layer=2, tied=tied, bias=bias, n_head=8, n_head_kv=2)
    hf, weights = hf_checkpoint(spec)
    written = write_gguf(tmp_path / "m.gguf", spec, weights, "F32")
    model = Model.load(written.path, n_threads=2)
    assert model.args.tied_output == tied
    assert relative_error(model.eval(PROMPT, all_logits=True), hf_logits(hf, PROMPT)) < 3e-3
