"""Importance-matrix files: llama-imatrix's GGUF format and its legacy .dat format.

GGUF (what llama-imatrix writes by default):
    general.type = "imatrix", imatrix.datasets (array of strings), imatrix.chunk_count and
    imatrix.chunk_size (uint32); per matrix, in name order, `<name>.in_sum2` (F32, the sum
    of x**2 of every input column over every token, one row per expert) and `<name>.counts`
    (F32, the tokens summed, one per expert).
Legacy .dat (little-endian):
    int32 n_entries, then per entry: int32 name length, name, int32 ncall, int32 nval,
    float32 values[nval] = sum / count * ncall; then (optional) int32 chunk count,
    int32 length and the dataset name.

`read_imatrix` keeps what the file holds (a legacy file's values are means times ncall, its
counts the ncall); `Imatrix.add` combines files as llama-imatrix's --in-file does, and
`Imatrix.means` gives the per-column means llama-quantize weights with. Every size is
checked against the file before it is trusted: a damaged file is a one-line error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import LlamatoolError

GGUF_MAGIC = b"GGUF"
SUM_SUFFIX = ".in_sum2"
COUNT_SUFFIX = ".counts"


@dataclass
class Entry:
    """One matrix's statistics: sums (float32, n_mat rows of the input width, flattened)
    and counts (int64, one per row)."""

    sums: np.ndarray
    counts: np.ndarray

    @property
    def width(self) -> int:
        return self.sums.size // max(1, self.counts.size)


@dataclass
class Imatrix:
    entries: dict[str, Entry] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    is_legacy: bool = False
    has_metadata: bool = True

    # --- combining (llama-imatrix's IMatrixCollector::load_imatrix) ----------------------------
    def add(self, other: "Imatrix", chunk_size: int, path: str = "") -> None:
        """Add another file's raw sums and counts to these; a legacy file's means are turned
        back into sums over chunk_size tokens per call."""
        for name, e in other.entries.items():
            mine = self.entries.get(name)
            if other.is_legacy:
                sums = e.sums.astype(np.float32) * np.float32(chunk_size)
                counts = np.full(1 if mine is None else mine.counts.size, e.counts[0] * chunk_size, np.int64)
            else:
                sums, counts = e.sums, e.counts
            if mine is None:
                self.entries[name] = Entry(sums.astype(np.float32).copy(), counts.astype(np.int64).copy())
                continue
            if mine.sums.size != sums.size:
                raise LlamatoolError(f"{path}: {name} has {sums.size} values, the others {mine.sums.size}: not made for the same model")
            if mine.counts.size == 1 and counts.size > 1:
                mine.counts = np.full(counts.size, mine.counts[0], np.int64)
            elif counts.size != mine.counts.size:
                raise LlamatoolError(f"{path}: {name} has {counts.size} counts, the others {mine.counts.size}")
            mine.sums = (mine.sums + sums).astype(np.float32)
            mine.counts = mine.counts + counts
        self.datasets.extend(other.datasets)
        self.chunk_size = chunk_size
        self.chunk_count = self.max_count() // chunk_size if chunk_size else 0

    def max_count(self) -> int:
        return max((int(e.counts.max()) for e in self.entries.values() if e.counts.size), default=0)

    # --- what llama-quantize weights with (tools/quantize's load_imatrix) ------------------------
    def means(self) -> dict[str, np.ndarray]:
        """Per matrix, the mean of x**2 per column (1 where a row has no tokens); for a legacy
        file its values divided by ncall."""
        out = {}
        for name, e in self.entries.items():
            if self.is_legacy:
                ncall = int(e.counts[0]) if e.counts.size else 0
                out[name] = e.sums / np.float32(ncall) if ncall > 0 else e.sums.copy()
                continue
            rows = e.sums.reshape(e.counts.size, -1)
            means = np.ones_like(rows)
            for j, c in enumerate(e.counts):
                if c > 0:
                    means[j] = rows[j] / np.float32(c)
            out[name] = means.reshape(-1)
        return out

    def check_against(self, widths: dict[str, int], source: str, path: str) -> None:
        """Every entry must be a matrix of the model (widths: name -> input width x experts)."""
        for name, e in self.entries.items():
            if name not in widths:
                raise LlamatoolError(f"{path}: {name} is not a matrix of {source}: the importance matrix was made for another model")
            if e.sums.size != widths[name]:
                raise LlamatoolError(
                    f"{path}: {name} has {e.sums.size} values but its matrix in {source} has {widths[name]} input columns: made for another model"
                )


# --- reading ----------------------------------------------------------------------------------


def read_imatrix(path: str | Path) -> Imatrix:
    path = Path(path)
    if not path.is_file():
        raise LlamatoolError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    return _read_gguf(path) if magic == GGUF_MAGIC else _read_dat(path)


def _read_gguf(path: Path) -> Imatrix:
    from .gguf_io import GGUFReader

    with GGUFReader(path) as r:
        pairs: dict[str, list] = {}
        for t in r.tensors:
            for suffix, slot in ((SUM_SUFFIX, 0), (COUNT_SUFFIX, 1)):
                if t.name.endswith(suffix):
                    pairs.setdefault(t.name[: -len(suffix)], [None, None])[slot] = t
        if not pairs:
            raise LlamatoolError(f"{path}: no importance matrix data in this GGUF file")
        m = Imatrix(
            datasets=[str(d) for d in (r.get("imatrix.datasets") or [])],
            chunk_count=int(r.get("imatrix.chunk_count", 0) or 0),
            chunk_size=int(r.get("imatrix.chunk_size", 0) or 0),
            has_metadata=all(k in r.metadata for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")),
        )
        for name in sorted(pairs):
            sums, counts = pairs[name]
            if sums is None or counts is None:
                raise LlamatoolError(f"{path}: mismatched sums and counts for {name}")
            if sums.type.name != "F32" or counts.type.name != "F32":
                raise LlamatoolError(f"{path}: sums and counts for {name} must be F32")
            s = np.array(sums.data.view(np.float32).reshape(-1))
            c = np.rint(np.asarray(counts.data.view(np.float32).reshape(-1), np.float64)).astype(np.int64)
            if c.size == 0 or s.size % c.size:
                raise LlamatoolError(f"{path}: {name} has {s.size} sums for {c.size} counts")
            m.entries[name] = Entry(s, c)
    return m


class _Bytes:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise LlamatoolError(f"{self.path}: truncated or not an importance matrix (reading {what})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def i32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]


def _read_dat(path: Path) -> Imatrix:
    b = _Bytes(path.read_bytes(), path)
    n_entries = b.i32("the entry count")
    if n_entries < 1:
        raise LlamatoolError(f"{path}: no data in this importance matrix file")
    m = Imatrix(is_legacy=True, has_metadata=False)
    for i in range(n_entries):
        name = b.take(b.i32(f"entry {i + 1}'s name length"), f"entry {i + 1}'s name").decode("utf-8", "replace")
        ncall = b.i32(f"{name}'s call count")
        nval = b.i32(f"{name}'s value count")
        if nval < 1:
            raise LlamatoolError(f"{path}: {name} has {nval} values")
        sums = np.frombuffer(b.take(4 * nval, f"{name}'s values"), "<f4").astype(np.float32)
        m.entries[name] = Entry(sums, np.array([ncall], np.int64))
    if b.pos < len(b.data):  # optional trailer: chunk count and the dataset's name
        m.chunk_count = b.i32("the chunk count")
        if b.pos + 4 <= len(b.data):
            n = b.i32("the dataset name's length")
            if n > 0:
                m.datasets.append(b.take(n, "the dataset name").decode("utf-8", "replace"))
    return m


# --- writing ----------------------------------------------------------------------------------


def write_gguf(m: Imatrix, path: Path, *, force: bool, inputs=()) -> None:
    """As llama-imatrix's save_imatrix: entries in name order, 1-D tensors for dense matrices."""
    from .gguf_io import GGUFWriter, ValueType

    names = sorted(n for n, e in m.entries.items() if e.sums.size and e.counts.size)
    with GGUFWriter(path, force=force, inputs=inputs) as w:
        w.add_field("general.type", "imatrix")
        w.add_field("imatrix.datasets", list(m.datasets), ValueType.ARRAY, ValueType.STRING)
        w.add_field("imatrix.chunk_count", int(m.chunk_count), ValueType.UINT32)
        w.add_field("imatrix.chunk_size", int(m.chunk_size), ValueType.UINT32)
        for name in names:
            e = m.entries[name]
            w.add_tensor_info(name + SUM_SUFFIX, "F32", _dims(e.width, e.counts.size))
            w.add_tensor_info(name + COUNT_SUFFIX, "F32", _dims(1, e.counts.size))
        for name in names:
            e = m.entries[name]
            w.write_tensor(name + SUM_SUFFIX, e.sums.astype("<f4"))
            w.write_tensor(name + COUNT_SUFFIX, e.counts.astype("<f4"))


def _dims(ne0: int, ne1: int) -> tuple[int, ...]:
    return (ne0,) if ne1 == 1 else (ne0, ne1)


def write_dat(m: Imatrix, path: Path, *, force: bool, inputs=()) -> None:
    """As llama-imatrix's save_imatrix_legacy: entries without any tokens are left out, the
    values are sum / count * ncall with ncall = ceil(max count / chunk size)."""
    from .fileio import atomic_output

    if m.is_legacy:  # already means x ncall: written back as they are
        rows = [(n, int(e.counts[0]), e.sums.astype(np.float32)) for n, e in sorted(m.entries.items())]
    else:
        if m.chunk_size <= 0:
            raise LlamatoolError("the .dat format needs a chunk size (-c)")
        rows = []
        for name in sorted(m.entries):
            e = m.entries[name]
            if not e.counts.size or not e.counts.any():
                continue
            ncall = (int(e.counts.max()) + m.chunk_size - 1) // m.chunk_size
            count = np.repeat(e.counts.astype(np.float32), e.width)
            value = e.sums.astype(np.float32)
            empty = count == 0
            value = np.where(empty, np.float32(1), value)
            count = np.where(empty, np.float32(1), count)
            rows.append((name, ncall, ((value / count) * np.float32(ncall)).astype(np.float32)))
    out = [struct.pack("<i", len(rows))]
    for name, ncall, values in rows:
        raw = name.encode()
        out.append(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, values.size) + values.astype("<f4").tobytes())
    dataset = (m.datasets[-1] if m.datasets else "").encode()
    out.append(struct.pack("<i", int(m.chunk_count)) + struct.pack("<i", len(dataset)) + dataset)
    with atomic_output(path, force=force, inputs=inputs) as f:
        f.write(b"".join(out))


# --- what llama-quantize --imatrix takes from a file ---------------------------------------------

IMATRIX_KEYS = ("quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
                "quantize.imatrix.chunks_count")  # fmt: skip
_MAX_KV_STRING = 127  # llama-quantize copies its strings into char[128]


@dataclass
class ImportanceWeights:
    """The per-column weights of every matrix (llama-quantize's prepare_imatrix) and what it
    records about them in the quantized file."""

    path: str
    weights: dict[str, np.ndarray]
    datasets: list[str]
    chunk_count: int

    def metadata(self) -> dict:
        """quantize.imatrix.* keys, in llama-quantize's order, as (gguf type, value)."""
        from .gguf_io import ValueType

        out = {"quantize.imatrix.file": (ValueType.STRING, _clip(self.path))}
        if self.datasets:
            out["quantize.imatrix.dataset"] = (ValueType.STRING, _clip(self.datasets[0]))
        out["quantize.imatrix.entries_count"] = (ValueType.UINT32, len(self.weights))
        if self.chunk_count > 0:
            out["quantize.imatrix.chunks_count"] = (ValueType.UINT32, self.chunk_count)
        return out


def _clip(s: str) -> str:
    raw = s.encode("utf-8", "surrogateescape")[:_MAX_KV_STRING]
    return raw.decode("utf-8", "surrogateescape")


def load_importance_weights(path: str | Path, include: list[str] = (), exclude: list[str] = ()) -> ImportanceWeights | None:
    """The file's means, less the entries whose names contain an --exclude-weights string, or
    only those containing an --include-weights one; None when nothing is left (llama-quantize
    then quantizes as without a file)."""
    if include and exclude:
        raise LlamatoolError("--include-weights and --exclude-weights cannot be used together")
    m = read_imatrix(path)
    if not m.is_legacy and not m.has_metadata:
        raise LlamatoolError(f"{path}: missing imatrix metadata (imatrix.datasets, chunk_count, chunk_size)")
    weights = m.means()
    if exclude:
        weights = {n: w for n, w in weights.items() if not any(s in n for s in exclude)}
    if include:
        weights = {n: w for n, w in weights.items() if any(s in n for s in include)}
    for name, w in weights.items():
        if not np.isfinite(w).all():
            raise LlamatoolError(f"{path}: imatrix contains non-finite values ({name})")
    if not weights:
        return None
    return ImportanceWeights(str(path), weights, m.datasets, m.chunk_count)
