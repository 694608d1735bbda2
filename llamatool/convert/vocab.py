"""The tokenizer of a checkpoint as `tokenizer.ggml.*` metadata, the way
convert_hf_to_gguf.py writes it for llama models:

- `tokenizer.model` (SentencePiece) -> model "llama", pre "default": every piece with its
  score and type, then added_tokens.json and tokenizer_config.json's added tokens on top;
- otherwise a byte-level BPE `tokenizer.json` -> model "gpt2": the vocab and added tokens
  with their types, the merges, and a pre-tokenizer name recognised from its regexes.

Ids the config's vocab_size reserves beyond the tokenizer become `[PAD<id>]` tokens
(type UNUSED), as llama.cpp expects one token per row of the embedding matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LlamatoolError
from ..gguf_io import ValueType
from .pretokenizer import describe, recognise
from .sentencepiece_model import PieceType, read_pieces
from .special_vocab import SpecialVocab, load_special_vocab, read_json_if_present

# gguf TokenType ids (the same numbers as SentencePiece's piece types)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED = 1, 2, 3, 4, 5
UNSCORED = -1000.0  # score of added tokens
PAD_SCORE = -10000.0  # score of ids the SentencePiece model does not fill


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model
    pre: str
    tokens: list[str]
    types: list[int]
    special: SpecialVocab
    scores: list[float] | None = None
    add_space_prefix: bool | None = None

    def fields(self) -> list[tuple[str, Any, ValueType, ValueType | None]]:
        V = ValueType
        out = []
        if self.add_space_prefix is not None:
            out.append(("tokenizer.ggml.add_space_prefix", self.add_space_prefix, V.BOOL, None))
        out += [
            ("tokenizer.ggml.model", self.model, V.STRING, None),
            ("tokenizer.ggml.pre", self.pre, V.STRING, None),
            ("tokenizer.ggml.tokens", self.tokens, V.ARRAY, V.STRING),
        ]
        if self.scores is not None:
            out.append(("tokenizer.ggml.scores", np.asarray(self.scores, np.float32), V.ARRAY, V.FLOAT32))
        out.append(("tokenizer.ggml.token_type", np.asarray(self.types, np.int32), V.ARRAY, V.INT32))
        return out + self.special.fields()


def looks_special(text: str) -> bool:
    """Added tokens some models forget to mark special (convert_hf_to_gguf's list)."""
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<｜") and text.endswith("｜>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def _int_id(value, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise LlamatoolError(f"{where}: token id {value!r} is not an integer") from None


# --- SentencePiece ----------------------------------------------------------------------

_PIECE_TYPES = {PieceType.UNKNOWN: UNKNOWN, PieceType.CONTROL: CONTROL, PieceType.UNUSED: UNUSED, PieceType.BYTE: 6}


def _pieces(folder: Path, n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """tokenizer.model's pieces (ids it does not fill: [PAD<id>]), then added_tokens.json's
    tokens over them: tokens, scores and types."""
    pieces = read_pieces(folder / "tokenizer.model")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [PAD_SCORE] * n_vocab
    types = [UNUSED] * n_vocab
    for i, piece in enumerate(pieces[:n_vocab]):
        # user-defined pieces count as normal here, as SentencePieceProcessor reports them
        tokens[i], scores[i], types[i] = piece.text, piece.score, _PIECE_TYPES.get(piece.type, NORMAL)
    added = read_json_if_present(folder / "added_tokens.json")
    for text, tid in (added.items() if isinstance(added, dict) else ()):
        tid = _int_id(tid, str(folder / "added_tokens.json"))
        if 0 <= tid < n_vocab:
            tokens[tid], scores[tid], types[tid] = text, UNSCORED, USER_DEFINED
    return tokens, scores, types


def sentencepiece_vocab(folder: Path, n_vocab: int) -> Vocab:
    tokens, scores, types = _pieces(folder, n_vocab)
    config = read_json_if_present(folder / "tokenizer_config.json")
    decoder = config.get("added_tokens_decoder") if isinstance(config, dict) else None
    for key, entry in (decoder or {}).items():
        tid = _int_id(key, str(folder / "tokenizer_config.json"))
        text = entry.get("content") if isinstance(entry, dict) else None
        if not isinstance(text, str) or not 0 <= tid < n_vocab:
            continue
        if entry.get("special") or looks_special(text):
            types[tid] = CONTROL
        else:
            text = text.replace("\u2581", " ")  # llama.cpp expects user-defined tokens pre-normalized
            types[tid] = USER_DEFINED
        tokens[tid], scores[tid] = text, UNSCORED
    special = load_special_vocab(folder, load_merges=False, n_vocab=len(tokens))
    return Vocab("llama", "default", tokens, types, special, scores=scores)


def phi3_vocab(folder: Path, n_vocab: int) -> Vocab:
    """Phi3MiniModel.set_vocab: byte-level BPE when tokenizer_config.json names GPT2Tokenizer
    (Phi-4); otherwise the SentencePiece pieces with every added token (added_tokens.json,
    then tokenizer_config.json's added_tokens_decoder, then tokenizer.json's added_tokens)
    written as given: user-defined, control if marked special, score -1000."""
    config = read_json_if_present(folder / "tokenizer_config.json")
    config = config if isinstance(config, dict) else {}
    if config.get("tokenizer_class") == "GPT2Tokenizer":
        return bpe_vocab(folder, n_vocab)
    if not (folder / "tokenizer.model").is_file():
        raise LlamatoolError(f"{folder / 'tokenizer.model'}: missing (Phi-3's SentencePiece tokenizer)")
    tokens, scores, types = _pieces(folder, n_vocab)
    tokenizer = read_json_if_present(folder / "tokenizer.json")
    entries = [(key, e, "tokenizer_config.json") for key, e in (config.get("added_tokens_decoder") or {}).items()]
    if isinstance(tokenizer, dict):
        entries += [(e.get("id"), e, "tokenizer.json") for e in tokenizer.get("added_tokens") or [] if isinstance(e, dict)]
    for key, entry, where in entries:
        tid = _int_id(key, str(folder / where))
        text = entry.get("content") if isinstance(entry, dict) else None
        if not isinstance(text, str):
            continue
        if not 0 <= tid < n_vocab:
            raise LlamatoolError(f"{folder / where}: added token id {tid} is outside the vocab_size {n_vocab} of config.json")
        tokens[tid], scores[tid] = text, UNSCORED
        types[tid] = CONTROL if entry.get("special") else USER_DEFINED
    special = load_special_vocab(folder, load_merges=False, n_vocab=len(tokens))
    return Vocab("llama", "default", tokens, types, special, scores=scores)


# --- byte-level BPE -----------------------------------------------------------------------


def _added_tokens(tokenizer: dict, config: dict | None, where: str) -> dict[int, dict]:
    """Added tokens by id: tokenizer.json's, completed by tokenizer_config.json's decoder."""
    added = {}
    for entry in tokenizer.get("added_tokens") or []:
        if isinstance(entry, dict) and isinstance(entry.get("content"), str):
            added[_int_id(entry.get("id"), where)] = entry
    decoder = config.get("added_tokens_decoder") if isinstance(config, dict) else None
    for key, entry in (decoder or {}).items():
        tid = _int_id(key, where)
        if tid not in added and isinstance(entry, dict) and isinstance(entry.get("content"), str):
            added[tid] = entry
    return added


def _bpe_model(tokenizer: dict, where: str) -> dict:
    model = tokenizer.get("model")
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE" or not isinstance(model.get("vocab"), dict):
        kind = model.get("type") if isinstance(model, dict) else None
        raise LlamatoolError(f"{where}: a {kind or 'non-BPE'} tokenizer; only byte-level BPE (or tokenizer.model) is supported")
    if model.get("byte_fallback"):
        raise LlamatoolError(
            f"{where}: a SentencePiece-style BPE tokenizer (byte_fallback); llamatool needs its tokenizer.model to convert it"
        )
    return model


def bpe_vocab(folder: Path, n_vocab: int) -> Vocab:
    path = folder / "tokenizer.json"
    where = str(path)
    tokenizer = read_json_if_present(path)
    if not isinstance(tokenizer, dict):
        raise LlamatoolError(f"{where}: not a tokenizer.json object")
    config = read_json_if_present(folder / "tokenizer_config.json")
    config = config if isinstance(config, dict) else {}
    model = _bpe_model(tokenizer, where)
    pre = recognise(describe(tokenizer, config, where), where)
    by_id = {_int_id(tid, where): text for text, tid in model["vocab"].items()}
    added = _added_tokens(tokenizer, config, where)
    by_id.update({tid: entry["content"] for tid, entry in added.items()})
    added_texts = {entry["content"]: entry for entry in added.values()}
    top = max(by_id, default=-1)
    if top >= n_vocab:
        raise LlamatoolError(f"{where}: token id {top} does not fit the vocab_size {n_vocab} of config.json")
    tokens, types = [], []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        entry = added_texts.get(text)
        if entry is None:
            types.append(NORMAL)
        elif entry.get("special") or looks_special(text):
            types.append(CONTROL)
        else:
            text = text.replace("\u2581", " ")
            types.append(USER_DEFINED)
        tokens.append(text)
    special = load_special_vocab(folder, load_merges=True)
    if not special.merges:
        raise LlamatoolError(f"{where}: a BPE tokenizer without merges")
    return Vocab("gpt2", pre, tokens, types, special)


# --- entry point --------------------------------------------------------------------------


def load_vocab(folder: Path, n_vocab: int, keep_add_prefix_space: bool = False) -> Vocab:
    """The checkpoint's vocab: tokenizer.model first (as the reference converter tries it
    first), else tokenizer.json; tokenizer_config.json's add_prefix_space is kept for the
    families whose converter keeps it (LLaMA's)."""
    if (folder / "tokenizer.model").is_file():
        vocab = sentencepiece_vocab(folder, n_vocab)
    elif (folder / "tokenizer.json").is_file():
        vocab = bpe_vocab(folder, n_vocab)
    else:
        raise LlamatoolError(f"{folder}: no tokenizer.model or tokenizer.json (the tokenizer is needed to convert)")
    config = read_json_if_present(folder / "tokenizer_config.json")
    if keep_add_prefix_space and isinstance(config, dict) and config.get("add_prefix_space") is not None:
        vocab.add_space_prefix = bool(config["add_prefix_space"])
    return vocab
