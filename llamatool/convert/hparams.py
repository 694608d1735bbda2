"""config.json of a checkpoint, read the way convert_hf_to_gguf.py sees it.

The reference converter loads the config through transformers' AutoConfig, which fills
in the defaults of the config class (LlamaConfig, Qwen2Config, ...: each family declares
its own, llamatool.arch) and folds the legacy
`rope_theta` + `rope_scaling` pair into `rope_parameters`. We reproduce that without
transformers, so that a config which omits a key converts to the same GGUF values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import arch
from ..arch.family import Family, find
from ..errors import LlamatoolError



def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LlamatoolError(f"{path}: missing {what}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LlamatoolError(f"{path}: not valid JSON ({e})") from None


def read_json_object(path: Path, what: str) -> dict:
    value = _read_json(path, what)
    if not isinstance(value, dict):
        raise LlamatoolError(f"{path}: {what} must be a JSON object")
    return value


def _rope_parameters(raw: dict, family: Family | None) -> dict:
    known_type = family is not None
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise LlamatoolError(f"config.json: rope_scaling must be an object, got {params!r}")
    params = dict(params)
    if "rope_theta" not in params:
        theta = raw.get("rope_theta", family.default_rope_theta if known_type else None)
        if theta is not None:
            params["rope_theta"] = theta
    if "rope_type" not in params:
        if "type" in params:
            params["rope_type"] = params["type"]
        elif known_type:
            params["rope_type"] = "default"
    if "original_max_position_embeddings" not in params and "original_max_position_embeddings" in raw:
        params["original_max_position_embeddings"] = raw["original_max_position_embeddings"]
    return params


def normalized_config(raw: dict) -> dict:
    """The config as AutoConfig(...).to_dict() gives it for the model types the families know."""
    model_type = raw.get("model_type")
    family = arch.by_model_type(model_type)
    defaults = family.config_defaults[model_type] if family else None
    cfg = {**(defaults or {}), **raw}
    if family is not None:
        if cfg.get("num_key_value_heads") is None:
            cfg["num_key_value_heads"] = cfg["num_attention_heads"]
        if family.head_dim_from_heads and cfg.get("head_dim") is None and _positive_int(cfg.get("num_attention_heads")):
            cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    cfg["rope_parameters"] = _rope_parameters(raw, family)
    if family is not None:
        cfg["rope_parameters"] = family.normalize_rope(raw, cfg["rope_parameters"])
    return cfg


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class Hparams:
    """The shapes a checkpoint must have, checked once against the config."""

    path: Path
    hf_arch: str
    family: Family
    config: dict  # normalized
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    tied: bool
    rope: dict = field(default_factory=dict)


def _require_int(cfg: dict, path: Path, keys: tuple[str, ...]) -> int:
    value = find(cfg, keys)
    if not _positive_int(value):
        raise LlamatoolError(f"{path}: {keys[0]} must be a positive integer, got {value!r}")
    return value


def _refuse_unsupported_features(cfg: dict, family: Family, path: Path) -> None:
    for key, what in family.unsupported_config.items():
        if cfg.get(key):
            raise LlamatoolError(f"{path}: {what} ({key}) not supported; llamatool converts dense text models only")


def load_hparams(folder: Path) -> Hparams:
    path = folder / "config.json"
    raw = read_json_object(path, "config.json (the model's hyperparameters)")
    archs = raw.get("architectures")
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise LlamatoolError(f"{path}: no 'architectures' list; cannot tell which model this is")
    family = arch.by_hf_class(archs[0], str(path))
    cfg = normalized_config(raw)
    _refuse_unsupported_features(cfg, family, path)
    family.check_config(cfg, path)
    hp = Hparams(
        path=path,
        hf_arch=archs[0],
        family=family,
        config=cfg,
        n_layer=_require_int(cfg, path, ("num_hidden_layers", "n_layers", "n_layer", "num_layers")),
        n_embd=_require_int(cfg, path, ("hidden_size", "n_embd", "dim")),
        n_ff=_require_int(cfg, path, ("intermediate_size", "n_inner", "hidden_dim")),
        n_head=_require_int(cfg, path, ("num_attention_heads", "n_head", "n_heads")),
        n_head_kv=0,
        head_dim=0,
        n_vocab=_require_int(cfg, path, ("vocab_size",)),
        tied=bool(cfg.get("tie_word_embeddings", False)),
        rope=cfg["rope_parameters"],
    )
    n_kv = find(cfg, ("num_key_value_heads", "n_kv_heads"))
    hp.n_head_kv = hp.n_head if n_kv is None else n_kv
    if not _positive_int(hp.n_head_kv) or hp.n_head % hp.n_head_kv:
        raise LlamatoolError(f"{path}: num_key_value_heads {hp.n_head_kv!r} must divide num_attention_heads {hp.n_head}")
    head_dim = cfg.get("head_dim")
    hp.head_dim = hp.n_embd // hp.n_head if head_dim is None else head_dim
    if not _positive_int(hp.head_dim) or hp.head_dim % 2:
        raise LlamatoolError(f"{path}: head_dim {hp.head_dim!r} must be a positive even integer (RoPE rotates pairs)")
    return hp
