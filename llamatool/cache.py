"""Where llamatool keeps the machine code it compiles: $LLAMATOOL_CACHE_DIR, else
llamatool/ in the user's cache folder ($XDG_CACHE_HOME or ~/.cache). Importing this
module is free: it does not import Numba."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("LLAMATOOL_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "llamatool"
