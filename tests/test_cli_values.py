"""Plain option values without pydantic (llamatool.cli_values): the values typer's own
adapters give, typer's own errors, and no pydantic import on the way to a command."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest

from llamatool import cli_values

CORPUS = ["0", "7", "-3", "+5", " 8 ", "\t9\n", "007", "1_000", "1__0", "_1", "1_", "1.5", "1.", ".5", "-.5", "5e3",
          "1E-2", "1e", "e3", "1.2.3", "inf", "-inf", "nan", "NaN", "abc", "", " ", "0x10", "٣", "１２", "1 2",
          "12345678901234567890123", "-0", "-0.0", "+.0e+0"]


@pytest.mark.parametrize("annotation", [int, float, str])
def test_plain_values_are_what_typers_adapter_gives(annotation):
    from typer._adapters import try_build_adapter
    from typer.models import OptionInfo

    adapter = try_build_adapter(annotation, OptionInfo())
    taken = 0
    for text in CORPUS:
        mine = cli_values._plain(annotation, text)
        if mine is None:
            continue  # left to typer
        taken += 1
        theirs = adapter.validate_python(text)
        assert type(mine) is type(theirs) and (mine == theirs or (math.isnan(mine) and math.isnan(theirs))), text
    assert taken >= 10 if annotation is not str else taken == len(CORPUS)
    for value in (0, 3, -2, 0.5, True):  # defaults arrive as values, not text
        mine = cli_values._plain(annotation, value)
        if mine is not None:
            theirs = adapter.validate_python(value)
            assert type(mine) is type(theirs) and mine == theirs, value


def test_the_patch_applies_to_the_typer_pyproject_pins():
    """On the typer range pyproject allows, typer's internals are the expected ones: the plain
    path is installed (a typer outside it would leave typer alone, slower but correct)."""
    from typer import core

    assert cli_values.install()
    assert getattr(core.build_runtime_param, "llamatool", False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(
        """
        import sys
        from llamatool.cli import main
        try:
            main(sys.argv[1:])
        finally:
            print("pydantic imported:", "pydantic" in sys.modules, file=sys.stderr)
        """
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_run_options_reach_the_command_without_pydantic(tmp_path):
    missing = tmp_path / "missing.gguf"
    out = _cli("run", "-m", str(missing), "-p", "x", "-n", "4", "--temp", "0.5", "-t", "2", "--top-p", "1", "--seed", "3")
    assert f"error: {missing}: no such file" in out.stderr  # parsed, and the command ran
    assert "pydantic imported: False" in out.stderr


def test_quantize_positional_list_reaches_the_command_without_pydantic(tmp_path):
    missing = tmp_path / "missing.gguf"
    out = _cli("quantize", "--dry-run", str(missing), str(tmp_path / "out.gguf"), "Q4_0", "--nthreads", "2")
    assert f"error: {missing}: no such file" in out.stderr
    assert "pydantic imported: False" in out.stderr
    assert cli_values._plain(list[str], ("a", "b")) == ["a", "b"]
    assert cli_values._plain(list[str], ("a", 3)) is None  # not all text: typer decides


@pytest.mark.parametrize("option, value, message", [
    ("-n", "abc", "Invalid value for '-n' / '--n-predict'"),
    ("-n", "1.5", "Invalid value for '-n' / '--n-predict'"),
    ("--temp", "warm", "Invalid value for '--temp'"),
])
def test_bad_values_still_get_typers_errors(tmp_path, option, value, message):
    out = _cli("run", "-m", str(tmp_path / "m.gguf"), "-p", "x", option, value)
    assert out.returncode == 2 and message in out.stderr


def test_values_typer_decides_still_work(tmp_path):
    out = _cli("run", "-m", str(tmp_path / "m.gguf"), "-p", "x", "-n", "1e0")  # not plain: typer's adapter refuses
    assert out.returncode == 2 and "Invalid value for '-n'" in out.stderr
    out = _cli("run", "-m", str(tmp_path / "m.gguf"), "-p", "x", "-n", "٣")  # a non-ASCII digit: typer's call
    assert "Invalid value for '-n'" in out.stderr or "no such file" in out.stderr
