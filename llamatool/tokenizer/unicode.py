"""Unicode as llama.cpp's tokenizers see it: code point classes and the GPT-2 byte alphabet.

llama.cpp does not use the Unicode tables of a regex library. It classifies each code point
into one major class (letter, number, punctuation, symbol, mark, separator, other,
unassigned) from Unicode 15.1, plus its own short list of whitespace, and matches its
pre-tokenizer regexes on a "collapsed" copy of the text in which every non-ASCII code point
is replaced by one byte standing for its class. We do the same, so that `\\p{L}` or `\\s`
mean exactly what they mean in llama.cpp, whatever Unicode version Python ships.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .unicode_ranges import RANGES

MAX_CODEPOINT = 0x110000

# Whitespace is the White_Space property (PropList.txt), not the Z class.
WHITESPACE = frozenset(
    [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
)

# The byte that stands for a non-ASCII code point in collapsed text, by class. Non-ASCII
# whitespace becomes a vertical tab so that `\s` still matches it.
COLLAPSED_WHITESPACE = "\x0b"
COLLAPSED = {"N": "\xd1", "L": "\xd2", "P": "\xd3", "M": "\xd4", "S": "\xd5"}
COLLAPSED_OTHER = "\xd0"  # separators that are not whitespace, controls, unassigned

# ASCII members of each class, as a regex character-class body (for \p{..} in a collapsed regex).
ASCII_MEMBERS = {
    "N": "0-9",
    "L": "A-Za-z",
    "P": r"!-#%-*,-/:-;?-@\[-\]_\{\}",
    "M": "",
    "S": r"\$\+<->\^`\|~",
}


def _parse_ranges() -> tuple[np.ndarray, np.ndarray]:
    items = RANGES.split()
    starts = np.array([int(item[:-1], 16) for item in items], dtype=np.int64)
    classes = np.array([ord(item[-1]) for item in items], dtype=np.uint8)
    return starts, classes


@lru_cache(maxsize=1)
def class_table() -> np.ndarray:
    """uint8[0x110000]: the ASCII letter of each code point's major class (b'L', b'N', ...)."""
    starts, classes = _parse_ranges()
    lengths = np.diff(np.append(starts, MAX_CODEPOINT))
    return np.repeat(classes, lengths)


@lru_cache(maxsize=1)
def _collapse_table() -> np.ndarray:
    """uint8[0x110000]: each code point's byte in collapsed text."""
    table = np.full(MAX_CODEPOINT, ord(COLLAPSED_OTHER), dtype=np.uint8)
    classes = class_table()
    for cls, ch in COLLAPSED.items():
        table[classes == ord(cls)] = ord(ch)
    table[list(WHITESPACE)] = ord(COLLAPSED_WHITESPACE)
    table[:128] = np.arange(128, dtype=np.uint8)  # ASCII stays itself
    return table


def code_points(text: str) -> np.ndarray:
    """The code points of text as uint32 (lone surrogates included)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def collapse(text: str) -> str:
    """One character per code point: ASCII kept, others replaced by their class's byte."""
    if text.isascii():
        return text
    return _collapse_table()[code_points(text)].tobytes().decode("latin-1")


_NON_ASCII_WHITESPACE = {cp: COLLAPSED_WHITESPACE for cp in WHITESPACE if cp >= 128}


def ascii_whitespace(text: str) -> str:
    """Non-ASCII whitespace replaced by a vertical tab (llama.cpp's fallback for `\\s` in wide regexes)."""
    return text if text.isascii() else text.translate(_NON_ASCII_WHITESPACE)


def replace_surrogates(text: str) -> str:
    """Lone surrogates (undecodable bytes kept by surrogateescape) become U+FFFD, as llama.cpp
    replaces each invalid UTF-8 byte with U+FFFD before pre-tokenizing."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) < 0xE000 else c for c in text)


# --- the GPT-2 byte alphabet ----------------------------------------------------------
# Byte-level BPE spells every byte as a printable character: printable Latin-1 bytes as
# themselves, the others (controls, space, ...) as U+0100 onwards, in byte order.


def _byte_to_char() -> list[str]:
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = [""] * 256
    extra = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR: list[str] = _byte_to_char()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
_LATIN1_TO_ALPHABET = {b: c for b, c in enumerate(BYTE_TO_CHAR)}


def bytes_to_alphabet(text: str) -> str:
    """text's UTF-8 bytes, each spelled as its byte-level BPE character."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1").translate(_LATIN1_TO_ALPHABET)
