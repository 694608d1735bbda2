"""Build small GGUF files for tests with llamatool's own writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llamatool.gguf_io import GGUFWriter, ValueType
from llamatool.quants.registry import ggml_type, quantize


def write_gguf(path: Path, fields: dict | list, tensors: dict, *, force: bool = True, alignment: int | None = None) -> Path:
    """Write a GGUF with the given metadata and tensors.

    fields: {key: value} or [(key, value, vtype, subtype)]; tensors: {name: (type, float32 array)},
    arrays in numpy shape, quantized with the registry's kernels.
    """
    with GGUFWriter(path, force=force) as w:
        if alignment is not None:
            w.add_field("general.alignment", alignment, ValueType.UINT32)
        items = fields.items() if isinstance(fields, dict) else [(f[0], f[1:]) for f in fields]
        for key, value in items:
            if isinstance(value, tuple):
                w.add_field(key, *value)
            else:
                w.add_field(key, value)
        raw = {}
        for name, (qtype, values) in tensors.items():
            t = ggml_type(qtype)
            values = np.asarray(values, dtype=np.float32)
            raw[name] = quantize(t, values) if t.name != "F32" else values
            w.add_tensor_info(name, t, tuple(reversed(values.shape)))
        for name, data in raw.items():
            w.write_tensor(name, data)
    return path


def all_value_types_fields() -> list:
    """One metadata entry of every GGUF value type, arrays and a nested array included."""
    V = ValueType
    return [
        ("general.architecture", "llama", V.STRING, None),
        ("test.u8", 200, V.UINT8, None),
        ("test.i8", -100, V.INT8, None),
        ("test.u16", 60000, V.UINT16, None),
        ("test.i16", -30000, V.INT16, None),
        ("test.u32", 4_000_000_000, V.UINT32, None),
        ("test.i32", -2_000_000_000, V.INT32, None),
        ("test.f32", 1.5, V.FLOAT32, None),
        ("test.bool", True, V.BOOL, None),
        ("test.string", "héllo ▁ wörld 🦙", V.STRING, None),
        ("test.u64", 2**60, V.UINT64, None),
        ("test.i64", -(2**60), V.INT64, None),
        ("test.f64", 2.5e-300, V.FLOAT64, None),
        ("test.arr_i32", np.array([1, -2, 3], np.int32), V.ARRAY, V.INT32),
        ("test.arr_f32", np.array([0.5, -1.25], np.float32), V.ARRAY, V.FLOAT32),
        ("test.arr_str", ["a", "", "ünï"], V.ARRAY, V.STRING),
        ("test.arr_bool", np.array([True, False]), V.ARRAY, V.BOOL),
        ("test.arr_nested", [np.array([1, 2], np.int32), np.array([3], np.int32)], V.ARRAY, V.ARRAY),
    ]
