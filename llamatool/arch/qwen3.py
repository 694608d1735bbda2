"""qwen3: Qwen3 dense models (convert_hf_to_gguf.py's Qwen3Model, llama.cpp's src/models/qwen3.cpp).

Qwen2 without the Q/K/V biases (unless attention_bias says so), plus an RMSNorm over each
head of Q and of K (`attn_q_norm`, `attn_k_norm`, head_dim weights) between the projection
and RoPE; head_dim is explicit in the config, so n_head * head_dim may differ from n_embd.
"""

from __future__ import annotations

from .family import Family, LayerTensor
from .qwen2 import _QWEN_DEFAULTS, Qwen2


class Qwen3(Qwen2):
    arch = "qwen3"
    hf_classes = ("Qwen3ForCausalLM",)
    config_defaults = {"qwen3": {**_QWEN_DEFAULTS, "head_dim": 128, "attention_bias": False}}
    gguf_layer_tensors = Family.gguf_layer_tensors + (
        LayerTensor("attn_q_norm.weight", "Q_NORM", "head_dim", float32=True),
        LayerTensor("attn_k_norm.weight", "K_NORM", "head_dim", float32=True),
    )
    quantize_70b_layers = None

    def hf_extra_layer_tensors(self, hp) -> dict[str, tuple[int, ...]]:
        hd = hp.head_dim
        return {**Family.hf_extra_layer_tensors(self, hp), "self_attn.q_norm.weight": (hd,), "self_attn.k_norm.weight": (hd,)}
