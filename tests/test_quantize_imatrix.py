"""`quantize --imatrix` against llama-quantize --imatrix (LLAMA_CPP_BIN): byte-identical files
for every preset whose types an importance matrix changes, on the default model (requantized
from Q4_1, its Q5_0/Q8_0 fallbacks included) and on a generated model with rows of 256 and
768. The imatrix is synthetic (random positive weights for every matrix): quantize must
only use the same one as llama-quantize, whatever made it."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from llamatool.gguf_io import GGUFReader
from llamatool.imatrix_file import Entry, Imatrix, write_gguf
from llamatool.quants.weighted import BLOCK, quantize_weighted

from .conftest import llama_cpp_binary, llamatool, load_script
from .quant_reference import finite_rows, first_difference, ggml  # noqa: F401  (ggml: a fixture)
from .test_quantize import MODELS

PRESETS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S",
           "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0",
           "Q2_K_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ1_S", "IQ1_M"]  # fmt: skip


def synthetic_imatrix(model: Path, out: Path, seed: int = 0) -> Path:  # noqa: F821
    """Random positive weights for every 2-D matrix of model (token_embd.weight aside: never
    an input llama-imatrix measures)."""
    rng = np.random.default_rng(seed)
    m = Imatrix(datasets=["synthetic.txt"], chunk_count=2, chunk_size=256)
    with GGUFReader(model) as r:
        for t in r.tensors:
            if len(t.ne) >= 2 and t.ne[1] > 1 and t.name != "token_embd.weight":
                m.entries[t.name] = Entry((rng.gamma(0.5, 2.0, t.ne[0]) * 512).astype(np.float32), np.array([512], np.int64))
    write_gguf(m, out, force=True)
    return out


@pytest.fixture(scope="module")
def llama_quantize():
    return llama_cpp_binary(load_script("llamacpp_bin").find_binary, "llama-quantize")


@pytest.fixture(scope="module")
def models(default_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("imatrix-quantize")
    generated = MODELS["gqa4"].write(folder / "gqa4.gguf")
    return {
        "default": (default_model, synthetic_imatrix(default_model, folder / "default.imatrix.gguf")),
        "gqa4": (generated, synthetic_imatrix(generated, folder / "gqa4.imatrix.gguf")),
    }


def _both(llama_quantize, model, imatrix, out_dir, preset, *extra):
    ours, theirs = out_dir / f"ours-{preset}.gguf", out_dir / f"theirs-{preset}.gguf"
    r = llamatool("quantize", "--allow-requantize", "--imatrix", imatrix, *extra, model, ours, preset)
    assert r.returncode == 0, r.stderr
    ref = subprocess.run([llama_quantize, "--allow-requantize", "--imatrix", imatrix, *map(str, extra), model, theirs, preset],
                         capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]
    return ours, theirs


@pytest.mark.parametrize("model", ["default", "gqa4"])
@pytest.mark.parametrize("preset", PRESETS)
def test_same_bytes_as_llama_quantize_with_the_imatrix(models, llama_quantize, tmp_path, model, preset):
    ours, theirs = _both(llama_quantize, *models[model], tmp_path, preset)
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize("option", ["--include-weights", "--exclude-weights"])
def test_include_and_exclude_weights_as_llama_quantize(models, llama_quantize, tmp_path, option):
    ours, theirs = _both(llama_quantize, *models["gqa4"], tmp_path, "Q4_K_M", option, "ffn_down", option, "attn_v")
    assert ours.read_bytes() == theirs.read_bytes()


def test_records_the_imatrix_in_the_metadata(models, tmp_path):
    model, imatrix = models["gqa4"]
    out = tmp_path / "q.gguf"
    assert llamatool("quantize", "--imatrix", imatrix, model, out, "Q4_K_M").returncode == 0
    with GGUFReader(out) as r:
        assert r.get("quantize.imatrix.file") == str(imatrix)
        assert r.get("quantize.imatrix.dataset") == "synthetic.txt"
        assert r.get("quantize.imatrix.entries_count") == 8 * 7 + 1
        assert r.get("quantize.imatrix.chunks_count") == 2


def test_the_weights_change_the_bytes():
    """Every weighted kernel gives other bytes with other weights (the imatrix is used)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    for name in BLOCK:
        a = quantize_weighted(name, x, np.ones(512, np.float32))
        b = quantize_weighted(name, x, rng.gamma(0.3, 3.0, 512).astype(np.float32))
        assert a.shape == b.shape and not np.array_equal(a, b), name


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"])
def test_weighted_kernels_match_ggml_c_on_edge_rows(ggml, name):  # noqa: F811
    """Kernel by kernel, on every finite edge case (zeros, ties, subnormals, huge values),
    with weights that vary over four decades and include zeros."""
    rng = np.random.default_rng(2)
    qw = (rng.gamma(0.5, 2.0, 512) * 10.0 ** rng.integers(-2, 2, 512)).astype(np.float32)
    qw[::37] = 0
    for case, x in finite_rows(512).items():
        ours, theirs = quantize_weighted(name, x, qw), ggml.quantize(name, x, qw)
        assert np.array_equal(ours, theirs), f"{case}: " + first_difference(ours, theirs, BLOCK[name][1])


def test_an_imatrix_for_another_model_is_a_one_line_error(models, tmp_path):
    model, _ = models["gqa4"]
    default_model, other = models["default"]
    r = llamatool("quantize", "--imatrix", other, model, tmp_path / "q.gguf", "Q4_K_M")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 1 and len(errors) == 1 and "another model" in errors[0], r.stderr
    assert not (tmp_path / "q.gguf").exists()


def test_include_and_exclude_together_are_refused(models, tmp_path):
    model, imatrix = models["gqa4"]
    r = llamatool("quantize", "--imatrix", imatrix, "--include-weights", "a", "--exclude-weights", "b", model, tmp_path / "q.gguf", "Q4_0")
    assert r.returncode == 1 and "cannot be used together" in r.stderr


@pytest.mark.parametrize("preset", ["IQ2_XXS", "IQ3_XXS", "Q2_K_S", "IQ1_M"])
def test_low_bit_presets_without_an_imatrix_are_refused_as_llama_quantize_does(models, tmp_path, preset):
    model, _ = models["gqa4"]
    r = llamatool("quantize", model, tmp_path / "q.gguf", preset)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 1 and len(errors) == 1 and "requires an imatrix" in errors[0], r.stderr
    assert not (tmp_path / "q.gguf").exists()


def test_iq3_s_presets_need_no_imatrix_and_match_llama_quantize(models, llama_quantize, tmp_path):
    model, _ = models["gqa4"]
    for preset in ("IQ3_S", "IQ3_M"):
        ours, theirs = tmp_path / f"ours-{preset}.gguf", tmp_path / f"theirs-{preset}.gguf"
        assert llamatool("quantize", model, ours, preset).returncode == 0
        ref = subprocess.run([llama_quantize, str(model), str(theirs), preset], capture_output=True, text=True, timeout=1800)
        assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]
        assert ours.read_bytes() == theirs.read_bytes(), preset
