"""The grids of the 1-3-bit IQ types, and their sign table: file-format constants, read at
run time from gguf-py's dequantizer tables (gguf.quants.<TYPE>.grid_hex, grid_map and
init_grid, which gguf pins) rather than copied. Kept free of Numba so the forward pass's
block decoders (kernels.blocks) and the quantizers (quants.lowbit) share them cheaply.

grid_levels gives each grid point as level indices l (0..levels-1): the stored magnitudes
are grid_map[l], the quantizer's search points 2l + 1.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=None)
def grid_levels(type_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(levels uint8[n_points, group], magnitudes) of type_name's grid, from gguf-py:
    point p's value i is magnitudes[levels[p, i]]."""
    from gguf import quants

    cls = getattr(quants, type_name)
    cls.init_grid()
    magnitudes = np.asarray(cls.grid_map, np.float32)
    values = np.asarray(cls.grid, np.float32).reshape(cls.grid_shape)
    levels = np.searchsorted(magnitudes, values)
    if not np.array_equal(magnitudes[levels], values):
        raise AssertionError(f"gguf-py's {type_name} grid holds values outside its grid_map")
    return levels.astype(np.uint8), magnitudes


def sign_table() -> np.ndarray:
    """ggml's ksigns_iq2xs: 7 sign bits and, as bit 7, their parity (an even count of minus)."""
    i = np.arange(128)
    parity = np.array([bin(v).count("1") & 1 for v in i])
    return (i | (parity << 7)).astype(np.uint8)


def magnitudes(type_name: str) -> np.ndarray:
    """The grid as stored magnitudes, uint8[n_points, group]."""
    levels, values = grid_levels(type_name)
    return values[levels].astype(np.uint8)


#: IQ2_XXS: 256 points of 8 magnitudes (8, 25 or 43), one row per point
IQ2_XXS_GRID = magnitudes("IQ2_XXS")
#: IQ2_XS: 512 points of 8 magnitudes (8, 25 or 43)
IQ2_XS_GRID = magnitudes("IQ2_XS")
#: IQ2_S: 1024 points of 8 magnitudes (8, 25 or 43)
IQ2_S_GRID = magnitudes("IQ2_S")
#: IQ3_XXS: 256 points of 4 magnitudes (4, 12, ..., 62)
IQ3_XXS_GRID = magnitudes("IQ3_XXS")
#: IQ3_S: 512 points of 4 magnitudes (1, 3, ..., 15)
IQ3_S_GRID = magnitudes("IQ3_S")
#: IQ1_S and IQ1_M: 2048 points of 8 levels 0, 1, 2 (values -1, 0, 1)
IQ1_S_LEVELS = grid_levels("IQ1_S")[0]
#: ksigns_iq2xs
KSIGNS = sign_table()
