"""Inputs of the 1-3-bit IQ quantizer tests (tests/test_quants_lowbit.py) and of the script
that commits ggml's bytes for them (scripts/gen_quant_vectors_lowbit.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

VECTORS_LOWBIT = Path(__file__).resolve().parent / "data" / "quant_vectors_lowbit_ggml.npz"
#: the types, in the order of issue 18
LOWBIT_TYPES = ["IQ2_XXS", "IQ3_S", "IQ2_XS", "IQ3_XXS", "IQ2_S", "IQ1_S", "IQ1_M"]
#: the ones ggml also quantizes without weights
UNWEIGHTED_TYPES = ["IQ3_S", "IQ3_XXS", "IQ2_S", "IQ1_M"]
#: IQ1_M's byte offset of its four u16 scales, whose top nibbles hold the fp16 super-block scale
IQ1_M_SCALES = 48


def put_iq1_m_scale(blocks: np.ndarray, d: np.ndarray) -> None:
    """Write the fp16 super-block scales d (shape blocks.shape[:-1]) into IQ1_M blocks
    (uint8[..., 56]): nibble i of d's bits is the top nibble of the scales' u16 i."""
    bits = np.asarray(d, np.float16).view(np.uint16)
    for i in range(4):
        at = IQ1_M_SCALES + 2 * i + 1
        blocks[..., at] = (blocks[..., at] & 0x0F) | (((bits >> (4 * i)) & 0xF) << 4).astype(np.uint8)


def lowbit_rows(n: int = 512, seed: int = 5) -> dict[str, np.ndarray]:
    """Rows by case name: weights of real spread, heavy tails, integers (ties everywhere),
    all-zero rows, and rows whose every third 32-block is zero (IQ3_S's slot quirk)."""
    rng = np.random.default_rng(seed)
    return {
        "normal": rng.standard_normal((6, n)).astype(np.float32) * np.float32(0.02),
        "heavy_tailed": rng.standard_t(2, (4, n)).astype(np.float32),
        "integers": rng.integers(-3, 4, (3, n)).astype(np.float32),
        "zeros": np.zeros((1, n), np.float32),
        "zero_blocks": np.where((np.arange(n) // 32) % 3 == 1, 0, rng.standard_normal((3, n))).astype(np.float32),
        "block_scales": (rng.standard_normal((3, n)) * 10.0 ** rng.integers(-4, 3, (3, n // 32, 1)).repeat(32, 2).reshape(3, n)).astype(np.float32),
    }


def lowbit_weights(n: int = 512, seed: int = 6) -> dict[str, np.ndarray]:
    """Importance weights by case name: an imatrix's spread, all ones, and some columns zero."""
    rng = np.random.default_rng(seed)
    return {
        "gamma": rng.gamma(0.5, 2.0, n).astype(np.float32),
        "ones": np.ones(n, np.float32),
        "sparse": np.where(rng.random(n) < 0.3, 0, rng.gamma(1.0, 1.0, n)).astype(np.float32),
    }
