"""--outtype: the converter's float/Q8_0 types, or a llama-quantize preset.

For f32/f16/bf16/q8_0 the type of each tensor follows convert_hf_to_gguf.py: 1-D tensors,
norms and anything that is not a `.weight` stay F32; the rest get the chosen type, and
a Q8_0 tensor whose rows are not whole 32-value blocks falls back to F16. For a preset
(q4_k_m, ...) llamatool.quantize decides, exactly as `llamatool quantize` would for the
f16 conversion, and the tensors are quantized as they stream through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from gguf.constants import LlamaFileType

from ..errors import LlamatoolError
from ..quants.registry import GGMLType, ggml_type

# outtype -> (ggml type of the matrices, general.file_type)
FLOAT_OUTTYPES = {
    "f32": ("F32", int(LlamaFileType.ALL_F32)),
    "f16": ("F16", int(LlamaFileType.MOSTLY_F16)),
    "bf16": ("BF16", int(LlamaFileType.MOSTLY_BF16)),
    "q8_0": ("Q8_0", int(LlamaFileType.MOSTLY_Q8_0)),
}


@dataclass(frozen=True)
class OutType:
    name: str  # what the user asked for, resolved: f16, bf16, q4_k_m, ...
    file_type: int  # general.file_type
    matrix_type: str | None  # converter types; None for a preset
    preset: str | None = None

    @property
    def label(self) -> str:
        """The type as it appears in file names (F16, Q8_0, Q4_K_M)."""
        return LlamaFileType(self.file_type).name.partition("_")[2]


def resolve(outtype: str, checkpoint_dtype: str | None) -> OutType:
    """The output type; `auto` is bf16 for a bf16 checkpoint and f16 otherwise, as the
    reference converter decides from the first 16-bit matrix."""
    key = outtype.strip().lower()
    if key == "auto":
        key = "bf16" if checkpoint_dtype == "BF16" else "f16"
    if key in FLOAT_OUTTYPES:
        matrix, file_type = FLOAT_OUTTYPES[key]
        return OutType(key, file_type, matrix)
    try:
        from ..quantize import preset_file_type, preset_names
    except ImportError:
        raise LlamatoolError(f"--outtype {outtype}: quantization presets need llamatool.quantize, which is not available") from None
    names = {n.lower(): n for n in preset_names()}
    if key not in names:
        choices = ", ".join(["auto", *FLOAT_OUTTYPES, *sorted(names)])
        raise LlamatoolError(f"unknown --outtype {outtype!r} (choose from {choices})")
    return OutType(key, int(preset_file_type(names[key])), None, preset=names[key])


def converter_type(name: str, shape: tuple[int, ...], matrix_type: str) -> GGMLType:
    """convert_hf_to_gguf.py's choice for one tensor (shape in numpy order)."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return ggml_type("F32")
    t = ggml_type(matrix_type)
    if shape[-1] % t.block_size:
        return ggml_type("F16")  # rows that are not whole blocks: the reference's fallback
    return t


def tensor_types(tensors: Sequence[tuple[str, tuple[int, ...]]], out: OutType, metadata: Mapping[str, Any]) -> dict[str, GGMLType]:
    """The ggml type of every tensor, by name; tensors are (name, numpy shape)."""
    if out.preset is None:
        return {name: converter_type(name, shape, out.matrix_type) for name, shape in tensors}
    from ..quantize import QuantizeOptions
    from ..quantize import tensor_types as preset_types

    current = {name: converter_type(name, shape, "F16") for name, shape in tensors}
    ne = [(name, tuple(reversed(shape))) for name, shape in tensors]
    return dict(preset_types(ne, metadata, QuantizeOptions(preset=out.preset), current_types=current))
