"""What every model family declares, and the LLaMA-shaped defaults the others start from.

A family is one class (llamatool/arch/<family>.py) with:

    arch, hf_classes, config_defaults    GGUF name, the Hugging Face classes it converts, and
                                         transformers' config defaults by model_type
    hf_layer_tensors(hp)                 the tensors of one HF layer: local name -> (GGUF local
                                         name, numpy shape); permute_qk for LLaMA's row order
    extra_tensors(hp)                    tensors the converter generates (Llama 3's rope_freqs)
    hyperparameter_fields(hp, ftype)     the `<arch>.*` keys, in convert_hf_to_gguf.py's order
    vocab_fields(folder, hp, vocab)      the family's own touches to the tokenizer keys
    gguf_layer_tensors                   the runtime's view: GGUF tensor, forward-pass role,
                                         shape, whether a file may lack it
    forward                              ForwardSwitches: what the shared fused pass does
                                         differently for this family
    attention_params(meta, ...)          what llama.cpp's load_arch_hparams derives from the
                                         file: attention scale, soft-caps, sliding window
    quantize_70b_layers                  llama-quantize's "70B" layer count for its attn_v rule

The base class is the LLaMA layout, which every family here shares except where it says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..gguf_io import ValueType

U32, F32, STR, BOOL = ValueType.UINT32, ValueType.FLOAT32, ValueType.STRING, ValueType.BOOL
Field = tuple[str, Any, ValueType]

# rope styles (llama.cpp's LLAMA_ROPE_TYPE_NORM / _NEOX): adjacent pairs, or the two halves of a head
ROPE_NORM, ROPE_NEOX = 0, 2


@dataclass(frozen=True)
class ForwardSwitches:
    """Where a family's forward pass differs from LLaMA's (the fused pass reads these)."""

    rope: int = ROPE_NORM  # ROPE_NORM or ROPE_NEOX
    nope_every: int = 0  # > 0: layers il with (il + 1) % nope_every == 0 skip RoPE (SmolLM3)
    embd_scale: bool = False  # token embeddings times sqrt(n_embd) (Gemma)
    gelu: bool = False  # GELU(tanh)-gated FFN instead of SwiGLU (Gemma)
    scale_q: bool = False  # llama.cpp scales Q before attention (Gemma, Phi-3), not the K.Q scores
    # Biases, per-head Q/K RMSNorm, post-attention/post-FFN norms and Phi-3's fused gate|up
    # need no switch: the pass applies them wherever the layer holds the tensor (see
    # gguf_layer_tensors).


@dataclass(frozen=True)
class LayerTensor:
    """One tensor of a GGUF layer as the runtime loads it."""

    name: str  # inside blk.{i}., e.g. "attn_q.weight"
    role: str  # the forward pass's LAYER_* column, without the prefix
    shape: str  # ggml ne, space-separated: n_embd, n_ff, n_q, n_kv or head_dim (model.Weights)
    required: bool = True
    float32: bool = False  # norms and biases: llamatool reads them as F32 only


def find(cfg: dict, keys: tuple[str, ...]) -> Any:
    """The first of `keys` present in the config (the converter's find_hparam)."""
    return next((cfg[k] for k in keys if k in cfg), None)


# HF module inside model.layers.{i} -> GGUF name inside blk.{i} (gguf-py's tensor map)
HF_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.qkv_proj": "attn_qkv",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "mlp.gate_up_proj": "ffn_up",
}

_LLAMA_LAYER = (
    LayerTensor("attn_norm.weight", "ATTN_NORM", "n_embd", float32=True),
    LayerTensor("attn_q.weight", "WQ", "n_embd n_q"),
    LayerTensor("attn_k.weight", "WK", "n_embd n_kv"),
    LayerTensor("attn_v.weight", "WV", "n_embd n_kv"),
    LayerTensor("attn_q.bias", "BQ", "n_q", required=False, float32=True),
    LayerTensor("attn_k.bias", "BK", "n_kv", required=False, float32=True),
    LayerTensor("attn_v.bias", "BV", "n_kv", required=False, float32=True),
    LayerTensor("attn_output.weight", "WO", "n_q n_embd"),
    LayerTensor("attn_output.bias", "BO", "n_embd", required=False, float32=True),
    LayerTensor("ffn_norm.weight", "FFN_NORM", "n_embd", float32=True),
    LayerTensor("ffn_gate.weight", "GATE", "n_embd n_ff"),
    LayerTensor("ffn_up.weight", "UP", "n_embd n_ff"),
    LayerTensor("ffn_down.weight", "DOWN", "n_ff n_embd"),
    LayerTensor("ffn_gate.bias", "BGATE", "n_ff", required=False, float32=True),
    LayerTensor("ffn_up.bias", "BUP", "n_ff", required=False, float32=True),
    LayerTensor("ffn_down.bias", "BDOWN", "n_embd", required=False, float32=True),
)


class Family:
    """The LLaMA layout; a family overrides what differs."""

    arch = "llama"
    hf_classes: tuple[str, ...] = ()
    config_defaults: dict[str, dict[str, Any]] = {}
    default_rope_theta = 10000.0  # the config class's default_theta
    head_dim_from_heads = False  # the config class fills in head_dim = hidden_size // heads
    permute_qk = False  # LLaMA's converter reorders Q/K rows for ggml's adjacent-pair RoPE
    forward = ForwardSwitches()
    gguf_layer_tensors: tuple[LayerTensor, ...] = _LLAMA_LAYER
    quantize_70b_layers: int | None = None
    hf_layer_names = HF_LAYER_NAMES
    drops_lm_head = False  # the converter skips a stored lm_head.weight (Gemma 2: always tied)
    # the forward pass cannot run these (a feature's config key -> what it is)
    unsupported_config: dict[str, str] = {
        "num_local_experts": "mixture-of-experts layers",
        "num_experts": "mixture-of-experts layers",
        "vision_config": "a vision tower",
    }

    # --- convert ----------------------------------------------------------------------------

    def normalize_rope(self, raw: dict, params: dict) -> dict:
        """rope_parameters as the config class builds them (llamatool.convert.hparams made the
        common part; Gemma 3 has one dict per attention type)."""
        return params

    def check_config(self, cfg: dict, path) -> None:
        """Refuse a config whose features this family's forward pass (or llama.cpp's) lacks."""

    def hf_layer_tensors(self, hp) -> dict[str, tuple[str, tuple[int, ...]]]:
        """One layer's HF tensors: local name -> (GGUF local name, numpy shape)."""
        E, F, hd = hp.n_embd, hp.n_ff, hp.head_dim
        q, kv = hp.n_head * hd, hp.n_head_kv * hd
        shapes = {
            "input_layernorm.weight": (E,),
            "self_attn.q_proj.weight": (q, E),
            "self_attn.k_proj.weight": (kv, E),
            "self_attn.v_proj.weight": (kv, E),
            "self_attn.o_proj.weight": (E, q),
            "post_attention_layernorm.weight": (E,),
            "mlp.gate_proj.weight": (F, E),
            "mlp.up_proj.weight": (F, E),
            "mlp.down_proj.weight": (E, F),
        }
        shapes.update(self.hf_extra_layer_tensors(hp))
        out = {}
        for local, shape in shapes.items():
            module, _, suffix = local.rpartition(".")
            out[local] = (f"{self.hf_layer_names[module]}.{suffix}", shape)
        return out

    def hf_extra_layer_tensors(self, hp) -> dict[str, tuple[int, ...]]:
        """Biases as the config declares them (LLaMA's attention_bias, mlp_bias)."""
        E, F = hp.n_embd, hp.n_ff
        q, kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
        out = {}
        if hp.config.get("attention_bias"):
            out.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,),
                        "self_attn.o_proj.bias": (E,)})  # fmt: skip
        if hp.config.get("mlp_bias"):
            out.update({"mlp.gate_proj.bias": (F,), "mlp.up_proj.bias": (F,), "mlp.down_proj.bias": (E,)})
        return out

    def extra_tensors(self, hp) -> list[tuple[str, Any]]:
        """(GGUF name, float32 values) the converter generates, written before the checkpoint's."""
        return []

    def hyperparameter_fields(self, hp, file_type: int) -> list[Field]:
        return text_model_fields(self.arch, hp, file_type)

    def vocab_fields(self, folder, hp, vocab) -> list[tuple]:
        """(key, value, type, subtype) the family's set_vocab adds after the tokenizer's."""
        return []

    def load_vocab(self, folder, hp):
        """The checkpoint's tokenizer as GGUF metadata (llamatool.convert.vocab)."""
        from ..convert.vocab import load_vocab

        return load_vocab(folder, hp.n_vocab, self.uses_add_space_prefix())

    def uses_add_space_prefix(self) -> bool:
        """Whether tokenizer_config.json's add_prefix_space becomes tokenizer.ggml.add_space_prefix."""
        return False

    def tensor_shift(self, gguf_name: str) -> float:
        """What the converter adds to a tensor's values (Gemma's norms store weight - 1)."""
        return 0.0

    def tensor_fields(self, hp) -> list[Field]:
        """Keys the reference writes while it prepares the tensors, before the general.* ones
        (Phi-3's rope attention factor)."""
        return []

    # --- run ----------------------------------------------------------------------------------

    def attention_params(self, meta, n_layer: int, n_embd: int, n_head: int, head_dim: int) -> dict:
        """ModelArgs values llama.cpp's load_arch_hparams sets for this family. meta(key,
        default) reads `<arch>.<key>` from the file. LLaMA: no window, no soft-caps, K.Q
        scaled by 1/sqrt(head_dim)."""
        return {}


# --- the hyperparameters every text model writes (TextModel.set_gguf_parameters) ------------


def _rope_scaling_fields(arch: str, rope: dict) -> list[Field]:
    from ..errors import LlamatoolError

    kind, factor = rope.get("rope_type"), rope.get("factor")
    key = f"{arch}.rope.scaling"
    if kind == "linear" and factor is not None:
        return [(f"{key}.type", "linear", STR), (f"{key}.factor", factor, F32)]
    if kind == "yarn" and factor is not None:
        if "original_max_position_embeddings" not in rope:
            raise LlamatoolError("config.json: yarn rope scaling needs original_max_position_embeddings")
        fields = [
            (f"{key}.type", "yarn", STR),
            (f"{key}.factor", factor, F32),
            (f"{key}.original_context_length", rope["original_max_position_embeddings"], U32),
        ]
        attn = rope.get("attention_factor", rope.get("attn_factor"))
        for name, value in (("ext_factor", rope.get("extrapolation_factor")), ("attn_factor", attn),
                            ("beta_fast", rope.get("beta_fast")), ("beta_slow", rope.get("beta_slow"))):  # fmt: skip
            if value is not None:
                fields.append((f"{key}.yarn_{name}", value, F32))
        return fields
    if kind in ("su", "longrope"):
        return [(f"{key}.type", "longrope", STR)]
    return []  # default, dynamic, llama3 (rope_freqs tensor): nothing to write


def text_model_fields(arch: str, hp, file_type: int) -> list[Field]:
    """The `<arch>.*` keys and general.file_type every text model gets, in the reference's order."""
    cfg = hp.config
    fields: list[Field] = [(f"{arch}.block_count", hp.n_layer, U32)]

    def add(key: str, keys: tuple[str, ...], vtype: ValueType) -> None:
        value = find(cfg, keys)
        if value is not None:
            fields.append((f"{arch}.{key}", value, vtype))

    add("context_length", ("max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length", "model_max_length"), U32)
    add("embedding_length", ("hidden_size", "n_embd", "dim"), U32)
    add("feed_forward_length", ("prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner", "hidden_dim"), U32)
    add("attention.head_count", ("num_attention_heads", "n_head", "n_heads"), U32)
    add("attention.head_count_kv", ("num_key_value_heads", "n_kv_heads"), U32)
    if cfg.get("is_causal") is False:
        fields.append((f"{arch}.attention.causal", False, BOOL))
    rope = hp.rope.get("full_attention", hp.rope)  # per attention type (Gemma 3): the global layers'
    fields += _rope_scaling_fields(arch, rope)
    if rope.get("rope_theta") is not None:
        fields.append((f"{arch}.rope.freq_base", rope["rope_theta"], F32))
    if hp.rope.get("sliding_attention", {}).get("rope_theta") is not None:
        fields.append((f"{arch}.rope.freq_base_swa", hp.rope["sliding_attention"]["rope_theta"], F32))
    add("attention.layer_norm_rms_epsilon", ("rms_norm_eps", "norm_eps"), F32)
    add("attention.layer_norm_epsilon", ("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"), F32)
    if cfg.get("head_dim") is not None:
        fields += [(f"{arch}.attention.key_length", cfg["head_dim"], U32), (f"{arch}.attention.value_length", cfg["head_dim"], U32)]
    fields.append(("general.file_type", file_type, U32))
    return fields
