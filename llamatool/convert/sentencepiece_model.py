"""Read the pieces of a SentencePiece `tokenizer.model` (a protobuf ModelProto).

Only what the converter needs: each piece's text, score and type. The protobuf
wire format is simple enough to walk by hand, which keeps the `sentencepiece`
and `protobuf` packages out of the run-time dependencies:

    ModelProto     { repeated SentencePiece pieces = 1; ... }
    SentencePiece  { string piece = 1; float score = 2; Type type = 3 [default NORMAL]; }

Every length is checked against the bytes that are left, so a truncated or hostile
file gives one clear error instead of an exception or a huge allocation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from ..errors import LlamatoolError

MAX_MODEL_BYTES = 256 << 20  # real tokenizer.model files are under 10 MB

# protobuf wire types
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


class PieceType(IntEnum):
    """SentencePiece's piece types (sentencepiece_model.proto); also gguf's token types."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


@dataclass(frozen=True)
class Piece:
    text: str
    score: float
    type: PieceType


class _Wire:
    """Bounds-checked protobuf field reader over a bytes slice."""

    def __init__(self, buf: bytes, where: str):
        self.buf, self.pos, self.where = buf, 0, where

    def fail(self, what: str):
        raise LlamatoolError(f"{self.where}: not a valid SentencePiece model ({what} at byte {self.pos})")

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            if self.pos >= len(self.buf):
                self.fail("truncated varint")
            byte = self.buf[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 63:
                self.fail("varint longer than 10 bytes")

    def take(self, n: int) -> bytes:
        if n > len(self.buf) - self.pos:
            self.fail(f"field of {n} bytes runs past the end")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def fields(self):
        """Yield (field number, wire type, value): ints for varints, bytes otherwise."""
        while self.pos < len(self.buf):
            key = self.varint()
            number, wire = key >> 3, key & 7
            if wire == _VARINT:
                yield number, wire, self.varint()
            elif wire == _FIXED64:
                yield number, wire, self.take(8)
            elif wire == _LEN:
                yield number, wire, self.take(self.varint())
            elif wire == _FIXED32:
                yield number, wire, self.take(4)
            else:
                self.fail(f"unsupported wire type {wire}")


def _piece(raw: bytes, where: str) -> Piece:
    text, score, ptype = "", 0.0, PieceType.NORMAL
    for number, wire, value in _Wire(raw, where).fields():
        if number == 1 and wire == _LEN:
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                raise LlamatoolError(f"{where}: a piece is not valid UTF-8") from None
        elif number == 2 and wire == _FIXED32:
            (score,) = struct.unpack("<f", value)
        elif number == 3 and wire == _VARINT:
            try:
                ptype = PieceType(value)
            except ValueError:
                raise LlamatoolError(f"{where}: piece {text!r} has unknown type {value}") from None
    return Piece(text, score, ptype)


def read_pieces(path: Path) -> list[Piece]:
    """The pieces of a tokenizer.model, in id order."""
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise LlamatoolError(f"{path}: {size} bytes is too large for a SentencePiece model")
    where = str(path)
    pieces = [_piece(value, where) for number, wire, value in _Wire(path.read_bytes(), where).fields() if number == 1 and wire == _LEN]
    if not pieces:
        raise LlamatoolError(f"{path}: not a valid SentencePiece model (no pieces)")
    return pieces
