"""The type registry: one table that every command uses."""

from __future__ import annotations

import numpy as np
import pytest

from llamatool.errors import LlamatoolError
from llamatool.quants.registry import all_types, dequantize, ggml_type, quantize

# (block size, bytes per block) of ggml's block structs (ggml-common.h static_asserts)
GGML_BLOCKS = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34), "Q8_1": (32, 36),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
    "Q8_K": (256, 292), "IQ4_NL": (32, 18), "IQ4_XS": (256, 136),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(GGML_BLOCKS))
def test_geometry_and_round_trip_through_the_registry(name):
    t = ggml_type(name)
    assert (t.block_size, t.type_size) == GGML_BLOCKS[name]
    assert t.can_quantize and t.can_dequantize
    x = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    raw = quantize(t, x)
    assert raw.dtype == np.uint8 and raw.shape == (3, t.row_bytes(512))
    back = dequantize(t, raw)
    assert back.shape == x.shape
    assert np.abs(back - x).max() < 1.0  # even 2.6-bit Q2_K stays within a unit on N(0, 1) data


def test_lookup_by_id_name_and_errors():
    assert ggml_type(2).name == "Q4_0" and ggml_type("q4_k").id == 12 and ggml_type(ggml_type("F16")).name == "F16"
    assert {t.name for t in all_types()} >= set(GGML_BLOCKS)
    for bad in (4, 999, "Q4_2", "nope", 1.5):
        with pytest.raises(LlamatoolError):
            ggml_type(bad)
    with pytest.raises(LlamatoolError, match="block size"):
        quantize("Q4_K", np.zeros((1, 576), np.float32))
    with pytest.raises(LlamatoolError, match="not supported"):
        quantize("IQ2_XXS", np.zeros((1, 256), np.float32))
