"""LoRA adapters without torch: convert-lora's output, adapters at run time against a float64
numpy model with the merged weights, export-lora against llama-export-lora, and the refusals.

The adapters are PEFT's file layout written with numpy (tests/lora_factory.py); the reference
tier (test_lora_reference.py) checks convert-lora byte for byte against the vendored
convert_lora_to_gguf.py and the runtime against PEFT itself, on adapters peft made.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from llamatool.errors import LlamatoolError
from llamatool.gguf_io import GGUFReader, GGUFWriter
from llamatool.lora.convert import LoraConvertOptions, convert_lora
from llamatool.lora.export import export_lora
from llamatool.model import Model

from .conftest import ROOT, llama_cpp_binary, load_script
from .lora_factory import ALL_LINEAR, PeftLora, deltas, merge, write_base_config, write_peft_adapter
from .tiny_llama import TinyLlama, numpy_forward, permute, random_weights, unpermute, write_gguf

PROMPT = [256, 84, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114, 111, 119, 110]
SPEC = TinyLlama(n_layer=2, n_head=4, n_head_kv=2)


def relative_error(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _convert(folder, out, **kw):
    return convert_lora(folder, LoraConvertOptions(outfile=out, progress=False, **kw))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An F32 and a Q8_0 base, their HF config, and two converted adapters (the second one
    also on the untied embeddings and output)."""
    root = tmp_path_factory.mktemp("lora")
    weights = random_weights(SPEC)
    base = {q: write_gguf(root / f"base-{q}.gguf", SPEC, weights, q) for q in ("F32", "Q8_0")}
    hf = write_base_config(root / "hf", SPEC)
    one = write_peft_adapter(root / "one", SPEC, rank=4, alpha=8, base=hf)
    two = write_peft_adapter(root / "two", SPEC, rank=8, alpha=4, seed=2, targets=("q_proj", "v_proj", "down_proj"),
                             embeddings=True, lm_head=True, base=hf)
    files = {name: _convert(lora.folder, root / f"{name}.gguf").output for name, lora in (("one", one), ("two", two))}
    return {"root": root, "weights": weights, "base": base, "hf": hf, "lora": {"one": one, "two": two}, "files": files}


# --- convert-lora ---------------------------------------------------------------------------------


def test_convert_lora_layout(tiny):
    r = GGUFReader(tiny["files"]["two"])
    keys = list(r.fields)
    assert keys[:3] == ["general.architecture", "general.type", "adapter.type"]
    assert keys[-2:] == ["adapter.lora.alpha", "general.quantization_version"]
    assert r.get("general.type") == "adapter" and r.get("adapter.type") == "lora" and r.get("adapter.lora.alpha") == 4.0
    assert "general.file_type" not in r.fields  # the reference writes none for an adapter
    lora = tiny["lora"]["two"]
    a, b = lora.pairs["model.layers.1.self_attn.q_proj.weight"]
    ta, tb = r.tensor("blk.1.attn_q.weight.lora_a"), r.tensor("blk.1.attn_q.weight.lora_b")
    assert ta.type.name == "F32" and ta.ne == (SPEC.n_embd, 8) and tb.ne == (8, SPEC.n_embd)
    np.testing.assert_array_equal(ta.values(), a)
    np.testing.assert_array_equal(tb.values(), permute(b, SPEC.n_head))  # Q rows in ggml's RoPE order
    a, b = lora.pairs["model.embed_tokens.weight"]
    np.testing.assert_array_equal(r.tensor("token_embd.weight.lora_a").values(), a.T)  # gathered by token
    np.testing.assert_array_equal(r.tensor("token_embd.weight.lora_b").values(), b)
    # pairs in the order of PEFT's sorted names (lm_head < model.embed_tokens < model.layers.0.mlp ...)
    bases = ["output", "token_embd"] + [f"blk.{i}.{m}" for i in range(SPEC.n_layer) for m in ("ffn_down", "attn_q", "attn_v")]
    assert [t.name for t in r.tensors] == [f"{b}.weight.lora_{s}" for b in bases for s in "ab"]


def test_convert_lora_q8_0_falls_back_to_f16_for_partial_blocks(tiny, tmp_path):
    out = _convert(tiny["lora"]["one"].folder, tmp_path / "q8.gguf", outtype="q8_0").output
    types = {t.name: t.type.name for t in GGUFReader(out).tensors}
    assert types["blk.0.ffn_up.weight.lora_a"] == "Q8_0"  # rows of n_embd: whole blocks
    assert types["blk.0.ffn_up.weight.lora_b"] == "F16"  # rows of rank 4: not
    assert types["blk.0.ffn_down.weight.lora_a"] == "Q8_0"


def test_convert_lora_reads_f16_and_bf16_adapters(tiny, tmp_path):
    for dtype in ("F16", "BF16"):
        lora = write_peft_adapter(tmp_path / dtype, SPEC, rank=4, dtype=dtype, base=tiny["hf"], targets=("o_proj",))
        out = _convert(lora.folder, tmp_path / f"{dtype}.gguf", outtype="auto").output
        t = GGUFReader(out).tensor("blk.0.attn_output.weight.lora_a")
        assert t.type.name == dtype
        np.testing.assert_array_equal(t.values(), lora.pairs["model.layers.0.self_attn.o_proj.weight"][0])


def test_rslora_alpha_is_corrected_with_a_note(tiny, tmp_path):
    lora = write_peft_adapter(tmp_path / "rs", SPEC, rank=16, alpha=8, base=tiny["hf"], config_extra={"use_rslora": True})
    proc = subprocess.run([sys.executable, "-m", "llamatool", "convert-lora", str(lora.folder), "--outfile", str(tmp_path / "rs.gguf")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "use_rslora" in proc.stderr and "alpha*sqrt(16)" in proc.stderr
    assert GGUFReader(tmp_path / "rs.gguf").get("adapter.lora.alpha") == pytest.approx(8 * math.sqrt(16))


def _edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"alpha_pattern": {"q_proj": 4}}, "alpha_pattern"),
        ({"use_rslora": True, "rank_pattern": {"q_proj": 8}}, "rank_pattern"),
        ({"peft_type": "IA3"}, "not a LoRA adapter"),
        ({"r": 0}, "r must be a positive integer"),
        ({"base_model_name_or_path": "meta-llama/Llama-3.2-1B"}, "give the base model's folder with --base"),
    ],
)
def test_convert_lora_refusals(tiny, tmp_path, change, message):
    lora = write_peft_adapter(tmp_path / "a", SPEC, rank=4, base=tiny["hf"])
    _edit_config(lora.folder, **change)
    with pytest.raises(LlamatoolError, match=message):
        _convert(lora.folder, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_convert_lora_refuses_pickles_unread(tiny, tmp_path):
    lora = write_peft_adapter(tmp_path / "a", SPEC, rank=4, base=tiny["hf"])
    (lora.folder / "adapter_model.safetensors").unlink()
    (lora.folder / "adapter_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(LlamatoolError, match="pickled adapter weights are not supported"):
        _convert(lora.folder, tmp_path / "out.gguf")


def test_convert_lora_refuses_tied_embeddings_and_mismatched_shapes(tmp_path):
    tied = TinyLlama(n_layer=2, tied=True)
    hf = write_base_config(tmp_path / "hf", tied)
    lora = write_peft_adapter(tmp_path / "emb", tied, rank=4, embeddings=True, targets=(), base=hf)
    with pytest.raises(LlamatoolError, match="tied embeddings"):
        _convert(lora.folder, tmp_path / "out.gguf")
    other = write_peft_adapter(tmp_path / "other", TinyLlama(n_layer=2, n_embd=128), rank=4, base=hf)
    with pytest.raises(LlamatoolError, match="do not fit the base"):
        _convert(other.folder, tmp_path / "out.gguf")
    deeper = write_peft_adapter(tmp_path / "deep", TinyLlama(n_layer=3), rank=4, base=hf)
    with pytest.raises(LlamatoolError, match="not a matrix of a LlamaForCausalLM"):
        _convert(deeper.folder, tmp_path / "out.gguf")


def test_convert_lora_keeps_existing_output_without_force(tiny, tmp_path):
    out = tmp_path / "x.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(LlamatoolError, match="exists"):
        _convert(tiny["lora"]["one"].folder, out)
    assert out.read_bytes() == b"keep me"


# --- at run time ------------------------------------------------------------------------------------


@pytest.mark.parametrize("adapters", [[("one", 1.0)], [("one", 0.5)], [("one", 1.0), ("two", 0.5)]], ids=["1.0", "0.5", "two"])
def test_runtime_logits_equal_the_merged_model(tiny, adapters):
    """F32 base + adapters at run time = a float64 reference on W + scale*alpha/r*B.A."""
    base = tiny["base"]["F32"]
    model = Model.load(base.path, n_threads=2, lora=[(tiny["files"][n], s) for n, s in adapters])
    ours = model.eval(PROMPT, all_logits=True)
    merged = merge(base.weights, [(tiny["lora"][n], s) for n, s in adapters])
    expected = numpy_forward(SPEC, merged, PROMPT)
    # f16 KV cache and queries (llama.cpp's) put the F32 base ~1e-3 of the range from float64
    assert relative_error(ours, expected) < 3e-3
    assert relative_error(numpy_forward(SPEC, base.weights, PROMPT), expected) > 0.1  # the adapters matter
    assert (ours.argmax(1) == expected.argmax(1)).all()


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_runtime_with_f16_and_q8_0_adapters(tiny, tmp_path, outtype):
    """An F16 adapter is held as halves, a Q8_0 one (lora_b falls back to F16) as float32:
    both give the model their own (rounded) values stand for."""
    lora = tiny["lora"]["two"]
    path = _convert(lora.folder, tmp_path / f"{outtype}.gguf", outtype=outtype).output
    r = GGUFReader(path)
    names = {"token_embd": "model.embed_tokens", "output": "lm_head"}
    stored = {}
    for hf_name in lora.pairs:
        if hf_name.startswith("model.layers."):
            _, _, i, module, proj, _ = hf_name.split(".")
            gguf = f"blk.{i}." + {"q_proj": "attn_q", "v_proj": "attn_v", "down_proj": "ffn_down"}[proj]
        else:
            gguf = next(g for g, h in names.items() if hf_name.startswith(h))
        a, b = r.tensor(gguf + ".weight.lora_a").values(), r.tensor(gguf + ".weight.lora_b").values()
        a = a.T if gguf == "token_embd" else a
        b = unpermute(b, SPEC.n_head) if gguf.endswith("attn_q") else b
        stored[hf_name] = (a, b)
    rounded = PeftLora(lora.folder, stored, lora.alpha, lora.rank)
    base = tiny["base"]["F32"]
    ours = Model.load(base.path, n_threads=2, lora=[(path, 0.8)]).eval(PROMPT, all_logits=True)
    expected = numpy_forward(SPEC, merge(base.weights, [(rounded, 0.8)]), PROMPT)
    assert relative_error(ours, expected) < 3e-3


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
def test_runtime_over_a_quantized_base(tiny, qtype):
    """The low-rank terms are added to the quantized product, as llama.cpp adds them: the
    file's own weights with ggml's activation rounding, plus B.(A.x) on the unrounded x."""
    base = write_gguf(tiny["root"] / f"base-{qtype}.gguf", SPEC, tiny["weights"], qtype)
    plain = Model.load(base.path, n_threads=2).eval(PROMPT, all_logits=True)
    own_error = relative_error(plain, numpy_forward(SPEC, base.weights, PROMPT, ggml_types=base.types))
    ours = Model.load(base.path, n_threads=2, lora=[tiny["files"]["one"]]).eval(PROMPT, all_logits=True)
    expected = numpy_forward(SPEC, base.weights, PROMPT, ggml_types=base.types, deltas=deltas([(tiny["lora"]["one"], 1.0)]))
    # float32 sums flip an 8-bit activation rounding here and there: the base alone is
    # own_error away from its reference; the adapter moves the logits by far more than 2e-2
    assert relative_error(ours, expected) < own_error + 2e-2
    assert relative_error(plain, expected) > 0.1


def test_runtime_decode_matches_prompt_batch(tiny):
    """Token by token (the decode path) gives the prompt batch's logits (F32 base: the two
    paths differ only in the order of float32 sums)."""
    base = tiny["base"]["F32"]
    model = Model.load(base.path, n_threads=2, lora=[(tiny["files"]["two"], 0.7)])
    batch = model.eval(PROMPT, all_logits=True)
    model.reset()
    steps = np.stack([model.eval([t]) for t in PROMPT])
    np.testing.assert_allclose(steps, batch, atol=1e-4 * np.abs(batch).max())


def test_merged_then_run_equals_runtime(tiny, tmp_path):
    base = tiny["base"]["F32"]
    lora = [(tiny["files"]["one"], 1.0), (tiny["files"]["two"], 0.5)]
    merged = export_lora(base.path, lora, tmp_path / "merged.gguf").output
    at_runtime = Model.load(base.path, n_threads=2, lora=lora).eval(PROMPT, all_logits=True)
    after_merge = Model.load(merged, n_threads=2).eval(PROMPT, all_logits=True)
    per_token = [relative_error(a, b) for a, b in zip(after_merge, at_runtime)]
    # (W + BA).x and W.x + B.(A.x) differ by float32 roundings, which now and then flip the
    # rounding of a query or a cached key/value to F16 (a step of 2^-11 of that value): on
    # this model two merges summed in different orders differ by up to 1.2e-4 themselves.
    # Measured: median 1.1e-5, largest 1.8e-4 (16 tokens)
    assert np.median(per_token) < 5e-5 and max(per_token) < 5e-4, per_token


def _adapter_gguf(path, arch="llama", tensors=()):
    with GGUFWriter(path, force=True) as w:
        w.add_field("general.architecture", arch)
        w.add_field("general.type", "adapter")
        w.add_field("adapter.type", "lora")
        w.add_field("adapter.lora.alpha", 1.0)
        for name, values in tensors:
            w.add_tensor_info(name, "F32", tuple(reversed(values.shape)))
        for name, values in tensors:
            w.write_tensor(name, values.astype(np.float32))
    return path


def test_runtime_refuses_adapters_that_do_not_fit(tiny, tmp_path):
    base = tiny["base"]["F32"].path
    E = SPEC.n_embd
    ok = [("blk.0.attn_v.weight.lora_a", np.ones((2, E))), ("blk.0.attn_v.weight.lora_b", np.ones((128, 2)))]
    cases = {
        "is for architecture 'qwen2'": _adapter_gguf(tmp_path / "arch.gguf", "qwen2", ok),
        "do not fit the model's": _adapter_gguf(tmp_path / "shape.gguf", "llama", [ok[0], ("blk.0.attn_v.weight.lora_b", np.ones((64, 2)))]),
        "which base-F32.gguf does not have": _adapter_gguf(tmp_path / "missing.gguf", "llama",
                                                           [(n.replace("blk.0", "blk.7"), v) for n, v in ok]),
        "has no lora_b": _adapter_gguf(tmp_path / "half.gguf", "llama", ok[:1]),
        "not a LoRA adapter": base,
    }
    for message, path in cases.items():
        with pytest.raises(LlamatoolError, match=message):
            Model.load(base, n_threads=1, lora=[path])


def test_runtime_refuses_embedding_lora_on_a_tied_model(tmp_path):
    tied = TinyLlama(n_layer=1, tied=True)
    base = write_gguf(tmp_path / "tied.gguf", tied, random_weights(tied), "F32").path
    adapter = _adapter_gguf(tmp_path / "emb.gguf", "llama", [("token_embd.weight.lora_a", np.ones((tied.vocab, 2))),
                                                             ("token_embd.weight.lora_b", np.ones((tied.n_embd, 2)))])
    with pytest.raises(LlamatoolError, match="tied embeddings"):
        Model.load(base, n_threads=1, lora=[adapter])


def test_cli_lora_options(tiny):
    """run --lora / --lora-scaled: scale 0 is the base model, a bad value a usage error."""
    base, one = tiny["base"]["F32"].path, tiny["files"]["one"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*extra):
        cmd = [sys.executable, "-m", "llamatool", "run", "-m", str(base), "-p", "The quick", "-n", "8", "--temp", "0",
               "--no-display-prompt", "-t", "2", *map(str, extra)]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, env=env)

    plain, zero, full = run(), run("--lora-scaled", one, "0"), run("--lora", one)
    assert plain.returncode == zero.returncode == full.returncode == 0, full.stderr
    assert zero.stdout == plain.stdout and full.stdout != plain.stdout
    bad = run("--lora-scaled", one, "x")
    assert bad.returncode == 2 and "SCALE must be a number" in bad.stderr
    missing = run("--lora", ROOT / "no-such.gguf")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and missing.stderr.count("\n") == 1


# --- export-lora against llama-export-lora ------------------------------------------------------------


def _llama_export_lora(tmp_path, base, lora, out):
    binary = llama_cpp_binary(load_script("llamacpp_bin").find_binary, "llama-export-lora")
    args = [str(binary), "-m", str(base), "-o", str(out), "-t", "2"]
    for path, scale in lora:
        args += ["--lora", str(path)] if scale == 1.0 else ["--lora-scaled", f"{path}:{scale}"]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def general_adapters(tiny):
    """Random adapters (products B.A not exact in float32, so the order of the sums shows) of
    ranks that take each of ggml's paths on an AVX2 and on an AVX-512 CPU: tinyBLAS (rank a
    multiple of the vector), ggml_vec_dot_f32's one-by-one leftovers (4, 8 on AVX-512), its
    4-vector steps plus leftovers (72); the second also on the embeddings and output."""
    root = tiny["root"]
    out = {}
    for rank, seed, kw in ((4, 3, {}), (8, 4, {"embeddings": True, "lm_head": True}), (16, 5, {}), (72, 6, {"embeddings": True})):
        lora = write_peft_adapter(root / f"general-{rank}", SPEC, rank=rank, alpha=16, seed=seed, base=tiny["hf"], **kw)
        out[rank] = _convert(lora.folder, root / f"general-{rank}.gguf").output
    return out


@pytest.mark.parametrize("base_type", ["F32", "Q8_0"])
def test_export_lora_is_identical_to_llama_export_lora(tiny, general_adapters, tmp_path, base_type):
    """Byte for byte, one adapter of each rank, and two at once (llama-export-lora merges
    several only if they adapt the same tensors: the same file at two scales)."""
    from llamatool.host import ggml_f32_lanes

    if not ggml_f32_lanes():
        pytest.skip("ggml's summation order is modelled for x86-64 with AVX2 or AVX-512 only")
    base = tiny["base"][base_type].path
    cases = [[(general_adapters[r], 1.0)] for r in general_adapters] + [[(general_adapters[8], 0.5), (general_adapters[8], 0.25)]]
    for lora in cases:
        ref = _llama_export_lora(tmp_path, base, lora, tmp_path / "ref.gguf")
        ours = export_lora(base, lora, tmp_path / "ours.gguf", force=True).output
        assert ours.read_bytes() == ref.read_bytes(), lora


def test_export_lora_products_are_summed_in_ggml_order():
    """Without llama.cpp: the tinyBLAS path (rank a multiple of the lanes) sums each lane's
    fused multiply-adds, then the lanes as a halving tree; vec_dot's leftovers one by one.
    Values chosen so that other orders round differently."""
    from llamatool.kernels.ggml_dot import ggml_f32_products

    big = np.float32(2.0**24)  # big + 1 rounds back to big in float32
    # rank 16 on 8 lanes: lane 0 holds fma(1, 1, big) = big, lane 1 holds -big; the tree adds
    # them last: 0, where the exact sum and a sum in index order (big - big + 1) give 1
    x = np.zeros((4, 16), np.float32)
    x[:, 0], x[:, 1], x[:, 8] = big, -big, 1
    y = np.ones((2, 16), np.float32)
    out = np.empty((2, 4), np.float32)
    ggml_f32_products(x, y, 8, 8, out)
    assert (out == 0).all()
    # rank 3 (vec_dot leftovers, one by one with fma): ((big + 1) - big) in float32 = 0
    x3 = np.array([[big, 1, -big]] * 4, np.float32)
    y3 = np.ones((2, 3), np.float32)
    out3 = np.empty((2, 4), np.float32)
    ggml_f32_products(x3, y3, 8, 8, out3)
    assert (out3 == 0).all()  # the exact sum would be 1
    # AVX-512's leftovers: half a loop vector of them is a vectorized epilogue (rounded
    # products added in order: 8 where GCC's loops are 16 wide, 4 where it prefers 256-bit
    # vectors), fewer are fused multiply-adds. (1 + 2^-12)^2 rounds to 1 + 2^-11, so after
    # -(1 + 2^-11) the rounded product leaves 0 and the fused one the 2^-24 it dropped
    e = np.float32(1 + 2.0**-12)
    for loop_lanes, rank, expected in ((16, 8, 0.0), (16, 7, 2.0**-24), (8, 4, 0.0), (8, 3, 2.0**-24)):
        x8 = np.zeros((4, rank), np.float32)
        x8[:, 0], x8[:, 1] = -(1 + 2.0**-11), e
        y8 = np.zeros((2, rank), np.float32)
        y8[:, 0], y8[:, 1] = 1, e
        out8 = np.empty((2, 4), np.float32)
        ggml_f32_products(x8, y8, 16, loop_lanes, out8)
        assert (out8 == np.float32(expected)).all(), (loop_lanes, rank)


def test_export_lora_to_a_preset(tiny, tmp_path):
    """--outtype PRESET: the merge, quantized as `llamatool quantize` quantizes it."""
    from llamatool.quant_rules import QuantizeOptions
    from llamatool.quantize import quantize_model

    base, lora = tiny["base"]["F32"].path, [(tiny["files"]["one"], 1.0)]
    out = export_lora(base, lora, tmp_path / "q.gguf", outtype="q4_k_m").output
    assert GGUFReader(out).tensor("blk.0.attn_q.weight").type.name == "Q4_K" and not list(tmp_path.glob(".*tmp"))
    merged = export_lora(base, lora, tmp_path / "f.gguf").output
    ref = quantize_model(merged, tmp_path / "ref.gguf", QuantizeOptions(preset="Q4_K_M"), progress=False).output
    assert out.read_bytes() == ref.read_bytes()


def test_export_lora_refusals(tiny, tmp_path):
    base = tiny["base"]["F32"].path
    with pytest.raises(LlamatoolError, match="needs at least one adapter"):
        export_lora(base, [], tmp_path / "x.gguf")
    with pytest.raises(LlamatoolError, match="is a LoRA adapter, not a base model"):
        export_lora(tiny["files"]["one"], [tiny["files"]["one"]], tmp_path / "x.gguf")
    (tmp_path / "x.gguf").write_bytes(b"keep")
    with pytest.raises(LlamatoolError, match="exists"):
        export_lora(base, [tiny["files"]["one"]], tmp_path / "x.gguf")
    assert (tmp_path / "x.gguf").read_bytes() == b"keep"


def test_all_linear_targets_are_the_families_matrices():
    assert set(ALL_LINEAR) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_perplexity_bench_and_serve_take_adapters(tiny, tmp_path):
    """perplexity and bench run with --lora-scaled (scale 0: the base's numbers); serve
    refuses an adapter that does not fit in one line, before it listens."""
    base, one = tiny["base"]["F32"].path, tiny["files"]["one"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "llamatool", *map(str, args)], capture_output=True, text=True, env=env)

    ppl = {s: cli("perplexity", "-m", base, "-f", text, "-c", 64, "--chunks", 2, "-t", 2, "--lora-scaled", one, s) for s in ("0", "1")}
    plain = cli("perplexity", "-m", base, "-f", text, "-c", 64, "--chunks", 2, "-t", 2)
    assert all(p.returncode == 0 for p in (*ppl.values(), plain)), ppl["1"].stderr
    final = {k: p.stdout.strip().splitlines()[-1] for k, p in {**ppl, "plain": plain}.items()}
    assert final["0"] == final["plain"] and final["1"] != final["plain"]
    bench = cli("bench", "-m", base, "-p", 0, "-n", 4, "-r", 1, "-t", 2, "-o", "json", "--lora", one)
    assert bench.returncode == 0 and json.loads(bench.stdout)[0]["n_gen"] == 4, bench.stderr
    serve = cli("serve", "-m", base, "--port", 0, "--lora", tiny["files"]["two"].with_name("nothing.gguf"))
    assert serve.returncode == 1 and serve.stderr.startswith("error: ") and serve.stderr.count("\n") == 1
    assert "nothing.gguf: no such file" in serve.stderr


def test_kl_divergence_against_llama_perplexity_with_the_adapter(tmp_path):
    """An F16 base with an F16 adapter applied at run time, teacher-forced against the
    llama-perplexity binary's base file for the same model and adapter: mean KLD at most 1e-4
    and the same top token on at least 99% of positions."""
    import re
    from dataclasses import replace

    from llamatool.convert import ConvertOptions, convert_model

    from .hf_factory import CORPUS, FIXTURES, write_checkpoint

    binary = llama_cpp_binary(load_script("llamacpp_bin").find_binary, "llama-perplexity")
    spec = replace(FIXTURES["llama3-bpe"], hidden=256, intermediate=512, dtype="float32", shards=1)
    folder = write_checkpoint(tmp_path / "hf", spec)
    (tmp_path / "f16").mkdir()
    f16 = convert_model(folder, ConvertOptions(outtype="f16", outfile=tmp_path / "f16", progress=False)).output
    shapes = TinyLlama(n_embd=256, n_ff=512, n_layer=spec.layers, n_head=spec.heads, n_head_kv=spec.kv_heads)
    lora = write_peft_adapter(tmp_path / "adapter", shapes, rank=8, alpha=16, base=folder)
    adapter = _convert(lora.folder, tmp_path / "adapter.gguf", outtype="f16").output
    text, base = tmp_path / "text.txt", tmp_path / "base.kld"
    text.write_text(CORPUS * 6, encoding="utf-8")
    ref = subprocess.run([str(binary), "-m", str(f16), "--lora-scaled", f"{adapter}:0.75", "-f", str(text), "-c", "128",
                          "-b", "128", "-t", "2", "--kl-divergence-base", str(base)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-2000:]
    ours = subprocess.run([sys.executable, "-m", "llamatool", "perplexity", "-m", str(f16), "--lora-scaled", str(adapter), "0.75",
                           "-f", str(text), "-c", "128", "-b", "128", "-t", "2", "--kl-divergence-base", str(base), "--kl-divergence"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert ours.returncode == 0, ours.stderr[-2000:]
    out = ours.stdout + ours.stderr
    mean_kld = float(re.search(r"Mean\s+KLD:\s+(-?[\d.]+)", out).group(1))
    same_top = float(re.search(r"Same top p:\s+([\d.]+)", out).group(1))
    assert mean_kld <= 1e-4 and same_top >= 99.0, (mean_kld, same_top)
    # and the adapter matters: without it, llamatool is far from llama.cpp's adapted model
    plain = subprocess.run([sys.executable, "-m", "llamatool", "perplexity", "-m", str(f16), "-f", str(text), "-c", "128",
                            "-b", "128", "-t", "2", "--kl-divergence-base", str(base), "--kl-divergence"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert float(re.search(r"Mean\s+KLD:\s+(-?[\d.]+)", plain.stdout + plain.stderr).group(1)) > 100 * max(mean_kld, 1e-6)
    # greedy continuations: llama-server with the adapter at 0.75 against Model.load(lora=...)
    prompt = Model.load(f16, n_ctx=128).tokenizer.encode(CORPUS[:200])[:48]
    theirs = _llama_server_greedy(f16, adapter, 0.75, prompt, 32)
    model = Model.load(f16, n_ctx=128, n_threads=2, lora=[(adapter, 0.75)])
    ours, logits = [], model.eval(prompt)
    for _ in range(32):
        ours.append(int(logits.argmax()))
        logits = model.eval([ours[-1]])
    assert ours == theirs


def _llama_server_greedy(model, adapter, scale, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens after the prompt ids from llama.cpp's llama-server with the adapter."""
    import httpx

    from .server_harness import LlamaServerProcess

    binary = llama_cpp_binary(load_script("llamacpp_bin").find_binary, "llama-server")
    with LlamaServerProcess(binary, "-m", str(model), "--lora-scaled", f"{adapter}:{scale}", "-np", "1", "-c", "128", "-t", "2") as server:
        reply = httpx.post(server.url + "/completion", timeout=120, json={
            "prompt": prompt, "n_predict": n, "temperature": 0, "top_k": 1, "samplers": ["top_k"],
            "return_tokens": True, "cache_prompt": False, "ignore_eos": True}).json()  # fmt: skip
    return [int(t) for t in reply["tokens"]]
