"""Pre-tokenizers of byte-level BPE vocabularies: text -> words, as llama.cpp splits it.

Each `tokenizer.ggml.pre` name selects a list of regexes (those of llama.cpp's
llm_tokenizer_bpe, which come from the models' tokenizer.json). They apply in turn: the
first splits the text, each next one splits every piece again, and text between two
matches is a piece of its own.

Regexes that use Unicode classes (\\p{L}, \\p{N}, ...) run on collapsed text (see
unicode.py), with each \\p{..} rewritten as "its collapsed byte or its ASCII members";
the others run on the text itself with non-ASCII whitespace turned into \\v. Both use
ASCII `\\s`, as C++ std::regex does, so a split here is the split llama.cpp makes.
llama.cpp's hand-written fast paths for the GPT-2, LLaMA-3 and Qwen2 regexes give the
same result as the regexes themselves (tested against llama.cpp).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from .unicode import ASCII_MEMBERS, COLLAPSED, ascii_whitespace, collapse

# --- the regexes (as written in llama.cpp, from each model's tokenizer.json) -----------

CONTRACTIONS_ANY_CASE = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = CONTRACTIONS_ANY_CASE + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = CONTRACTIONS_ANY_CASE + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# Written with escapes: several of these characters (the Ohm and Kelvin signs, ...) change under
# Unicode normalization if spelled literally.
DEEPSEEK_LATIN = (
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
    "\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
    "\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
    "\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102"
    "\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
    "\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb"
    "\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)
DEEPSEEK_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
CJK_HANGUL = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
CJK_KANA = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
BLOOM = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
CHAMELEON_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"

# Pre-tokenizer name -> the regexes applied in turn.
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"),
    "llama3": (LLAMA3,),
    "deepseek-llm": ("[\r\n]", DEEPSEEK_LATIN, DEEPSEEK_PUNCT, r"\s+\Z", CJK_HANGUL, r"\p{N}+"),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_HANGUL, r"\p{N}"),
    "deepseek-v3": (
        r"\p{N}{1,3}",
        CJK_KANA,
        r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"),
    "starcoder": (r"\p{N}", GPT2),
    "gpt2": (GPT2,),
    "qwen2": (QWEN2,),
    "bloom": (BLOOM,),
    "viking": (BLOOM, r"\p{N}"),
    "chameleon": (
        "<sentinel:[0-9]+>",
        "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
        "([\\t\\n]|    |  )",
        r"\p{N}",
        r"[\p{P}!-/:-@\[-`{-~]",
        CHAMELEON_WORDS,
    ),
    "tekken": (
        r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "bailingmoe": (
        r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
    ),
    "seed-coder": (
        CONTRACTIONS_ANY_CASE + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "minicpm5": (r"\p{N}{1,3}", CONTRACTIONS_ANY_CASE + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
}


@dataclass(frozen=True)
class PreTokenizerSpec:
    """What a `tokenizer.ggml.pre` name means for a byte-level BPE vocabulary."""

    regexes: str  # key of PRE_TOKENIZERS
    clean_spaces: bool = True  # detokenize removes " ," " ." ... (clean_up_tokenization_spaces)
    ignore_merges: bool = False  # a word that is a token is taken whole
    add_bos: bool = False  # default of tokenizer.ggml.add_bos_token
    no_default_bos: bool = False  # no BOS unless tokenizer.ggml.bos_token_id names one


def _spec(regexes, **kw):
    return PreTokenizerSpec(regexes, **kw)


# `tokenizer.ggml.pre` values llama.cpp knows, with what each implies (llama_vocab::impl::load).
PRE_SPECS: dict[str, PreTokenizerSpec] = {
    "default": _spec("default"),
    **{n: _spec("llama3", ignore_merges=True, add_bos=True) for n in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2")},
    **{n: _spec("llama3") for n in ("dbrx", "smaug-bpe")},
    "deepseek-llm": _spec("deepseek-llm", clean_spaces=False),
    "deepseek-coder": _spec("deepseek-coder", clean_spaces=False),
    "deepseek-v3": _spec("deepseek-v3", clean_spaces=False),
    "hunyuan-dense": _spec("deepseek-v3", clean_spaces=False),
    "falcon": _spec("falcon"),
    **{n: _spec("starcoder") for n in ("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2")},
    **{n: _spec("starcoder", clean_spaces=False) for n in ("command-r", "smollm")},
    **{n: _spec("gpt2") for n in ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais", "exaone4")},
    # Not a llama.cpp name: GPT-NeoX-20B vocabularies convert with pre "mpt", same regex.
    "gpt-neox": _spec("gpt2"),
    **{n: _spec("gpt2", clean_spaces=False) for n in ("trillion", "granite-docling")},
    **{n: _spec("qwen2", clean_spaces=False) for n in ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "grok-2", "solar-open")},
    **{n: _spec("qwen2") for n in ("stablelm2", "megrez")},
    "chatglm-bpe": _spec("llama3", no_default_bos=True),
    **{n: _spec("llama3", ignore_merges=True, no_default_bos=True) for n in ("glm4", "glm5")},
    "poro-chat": _spec("bloom", clean_spaces=False),
    **{n: _spec("bloom") for n in ("bloom", "gpt3-finnish")},
    "viking": _spec("viking", clean_spaces=False),
    "tekken": _spec("tekken", clean_spaces=False, ignore_merges=True, add_bos=True),
    "chameleon": _spec("chameleon", clean_spaces=False, add_bos=True),
    **{n: _spec("bailingmoe", clean_spaces=False) for n in ("bailingmoe", "bailingmoe2", "llada-moe")},
    "seed-coder": _spec("seed-coder", clean_spaces=False),
    "minicpm5": _spec("minicpm5", ignore_merges=True),
}


def pre_tokenizer_spec(name: str | None) -> PreTokenizerSpec:
    """The spec for a `tokenizer.ggml.pre` value; missing or unknown -> default, with a warning."""
    if not name:
        warnings.warn("GGUF has no tokenizer.ggml.pre: using the 'default' pre-tokenizer (as llama.cpp does)", stacklevel=3)
        return PRE_SPECS["default"]
    spec = PRE_SPECS.get(name)
    if spec is None:
        warnings.warn(f"unknown pre-tokenizer {name!r}: using 'default'; tokens may differ from the model's own", stacklevel=3)
        return PRE_SPECS["default"]
    return spec


# --- compiling the regexes --------------------------------------------------------------

_UNICODE_CLASS = re.compile(r"\\p\{(L[ultmo]?|N|P|M|S)\}")


def collapse_regex(expr: str) -> str:
    """Rewrite each \\p{X} as the collapsed byte of class X plus X's ASCII members."""
    out = []
    inside = False  # within [...]: no nested brackets then
    i = 0
    while i < len(expr):
        c = expr[i]
        if c == "[" and (i == 0 or expr[i - 1] != "\\"):
            inside = True
        elif c == "]" and inside and expr[i - 1] != "\\":
            inside = False
        m = _UNICODE_CLASS.match(expr, i)
        if m:
            cls = m.group(1)[0]  # \p{Lu} and friends collapse to letters
            members = COLLAPSED[cls] + ASCII_MEMBERS[cls]
            out.append(members if inside else f"[{members}]")
            i = m.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class _Step:
    regex: re.Pattern
    collapsed: bool  # runs on collapsed text, else on the text with \v for non-ASCII whitespace


def _compile(expr: str) -> _Step:
    collapsed = bool(_UNICODE_CLASS.search(expr))
    source = collapse_regex(expr) if collapsed else expr
    # ASCII: `\s` is [ \t\n\v\f\r], as in std::regex; \x1c-\x1f are not whitespace there.
    return _Step(re.compile(source, re.ASCII), collapsed)


class PreTokenizer:
    """Splits text into the words that byte-level BPE merges within."""

    def __init__(self, regexes: str):
        self.name = regexes
        self.steps = tuple(_compile(e) for e in PRE_TOKENIZERS[regexes])
        self._needs_collapsed = any(s.collapsed for s in self.steps)
        self._needs_wide = not all(s.collapsed for s in self.steps)

    def split(self, text: str) -> list[str]:
        """The words of text, in order; joined they give text back."""
        if not text:
            return []
        collapsed = collapse(text) if self._needs_collapsed else None
        wide = ascii_whitespace(text) if self._needs_wide else None
        spans = [(0, len(text))]
        for step in self.steps:
            spans = _split_spans(step.regex, collapsed if step.collapsed else wide, spans)
        return [text[a:b] for a, b in spans]


def _split_spans(regex: re.Pattern, subject: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Split each span at the matches of regex within it (the span's ends are the text's ends)."""
    out = []
    append = out.append
    finditer = regex.finditer
    for start, end in spans:
        pos = start
        for m in finditer(subject, start, end):
            a, b = m.span()
            if a > pos:
                append((pos, a))
            if b > a:
                append((a, b))
            pos = b
        if pos < end:
            append((pos, end))
    return out
