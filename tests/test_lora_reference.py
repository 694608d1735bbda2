"""LoRA adapters made by peft itself (the reference tier: torch, transformers, peft).

    convert-lora     byte-identical to the vendored llama.cpp convert_lora_to_gguf.py for
                     f32/f16/bf16/q8_0, on adapters of each family llamatool converts, from
                     float32 and bfloat16 adapters, with and without embedding LoRA
    at run time      logits of an F32 base + adapters equal PEFT's in transformers (scales
                     1.0 and 0.5, two adapters at once); rsLoRA scaled as PEFT scales it;
                     Gemma 2, Gemma 3 and Phi-3 (fused qkv_proj and gate_up_proj) on the
                     checkpoints of tests/hf_factory.py, converted by llamatool
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llamatool.lora.convert import LoraConvertOptions, convert_lora
from llamatool.model import Model

from .conftest import missing_reference
from .hf_factory import FIXTURES, write_checkpoint
from .test_convert import VENDOR
from .tiny_llama import TinyLlama, write_gguf

pytestmark = pytest.mark.reference

torch = pytest.importorskip("torch", reason="the reference tier needs torch (pip install -e '.[reference]')")
transformers = pytest.importorskip("transformers", reason="the reference tier needs transformers")
peft = pytest.importorskip("peft", reason="the LoRA reference tests need peft (pip install -e '.[reference]')")

PROMPT = [256, 84, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114, 111, 119, 110]
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
OUTTYPES = ["f32", "f16", "bf16", "q8_0"]

_RUN_REFERENCE = """
import os, runpy, sys
vendor = sys.argv[1]
sys.path[:0] = [os.path.join(vendor, "gguf-py"), vendor]
sys.argv = ["convert_lora_to_gguf.py", *sys.argv[2:]]
runpy.run_path(os.path.join(vendor, "convert_lora_to_gguf.py"), run_name="__main__")
"""

# family -> (config class, extra config keys); every family of llamatool.arch
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", {"pad_token_id": None, "bos_token_id": 1, "eos_token_id": 2}),
}


def _hf_model(family: str, spec: TinyLlama):
    config_class, model_class, extra = FAMILIES[family]
    torch.manual_seed(spec.seed)
    cfg = {**spec.hf_config(), **extra, "initializer_range": 1 / np.sqrt(spec.n_embd)}
    if family != "llama":
        cfg.pop("mlp_bias", None)
        cfg.pop("attention_bias", None)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def make_adapter(root: Path, base_model, name: str, *, targets=LINEAR, rank=8, alpha=16, seed=1, rslora=False,
                 dtype=None) -> Path:
    """A PEFT adapter on base_model (saved in root/base), random A and B (not PEFT's zero B)."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False,
                             use_rslora=rslora)
    if dtype is not None:  # a copy: the base stays float32 for the other tests
        import copy

        base_model = copy.deepcopy(base_model).to(dtype)
    model = peft.get_peft_model(base_model, config, adapter_name=name)
    model.save_pretrained(root / name, selected_adapters=[name])
    folder = root / name
    if (folder / name).is_dir():  # peft saves a non-default adapter in a subfolder
        folder = folder / name
    model.unload()  # the base model without LoRA layers, for the next adapter
    return folder


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """{family: (saved base folder, model)} for every family."""
    root = tmp_path_factory.mktemp("lora-bases")
    out = {}
    for family in FAMILIES:
        spec = TinyLlama(n_layer=2, n_head=4, n_head_kv=2, n_embd=128, n_ff=256, tied=family == "qwen3")
        model = _hf_model(family, spec)
        model.save_pretrained(root / family)
        out[family] = (root / family, getattr(transformers, FAMILIES[family][1]).from_pretrained(root / family).eval())
    return out


def run_reference(adapter: Path, base: Path, outtype: str, outfile: Path | None) -> Path:
    if not (VENDOR / "convert_lora_to_gguf.py").is_file():
        missing_reference(f"vendored convert_lora_to_gguf.py not found in {VENDOR}")
    args = [str(adapter), "--base", str(base), "--outtype", outtype] + (["--outfile", str(outfile)] if outfile else [])
    proc = subprocess.run([sys.executable, "-c", _RUN_REFERENCE, str(VENDOR), *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"convert_lora_to_gguf.py failed:\n{proc.stderr[-3000:]}")
    if outfile:
        return outfile
    return next(p for p in adapter.glob("*.gguf"))


@pytest.mark.parametrize("family,source", [*((f, "float32") for f in FAMILIES), ("llama", "bfloat16")])
def test_convert_lora_is_byte_identical(tmp_path, bases, family, source):
    base, model = bases[family]
    adapter = make_adapter(tmp_path, model, "adapter", dtype=torch.bfloat16 if source == "bfloat16" else None)
    for outtype in OUTTYPES:
        ref = run_reference(adapter, base, outtype, tmp_path / f"ref-{outtype}.gguf")
        ours = convert_lora(adapter, LoraConvertOptions(base=base, outtype=outtype, outfile=tmp_path / f"ours-{outtype}.gguf", progress=False))
        assert ours.output.read_bytes() == ref.read_bytes(), f"{family} {source} {outtype}"


def test_convert_lora_embeddings_and_default_name(tmp_path, bases):
    """LoRA on embed_tokens (lora_a stored transposed) and lm_head of an untied model; the
    file name the reference chooses when no --outfile is given."""
    base, model = bases["llama"]
    adapter = make_adapter(tmp_path, model, "embeddings", targets=["q_proj", "embed_tokens", "lm_head"], rank=4)
    ref = run_reference(adapter, base, "q8_0", None)
    ref_bytes, ref_name = ref.read_bytes(), ref.name
    ref.unlink()
    ours = convert_lora(adapter, LoraConvertOptions(base=base, outtype="q8_0", progress=False))
    assert ours.output.name == ref_name and ours.output.read_bytes() == ref_bytes


# --- at run time, against PEFT in transformers ---------------------------------------------------


def _peft_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([PROMPT])).logits[0].double().numpy()


def relative_error(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, bases):
    """An F32 GGUF of the llama base, two adapters as PEFT made them and as convert-lora wrote them."""
    root = tmp_path_factory.mktemp("lora-run")
    base, model = bases["llama"]
    spec = TinyLlama(n_layer=2, n_head=4, n_head_kv=2, n_embd=128, n_ff=256)
    weights = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    gguf = write_gguf(root / "base-f32.gguf", spec, weights, "F32").path
    adapters = {}
    for name, seed, rank, targets in (("first", 1, 8, LINEAR), ("second", 2, 4, ["q_proj", "v_proj", "down_proj", "lm_head"])):
        folder = make_adapter(root, model, name, seed=seed, rank=rank, targets=targets)
        out = convert_lora(folder, LoraConvertOptions(base=base, outfile=root / f"{name}.gguf", progress=False)).output
        adapters[name] = (folder, out)
    return model, gguf, adapters


def _peft_with(model, adapters: dict, scales: dict):
    """PEFT's model with the given adapters loaded and active at the given scales."""
    names = list(scales)
    pm = peft.PeftModel.from_pretrained(model, adapters[names[0]][0], adapter_name=names[0])
    for name in names[1:]:
        pm.load_adapter(adapters[name][0], adapter_name=name)
    pm.base_model.set_adapter(names)
    for module in pm.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            for name, scale in scales.items():
                if name in module.scaling:
                    module.set_scale(name, scale)
    return pm.eval()


@pytest.mark.parametrize("scales", [{"first": 1.0}, {"first": 0.5}, {"first": 1.0, "second": 0.5}], ids=["1.0", "0.5", "two"])
def test_runtime_logits_match_peft(llama_run, scales):
    model, gguf, adapters = llama_run
    base_logits = _peft_logits(model)
    pm = _peft_with(model, adapters, scales)
    expected = _peft_logits(pm)
    pm.unload()  # PEFT adapts the base model in place: take its LoRA layers out again
    ours = Model.load(gguf, n_threads=2, lora=[(adapters[n][1], s) for n, s in scales.items()]).eval(PROMPT, all_logits=True)
    # the F32 base alone is ~1e-3 of the logit range from transformers (llama.cpp's f16 KV
    # cache and queries); the adapters move the logits by a large part of the range
    assert relative_error(ours, expected) < 3e-3
    assert relative_error(base_logits, expected) > 0.1
    assert (ours.argmax(1) == expected.argmax(1)).all()


def test_rslora_is_scaled_as_peft_scales_it(tmp_path, bases):
    base, model = bases["llama"]
    spec = TinyLlama(n_layer=2, n_head=4, n_head_kv=2, n_embd=128, n_ff=256)
    weights = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    gguf = write_gguf(tmp_path / "base.gguf", spec, weights, "F32").path
    folder = make_adapter(tmp_path, model, "rsadapter", rank=16, alpha=8, rslora=True)
    out = convert_lora(folder, LoraConvertOptions(base=base, outfile=tmp_path / "rs.gguf", progress=False))
    assert out.config.alpha == pytest.approx(8 * 4)  # alpha * sqrt(r): llama.cpp's alpha/r is then PEFT's alpha/sqrt(r)
    pm = peft.PeftModel.from_pretrained(model, folder, adapter_name="rsadapter").eval()
    expected = _peft_logits(pm)
    pm.unload()
    ours = Model.load(gguf, n_threads=2, lora=[out.output]).eval(PROMPT, all_logits=True)
    assert relative_error(ours, expected) < 3e-3


# --- the families of tests/hf_factory.py's checkpoints: convert-lora and the run time ---------------

# family -> (checkpoint fixture, PEFT target modules): Phi-3's attention and gate|up are fused
CHECKPOINT_FAMILIES = {
    "gemma2": ("gemma2-spm", LINEAR),
    "gemma3": ("gemma3-spm", LINEAR),
    "phi3": ("phi3-spm", ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
}


@pytest.fixture(scope="module")
def checkpoint_bases(tmp_path_factory):
    """{family: (HF folder, transformers model, F32 GGUF converted by llamatool, targets)}."""
    from dataclasses import replace

    from llamatool.convert import ConvertOptions, convert_model

    root = tmp_path_factory.mktemp("lora-families")
    out = {}
    for family, (key, targets) in CHECKPOINT_FAMILIES.items():
        spec = replace(FIXTURES[key], name=FIXTURES[key].name + "-f32", dtype="float32", shards=1)
        folder = write_checkpoint(root / "hf", spec)
        (root / family).mkdir()
        gguf = convert_model(folder, ConvertOptions(outtype="f32", outfile=root / family, progress=False)).output
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        out[family] = (folder, model, gguf, targets)
    return out


@pytest.mark.parametrize("family", list(CHECKPOINT_FAMILIES))
def test_other_families_convert_and_run_as_peft(tmp_path, checkpoint_bases, family):
    """convert-lora byte for byte as convert_lora_to_gguf.py (f32/f16/bf16/q8_0), then the
    F32 base with the adapter at scale 0.5 against PEFT's model in transformers."""
    folder, model, gguf, targets = checkpoint_bases[family]
    adapter = make_adapter(tmp_path, model, "adapter", targets=targets, rank=8, alpha=16)
    for outtype in OUTTYPES:
        ref = run_reference(adapter, folder, outtype, tmp_path / f"ref-{outtype}.gguf")
        ours = convert_lora(adapter, LoraConvertOptions(base=folder, outtype=outtype, outfile=tmp_path / f"ours-{outtype}.gguf", progress=False))
        assert ours.output.read_bytes() == ref.read_bytes(), f"{family} {outtype}"
    ids = np.random.default_rng(7).integers(0, model.config.vocab_size, 16).tolist()
    with torch.no_grad():
        base_logits = model(torch.tensor([ids])).logits[0].double().numpy()
    pm = _peft_with(model, {"adapter": (adapter, None)}, {"adapter": 0.5})
    with torch.no_grad():
        expected = pm(torch.tensor([ids])).logits[0].double().numpy()
    pm.unload()
    # n_ctx = the prompt: Phi-3's LongRoPE takes its short factors, as transformers does for 16 tokens
    ours = Model.load(gguf, n_threads=2, n_ctx=len(ids), lora=[(tmp_path / "ours-f32.gguf", 0.5)]).eval(ids, all_logits=True)
    assert relative_error(ours, expected) < 3e-3, family
    assert relative_error(base_logits, expected) > 0.05
    assert (ours.argmax(1) == expected.argmax(1)).all()
