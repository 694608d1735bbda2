"""Which tensors a checkpoint must hold, their GGUF names and shapes, and the Q/K row order.

The family (llamatool.arch) says what one layer holds; this module checks every stored
tensor against it and lays the GGUF's tensors out in convert_hf_to_gguf.py's order:
generated tensors (rope_freqs) first, then the checkpoint's.

LLaMA's converter reorders Q/K rows: Hugging Face stores the rotary halves of each
attention head apart (first half of the head's rows, then the second); ggml's adjacent-pair
RoPE wants the two values of each rotated pair next to each other. So, per head:

    new row  h*hd + 2*i + j   <-  old row  h*hd + j*hd/2 + i     (j in {0, 1})

NEOX-RoPE families (Qwen) rotate the halves as Hugging Face does and keep the order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import LlamatoolError
from .hparams import Hparams
from .tensor_files import StoredTensor

# Tensors convert_hf_to_gguf.py drops before mapping names.
SKIPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")


@dataclass(frozen=True)
class Expected:
    gguf_name: str
    shape: tuple[int, ...]  # numpy order, as stored by HF
    permute_heads: int = 0  # Q/K: number of heads to permute rows over; 0 = keep order
    shift: float = 0.0  # added to the values (Gemma's norms)


def expected_tensors(hp: Hparams) -> dict[str, Expected]:
    """Every tensor a checkpoint with this config may hold, by HF name."""
    E, V = hp.n_embd, hp.n_vocab
    out = {
        "model.embed_tokens.weight": Expected("token_embd.weight", (V, E)),
        "model.norm.weight": Expected("output_norm.weight", (E,)),
    }
    if not hp.family.drops_lm_head:
        out["lm_head.weight"] = Expected("output.weight", (V, E))
    permuted = {"self_attn.q_proj": hp.n_head, "self_attn.k_proj": hp.n_head_kv} if hp.family.permute_qk else {}
    for i in range(hp.n_layer):
        for local, (gguf_local, shape) in hp.family.hf_layer_tensors(hp).items():
            heads = permuted.get(local.rpartition(".")[0], 0)
            gguf_name = f"blk.{i}.{gguf_local}"
            out[f"model.layers.{i}.{local}"] = Expected(gguf_name, shape, heads, hp.family.tensor_shift(gguf_name))
    out["model.norm.weight"] = replace(out["model.norm.weight"], shift=hp.family.tensor_shift("output_norm.weight"))
    return out


def required_tensors(hp: Hparams, present: set[str]) -> list[str]:
    """HF names a usable checkpoint cannot lack (lm_head only when untied)."""
    required = [n for n in expected_tensors(hp) if n != "lm_head.weight"]
    if not hp.tied and not hp.family.drops_lm_head:
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
    shift: float = 0.0  # added to the values, in the stored dtype's precision

    @property
    def ne(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def src_dtype(self) -> str:
        return self.source.dtype if self.source is not None else "F32"


def model_tensors(hp: Hparams, stored: dict[str, StoredTensor]) -> list[ModelTensor]:
    """The GGUF's tensors in convert_hf_to_gguf.py's order, after checking every stored
    tensor's name, dtype and shape against the config."""
    expected = expected_tensors(hp)
    out = [ModelTensor(name, values.shape, values=values) for name, values in hp.family.extra_tensors(hp)]
    for name, t in stored.items():
        if name.endswith(SKIPPED_SUFFIXES) or (name == "lm_head.weight" and hp.family.drops_lm_head):
            continue
        exp = expected.get(name)
        if exp is None:
            raise LlamatoolError(f"{t.path}: unexpected tensor {name!r} (not part of a {hp.hf_arch} with this config.json)")
        if t.shape != exp.shape:
            raise LlamatoolError(f"{t.path}: tensor {name!r} has shape {list(t.shape)}, config.json implies {list(exp.shape)}")
        if t.dtype not in ("F32", "F16", "BF16", "F64"):
            raise LlamatoolError(f"{t.path}: tensor {name!r} has dtype {t.dtype}; only F32, F16, BF16 and F64 weights can be converted")
        order = head_row_order(exp.shape[0], exp.permute_heads) if exp.permute_heads else None
        out.append(ModelTensor(exp.gguf_name, exp.shape, source=t, row_order=order, shift=exp.shift))
    missing = required_tensors(hp, set(stored))
    if missing:
        where = next(iter(stored.values())).path.parent if stored else hp.path.parent
        hint = " (config.json says tie_word_embeddings is false)" if missing[0] == "lm_head.weight" else ""
        raise LlamatoolError(f"{where}: missing tensor {missing[0]!r}{hint}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    return out
