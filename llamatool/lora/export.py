"""`llamatool export-lora`: a base model with LoRA adapters merged in, as llama-export-lora
writes it.

    metadata    the base's keys in order, general.file_type moved to the end as MOSTLY_F16
    tensors     sorted by name (llama-export-lora keeps them in a std::map); an adapted
                tensor becomes W + sum scale*alpha/r * B.A, computed in float32 and stored
                F32 if the base's is F32, else F16; every other tensor is copied as it is

llama-export-lora sums each of B.A's r products in float32 in the order of ggml's CPU
vectors (kernels/ggml_dot.py), which decides the last bit of a float32 and so, now and then,
an F16 step of the merged value: the products are summed in that order for the vectors of
this CPU as llama.cpp builds itself for it (host.ggml_f32_lanes, host.ggml_loop_lanes).
Where that order is not modelled (not x86-64 with AVX2), they are summed in float64 and
rounded once, which can differ from llama-export-lora's in the last bit. Beyond
llama-export-lora: adapters need not adapt the same tensors, Q8_0 adapters are accepted, and
--outtype PRESET quantizes the merged model (llamatool.quantize, from a temporary F16/F32
merge next to the output, removed afterwards).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import LlamatoolError
from ..gguf_io import GGUFReader, GGUFWriter, ValueType
from ..host import ggml_f32_lanes, ggml_loop_lanes
from .adapter import EMBEDDING, Adapter, load_adapters

MOSTLY_F16 = 1  # llama_ftype LLAMA_FTYPE_MOSTLY_F16, which llama-export-lora writes


@dataclass
class ExportResult:
    output: Path
    merged: list[str] = field(default_factory=list)
    copied: int = 0
    seconds: float = 0.0


def lora_factor(adapter: Adapter, name: str, scale: float) -> np.float32:
    """llama-export-lora's scale, in its float32 arithmetic: alpha ? scale*alpha/rank : scale."""
    f32 = np.float32
    if not adapter.alpha:
        return f32(scale)
    return f32(f32(scale) * f32(adapter.alpha)) / f32(adapter.rank(name))


def merged_values(base: np.ndarray, name: str, adapters: list[tuple[Adapter, float]]) -> np.ndarray:
    """base (numpy shape, float32) + every adapter's scaled B.A, in llama-export-lora's order
    of float32 operations: cur = scale*delta + cur per adapter."""
    cur = base
    for adapter, scale in adapters:
        if name not in adapter.pairs:
            continue
        cur = product(*adapter.matrices(name), name) * lora_factor(adapter, name, scale) + cur
    return cur


def product(a: np.ndarray, b: np.ndarray, name: str) -> np.ndarray:
    """B.A (an embedding's A.B^T) in float32, as ggml_mul_mat sums it on this CPU. a: (r, K)
    (an embedding's (vocab, r)), b: (N, r); float32."""
    # llama-export-lora: ggml_mul_mat(cont(transpose(A)), B), an embedding's ggml_mul_mat(B, A)
    rows, cols = (b, a) if name == EMBEDDING else (np.ascontiguousarray(a.T), b)
    lanes = ggml_f32_lanes()
    if not lanes:
        return (cols.astype(np.float64) @ rows.astype(np.float64).T).astype(np.float32)
    from ..kernels.ggml_dot import ggml_f32_products  # Numba: imported when a merge needs it

    out = np.empty((cols.shape[0], rows.shape[0]), np.float32)
    ggml_f32_products(np.ascontiguousarray(rows, np.float32), np.ascontiguousarray(cols, np.float32), lanes,
                      ggml_loop_lanes(), out)
    return out


def _fields(reader: GGUFReader) -> list[tuple]:
    out = [(k, f) for k, f in reader.fields.items() if k != "general.file_type"]
    out.append(("general.file_type", MOSTLY_F16, ValueType.UINT32))
    return out


def export_merged(base_path, lora, output, *, force: bool = False) -> ExportResult:
    """Write base + adapters (items path or (path, scale)) to output, as llama-export-lora."""
    base_path, output = Path(base_path), Path(output)
    reader = GGUFReader(base_path)
    if reader.get("general.type", "model") == "adapter":
        raise LlamatoolError(f"{base_path}: is a LoRA adapter, not a base model (-m takes the model)")
    if not lora:
        raise LlamatoolError("export-lora needs at least one adapter (--lora or --lora-scaled)")
    tied = not reader.has_tensor("output.weight")
    adapters = load_adapters(lora, reader, tied)
    adapted = {name for a, _ in adapters for name in a.pairs}
    start = time.perf_counter()
    result = ExportResult(output)
    tensors = sorted(reader.tensors, key=lambda t: t.name.encode())
    writer = GGUFWriter(output, force=force, inputs=[base_path, *(a.path for a, _ in adapters)])
    for item in _fields(reader):
        writer.add_field(*item)
    for t in tensors:
        qtype = t.type.name if t.name not in adapted else ("F32" if t.type.name == "F32" else "F16")
        writer.add_tensor_info(t.name, qtype, t.ne)
    with writer:
        for t in tensors:
            if t.name not in adapted:
                writer.write_tensor(t.name, t.data)
                result.copied += 1
                continue
            values = merged_values(t.values(), t.name, adapters)
            writer.write_tensor(t.name, values if t.type.name == "F32" else values.astype(np.float16))
            result.merged.append(t.name)
    result.seconds = time.perf_counter() - start
    return result


def export_lora(base_path, lora, output, *, outtype: str | None = None, force: bool = False, threads: int | None = None) -> ExportResult:
    """export_merged, then (--outtype PRESET) quantized with llamatool.quantize."""
    if outtype is None or outtype.lower() in ("f16", "auto"):
        return export_merged(base_path, lora, output, force=force)
    from ..fileio import check_output_path
    from ..quant_rules import QuantizeOptions, canonical_preset
    from ..quantize import quantize_model

    preset = canonical_preset(outtype)
    output = Path(output)
    check_output_path(output, force=force, inputs=[Path(base_path)])
    temp = output.with_name(f".{output.name}.merged.tmp")
    try:
        result = export_merged(base_path, lora, temp, force=True)
        quantize_model(temp, output, QuantizeOptions(preset=preset), nthreads=threads, force=force, progress=False)
    finally:
        temp.unlink(missing_ok=True)
    result.output = output
    return result


def run_export_lora_command(base, lora, output, outtype, force, threads) -> ExportResult:
    result = export_lora(base, lora, output, outtype=outtype, force=force, threads=threads)
    print(f"merged {len(result.merged)} tensors with LoRA adapters, copied {result.copied}")
    print(f"wrote {result.output} ({result.output.stat().st_size / 1024 / 1024:.2f} MiB in {result.seconds:.2f} s)")
    return result
