"""`llamatool imatrix` against llama-imatrix (the vendored build, LLAMA_CPP_BIN), and the
imatrix file formats (GGUF and the legacy .dat) read and written as llama.cpp does.

Tolerance: the inputs of blk.0's Q/K/V (embedding and RMSNorm, before any attention) match
llama-imatrix's sums within 1e-4 relative, column by column. Every later input has been
through attention, which llama.cpp itself computes two ways that differ more than that
(flash attention accumulates V in f16; without it the softmax is rounded to f16): its own
two runs differ by up to ~5e-4 in a matrix's relative L2 distance. Ours is compared with
llama-imatrix -fa off and held to that same noise: per matrix L2 distance <= 1e-3, median
over matrices <= 1e-4.
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from llamatool.imatrix import counted_ranges
from llamatool.imatrix_file import Entry, Imatrix, read_imatrix, write_dat, write_gguf

from .conftest import ROOT, llama_cpp_binary, llamatool, load_script

TEXT = ROOT / "tests" / "data" / "shakespeare-sonnets.txt"
CTX, CHUNKS = 128, 3


@pytest.fixture(scope="module")
def llama_imatrix():
    return llama_cpp_binary(load_script("llamacpp_bin").find_binary, "llama-imatrix")


@pytest.fixture(scope="module")
def f32_model(default_model, tmp_path_factory):
    """The default model in F32: llama.cpp's matrix products then take F32 activations, as
    ours do, so the imatrix compares the activations and not two ways of quantizing them."""
    out = tmp_path_factory.mktemp("imatrix") / "smol-f32.gguf"
    r = llamatool("quantize", "--allow-requantize", default_model, out, "F32")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def both(f32_model, llama_imatrix, tmp_path_factory):
    folder = tmp_path_factory.mktemp("imatrix-runs")
    ours, theirs = folder / "ours.gguf", folder / "theirs.gguf"
    r = llamatool("imatrix", "-m", f32_model, "-f", TEXT, "-c", CTX, "--chunks", CHUNKS, "-o", ours)
    assert r.returncode == 0, r.stderr
    ref = subprocess.run([llama_imatrix, "-m", f32_model, "-f", TEXT, "-c", str(CTX), "--chunks", str(CHUNKS), "-o", theirs,
                          "-fa", "off", "-t", "2"], capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-2000:]
    return ours, theirs, r, ref


def test_sums_and_counts_match_llama_imatrix(both):
    ours, theirs, _, _ = both
    a, b = read_imatrix(ours), read_imatrix(theirs)
    assert sorted(a.entries) == sorted(b.entries) and len(a.entries) == 30 * 7
    assert (a.datasets, a.chunk_count, a.chunk_size) == (b.datasets, CHUNKS, CTX)
    distances = []
    for name, e in b.entries.items():
        mine = a.entries[name]
        assert mine.counts.tolist() == e.counts.tolist() == [CHUNKS * CTX], name
        x, y = mine.sums.astype(np.float64), e.sums.astype(np.float64)
        if name.startswith("blk.0.attn_") and name[11] in "qkv":
            np.testing.assert_allclose(x, y, rtol=1e-4, err_msg=name)
        distances.append(np.linalg.norm(x - y) / np.linalg.norm(y))
    assert max(distances) <= 1e-3 and float(np.median(distances)) <= 1e-4


def test_header_and_metadata_bytes_as_llama_imatrix(both):
    """Same keys, order, names and shapes: the files agree byte for byte up to the data."""
    from llamatool.gguf_io import GGUFReader

    ours, theirs, _, _ = both
    a, b = ours.read_bytes(), theirs.read_bytes()
    with GGUFReader(theirs) as r:
        data_start = r.data_offset
        assert len(r.tensors) == 2 * 30 * 7
    assert len(a) == len(b) and a[:data_start] == b[:data_start]


def test_prints_the_chunk_perplexities(both):
    _, _, r, ref = both
    ours, theirs = (re.findall(r"\[(\d+)\]([0-9.]+),", out) for out in (r.stdout, ref.stdout))
    assert [i for i, _ in ours] == [i for i, _ in theirs] == [str(i + 1) for i in range(CHUNKS)]
    assert [float(p) for _, p in ours] == pytest.approx([float(p) for _, p in theirs], rel=1e-3)
    assert f"{CHUNKS}/{CHUNKS} chunks" in r.stderr


def _sample(names=("blk.0.attn_q.weight", "blk.0.ffn_down.weight"), counts=(384, 384)) -> Imatrix:
    rng = np.random.default_rng(0)
    m = Imatrix(datasets=["text.txt"], chunk_count=3, chunk_size=128)
    for name, c in zip(names, counts):
        m.entries[name] = Entry(rng.random(64, dtype=np.float32) * 100, np.array([c], np.int64))
    return m


def test_dat_round_trip_is_lossless(tmp_path):
    m = _sample()
    write_dat(m, tmp_path / "a.dat", force=False)
    back = read_imatrix(tmp_path / "a.dat")
    assert back.is_legacy and back.chunk_count == 3 and back.datasets == ["text.txt"]
    for name, e in m.entries.items():
        ncall = 3
        np.testing.assert_array_equal(back.entries[name].sums, (e.sums / np.float32(384)) * np.float32(ncall))
        assert back.entries[name].counts.tolist() == [ncall]
    write_dat(back, tmp_path / "b.dat", force=False)
    assert (tmp_path / "a.dat").read_bytes() == (tmp_path / "b.dat").read_bytes()
    write_gguf(m, tmp_path / "a.gguf", force=False)
    again = read_imatrix(tmp_path / "a.gguf")
    for name, e in m.entries.items():
        np.testing.assert_array_equal(again.entries[name].sums, e.sums)
        assert again.entries[name].counts.tolist() == e.counts.tolist()


def test_combining_as_llama_imatrix_does(tmp_path, llama_imatrix, default_model):
    """--in-file of a GGUF and a .dat without a text: the same bytes as llama-imatrix's."""
    write_gguf(_sample(), tmp_path / "a.gguf", force=False)
    write_dat(_sample(counts=(256, 256)), tmp_path / "b.dat", force=False)
    args = ["--in-file", tmp_path / "a.gguf", "--in-file", tmp_path / "b.dat", "-c", 128]
    for fmt in ("gguf", "dat"):
        r = llamatool("imatrix", *args, "--output-format", fmt, "-o", tmp_path / f"ours.{fmt}")
        assert r.returncode == 0, r.stderr
        ref = subprocess.run([llama_imatrix, "-m", default_model, *map(str, args), "--output-format", fmt, "-o", tmp_path / f"theirs.{fmt}"],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert ref.returncode == 0, ref.stderr[-2000:]
        assert (tmp_path / f"ours.{fmt}").read_bytes() == (tmp_path / f"theirs.{fmt}").read_bytes(), fmt


def test_file_for_another_model_is_a_one_line_error(tmp_path, default_model):
    wrong_size = _sample()  # blk.0.attn_q.weight has 576 inputs, not 64
    write_gguf(wrong_size, tmp_path / "size.gguf", force=False)
    other = _sample(names=("blk.0.attn_q.weight.x", "blk.99.ffn_down.weight"))
    write_gguf(other, tmp_path / "names.gguf", force=False)
    for f, words in ((tmp_path / "size.gguf", "576"), (tmp_path / "names.gguf", "not a matrix")):
        r = llamatool("imatrix", "-m", default_model, "-f", TEXT, "--in-file", f, "-o", tmp_path / "o.gguf", "--chunks", 2)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and words in errors[0] and "another model" in errors[0], r.stderr
    assert not (tmp_path / "o.gguf").exists()


def test_damaged_files_are_one_line_errors(tmp_path):
    write_dat(_sample(), tmp_path / "a.dat", force=False)
    (tmp_path / "cut.dat").write_bytes((tmp_path / "a.dat").read_bytes()[:100])
    (tmp_path / "none.dat").write_bytes(struct.pack("<i", 0))
    for f in ("cut.dat", "none.dat"):
        r = llamatool("imatrix", "--in-file", tmp_path / f, "-o", tmp_path / "o.gguf")
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr


def test_too_short_a_text_is_refused(tmp_path, default_model):
    (tmp_path / "t.txt").write_text("just a few words")
    r = llamatool("imatrix", "-m", default_model, "-f", tmp_path / "t.txt", "-o", tmp_path / "o.gguf")
    assert r.returncode == 1 and "at least 1024 tokens" in r.stderr


def test_micro_batches_llama_imatrix_skips():
    """One sequence per batch (n_ctx > 1024): llama.cpp's 512-token micro-batches, and a tail
    of fewer than 16 tokens is not counted; shorter chunks share batches and all count."""
    assert counted_ranges(128) == [(0, 128, True)]
    assert counted_ranges(1030) == [(0, 512, True), (512, 1024, True), (1024, 1030, False)]
    assert counted_ranges(3000) == [(0, 512, True), (512, 1024, True), (1024, 1536, True), (1536, 2048, True),
                                    (2048, 2560, True), (2560, 3000, True)]  # fmt: skip


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_process_output_sums_the_final_norm_of_every_token(tmp_path):
    """--process-output on a model with its own output.weight: the sums are those of the
    final-norm hidden states (Model.hidden_states) of each chunk's tokens, BOS first; a tied
    output (token_embd.weight) is never collected, as llama-imatrix collects `output.weight` only."""
    from llamatool.imatrix import collect
    from llamatool.model import Model

    from .test_quantize import MODELS

    model = Model.load(MODELS["gqa4"].write(tmp_path / "gqa4.gguf"), n_ctx=64, n_threads=2)
    tokens = np.random.default_rng(3).integers(3, 512, 3 * 64)
    m = Imatrix()
    collect(model, tokens, 64, 3, m, process_output=True)
    expected = np.zeros(256)
    for i in range(3):
        chunk = tokens[i * 64 : (i + 1) * 64].copy()
        chunk[0] = model.tokenizer.bos_id
        expected += (model.hidden_states(chunk).astype(np.float64) ** 2).sum(0)
    e = m.entries["output.weight"]
    assert e.counts.tolist() == [192] and len(m.entries) == 8 * 7 + 1
    np.testing.assert_allclose(e.sums, expected, rtol=1e-5)
    plain = Imatrix()
    collect(model, tokens, 64, 3, plain)
    assert "output.weight" not in plain.entries
    np.testing.assert_array_equal(plain.entries["blk.3.ffn_down.weight"].sums, m.entries["blk.3.ffn_down.weight"].sums)
