"""llama: LLaMA 1-3, Mistral, SmolLM2 (convert_hf_to_gguf.py's LlamaModel, llama.cpp's llama.cpp model).

What is LLaMA's own: the converter reorders the rows of q_proj and k_proj so that ggml's
adjacent-pair RoPE rotates what Hugging Face's half-split RoPE rotates (permute_qk), writes
vocab_size and rope.dimension_count, turns Llama 3.1's rope scaling into a `rope_freqs`
tensor, and touches the vocab (add_space_prefix from tokenizer_config.json, CodeLlama's
infill tokens, no BOS for 49152-token vocabularies). Mistral's checkpoints are the same
architecture.
"""

from __future__ import annotations

import math

import numpy as np

from .family import U32, BOOL, Family, Field


class Llama(Family):
    arch = "llama"
    hf_classes = ("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM")
    permute_qk = True
    head_dim_from_heads = True
    quantize_70b_layers = 80
    config_defaults = {
        "llama": {
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
        },
        "mistral": {
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 4096 * 32,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
        },
    }

    def extra_tensors(self, hp) -> list[tuple[str, np.ndarray]]:
        factors = rope_freq_factors(hp)
        return [] if factors is None else [("rope_freqs.weight", factors)]

    def hyperparameter_fields(self, hp, file_type: int) -> list[Field]:
        fields = super().hyperparameter_fields(hp, file_type)
        fields.append((f"{self.arch}.vocab_size", hp.n_vocab, U32))
        rope_dim = hp.config.get("head_dim") or hp.n_embd // hp.n_head
        fields.append((f"{self.arch}.rope.dimension_count", rope_dim, U32))
        return fields

    def uses_add_space_prefix(self) -> bool:
        return True

    def vocab_fields(self, folder, hp, vocab) -> list[tuple]:
        from ..convert.special_vocab import load_special_vocab

        out = []
        if hp.n_vocab == 32016:  # CodeLlama: its infill tokens; only eot has a GGUF key
            sv = load_special_vocab(folder, load_merges=False, types=("prefix", "suffix", "middle", "eot"))
            sv.set_id("eot", 32010, str(folder))
            out += [f for f in sv.fields() if f[0] != "tokenizer.ggml.merges"]
        if hp.n_vocab == 49152:  # granite-small (and SmolLM) vocab size: llama.cpp must not add BOS
            out.append(("tokenizer.ggml.add_bos_token", False, BOOL, None))
        return out


def rope_freq_factors(hp) -> np.ndarray | None:
    """Llama 3.1's per-frequency RoPE scaling, as the `rope_freqs` tensor llama.cpp reads.

    Computed in float32 like the reference (torch); its pow is not correctly rounded, so
    values can differ from it in the last bits.
    """
    rope = hp.rope
    if str(rope.get("rope_type", "")).lower() != "llama3":
        return None
    f32 = np.float32
    base = rope.get("rope_theta", 10000.0)
    dim = hp.config.get("head_dim") or hp.n_embd // hp.n_head
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    freqs = f32(1.0) / np.power(f32(base), np.arange(0, dim, 2, dtype=f32) / f32(dim))
    wavelen = f32(2 * math.pi) / freqs
    smooth = (f32(old_ctx) / wavelen - f32(low)) / f32(high - low)
    mid = f32(1.0) / ((f32(1.0) - smooth) / f32(factor) + smooth)
    factors = np.where(wavelen < old_ctx / high, f32(1.0), np.where(wavelen > old_ctx / low, f32(factor), mid))
    return factors.astype(f32)
