"""The llama architecture: which tensors a checkpoint must hold, their GGUF names and
shapes, the Q/K row permutation, llama3's RoPE factors, and the `llama.*` keys.

Hugging Face stores the rotary halves of each attention head apart (first half of the
head's rows, then the second); ggml's RoPE wants the two values of each rotated pair
next to each other. convert_hf_to_gguf.py therefore permutes the rows of q_proj and
k_proj (and their biases), per head:

    new row  h*hd + 2*i + j   <-  old row  h*hd + j*hd/2 + i     (j in {0, 1})
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import LlamatoolError
from ..gguf_io import ValueType
from .hparams import LlamaHparams, find
from .tensor_files import StoredTensor

ARCH = "llama"

# Tensors convert_hf_to_gguf.py drops before mapping names.
SKIPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")

_LAYER_TENSORS = {
    # HF name inside model.layers.{i}  ->  GGUF name inside blk.{i}
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


@dataclass(frozen=True)
class Expected:
    gguf_name: str
    shape: tuple[int, ...]  # numpy order, as stored by HF
    permute_heads: int = 0  # Q/K: number of heads to permute rows over; 0 = keep order


def expected_tensors(hp: LlamaHparams) -> dict[str, Expected]:
    """Every tensor a checkpoint with this config may hold, by HF name."""
    E, F, V, hd = hp.n_embd, hp.n_ff, hp.n_vocab, hp.head_dim
    q, kv = hp.n_head * hd, hp.n_head_kv * hd
    out = {
        "model.embed_tokens.weight": Expected("token_embd.weight", (V, E)),
        "model.norm.weight": Expected("output_norm.weight", (E,)),
        "lm_head.weight": Expected("output.weight", (V, E)),
    }
    for i in range(hp.n_layer):
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
        if hp.attention_bias:
            shapes.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,), "self_attn.o_proj.bias": (E,)})
        if hp.mlp_bias:
            shapes.update({"mlp.gate_proj.bias": (F,), "mlp.up_proj.bias": (F,), "mlp.down_proj.bias": (E,)})
        for local, shape in shapes.items():
            module, _, suffix = local.rpartition(".")
            heads = hp.n_head if module == "self_attn.q_proj" else hp.n_head_kv if module == "self_attn.k_proj" else 0
            out[f"model.layers.{i}.{local}"] = Expected(f"blk.{i}.{_LAYER_TENSORS[module]}.{suffix}", shape, heads)
    return out


def required_tensors(hp: LlamaHparams, present: set[str]) -> list[str]:
    """HF names a usable checkpoint cannot lack (biases only when the config has them)."""
    expected = expected_tensors(hp)
    required = [n for n in expected if n != "lm_head.weight"]
    if not hp.tied:
        required.append("lm_head.weight")
    return [n for n in required if n not in present]


def head_row_order(n_rows: int, n_heads: int) -> np.ndarray:
    """Source row of each destination row for the Q/K permutation."""
    return np.arange(n_rows).reshape(n_heads, 2, n_rows // n_heads // 2).swapaxes(1, 2).reshape(n_rows)


@dataclass
class ModelTensor:
    """One tensor of the GGUF: where its values come from and how they are reordered."""

    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order
    source: StoredTensor | None = None
    values: np.ndarray | None = None  # generated tensors (rope_freqs)
    row_order: np.ndarray | None = None

    @property
    def ne(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def src_dtype(self) -> str:
        return self.source.dtype if self.source is not None else "F32"


def model_tensors(hp: LlamaHparams, stored: dict[str, StoredTensor]) -> list[ModelTensor]:
    """The GGUF's tensors in convert_hf_to_gguf.py's order, after checking every stored
    tensor's name, dtype and shape against the config."""
    expected = expected_tensors(hp)
    out = []
    if (factors := rope_freq_factors(hp)) is not None:
        out.append(ModelTensor("rope_freqs.weight", factors.shape, values=factors))
    for name, t in stored.items():
        if name.endswith(SKIPPED_SUFFIXES):
            continue
        exp = expected.get(name)
        if exp is None:
            raise LlamatoolError(f"{t.path}: unexpected tensor {name!r} (not part of a {hp.hf_arch} with this config.json)")
        if t.shape != exp.shape:
            raise LlamatoolError(f"{t.path}: tensor {name!r} has shape {list(t.shape)}, config.json implies {list(exp.shape)}")
        if t.dtype not in ("F32", "F16", "BF16", "F64"):
            raise LlamatoolError(f"{t.path}: tensor {name!r} has dtype {t.dtype}; only F32, F16, BF16 and F64 weights can be converted")
        order = head_row_order(exp.shape[0], exp.permute_heads) if exp.permute_heads else None
        out.append(ModelTensor(exp.gguf_name, exp.shape, source=t, row_order=order))
    missing = required_tensors(hp, set(stored))
    if missing:
        where = next(iter(stored.values())).path.parent if stored else hp.path.parent
        hint = " (config.json says tie_word_embeddings is false)" if missing[0] == "lm_head.weight" else ""
        raise LlamatoolError(f"{where}: missing tensor {missing[0]!r}{hint}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    return out


# --- llama3 RoPE frequency factors ---------------------------------------------------------


def rope_freq_factors(hp: LlamaHparams) -> np.ndarray | None:
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


# --- hyperparameters -------------------------------------------------------------------------

_U32, _F32, _STR, _BOOL = ValueType.UINT32, ValueType.FLOAT32, ValueType.STRING, ValueType.BOOL


def _rope_scaling_fields(rope: dict) -> list[tuple[str, object, ValueType]]:
    kind, factor = rope.get("rope_type"), rope.get("factor")
    key = f"{ARCH}.rope.scaling"
    if kind == "linear" and factor is not None:
        return [(f"{key}.type", "linear", _STR), (f"{key}.factor", factor, _F32)]
    if kind == "yarn" and factor is not None:
        if "original_max_position_embeddings" not in rope:
            raise LlamatoolError("config.json: yarn rope scaling needs original_max_position_embeddings")
        fields = [
            (f"{key}.type", "yarn", _STR),
            (f"{key}.factor", factor, _F32),
            (f"{key}.original_context_length", rope["original_max_position_embeddings"], _U32),
        ]
        attn = rope.get("attention_factor", rope.get("attn_factor"))
        for name, value in (("ext_factor", rope.get("extrapolation_factor")), ("attn_factor", attn),
                            ("beta_fast", rope.get("beta_fast")), ("beta_slow", rope.get("beta_slow"))):  # fmt: skip
            if value is not None:
                fields.append((f"{key}.yarn_{name}", value, _F32))
        return fields
    if kind in ("su", "longrope"):
        return [(f"{key}.type", "longrope", _STR)]
    return []  # default, dynamic, llama3 (rope_freqs tensor): nothing to write


def hyperparameter_fields(hp: LlamaHparams, file_type: int) -> list[tuple[str, object, ValueType]]:
    """The `llama.*` keys and general.file_type, in convert_hf_to_gguf.py's order."""
    cfg, a = hp.config, ARCH
    fields: list[tuple[str, object, ValueType]] = [(f"{a}.block_count", hp.n_layer, _U32)]

    def add(key: str, keys: tuple[str, ...], vtype: ValueType) -> None:
        value = find(cfg, keys)
        if value is not None:
            fields.append((f"{a}.{key}", value, vtype))

    add("context_length", ("max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length", "model_max_length"), _U32)
    add("embedding_length", ("hidden_size", "n_embd", "dim"), _U32)
    add("feed_forward_length", ("prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner", "hidden_dim"), _U32)
    add("attention.head_count", ("num_attention_heads", "n_head", "n_heads"), _U32)
    add("attention.head_count_kv", ("num_key_value_heads", "n_kv_heads"), _U32)
    if cfg.get("is_causal") is False:
        fields.append((f"{a}.attention.causal", False, _BOOL))
    fields += _rope_scaling_fields(hp.rope)
    if hp.rope.get("rope_theta") is not None:
        fields.append((f"{a}.rope.freq_base", hp.rope["rope_theta"], _F32))
    add("attention.layer_norm_rms_epsilon", ("rms_norm_eps", "norm_eps"), _F32)
    add("attention.layer_norm_epsilon", ("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"), _F32)
    if cfg.get("head_dim") is not None:
        fields += [(f"{a}.attention.key_length", cfg["head_dim"], _U32), (f"{a}.attention.value_length", cfg["head_dim"], _U32)]
    fields.append(("general.file_type", file_type, _U32))
    fields.append((f"{a}.vocab_size", hp.n_vocab, _U32))
    rope_dim = cfg.get("head_dim") or hp.n_embd // hp.n_head
    fields.append((f"{a}.rope.dimension_count", rope_dim, _U32))
    return fields
