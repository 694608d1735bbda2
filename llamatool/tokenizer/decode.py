"""Token ids back to text: pieces, llama_detokenize's rules, and a streaming decoder.

A token's piece is bytes, not text: byte tokens and byte-level BPE tokens can hold part
of a UTF-8 character. Text appears only when pieces are joined (decode) or when a
streaming decoder has seen a whole character (IncrementalDecoder).
"""

from __future__ import annotations

import codecs

from .unicode import CHAR_TO_BYTE
from .vocab import Attr, Vocab

SPACE_MARK = "\u2581"  # SentencePiece's visible space
SPECIAL_ATTRS = int(Attr.UNKNOWN | Attr.CONTROL)  # hidden when special tokens are not shown
VERBATIM = int(Attr.UNKNOWN | Attr.CONTROL | Attr.USER_DEFINED)
NORMAL, BYTE = int(Attr.NORMAL), int(Attr.BYTE)


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _byte_token_value(text: str) -> int:
    """The byte of a "<0xNN>" token (like strtol: bad hex reads as 0)."""
    try:
        return int(text[3:5], 16)
    except ValueError:
        return 0


def _from_byte_alphabet(text: str) -> bytes:
    """A byte-level BPE token's bytes; characters outside the alphabet are flagged, as llama.cpp does."""
    out = bytearray()
    for ch in text:
        b = CHAR_TO_BYTE.get(ch)
        if b is not None:
            out.append(b)
        else:
            out += b"[UNK_BYTE_0x" + _raw(ch).hex().encode() + _raw(text) + b"]"
    return bytes(out)


def build_piece(vocab: Vocab, token: int) -> bytes:
    """The bytes token renders as when special tokens are shown (llama_token_to_piece, special=true)."""
    text, attr = vocab.tokens[token], vocab.attrs[token]
    if attr & VERBATIM:
        return _raw(text)
    if attr & NORMAL:
        if vocab.model == "spm":
            return _raw(text.replace(SPACE_MARK, " "))
        return _from_byte_alphabet(text)
    if attr & BYTE:
        return bytes([_byte_token_value(text)])
    return b""  # unused and undefined tokens render as nothing


def clean_up_spaces(text: bytes) -> bytes:
    """llama.cpp's clean_up_tokenization_spaces, pass for pass on the bytes.

    1. " ?", " !", " .", " ," lose the space;  2. " ' " becomes "'";
    3. " 's", " 'm", " 're", " 've" lose the space (not " 't", " 'd", " 'll").
    """
    buf = bytearray(text)
    n = len(buf)

    # pass 1
    total = 1 if n else 0
    for i in range(1, n):
        x = buf[i]
        if buf[i - 1] == 0x20 and x in b"?!.,":
            total -= 1
        buf[total] = x
        total += 1

    # pass 2: the byte after a lone apostrophe is skipped (and zeroed, as the C code does)
    n, total, i = total, 1 if total else 0, 1
    while i < n:
        x = buf[i]
        if x == 0x27 and i + 1 < n and buf[i - 1] == 0x20 and buf[i + 1] == 0x20:
            total -= 1
            i += 1
            buf[i] = 0
        buf[total] = x
        total += 1
        i += 1

    # pass 3
    n, total = total, 1 if total else 0
    for i in range(1, n):
        x = buf[i]
        if buf[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            x1 = buf[i + 1]
            if x1 in b"sm":
                total -= 1
            elif x1 in b"rv" and i + 2 < n and buf[i + 2] == 0x65:  # 're, 've
                total -= 1
        buf[total] = x
        total += 1
    return bytes(buf[:total])


class IncrementalDecoder:
    """Streaming text from token ids: `add(id)` returns the text completed by that token.

    A token that ends inside a UTF-8 character returns "" until the character is whole;
    invalid bytes become U+FFFD. `flush()` returns what is left (an incomplete tail as U+FFFD).
    Pieces are joined as they are (like llama.cpp's streaming output): no leading-space
    removal and no clean-up of spaces, which need the whole text (use Tokenizer.decode).
    """

    def __init__(self, tokenizer, skip_special: bool = False):
        self._tokenizer = tokenizer
        self._special = not skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def add(self, token: int) -> str:
        return self._utf8.decode(self._tokenizer.token_to_piece(token, special=self._special))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
