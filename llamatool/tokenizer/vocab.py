"""A vocabulary read from a GGUF file's `tokenizer.ggml.*` metadata, with llama.cpp's defaults.

Everything llama.cpp derives while loading a vocabulary (llama_vocab::impl::load) is derived
here the same way: default special ids per tokenizer model, the flags implied by the
pre-tokenizer name, token attributes from token types, end-of-generation tokens found by
their text, and the order in which special tokens are looked for in text.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from enum import IntFlag

import numpy as np

from ..errors import LlamatoolError
from .pretokenize import PreTokenizerSpec, pre_tokenizer_spec

KEY = "tokenizer.ggml."


class Attr(IntFlag):
    """Token attributes (llama_token_attr)."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8
    SINGLE_WORD = 1 << 9


# tokenizer.ggml.token_type values (gguf TokenType) -> attributes; other values are undefined
TOKEN_TYPE_ATTR = np.array(
    [Attr.UNDEFINED, Attr.NORMAL, Attr.UNKNOWN, Attr.CONTROL, Attr.USER_DEFINED, Attr.UNUSED, Attr.BYTE], dtype=np.int64
)
# Plain ints for the loops over the whole vocabulary (IntFlag arithmetic is slow).
CONTROL = int(Attr.CONTROL)
SEARCHED_IN_TEXT = int(Attr.CONTROL | Attr.USER_DEFINED | Attr.UNKNOWN)

# Texts of tokens that end generation, whatever the metadata says (llama.cpp's list).
EOG_TEXTS = frozenset(
    [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
        "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
        "<｜end▁of▁sentence｜>", "[e~[",
    ]
)  # fmt: skip
# Texts that identify the end-of-turn token when the metadata names none.
EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
)  # fmt: skip
FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}

# Special ids read from metadata (key suffix -> field); deprecated names last, as in llama.cpp.
SPECIAL_ID_KEYS = (
    ("bos_token_id", "bos_id"),
    ("eos_token_id", "eos_id"),
    ("eot_token_id", "eot_id"),
    ("eom_token_id", "eom_id"),
    ("unknown_token_id", "unk_id"),
    ("seperator_token_id", "sep_id"),  # sic: the GGUF key is spelled so
    ("padding_token_id", "pad_id"),
    ("mask_token_id", "mask_id"),
    ("fim_pre_token_id", "fim_pre_id"),
    ("fim_suf_token_id", "fim_suf_id"),
    ("fim_mid_token_id", "fim_mid_id"),
    ("fim_pad_token_id", "fim_pad_id"),
    ("fim_rep_token_id", "fim_rep_id"),
    ("fim_sep_token_id", "fim_sep_id"),
    ("prefix_token_id", "fim_pre_id"),
    ("suffix_token_id", "fim_suf_id"),
    ("middle_token_id", "fim_mid_id"),
)

MODELS = {"llama": "spm", "gpt2": "bpe"}


@dataclass
class Vocab:
    model: str  # "spm" (tokenizer.ggml.model "llama") or "bpe" ("gpt2")
    tokens: list[str]
    scores: list[float]
    attrs: list[int]
    token_to_id: dict[str, int]
    merges: dict[str, int] = field(default_factory=dict)  # "left right" -> rank
    pre_name: str | None = None
    pre: PreTokenizerSpec | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    clean_spaces: bool = False
    bos_id: int | None = None
    eos_id: int | None = None
    eot_id: int | None = None
    eom_id: int | None = None
    unk_id: int | None = None
    sep_id: int | None = None
    pad_id: int | None = None
    mask_id: int | None = None
    fim_pre_id: int | None = None
    fim_suf_id: int | None = None
    fim_mid_id: int | None = None
    fim_pad_id: int | None = None
    fim_rep_id: int | None = None
    fim_sep_id: int | None = None
    eog_ids: frozenset[int] = frozenset()
    special_ids: tuple[int, ...] = ()  # looked for in text, longest text first

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)


def _where(reader) -> str:
    return str(getattr(reader, "path", "GGUF"))


def _string_array(reader, key: str, required: bool) -> list[str] | None:
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise LlamatoolError(f"{_where(reader)}: missing {key}: the file has no tokenizer")
        return None
    if f.type != 9 or f.subtype != 8:
        raise LlamatoolError(f"{_where(reader)}: {key} must be an array of strings")
    return f.value


def _numeric_array(reader, key: str, n: int, kinds: tuple[int, ...]) -> np.ndarray | None:
    f = reader.fields.get(key)
    if f is None:
        return None
    if f.type != 9 or f.subtype not in kinds:
        raise LlamatoolError(f"{_where(reader)}: {key} has the wrong type")
    if len(f.value) < n:
        raise LlamatoolError(f"{_where(reader)}: {key} has {len(f.value)} entries for {n} tokens")
    return f.value[:n]


def _flag(reader, key: str, default: bool) -> bool:
    value = reader.get(key)
    return default if value is None else bool(value)


def load_vocab(reader) -> Vocab:
    """Read and check the tokenizer metadata of a GGUFReader."""
    model_name = reader.get(KEY + "model")
    if model_name is None:
        raise LlamatoolError(f"{_where(reader)}: missing {KEY}model: the file has no tokenizer")
    model = MODELS.get(model_name)
    if model is None:
        known = ", ".join(repr(m) for m in MODELS)
        raise LlamatoolError(f"{_where(reader)}: unsupported tokenizer model {model_name!r} (supported: {known})")

    tokens = list(_string_array(reader, KEY + "tokens", required=True))
    n = len(tokens)
    if n == 0:
        raise LlamatoolError(f"{_where(reader)}: {KEY}tokens is empty")
    if "" in tokens:
        tokens = [t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    token_to_id = dict(zip(tokens, range(n)))
    if len(token_to_id) != n:
        dup = next(t for i, t in enumerate(tokens) if token_to_id[t] != i)
        raise LlamatoolError(f"{_where(reader)}: token {dup!r} appears twice in {KEY}tokens (llama.cpp refuses this too)")

    scores = _numeric_array(reader, KEY + "scores", n, (5, 6))  # int32 or float32
    types = _numeric_array(reader, KEY + "token_type", n, (5,))
    vocab = Vocab(
        model=model,
        tokens=tokens,
        scores=[0.0] * n if scores is None else np.asarray(scores, dtype=np.float32).tolist(),
        attrs=[int(Attr.NORMAL)] * n if types is None else _attrs_of_types(types),
        token_to_id=token_to_id,
    )
    _set_model_defaults(vocab, reader)
    _set_special_ids(vocab, reader)
    vocab.add_bos = _flag(reader, KEY + "add_bos_token", vocab.add_bos)
    vocab.add_eos = _flag(reader, KEY + "add_eos_token", vocab.add_eos)
    _detect_special_by_text(vocab)
    _set_model_specific_attrs(vocab, reader)
    vocab.special_ids = tuple(
        sorted(
            _with_attr(vocab.attrs, SEARCHED_IN_TEXT),
            key=lambda i: -len(vocab.tokens[i].encode("utf-8", "surrogateescape")),
        )
    )
    return vocab


def _with_attr(attrs: list[int], flags: int) -> list[int]:
    """Ids of the tokens that have any of flags (a loop over the whole vocabulary, in numpy)."""
    return np.flatnonzero(np.array(attrs, dtype=np.int64) & flags).tolist()


def _attrs_of_types(types: np.ndarray) -> list[int]:
    types = np.asarray(types, dtype=np.int64)
    known = (types >= 0) & (types < len(TOKEN_TYPE_ATTR))
    return np.where(known, TOKEN_TYPE_ATTR[np.where(known, types, 0)], int(Attr.UNDEFINED)).tolist()


def _set_model_defaults(vocab: Vocab, reader) -> None:
    """Defaults that depend on the tokenizer model and the pre-tokenizer name."""
    if vocab.model == "spm":
        vocab.bos_id, vocab.eos_id, vocab.unk_id = 1, 2, 0
        vocab.add_space_prefix, vocab.add_bos, vocab.clean_spaces = True, True, False
    else:
        merges = _string_array(reader, KEY + "merges", required=True)
        # the first of duplicate merges wins: it is inserted last
        vocab.merges = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))
        vocab.bos_id = vocab.eos_id = 11  # llama.cpp's defaults for BPE vocabularies
        vocab.pre_name = reader.get(KEY + "pre")
        vocab.pre = pre_tokenizer_spec(vocab.pre_name)
        vocab.clean_spaces = vocab.pre.clean_spaces
        vocab.add_bos = vocab.pre.add_bos
        if vocab.pre.no_default_bos:
            vocab.bos_id = None
    vocab.add_space_prefix = _flag(reader, KEY + "add_space_prefix", vocab.add_space_prefix)


def _set_special_ids(vocab: Vocab, reader) -> None:
    n = vocab.n_vocab
    for key, name in SPECIAL_ID_KEYS:
        current = getattr(vocab, name)
        if current is not None and current >= n:
            current = None  # a default out of range is disabled
        value = reader.get(KEY + key)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
            if value < n:
                current = int(value)
            else:
                warnings.warn(f"{KEY}{key} = {value} is out of the vocabulary: using {current}", stacklevel=4)
        setattr(vocab, name, current)


def _detect_special_by_text(vocab: Vocab) -> None:
    """End-of-turn, FIM and end-of-generation tokens known by their text (llama.cpp does the same)."""
    attrs, ids = vocab.attrs, vocab.token_to_id

    def mark_control(i: int) -> None:
        attrs[i] |= CONTROL

    if vocab.eot_id is None:
        # llama.cpp takes whichever candidate its hash map yields first; we take the first in this list.
        for text in EOT_TEXTS:
            if text in ids:
                vocab.eot_id = ids[text]
                mark_control(vocab.eot_id)
                break
    if vocab.eom_id is None and "<|eom_id|>" in ids:
        vocab.eom_id = ids["<|eom_id|>"]
        mark_control(vocab.eom_id)
    for name, texts in FIM_TEXTS.items():
        if getattr(vocab, name + "_id") is None:
            for text in texts:
                if text in ids:
                    setattr(vocab, name + "_id", ids[text])
                    mark_control(ids[text])
                    break

    # Control tokens named "unused..." are unused.
    unused = int(Attr.UNUSED)
    for i in _with_attr(attrs, CONTROL):
        if "unused" in vocab.tokens[i]:
            attrs[i] |= unused

    eog = {i for i in (vocab.fim_pad_id, vocab.fim_rep_id, vocab.fim_sep_id) if i is not None}
    for text in EOG_TEXTS:
        if text in ids:
            eog.add(ids[text])
            mark_control(ids[text])
    # gpt-oss: these are always rendered
    for text in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
        if text in ids:
            attrs[ids[text]] = int(Attr.USER_DEFINED)
    eog.update(i for i in (vocab.eos_id, vocab.eot_id, vocab.eom_id) if i is not None)

    texts = {vocab.tokens[i]: i for i in eog}
    # o200k_harmony / solar-open: "<|end|>" ends a message, not the generation
    if "<|end|>" in texts and (("<|return|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts)) or ("<|flush|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts))):
        eog.discard(texts["<|end|>"])
        attrs[texts["<|end|>"]] = int(Attr.USER_DEFINED)
    # gemma4 and plamo: "</s>" is a normal token there
    if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
        eog.discard(texts["</s>"])
        attrs[texts["</s>"]] = int(Attr.NORMAL)
    vocab.eog_ids = frozenset(eog)


def _set_model_specific_attrs(vocab: Vocab, reader) -> None:
    """Phi-3's special tokens swallow the whitespace after them (llama.cpp keys this on the name)."""
    name = str(reader.get("general.name") or "").lower()
    if "phi-3" not in name and "phi3" not in name:
        return
    attrs, ids = vocab.attrs, vocab.token_to_id
    for i, a in enumerate(attrs):
        if a & SEARCHED_IN_TEXT:
            attrs[i] |= int(Attr.RSTRIP)
    if "</s>" in ids:
        attrs[ids["</s>"]] |= int(Attr.RSTRIP)
    for text in ("<unk>", "<s>", "<|endoftext|>"):
        if text in ids:
            attrs[ids[text]] &= ~int(Attr.RSTRIP)
