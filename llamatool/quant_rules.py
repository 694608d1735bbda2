"""Which ggml type llama-quantize gives each tensor: its presets and per-tensor rules.

A preset ("Q4_K_M") is a llama_ftype: a default type plus a recipe that spends more
bits where quantization hurts most (the output matrix, attn_v and ffn_down of some
layers). This module reproduces llama.cpp's choice (src/llama-quant.cpp:
tensor_allows_quantization, llama_tensor_get_type and tensor_type_fallback) from the
tensor names, shapes and model metadata alone, so `quantize --dry-run` and
`convert --outtype <preset>` can plan without touching tensor data.

Three facts shape the port:
- llama-quantize walks tensors in its loader's order (non-layer tensors first, then by
  layer number, by name within each), and its attn_v/ffn_down counters advance in that
  order, so the plan is computed in that order whatever order the caller gives.
- A row length that is not a multiple of the chosen type's block size falls back to a
  32-block type (Q4_K -> Q5_0, ...); llama-quantize counts and reports these.
- Types named explicitly (--output-tensor-type, --token-embedding-type) skip the
  fallback; llama-quantize then fails mid-file, we refuse before writing anything.

Only the branches reachable from the presets below are ported (the MXFP4 recipe is not);
with an importance matrix (QuantizeOptions.has_imatrix) the rules that depend on one (IQ3_XXS
attn_v and ffn_down, IQ4 and Q4_0/Q5_0 ffn_down) follow llama-quantize's. The 1-3-bit presets
put types on some tensors that cannot be made without one (`requires_imatrix`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from . import arch as families
from .errors import LlamatoolError
from .quants.registry import GGMLType, ggml_type, gguf_constants

FT = gguf_constants.LlamaFileType

# preset -> (llama_ftype written to general.file_type, default tensor type)
PRESETS: dict[str, tuple[FT, str]] = {
    "F32": (FT.ALL_F32, "F32"),
    "F16": (FT.MOSTLY_F16, "F16"),
    "BF16": (FT.MOSTLY_BF16, "BF16"),
    "Q4_0": (FT.MOSTLY_Q4_0, "Q4_0"),
    "Q4_1": (FT.MOSTLY_Q4_1, "Q4_1"),
    "Q5_0": (FT.MOSTLY_Q5_0, "Q5_0"),
    "Q5_1": (FT.MOSTLY_Q5_1, "Q5_1"),
    "Q8_0": (FT.MOSTLY_Q8_0, "Q8_0"),
    "Q2_K": (FT.MOSTLY_Q2_K, "Q2_K"),
    "Q3_K_S": (FT.MOSTLY_Q3_K_S, "Q3_K"),
    "Q3_K_M": (FT.MOSTLY_Q3_K_M, "Q3_K"),
    "Q3_K_L": (FT.MOSTLY_Q3_K_L, "Q3_K"),
    "Q4_K_S": (FT.MOSTLY_Q4_K_S, "Q4_K"),
    "Q4_K_M": (FT.MOSTLY_Q4_K_M, "Q4_K"),
    "Q5_K_S": (FT.MOSTLY_Q5_K_S, "Q5_K"),
    "Q5_K_M": (FT.MOSTLY_Q5_K_M, "Q5_K"),
    "Q6_K": (FT.MOSTLY_Q6_K, "Q6_K"),
    "IQ4_NL": (FT.MOSTLY_IQ4_NL, "IQ4_NL"),
    "IQ4_XS": (FT.MOSTLY_IQ4_XS, "IQ4_XS"),
    "TQ1_0": (FT.MOSTLY_TQ1_0, "TQ1_0"),
    "TQ2_0": (FT.MOSTLY_TQ2_0, "TQ2_0"),
    "Q2_K_S": (FT.MOSTLY_Q2_K_S, "Q2_K"),
    "IQ2_XXS": (FT.MOSTLY_IQ2_XXS, "IQ2_XXS"),
    "IQ2_XS": (FT.MOSTLY_IQ2_XS, "IQ2_XS"),
    "IQ2_S": (FT.MOSTLY_IQ2_S, "IQ2_XS"),
    "IQ2_M": (FT.MOSTLY_IQ2_M, "IQ2_S"),
    "IQ3_XXS": (FT.MOSTLY_IQ3_XXS, "IQ3_XXS"),
    "IQ3_XS": (FT.MOSTLY_IQ3_XS, "IQ3_S"),
    "IQ3_S": (FT.MOSTLY_IQ3_S, "IQ3_S"),
    "IQ3_M": (FT.MOSTLY_IQ3_M, "IQ3_S"),
    "IQ1_S": (FT.MOSTLY_IQ1_S, "IQ1_S"),
    "IQ1_M": (FT.MOSTLY_IQ1_M, "IQ1_M"),
}
# The presets whose recipe uses types that need an importance matrix (all but the IQ3_S mixes)
LOW_BIT_PRESETS = ("Q2_K_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ1_S", "IQ1_M")
# Types ggml can only make with an importance matrix (tensor_requires_imatrix)
_NEED_IMATRIX = ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S")
# The 2-bit recipes (one branch of llama_tensor_get_type_impl), and the ones of them on IQ2_S/IQ3_S
_IQ2_RECIPES = ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")
_IQ2_S_RECIPES = ("IQ2_S", "IQ2_M")
# llama-quantize's shorthands for the medium K mixes
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

# Fallback for a type whose 256-wide blocks do not fit the rows (tensor_type_fallback)
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL",
             "TQ1_0": "Q4_0", "TQ2_0": "Q4_0", "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL",
             "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL", "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL"}

# Architectures whose 80 (jais2: 68) layer models llama.cpp calls "70B" (one attn_v rule): the
# families llamatool runs declare it (llamatool.arch); these others can only be quantized.
_70B_LAYERS = {**families.quantize_70b_layers(), "deci": 80, "olmo": 80, "jais2": 68}

# Substrings of 2-D tensor names that llama-quantize never quantizes (small or special).
_NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd",
    "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook",
    "mm.a.code_embd",
)  # fmt: skip
_NEVER_QUANTIZED_NAMES = ("position_embd.weight", "token_types.weight")
_NEVER_QUANTIZED_GLM5_NEXT = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight",
    "ssm_g_b.weight", "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)  # fmt: skip


# --- presets ---------------------------------------------------------------------------


def preset_names() -> list[str]:
    return list(PRESETS)


def canonical_preset(preset: str | int) -> str:
    """The preset's canonical name: any case, an alias (Q4_K) or a llama_ftype number."""
    key = str(preset).strip().upper()
    key = ALIASES.get(key, key)
    if key in PRESETS:
        return key
    if key.isdigit():
        for name, (ftype, _) in PRESETS.items():
            if int(ftype) == int(key):
                return name
    raise LlamatoolError(f"unknown quantization type {str(preset)!r} (choose from {', '.join(PRESETS)})")


def is_preset(text: str) -> bool:
    try:
        canonical_preset(text)
    except LlamatoolError:
        return False
    return True


def requires_imatrix(name: str, type_name: str, preset: str) -> bool:
    """tensor_requires_imatrix: the types ggml cannot make without quantization weights
    (and Q2_K in a Q2_K_S file), except on the embeddings and the output matrix."""
    if name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
        return False
    return type_name in _NEED_IMATRIX or (type_name == "Q2_K" and canonical_preset(preset) == "Q2_K_S")


def preset_file_type(preset: str | int) -> int:
    """The llama_ftype value llama-quantize writes to general.file_type for this preset."""
    return int(PRESETS[canonical_preset(preset)][0])


@dataclass
class QuantizeOptions:
    """llama-quantize's options that change which type a tensor gets."""

    preset: str
    pure: bool = False  # every quantizable tensor gets the preset's default type
    leave_output_tensor: bool = False  # keep output.weight as it is
    output_tensor_type: str | None = None  # explicit type for output.weight
    token_embedding_type: str | None = None  # explicit type for token_embd.weight
    allow_requantize: bool = False  # checked by the quantize command, not by the plan
    has_imatrix: bool = False  # an importance matrix is given (some rules depend on it)


# --- the model facts the rules depend on -----------------------------------------------


def _first_int(value: Any, default: int = 0) -> int:
    """A scalar, or the first layer's entry of a per-layer array (llama.cpp's il = 0)."""
    if value is None:
        return default
    if hasattr(value, "__len__") and not isinstance(value, str):
        return int(value[0]) if len(value) else default
    return int(value)


@dataclass(frozen=True)
class ModelFacts:
    arch: str
    n_layer_all: int  # block_count, MTP/nextn layers included
    n_expert: int
    n_gqa: int  # query heads per KV head in the first layer (0 if unknown)
    is_70b: bool

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "ModelFacts":
        arch = metadata.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise LlamatoolError("cannot plan the quantization: no general.architecture in the metadata")
        if metadata.get(f"{arch}.block_count") is None:
            raise LlamatoolError(f"cannot plan the quantization: no {arch}.block_count in the metadata")
        n_layer_all = _first_int(metadata.get(f"{arch}.block_count"))
        if n_layer_all <= 0:
            raise LlamatoolError(f"{arch}.block_count must be positive, got {n_layer_all}")
        n_layer = n_layer_all - _first_int(metadata.get(f"{arch}.nextn_predict_layers"))
        n_expert = _first_int(metadata.get(f"{arch}.expert_count"))
        n_head = _first_int(metadata.get(f"{arch}.attention.head_count"))
        n_head_kv = _first_int(metadata.get(f"{arch}.attention.head_count_kv"), n_head)
        is_70b = n_layer == _70B_LAYERS.get(arch) and (arch != "llama" or (n_expert != 8 and n_head != n_head_kv))
        return cls(arch, n_layer_all, n_expert, n_head // n_head_kv if n_head_kv else 0, is_70b)


# --- which tensors are quantized at all --------------------------------------------------


def n_dims(ne: Sequence[int]) -> int:
    """ggml_n_dims: trailing dimensions of size 1 do not count."""
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


def allows_quantization(name: str, ne: Sequence[int], arch: str, options: QuantizeOptions) -> bool:
    """tensor_allows_quantization: 2-D and 3-D weights, except norms and small special tensors."""
    if n_dims(ne) < 2:
        return False
    # llama.cpp tests `rfind("weight") == size - 6`, which a 5-character name also passes.
    if not (name.endswith("weight") or (len(name) == 5 and "weight" not in name)):
        return False
    if options.leave_output_tensor and name == "output.weight":
        return False
    if name in _NEVER_QUANTIZED_NAMES or any(s in name for s in _NEVER_QUANTIZED):
        return False
    return not (arch == "glm5-next" and any(s in name for s in _NEVER_QUANTIZED_GLM5_NEXT))


# --- categories and order ------------------------------------------------------------------

OUTPUT, TOKEN_EMBD, ATTN_V, ATTN_K, ATTN_Q, ATTN_OUTPUT, FFN_UP, FFN_GATE, FFN_DOWN, OTHER = range(10)

# first match wins, as in tensor_get_category
_CATEGORY_SUBSTRINGS = [
    # attn_v-like (category_is_attn_v): as sensitive as attn_v, counted and ruled with it
    ("attn_qkv.weight", ATTN_V),
    ("attn_kv_b.weight", ATTN_V),
    ("attn_v.weight", ATTN_V),
    ("attn_k.weight", ATTN_K),
    ("attn_q.weight", ATTN_Q),
    ("attn_output.weight", ATTN_OUTPUT),
    ("ffn_up", FFN_UP),
    ("ffn_gate", FFN_GATE),
    ("ffn_down", FFN_DOWN),
]


def category(name: str) -> int:
    if name == "output.weight":
        return OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return TOKEN_EMBD
    for sub, cat in _CATEGORY_SUBSTRINGS:
        if sub in name:
            return cat
    return OTHER


_LAYER = re.compile(r"blk\.\s*([+-]?\d+)")


def layer_of(name: str) -> int | None:
    """The layer number of a blk.N. tensor name (sscanf "blk.%d." semantics), else None."""
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def llama_order(names: Sequence[str]) -> list[str]:
    """llama.cpp's loader order: non-layer tensors first, then by layer, then by name."""

    def key(name: str):
        layer = layer_of(name)
        return (-1 if layer is None else layer, name.encode("utf-8", "surrogateescape"))

    return sorted(names, key=key)


# --- the per-tensor recipe ----------------------------------------------------------------


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    # The first and last eighth of the layers, and every third one in between.
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


@dataclass
class _Counters:
    n_attention_wv: int = 0
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0


class _Recipe:
    """llama_tensor_get_type_impl for one preset, with its running layer counters."""

    def __init__(self, facts: ModelFacts, ftype: str, options: QuantizeOptions, tied: bool, n_attention_wv: int):
        self.facts, self.ftype, self.options, self.tied = facts, ftype, options, tied
        self.c = _Counters(n_attention_wv=n_attention_wv)

    def _layer(self, counter: int, name: str) -> tuple[int, int]:
        n_layer = self.facts.n_layer_all
        if self.facts.n_expert <= 1:
            return counter, n_layer
        # Experts are not stored layer by layer, so the layer comes from the name.
        i_layer = layer_of(name)
        if i_layer is None:
            raise LlamatoolError(f"failed to determine the layer of tensor {name}")
        if not 0 <= i_layer < n_layer:
            raise LlamatoolError(f"bad layer {i_layer} for tensor {name}: must be in [0, {n_layer})")
        return i_layer, n_layer

    def choose(self, name: str, ne: Sequence[int], cat: int, new: str) -> str:
        f, ft, arch = self.facts, self.ftype, self.facts.arch
        if arch == "glm5-next" and any(s in name for s in ("attn_q_a", "attn_q_b", "nextn.eh_proj")):
            return "Q8_0"
        if cat == OUTPUT or (self.tied and cat == TOKEN_EMBD):
            # The output matrix (or the embeddings it shares) gets 6 bits unless already 8.
            if self.options.output_tensor_type is not None:
                return ggml_type(self.options.output_tensor_type).name
            if arch == "falcon" or ne[0] % ggml_type(new).block_size:
                return "Q8_0"
            if ft in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
                return "Q5_K"
            return new if new == "Q8_0" else "Q6_K"
        if cat == TOKEN_EMBD:  # untied embeddings
            if ft in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
                return "Q2_K"
            if ft in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
                return "IQ3_S"
            return "Q4_K" if ft in ("TQ1_0", "TQ2_0") else new
        if ft in _IQ2_RECIPES:
            return self._iq2(name, cat, new)
        if cat == ATTN_V:
            return self._attn_v(new)
        if cat == ATTN_K:
            return "Q8_0" if f.n_expert == 8 else {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}.get(ft, new)
        if cat == ATTN_Q:
            return {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}.get(ft, new)
        if cat == FFN_DOWN:
            i_layer, n_layer = self._layer(self.c.i_ffn_down, name)
            self.c.i_ffn_down += 1
            return self._ffn_down(new, i_layer, n_layer)
        if cat == ATTN_OUTPUT:
            if arch == "falcon":
                return "Q4_K" if ft == "Q3_K_L" else new
            if f.n_expert == 8:
                return "Q5_K" if ft in ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M",
                                        "IQ3_S", "IQ3_M", "IQ4_XS") else new  # fmt: skip
            return {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K", "IQ3_M": "Q4_K"}.get(ft, new)
        if cat in (FFN_GATE, FFN_UP):
            counter = "i_ffn_gate" if cat == FFN_GATE else "i_ffn_up"
            i, n = self._layer(getattr(self.c, counter), name)  # validates the layer, as llama.cpp does
            setattr(self.c, counter, getattr(self.c, counter) + 1)
            if ft == "IQ3_XS" and n // 8 <= i < 7 * n // 8:
                return "IQ3_XXS"
        return new

    def _iq2(self, name: str, cat: int, new: str) -> str:
        """The 1-2-bit recipes: a few more bits on attn_v, the first ffn_down and attn_output;
        the ffn_down counter runs over tensors, without the layer check of the others."""
        f, ft = self.facts, self.ftype
        richer = "IQ3_S" if ft in _IQ2_S_RECIPES else "Q2_K"
        if cat == ATTN_V:
            self.c.i_attention_wv += 1
            return "Q4_K" if f.n_gqa >= 4 or f.n_expert >= 4 else richer
        if cat == ATTN_K and f.n_expert == 8:
            return "Q4_K"
        if cat == FFN_DOWN:
            i = self.c.i_ffn_down
            self.c.i_ffn_down += 1
            return richer if i < f.n_layer_all // 8 else new
        if cat == ATTN_OUTPUT:
            if f.n_expert == 8:
                return "Q5_K"
            return {"IQ1_S": "IQ2_XXS", "IQ1_M": "IQ2_XXS", "IQ2_S": "IQ3_S", "IQ2_M": "IQ3_S"}.get(ft, new)
        return new

    def _attn_v(self, new: str) -> str:
        f, ft, i, n = self.facts, self.ftype, self.c.i_attention_wv, self.c.n_attention_wv
        if ft == "Q2_K":
            new = "Q4_K" if f.n_gqa >= 4 else "Q3_K"
        elif ft == "Q2_K_S" and f.n_gqa >= 4:
            new = "Q4_K"
        elif ft == "IQ3_XXS":
            new = "Q4_K" if f.n_gqa >= 4 else "IQ3_XXS" if self.options.has_imatrix else "IQ3_S"
        elif ft in ("IQ3_XS", "IQ3_S") and f.n_gqa >= 4:
            new = "Q4_K"
        elif ft == "IQ3_M":
            new = "Q4_K"
        elif ft == "Q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif ft == "Q3_K_L":
            new = "Q5_K"
        elif ft in ("IQ4_NL", "IQ4_XS") and f.n_gqa >= 4:
            new = "Q5_K"
        elif ft in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n):
            new = "Q6_K"
        elif ft == "Q4_K_S" and i < 4:
            new = "Q5_K"
        if f.is_70b and new in ("Q3_K", "Q4_K"):
            # 8 query heads share each attn_v row: more bits cost little there.
            new = "Q5_K"
        if f.n_expert == 8:
            new = "Q8_0"
        self.c.i_attention_wv += 1
        return new

    def _ffn_down(self, new: str, i: int, n: int) -> str:
        ft, falcon, imatrix = self.ftype, self.facts.arch == "falcon", self.options.has_imatrix
        if ft == "Q2_K":
            return "Q3_K"
        if ft == "Q2_K_S":
            return "Q4_K" if i < n // 8 else new
        if ft == "IQ3_XXS" and not imatrix:
            return "Q4_K" if i < n // 8 else "Q3_K"
        if ft == "Q3_K_M":
            return "Q5_K" if i < n // 16 else "Q4_K" if not falcon or _use_more_bits(i, n) else "Q3_K"
        if ft == "IQ3_M" and (i < n // 8 or (self.facts.n_expert == 8 and _use_more_bits(i, n))):
            return "Q4_K"
        if ft == "Q3_K_L":
            return "Q4_K" if falcon else "Q5_K"
        if ft == "Q4_K_M":
            if falcon:
                return "Q6_K" if i < n // 16 else "Q5_K" if _use_more_bits(i, n) else "Q4_K"
            return "Q6_K" if _use_more_bits(i, n) else new
        if ft in ("IQ4_NL", "IQ4_XS") and i < n // 8 and not imatrix:
            return "Q5_K"
        if ft == "Q5_K_M" and _use_more_bits(i, n):
            return "Q6_K"
        if ft == "Q4_K_S" and not falcon and i < n // 8:
            return "Q5_K"
        if ft in ("Q4_0", "Q5_0") and imatrix and i < n // 8:
            return "Q4_1" if ft == "Q4_0" else "Q5_1"  # llama-quantize's guard for the first ffn_down layers
        return new


# --- the plan --------------------------------------------------------------------------------


@dataclass
class Fallback:
    name: str
    wanted: GGMLType
    got: GGMLType
    n_per_row: int


@dataclass
class TypePlan:
    """The type of every tensor, in llama-quantize's tensor order, and the fallbacks it took."""

    types: dict[str, GGMLType]
    fallbacks: list[Fallback] = field(default_factory=list)
    quantizable: set[str] = field(default_factory=set)


def _fallback(name: str, n_per_row: int, wanted: str, plan: TypePlan) -> str:
    """tensor_type_fallback: a 32-block type when the rows are not whole blocks of `wanted`."""
    t = ggml_type(wanted)
    if n_per_row % t.block_size == 0:
        return wanted
    got = _FALLBACK.get(t.name)
    if got is None:
        if t.block_size > 32:
            raise LlamatoolError(f"{name}: rows of {n_per_row} values do not fit {t.name} and it has no fallback type")
        got = t.name  # already a 32-block type: only F16 is left
    if n_per_row % ggml_type(got).block_size:
        got = "F16"  # not even 32-wide blocks fit
    plan.fallbacks.append(Fallback(name, t, ggml_type(got), n_per_row))
    return got


def _explicit(name: str, ne: Sequence[int], type_name: str, option: str) -> GGMLType:
    t = ggml_type(type_name)
    if ne[0] % t.block_size:
        raise LlamatoolError(
            f"{option} {t.name}: the rows of {name} have {ne[0]} values, not a multiple of the "
            f"{t.name} block size {t.block_size} (llama-quantize fails here too)"
        )
    return t


def plan_types(
    tensors: Sequence[tuple[str, tuple[int, ...]]],
    metadata: Mapping[str, Any],
    options: QuantizeOptions,
    *,
    current_types: Mapping[str, Any] | None = None,
) -> TypePlan:
    """llama_tensor_get_type for every tensor, with the fallbacks it reports.

    current_types: each tensor's present type (what llama-quantize keeps for tensors it
    does not quantize); tensors missing from it count as F32.
    """
    preset = canonical_preset(options.preset)
    default = PRESETS[preset][1]
    facts = ModelFacts.from_metadata(metadata)
    shapes = {name: tuple(int(d) for d in ne) for name, ne in tensors}
    if len(shapes) != len(tensors):
        raise LlamatoolError("duplicate tensor names in the quantization plan")
    order = llama_order(list(shapes))
    cats = {name: category(name) for name in order}
    recipe = _Recipe(
        facts,
        preset,
        options,
        tied="output.weight" not in shapes,
        n_attention_wv=sum(c == ATTN_V for c in cats.values()),
    )
    plan = TypePlan(types={})
    current = current_types or {}
    for name in order:
        ne, cat = shapes[name], cats[name]
        if not allows_quantization(name, ne, facts.arch, options):
            plan.types[name] = ggml_type(current.get(name, "F32"))
            continue
        plan.quantizable.add(name)
        if options.token_embedding_type is not None and cat == TOKEN_EMBD:
            plan.types[name] = _explicit(name, ne, options.token_embedding_type, "--token-embedding-type")
            continue
        if options.output_tensor_type is not None and cat == OUTPUT:
            plan.types[name] = _explicit(name, ne, options.output_tensor_type, "--output-tensor-type")
            continue
        new = default
        if ggml_type(default).is_quantized:
            if not options.pure:
                new = recipe.choose(name, ne, cat, new)
            new = _fallback(name, ne[0], new, plan)
        plan.types[name] = ggml_type(new)
    return plan


def tensor_types(
    tensors: Sequence[tuple[str, tuple[int, ...]]],
    metadata: Mapping[str, Any],
    options: QuantizeOptions,
    *,
    current_types: Mapping[str, Any] | None = None,
) -> dict[str, GGMLType]:
    """For each (name, ne in ggml order), the type llama-quantize would give it with these options.

    The result is in llama-quantize's tensor order. Tensors it leaves alone (1-D tensors,
    norms, ...) keep their current type (F32 unless current_types says otherwise).
    """
    return plan_types(tensors, metadata, options, current_types=current_types).types
