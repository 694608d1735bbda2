"""GGUF files: a validating, memory-mapped reader and a streaming, atomic writer.

Layout of a GGUF file (v2 and v3, little-endian):

    magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x      (string key, u32 value type, value)
    n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset)
    padding to `general.alignment` (default 32)
    tensor data: each tensor at data_start + offset, each padded to the alignment

The reader trusts nothing: every count, length and offset is checked against the
file size before it is used, so a truncated or hostile file raises GGUFError with
one clear line instead of crashing, hanging or allocating more than the file holds.
Tensors come back as zero-copy uint8 views of their raw blocks, shaped
(n_rows, row_bytes); metadata as plain Python values (numeric arrays as numpy views).

The writer streams: declare metadata and tensor infos, then hand it each tensor's
bytes in order; only one tensor is ever in memory. It writes through
fileio.atomic_output (temporary file + rename, no overwrite without force).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .errors import GGUFError, LlamatoolError
from .fileio import atomic_output
from .quants.registry import GGMLType, ggml_type

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 63  # GGML_MAX_NAME - 1: llama.cpp cannot load longer tensor names
MAX_ARRAY_NESTING = 8


class ValueType(IntEnum):
    """GGUF metadata value types (same ids as gguf-py's GGUFValueType)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# numpy dtype of each fixed-size value type (little-endian)
_SCALAR_DTYPE = {
    ValueType.UINT8: np.dtype("<u1"),
    ValueType.INT8: np.dtype("<i1"),
    ValueType.UINT16: np.dtype("<u2"),
    ValueType.INT16: np.dtype("<i2"),
    ValueType.UINT32: np.dtype("<u4"),
    ValueType.INT32: np.dtype("<i4"),
    ValueType.FLOAT32: np.dtype("<f4"),
    ValueType.BOOL: np.dtype("<u1"),
    ValueType.UINT64: np.dtype("<u8"),
    ValueType.INT64: np.dtype("<i8"),
    ValueType.FLOAT64: np.dtype("<f8"),
}
_SCALAR_STRUCT = {
    t: struct.Struct("<" + c)
    for t, c in zip(_SCALAR_DTYPE, ["B", "b", "H", "h", "I", "i", "f", "B", "Q", "q", "d"])
}
_MIN_VALUE_BYTES = {**{t: d.itemsize for t, d in _SCALAR_DTYPE.items()}, ValueType.STRING: 8, ValueType.ARRAY: 12}


@dataclass
class Field:
    """One metadata entry: its GGUF type and value.

    For arrays, `subtype` is the element type and `value` is a numpy array (numeric
    elements), a list of str (strings) or a list of Field (nested arrays).
    """

    type: ValueType
    value: Any
    subtype: ValueType | None = None

    def plain(self) -> Any:
        """The value as plain Python/numpy data (nested arrays unwrapped)."""
        if self.type == ValueType.ARRAY and self.subtype == ValueType.ARRAY:
            return [f.plain() for f in self.value]
        return self.value


@dataclass
class TensorInfo:
    name: str
    type: GGMLType
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length (fastest varying)
    offset: int  # relative to the start of the data section
    data: np.ndarray | None = field(default=None, repr=False)  # uint8 (n_rows, row_bytes), zero-copy

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy (row-major) order: the reverse of ne."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.ne[0] if self.ne[0] else 0

    @property
    def nbytes(self) -> int:
        return self.type.nbytes(self.n_elements)

    def values(self) -> np.ndarray:
        """The tensor as float32 in numpy shape (dequantized if needed; a copy)."""
        from .quants.registry import dequantize

        return dequantize(self.type, self.data).reshape(self.shape)


class StringArrayField(Field):
    """A Field holding an array of strings as the file stores them (each a u64 length and
    its bytes), decoded on first use of `.value`; `nbytes` is their stored size."""

    def __init__(self, raw: bytes, heads: list[int]):
        self.type, self.subtype = ValueType.ARRAY, ValueType.STRING
        self.nbytes = len(raw)
        self._raw, self._heads, self._decoded = raw, heads, None

    @property
    def value(self) -> list[str]:
        if self._decoded is None:
            self._decoded = _decode_strings(self._raw, self._heads)
            self._raw = self._heads = None
        return self._decoded

    @value.setter
    def value(self, strings: list[str]) -> None:
        self._decoded, self._raw, self._heads = strings, None, None

    def __eq__(self, other) -> bool:
        if not isinstance(other, Field):
            return NotImplemented
        return (self.type, self.subtype, self.value) == (other.type, other.subtype, other.value)

    __hash__ = None


def _decode_strings(raw: bytes, heads: list[int]) -> list[str]:
    """The strings whose length fields start at heads in raw. They are decoded in one call:
    the length fields turned into NUL separators and the text split there. A NUL can never
    be part of a multi-byte character, so each string decodes exactly as on its own
    (surrogates for invalid bytes included)."""
    if not heads:
        return []
    region = np.frombuffer(raw, np.uint8).copy()
    at = np.array(heads, np.int64)
    keep = np.ones(region.size, bool)
    keep[(at[:, None] + np.arange(1, 8)).reshape(-1)] = False
    region[at] = 0
    joined = region[keep]
    if np.count_nonzero(joined == 0) != len(heads):  # a string holds a NUL: decode one by one
        ends = [*heads[1:], len(raw)]
        return [raw[h + 8 : e].decode("utf-8", errors="surrogateescape") for h, e in zip(heads, ends)]
    return joined.tobytes().decode("utf-8", errors="surrogateescape").split("\0")[1:]


_U64 = struct.Struct("<Q")


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


class _Cursor:
    """Bounds-checked little-endian reads from a buffer."""

    def __init__(self, buf, size: int, path: str):
        self.buf, self.size, self.path, self.pos = buf, size, path, 0

    def fail(self, msg: str):
        raise GGUFError(f"{self.path}: {msg}")

    def need(self, n: int, what: str):
        if n < 0 or self.pos + n > self.size:
            self.fail(f"truncated file: {what} needs {n} bytes at offset {self.pos}, file has {self.size}")

    def scalar(self, vtype: ValueType, what: str):
        st = _SCALAR_STRUCT[vtype]
        self.need(st.size, what)
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return bool(v) if vtype == ValueType.BOOL else v

    def u32(self, what: str) -> int:
        return self.scalar(ValueType.UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(ValueType.UINT64, what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="surrogateescape")

    def _strings(self, n: int, what: str) -> "StringArrayField":
        """An array of n length-prefixed strings, read now and decoded when first used: the
        vocabulary and merges of a model are ~100k strings, and `quantize` or `info` need
        only to know where they end. The lengths are walked and checked here."""
        first = self.pos
        heads = self._string_heads(n, what)  # offset of each string's length field
        return StringArrayField(bytes(self.buf[first : self.pos]), [h - first for h in heads])

    def _string_heads(self, n: int, what: str) -> list[int]:
        """Offsets of n consecutive strings; the cursor moves past them. Unchecked first (a
        length field past the end of the buffer stops struct), then checked on failure."""
        buf, pos = self.buf, self.pos
        unpack_len = _U64.unpack_from
        heads = []
        add = heads.append
        try:
            for _ in range(n):
                add(pos)
                pos += 8 + unpack_len(buf, pos)[0]
        except (struct.error, OverflowError):  # past the end, or a length beyond any offset
            pos = self.size + 1
        if pos <= self.size:
            self.pos = pos
            return heads
        for i in range(n):  # find the first string that does not fit, for the message
            self.need(8, f"length of {what}[{i}]")
            length = self.u64(f"length of {what}[{i}]")
            self.need(length, f"{what}[{i}]")
            self.pos += length
        raise AssertionError("unreachable")  # pragma: no cover

    def count(self, what: str, min_item_bytes: int) -> int:
        """A u64 count of items, each at least min_item_bytes: bounded by the bytes left."""
        n = self.u64(what)
        left = self.size - self.pos
        if n * min_item_bytes > left:
            self.fail(f"{what} is {n}, more than the {left} bytes left in the file can hold")
        return n

    def value_type(self, what: str) -> ValueType:
        raw = self.u32(f"type of {what}")
        try:
            return ValueType(raw)
        except ValueError:
            self.fail(f"{what} has unknown value type {raw}")

    def value(self, vtype: ValueType, what: str, depth: int = 0) -> Field:
        if vtype == ValueType.STRING:
            return Field(vtype, self.string(what))
        if vtype != ValueType.ARRAY:
            return Field(vtype, self.scalar(vtype, what))
        if depth >= MAX_ARRAY_NESTING:
            self.fail(f"{what}: arrays nested more than {MAX_ARRAY_NESTING} deep")
        sub = self.value_type(f"elements of {what}")
        n = self.count(f"length of array {what}", _MIN_VALUE_BYTES[sub])
        if sub in _SCALAR_DTYPE:
            dt = _SCALAR_DTYPE[sub]
            arr = np.frombuffer(self.buf, dtype=dt, count=n, offset=self.pos)
            self.pos += n * dt.itemsize
            return Field(vtype, arr.astype(bool) if sub == ValueType.BOOL else arr, sub)
        if sub == ValueType.STRING:
            return self._strings(n, what)
        # Elements of an array of arrays are arrays without a type tag of their own.
        items = [self.value(ValueType.ARRAY, f"{what}[{i}]", depth + 1) for i in range(n)]
        return Field(vtype, items, sub)


class _PlainValues(Mapping):
    """A read-only {key: plain value} view of {key: Field}."""

    def __init__(self, fields: dict[str, Field]):
        self._fields = fields

    def __getitem__(self, key: str) -> Any:
        return self._fields[key].plain()

    def __contains__(self, key) -> bool:
        return key in self._fields

    def __iter__(self):
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


class GGUFReader:
    """A validated, memory-mapped GGUF file.

    fields: ordered {key: Field}; metadata: ordered {key: plain value};
    tensors: list of TensorInfo in file order (each with a zero-copy `data` view).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        name = str(self.path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise GGUFError(f"{name}: empty file, not a GGUF model")
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise LlamatoolError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise LlamatoolError(f"{name}: is a directory, expected a .gguf file") from None
        except PermissionError:
            raise LlamatoolError(f"{name}: permission denied") from None
        self.file_size = size
        self._parse(_Cursor(self._mmap, size, name))

    def _parse(self, c: _Cursor) -> None:
        c.need(4, "magic")
        magic = bytes(c.buf[0:4])
        if magic != GGUF_MAGIC:
            c.fail(f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
        c.pos = 4
        self.version = c.u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            if int.from_bytes(self.version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
                c.fail("big-endian GGUF files are not supported")
            c.fail(f"unsupported GGUF version {self.version} (supported: 2, 3)")
        # Minimal sizes: a tensor info is name(8) + n_dims(4) + ne(8) + type(4) + offset(8).
        n_tensors = c.count("tensor count", 32)
        n_kv = c.count("metadata count", 8 + 4 + 1)

        self.fields: dict[str, Field] = {}
        for i in range(n_kv):
            key = c.string(f"key of metadata entry {i}")
            if key in self.fields:
                c.fail(f"duplicate metadata key {key!r}")
            vtype = c.value_type(f"metadata {key!r}")
            self.fields[key] = c.value(vtype, f"metadata {key!r}")

        self.alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in self.fields:
            f = self.fields["general.alignment"]
            if f.type != ValueType.UINT32 or f.value == 0 or f.value & (f.value - 1):
                c.fail(f"general.alignment must be a power of two as uint32, got {f.value!r}")
            self.alignment = int(f.value)

        infos = []
        seen = set()
        for i in range(n_tensors):
            name = c.string(f"name of tensor {i}")
            if name in seen:
                c.fail(f"duplicate tensor name {name!r}")
            seen.add(name)
            n_dims = c.u32(f"dimension count of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                c.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
            ne = tuple(c.u64(f"shape of tensor {name!r}") for _ in range(n_dims))
            type_id = c.u32(f"type of tensor {name!r}")
            try:
                ttype = ggml_type(type_id)
            except LlamatoolError:
                c.fail(f"tensor {name!r} has unknown ggml type id {type_id}")
            offset = c.u64(f"offset of tensor {name!r}")
            n = 1
            for d in ne:
                n *= d
            if n >= 2**62:
                c.fail(f"tensor {name!r} has an impossible shape {list(ne)}")
            if ne[0] % ttype.block_size:
                c.fail(f"tensor {name!r}: row length {ne[0]} is not a multiple of the {ttype.name} block size {ttype.block_size}")
            if offset % self.alignment:
                c.fail(f"tensor {name!r}: offset {offset} is not a multiple of the alignment {self.alignment}")
            infos.append(TensorInfo(name, ttype, ne, offset))

        self.data_offset = _align(c.pos, self.alignment)
        data_size = self.file_size - self.data_offset
        spans = []
        for t in infos:
            if data_size < 0 or t.offset + t.nbytes > data_size:
                c.fail(
                    f"truncated file: tensor {t.name!r} ({t.nbytes} bytes at data offset {t.offset}) "
                    f"ends past the end of the file"
                )
            spans.append((t.offset, t.offset + t.nbytes, t.name))
            rows = t.n_rows
            row_bytes = t.type.row_bytes(t.ne[0]) if rows else 0
            t.data = np.frombuffer(self._mmap, np.uint8, t.nbytes, self.data_offset + t.offset).reshape(rows, row_bytes)
        spans.sort()
        for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
            if s1 < e0 and e1 > s1:
                c.fail(f"tensors {n0!r} and {n1!r} overlap")
        self.tensors: list[TensorInfo] = infos
        self._by_name = {t.name: t for t in infos}

    # -- convenient access -------------------------------------------------------
    @property
    def metadata(self) -> Mapping[str, Any]:
        """{key: plain value}, each value made when it is looked up."""
        return _PlainValues(self.fields)

    def get(self, key: str, default: Any = None) -> Any:
        f = self.fields.get(key)
        return default if f is None else f.plain()

    @property
    def architecture(self) -> str | None:
        return self.get("general.architecture")

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise GGUFError(f"{self.path}: missing tensor {name!r}") from None

    def has_tensor(self, name: str) -> bool:
        return name in self._by_name

    def close(self) -> None:
        """Release the mapping if nothing else still views it (views keep it alive otherwise)."""
        for t in self.tensors:
            t.data = None
        self.fields = {}
        try:
            self._mmap.close()
        except BufferError:
            pass

    def __enter__(self) -> "GGUFReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- writer ------------------------------------------------------------------------


def infer_value_type(value: Any) -> tuple[ValueType, ValueType | None]:
    """The GGUF type llama.cpp's tools would use for a plain Python/numpy value."""
    if isinstance(value, Field):
        return value.type, value.subtype
    if isinstance(value, (bool, np.bool_)):
        return ValueType.BOOL, None
    if isinstance(value, str):
        return ValueType.STRING, None
    if isinstance(value, (int, np.integer)):
        v = int(value)
        if 0 <= v < 2**32:
            return ValueType.UINT32, None
        if -(2**31) <= v < 0:
            return ValueType.INT32, None
        return (ValueType.UINT64 if v >= 0 else ValueType.INT64), None
    if isinstance(value, (float, np.floating)):
        return ValueType.FLOAT32, None
    if isinstance(value, np.ndarray):
        for t, dt in _SCALAR_DTYPE.items():
            if value.dtype == dt and t != ValueType.BOOL:
                return ValueType.ARRAY, t
        if value.dtype == np.bool_:
            return ValueType.ARRAY, ValueType.BOOL
        raise LlamatoolError(f"no GGUF type for arrays of {value.dtype}")
    if isinstance(value, (list, tuple)):
        if not value:
            return ValueType.ARRAY, ValueType.INT32
        first = value[0]
        if isinstance(first, str):
            return ValueType.ARRAY, ValueType.STRING
        if isinstance(first, (bool, np.bool_)):
            return ValueType.ARRAY, ValueType.BOOL
        if isinstance(first, (int, np.integer)):
            return ValueType.ARRAY, ValueType.INT32
        if isinstance(first, (float, np.floating)):
            return ValueType.ARRAY, ValueType.FLOAT32
        if isinstance(first, (list, tuple, np.ndarray, Field)):
            return ValueType.ARRAY, ValueType.ARRAY
    raise LlamatoolError(f"no GGUF type for metadata value {value!r:.60}")


def _pack_string(s: str) -> bytes:
    raw = s.encode("utf-8", errors="surrogateescape")
    return struct.pack("<Q", len(raw)) + raw


def _pack_value(vtype: ValueType, value: Any, subtype: ValueType | None = None) -> bytes:
    if vtype == ValueType.STRING:
        return _pack_string(value)
    if vtype in _SCALAR_DTYPE:
        return np.array(value).astype(_SCALAR_DTYPE[vtype]).tobytes()
    if vtype != ValueType.ARRAY:
        raise LlamatoolError(f"unknown GGUF value type {vtype}")
    if isinstance(value, Field):
        value = value.value
    head = struct.pack("<IQ", int(subtype), len(value))
    if subtype in _SCALAR_DTYPE:
        return head + np.asarray(value).astype(_SCALAR_DTYPE[subtype]).tobytes()
    if subtype == ValueType.STRING:
        return head + b"".join(_pack_string(s) for s in value)
    # An array of arrays: each element is (subtype, length, values), with no type tag of its own.
    parts = []
    for item in value:
        _, st = infer_value_type(item)
        parts.append(_pack_value(ValueType.ARRAY, item, st))
    return head + b"".join(parts)


@dataclass
class _PlannedTensor:
    name: str
    type: GGMLType
    ne: tuple[int, ...]
    offset: int
    nbytes: int


class GGUFWriter:
    """Stream a GGUF file to `path`, atomically.

        with GGUFWriter(out, force=force, inputs=[src]) as w:
            w.add_field("general.architecture", "llama")        # in the order given
            w.add_tensor_info("token_embd.weight", "Q8_0", ne)  # every tensor, first
            for name, data in ...:
                w.write_tensor(name, data)                       # then the bytes, in order

    The header is written when the first tensor's bytes arrive (or at the end for
    a file without tensors). Nothing appears at `path` unless the block exits cleanly
    with every declared tensor written.
    """

    def __init__(self, path: str | os.PathLike, *, force: bool = False, inputs: Iterable = (), version: int = 3):
        self.path = Path(path)
        self.force = force
        self.inputs = list(inputs)
        self.version = version
        self._fields: dict[str, tuple[ValueType, Any, ValueType | None]] = {}
        self._tensors: list[_PlannedTensor] = []
        self._names: set[str] = set()
        self._next = 0
        self._file = None
        self._ctx = None
        self._header_done = False
        self.bytes_written = 0

    # -- declarations -----------------------------------------------------------
    def add_field(self, key: str, value: Any, vtype: ValueType | None = None, subtype: ValueType | None = None) -> None:
        if self._header_done:
            raise RuntimeError("metadata must be added before tensor data")
        if isinstance(value, Field):
            vtype, subtype, value = value.type, value.subtype, value.value
        elif vtype is None:
            vtype, subtype = infer_value_type(value)
        elif vtype == ValueType.ARRAY and subtype is None:
            _, subtype = infer_value_type(value)
        if key == "general.alignment" and (vtype != ValueType.UINT32 or value <= 0 or int(value) & (int(value) - 1)):
            raise LlamatoolError(f"general.alignment must be a power of two as uint32, got {value!r}")
        self._fields[key] = (ValueType(vtype), value, subtype)

    @property
    def alignment(self) -> int:
        f = self._fields.get("general.alignment")
        return int(f[1]) if f else DEFAULT_ALIGNMENT

    def add_tensor_info(self, name: str, qtype, ne: Iterable[int]) -> None:
        """Declare a tensor: ggml type and shape in ggml order (ne[0] = row length)."""
        if self._header_done:
            raise RuntimeError("tensors must be declared before tensor data")
        t = ggml_type(qtype)
        ne = tuple(int(d) for d in ne)
        if len(name.encode()) > MAX_NAME_BYTES:
            raise LlamatoolError(f"tensor name {name!r} is longer than {MAX_NAME_BYTES} bytes")
        if name in self._names:
            raise LlamatoolError(f"duplicate tensor name {name!r}")
        if not 1 <= len(ne) <= MAX_DIMS:
            raise LlamatoolError(f"tensor {name!r} has {len(ne)} dimensions")
        n = int(np.prod(ne, dtype=np.int64))
        t.row_bytes(ne[0])  # raises for a row that is not whole blocks
        offset = 0
        if self._tensors:
            last = self._tensors[-1]
            offset = _align(last.offset + last.nbytes, self.alignment)
        self._tensors.append(_PlannedTensor(name, t, ne, offset, t.nbytes(n)))
        self._names.add(name)

    @property
    def planned_size(self) -> int:
        """Size of the finished file in bytes."""
        size = len(self._header_bytes())
        if self._tensors:
            last = self._tensors[-1]
            size = _align(size, self.alignment) + _align(last.offset + last.nbytes, self.alignment)
        return size

    # -- writing ------------------------------------------------------------------
    def __enter__(self) -> "GGUFWriter":
        self._ctx = atomic_output(self.path, force=self.force, inputs=self.inputs)
        self._file = self._ctx.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                if not self._header_done:
                    self._write_header()
                if self._next != len(self._tensors):
                    missing = self._tensors[self._next].name
                    raise LlamatoolError(f"internal error: tensor {missing!r} was declared but never written")
        except BaseException as e:  # finish the atomic context with the error
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        return self._ctx.__exit__(exc_type, exc, tb)

    def _header_bytes(self) -> bytes:
        out = [GGUF_MAGIC, struct.pack("<IQQ", self.version, len(self._tensors), len(self._fields))]
        for key, (vtype, value, subtype) in self._fields.items():
            out.append(_pack_string(key) + struct.pack("<I", int(vtype)) + _pack_value(vtype, value, subtype))
        for p in self._tensors:
            out.append(_pack_string(p.name) + struct.pack("<I", len(p.ne)) + struct.pack(f"<{len(p.ne)}Q", *p.ne))
            out.append(struct.pack("<IQ", p.type.id, p.offset))
        return b"".join(out)

    def _write(self, data) -> None:
        self._file.write(data)
        self.bytes_written += len(data) if isinstance(data, (bytes, bytearray)) else memoryview(data).nbytes

    def _write_header(self) -> None:
        header = self._header_bytes()
        self._write(header)
        if self._tensors:  # the data section starts aligned; a file without tensors has none (as gguf-py writes it)
            self._write(b"\0" * (_align(len(header), self.alignment) - len(header)))
        self._header_done = True

    def write_tensor(self, name: str, data) -> None:
        """Write the next declared tensor's raw bytes (any contiguous array or bytes)."""
        if self._file is None:
            raise RuntimeError("use GGUFWriter as a context manager")
        if not self._header_done:
            self._write_header()
        if self._next >= len(self._tensors):
            raise LlamatoolError(f"internal error: tensor {name!r} was not declared")
        p = self._tensors[self._next]
        if p.name != name:
            raise LlamatoolError(f"internal error: expected tensor {p.name!r} next, got {name!r}")
        buf = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
        if buf.nbytes != p.nbytes:
            raise LlamatoolError(f"internal error: tensor {name!r} has {buf.nbytes} bytes, expected {p.nbytes}")
        self._write(buf)
        self._write(b"\0" * (_align(p.nbytes, self.alignment) - p.nbytes))
        self._next += 1


def copy_fields(reader: GGUFReader, writer: GGUFWriter, skip: Iterable[str] = ()) -> None:
    """Copy every metadata entry of reader to writer, in order and with its exact type."""
    skip = set(skip)
    for key, f in reader.fields.items():
        if key not in skip:
            writer.add_field(key, f)
