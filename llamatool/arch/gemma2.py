"""gemma2: Gemma 2 (convert_hf_to_gguf.py's Gemma2Model, llama.cpp's src/models/gemma2.cpp).

LLaMA's layer with these differences:

- token embeddings are multiplied by sqrt(n_embd); the output reuses them (the converter
  drops lm_head even when a checkpoint stores one);
- RMSNorm weights are stored as w - 1 by Hugging Face (Gemma's norm multiplies by 1 + w): the
  converter adds 1 (in the checkpoint's dtype, as torch does);
- sandwich norms: the attention output and the FFN output are normed again before their
  residual additions (`post_attention_norm`, `post_ffw_norm`); the FFN input norm is HF's
  pre_feedforward_layernorm;
- GELU(tanh)-gated FFN; NEOX RoPE; Q scaled by 1/sqrt(head_dim) before attention (llama.cpp's
  rule: 1/sqrt(n_embd/n_head) for the 46-layer 27B), so query_pre_attn_scalar must agree;
- attention scores and final logits soft-capped (cap * tanh(x / cap));
- sliding-window attention on every other layer (layers 0, 2, ...: llama.cpp's pattern 2).

The converter writes only its own list of keys (no rope.freq_base: llama.cpp's default 10000
applies, so another rope_theta is refused).
"""

from __future__ import annotations

import numpy as np

from ..errors import LlamatoolError
from .family import BOOL, F32, HF_LAYER_NAMES, ROPE_NEOX, U32, Family, Field, ForwardSwitches, LayerTensor

GEMMA_LAYER_NAMES = {
    **HF_LAYER_NAMES,
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}

GEMMA_LAYER = tuple(t for t in Family.gguf_layer_tensors if not t.name.endswith(".bias")) + (
    LayerTensor("post_attention_norm.weight", "ATTN_POST_NORM", "n_embd", float32=True),
    LayerTensor("post_ffw_norm.weight", "FFN_POST_NORM", "n_embd", float32=True),
)


def gemma_attention_scale(n_layer_27b: int, n_layer: int, n_embd: int, n_head: int, head_dim: int) -> float:
    """llama.cpp's f_attention_scale: 1/sqrt(head_dim), or 1/sqrt(n_embd/n_head) for the 27B."""
    f32 = np.float32
    x = n_embd // n_head if n_layer == n_layer_27b else head_dim
    return float(f32(1) / np.sqrt(f32(x)))


class Gemma2(Family):
    arch = "gemma2"
    hf_classes = ("Gemma2ForCausalLM",)
    forward = ForwardSwitches(rope=ROPE_NEOX, embd_scale=True, gelu=True, scale_q=True)
    hf_layer_names = GEMMA_LAYER_NAMES
    gguf_layer_tensors = GEMMA_LAYER
    drops_lm_head = True
    swa_pattern = 2  # llama.cpp's load_swa_pattern(ml, 2): layers 0, 2, 4, ... slide
    n_layer_27b = 46
    unsupported_config = {**Family.unsupported_config, "attention_bias": "Q/K/V/O biases"}
    config_defaults = {
        "gemma2": {
            "vocab_size": 256000,
            "hidden_size": 2304,
            "intermediate_size": 9216,
            "num_hidden_layers": 26,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
            "query_pre_attn_scalar": 256,
            "sliding_window": 4096,
            "final_logit_softcapping": 30.0,
            "attn_logit_softcapping": 50.0,
            "hidden_activation": "gelu_pytorch_tanh",
        }
    }

    # --- convert ----------------------------------------------------------------------------

    def check_config(self, cfg: dict, path) -> None:
        act = cfg.get("hidden_activation") or cfg.get("hidden_act")
        if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise LlamatoolError(f"{path}: hidden_activation {act!r}; llama.cpp's {self.arch} runs gelu_pytorch_tanh only")
        n_layer, n_embd, n_head = cfg.get("num_hidden_layers"), cfg.get("hidden_size"), cfg.get("num_attention_heads")
        if isinstance(n_layer, int) and isinstance(n_embd, int) and isinstance(n_head, int) and n_head > 0:
            expected = n_embd // n_head if n_layer == self.n_layer_27b else cfg.get("head_dim")
            if cfg.get("query_pre_attn_scalar") != expected:
                raise LlamatoolError(f"{path}: query_pre_attn_scalar {cfg.get('query_pre_attn_scalar')!r} is not the "
                                     f"{expected} llama.cpp scales queries by for this model")
            self.check_layer_types(cfg, n_layer, path)
        self.check_rope(cfg, path)

    def check_layer_types(self, cfg: dict, n_layer: int, path) -> None:
        """llama.cpp fixes which layers slide (every swa_pattern-th is global): refuse others."""
        given = cfg.get("layer_types")
        if given is None:
            return
        expected = ["sliding_attention" if i % self.swa_pattern < self.swa_pattern - 1 else "full_attention" for i in range(n_layer)]
        if list(given) != expected:
            raise LlamatoolError(f"{path}: layer_types is not llama.cpp's {self.arch} pattern "
                                 f"(every {self.swa_pattern}th layer global)")

    def check_rope(self, cfg: dict, path) -> None:
        rope = cfg.get("rope_parameters") or {}
        if rope.get("rope_theta", 10000.0) != 10000.0 or rope.get("rope_type", "default") != "default":
            raise LlamatoolError(f"{path}: rope {rope}: the {self.arch} GGUF has no rope keys (llama.cpp uses base 10000)")

    def hf_extra_layer_tensors(self, hp) -> dict[str, tuple[int, ...]]:
        E = hp.n_embd
        return {"pre_feedforward_layernorm.weight": (E,), "post_feedforward_layernorm.weight": (E,)}

    def tensor_shift(self, gguf_name: str) -> float:
        return 1.0 if gguf_name.endswith("norm.weight") else 0.0

    def hyperparameter_fields(self, hp, file_type: int) -> list[Field]:
        cfg = hp.config
        a = self.arch
        n_kv = cfg["num_key_value_heads"] if "num_key_value_heads" in cfg else cfg["num_attention_heads"]
        return [
            (f"{a}.context_length", cfg["max_position_embeddings"], U32),
            (f"{a}.embedding_length", cfg["hidden_size"], U32),
            (f"{a}.block_count", hp.n_layer, U32),
            (f"{a}.feed_forward_length", cfg["intermediate_size"], U32),
            (f"{a}.attention.head_count", cfg["num_attention_heads"], U32),
            (f"{a}.attention.head_count_kv", n_kv, U32),
            (f"{a}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"], F32),
            (f"{a}.attention.key_length", cfg["head_dim"], U32),
            (f"{a}.attention.value_length", cfg["head_dim"], U32),
            ("general.file_type", file_type, U32),
            (f"{a}.attn_logit_softcapping", cfg["attn_logit_softcapping"], F32),
            (f"{a}.final_logit_softcapping", cfg["final_logit_softcapping"], F32),
            (f"{a}.attention.sliding_window", cfg["sliding_window"], U32),
        ]

    def vocab_fields(self, folder, hp, vocab) -> list[tuple]:
        return [("tokenizer.ggml.add_space_prefix", False, BOOL, None)]

    # --- run ----------------------------------------------------------------------------------

    def attention_params(self, meta, n_layer: int, n_embd: int, n_head: int, head_dim: int) -> dict:
        return {
            "attn_scale": gemma_attention_scale(self.n_layer_27b, n_layer, n_embd, n_head, head_dim),
            "attn_softcap": float(meta("attn_logit_softcapping", 50.0)),
            "final_softcap": float(meta("final_logit_softcapping", 30.0)),
            "n_swa": int(meta("attention.sliding_window", 4096)),
            "swa_pattern": int(meta("attention.sliding_window_pattern", self.swa_pattern)),
        }

