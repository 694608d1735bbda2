"""`llamatool info`: what is inside a GGUF file, as rich tables or JSON."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .gguf_io import Field, GGUFReader, ValueType

# Hyperparameters shown for an architecture, as (label, key suffix after "<arch>.")
_HPARAMS = [
    ("context length", "context_length"),
    ("embedding length", "embedding_length"),
    ("layers", "block_count"),
    ("feed-forward length", "feed_forward_length"),
    ("attention heads", "attention.head_count"),
    ("KV heads", "attention.head_count_kv"),
    ("key length", "attention.key_length"),
    ("value length", "attention.value_length"),
    ("RMS norm epsilon", "attention.layer_norm_rms_epsilon"),
    ("RoPE dimensions", "rope.dimension_count"),
    ("RoPE base", "rope.freq_base"),
    ("RoPE scaling", "rope.scaling.type"),
    ("RoPE scaling factor", "rope.scaling.factor"),
    ("RoPE original context", "rope.scaling.original_context_length"),
    ("vocab size", "vocab_size"),
]

_SPECIAL_IDS = ["bos", "eos", "eot", "eom", "unknown", "padding", "sep", "mask"]


def file_type_name(file_type: int | None) -> str | None:
    """llama.cpp's name for general.file_type (e.g. 3 -> 'Q4_1')."""
    if file_type is None:
        return None
    from gguf.constants import LlamaFileType

    try:
        name = LlamaFileType(int(file_type)).name
    except ValueError:
        return f"unknown ({file_type})"
    return name.replace("MOSTLY_", "").replace("ALL_", "")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _human_count(n: int) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f} {suffix}"
    return str(n)


def _json_value(f: Field, max_items: int) -> Any:
    """A JSON-friendly value; long arrays are summarised by type and length."""
    if f.type != ValueType.ARRAY:
        v = f.value
        return v.item() if isinstance(v, np.generic) else v
    n = len(f.value)
    if n > max_items:
        return {"type": f"array[{f.subtype.name.lower()}]", "length": n}
    if f.subtype == ValueType.ARRAY:
        return [_json_value(x, max_items) for x in f.value]
    return f.value.tolist() if isinstance(f.value, np.ndarray) else list(f.value)


def summarize(reader: GGUFReader) -> dict[str, Any]:
    """Everything `info` shows, as plain data."""
    arch = reader.architecture
    get = reader.get
    n_params = sum(t.n_elements for t in reader.tensors)
    tensor_bytes = sum(t.nbytes for t in reader.tensors)
    tokens = get("tokenizer.ggml.tokens")
    merges = get("tokenizer.ggml.merges")
    special = {}
    for kind in _SPECIAL_IDS:
        tid = get(f"tokenizer.ggml.{kind}_token_id")
        if tid is not None:
            text = tokens[tid] if tokens is not None and 0 <= tid < len(tokens) else None
            special[kind] = {"id": int(tid), "text": text}
    template = get("tokenizer.chat_template")
    type_counts = Counter(t.type.name for t in reader.tensors)
    return {
        "file": {
            "path": str(reader.path),
            "size_bytes": reader.file_size,
            "gguf_version": reader.version,
            "alignment": reader.alignment,
            "tensor_count": len(reader.tensors),
            "metadata_count": len(reader.fields),
        },
        "general": {
            "architecture": arch,
            "name": get("general.name"),
            "size_label": get("general.size_label"),
            "file_type": file_type_name(get("general.file_type")),
            "quantization_version": get("general.quantization_version"),
        },
        "hyperparameters": {
            suffix: (v.item() if isinstance(v, np.generic) else v)
            for _, suffix in _HPARAMS
            if (v := get(f"{arch}.{suffix}")) is not None
        },
        "tokenizer": {
            "model": get("tokenizer.ggml.model"),
            "pre": get("tokenizer.ggml.pre"),
            "vocab_size": len(tokens) if tokens is not None else None,
            "merges": len(merges) if merges is not None else None,
            "add_bos_token": get("tokenizer.ggml.add_bos_token"),
            "add_eos_token": get("tokenizer.ggml.add_eos_token"),
            "special_tokens": special,
            "chat_template": template is not None,
            "chat_template_chars": len(template) if template else 0,
        },
        "weights": {
            "parameters": n_params,
            "tensor_bytes": tensor_bytes,
            "bits_per_weight": 8 * tensor_bytes / n_params if n_params else 0.0,
            "types": dict(sorted(type_counts.items())),
        },
    }


def show_info(path: Path, *, tensors: bool = False, as_json: bool = False) -> None:
    reader = GGUFReader(path)
    summary = summarize(reader)
    if as_json:
        summary["metadata"] = {k: _json_value(f, 16) for k, f in reader.fields.items()}
        if tensors:
            summary["tensors"] = [
                {"name": t.name, "type": t.type.name, "shape": list(t.ne), "bytes": t.nbytes, "offset": t.offset}
                for t in reader.tensors
            ]
        json.dump(summary, sys.stdout, indent=2, ensure_ascii=False, default=str)
        sys.stdout.write("\n")
        return
    _print_tables(reader, summary, tensors)


def _print_tables(reader: GGUFReader, s: dict, with_tensors: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()

    def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
        table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
        table.add_column(style="bold cyan")
        table.add_column()
        for k, v in rows:
            if v is not None:
                table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
        return table

    f, g, tok, w = s["file"], s["general"], s["tokenizer"], s["weights"]
    console.print(
        kv_table(
            "Model",
            [
                ("file", f"{f['path']} ({_human_bytes(f['size_bytes'])})"),
                ("GGUF", f"v{f['gguf_version']}, {f['metadata_count']} metadata keys, {f['tensor_count']} tensors"),
                ("name", g["name"]),
                ("architecture", g["architecture"]),
                ("size label", g["size_label"]),
                ("file type", g["file_type"]),
                ("parameters", f"{_human_count(w['parameters'])} ({w['parameters']:,})"),
                ("weights", f"{_human_bytes(w['tensor_bytes'])}, {w['bits_per_weight']:.2f} bits per weight"),
                ("tensor types", ", ".join(f"{k} x{v}" for k, v in w["types"].items())),
            ],
        )
    )
    labels = {key: label for label, key in _HPARAMS}
    console.print(kv_table("\nHyperparameters", [(labels[k], v) for k, v in s["hyperparameters"].items()]))
    special = ", ".join(f"{k} {v['id']} {v['text']!r}" for k, v in tok["special_tokens"].items())
    console.print(
        kv_table(
            "\nTokenizer",
            [
                ("model", tok["model"]),
                ("pre-tokenizer", tok["pre"]),
                ("vocab size", tok["vocab_size"]),
                ("merges", tok["merges"]),
                ("add BOS / EOS", f"{tok['add_bos_token']} / {tok['add_eos_token']}"),
                ("special tokens", special or None),
                ("chat template", f"yes ({tok['chat_template_chars']} chars)" if tok["chat_template"] else "no"),
            ],
        )
    )
    if with_tensors:
        table = Table(title="\nTensors", title_justify="left")
        table.add_column("name")
        table.add_column("type")
        table.add_column("shape (ne)")
        table.add_column("bytes", justify="right")
        for t in reader.tensors:
            table.add_row(t.name, t.type.name, " x ".join(map(str, t.ne)), f"{t.nbytes:,}")
        console.print(table)
