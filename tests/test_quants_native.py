"""quants.native: the row kernels `llamatool quantize` loads without Numba write the same
bytes as the registry's Numba kernels (themselves checked against ggml elsewhere)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from llamatool.errors import LlamatoolError
from llamatool.quants import native
from llamatool.quants.registry import all_types, dequantize, quantize

from .conftest import needs_saved_code

TYPES = [t for t in all_types() if t.family is not None and t.name != "F32"]
# IQ2_XXS, IQ2_XS and IQ1_S cannot be made without quantization weights (ggml asserts them):
# there is no plain row quantizer to load, only the dequantizer
VERBS = {t.name: ("quantize", "dequantize") if t.can_quantize else ("dequantize",) for t in TYPES}
# IQ2_S's and IQ1_M's search tables are too big for constants: their row quantizers are Python
# functions passing them to a kernel, so Numba runs those (their dequantizers are saved)
NOT_SAVED = {("IQ2_S", "quantize"), ("IQ1_M", "quantize")}


def rows_for(t, n_rows=7, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = max(256, t.block_size) * 2
    x = (0.02 * rng.standard_normal((n_rows, n))).astype(np.float32)
    x[1] = 0.0  # an all-zero row
    x[2, :: 7] *= 50  # outliers
    x[3] = 1.0  # a constant row
    return x


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_native_kernels_write_the_registry_bytes(t):
    x = rows_for(t)
    if t.can_quantize:
        expected = quantize(t, x)
        got = np.empty_like(expected)
        native.row_kernel(t, "quantize")(x, got)
        assert np.array_equal(got, expected)
    else:
        expected = np.random.default_rng(1).integers(0, 256, (x.shape[0], t.row_bytes(x.shape[1])), dtype=np.uint8)
        blocks = expected.reshape(x.shape[0], -1, t.type_size)
        blocks[:, :, :2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)  # each block's leading d: finite
        with pytest.raises(LlamatoolError, match="not supported"):
            native.row_kernel(t, "quantize")
    back = np.empty_like(x)
    native.row_kernel(t, "dequantize")(expected, back)
    assert np.array_equal(back.view(np.uint32), dequantize(t, expected).view(np.uint32))


@needs_saved_code
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_every_kernel_is_saved_as_object_code(t):
    """A kernel that calls a function the loader cannot link (such as the C helper behind
    Numba's reshape) is not saved, and every `llamatool quantize` then imports Numba."""
    for verb, (src, dst) in (("quantize", (np.float32, np.uint8)), ("dequantize", (np.uint8, np.float32))):
        if verb not in VERBS[t.name] or (t.name, verb) in NOT_SAVED:
            continue
        native.row_kernel(t, verb)  # builds the object code if it is not there yet
        assert native._native_rows(f"{verb}_{t.name.lower()}", src, dst) is not None, verb


def test_nonfinite_counter():
    count = native.nonfinite_counter()
    x = np.zeros((3, 64), np.float32)
    assert count(x) == 0
    x[1, 3], x[2, 0], x[2, 9] = np.nan, np.inf, -np.inf
    assert count(x) == 3


@needs_saved_code  # the ctypes entry points check; Numba's own dispatcher types its arguments itself
def test_kernels_check_their_arrays():
    q = native.row_kernel("Q8_0", "quantize")
    with pytest.raises(LlamatoolError, match="internal error"):
        q(np.zeros((2, 32), np.float64), np.zeros((2, 34), np.uint8))
    with pytest.raises(LlamatoolError, match="rows in"):
        q(np.zeros((2, 32), np.float32), np.zeros((3, 34), np.uint8))


def test_unsupported_type_is_a_clear_error():
    with pytest.raises(LlamatoolError, match="quantizing to IQ2_XXS tensors is not supported"):
        native.row_kernel("IQ2_XXS", "quantize")


LOAD_CHILD = """
import sys, numpy as np
from llamatool.quants import native
x = np.linspace(-1, 1, 2 * 256, dtype=np.float32).reshape(2, 256)
out = np.empty((2, 144), np.uint8)
native.row_kernel("Q4_K", "quantize")(x, out)
print("numba" in sys.modules or "llvmlite" in sys.modules, out.tobytes().hex())
"""


@needs_saved_code
def test_a_built_kernel_loads_without_numba(tmp_path):
    env_run = lambda: subprocess.run([sys.executable, "-c", LOAD_CHILD], capture_output=True, text=True, check=True).stdout.split()  # noqa: E731
    env_run()  # builds (or finds) the object code
    numba_loaded, hexbytes = env_run()
    assert numba_loaded == "False"
    x = np.linspace(-1, 1, 2 * 256, dtype=np.float32).reshape(2, 256)
    assert bytes.fromhex(hexbytes) == quantize("Q4_K", x).tobytes()


def test_without_object_code_numba_runs_the_kernel(monkeypatch):
    monkeypatch.setattr(native, "_read", lambda key, package=None: None)
    monkeypatch.setattr(native, "_build", lambda *a: None)
    native.row_kernel.cache_clear()
    try:
        kernel = native.row_kernel("Q5_1", "quantize")
        x = rows_for(native.ggml_type("Q5_1"))
        out = np.empty((x.shape[0], x.shape[1] // 32 * 24), np.uint8)
        kernel(x, out)
        assert type(kernel).__name__ != "function"  # the Numba dispatcher itself
        assert np.array_equal(out, quantize("Q5_1", x))
    finally:
        native.row_kernel.cache_clear()
