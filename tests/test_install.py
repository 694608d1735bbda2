"""`pip install .` into a fresh virtual environment, then `llamatool run` on the default model:
the package works with exactly the dependencies it declares, nothing borrowed from the
development venv. Slow (a venv, a wheel build, the kernels compiled in an empty cache), so it
has a marker of its own: `make test-install` and .ci/run run it, `make test` does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, llamatool

pytestmark = pytest.mark.install

PROMPT = "The three most important things to know about the ocean are"


def _fresh_env(cache: Path) -> dict[str, str]:
    """This process's environment without anything that points Python at the development venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    return {**env, "LLAMATOOL_CACHE_DIR": str(cache)}


def test_pip_install_then_run(default_model, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, env = venv / "bin" / "python", _fresh_env(tmp_path / "cache")

    def in_venv(*args, timeout=1800):
        return subprocess.run([*map(str, args)], capture_output=True, text=True, cwd=tmp_path, env=env,
                              stdin=subprocess.DEVNULL, timeout=timeout)  # fmt: skip

    pip = in_venv(python, "-m", "pip", "install", "-q", ROOT)
    assert pip.returncode == 0, pip.stderr[-3000:]
    check = in_venv(python, "-m", "pip", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    where = in_venv(python, "-c", "import llamatool; print(llamatool.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr  # not the clone

    args = ["run", "-m", default_model, "-p", PROMPT, "-n", 12, "--temp", 0, "-t", 2]
    run = in_venv(venv / "bin" / "llamatool", *args)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stdout.startswith(PROMPT) and len(run.stdout) > len(PROMPT) + 10
    assert run.stdout == llamatool(*args).stdout  # the same text as the development install
