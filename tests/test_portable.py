"""Off x86-64 Linux, and under LLAMATOOL_NO_NATIVE=1, llamatool runs its portable paths: no
saved machine code is built or loaded (Numba's own cache keeps the kernels), no AVX-512/VNNI
instruction is chosen from the CPU's features, and the portable build's compiled kernels are
cached apart from the native ones. llamatool.host decides all of it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from llamatool import host
from llamatool.cache import cache_dir

from .tiny_llama import TinyLlama, random_weights, write_gguf

# A child process that runs the command line on a host that claims another machine (what
# platform.machine() says on a Mac or a Raspberry Pi), or whose object loader fails.
_CHILD = textwrap.dedent(
    """
    import os, platform, runpy, sys
    from llamatool import elf_loader, host

    pretend = sys.argv.pop(1)
    if pretend == "loader-fails":
        def refuse(self, obj):
            raise elf_loader.ObjectError("simulated: this loader reads nothing")
        elf_loader.Loader.load = refuse
    elif pretend != platform.machine():
        def forbidden(self, obj):  # a real non-x86 host could not run the x86 objects of this cache
            print("saved machine code loaded on a", pretend, "host", file=sys.stderr)
            os._exit(3)
        elf_loader.Loader.load = forbidden
        host.machine = platform.machine = lambda: pretend
    sys.argv = ["llamatool"] + sys.argv[1:]
    runpy.run_module("llamatool", run_name="__main__")
    """
)


def _cli(pretend: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CHILD, pretend, *map(str, args)], capture_output=True, text=True,
                          timeout=1200, env={**os.environ, **(env or {})})  # fmt: skip


def _native_objects() -> dict:
    folder = cache_dir() / "native"
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*.o")} if folder.is_dir() else {}


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory):
    spec = TinyLlama()
    return write_gguf(tmp_path_factory.mktemp("portable") / "tiny-f32.gguf", spec, random_weights(spec), "F32").path


@pytest.fixture(scope="module")
def reference_reply(default_model):
    """What `run` answers on this machine's default paths (native where they are on)."""
    proc = _cli(host.machine(), "run", "-m", default_model, "-p", "Hello", "-n", "6", "--temp", "0")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("pretend", ["aarch64", "arm64", "loader-fails"])
def test_quantize_and_run_twice_without_a_traceback(pretend, tiny_f32, default_model, reference_reply, tmp_path):
    """macOS arm64 and Linux aarch64 (Numba's cache only), and an object loader that fails
    (ObjectError must fall back to compiling): two quantize runs and two run runs each,
    the second of each after the first could have saved code."""
    before = _native_objects()
    outputs = []
    for i in range(2):
        out = tmp_path / f"q4k-{i}.gguf"
        proc = _cli(pretend, "quantize", tiny_f32, out, "Q4_K")
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    for _ in range(2):
        proc = _cli(pretend, "run", "-m", default_model, "-p", "Hello", "-n", "6", "--temp", "0")
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stdout == reference_reply  # the same tokens as the native paths give
    if pretend != "loader-fails":
        assert _native_objects() == before  # nothing saved where it could not be loaded


def test_the_same_quantized_bytes_on_every_path(tiny_f32, tmp_path):
    """The portable build (its own kernels, compiled for x86-64-v3 here) writes the bytes the
    native one does."""
    native, portable = tmp_path / "native.gguf", tmp_path / "portable.gguf"
    assert _cli(host.machine(), "quantize", tiny_f32, native, "Q4_K").returncode == 0
    proc = _cli(host.machine(), "quantize", tiny_f32, portable, "Q4_K", env={host.NO_NATIVE_ENV: "1"})
    assert proc.returncode == 0, proc.stderr
    assert portable.read_bytes() == native.read_bytes()


_PROBE = textwrap.dedent(
    """
    import numba
    from llamatool import host
    from llamatool.kernels import matmul, simd
    from llamatool.quants import native
    print(numba.config.CPU_NAME, simd._VNNI_512, simd._VNNI_256, host.saved_code(), native._private() is not None)
    print(matmul.call_rows._cache._cache_path)
    """
)


def _probe(env) -> list[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU_")}  # this process's own target
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=600,
                          env={**inherited, **env})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_no_native_forces_the_portable_paths_and_its_own_cache():
    forced = _probe({host.NO_NATIVE_ENV: "1"})
    default = _probe({host.NO_NATIVE_ENV: "0"})
    assert forced[1:5] == ["False", "False", "False", "False"]  # no VNNI, no saved code
    expected_cpu = host.PORTABLE_X86_CPU if host.machine().lower() in ("x86_64", "amd64") else "None"
    if expected_cpu != "None" and not all(host._host_features().get(f) for f in ("avx2", "fma", "f16c")):
        expected_cpu = "None"  # an x86-64 below x86-64-v3 compiles for itself (never above the host)
    assert forced[0] == expected_cpu and default[0] == "None"
    assert "kernels-portable-" in forced[5] and "kernels-native-" in default[5]  # never the same compiled code
    x86_64_linux = sys.platform.startswith("linux") and host.machine().lower() in ("x86_64", "amd64")
    assert default[3] == default[4] == str(x86_64_linux)


def test_the_probe_decides_in_one_place(monkeypatch):
    monkeypatch.setattr(host, "_host_features", lambda: {"sse2": True, "f16c": True, "avx512f": True, "avx512vnni": True,
                                                          "avx512vl": True, "gfni": True})
    monkeypatch.setattr(host, "machine", lambda: "x86_64")
    monkeypatch.delenv(host.NO_NATIVE_ENV, raising=False)
    assert host.features() == host.Features(x86=True, f16c=True, vnni_512=True, vnni_256=True, avx512=True, gfni=True)
    assert host.saved_code() == sys.platform.startswith("linux") and host.cache_flavour() == "native"
    for value in ("1", "yes"):
        monkeypatch.setenv(host.NO_NATIVE_ENV, value)
        assert host.features() == host.Features(x86=True, f16c=True, vnni_512=False, vnni_256=False)
        assert not host.saved_code() and host.cache_flavour() == "portable"
        assert host.numba_target() is None  # no AVX2 in these features: compile for the host itself
    monkeypatch.setenv(host.NO_NATIVE_ENV, "0")
    assert host.cache_flavour() == "native"
    monkeypatch.setattr(host, "machine", lambda: "aarch64")
    monkeypatch.setattr(host, "_host_features", lambda: {"neon": True, "fp-armv8": True})
    assert not host.saved_code() and host.features() == host.Features(False, False, False, False)


def test_amx_tiles_only_where_granted_and_not_turned_off(monkeypatch):
    """host.amx_int8 decides, and gemm.packed_entry keeps the kinds with two scales per chunk
    (HALVES: tile products of 32 weights cannot split them) on vpdpbusd."""
    from llamatool.kernels import gemm

    monkeypatch.setattr(host, "machine", lambda: "x86_64")
    monkeypatch.setattr(host, "_tile_data_granted", lambda: True)
    monkeypatch.delenv(host.NO_NATIVE_ENV, raising=False)
    monkeypatch.delenv(host.NO_AMX_ENV, raising=False)
    assert host.amx_int8() == sys.platform.startswith("linux")
    monkeypatch.setenv(host.NO_AMX_ENV, "1")
    assert not host.amx_int8()
    monkeypatch.setenv(host.NO_AMX_ENV, "0")
    monkeypatch.setenv(host.NO_NATIVE_ENV, "1")
    assert not host.amx_int8()
    monkeypatch.delenv(host.NO_NATIVE_ENV)
    monkeypatch.setattr(host, "_tile_data_granted", lambda: False)
    assert not host.amx_int8()
    assert gemm.packed_entry(gemm.PLAIN | gemm.NIBBLES, True) == f"packed_rows_amx_{gemm.PLAIN | gemm.NIBBLES}"
    assert gemm.packed_entry(gemm.HALVES | gemm.NIBBLES, True) == f"packed_rows_{gemm.HALVES | gemm.NIBBLES}"
    assert gemm.packed_entry(gemm.F16_SUMS, False) == f"packed_rows_{gemm.F16_SUMS}"
