"""Numba, configured once: the compiled-kernel cache lives in a user cache folder.

Import numba only through this module (`from .jit import njit, prange`), so that
the cache location is set before numba reads it and so that commands which need
no kernels (`--help`, `info`) never import numba at all.

Cache: $LLAMATOOL_CACHE_DIR, else $XDG_CACHE_HOME/llamatool, else ~/.cache/llamatool.
Kernels are compiled on first use and cached there (`llamatool warmup` compiles them
all ahead of time), so the JIT cost is paid once per machine, not once per run.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("LLAMATOOL_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "llamatool"


os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))

import numba  # noqa: E402
from numba import njit, prange  # noqa: E402,F401


def set_threads(n: int | None) -> int:
    """Use n threads for parallel kernels (None or <= 0: all cores). Returns the count used."""
    limit = numba.config.NUMBA_NUM_THREADS
    n = limit if not n or n <= 0 else min(int(n), limit)
    numba.set_num_threads(n)
    return n
