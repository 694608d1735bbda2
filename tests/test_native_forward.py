"""The forward pass as saved machine code (llamatool.native_forward): same logits as Numba's
worker, a warm `run` that never imports Numba, and a clean fallback when the saved code is
damaged or missing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llamatool import host, kernel_api, native_forward
from llamatool.errors import LlamatoolError
from llamatool.model import Model
from llamatool.quants import native

from .conftest import needs_saved_code
from .tiny_llama import TinyLlama, random_weights, write_gguf

PROMPT = [1, 504, 3458, 314, 4649, 28, 260, 1345, 42]


def _load(path, backend: str, monkeypatch, **kw) -> Model:
    monkeypatch.setenv(native_forward.BACKEND_ENV, backend)
    return Model.load(path, **kw)


@pytest.fixture(scope="module")
def saved_forward(default_model):
    """Make sure the default model's forward pass has saved machine code (the first load builds it)."""
    if not host.saved_code():
        pytest.skip("saved machine code is off by design here (LLAMATOOL_NO_NATIVE, or not x86-64 Linux)")
    model = Model.load(default_model, n_ctx=64)
    path = native._folder(kernel_api.KERNELS) / f"{model._forward_worker.key}.o"
    if model.forward_backend == "numba":
        assert path.exists(), "the first load must save the forward pass's machine code"
    return path


def _same_logits(path, monkeypatch, prompt, **kw):
    logits = {}
    for backend in ("native", "numba"):
        model = _load(path, backend, monkeypatch, **kw)
        assert model.forward_backend == backend
        logits[backend] = [model.eval(prompt, all_logits=True)] + [model.eval([t]) for t in (5, 17, 3)]
    for a, b in zip(logits["native"], logits["numba"]):
        np.testing.assert_array_equal(a, b)


def test_native_and_numba_logits_are_identical_on_the_default_model(default_model, saved_forward, monkeypatch):
    _same_logits(default_model, monkeypatch, PROMPT, n_ctx=128, n_threads=2)


@pytest.mark.parametrize("qtype, bias", [("Q4_K", False), ("F16", True)])
def test_native_and_numba_logits_are_identical_on_a_tiny_model(tmp_path, saved_forward, monkeypatch, qtype, bias):
    spec = TinyLlama(bias=bias)
    path = write_gguf(tmp_path / "tiny.gguf", spec, random_weights(spec), qtype).path
    # small batches: the prompt goes through several forward calls, two threads share each
    _same_logits(path, monkeypatch, list(range(3, 40)), n_ctx=96, n_threads=2, n_batch=16)


def test_forcing_native_without_saved_code_is_a_clear_error(default_model, monkeypatch):
    monkeypatch.setattr(native_forward, "_key", lambda spec: "forward-never-saved")
    monkeypatch.setenv(native_forward.BACKEND_ENV, "native")
    with pytest.raises(LlamatoolError, match="saved machine code"):  # none saved, or off here
        Model.load(default_model, n_ctx=64)


def test_unknown_backend_is_refused(default_model, monkeypatch):
    monkeypatch.setenv(native_forward.BACKEND_ENV, "fast")
    with pytest.raises(LlamatoolError, match="LLAMATOOL_FORWARD"):
        Model.load(default_model, n_ctx=64)


_CHILD = textwrap.dedent(
    """
    import runpy, sys
    sys.argv = ["llamatool"] + sys.argv[1:]
    try:
        runpy.run_module("llamatool", run_name="__main__")
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    sys.stdout.flush()
    print("numba imported:", "numba" in sys.modules, file=sys.stderr)
    print("llvmlite imported:", "llvmlite" in sys.modules, file=sys.stderr)
    sys.exit(code)
    """
)


def _run_cli(model_path, *extra, env=None):
    args = [sys.executable, "-c", _CHILD, "run", "-m", str(model_path), "-p", "Hello", "-n", "4", "--temp", "0", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def test_warm_run_imports_neither_numba_nor_llvmlite(default_model, saved_forward):
    warm = _run_cli(default_model)
    assert warm.returncode == 0, warm.stderr
    assert "numba imported: False" in warm.stderr
    assert "llvmlite imported: False" in warm.stderr  # saved machine code loads without LLVM too
    forced = _run_cli(default_model, env={native_forward.BACKEND_ENV: "numba"})
    assert "numba imported: True" in forced.stderr
    assert forced.stdout == warm.stdout and len(warm.stdout) > len("Hello")


def _check_backend(model_path) -> str:
    code = textwrap.dedent(
        f"""
        from llamatool.model import Model
        m = Model.load({str(model_path)!r}, n_ctx=64)
        print(m.forward_backend, int(m.eval([1, 504, 3458]).argmax()))
        """
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr  # a crash here is damaged machine code being run
    return child.stdout.split()


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_damaged_saved_code_is_built_again_before_it_runs(default_model, saved_forward, damage):
    good = saved_forward.read_bytes()
    try:
        if damage == "flip":
            bad = bytearray(good)
            bad[len(bad) // 2] ^= 0xFF
        elif damage == "truncate":
            bad = good[: len(good) // 2]
        elif damage == "garbage":
            bad = os.urandom(len(good))
        else:
            bad = b""
        saved_forward.write_bytes(bytes(bad))
        backend, token = _check_backend(default_model)  # a crash here: the damaged code was run
        assert backend == "native"  # refused, built again and run
        assert saved_forward.read_bytes() != bytes(bad)
        assert _check_backend(default_model) == ["native", token]
    finally:
        saved_forward.write_bytes(good)


def test_missing_saved_code_is_built_again(default_model, saved_forward):
    good = saved_forward.read_bytes()
    try:
        saved_forward.unlink()
        backend, token = _check_backend(default_model)
        assert backend == "native" and saved_forward.exists()
        assert _check_backend(default_model) == ["native", token]
    finally:
        saved_forward.write_bytes(good)


def test_layout_names_every_field_and_type():
    fw = kernel_api.load("forward")
    fields = {name: np.zeros(2, np.float32) for name in fw.Scratch._fields}
    spec = native_forward.layout((fw.Scratch(**fields), np.int64(3), np.float32(0.5), 7))
    assert spec[3][0][1:3] == ("Scratch", fw.Scratch._fields)
    assert spec[3][1:] == (("int", "<i8"), ("float", "<f4"), ("int", "<i8"))
    changed = {**fields, "x": np.zeros((2, 2), np.float32)}
    other = native_forward.layout((fw.Scratch(**changed), np.int64(3), np.float32(0.5), 7))
    assert native_forward._key(spec) != native_forward._key(other)  # a new layout never reads old code


def test_kernel_api_reads_the_compiled_modules_interface():
    fw = kernel_api.load("forward")
    assert "numba" not in fw.__dict__ and not hasattr(fw, "forward_worker")
    from llamatool.kernels import actquant, forward, sync, types

    assert fw.Scratch._fields == forward.Scratch._fields and fw.Net._fields == forward.Net._fields
    assert fw.N_LAYER_ROLES == forward.N_LAYER_ROLES and fw.phases_per_call(30) == forward.phases_per_call(30)
    assert kernel_api.load("sync").counters_size(7) == sync.counters_size(7)
    assert kernel_api.load("actquant").Activation._fields == actquant.Activation._fields
    assert kernel_api.load("types").SUPPORTED == types.SUPPORTED


def test_native_kernel_tables_match_the_compiled_ones(default_model, saved_forward):
    from llamatool.kernels.matmul import kernel_tables

    qtypes = Model.load(default_model, n_ctx=64).weights.matrix_types
    rows, dequant = native_forward.kernel_tables(qtypes)
    compiled_rows, compiled_dequant = kernel_tables(qtypes)
    assert (np.flatnonzero(rows).tolist(), np.flatnonzero(dequant).tolist()) == (
        np.flatnonzero(compiled_rows).tolist(), np.flatnonzero(compiled_dequant).tolist())


def test_warmup_saves_the_forward_pass(saved_forward):
    """On a machine where the forward pass has no saved code yet, `llamatool warmup` saves it
    (its trial model has the default model's argument layout, so the same object serves both)."""
    good = saved_forward.read_bytes()
    try:
        saved_forward.unlink()
        code = "from llamatool.warmup import compile_forward; print(compile_forward(2)[1])"
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
        assert child.returncode == 0, child.stderr
        assert child.stdout.split() == ["True"] and saved_forward.exists()
    finally:
        saved_forward.write_bytes(good)


@needs_saved_code
def test_a_failed_build_is_not_tried_again_until_warmup(monkeypatch):
    args = (np.zeros(4, np.float32), np.int64(2))  # a layout of its own: its own key
    marker = native._folder(kernel_api.KERNELS) / f"{native_forward._key(native_forward.layout(args))}.failed"
    calls = []

    def failing(spec, args):
        calls.append(spec)
        raise RuntimeError("no cfunc today")

    monkeypatch.setattr(native_forward, "_compile", failing)
    try:
        assert native_forward.build(args) is False and "no cfunc today" in marker.read_text()
        assert native_forward.build(args) is False and len(calls) == 1  # seconds saved on every later run
        native_forward.forget_failures()
        assert native_forward.build(args) is False and len(calls) == 2
    finally:
        marker.unlink(missing_ok=True)


def test_native_worker_keeps_no_caller_arrays_alive(default_model, saved_forward, monkeypatch):
    import gc
    import weakref

    model = _load(default_model, "native", monkeypatch, n_ctx=64, n_threads=2)
    logits = model.eval([1, 504, 3458], all_logits=True)
    ref = weakref.ref(logits)
    del logits
    gc.collect()
    assert ref() is None  # perplexity's all-logits arrays must not outlive their call


def test_kernel_api_takes_plain_names_from_sibling_modules(tmp_path):
    """A plain helper of forward.py may call a plain helper of another kernel module (as
    kv_cache_positions calls attention.cache_positions); compiled names stay out."""
    (tmp_path / "a.py").write_text(textwrap.dedent(
        """
        from numba import njit
        from .b import helper, compiled, STEP as B_STEP, unused
        from llamatool.kernels.c import scale

        DOUBLE = helper(2)

        def positions(n):
            return helper(n) + B_STEP * scale(1)

        @njit
        def kernel(x):
            return compiled(x)
        """))
    (tmp_path / "b.py").write_text(textwrap.dedent(
        """
        from numba import njit
        STEP = 32
        def helper(n):
            return -(-n // STEP) * STEP
        def unused():
            raise AssertionError
        @njit
        def compiled(x):
            return x
        """))
    (tmp_path / "c.py").write_text("def scale(x):\n    return 10 * x\n")
    a = kernel_api.load("a", folder=tmp_path)
    assert a.DOUBLE == 32 and a.positions(33) == 64 + 320
    assert not hasattr(a, "kernel") and not hasattr(a, "compiled") and not hasattr(a, "unused")
