"""Choose `tokenizer.ggml.pre` by recognising the pre-tokenizer a tokenizer.json declares.

convert_hf_to_gguf.py identifies a BPE pre-tokenizer by hashing how the tokenizer splits
a test string, so every new model needs its hash registered first. llama.cpp itself only
cares about what the pre-tokenizer does: the regexes it splits with, plus two flags
(`ignore_merges`: whole words found in the vocab skip BPE; `clean_spaces`: the
detokenizer's clean_up_tokenization_spaces). We read exactly those from tokenizer.json
and tokenizer_config.json and pick the llama.cpp pre-tokenizer name that behaves the
same; where several names behave alike, the one the reference converter gives the
best-known model with that tokenizer (llama-bpe for Llama 3, smollm for SmolLM...).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LlamatoolError

# The regex behind ByteLevel(use_regex=true): GPT-2's.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
DIGITS = r"\p{N}"  # Digits(individual_digits=true)
DIGIT_RUNS = r"\p{N}+"  # Digits(individual_digits=false)
LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_WORD_CASED = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
_WORD_UPPER = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
TEKKEN = f"{_WORD_CASED}|{_WORD_UPPER}" + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
GPT4O = f"{_WORD_CASED}{_CONTRACTION}|{_WORD_UPPER}{_CONTRACTION}" + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@dataclass(frozen=True)
class PreTokenizer:
    """What llama.cpp's BPE pre-tokenizer depends on."""

    regexes: tuple[str, ...]
    ignore_merges: bool
    clean_spaces: bool


@dataclass(frozen=True)
class _Known:
    name: str
    regexes: tuple[str, ...]
    ignore_merges: bool | None = None  # None: either
    clean_spaces: bool | None = None


# First match wins: names with the same regexes are told apart by the flags.
KNOWN = (
    _Known("llama-bpe", (LLAMA3,), ignore_merges=True),
    _Known("smaug-bpe", (LLAMA3,), ignore_merges=False),
    _Known("smollm", (DIGITS, GPT2), clean_spaces=False),
    _Known("starcoder", (DIGITS, GPT2), clean_spaces=True),
    _Known("gpt-2", (GPT2,)),
    _Known("qwen2", (QWEN2,)),
    _Known("tekken", (TEKKEN,)),
    _Known("gpt-4o", (GPT4O,)),
)


def _steps(node, where: str) -> list[str]:
    """The regexes a tokenizers pre_tokenizer splits with, in order."""
    if node is None:
        return []
    if not isinstance(node, dict):
        raise LlamatoolError(f"{where}: pre_tokenizer is not an object")
    kind = node.get("type")
    if kind == "Sequence":
        return [r for child in node.get("pretokenizers") or [] for r in _steps(child, where)]
    if kind == "ByteLevel":
        return [GPT2] if node.get("use_regex", True) else []
    if kind == "Digits":
        return [DIGITS if node.get("individual_digits") else DIGIT_RUNS]
    if kind == "Split":
        pattern = node.get("pattern") or {}
        regex = pattern.get("Regex") if isinstance(pattern, dict) else None
        if isinstance(regex, str) and node.get("behavior", "Isolated") == "Isolated" and not node.get("invert"):
            return [regex]
        return [f"<Split {pattern!r} {node.get('behavior')}>"]
    return [f"<{kind}>"]


def _has_byte_level(node) -> bool:
    if not isinstance(node, dict):
        return False
    if node.get("type") == "ByteLevel":
        return True
    return any(_has_byte_level(child) for child in node.get("pretokenizers") or [])


def describe(tokenizer_json: dict, tokenizer_config: dict, where: str) -> PreTokenizer:
    pre = tokenizer_json.get("pre_tokenizer")
    if not _has_byte_level(pre):
        raise LlamatoolError(f"{where}: the pre-tokenizer has no ByteLevel step; only byte-level BPE tokenizers are supported")
    model = tokenizer_json.get("model") or {}
    return PreTokenizer(
        regexes=tuple(_steps(pre, where)),
        ignore_merges=bool(model.get("ignore_merges", False)),
        # transformers' default for clean_up_tokenization_spaces is False
        clean_spaces=bool(tokenizer_config.get("clean_up_tokenization_spaces", False)),
    )


def recognise(found: PreTokenizer, where: str) -> str:
    """The llama.cpp pre-tokenizer name that splits text like `found`."""
    for known in KNOWN:
        if known.regexes != found.regexes:
            continue
        if known.ignore_merges is not None and known.ignore_merges != found.ignore_merges:
            continue
        if known.clean_spaces is not None and known.clean_spaces != found.clean_spaces:
            continue
        return known.name
    shown = " then ".join(repr(r if len(r) < 60 else r[:57] + "...") for r in found.regexes) or "no regex"
    raise LlamatoolError(f"{where}: pre-tokenizer not recognised (splits with {shown}); llama.cpp would tokenize it wrongly")
