"""`llamatool quantize` against llama-quantize: per-tensor types, whole files, the experience.

The reference is llama.cpp's own quantizer (llama_model_quantize in libllama, through
llama-cpp-python). Where it is installed, the tests run it on the same inputs and compare
plans and output files; tests/data/quantize_plans.json holds the plans it chose (written
by `python -m tests.test_quantize --write-plans`), so the rules are checked without it too.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest

from llamatool.errors import LlamatoolError
from llamatool.gguf_io import GGUFReader, ValueType
from llamatool.quant_rules import (
    LOW_BIT_PRESETS,
    PRESETS,
    QuantizeOptions,
    canonical_preset,
    llama_order,
    plan_types,
    preset_file_type,
    tensor_types,
)
from llamatool.quantize import parse_positional, quantize_model
from llamatool.quants.registry import ggml_type
from tests.conftest import llama_cpp_module, llamatool
from tests.gguf_factory import write_gguf

ROOT = Path(__file__).resolve().parent.parent
PLANS_JSON = Path(__file__).parent / "data" / "quantize_plans.json"
# The 1-3-bit presets (most need an imatrix) are compared with llama-quantize --imatrix in
# test_quantize_imatrix.py; their plans are not recorded here yet.
ALL_PRESETS = [p for p in PRESETS if p not in (*LOW_BIT_PRESETS, "IQ3_S", "IQ3_M")]
V = ValueType


# --- generated llama models -------------------------------------------------------------------


@dataclass(frozen=True)
class LlamaSpec:
    """A small llama-architecture GGUF as convert_hf_to_gguf lays it out."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    tied: bool = False
    n_expert: int = 0
    dtype: str = "F16"
    zeros: bool = False  # plan-only models: their values do not matter

    def metadata(self) -> list[tuple]:
        head_dim = self.n_embd // self.n_head
        tokens = ["<unk>", "<s>", "</s>"] + [f"tok{i}" for i in range(3, self.n_vocab)]
        fields = [
            ("general.architecture", "llama", V.STRING, None),
            ("general.type", "model", V.STRING, None),
            ("general.name", "Test Llama", V.STRING, None),
            ("general.file_type", {"F32": 0, "F16": 1, "BF16": 32}[self.dtype], V.UINT32, None),
            ("general.quantization_version", 2, V.UINT32, None),
            ("llama.block_count", self.n_layer, V.UINT32, None),
            ("llama.context_length", 2048, V.UINT32, None),
            ("llama.embedding_length", self.n_embd, V.UINT32, None),
            ("llama.feed_forward_length", self.n_ff, V.UINT32, None),
            ("llama.attention.head_count", self.n_head, V.UINT32, None),
            ("llama.attention.head_count_kv", self.n_head_kv, V.UINT32, None),
            ("llama.rope.freq_base", 10000.0, V.FLOAT32, None),
            ("llama.attention.layer_norm_rms_epsilon", 1e-5, V.FLOAT32, None),
            ("llama.rope.dimension_count", head_dim, V.UINT32, None),
            ("llama.vocab_size", self.n_vocab, V.UINT32, None),
        ]
        if self.n_expert:
            fields += [
                ("llama.expert_count", self.n_expert, V.UINT32, None),
                ("llama.expert_used_count", 2, V.UINT32, None),
            ]
        return fields + [
            ("tokenizer.ggml.model", "llama", V.STRING, None),
            ("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING),
            ("tokenizer.ggml.scores", -np.arange(self.n_vocab, dtype=np.float32), V.ARRAY, V.FLOAT32),
            ("tokenizer.ggml.token_type", np.array([2, 3, 3] + [1] * (self.n_vocab - 3), np.int32), V.ARRAY, V.INT32),
            ("tokenizer.ggml.bos_token_id", 1, V.UINT32, None),
            ("tokenizer.ggml.eos_token_id", 2, V.UINT32, None),
            ("tokenizer.ggml.add_bos_token", True, V.BOOL, None),
        ]

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, numpy shape) in convert_hf_to_gguf's order."""
        e, f, kv = self.n_embd, self.n_ff, self.n_embd // self.n_head * self.n_head_kv
        out = [("token_embd.weight", (self.n_vocab, e))]
        for i in range(self.n_layer):
            b = f"blk.{i}."
            out += [(b + "attn_norm.weight", (e,)), (b + "attn_q.weight", (e, e)), (b + "attn_k.weight", (kv, e))]
            out += [(b + "attn_v.weight", (kv, e)), (b + "attn_output.weight", (e, e)), (b + "ffn_norm.weight", (e,))]
            if self.n_expert:
                x = self.n_expert
                out += [(b + "ffn_gate_inp.weight", (x, e)), (b + "ffn_gate_exps.weight", (x, f, e))]
                out += [(b + "ffn_up_exps.weight", (x, f, e)), (b + "ffn_down_exps.weight", (x, e, f))]
            else:
                out += [(b + "ffn_gate.weight", (f, e)), (b + "ffn_up.weight", (f, e)), (b + "ffn_down.weight", (e, f))]
        out.append(("output_norm.weight", (e,)))
        if not self.tied:
            out.append(("output.weight", (self.n_vocab, e)))
        return out

    def write(self, path: Path, seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        tensors = {}
        for name, shape in self.shapes():
            if self.zeros:
                values = np.zeros(shape, np.float32)
            elif len(shape) == 1:
                values = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
            else:
                # Gaussian weights with a few outliers, as trained matrices have.
                values = 0.02 * rng.standard_normal(shape, dtype=np.float32)
                values.reshape(-1)[rng.integers(0, values.size, max(1, values.size // 4096))] *= 8
            tensors[name] = ("F32" if len(shape) == 1 else self.dtype, values)
        return write_gguf(path, self.metadata(), tensors)


MODELS = {
    # GQA 4 (8 query heads share 2 KV heads), untied output, F16 weights, rows of 256 and 768.
    "gqa4": LlamaSpec(n_layer=8, n_embd=256, n_ff=768, n_head=8, n_head_kv=2, n_vocab=512, dtype="F16"),
    # Multi-head attention, tied embeddings (no output.weight), BF16, rows of 512 and 1024.
    "mha-tied": LlamaSpec(n_layer=2, n_embd=512, n_ff=1024, n_head=8, n_head_kv=8, n_vocab=384, tied=True, dtype="BF16"),
    # Rows of 100 and 272 values: not even whole 32-blocks, so types fall back to F16. F32 weights.
    "odd-rows": LlamaSpec(n_layer=3, n_embd=100, n_ff=272, n_head=4, n_head_kv=2, n_vocab=300, dtype="F32"),
    # Eight experts (3-D expert tensors): the n_expert == 8 rules.
    "moe8": LlamaSpec(n_layer=4, n_embd=256, n_ff=512, n_head=8, n_head_kv=4, n_vocab=256, n_expert=8, zeros=True),
    # 80 layers with GQA: the shape llama.cpp calls a 70B, with its own attn_v rule.
    "70b": LlamaSpec(n_layer=80, n_embd=256, n_ff=256, n_head=8, n_head_kv=1, n_vocab=256, zeros=True),
}
E2E_MODELS = ["gqa4", "mha-tied", "odd-rows"]


def option_sets(model: str) -> list[tuple[str, dict]]:
    """The (preset, options) pairs whose plans are recorded for a model."""
    if model == "70b":
        return [(p, {}) for p in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M", "IQ4_XS", "Q8_0")]
    sets = [(p, {}) for p in ALL_PRESETS]
    sets += [(p, {"pure": True}) for p in ALL_PRESETS if ggml_type(PRESETS[p][1]).is_quantized]
    sets += [("Q4_K_M", {"leave_output_tensor": True}), ("Q6_K", {"leave_output_tensor": True})]
    sets += [("Q5_K_S", {"token_embedding_type": "F16"})]
    if model != "odd-rows":  # explicit block types do not fit its rows: llama-quantize crashes
        sets += [("Q4_K_M", {"output_tensor_type": "Q8_0"}), ("Q3_K_M", {"output_tensor_type": "Q4_0"})]
        sets += [("Q4_K_M", {"token_embedding_type": "Q8_0"})]
    if model == "smollm2":
        # tied embeddings: the output type reaches token_embd through the recipe, so it can fall back
        sets += [("Q4_K_M", {"output_tensor_type": "Q4_K"})]
    return sets


def options_id(preset: str, opts: dict) -> str:
    return preset + "".join(f"-{k}={v}" for k, v in opts.items())


# --- llama.cpp's quantizer (optional) --------------------------------------------------------------


def llama_quantize(inp: Path, out: Path, preset: str, **opts) -> dict:
    """Run llama.cpp's llama_model_quantize; returns {'rc', 'log', 'fallbacks'}."""
    llama_cpp = llama_cpp_module()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = preset_file_type(preset)
    params.nthread = 2
    params.allow_requantize = opts.get("allow_requantize", False)
    params.pure = opts.get("pure", False)
    params.quantize_output_tensor = not opts.get("leave_output_tensor", False)
    if opts.get("output_tensor_type"):
        params.output_tensor_type = ggml_type(opts["output_tensor_type"]).id
    if opts.get("token_embedding_type"):
        params.token_embedding_type = ggml_type(opts["token_embedding_type"]).id
    log: list[str] = []

    @llama_cpp.llama_log_callback
    def capture(level, text, user_data):
        log.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        rc = llama_cpp.llama_model_quantize(str(inp).encode(), str(out).encode(), ctypes.byref(params))
    finally:
        llama_cpp.llama_log_set(ctypes.cast(None, llama_cpp.llama_log_callback), ctypes.c_void_p(0))
    text = "".join(log)
    m = re.search(r"WARNING: (\d+) of \d+ tensor\(s\) required fallback", text)
    return {"rc": rc, "log": text, "fallbacks": int(m.group(1)) if m else 0}


def file_types(path: Path) -> dict[str, str]:
    with GGUFReader(path) as r:
        return {t.name: t.type.name for t in r.tensors}


# --- recorded plans -----------------------------------------------------------------------------


def model_description(path: Path) -> dict:
    """What the rules read: the metadata they use and every tensor's name, shape and type."""
    with GGUFReader(path) as r:
        arch = r.architecture
        keys = ["general.architecture"] + [
            f"{arch}.{k}"
            for k in ("block_count", "nextn_predict_layers", "expert_count", "attention.head_count", "attention.head_count_kv")
        ]
        meta = {k: r.get(k) for k in keys if r.get(k) is not None}
        meta = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in meta.items()}
        tensors = [[t.name, list(t.ne), t.type.name] for t in r.tensors]
    return {"metadata": meta, "tensors": tensors}


def spec_description(spec: LlamaSpec) -> dict:
    """model_description of a generated model, without writing it."""
    meta = {k: v for k, v, _, _ in spec.metadata() if k.startswith("general.arch") or "count" in k}
    tensors = [[name, list(reversed(shape)), "F32" if len(shape) == 1 else spec.dtype] for name, shape in spec.shapes()]
    return {"metadata": meta, "tensors": tensors}


def our_plan(model: dict, preset: str, opts: dict):
    return plan_types(
        [(name, tuple(ne)) for name, ne, _ in model["tensors"]],
        model["metadata"],
        QuantizeOptions(preset, **opts),
        current_types={name: t for name, _, t in model["tensors"]},
    )


# One character per type keeps the recorded plans small: a plan is a string in llama order.
TYPE_CODES = {"F32": "f", "F16": "h", "BF16": "b", "Q4_0": "4", "Q4_1": "5", "Q5_0": "6", "Q5_1": "7",
              "Q8_0": "8", "Q2_K": "B", "Q3_K": "C", "Q4_K": "D", "Q5_K": "E", "Q6_K": "F",
              "IQ4_NL": "n", "IQ4_XS": "x", "TQ1_0": "t", "TQ2_0": "u"}  # fmt: skip


def write_plans(out: Path = PLANS_JSON, workdir: Path | None = None) -> None:
    """Record llama-quantize's choice for every model and option set (needs llama-cpp-python)."""
    import tempfile

    workdir = Path(workdir or tempfile.mkdtemp(prefix="plans-"))
    inputs = {name: spec.write(workdir / f"{name}.gguf") for name, spec in MODELS.items()}
    inputs["smollm2"] = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    data = {
        "about": "types llama-quantize (llama.cpp in llama-cpp-python 0.3.36) chose; tests/test_quantize.py",
        "legend": {code: name for name, code in TYPE_CODES.items()},
        "models": {name: {"spec": asdict(spec)} for name, spec in MODELS.items()},
        "plans": [],
    }
    data["models"]["smollm2"] = model_description(inputs["smollm2"])
    for model, path in inputs.items():
        for preset, opts in option_sets(model):
            ref = workdir / "ref.gguf"
            ref.unlink(missing_ok=True)
            got = llama_quantize(path, ref, preset, allow_requantize=True, **opts)
            assert got["rc"] == 0, got["log"][-2000:]
            types = file_types(ref)
            assert list(types) == llama_order(list(types)), "llama-quantize changed its tensor order"
            codes = "".join(TYPE_CODES[t] for t in types.values())
            data["plans"].append({"model": model, "preset": preset, "options": opts, "types": codes, "fallbacks": got["fallbacks"]})
            ref.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, separators=(",", ":")) + "\n")


def _recorded():
    if not PLANS_JSON.exists():
        return {"models": {}, "plans": [], "legend": {}}
    data = json.loads(PLANS_JSON.read_text())
    for name, model in data["models"].items():
        if "spec" in model:
            model.update(spec_description(LlamaSpec(**model["spec"])))
    return data


RECORDED = _recorded()


@pytest.mark.parametrize(
    "entry", RECORDED["plans"], ids=[f"{e['model']}-{options_id(e['preset'], e['options'])}" for e in RECORDED["plans"]]
)
def test_plan_matches_recorded_llama_quantize(entry):
    model = RECORDED["models"][entry["model"]]
    plan = our_plan(model, entry["preset"], entry["options"])
    assert list(plan.types) == llama_order([name for name, _, _ in model["tensors"]])
    expected = [RECORDED["legend"][c] for c in entry["types"]]
    got = [t.name for t in plan.types.values()]
    diff = [(n, e, g) for n, e, g in zip(plan.types, expected, got) if e != g]
    assert len(expected) == len(got) and not diff, f"{len(diff)} tensors differ (name, llama-quantize, ours): {diff[:8]}"
    assert len(plan.fallbacks) == entry["fallbacks"]


def test_recorded_plans_cover_every_preset_and_model():
    assert RECORDED["plans"], f"{PLANS_JSON} is missing: run `python -m tests.test_quantize --write-plans`"
    seen = {(e["model"], e["preset"]) for e in RECORDED["plans"] if not e["options"]}
    for model in ("smollm2", *E2E_MODELS, "moe8"):
        assert {p for m, p in seen if m == model} == set(ALL_PRESETS), model
    # the recorded plans exercise the rules that matter, not just the default type
    plans = {(e["model"], e["preset"]): e for e in RECORDED["plans"] if not e["options"]}
    assert plans["smollm2", "Q4_K_M"]["fallbacks"] == 180
    assert len(set(plans["gqa4", "Q4_K_M"]["types"])) >= 3 and len(set(plans["gqa4", "Q3_K_M"]["types"])) >= 4
    assert "F" in plans["gqa4", "Q4_K_M"]["types"] and "h" in plans["odd-rows", "Q4_K_M"]["types"]


@pytest.mark.parametrize("model", list(MODELS))
def test_plans_match_llama_quantize_live(model, tmp_path):
    """The same comparison as the recorded plans, computed now with llama.cpp (if installed)."""
    llama_cpp_module()
    path = MODELS[model].write(tmp_path / f"{model}.gguf")
    desc = model_description(path)
    for preset, opts in option_sets(model):
        ref = tmp_path / f"ref-{options_id(preset, opts)}.gguf"
        got = llama_quantize(path, ref, preset, **opts)
        assert got["rc"] == 0, got["log"][-1500:]
        plan = our_plan(desc, preset, opts)
        assert {k: v.name for k, v in plan.types.items()} == file_types(ref), options_id(preset, opts)
        assert list(plan.types) == list(file_types(ref))
        assert len(plan.fallbacks) == got["fallbacks"], options_id(preset, opts)
        ref.unlink()


def test_explicit_types_that_do_not_fit_the_rows_are_refused():
    # llama-quantize crashes mid-file on these; we refuse before writing anything.
    odd = spec_description(MODELS["odd-rows"])
    with pytest.raises(LlamatoolError, match=r"output.weight have 100 values, not a multiple of the Q8_0 block size 32"):
        our_plan(odd, "Q4_K_M", {"output_tensor_type": "Q8_0"})
    smol = RECORDED["models"]["smollm2"]
    with pytest.raises(LlamatoolError, match=r"--token-embedding-type Q4_K: the rows of token_embd.weight have 576"):
        our_plan(smol, "Q4_K_M", {"token_embedding_type": "Q4_K"})


# --- the planning interface ---------------------------------------------------------------------


def test_presets_file_types_and_aliases():
    assert preset_file_type("Q4_K_M") == 15 and preset_file_type("q4_k") == 15 and preset_file_type("F32") == 0
    assert preset_file_type("bf16") == 32 and preset_file_type("IQ4_XS") == 30 and preset_file_type("Q8_0") == 7
    assert canonical_preset("q3_k") == "Q3_K_M" and canonical_preset("17") == "Q5_K_M"
    with pytest.raises(LlamatoolError, match="unknown quantization type 'Q9_9'"):
        preset_file_type("Q9_9")


def test_tensor_types_interface_for_convert():
    spec = MODELS["gqa4"]
    tensors = [(name, tuple(reversed(shape))) for name, shape in spec.shapes()]
    meta = {k: v for k, v, _, _ in spec.metadata()}
    types = tensor_types(tensors, meta, QuantizeOptions("Q4_K_M"))
    assert set(types) == {name for name, _ in tensors}
    assert types["blk.0.attn_norm.weight"].name == "F32" and types["output_norm.weight"].name == "F32"
    assert types["output.weight"].name == "Q6_K" and types["token_embd.weight"].name == "Q4_K"
    assert types["blk.0.ffn_down.weight"].name == "Q6_K" and types["blk.1.ffn_down.weight"].name == "Q4_K"
    assert types["blk.0.attn_q.weight"].name == "Q4_K"
    assert tensor_types(tensors, meta, QuantizeOptions("F16"))["blk.0.attn_q.weight"].name == "F16"
    with pytest.raises(LlamatoolError, match="block_count"):
        tensor_types(tensors, {"general.architecture": "llama"}, QuantizeOptions("Q4_0"))


def test_positional_arguments_like_llama_quantize(tmp_path):
    inp = tmp_path / "m.gguf"
    assert parse_positional([str(inp), "q4_k_m"]) == (inp, None, "Q4_K_M", None)
    assert parse_positional([str(inp), "out.gguf", "Q8_0", "3"]) == (inp, Path("out.gguf"), "Q8_0", 3)
    assert parse_positional([str(inp), "out.gguf", "15"])[2] == "Q4_K_M"
    for bad, msg in ((["m.gguf", "out.gguf"], "unknown quantization type 'out.gguf'"), (["m.gguf", "Q4_0", "x"], "invalid thread count")):
        with pytest.raises(LlamatoolError, match=msg):
            parse_positional(bad)


# --- end to end: our files, llama-quantize's files -------------------------------------------------

# Relative RMS error a type may add to Gaussian-like weights (well above what each type reaches).
MAX_REL_ERROR = {"F32": 0.0, "F16": 1e-3, "BF16": 5e-3, "Q8_0": 0.01, "Q6_K": 0.03, "Q5_0": 0.06, "Q5_1": 0.06,
                 "Q5_K": 0.06, "Q4_0": 0.12, "Q4_1": 0.12, "Q4_K": 0.12, "IQ4_NL": 0.12, "IQ4_XS": 0.12,
                 "Q3_K": 0.25, "Q2_K": 0.45,
                 # ternary, for ternary-trained weights: on Gaussian ones with outliers most round to 0
                 "TQ1_0": 1.0, "TQ2_0": 1.0}  # fmt: skip


class Quantized:
    """Quantize each (model, preset) once per session with llamatool, and with llama.cpp on demand."""

    def __init__(self, root: Path):
        self.root = root
        self.inputs: dict[str, Path] = {}
        self.ours: dict[tuple, Path] = {}

    def input(self, model: str) -> Path:
        if model not in self.inputs:
            if model == "smollm2":
                self.inputs[model] = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
            else:
                self.inputs[model] = MODELS[model].write(self.root / f"{model}.gguf")
        return self.inputs[model]

    def ours_for(self, model: str, preset: str) -> Path:
        key = (model, preset)
        if key not in self.ours:
            inp = self.input(model)
            out = self.root / f"{model}-{preset}.gguf"
            quantize_model(inp, out, QuantizeOptions(preset, allow_requantize=True), progress=False)
            self.ours[key] = out
        return self.ours[key]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    return Quantized(tmp_path_factory.mktemp("quantized"))


def rel_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)) / max(np.sqrt(np.mean(b**2)), 1e-30))


def check_output_file(inp: Path, out: Path, preset: str) -> None:
    with GGUFReader(inp) as src, GGUFReader(out) as dst:
        sources = {t.name: t.type for t in src.tensors}
        plan = plan_types([(t.name, t.ne) for t in src.tensors], src.metadata, QuantizeOptions(preset), current_types=sources)
        assert [(t.name, t.type.name) for t in dst.tensors] == [(n, t.name) for n, t in plan.types.items()]
        # metadata: copied in order, the two quantization keys re-set at the end
        moved = ("general.quantization_version", "general.file_type")
        assert list(dst.fields) == [k for k in src.fields if k not in moved] + list(moved)
        for key, f in src.fields.items():
            if key not in moved:
                g = dst.fields[key]
                assert (g.type, g.subtype) == (f.type, f.subtype), key
                assert np.array_equal(np.asarray(g.plain(), dtype=object), np.asarray(f.plain(), dtype=object)), key
        assert dst.get("general.file_type") == preset_file_type(preset) and dst.get("general.quantization_version") == 2
        assert dst.fields["general.file_type"].type == ValueType.UINT32
        for t in dst.tensors:
            s = src.tensor(t.name)
            assert t.ne == s.ne
            if t.type.id == s.type.id:
                assert np.array_equal(t.data, s.data), t.name
                continue
            err = rel_rms(t.values(), s.values())
            assert err <= MAX_REL_ERROR[t.type.name], f"{t.name} as {t.type.name}: relative RMS error {err:.4f}"


@pytest.mark.parametrize("preset", ALL_PRESETS)
@pytest.mark.parametrize("model", E2E_MODELS)
def test_quantize_generated_model_end_to_end(quantized, model, preset):
    check_output_file(quantized.input(model), quantized.ours_for(model, preset), preset)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_quantize_default_model_end_to_end(quantized, default_model, preset):
    check_output_file(default_model, quantized.ours_for("smollm2", preset), preset)


def differing_tensors(ours: Path, ref: Path) -> list[str]:
    with GGUFReader(ours) as a, GGUFReader(ref) as b:
        diff = [t.name for t in a.tensors if not (b.has_tensor(t.name) and np.array_equal(t.data, b.tensor(t.name).data))]
        if a.fields.keys() != b.fields.keys():
            diff.append("<metadata keys>")
        return diff


def assert_same_file_as_llama_quantize(quantized, model: str, preset: str, tmp_path: Path) -> None:
    ours = quantized.ours_for(model, preset)
    ref = tmp_path / "llama.gguf"
    got = llama_quantize(quantized.input(model), ref, preset, allow_requantize=True)
    assert got["rc"] == 0, got["log"][-1500:]
    assert file_types(ours) == file_types(ref)
    if ours.read_bytes() != ref.read_bytes():
        diff = differing_tensors(ours, ref)
        pytest.fail(f"{model} {preset}: {len(diff)} tensors differ from llama-quantize's file: {diff[:6]}")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ALL_PRESETS)
@pytest.mark.parametrize("model", E2E_MODELS)
def test_generated_model_byte_identical_with_llama_quantize(quantized, model, preset, tmp_path):
    llama_cpp_module()
    assert_same_file_as_llama_quantize(quantized, model, preset, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_default_model_byte_identical_with_llama_quantize(quantized, default_model, preset, tmp_path):
    llama_cpp_module()
    assert_same_file_as_llama_quantize(quantized, "smollm2", preset, tmp_path)


OPTION_CASES = [
    ("Q4_K_M", {"pure": True}),
    ("Q6_K", {"leave_output_tensor": True}),
    ("Q3_K_M", {"output_tensor_type": "Q8_0", "token_embedding_type": "F16"}),
    ("IQ4_XS", {"token_embedding_type": "Q4_K"}),
]


@pytest.mark.slow
@pytest.mark.parametrize("preset,opts", OPTION_CASES, ids=[options_id(p, o) for p, o in OPTION_CASES])
def test_options_byte_identical_with_llama_quantize(quantized, preset, opts, tmp_path):
    llama_cpp_module()
    inp = quantized.input("gqa4")
    ours, ref = tmp_path / "ours.gguf", tmp_path / "llama.gguf"
    quantize_model(inp, ours, QuantizeOptions(preset, **opts), progress=False)
    got = llama_quantize(inp, ref, preset, **opts)
    assert got["rc"] == 0, got["log"][-1500:]
    assert file_types(ours) == file_types(ref)
    assert ours.read_bytes() == ref.read_bytes(), differing_tensors(ours, ref)


def test_non_finite_weights_are_refused(tmp_path):
    x = np.ones((8, 256), np.float32)
    x[5, 7] = np.nan
    fields = [("general.architecture", "llama", V.STRING, None), ("llama.block_count", 1, V.UINT32, None)]
    inp = write_gguf(tmp_path / "nan.gguf", fields, {"blk.0.attn_q.weight": ("F32", x)})
    out = tmp_path / "out.gguf"
    with pytest.raises(LlamatoolError, match="blk.0.attn_q.weight: row 5 holds NaN"):
        quantize_model(inp, out, QuantizeOptions("Q8_0"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.gguf"]


def test_nthreads_sets_the_worker_threads_and_not_the_bytes(small_model, tmp_path):
    one = quantize_model(small_model, tmp_path / "1.gguf", QuantizeOptions("Q4_K_M"), nthreads=1, progress=False)
    two = quantize_model(small_model, tmp_path / "2.gguf", QuantizeOptions("Q4_K_M"), nthreads=2, progress=False)
    assert (one.threads, two.threads) == (1, 2)
    assert (tmp_path / "1.gguf").read_bytes() == (tmp_path / "2.gguf").read_bytes()


# --- the header: metadata copied as bytes ----------------------------------------------------------


def _metadata_model(tmp_path, extra=(), alignment=None) -> Path:
    from tests.gguf_factory import all_value_types_fields

    fields = [f for f in all_value_types_fields() if f[0] != "test.arr_nested"] + list(extra)
    fields += [
        ("test.undecodable", "a\udcff\udc80b", ValueType.STRING, None),  # bytes that are not UTF-8
        ("test.vocab", [f"tok{i}\u2581é" for i in range(3000)], ValueType.ARRAY, ValueType.STRING),
        ("general.file_type", 7, ValueType.UINT32, None),
        ("general.quantization_version", 2, ValueType.UINT32, None),
        ("llama.block_count", 1, ValueType.UINT32, None),
        ("test.after", "last", ValueType.STRING, None),
    ]
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    return write_gguf(tmp_path / "meta.gguf", fields, {"a.weight": ("F32", x), "b.weight": ("F16", x)}, alignment=alignment)


def _header(writer) -> bytes:
    writer.add_field("general.file_type", 1, ValueType.UINT32)
    writer.add_tensor_info("a.weight", "Q8_0", (64, 4))
    return writer._header_bytes()


def test_metadata_copied_as_bytes_is_what_copy_fields_writes(tmp_path):
    """The quantizer copies the metadata's bytes instead of encoding ~100k vocabulary
    strings again: every value type, undecodable bytes and the skipped keys included."""
    from llamatool import quantize as q
    from llamatool.gguf_io import GGUFWriter, copy_fields

    with GGUFReader(_metadata_model(tmp_path)) as reader:
        count, entries = q.copied_metadata(reader)
        assert count == len(reader.fields) - 2  # all but file_type and quantization_version
        slow = GGUFWriter(tmp_path / "slow.gguf")
        copy_fields(reader, slow, skip=q.RESET_KEYS)
        assert _header(q._Writer(tmp_path / "fast.gguf", (count, entries))) == _header(slow)


@pytest.mark.parametrize("why", ["nested array", "alignment"])
def test_metadata_is_encoded_again_when_bytes_cannot_be_copied(tmp_path, why):
    """Nested arrays and an explicit alignment take the slow path, with the same result."""
    from llamatool import quantize as q

    nested = ("test.nested", [np.array([1, 2], np.int32), np.array([3], np.int32)], ValueType.ARRAY, ValueType.ARRAY)
    model = _metadata_model(tmp_path, [nested]) if why == "nested array" else _metadata_model(tmp_path, alignment=64)
    with GGUFReader(model) as reader:
        assert q.copied_metadata(reader) is None
    quantize_model(model, tmp_path / "out.gguf", QuantizeOptions(preset="Q8_0"), progress=False)
    with GGUFReader(model) as before, GGUFReader(tmp_path / "out.gguf") as after:
        kept = [k for k in before.fields if k not in q.RESET_KEYS]
        assert list(after.fields)[: len(kept)] == kept and after.alignment == before.alignment
        assert all(after.get(k) is not None for k in kept) and after.get("test.after") == "last"


def test_quantized_file_is_the_same_with_metadata_copied_or_encoded(tmp_path, monkeypatch):
    from llamatool import quantize as q

    model = _metadata_model(tmp_path)
    quantize_model(model, tmp_path / "fast.gguf", QuantizeOptions(preset="Q4_0"), progress=False)
    monkeypatch.setattr(q, "copied_metadata", lambda reader, skip=(): None)
    quantize_model(model, tmp_path / "slow.gguf", QuantizeOptions(preset="Q4_0"), progress=False)
    assert (tmp_path / "fast.gguf").read_bytes() == (tmp_path / "slow.gguf").read_bytes()


# --- the command line ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    return MODELS["gqa4"].write(tmp_path_factory.mktemp("small") / "small.gguf")


def test_cli_quantizes_and_reports(small_model, tmp_path):
    out = tmp_path / "out.gguf"
    proc = llamatool("quantize", small_model, out, "bf16", "--nthreads", "1")
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and [p.name for p in tmp_path.iterdir()] == ["out.gguf"]
    for text in ("model size", "quant size", "BPW", "time", f"{out.stat().st_size:,} bytes", "BF16"):
        assert text in proc.stdout
    with GGUFReader(small_model) as r:
        before = sum(t.nbytes for t in r.tensors) / 2**20
    assert f"{before:.2f} MiB" in proc.stdout
    check_output_file(small_model, out, "BF16")


def test_cli_progress_bar_on_a_terminal(small_model, tmp_path):
    # rich draws the bar only on a terminal; these variables make it treat the pipe as one.
    env = {**os.environ, "FORCE_COLOR": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "140"}
    proc = llamatool("quantize", small_model, tmp_path / "q.gguf", "Q8_0", env=env)
    assert proc.returncode == 0, proc.stderr
    last = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", proc.stderr).replace("\r", "\n").split("\n")
    final = [line for line in last if "wrote q.gguf" in line][-1]
    with GGUFReader(small_model) as r:
        total = sum(t.nbytes for t in r.tensors) / 1e6
    assert f"{total:.1f}/{total:.1f} MB" in final and re.search(r"[\d.]+ [kMG]?B/s", final)


def test_cli_default_output_name_like_llama_quantize(small_model, tmp_path):
    inp = tmp_path / "model.gguf"
    inp.write_bytes(small_model.read_bytes())
    proc = llamatool("quantize", inp, "F32")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ggml-model-F32.gguf").exists()


def test_cli_dry_run_prints_the_plan_and_writes_nothing(default_model, tmp_path):
    out = tmp_path / "out.gguf"
    proc = llamatool("quantize", "--dry-run", default_model, out, "Q4_K_M")
    assert proc.returncode == 0, proc.stderr
    assert not out.exists()
    lines = proc.stdout.splitlines()
    row = next(line for line in lines if " blk.0.attn_v.weight " in line).split()
    assert row[2:5] == ["576x192", "Q4_1", "Q8_0"] and "fallback from Q6_K" in " ".join(row)
    assert any(" blk.0.ffn_down.weight " in line and " Q6_K " in line for line in lines)
    assert "quant size  =    98.87 MiB (6.17 BPW)" in proc.stdout  # llama-quantize's own figures
    assert "180 of 272 tensors required fallback quantization" in proc.stderr
    assert "--allow-requantize" in proc.stderr


def _one_line_error(proc, *fragments):
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_bad_input(small_model, default_model, tmp_path):
    out = tmp_path / "out.gguf"
    _one_line_error(llamatool("quantize", tmp_path / "missing.gguf", out, "Q8_0"), "no such file")
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model\n")
    _one_line_error(llamatool("quantize", text, out, "Q8_0"), "not a GGUF file")
    _one_line_error(llamatool("quantize", small_model, out, "Q9_9"), "unknown quantization type 'Q9_9'", "Q4_K_M")
    _one_line_error(llamatool("quantize", default_model, out, "Q8_0"), "already quantized", "--allow-requantize")
    _one_line_error(llamatool("quantize", small_model, small_model, "Q8_0", "--force"), "refusing to write over the input")
    _one_line_error(
        llamatool("quantize", "--allow-requantize", "--token-embedding-type", "q4_k", default_model, out, "Q4_K_M"),
        "token_embd.weight have 576 values",
    )
    _one_line_error(llamatool("quantize", "--output-tensor-type", "Q9", small_model, out, "Q4_0"), "unknown ggml type 'Q9'")
    assert list(tmp_path.iterdir()) == [text]
    out.write_bytes(b"precious")
    _one_line_error(llamatool("quantize", small_model, out, "Q8_0"), "already exists", "--force")
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.gguf", "out.gguf"]


def test_requantizing_to_the_same_types_needs_no_permission(default_model, tmp_path):
    # llama-quantize only refuses when a quantized tensor would change type: Q4_1 -> Q4_1 is a copy.
    out = tmp_path / "same.gguf"
    result = quantize_model(default_model, out, QuantizeOptions("Q4_1"), progress=False)
    assert not any(j.converts for j in result.jobs)
    with GGUFReader(out) as r:
        assert r.get("general.file_type") == 3


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_quantize_leaves_nothing(default_model, tmp_path, sig):
    """Ctrl-C (or a kill) mid-write removes the temporary file; no partial output appears."""
    # Build the kernels first: a cold cache would have the child compiling when the signal
    # comes, and an interrupt landing in a finalizer there is swallowed (not what we test).
    from llamatool.quants.native import nonfinite_counter, row_kernel

    for name in ("Q4_1", "Q8_0"):
        row_kernel(ggml_type(name), "dequantize")
    nonfinite_counter()
    out = tmp_path / "big.gguf"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llamatool", "quantize", "--allow-requantize", default_model, out, "F32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell starts background jobs with SIGINT ignored, and Python keeps it so: a user's
        # Ctrl-C reaches a foreground process, which is what this test plays.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        if temps and temps[0].stat().st_size > 50 << 20:  # well into the tensors (the output is ~540 MB)
            break
        time.sleep(0.02)
    assert proc.poll() is None, "quantize finished before it could be interrupted"
    assert temps and temps[0].stat().st_size > 50 << 20, "quantize did not start writing within a minute"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


PEAK_RSS_CHILD = """
import resource, sys
from llamatool.cli import main
import llamatool.quantize, llamatool.jit, llamatool.quants.legacy
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    main(sys.argv[1:])
finally:
    print("RSS", base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


@pytest.mark.slow
def test_memory_stays_near_one_tensor_not_the_model(default_model, tmp_path):
    """SmolLM2 to F32 writes 540 MB; the process should grow by about its largest tensor (113 MB)."""
    out = tmp_path / "f32.gguf"
    args = ["quantize", "--allow-requantize", str(default_model), str(out), "F32"]
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS_CHILD, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    base, peak = map(int, re.search(r"RSS (\d+) (\d+)", proc.stderr).groups())
    grown = (peak - base) * 1024
    largest = 49152 * 576 * 4
    assert grown < 2.5 * largest, f"peak RSS grew by {grown / 2**20:.0f} MiB for a {out.stat().st_size / 2**20:.0f} MiB output"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-plans"]:
        write_plans()
        print(f"wrote {PLANS_JSON} ({PLANS_JSON.stat().st_size} bytes)")
    else:
        print("usage: python -m tests.test_quantize --write-plans")
