"""Where the comparison scripts find llama.cpp's own binaries (llama-bench, llama-quantize).

In order: the path given on the command line (a file, or a folder holding the binary;
"none" turns the binary off), else $LLAMA_CPP_BIN/<name>, else <name> on PATH.
scripts/build_llamacpp.sh builds both and prints the LLAMA_CPP_BIN to export.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

BUILD_HINT = "scripts/build_llamacpp.sh builds llama-bench and llama-quantize and prints the LLAMA_CPP_BIN to export"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_binary(name: str, given: str | None = None, environ=None) -> Path | None:
    """The binary `name` to run, or None when there is none (or given is "none").

    A path given, or a LLAMA_CPP_BIN set, that holds no such executable is an error
    (SystemExit with the reason), not a silent fall-back to another llama.cpp."""
    environ = os.environ if environ is None else environ
    if given is not None:
        if given.lower() == "none":
            return None
        path = Path(given)
        path = path / name if path.is_dir() else path
        if not _executable(path):
            raise SystemExit(f"{given}: no executable {name} there ({BUILD_HINT})")
        return path
    folder = environ.get("LLAMA_CPP_BIN")
    if folder:
        path = Path(folder) / name
        if not _executable(path):
            raise SystemExit(f"LLAMA_CPP_BIN={folder}: no executable {name} there ({BUILD_HINT})")
        return path
    found = shutil.which(name, path=environ.get("PATH", os.defpath))
    return Path(found) if found else None
