"""PEFT-layout LoRA adapters for tiny LLaMA models, written with numpy (no torch, no peft),
and the merged weights they stand for.

    spec = TinyLlama(...); weights = random_weights(spec)
    write_base_config(tmp / "base", spec)               # config.json, as save_pretrained
    lora = write_peft_adapter(tmp / "a", spec, rank=4, alpha=8, base=tmp / "base")
    merged = merge(weights, [(lora, 0.5)])              # W + 0.5 * alpha/r * B.A, HF layout

The files are what PEFT's save_pretrained writes for a LlamaForCausalLM (adapter_config.json,
adapter_model.safetensors with base_model.model.<module>.lora_A.weight / lora_B.weight, and
lora_embedding_A / _B for embeddings); the reference tier checks the same code on adapters
made by peft itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .hf_factory import stored_bytes, write_safetensors
from .tiny_llama import TinyLlama

_NUMPY_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_MODULE_PATH = {m: ("self_attn." if m.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp.") + m for m in ALL_LINEAR}


@dataclass
class PeftLora:
    folder: Path
    pairs: dict[str, tuple[np.ndarray, np.ndarray]]  # HF weight name -> (A (r, in), B (out, r)), float32
    alpha: float
    rank: int
    rslora: bool = False

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def write_base_config(folder: Path, spec: TinyLlama) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **spec.hf_config()}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def _module_shapes(spec: TinyLlama, module: str) -> tuple[int, int]:
    """(out, in) of a linear module."""
    e, f = spec.n_embd, spec.n_ff
    n_q, n_kv = spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    return {"q_proj": (n_q, e), "k_proj": (n_kv, e), "v_proj": (n_kv, e), "o_proj": (e, n_q),
            "gate_proj": (f, e), "up_proj": (f, e), "down_proj": (e, f)}[module]  # fmt: skip


def write_peft_adapter(folder: Path, spec: TinyLlama, *, rank: int = 4, alpha: float = 8.0, targets=ALL_LINEAR,
                       layers=None, embeddings: bool = False, lm_head: bool = False, seed: int = 1,
                       dtype: str = "F32", base: Path | None = None, config_extra: dict | None = None,
                       grid: bool = False) -> PeftLora:
    """A seeded random adapter (B non-zero, unlike PEFT's initialization), saved as PEFT does.
    grid: values that are multiples of 1/16 in [-1, 1], so that every product B.A is exact
    in float32 whatever the order of its sums (merges then have one rounding)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i in layers if layers is not None else range(spec.n_layer):
        for m in targets:
            n_out, n_in = _module_shapes(spec, m)
            a = (rng.standard_normal((rank, n_in)) / math.sqrt(n_in)).astype(np.float32)
            b = (rng.standard_normal((n_out, rank)) * 0.5 / math.sqrt(rank)).astype(np.float32)
            pairs[f"model.layers.{i}.{_MODULE_PATH[m]}.weight"] = (a, b)
    if lm_head:
        a = (rng.standard_normal((rank, spec.n_embd)) / math.sqrt(spec.n_embd)).astype(np.float32)
        pairs["lm_head.weight"] = (a, (rng.standard_normal((spec.vocab, rank)) * 0.5).astype(np.float32))
    if embeddings:  # PEFT's Embedding layer: A (r, vocab), B (embd, r)
        a = rng.standard_normal((rank, spec.vocab)).astype(np.float32)
        pairs["model.embed_tokens.weight"] = (a, (rng.standard_normal((spec.n_embd, rank)) * 0.3).astype(np.float32))
    if grid:
        for k, (a, b) in pairs.items():
            pairs[k] = tuple((np.round(np.clip(x, -1, 1) * 16) / 16).astype(np.float32) for x in (a, b))
    if dtype != "F32":  # the values the file holds
        cast = np.float16 if dtype == "F16" else None
        for k, (a, b) in pairs.items():
            pairs[k] = tuple(_round(x, dtype, cast) for x in (a, b))
    entries = {}
    for name, (a, b) in sorted(pairs.items()):
        stem = "base_model.model." + name[: -len(".weight")]
        emb = name == "model.embed_tokens.weight"
        for side, x in (("A", a), ("B", b)):
            key = f"{stem}.lora_embedding_{side}" if emb else f"{stem}.lora_{side}.weight"
            entries[key] = (dtype, x.shape, stored_bytes(x, _NUMPY_NAMES[dtype]))
    write_safetensors(folder / "adapter_model.safetensors", dict(sorted(entries.items())))
    modules = sorted(set(targets) | ({"lm_head"} if lm_head else set()) | ({"embed_tokens"} if embeddings else set()))
    config = {
        "base_model_name_or_path": str(base) if base else None,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": rank,
        "target_modules": modules,
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
        **(config_extra or {}),
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return PeftLora(folder, pairs, alpha, rank, bool(config["use_rslora"]))


def _round(x: np.ndarray, dtype: str, cast) -> np.ndarray:
    if cast is not None:
        return x.astype(cast).astype(np.float32)
    bits = x.astype(np.float32).view(np.uint32)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round to nearest even, as stored_bytes
    return bits.astype(np.uint32).view(np.float32)


def deltas(adapters: list[tuple[PeftLora, float]]) -> dict[str, np.ndarray]:
    """HF weight name -> sum of scale * scaling * B.A over the adapters (float64, the weight's shape)."""
    out: dict[str, np.ndarray] = {}
    for lora, scale in adapters:
        for name, (a, b) in lora.pairs.items():
            delta = scale * lora.scaling * (b.astype(np.float64) @ a.astype(np.float64))
            if name == "model.embed_tokens.weight":
                delta = delta.T  # (vocab, embd)
            out[name] = out.get(name, 0.0) + delta
    return out


def merge(weights: dict[str, np.ndarray], adapters: list[tuple[PeftLora, float]]) -> dict[str, np.ndarray]:
    """HF weights with every adapter merged: W + scale * scaling * B.A."""
    out = dict(weights)
    for name, delta in deltas(adapters).items():
        out[name] = (out[name].astype(np.float64) + delta).astype(np.float32)
    return out
