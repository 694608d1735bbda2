"""phi3: Phi-3 and Phi-3.5 mini/medium, Phi-4 (convert_hf_to_gguf.py's Phi3MiniModel, llama.cpp's
src/models/phi3.cpp).

LLaMA's computation over fused matrices: `attn_qkv` (Q, K and V rows stacked, HF's qkv_proj)
and `ffn_up` holding the gate's rows then the up rows (HF's gate_up_proj; llama.cpp's
ggml_swiglu splits it in halves). NEOX RoPE; Q scaled by 1/sqrt(head_dim) before attention.

Long-context checkpoints (LongRoPE, rope_scaling long_factor/short_factor) get two generated
tensors, `rope_factors_long` and `rope_factors_short` (per-frequency divisors; the long ones
are used when the context exceeds original_max_position_embeddings), and the key
rope.scaling.attn_factor sqrt(1 + ln(scale) / ln(original context)) that multiplies cos and
sin. The converter writes sliding_window (0 when absent), but llama.cpp runs Phi-3 without
it (its loader disables Phi SWA), and so does llamatool.

The vocab: SentencePiece with the added tokens of added_tokens.json, tokenizer_config.json and
tokenizer.json (Phi3MiniModel's own reading), or byte-level BPE when tokenizer_config.json
names GPT2Tokenizer (Phi-4).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import LlamatoolError
from .family import F32, ROPE_NEOX, U32, Family, Field, ForwardSwitches, LayerTensor, find

PHI3_LAYER = (
    LayerTensor("attn_norm.weight", "ATTN_NORM", "n_embd", float32=True),
    LayerTensor("attn_qkv.weight", "WQKV", "n_embd n_qkv"),
    LayerTensor("attn_output.weight", "WO", "n_q n_embd"),
    LayerTensor("ffn_norm.weight", "FFN_NORM", "n_embd", float32=True),
    LayerTensor("ffn_up.weight", "UP", "n_embd n_ff2"),
    LayerTensor("ffn_down.weight", "DOWN", "n_ff n_embd"),
)


class Phi3(Family):
    arch = "phi3"
    hf_classes = ("Phi3ForCausalLM",)
    forward = ForwardSwitches(rope=ROPE_NEOX, scale_q=True)
    gguf_layer_tensors = PHI3_LAYER
    config_defaults = {
        "phi3": {
            "vocab_size": 32064,
            "hidden_size": 3072,
            "intermediate_size": 8192,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "max_position_embeddings": 4096,
            "original_max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        }
    }

    # --- convert ----------------------------------------------------------------------------

    def check_config(self, cfg: dict, path) -> None:
        rope = self._rope(cfg)
        partial = rope.get("partial_rotary_factor", 1.0)
        if partial != 1.0:
            raise LlamatoolError(f"{path}: partial_rotary_factor {partial} (partial RoPE) is not supported")
        if cfg.get("head_dim") not in (None, cfg.get("hidden_size", 0) // max(1, cfg.get("num_attention_heads") or 1)):
            raise LlamatoolError(f"{path}: head_dim {cfg['head_dim']} != hidden_size / num_attention_heads is not supported")
        kind = str(rope.get("rope_type", "default")).lower()
        if rope.get("long_factor") and kind not in ("su", "longrope"):
            raise LlamatoolError(f"{path}: rope_scaling {kind!r} with long/short factors is not supported (longrope, su)")
        if kind not in ("default", "su", "longrope"):
            raise LlamatoolError(f"{path}: rope_scaling {kind!r} is not supported for {self.arch} (longrope)")

    @staticmethod
    def _rope(cfg: dict) -> dict:
        """rope_parameters as the reference sees them (original_max_position_embeddings mirrored in)."""
        rope = dict(cfg.get("rope_parameters") or {})
        rope.setdefault("original_max_position_embeddings", cfg.get("original_max_position_embeddings"))
        return rope

    def hf_layer_tensors(self, hp) -> dict[str, tuple[str, tuple[int, ...]]]:
        E, F, hd = hp.n_embd, hp.n_ff, hp.head_dim
        q, kv = hp.n_head * hd, hp.n_head_kv * hd
        return {
            "input_layernorm.weight": ("attn_norm.weight", (E,)),
            "self_attn.qkv_proj.weight": ("attn_qkv.weight", (q + 2 * kv, E)),
            "self_attn.o_proj.weight": ("attn_output.weight", (E, q)),
            "post_attention_layernorm.weight": ("ffn_norm.weight", (E,)),
            "mlp.gate_up_proj.weight": ("ffn_up.weight", (2 * F, E)),
            "mlp.down_proj.weight": ("ffn_down.weight", (E, F)),
        }

    def _long_rope(self, hp) -> tuple[float, list, list] | None:
        """(attention factor, long factors, short factors) of a LongRoPE checkpoint, else None."""
        rope = self._rope(hp.config)
        long_factors, short_factors = rope.get("long_factor"), rope.get("short_factor")
        if not long_factors:
            return None
        n_ctx = find(hp.config, ("n_positions", "max_position_embeddings"))
        orig = rope["original_max_position_embeddings"]
        scale = n_ctx / orig
        attn_factor = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
        n = hp.head_dim // 2
        if not short_factors or len(long_factors) != n or len(short_factors) != n:
            raise LlamatoolError(f"{hp.path}: rope long_factor and short_factor must hold {n} values each")
        return attn_factor, long_factors, short_factors

    def tensor_fields(self, hp) -> list[Field]:
        long_rope = self._long_rope(hp)
        return [] if long_rope is None else [(f"{self.arch}.rope.scaling.attn_factor", long_rope[0], F32)]

    def extra_tensors(self, hp) -> list[tuple[str, np.ndarray]]:
        long_rope = self._long_rope(hp)
        if long_rope is None:
            return []
        _, long_factors, short_factors = long_rope
        return [("rope_factors_long.weight", np.asarray(long_factors, np.float32)),
                ("rope_factors_short.weight", np.asarray(short_factors, np.float32))]

    def hyperparameter_fields(self, hp, file_type: int) -> list[Field]:
        cfg, a = hp.config, self.arch
        rope = self._rope(cfg)
        if rope.get("original_max_position_embeddings") is None:
            raise LlamatoolError(f"{hp.path}: {self.arch} needs original_max_position_embeddings")
        return [
            (f"{a}.context_length", find(cfg, ("n_positions", "max_position_embeddings")), U32),
            (f"{a}.rope.scaling.original_context_length", rope["original_max_position_embeddings"], U32),
            (f"{a}.embedding_length", hp.n_embd, U32),
            (f"{a}.feed_forward_length", hp.n_ff, U32),
            (f"{a}.block_count", hp.n_layer, U32),
            (f"{a}.attention.head_count", hp.n_head, U32),
            (f"{a}.attention.head_count_kv", find(cfg, ("num_key_value_heads", "n_head_kv")), U32),
            (f"{a}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"], F32),
            (f"{a}.rope.dimension_count", hp.n_embd // hp.n_head, U32),
            (f"{a}.rope.freq_base", rope.get("full_attention", rope)["rope_theta"], F32),
            ("general.file_type", file_type, U32),
            (f"{a}.attention.sliding_window", cfg.get("sliding_window") or 0, U32),
        ]

    def load_vocab(self, folder, hp):
        from ..convert.vocab import phi3_vocab

        return phi3_vocab(folder, hp.n_vocab)
