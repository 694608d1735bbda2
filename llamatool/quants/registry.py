"""The one place that knows every ggml type.

Ids, names and block geometry come from gguf-py's constant tables (the format's
own definition); this module adds what llamatool knows about each type: which
module holds its Numba kernels and which 8-bit activation format its inference
dot product pairs it with (ggml's `vec_dot_type`).

Kernel convention, per family module (floats.py, legacy.py, kquants.py,
iquants.py), for a type named e.g. Q4_K:

    quantize_q4_k(x: float32[n_rows, n_per_row]) -> uint8[n_rows, row_bytes]
    dequantize_q4_k(raw: uint8[n_rows, row_bytes]) -> float32[n_rows, n_per_row]

Both take C-contiguous 2-D arrays; the functions below accept any leading shape.
Numba is imported only when a kernel is first used, so importing this module is cheap.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import LlamatoolError


def _gguf_constants():
    """gguf-py's constants module (the format's own tables), without importing the rest of
    the gguf package: its __init__ also loads its reader, writer, metadata and yaml, which
    would cost `llamatool quantize` more start-up than all of its own modules."""
    if "gguf.constants" in sys.modules:
        return sys.modules["gguf.constants"]
    package = importlib.util.find_spec("gguf")
    if package is None or not package.submodule_search_locations:
        return importlib.import_module("gguf.constants")  # raises the usual ImportError
    path = Path(list(package.submodule_search_locations)[0]) / "constants.py"
    spec = importlib.util.spec_from_file_location("llamatool._gguf_constants", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[spec.name] = module
    return module


gguf_constants = _gguf_constants()
GGML_QUANT_SIZES, GGMLQuantizationType = gguf_constants.GGML_QUANT_SIZES, gguf_constants.GGMLQuantizationType

# Which family module implements a type's quantize/dequantize kernels, and the
# activation type ggml's CPU backend quantizes the other operand to for dot products.
_FAMILY = {
    "F32": ("floats", "F32"),
    "F16": ("floats", "F16"),
    "BF16": ("floats", "BF16"),
    "Q4_0": ("legacy", "Q8_0"),
    "Q4_1": ("legacy", "Q8_1"),
    "Q5_0": ("legacy", "Q8_0"),
    "Q5_1": ("legacy", "Q8_1"),
    "Q8_0": ("legacy", "Q8_0"),
    "Q8_1": ("legacy", None),
    "Q2_K": ("kquants", "Q8_K"),
    "Q3_K": ("kquants", "Q8_K"),
    "Q4_K": ("kquants", "Q8_K"),
    "Q5_K": ("kquants", "Q8_K"),
    "Q6_K": ("kquants", "Q8_K"),
    "Q8_K": ("kquants", None),
    "IQ4_NL": ("iquants", "Q8_0"),
    "IQ4_XS": ("iquants", "Q8_K"),
    "TQ1_0": ("ternary", "Q8_K"),
    "TQ2_0": ("ternary", "Q8_K"),
    "IQ2_XXS": ("lowbit", "Q8_K"),
    "IQ3_S": ("lowbit", "Q8_K"),
    "IQ2_XS": ("lowbit", "Q8_K"),
    "IQ3_XXS": ("lowbit", "Q8_K"),
    "IQ2_S": ("lowbit", "Q8_K"),
    "IQ1_S": ("lowbit", "Q8_K"),
    "IQ1_M": ("lowbit", "Q8_K"),
}


# gguf-py still lists Q8_1 with float32 d and s (40 bytes); ggml's block_q8_1 stores both
# as fp16 (36 bytes). Q8_1 never appears in files, only as an activation format.
_SIZE_FIXES = {"Q8_1": (32, 36)}


@dataclass(frozen=True)
class GGMLType:
    id: int
    name: str
    block_size: int  # weights per block
    type_size: int  # bytes per block
    family: str | None  # llamatool.quants module with its kernels, None if we have none
    vec_dot_type: str | None  # activation format for inference dot products

    @property
    def is_quantized(self) -> bool:
        return self.block_size > 1

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def row_bytes(self, n_per_row: int) -> int:
        """Bytes of one row of n_per_row weights (which must be whole blocks)."""
        if n_per_row % self.block_size:
            raise LlamatoolError(
                f"{self.name}: a row of {n_per_row} values is not a multiple of the block size {self.block_size}"
            )
        return n_per_row // self.block_size * self.type_size

    def nbytes(self, n_elements: int) -> int:
        return n_elements // self.block_size * self.type_size

    def _kernel(self, verb: str):
        return _family_function(self.family, f"{verb}_{self.name.lower()}")

    @property
    def can_quantize(self) -> bool:
        return self._kernel("quantize") is not None

    @property
    def can_dequantize(self) -> bool:
        return self._kernel("dequantize") is not None

    def __str__(self) -> str:
        return self.name


@lru_cache(maxsize=None)
def _family_function(family: str | None, name: str):
    if family is None:
        return None
    return getattr(importlib.import_module(f"llamatool.quants.{family}"), name, None)


@lru_cache(maxsize=None)
def _table() -> dict[int, GGMLType]:
    table = {}
    for t in GGMLQuantizationType:
        block_size, type_size = _SIZE_FIXES.get(t.name, GGML_QUANT_SIZES[t])
        family, dot = _FAMILY.get(t.name, (None, None))
        table[int(t)] = GGMLType(int(t), t.name, block_size, type_size, family, dot)
    return table


def all_types() -> list[GGMLType]:
    return list(_table().values())


def ggml_type(key: int | str | GGMLType) -> GGMLType:
    """Look a type up by id, name (any case) or GGMLType; unknown keys are a clear error."""
    if isinstance(key, GGMLType):
        return key
    table = _table()
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if int(key) in table:
            return table[int(key)]
        raise LlamatoolError(f"unknown ggml type id {int(key)}")
    if isinstance(key, str):
        for t in table.values():
            if t.name.lower() == key.lower():
                return t
        raise LlamatoolError(f"unknown ggml type {key!r}")
    raise LlamatoolError(f"not a ggml type: {key!r}")


def _rows(a: np.ndarray, n: int) -> np.ndarray:
    """a as 2-D rows of n values, without a copy (out= arrays are filled in place)."""
    if not a.flags.c_contiguous:
        raise LlamatoolError("output array must be C-contiguous")
    return a.reshape(-1, n)


def quantize(qtype: int | str | GGMLType, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Quantize float32 values shaped (..., n_per_row) into raw blocks shaped (..., row_bytes),
    into `out` if given (a C-contiguous uint8 array of that shape)."""
    t = ggml_type(qtype)
    kernel = t._kernel("quantize")
    if kernel is None:
        raise LlamatoolError(f"quantizing to {t.name} is not supported")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 0:
        raise LlamatoolError("cannot quantize a scalar")
    n = x.shape[-1]
    row_bytes = t.row_bytes(n)
    result = kernel(x.reshape(-1, n), None if out is None else _rows(out, row_bytes))
    return result.reshape(*x.shape[:-1], row_bytes) if out is None else out


def dequantize(qtype: int | str | GGMLType, raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Dequantize raw blocks shaped (..., row_bytes) into float32 shaped (..., n_per_row),
    into `out` if given (a C-contiguous float32 array of that shape)."""
    t = ggml_type(qtype)
    kernel = t._kernel("dequantize")
    if kernel is None:
        raise LlamatoolError(f"dequantizing {t.name} is not supported")
    raw = np.ascontiguousarray(raw).view(np.uint8)
    row_bytes = raw.shape[-1]
    if row_bytes % t.type_size:
        raise LlamatoolError(f"{t.name}: {row_bytes} bytes is not a whole number of blocks")
    n = row_bytes // t.type_size * t.block_size
    result = kernel(raw.reshape(-1, row_bytes), None if out is None else _rows(out, n))
    return result.reshape(*raw.shape[:-1], n) if out is None else out
