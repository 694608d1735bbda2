"""`llamatool tokenize`: text -> token ids with a model's tokenizer, printed like llama-tokenize.

    $ llamatool tokenize -m model.gguf -p "Hello world"
     19556 -> 'Hello'
      1317 -> ' world'

`--ids` prints only a Python-style list of ids. BOS/EOS are added when the model asks for
them (`--no-bos` turns that off); special tokens such as <|im_start|> are recognised in the
text only with `--special`. As in llama-tokenize, escape sequences in -p (\\n, \\t, ...) are
processed unless --no-escape is given; files and stdin are taken as they are.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

from .errors import LlamatoolError

_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)", re.DOTALL)
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", "'": "'", '"': '"', "\\": "\\"}


def process_escapes(text: str) -> str:
    """\\n, \\r, \\t, \\', \\", \\\\ and \\xNN as llama.cpp's -p does; other backslashes are kept."""

    def one(m: re.Match) -> str:
        code = m.group(1)
        if code in _SIMPLE:
            return _SIMPLE[code]
        if len(code) == 3:
            return chr(int(code[1:], 16))
        return m.group(0)

    return _ESCAPE.sub(one, text)


def read_prompt(prompt: str | None, file: Path | None, stdin: bool, escape: bool) -> str:
    if sum(x is not None and x is not False for x in (prompt, file, stdin)) != 1:
        raise LlamatoolError("give exactly one of -p TEXT, -f FILE or --stdin")
    if prompt is not None:
        return process_escapes(prompt) if escape else prompt
    try:
        raw = sys.stdin.buffer.read() if stdin else Path(file).read_bytes()
    except FileNotFoundError:
        raise LlamatoolError(f"{file}: no such file") from None
    except IsADirectoryError:
        raise LlamatoolError(f"{file}: is a directory") from None
    except PermissionError:
        raise LlamatoolError(f"{file}: permission denied") from None
    # Undecodable bytes survive as surrogates, which the tokenizer treats as llama.cpp treats bad UTF-8.
    return raw.decode("utf-8", "surrogateescape")


def format_piece(piece: bytes) -> tuple[str, bool]:
    """A token's piece for display, and whether it is whole UTF-8; if not, its bytes in hex
    like <e6 97> (what llama-tokenize shows on Windows; elsewhere it writes the raw bytes)."""
    try:
        return piece.decode("utf-8"), True
    except UnicodeDecodeError:
        return "<" + " ".join(f"{b:02x}" for b in piece) + ">", False


def tokenize_command(
    model: Path,
    prompt: str | None = None,
    file: Path | None = None,
    stdin: bool = False,
    ids_only: bool = False,
    no_bos: bool = False,
    parse_special: bool = False,
    show_count: bool = False,
    escape: bool = True,
) -> None:
    from .gguf_io import GGUFReader
    from .tokenizer import Tokenizer

    text = read_prompt(prompt, file, stdin, escape)
    with GGUFReader(model) as reader, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok = Tokenizer.from_gguf(reader)
    for w in caught:  # e.g. an unknown pre-tokenizer: one line, not a Python warning dump
        print(f"warning: {w.message}", file=sys.stderr)
    ids = tok.encode(text, add_special=not no_bos, parse_special=parse_special)

    out = sys.stdout
    if ids_only:
        out.write("[" + ", ".join(map(str, ids)) + "]\n")
    else:
        for i in ids:
            shown, whole = format_piece(tok.token_to_piece(i))
            out.write(f"{i:6d} -> '{shown}'" + ("\n" if whole else " (utf-8 decode failure)\n"))
    if show_count:
        out.write(f"Total number of tokens: {len(ids)}\n")
