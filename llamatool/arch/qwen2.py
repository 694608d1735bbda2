"""qwen2: Qwen2 and Qwen2.5 (convert_hf_to_gguf.py's Qwen2Model, llama.cpp's src/models/qwen2.cpp).

LLaMA's layer with three differences: Q, K and V projections carry biases (kept F32),
RoPE rotates the two halves of each head (NEOX; so the converter keeps Hugging Face's row
order), and the converter writes only the generic text-model keys (no vocab_size, no
rope.dimension_count: llama.cpp takes n_rot = head_dim).
"""

from __future__ import annotations

from dataclasses import replace

from .family import ROPE_NEOX, Family, ForwardSwitches

_QWEN_DEFAULTS = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}

_BIASES_REQUIRED = {"attn_q.bias", "attn_k.bias", "attn_v.bias"}


class Qwen2(Family):
    arch = "qwen2"
    hf_classes = ("Qwen2ForCausalLM",)
    config_defaults = {"qwen2": _QWEN_DEFAULTS}
    forward = ForwardSwitches(rope=ROPE_NEOX)
    gguf_layer_tensors = tuple(replace(t, required=True) if t.name in _BIASES_REQUIRED else t for t in Family.gguf_layer_tensors)
    quantize_70b_layers = 80

    def hf_extra_layer_tensors(self, hp) -> dict[str, tuple[int, ...]]:
        q, kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
        return {"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)}
