"""The model families beyond LLaMA (llamatool.arch): Qwen2, Qwen3, SmolLM3, Gemma 2, Gemma 3 and
Phi-3 on tiny seeded checkpoints.

Convert is checked byte for byte against the vendored converter in test_convert.py (the
*-bpe and *-spm fixtures); here:

- the forward pass of the LLaMA-shaped families against tests/tiny_llama.py's float64 numpy
  model (Hugging Face's math: rotate-half RoPE, biases, per-head Q/K norms, NoPE layers) with
  ggml's roundings, on the converted F32 file (Gemma 2 and Phi-3 are held to transformers
  and to llama.cpp below instead);
- several sequences in one forward call past the sliding window (bit for bit each alone);
- end-of-generation tokens, chat template, and the commands (run, bench, perplexity, tokenize);
- quantize against the llama-quantize binary (when there is one), byte for byte;
- reference tier: logits against transformers over 64 tokens.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from llamatool import arch
from llamatool.convert import ConvertOptions, convert_model
from llamatool.model import Model, Part
from tests.hf_factory import FIXTURES, CheckpointSpec, random_weights, write_checkpoint

from .conftest import llama_cpp_binary, llama_cpp_module
from .tiny_llama import TinyLlama, numpy_forward

FAMILY_FIXTURES = {"qwen2": "qwen2-bpe", "qwen3": "qwen3-bpe", "smollm3": "smollm3-bpe", "gemma2": "gemma2-spm",
                   "gemma3": "gemma3-spm", "phi3": "phi3-spm"}
NUMPY_MODELLED = ("qwen2", "qwen3", "smollm3")  # tests/tiny_llama.py computes these
NEOX = {"qwen2", "qwen3", "gemma2", "gemma3", "phi3"}
# the token that ends a turn in each fixture's chat template, and the GGUF's other end-of-generation tokens
END_OF_TURN = {"qwen2": ("<|im_end|>", {"<|endoftext|>"}), "qwen3": ("<|im_end|>", {"<|endoftext|>"}),
               "gemma2": ("<end_of_turn>", {"</s>"}), "gemma3": ("<end_of_turn>", {"</s>"}), "phi3": ("<|end|>", {"</s>", "<|endoftext|>"})}
N_TOKENS = 64
FORWARD_TOLERANCE = 1e-3  # of the largest logit: float32 against float64 (tests/test_model.py)


def _convert(folder: Path, out_dir: Path, outtype: str = "f32") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    return convert_model(folder, ConvertOptions(outtype=outtype, outfile=out_dir, progress=False)).output


def f32_spec(key: str, **changes) -> CheckpointSpec:
    """The fixture stored as float32, so that the checkpoint holds exactly random_weights."""
    spec = FIXTURES[key]
    return replace(spec, name=spec.name + "-f32", dtype="float32", shards=1, **changes)


@pytest.fixture(scope="module")
def f32_models(tmp_path_factory) -> dict[str, tuple[CheckpointSpec, Path, Path]]:
    root = tmp_path_factory.mktemp("families")
    out = {}
    for family, key in FAMILY_FIXTURES.items():
        spec = f32_spec(key)
        folder = write_checkpoint(root / "hf", spec)
        out[family] = (spec, folder, _convert(folder, root / family))
    return out


def _tokens(n_vocab: int, n: int = N_TOKENS) -> list[int]:
    return np.random.default_rng(7).integers(0, n_vocab, n).tolist()


def _numpy_model(spec: CheckpointSpec, n_vocab: int) -> TinyLlama:
    return TinyLlama(vocab=n_vocab, n_embd=spec.hidden, n_layer=spec.layers, n_head=spec.heads,
                     n_head_kv=spec.kv_heads or spec.heads, n_ff=spec.intermediate, eps=spec.rms_norm_eps,
                     rope_base=spec.rope_theta, tied=spec.tied, explicit_head_dim=spec.head_dim,
                     nope_every=4 if spec.arch == "SmolLM3ForCausalLM" else 0)  # fmt: skip


def test_registry_declares_what_the_forward_pass_has():
    """Every family's runtime tensors name a role of the fused pass; the GGUF and HF names are unique."""
    from llamatool import kernel_api

    fw = kernel_api.load("forward")
    assert arch.supported_architectures() == ("llama", "qwen2", "qwen3", "smollm3", "gemma2", "gemma3", "phi3")
    for family in arch.FAMILIES:
        roles = [t.role for t in family.gguf_layer_tensors]
        assert len(set(roles)) == len(roles) and all(hasattr(fw, "LAYER_" + r) for r in roles), family.arch
        assert family.forward.rope in (arch.ROPE_NORM, arch.ROPE_NEOX)
    assert len({c for f in arch.FAMILIES for c in f.hf_classes}) == sum(len(f.hf_classes) for f in arch.FAMILIES)


@pytest.mark.parametrize("family", NUMPY_MODELLED)
def test_forward_matches_numpy(family, f32_models):
    """Our pass on the converted F32 file against the float64 numpy model of the HF weights
    (ggml's f16 cache roundings applied), 64 tokens."""
    spec, _, gguf = f32_models[family]
    model = Model.load(gguf, n_threads=2)
    assert model.args.architecture == family and model.args.rope_neox == (family in NEOX)
    assert model.args.nope_every == (4 if family == "smollm3" else 0)
    n_vocab = model.args.n_vocab
    weights = random_weights(spec, n_vocab)
    if spec.tied:
        weights.pop("lm_head.weight", None)
    ids = _tokens(n_vocab)
    got = model.eval(ids, all_logits=True)
    expected = numpy_forward(_numpy_model(spec, n_vocab), weights, ids, ggml_types={k: "F32" for k in weights})
    assert np.abs(got - expected).max() < FORWARD_TOLERANCE * np.abs(expected).max()
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_qk_norm_and_nope_layers_matter(f32_models):
    """The numpy model the forward pass matches would be 10x the tolerance away without
    Qwen3's Q/K norms or with RoPE in SmolLM3's fourth layer: the comparison can tell."""
    spec, _, gguf = f32_models["qwen3"]
    n_vocab = Model.load(gguf, n_threads=1).args.n_vocab
    weights = random_weights(spec, n_vocab)
    ids = _tokens(n_vocab, 16)
    with_norm = numpy_forward(_numpy_model(spec, n_vocab), weights, ids)
    without = numpy_forward(_numpy_model(spec, n_vocab), {k: v for k, v in weights.items() if "_norm." not in k or "layernorm" in k}, ids)
    assert np.abs(with_norm - without).max() > 10 * FORWARD_TOLERANCE * np.abs(with_norm).max()
    spec, _, gguf = f32_models["smollm3"]
    weights = random_weights(spec, n_vocab := Model.load(gguf, n_threads=1).args.n_vocab)
    weights.pop("lm_head.weight", None)
    nope = numpy_forward(_numpy_model(spec, n_vocab), weights, ids)
    rope_everywhere = numpy_forward(replace(_numpy_model(spec, n_vocab), nope_every=0), weights, ids)
    assert np.abs(nope - rope_everywhere).max() > 10 * FORWARD_TOLERANCE * np.abs(nope).max()


@pytest.mark.parametrize("family", list(FAMILY_FIXTURES))
def test_batches_and_single_tokens_agree(family, f32_models):
    """Whole-head chunks (NEOX, Q/K norm) give the same logits however the tokens arrive."""
    _, _, gguf = f32_models[family]
    ids = _tokens(Model.load(gguf, n_threads=1).args.n_vocab, 24)
    at_once = Model.load(gguf, n_threads=2).eval(ids, all_logits=True)
    model = Model.load(gguf, n_threads=2, n_batch=5)
    stepwise = np.concatenate([model.eval(ids[i : i + 5], all_logits=True) for i in range(0, len(ids), 5)])
    np.testing.assert_array_equal(at_once, stepwise)


@pytest.mark.parametrize("family", sorted(END_OF_TURN))
def test_end_of_generation_and_chat_template(family, f32_models):
    """The turn's end token (<|im_end|>, <end_of_turn>, <|end|>) ends a generation, with the
    GGUF's other end-of-generation tokens; the chat template is the checkpoint's, verbatim."""
    import json

    _, folder, gguf = f32_models[family]
    model = Model.load(gguf, n_threads=1)
    vocab = [str(t) for t in model.reader.get("tokenizer.ggml.tokens")]
    end, others = END_OF_TURN[family]
    assert {vocab[i] for i in model.tokenizer.eog_ids} == {end} | others
    if family.startswith("qwen"):
        assert vocab[int(model.reader.get("tokenizer.ggml.eos_token_id"))] == end
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert model.reader.get("tokenizer.chat_template") == config["chat_template"]


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamatool", *map(str, args)], capture_output=True, text=True, timeout=600)


def _greedy(model, pool, parts_of_step, steps: int, n_seq: int) -> list[list[np.ndarray]]:
    """Logits of each of n_seq sequences after its prompt and after each of `steps` greedy
    tokens, the sequences' parts sharing one eval_many call per step; parts_of_step(step,
    last logits of each) gives that step's parts, the sequences' first (their logits)."""
    out = [[] for _ in range(n_seq)]
    for step in range(steps + 1):
        got = model.eval_many(pool, parts_of_step(step, [o[-1] if o else None for o in out]))
        for i in range(n_seq):
            out[i].append(got[i].copy())
    return out


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "phi3"])
def test_sequences_in_one_call_get_their_logits_alone_past_the_window(family, f32_models):
    """Several sequences at different positions in one forward call (the server's batching):
    Gemma 2/3's 16-position sliding window, Gemma 3's own rope base on its sliding layers and
    Phi-3's long RoPE factors (n_ctx 64 > its 32 original positions). Each sequence gets bit
    for bit the logits it gets alone, which are Model.eval's token by token, while the
    sequences pass the window at different steps and a fourth one reads prompt blocks
    through the fast products in the same calls (Model.eval's bits for those blocks)."""
    _, _, gguf = f32_models[family]
    model = Model.load(gguf, n_threads=2, n_ctx=64)
    rng = np.random.default_rng(11)
    prompts = [rng.integers(0, model.args.n_vocab, n).tolist() for n in (21, 3, 12)]
    blocks = [rng.integers(0, model.args.n_vocab, 20).tolist() for _ in range(2)]
    steps = 14  # positions up to 34, 16 and 25: past the window, one sequence not yet

    def step_parts(seqs, with_blocks):
        def parts(step, last):
            out = [Part(pool.states[i], prompts[i] if step == 0 else [int(last[k].argmax())]) for k, i in enumerate(seqs)]
            if with_blocks and step < len(blocks):
                out.append(Part(pool.states[3], blocks[step], exact=False))
            return out
        return parts

    pool = model.new_caches(4)
    alone = [_greedy(model, pool, step_parts([i], False), steps, 1)[0] for i in range(len(prompts))]
    for state in pool.states:
        state.truncate(0)
    together = _greedy(model, pool, step_parts([0, 1, 2], True), steps, 3)
    for i in range(len(prompts)):
        assert all(np.array_equal(a, b) for a, b in zip(alone[i], together[i])), (family, i)
        model.reset()
        sequence = pool.states[i].history
        one_by_one = [model.eval([t]) for t in sequence]
        assert all(np.array_equal(one_by_one[len(prompts[i]) - 1 + k], alone[i][k]) for k in range(steps + 1)), (family, i)
    assert pool.states[3].history == blocks[0] + blocks[1]
    model.reset()
    model.eval(blocks[0])
    fast_second = model.eval(blocks[1])
    pool.states[3].truncate(0)
    model.eval_many(pool, [Part(pool.states[3], blocks[0], exact=False, logits=False)])
    assert np.array_equal(model.eval_many(pool, [Part(pool.states[3], blocks[1], exact=False), Part(pool.states[0], [5])])[0],
                          fast_second)


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gemma3", "phi3"])
def test_commands_run_the_model(family, f32_models, tmp_path):
    """run, bench, perplexity and tokenize take the family's GGUF like a llama one."""
    _, _, gguf = f32_models[family]
    run = _cli("run", "-m", gguf, "-p", "The llama", "-n", 8, "--temp", 0, "-t", 2)
    assert run.returncode == 0, run.stderr[-2000:]
    tokenize = _cli("tokenize", "-m", gguf, "-p", "The quick brown fox", "--ids")
    assert tokenize.returncode == 0 and tokenize.stdout.strip().startswith("["), tokenize.stderr[-2000:]
    bench = _cli("bench", "-m", gguf, "-p", 16, "-n", 4, "-r", 1, "-t", 2)
    assert bench.returncode == 0 and family in bench.stdout, bench.stderr[-2000:]
    text = tmp_path / "text.txt"
    text.write_text(("The quick brown fox jumps over the lazy dog. " * 40), encoding="utf-8")
    ppl = _cli("perplexity", "-m", gguf, "-f", text, "-c", 32, "-t", 2)
    assert ppl.returncode == 0 and "PPL" in (ppl.stdout + ppl.stderr), ppl.stderr[-2000:]


# --- quantize: byte for byte with llama-quantize -------------------------------------------------


def _k_quant_spec(family: str) -> CheckpointSpec:
    """The family's fixture with rows of 256 values (64-dim heads), for K-quants and llama.cpp."""
    spec = FIXTURES[FAMILY_FIXTURES[family]]
    changes = {"hidden": 256, "intermediate": 512, "head_dim": 64 if family in ("qwen3", "gemma2", "gemma3") else None}
    if family in ("gemma2", "gemma3"):
        changes["config_extra"] = {**spec.config_extra, "query_pre_attn_scalar": 64}
    if family == "phi3":  # 32 LongRoPE factors for 64-dim heads
        changes["rope_scaling"] = {**spec.rope_scaling, "long_factor": list(np.linspace(1, 8, 32)),
                                   "short_factor": list(np.linspace(1, 2, 32))}
    if family not in END_OF_TURN or family.startswith("qwen"):
        changes["extra_vocab"] = 0
    return replace(spec, **changes)


def _llama_cpp_binary(name: str) -> Path:
    """llama.cpp's binary as scripts/llamacpp_bin.py finds it (LLAMA_CPP_BIN or PATH), or a skip."""
    scripts = Path(__file__).resolve().parent.parent / "scripts"
    sys.path.insert(0, str(scripts))
    try:
        from llamacpp_bin import find_binary
    finally:
        sys.path.remove(str(scripts))
    return llama_cpp_binary(find_binary, name)


@pytest.mark.parametrize("preset", ["Q4_K_M", "Q8_0"])
@pytest.mark.parametrize("family", list(FAMILY_FIXTURES))
def test_quantize_same_bytes_as_llama_quantize(family, preset, tmp_path):
    """Rows of 256 values so the K-quant recipe (not just its fallbacks) is exercised."""
    binary = _llama_cpp_binary("llama-quantize")
    from llamatool.quantize import QuantizeOptions, quantize_model

    f16 = _convert(write_checkpoint(tmp_path / "hf", _k_quant_spec(family)), tmp_path / "f16", "f16")
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    quantize_model(f16, ours, QuantizeOptions(preset=preset), nthreads=2, progress=False)
    proc = subprocess.run([str(binary), str(f16), str(theirs), preset, "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ours.read_bytes() == theirs.read_bytes()


# --- reference tier: transformers ------------------------------------------------------------------


SCALE_Q_MODEL_TYPES = ("gemma2", "gemma3_text", "phi3")  # llama.cpp's graph scales Q, not K.Q, for these


def _ggml_f16_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                        sliding_window=None, **kwargs):
    """transformers' attention with the roundings of llama.cpp's default F16 KV cache: keys and
    values stored as halves, the query rounded to a half for the K.Q products (after its scale,
    for the families whose graph scales Q); scores, soft-cap, softmax and the weighted sum of
    values in float32 (as tests/tiny_llama.py's reference). Causal, within the layer's sliding
    window if it has one (no cache: query i is at position i)."""
    import torch

    def f16(x):
        return x.to(torch.float16).to(x.dtype)

    n_rep = query.shape[1] // key.shape[1]
    k = f16(key).repeat_interleave(n_rep, dim=1)
    v = f16(value).repeat_interleave(n_rep, dim=1)
    if module.config.model_type in SCALE_Q_MODEL_TYPES:
        scores = f16(query * scaling) @ k.transpose(2, 3)
    else:
        scores = f16(query) @ k.transpose(2, 3) * scaling
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    n_q, n_k = scores.shape[-2:]
    visible = torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q)
    if sliding_window:
        visible &= ~torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q - sliding_window)
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    return (probs @ v).transpose(1, 2).contiguous(), probs


def _ggml_gelu(x):
    """GELU(tanh) as ggml_vec_geglu_f32 reads it from its table of halves: of x rounded to a
    half, rounded to a half; 0 below -10, the identity from 10 on."""
    import torch

    def f16(t):
        return t.to(torch.float16).to(t.dtype)

    table = f16(torch.nn.functional.gelu(f16(x), approximate="tanh"))
    return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, table))


def _transformers_logits(folder: Path, ids: list[int], attention: str | None = None, float64: bool = False) -> np.ndarray:
    """float32 logits of transformers (its sums in float64 with float64, the roundings kept)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if attention == "ggml_f16":
        transformers.AttentionInterface.register("ggml_f16", _ggml_f16_attention)
    kwargs = {"attn_implementation": attention} if attention else {}
    dtype = torch.float64 if float64 else torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    if attention == "ggml_f16" and model.config.model_type.startswith("gemma"):
        gelu = type("GgmlGelu", (torch.nn.Module,), {"forward": lambda self, x: _ggml_gelu(x)})()
        for layer in model.model.layers:
            layer.mlp.act_fn = gelu
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


# Gemma 3's logits are 2.0e-3 (max abs; max |logit| about 4) from the rounded transformers run:
# more than the bar, because the bar is below that reference's own spread. The F16 cache rounds
# keys, values and queries to halves, whose step is about 1/1000 of the value: a difference of one
# float32 ulp before the rounding (another order of the same sums) moves an element by a whole
# step now and then, and Gemma's post-attention norm rescales the small attention output back to
# full size. The same transformers run with its sums in float64 (the roundings unchanged) is
# 1.3e-3 from the float32 one. Tracing it layer by layer (the GGUF cut to its first k layers
# against transformers with k layers): one layer already gives 7.7e-4, on positions 45..60, the
# 16 positions that see key/value 45 through the window, and up to 5e-5 on a few single
# positions (a query); such flips, not a systematic error (elsewhere the difference is 2e-6).
# llama.cpp itself is 4.1e-3 from this reference on the same file (and 1.2e-3 to 2.2e-3 for the
# other families: test_logits_no_further_from_transformers_than_llama_cpp). For these families
# the bar is twice the reference's measured spread, and the test checks that spread is above
# 1e-3 (else the plain bar applies again).
REFERENCE_SPREAD_BAR = ("gemma3",)


@pytest.mark.reference
@pytest.mark.parametrize("family", list(FAMILY_FIXTURES))
def test_logits_match_transformers(family, f32_models):
    """64 tokens, F32 GGUF: within 1e-3 (max abs) of transformers run with the F16 cache's
    roundings (and ggml's half-table GELU), and the same top token as plain transformers
    everywhere. 64 tokens are past Gemma 2's and Gemma 3's 16-position windows and Phi-3's
    32-position original context (its long RoPE factors: n_ctx 64 > 32 here as in transformers).
    Gemma 3: within twice the reference's own spread (see REFERENCE_SPREAD_BAR)."""
    _, folder, gguf = f32_models[family]
    model = Model.load(gguf, n_threads=2, n_ctx=N_TOKENS)
    ids = _tokens(model.args.n_vocab)
    got = model.eval(ids, all_logits=True)
    rounded = _transformers_logits(folder, ids, "ggml_f16")
    bar = 1e-3
    if family in REFERENCE_SPREAD_BAR:
        spread = np.abs(rounded - _transformers_logits(folder, ids, "ggml_f16", float64=True)).max()
        assert spread > 1e-3, f"the reference's spread is {spread:.1e} now: hold {family} to 1e-3"
        bar = 2 * spread
    assert np.abs(got - rounded).max() <= bar
    plain = _transformers_logits(folder, ids)
    assert (got.argmax(1) == plain.argmax(1)).all()
    np.testing.assert_allclose(got, plain, rtol=1e-3, atol=2e-3 * np.abs(plain).max())


@pytest.mark.reference
@pytest.mark.parametrize("family", list(FAMILY_FIXTURES))
def test_logits_no_further_from_transformers_than_llama_cpp(family, f32_models):
    """llama.cpp as the yardstick of "close": on the same F32 GGUF (llama-cpp-python, every
    token's logits) it is 1.2e-3 to 4.1e-3 from the rounded transformers run (Gemma 3: 4.1e-3),
    ours no further, with llama.cpp's top token everywhere."""
    llama_cpp = llama_cpp_module()
    _, folder, gguf = f32_models[family]
    model = Model.load(gguf, n_threads=2, n_ctx=N_TOKENS)
    ids = _tokens(model.args.n_vocab)
    got = model.eval(ids, all_logits=True)
    llm = llama_cpp.Llama(str(gguf), n_ctx=N_TOKENS, n_batch=N_TOKENS, n_ubatch=N_TOKENS, logits_all=True, n_threads=2,
                          verbose=False)
    llm.eval(ids)
    theirs = np.array(llm.scores[:N_TOKENS], dtype=np.float32)
    rounded = _transformers_logits(folder, ids, "ggml_f16")
    assert np.abs(got - rounded).max() <= np.abs(theirs - rounded).max()
    assert (got.argmax(1) == theirs.argmax(1)).all()


def test_smollm3_other_nope_pattern_is_refused(tmp_path):
    """llama.cpp fixes SmolLM3's NoPE step at 4: another pattern would convert into a file it
    (and we) would run wrongly, so nothing is written."""
    from llamatool.errors import LlamatoolError

    spec = replace(FIXTURES["smollm3-bpe"], config_extra={**FIXTURES["smollm3-bpe"].config_extra, "no_rope_layers": [1, 0, 1, 0]})
    folder = write_checkpoint(tmp_path / "hf", spec)
    with pytest.raises(LlamatoolError, match="no_rope_layers") as e:
        _convert(folder, tmp_path / "out")
    assert "\n" not in str(e.value) and not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("family", list(FAMILY_FIXTURES))
def test_kl_divergence_against_llama_perplexity(family, tmp_path):
    """On the F16 file, teacher-forced against the llama-perplexity binary's base file: mean KLD
    at most 1e-4 and the same top token on at least 99% of positions (the issue's bar)."""
    import re

    from tests.hf_factory import CORPUS

    binary = _llama_cpp_binary("llama-perplexity")
    f16 = _convert(write_checkpoint(tmp_path / "hf", _k_quant_spec(family)), tmp_path / "f16", "f16")
    text, base = tmp_path / "text.txt", tmp_path / "base.kld"
    text.write_text(CORPUS * 6, encoding="utf-8")
    ref = subprocess.run([str(binary), "-m", str(f16), "-f", str(text), "-c", "128", "-b", "128", "-t", "2",
                          "--kl-divergence-base", str(base)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-2000:]
    ours = _cli("perplexity", "-m", f16, "-f", text, "-c", 128, "-b", 128, "-t", 2, "--kl-divergence-base", base, "--kl-divergence")
    assert ours.returncode == 0, ours.stderr[-2000:]
    out = ours.stdout + ours.stderr
    mean_kld = float(re.search(r"Mean\s+KLD:\s+(-?[\d.]+)", out).group(1))
    same_top = float(re.search(r"Same top p:\s+([\d.]+)", out).group(1))
    assert mean_kld <= 1e-4 and same_top >= 99.0, (mean_kld, same_top)
