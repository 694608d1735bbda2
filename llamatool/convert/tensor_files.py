"""The weights of a Hugging Face checkpoint: safetensors files, single or sharded.

A safetensors file is `u64 header length | JSON header | raw little-endian data`; the
header maps each tensor name to its dtype, shape and byte range. We parse it ourselves
(no torch, and numpy cannot load bfloat16) and validate everything against the file
size before use: the header length is bounded, every range must lie inside the file
and match its dtype and shape. Tensor bytes are memory-mapped one tensor at a time and
unmapped after use, so resident memory follows the tensor being converted, not the
model.

Pickled PyTorch weights (`pytorch_model.bin`, `*.pt`, `*.pth`) are refused without
being opened: unpickling runs arbitrary code.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import LlamatoolError

MAX_HEADER_BYTES = 100 << 20  # the safetensors format's own limit
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# safetensors dtype -> (numpy dtype of the stored bits, how to read them as float32)
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # numpy has no bfloat16: read the bits, widen by hand
}


@dataclass(frozen=True)
class StoredTensor:
    """One tensor inside a safetensors file."""

    name: str
    dtype: str  # safetensors name: F32, F16, BF16, F64
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @contextlib.contextmanager
    def mapped(self) -> Iterator["Mapped"]:
        """The stored values (bits for BF16) as a read-only array in their own shape.

        The mapping covers this tensor only and is closed on exit; callers must not keep
        views of it beyond the block.
        """
        stored = _DTYPES[self.dtype]
        if self.nbytes == 0:
            yield Mapped(np.zeros(self.shape, stored), None, 0)
            return
        start = self.offset - self.offset % mmap.ALLOCATIONGRANULARITY
        with open(self.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), self.offset + self.nbytes - start, offset=start, access=mmap.ACCESS_READ)
        view = None
        try:
            view = Mapped(np.frombuffer(mm, stored, self.n_elements, self.offset - start).reshape(self.shape), mm, self.offset - start)
            yield view
        finally:
            if view is not None:
                view.array = None
            del view
            with contextlib.suppress(BufferError):  # a caller kept a view: the GC will unmap it
                mm.close()


@dataclass
class Mapped:
    """A tensor's mapped values, and a way to hand pages already used back to the kernel."""

    array: np.ndarray | None
    _mm: mmap.mmap | None
    _delta: int  # byte offset of the tensor inside the mapping

    def release(self, begin: int, end: int) -> None:
        """Drop the pages of bytes [begin, end) of the tensor from our resident set (they
        stay in the page cache): resident memory then follows the slab, not the tensor."""
        if self._mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        lo = -(-(self._delta + begin) // page) * page
        hi = (self._delta + end) // page * page
        if hi > lo:
            with contextlib.suppress(OSError, ValueError):
                self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def to_float32(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values as float32 (exact for F16 and BF16; F64 rounds to nearest); F32 is not copied."""
    if dtype == "BF16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(stored, dtype=np.float32)


def _fail(path: Path, msg: str):
    raise LlamatoolError(f"{path}: {msg}")


def _header(path: Path) -> tuple[dict, int]:
    """The parsed JSON header and the offset where the data starts."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            _fail(path, f"truncated safetensors file ({size} bytes, no header)")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES:
            _fail(path, f"safetensors header of {n} bytes is larger than the {MAX_HEADER_BYTES >> 20} MiB limit")
        if 8 + n > size:
            _fail(path, f"truncated safetensors file: header of {n} bytes, file has {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(path, f"safetensors header is not valid JSON ({e})")
    if not isinstance(header, dict):
        _fail(path, "safetensors header is not a JSON object")
    return header, 8 + n


def _entry(path: Path, name: str, meta, data_start: int, data_size: int) -> StoredTensor:
    if not isinstance(meta, dict):
        _fail(path, f"tensor {name!r}: header entry is not an object")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        _fail(path, f"tensor {name!r}: invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        _fail(path, f"tensor {name!r}: invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        _fail(path, f"tensor {name!r}: bytes {begin}..{end} lie outside the {data_size} bytes of data (truncated file?)")
    if dtype not in _DTYPES:
        # Kept so that a tensor we skip (or a clear error naming it) can still be reported.
        itemsize = None
    else:
        itemsize = _DTYPES[dtype].itemsize
    n = 1
    for d in shape:
        n *= d
    if itemsize is not None and n * itemsize != end - begin:
        _fail(path, f"tensor {name!r}: {dtype} {shape} needs {n * itemsize} bytes, the header gives {end - begin}")
    return StoredTensor(name, str(dtype), tuple(shape), path, data_start + begin, end - begin)


def read_safetensors(path: Path) -> list[StoredTensor]:
    """The tensors of one safetensors file, sorted by name (as the safetensors library lists them)."""
    header, data_start = _header(path)
    data_size = path.stat().st_size - data_start
    tensors = [_entry(path, name, meta, data_start, data_size) for name, meta in header.items() if name != "__metadata__"]
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors if t.nbytes)
    for (_, e0, n0), (s1, _, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            _fail(path, f"tensors {n0!r} and {n1!r} overlap")
    return sorted(tensors, key=lambda t: t.name)


def refuse_pickles(folder: Path) -> None:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        raise LlamatoolError(
            f"{folder / pickles[0]}: pickled PyTorch weights are not supported (loading a pickle can run "
            "arbitrary code); convert the checkpoint to safetensors first"
        )
    raise LlamatoolError(f"{folder}: no model.safetensors or {INDEX_FILE} (weights must be safetensors)")


def _shard_names(folder: Path) -> tuple[list[str], dict[str, str]]:
    """Files to read, in the converter's order, and the index's tensor -> file map (if any)."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise LlamatoolError(f"{index}: not a valid safetensors index ({e})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise LlamatoolError(f"{index}: no 'weight_map' object mapping tensor names to files")
        for file in set(weight_map.values()):
            if Path(file).name != file or not file.endswith(".safetensors"):
                raise LlamatoolError(f"{index}: weight_map names {file!r}, which is not a safetensors file in the folder")
        return sorted(set(weight_map.values())), weight_map
    names = sorted(n for n in os.listdir(folder) if n.startswith("model") and n.endswith(".safetensors"))
    if not names:
        refuse_pickles(folder)
    return names, {}


def checkpoint_tensors(folder: Path) -> dict[str, StoredTensor]:
    """Every tensor of the checkpoint by name, in convert_hf_to_gguf.py's order:
    files sorted by name, tensors of each file sorted by name."""
    names, weight_map = _shard_names(folder)
    tensors: dict[str, StoredTensor] = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            raise LlamatoolError(f"{path}: missing shard (listed in {INDEX_FILE})")
        for t in read_safetensors(path):
            if t.name in tensors:
                raise LlamatoolError(f"{path}: tensor {t.name!r} is also in {tensors[t.name].path.name}")
            tensors[t.name] = t
    if weight_map:
        unlisted = sorted(set(tensors) - set(weight_map))
        if unlisted:
            t = tensors[unlisted[0]]
            raise LlamatoolError(f"{t.path}: tensor {t.name!r} is not listed in {INDEX_FILE}")
    for tname, file in weight_map.items():
        if tname not in tensors:
            raise LlamatoolError(f"{folder / file}: missing tensor {tname!r} (listed in {INDEX_FILE})")
        if tensors[tname].path.name != file:
            raise LlamatoolError(f"{folder / INDEX_FILE}: tensor {tname!r} is in {tensors[tname].path.name}, not {file}")
    return tensors


def checkpoint_dtype(tensors: dict[str, StoredTensor]) -> str | None:
    """The first 16-bit float dtype among matrices, as `--outtype auto` sees it."""
    for t in tensors.values():
        if len(t.shape) >= 2 and t.dtype in ("BF16", "F16"):
            return t.dtype
    return None
