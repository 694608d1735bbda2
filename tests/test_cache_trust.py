"""The cache is not a way in (llamatool.cache): folders are made 0700, and a cache folder or
saved object that is not the user's own, or that group or others can write, is refused (code
is compiled in memory instead) with one line on stderr per process. Numba's cache folders get
the same checks. Changing owners needs root: those tests skip, saying so, for other users."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llamatool import cache, jit
from llamatool.elf_loader import Loader
from llamatool.quants import native
from llamatool.quants.registry import quantize

from .conftest import needs_saved_code
from .test_precompile import cached_helper_module

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user (os.chown) needs root")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache folder for this test, and a process that has not warned yet."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LLAMATOOL_CACHE_DIR", str(root))
    monkeypatch.setattr(cache, "_trusted", {})
    monkeypatch.setattr(cache, "_warned", [])
    return root


@pytest.fixture
def loads(monkeypatch):
    """Every object handed to the ELF loader in this test."""
    seen = []
    real = Loader.load

    def spy(self, obj):
        seen.append(obj)
        return real(self, obj)

    monkeypatch.setattr(Loader, "load", spy)
    monkeypatch.setattr(native, "_engine_made", [])  # a fresh engine: its runtime object is loaded through the spy
    return seen


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _save_object(key="quantize_test") -> tuple:
    """A real object saved as quants/native.py saves kernels (the runtime shims' machine code)."""
    obj = native._runtime_object()
    native._write(key, "llamatool_kernel_failed", obj)
    path = native._folder() / f"{key}.o"
    assert path.exists()
    return key, path


def _one_warning(err: str, why: str) -> None:
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("llamatool: warning:") and why in lines[0], err


def test_folders_and_objects_are_private_whatever_the_umask(fresh_cache):
    old = os.umask(0o002)
    try:
        folder = cache.private_folder("native", "x")
        assert cache.write_private(folder / "a.o", b"code")
    finally:
        os.umask(old)
    assert folder == fresh_cache / "native" / "x"
    for path in (fresh_cache, fresh_cache / "native", folder):
        assert _mode(path) == 0o700, path
    assert _mode(folder / "a.o") == 0o600


def test_an_own_folder_others_can_read_is_closed(fresh_cache, capsys):
    fresh_cache.mkdir(mode=0o755)
    os.chmod(fresh_cache, 0o755)  # as an older llamatool made it
    assert cache.private_folder("numba") is not None
    assert _mode(fresh_cache) == 0o700 and capsys.readouterr().err == ""


@as_root
@needs_saved_code
def test_a_folder_owned_by_another_user_is_refused(fresh_cache, loads, capsys):
    key, path = _save_object()
    folder = path.parent
    os.chown(folder, NOBODY, NOBODY)
    cache._trusted.clear()
    loads.clear()
    assert native._read(key) is None and native.cached_addresses(native._PACKAGE, [key]) is None
    assert loads == []  # nothing was handed to the loader
    _one_warning(capsys.readouterr().err, f"owned by uid {NOBODY}")


@needs_saved_code
def test_a_group_writable_folder_is_refused(fresh_cache, loads, capsys):
    key, path = _save_object()
    os.chmod(fresh_cache / "native", 0o770)
    cache._trusted.clear()
    loads.clear()
    assert native.cached_addresses(native._PACKAGE, [key]) is None and loads == []
    assert native._private() is None
    _one_warning(capsys.readouterr().err, "writable by its group")


@needs_saved_code
def test_a_world_writable_object_is_refused(fresh_cache, loads, capsys):
    key, path = _save_object()
    os.chmod(path, 0o666)
    loads.clear()
    assert native.cached_addresses(native._PACKAGE, [key]) is None and loads == []
    _one_warning(capsys.readouterr().err, "writable by others")


@as_root
@needs_saved_code
def test_an_object_replaced_by_another_user_is_refused(fresh_cache, loads, capsys):
    """Another user's object with a correct digest line: the digest is a truncation check,
    ownership is what keeps it out."""
    key, path = _save_object()
    replacement = path.with_name("planted")
    replacement.write_bytes(path.read_bytes())  # a well-formed object and digest
    os.chmod(replacement, 0o644)
    os.chown(replacement, NOBODY, NOBODY)
    os.replace(replacement, path)
    loads.clear()
    assert native._read(key) is None and native.cached_addresses(native._PACKAGE, [key]) is None and loads == []
    _one_warning(capsys.readouterr().err, f"owned by uid {NOBODY}")


def test_a_refused_numba_folder_is_not_given_to_numba(fresh_cache, capsys):
    os.makedirs(fresh_cache / "numba", mode=0o700)
    os.chmod(fresh_cache / "numba", 0o777)
    scratch = jit.numba_cache("quants-native-0123")
    assert not scratch.startswith(str(fresh_cache)) and _mode(scratch) == 0o700
    assert jit.numba_cache("kernels-native-0123") == scratch  # one scratch folder per process
    _one_warning(capsys.readouterr().err, "writable by others")


@as_root
def test_a_numba_folder_owned_by_another_user_is_refused(fresh_cache, capsys):
    folder = fresh_cache / "numba" / "kernels-native-0123"
    os.makedirs(folder, mode=0o700)
    os.chown(folder, NOBODY, NOBODY)
    assert not jit.numba_cache("kernels-native-0123").startswith(str(fresh_cache))
    _one_warning(capsys.readouterr().err, f"owned by uid {NOBODY}")


# A process whose whole cache is refused: every kernel it needs is compiled in memory,
# Numba caches in its scratch folder, and the warning is said once for all of them.
_REFUSED_CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    from llamatool.quants import native
    x = np.linspace(-1, 1, 2 * 256, dtype=np.float32).reshape(2, 256)
    out = {}
    for name, width in (("Q8_0", 272), ("Q4_K", 144)):
        q = np.empty((2, width), np.uint8)
        native.row_kernel(name, "quantize")(x, q)
        out[name] = q.tobytes().hex()
    print(native.nonfinite_counter()(x), out["Q8_0"], out["Q4_K"])
    from llamatool.quants.registry import ggml_type
    print(native._numba_kernel(ggml_type("Q8_0").family, "quantize_q8_0")._cache._cache_path)
    """
)


def test_a_refused_cache_warns_once_and_loads_nothing(tmp_path):
    root = tmp_path / "shared"
    root.mkdir()
    os.chmod(root, 0o777)  # a cache another user could have written into
    env = {**os.environ, "LLAMATOOL_CACHE_DIR": str(root)}
    proc = subprocess.run([sys.executable, "-c", _REFUSED_CHILD], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    _one_warning(proc.stderr, "writable by others")
    count, q8, q4k, numba_folder = proc.stdout.split()
    x = np.linspace(-1, 1, 2 * 256, dtype=np.float32).reshape(2, 256)
    assert int(count) == 0 and bytes.fromhex(q8) == quantize("Q8_0", x).tobytes()
    assert bytes.fromhex(q4k) == quantize("Q4_K", x).tobytes()
    assert not numba_folder.startswith(str(root))  # Numba was pointed elsewhere
    assert list(root.iterdir()) == []  # and nothing was written into the refused cache


# Numba's cache entries are pickles: one cut short must be compiled again, not end every later
# use of the function in an UnpicklingError traceback (llamatool.jit: a damaged entry is a miss).
_USE = "import cached_helper as m; print(m.first(2), sum(m.first.stats.cache_hits.values()))"


@pytest.mark.parametrize("damage", ["data", "index", "all"])
def test_a_damaged_numba_cache_entry_is_compiled_again(tmp_path, damage):
    env = cached_helper_module(tmp_path)

    def run():
        proc = subprocess.run([sys.executable, "-c", _USE], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        return proc.stdout.split()

    assert run() == ["7", "0"]
    assert run() == ["7", "1"]  # from the cache
    entries = [p for p in (tmp_path / "cache" / "numba").rglob("cached_helper.*")
               if damage == "all" or p.suffix == {"data": ".nbc", "index": ".nbi"}[damage]]
    assert len(entries) >= 2  # the kernel's and its link-only helper's
    for path in entries:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert run() == ["7", "0"]  # compiled again...
    assert run() == ["7", "1"]  # ...and its entry rewritten whole
