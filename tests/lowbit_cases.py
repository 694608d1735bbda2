"""Inputs of the 1-3-bit IQ quantizer tests (tests/test_quants_lowbit.py) and of the script
that commits ggml's bytes for them (scripts/gen_quant_vectors_lowbit.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

VECTORS_LOWBIT = Path(__file__).resolve().parent / "data" / "quant_vectors_lowbit_ggml.npz"
#: the types, in the order of issue 18 (IQ1_M not yet)
LOWBIT_TYPES = ["IQ2_XXS", "IQ3_S", "IQ2_XS", "IQ3_XXS", "IQ2_S", "IQ1_S"]
#: the ones ggml also quantizes without weights
UNWEIGHTED_TYPES = ["IQ3_S", "IQ3_XXS", "IQ2_S"]


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
