"""gemma3: Gemma 3 text models (Gemma3ForCausalLM; convert_hf_to_gguf.py's Gemma3Model, llama.cpp's
src/models/gemma3.cpp).

Gemma 2's layer (llamatool.arch.gemma2: embedding scale, +1 norms, sandwich norms, GELU,
Q scaled before attention) without its soft-caps (a final-logit cap only if the config has
one), plus an RMSNorm over each head of Q and K before RoPE (their weights +1 as well), and
five sliding-window layers for every global one (llama.cpp's pattern 6: layers 5, 11, ... are
global). The sliding layers rotate with their own base (`rope.freq_base_swa`, HF's
rope_parameters["sliding_attention"], 10000) and no scaling; the global ones with the
model's base and its linear scaling, if any. The converter keeps a stored lm_head (output).

The converter writes TextModel's keys, overwrites some in place (context length, heads,
epsilon, head_dim, rope base), then appends final_logit_softcapping (if set) and the
sliding window.
"""

from __future__ import annotations

from ..errors import LlamatoolError
from .family import BOOL, F32, U32, Field, LayerTensor, text_model_fields
from .gemma2 import GEMMA_LAYER, GEMMA_LAYER_NAMES, Gemma2, gemma_attention_scale


class Gemma3(Gemma2):
    arch = "gemma3"
    hf_classes = ("Gemma3ForCausalLM",)
    forward = Gemma2.forward
    gguf_layer_tensors = GEMMA_LAYER + (
        LayerTensor("attn_q_norm.weight", "Q_NORM", "head_dim", float32=True),
        LayerTensor("attn_k_norm.weight", "K_NORM", "head_dim", float32=True),
    )
    hf_layer_names = GEMMA_LAYER_NAMES
    drops_lm_head = False
    swa_pattern = 6  # llama.cpp's load_swa_pattern(ml, 6)
    n_layer_27b = 62
    default_rope_theta = 1_000_000.0
    config_defaults = {
        "gemma3_text": {**Gemma2.config_defaults["gemma2"], "vocab_size": 262208, "max_position_embeddings": 131072,
                        "final_logit_softcapping": None, "attn_logit_softcapping": None}
    }

    # --- convert ----------------------------------------------------------------------------

    def normalize_rope(self, raw: dict, params: dict) -> dict:
        """rope_parameters as Gemma3TextConfig gives them: one dict per attention type (a legacy
        config's rope_theta / rope_scaling are the global layers', rope_local_base_freq the
        sliding ones')."""
        if "full_attention" in params or "sliding_attention" in params:
            return params
        full = {k: v for k, v in params.items() if k != "type"}
        full.setdefault("rope_theta", self.default_rope_theta)
        sliding = {"rope_type": "default", "rope_theta": raw.get("rope_local_base_freq", 10000.0)}
        return {"sliding_attention": sliding, "full_attention": full}

    def check_config(self, cfg: dict, path) -> None:
        if cfg.get("attn_logit_softcapping") is not None:
            raise LlamatoolError(f"{path}: attn_logit_softcapping is not part of Gemma 3 (the reference refuses it)")
        super().check_config(cfg, path)

    def check_rope(self, cfg: dict, path) -> None:
        rope = cfg.get("rope_parameters") or {}
        sliding = rope.get("sliding_attention", {})
        full = rope.get("full_attention", rope)
        if sliding.get("rope_type", "default") != "default" or full.get("rope_type", "default") not in ("default", "linear"):
            raise LlamatoolError(f"{path}: rope {rope}: llamatool runs Gemma 3 with default or linear (global layers) RoPE")

    def hf_extra_layer_tensors(self, hp) -> dict[str, tuple[int, ...]]:
        hd = hp.head_dim
        return {**super().hf_extra_layer_tensors(hp), "self_attn.q_norm.weight": (hd,), "self_attn.k_norm.weight": (hd,)}

    def hyperparameter_fields(self, hp, file_type: int) -> list[Field]:
        cfg, a = hp.config, self.arch
        fields = text_model_fields(a, hp, file_type)
        head_dim = cfg.get("head_dim", 256)
        overwrite = {
            f"{a}.context_length": (cfg.get("max_position_embeddings", 131072), U32),
            f"{a}.attention.head_count": (cfg.get("num_attention_heads", 8), U32),
            f"{a}.attention.layer_norm_rms_epsilon": (cfg.get("rms_norm_eps", 1e-6), F32),
            f"{a}.attention.key_length": (head_dim, U32),
            f"{a}.attention.value_length": (head_dim, U32),
            f"{a}.rope.freq_base": (hp.rope.get("full_attention", hp.rope).get("rope_theta", 1_000_000.0), F32),
        }
        out = {key: (value, vtype) for key, value, vtype in fields}
        for key, value in overwrite.items():  # the writer replaces a key in place, or appends it
            out[key] = value
        if cfg.get("final_logit_softcapping"):
            out[f"{a}.final_logit_softcapping"] = (cfg["final_logit_softcapping"], F32)
        if cfg.get("sliding_window_pattern") != 1:
            out[f"{a}.attention.sliding_window"] = (cfg["sliding_window"], U32)
        out[f"{a}.attention.head_count_kv"] = (cfg.get("num_key_value_heads", 4), U32)
        return [(key, value, vtype) for key, (value, vtype) in out.items()]

    def vocab_fields(self, folder, hp, vocab) -> list[tuple]:
        return [("tokenizer.ggml.add_space_prefix", False, BOOL, None)] if vocab.model == "llama" else []

    # --- run ----------------------------------------------------------------------------------

    def attention_params(self, meta, n_layer: int, n_embd: int, n_head: int, head_dim: int) -> dict:
        n_swa = int(meta("attention.sliding_window", 0) or 0)
        params = {
            "attn_scale": gemma_attention_scale(self.n_layer_27b, n_layer, n_embd, n_head, head_dim),
            "final_softcap": float(meta("final_logit_softcapping", 0.0) or 0.0),
        }
        if n_swa > 0:
            params.update(n_swa=n_swa, swa_pattern=int(meta("attention.sliding_window_pattern", self.swa_pattern)),
                          rope_base_swa=float(meta("rope.freq_base_swa", 10000.0)), rope_freq_scale_swa=1.0)
        return params



