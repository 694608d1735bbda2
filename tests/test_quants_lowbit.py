"""The 1-3-bit IQ types (quants.lowbit): byte-exact with ggml's quantize_row_iq*_impl.

ggml makes them with quantization weights (an imatrix's row; IQ3_S, IQ3_XXS and IQ2_S also
without), so they are checked against its C code: the bytes committed from it
(tests/data/quant_vectors_lowbit_ggml.npz, scripts/gen_quant_vectors_lowbit.py), live
through llama-cpp-python when installed, and whole files against llama-quantize --imatrix
(tests/test_quantize_imatrix.py). gguf-py's dequantizers check ours, and its grids are the
tables both use: the neighbour lists built from them are checked by brute force here.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from llamatool.errors import LlamatoolError
from llamatool.quants import lowbit, registry
from llamatool.quants.grids import grid_levels
from llamatool.quants.weighted import BLOCK, quantize_weighted
from tests.lowbit_cases import LOWBIT_TYPES, UNWEIGHTED_TYPES, VECTORS_LOWBIT, lowbit_rows, lowbit_weights, put_iq1_m_scale
from tests.quant_reference import first_difference, ggml  # noqa: F401  (ggml: a fixture)


@pytest.fixture(scope="module")
def vectors():
    assert VECTORS_LOWBIT.exists(), f"{VECTORS_LOWBIT} is missing: run scripts/gen_quant_vectors_lowbit.py"
    return dict(np.load(VECTORS_LOWBIT))


def _ours(name: str, x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    return registry.quantize(name, x) if qw is None else quantize_weighted(name, x, qw)


def _cases(types):
    rows, weights = lowbit_rows(), lowbit_weights()
    for name in types:
        for case, x in rows.items():
            for wcase, qw in [*weights.items(), *([("none", None)] if name in UNWEIGHTED_TYPES else [])]:
                yield name, case, wcase, x, qw


@pytest.mark.parametrize("name", LOWBIT_TYPES)
def test_quantize_matches_committed_ggml_vectors(vectors, name):
    for _, case, wcase, x, qw in _cases([name]):
        expected = vectors[f"{name}/{case}/{wcase}"]
        ours = _ours(name, x, qw)
        assert np.array_equal(ours, expected), f"{case}/{wcase}: " + first_difference(ours, expected, BLOCK[name][1])


def test_committed_vectors_hold_these_inputs(vectors):
    for case, x in lowbit_rows().items():
        assert np.array_equal(vectors[f"x_{case}"], x), f"inputs changed ({case}): regenerate the vectors"
    for case, w in lowbit_weights().items():
        assert np.array_equal(vectors[f"qw_{case}"], w), f"weights changed ({case}): regenerate the vectors"


@pytest.mark.parametrize("name", LOWBIT_TYPES)
def test_quantize_matches_ggml_live(ggml, name):  # noqa: F811
    rng = np.random.default_rng(hash(name) % 1000)
    x = (rng.standard_normal((8, 1024)) * rng.uniform(0.001, 3, (8, 1))).astype(np.float32)
    qw = rng.gamma(0.7, 1.5, 1024).astype(np.float32)
    assert np.array_equal(quantize_weighted(name, x, qw), ggml.quantize(name, x, qw))
    if name in UNWEIGHTED_TYPES:
        assert np.array_equal(registry.quantize(name, x), ggml.quantize(name, x))


@pytest.mark.parametrize("name", LOWBIT_TYPES)
def test_dequantize_matches_gguf_py_on_random_blocks(name):
    """Any bits (indices, signs, scales) with finite fp16 scales, as gguf-py reads them."""
    rng = np.random.default_rng(3)
    block, size = BLOCK[name]
    raw = rng.integers(0, 256, (5, 4, size), dtype=np.uint8)
    d = rng.uniform(-2, 2, (5, 4)).astype(np.float16)
    if name == "IQ1_M":  # no d field: its bits are spread over the scales
        put_iq1_m_scale(raw, d)
    else:
        raw[:, :, 0:2] = d.view(np.uint8).reshape(5, 4, 2)
    raw = raw.reshape(5, -1)
    assert np.array_equal(registry.dequantize(name, raw), gguf_dequantize(raw, GGMLQuantizationType[name]))


@pytest.mark.parametrize("name", LOWBIT_TYPES)
def test_round_trip_error_falls_with_the_bits(name):
    """Quantized and read back, a Gaussian row keeps most of its signal: the relative RMS
    error is below what its bits allow (1-bit types coarsest)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 1024)).astype(np.float32)
    back = registry.dequantize(name, quantize_weighted(name, x, np.ones(1024, np.float32)))
    err = np.sqrt(np.mean((back - x) ** 2) / np.mean(x**2))
    bound = {"IQ1_S": 0.62, "IQ1_M": 0.55, "IQ2_XXS": 0.5, "IQ2_XS": 0.45, "IQ2_S": 0.42, "IQ3_XXS": 0.3, "IQ3_S": 0.28}[name]
    assert err < bound, err


@pytest.mark.parametrize("name,nwant,kmap_size,bits", [("IQ2_XXS", 2, 43692, 2), ("IQ3_S", 3, 4096, 3),
                                                       ("IQ2_XS", 2, 43692, 2), ("IQ3_XXS", 2, 4096, 3),
                                                       ("IQ2_S", 1, 43692, 2), ("IQ1_S", 3, 43692, 2)])
def test_neighbour_lists_hold_the_nearest_grid_points(name, nwant, kmap_size, bits):
    """For sampled off-grid keys: the grid points at the nwant smallest distinct squared
    distances, by (distance, index) - iq2xs_init_impl's lists - computed by brute force."""
    points, kmap, neighbours = lowbit.neighbour_tables(name, nwant, kmap_size, bits)
    levels, _ = grid_levels(name)
    group = levels.shape[1]
    assert np.array_equal(points, 2 * levels.astype(np.int8) + 1)
    on_grid = np.flatnonzero(kmap >= 0)
    assert len(on_grid) == len(levels) and sorted(kmap[on_grid]) == list(range(len(levels)))
    rng = np.random.default_rng(0)
    for key in rng.choice(np.flatnonzero(kmap < 0), 60, replace=False):
        pos = 2 * ((key >> (bits * np.arange(group))) & ((1 << bits) - 1)) + 1
        d2 = ((points.astype(np.int64) - pos) ** 2).sum(axis=1)
        wanted = np.unique(d2)[:nwant]
        expected = [j for j in sorted(range(len(d2)), key=lambda j: (d2[j], j)) if d2[j] <= wanted[-1]]
        start = -kmap[key] - 1
        assert list(neighbours[start + 1 : start + 1 + neighbours[start]]) == expected


def test_types_without_an_unweighted_quantizer_say_so():
    with pytest.raises(LlamatoolError, match="not supported"):
        registry.quantize("IQ2_XXS", np.zeros((1, 256), np.float32))
