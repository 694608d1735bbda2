"""Write the committed reference vectors of the legacy, IQ4 and float quantizers.

Runs llama.cpp's own C code from llama-cpp-python's shipped libggml-base (through
ctypes; nothing is built) on the fixed inputs of tests/quant_reference.py and saves
inputs and expected bytes to tests/data/quant_vectors_{legacy,iq}_ggml.npz, which
the tests check without llama-cpp-python.

    .venv/bin/python scripts/gen_quant_vectors_legacy_iq.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.quant_reference import (  # noqa: E402
    FLOAT_TYPES, IQ_TYPES, LEGACY_TYPES, SCALE_OFFSETS, SKIP_REASON, VECTORS_IQ, VECTORS_LEGACY,
    all_rows, float_values, iq_vector_inputs, load, random_blocks,
)

# Q8_1 has no dequantizer in ggml (it is only ever an activation format).
_NO_C_DEQUANTIZE = {"Q8_1"}


def vectors(ref, types: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    out = {"x": x}
    for name in types:
        out[f"quantized_{name}"] = ref.quantize(name, x)
        if name in _NO_C_DEQUANTIZE:
            continue
        block_size, type_size = ref.block_geometry(name)
        raw = random_blocks(block_size, type_size, SCALE_OFFSETS[name], n_rows=4, n_blocks=512 // block_size)
        out[f"raw_{name}"] = raw
        out[f"dequantized_{name}"] = ref.dequantize(name, raw)
    return out


def main() -> None:
    ref = load()
    if ref is None:
        sys.exit(SKIP_REASON)
    legacy = vectors(ref, LEGACY_TYPES, all_rows(256, special=True))
    floats = float_values()
    legacy["float_values"] = floats
    for name in FLOAT_TYPES:
        legacy[f"quantized_{name}"] = ref.quantize(name, floats)
    iq = vectors(ref, IQ_TYPES, iq_vector_inputs())
    for path, data in [(VECTORS_LEGACY, legacy), (VECTORS_IQ, iq)]:
        np.savez_compressed(path, **data)
        print(f"{path}: {path.stat().st_size // 1024} KiB, {', '.join(sorted(data))}")


if __name__ == "__main__":
    main()
