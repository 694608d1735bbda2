"""What keeps `llamatool quantize` short: the work it skips and the state it leaves.
(Its speed is measured by scripts/compare_quantize.py, not here.)"""

from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from llamatool import gguf_io
from llamatool.cli import main
from llamatool.gguf_io import Field, GGUFReader, StringArrayField, ValueType
from llamatool.quantize import AHEAD_BYTES, QuantizeOptions, _Converter, quantize_model

from .conftest import needs_saved_code
from .gguf_factory import write_gguf


def test_quantizing_never_decodes_the_vocabulary(default_model, tmp_path, monkeypatch):
    """~100k strings are only copied: decoding them would cost every run ~20 ms."""
    with GGUFReader(default_model) as reader:
        expected = reader.get("tokenizer.ggml.tokens")[:5]

    def refuse(raw, heads):
        raise AssertionError("a string array was decoded")

    monkeypatch.setattr(gguf_io, "_decode_strings", refuse)
    out = tmp_path / "q8.gguf"
    quantize_model(default_model, out, QuantizeOptions("Q8_0", allow_requantize=True), progress=False)
    monkeypatch.undo()
    with GGUFReader(out) as reader:
        assert reader.get("tokenizer.ggml.tokens")[:5] == expected


def test_string_arrays_decode_on_first_use_even_after_close(tmp_path):
    strings = ["", "a", "\u2581é", "nul\0inside", "last"]
    path = write_gguf(tmp_path / "s.gguf", [("test.strings", strings, ValueType.ARRAY, ValueType.STRING)], {})
    reader = GGUFReader(path)
    field = reader.fields["test.strings"]
    reader.close()  # the strings were copied out of the mapping
    assert isinstance(field, StringArrayField)
    assert field.nbytes == sum(8 + len(s.encode()) for s in strings)
    assert field.value == strings
    assert field == Field(ValueType.ARRAY, strings, ValueType.STRING) == field
    assert field != Field(ValueType.ARRAY, strings[:-1], ValueType.STRING)


def test_metadata_values_are_made_when_looked_up(default_model, monkeypatch):
    with GGUFReader(default_model) as reader:
        monkeypatch.setattr(gguf_io, "_decode_strings", lambda raw, heads: pytest.fail("decoded"))
        meta = reader.metadata
        assert meta.get("general.architecture") == "llama" and len(meta) == len(reader.fields)
        assert list(meta) == list(reader.fields) and "tokenizer.ggml.tokens" in meta


def test_the_command_leaves_the_collector_on(default_model, tmp_path):
    """It runs without the collector (nothing to collect in a one-shot command), then turns
    it back on, nothing frozen, for whoever called main() with arguments."""
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    with pytest.raises(SystemExit) as done:
        main(["quantize", "--dry-run", str(default_model), "Q8_0"])
    assert done.value.code in (0, None)
    assert gc.isenabled() and gc.get_freeze_count() == frozen


FREEZE_CHILD = """
import atexit, gc
from llamatool.cli import main
atexit.register(lambda: print("frozen", gc.get_freeze_count()))
main()
"""


def test_the_process_command_freezes_the_heap_before_exit(default_model):
    """As the process's own command line (main() without argv), the objects left at the
    end are frozen, so that the interpreter's final collections do not walk them."""
    proc = subprocess.run([sys.executable, "-c", FREEZE_CHILD, "quantize", "--dry-run", str(default_model), "Q8_0"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split("frozen")[-1]) > 10_000


THREADS_CHILD = """
import os, sys
from llamatool.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(len(os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux's /proc")
def test_no_blas_thread_pool(default_model):
    """numpy's OpenBLAS would start a pool of threads that spin on the cores the kernels use."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    run = lambda *args: subprocess.run([sys.executable, "-c", THREADS_CHILD, *args], capture_output=True,  # noqa: E731
                                       text=True, check=True, env=env).stdout.split()[-1]  # fmt: skip
    assert run("quantize", "--dry-run", str(default_model), "Q8_0") == "1"


def test_output_buffers_are_reused_within_the_memory_in_flight():
    conv = _Converter([], {}, 0)
    a = conv._buffer(1000)
    conv._give_back(a)
    assert conv._buffer(800) is a  # the smallest spare that holds it
    conv._give_back(a)
    assert conv._buffer(2000) is not a and conv.spare == [a]
    for _ in range(3):
        conv._give_back(np.empty(AHEAD_BYTES // 2, np.uint8))
    assert sum(b.size for b in conv.spare) <= AHEAD_BYTES  # the smallest are let go first
    assert all(b.size == AHEAD_BYTES // 2 for b in conv.spare)


RUNTIME_CHILD = """
from llamatool.quants import native
native._engine()
print(native._folder() / f"{native._RUNTIME_KEY}.o")
"""


@needs_saved_code
def test_runtime_shims_are_saved_and_a_damaged_copy_rebuilt(tmp_path):
    env = {**os.environ, "LLAMATOOL_CACHE_DIR": str(tmp_path)}
    run = lambda: subprocess.run([sys.executable, "-c", RUNTIME_CHILD], capture_output=True, text=True,  # noqa: E731
                                 check=True, env=env).stdout.strip()  # fmt: skip
    saved = run()
    blob = open(saved, "rb").read()
    head, _, obj = blob.partition(b"\n")
    assert head.startswith(b"sha256:" + hashlib.sha256(obj).hexdigest().encode())
    with open(saved, "wb") as f:
        f.write(blob[: len(blob) // 2])  # damaged: loading it would crash the process
    assert run() == saved
    assert open(saved, "rb").read() == blob
