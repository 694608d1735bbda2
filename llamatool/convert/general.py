"""`general.*` metadata and the default output file name.

Authorship metadata comes from the model card (README.md front matter), config.json's
`_name_or_path`, generation_config.json's sampling settings and the folder name, through
gguf-py's own heuristics (gguf.Metadata), so that names, size labels and file names match
what convert_hf_to_gguf.py writes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import gguf

from ..errors import LlamatoolError
from ..gguf_io import ValueType

V = ValueType


def _generation_config(folder: Path) -> dict:
    try:
        data = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def load_metadata(folder: Path, model_name: str | None, total_params: int, default_name: str | None = None) -> gguf.Metadata:
    """general.* as gguf-py's Metadata finds it in folder; default_name (else the folder's
    name) when nothing names the model (convert-lora: the base model's folder, as the reference)."""
    import yaml

    logging.getLogger("metadata").setLevel(logging.ERROR)  # gguf-py's chatter about model cards
    try:
        meta = gguf.Metadata.load(None, folder, model_name, total_params)
    except yaml.YAMLError as e:
        problem = str(e).splitlines()[0]
        raise LlamatoolError(f"{folder / 'README.md'}: the model card's front matter is not valid YAML ({problem})") from None
    if meta.sampling_penalty_repeat is None:
        # llama.cpp's current gguf-py also reads transformers' name for it
        meta.sampling_penalty_repeat = _generation_config(folder).get("repetition_penalty")
    if meta.name is None:
        meta.name = default_name or folder.name
    if meta.size_label is None and total_params > 0:
        meta.size_label = gguf.size_label(total_params, total_params, 0, 0)
    return meta


_SAMPLING = [
    ("sequence", "sampling_sequence", V.STRING),
    ("top_k", "sampling_top_k", V.INT32),
    ("top_p", "sampling_top_p", V.FLOAT32),
    ("min_p", "sampling_min_p", V.FLOAT32),
    ("xtc_probability", "sampling_xtc_probability", V.FLOAT32),
    ("xtc_threshold", "sampling_xtc_threshold", V.FLOAT32),
    ("temp", "sampling_temp", V.FLOAT32),
    ("penalty_last_n", "sampling_penalty_last_n", V.INT32),
    ("penalty_repeat", "sampling_penalty_repeat", V.FLOAT32),
    ("mirostat", "sampling_mirostat", V.INT32),
    ("mirostat_tau", "sampling_mirostat_tau", V.FLOAT32),
    ("mirostat_eta", "sampling_mirostat_eta", V.FLOAT32),
]
_AUTHORSHIP_HEAD = ["author", "version", "organization", "finetune", "basename", "description", "quantized_by", "size_label"]
_AUTHORSHIP_TAIL = {
    "license_name": "license.name",
    "license_link": "license.link",
    "url": "url",
    "doi": "doi",
    "uuid": "uuid",
    "repo_url": "repo_url",
    "source_url": "source.url",
    "source_doi": "source.doi",
    "source_uuid": "source.uuid",
    "source_repo_url": "source.repo_url",
}
_SOURCE_FIELDS = ["name", "author", "version", "organization", "description", "url", "doi", "uuid", "repo_url"]


def _sources(kind: str, entries: list | None) -> list[tuple[str, Any, ValueType, ValueType | None]]:
    if entries is None:
        return []
    out = [(f"general.{kind}.count", len(entries), V.UINT32, None)]
    for i, entry in enumerate(entries):
        for key in _SOURCE_FIELDS:
            if isinstance(entry, dict) and entry.get(key):  # gguf-py's add_string skips empty values
                out.append((f"general.{kind}.{i}.{key}", str(entry[key]), V.STRING, None))
    return out


def general_fields(meta: gguf.Metadata) -> list[tuple[str, Any, ValueType, ValueType | None]]:
    """general.type and the authorship keys, in the order gguf-py's Metadata writes them."""
    out: list[tuple[str, Any, ValueType, ValueType | None]] = [("general.type", "model", V.STRING, None)]

    def text(key: str, value) -> None:
        if value:  # gguf-py skips empty strings
            out.append((f"general.{key}", str(value), V.STRING, None))

    for key, attr, vtype in _SAMPLING:
        value = getattr(meta, attr)
        if value is not None:
            out.append((f"general.sampling.{key}", value, vtype, None))
    text("name", meta.name)
    for attr in _AUTHORSHIP_HEAD:
        text(attr, getattr(meta, attr))
    if meta.license is not None:
        text("license", ",".join(meta.license) if isinstance(meta.license, list) else meta.license)
    for attr, key in _AUTHORSHIP_TAIL.items():
        text(key, getattr(meta, attr))
    out += _sources("base_model", meta.base_models)
    out += _sources("dataset", meta.datasets)
    for key, values in (("tags", meta.tags), ("languages", meta.languages)):
        if values:
            out.append((f"general.{key}", [str(v) for v in values], V.ARRAY, V.STRING))
    return out


def default_file_name(meta: gguf.Metadata, output_type: str | None, vocab_only: bool) -> str:
    """gguf-py's naming convention: <basename>-<size>-<finetune>-<version>-<TYPE>.gguf"""
    if vocab_only:
        stem = gguf.naming_convention(meta.name, meta.basename, meta.finetune, meta.version, None, None, model_type="vocab")
    else:
        stem = gguf.naming_convention(meta.name, meta.basename, meta.finetune, meta.version, meta.size_label, output_type)
    return f"{stem}.gguf"
