"""Tiny random LLaMA models for the forward-pass tests, and a float64 numpy reference.

    spec = TinyLlama(n_layer=2, n_head=4, n_head_kv=2)
    weights = random_weights(spec)                       # Hugging Face names and layout
    gguf = write_gguf(tmp / "m.gguf", spec, weights, "Q4_K")
    logits = numpy_forward(spec, gguf.weights, tokens)  # what the file's weights compute
    close = numpy_forward(spec, gguf.weights, tokens, ggml_types=gguf.types)  # + ggml's roundings

write_gguf does what llama.cpp's converter does to a LlamaForCausalLM checkpoint: renames
tensors, permutes the Q and K projections (conversion/llama.py `permute`) so RoPE pairs are
adjacent, writes llama.* metadata and a small byte-level BPE tokenizer, and stores the
matrices in the requested type. It returns the weights as stored (quantized and
dequantized again, in HF layout), so the reference can run the exact same model.

numpy_forward follows Hugging Face's LlamaForCausalLM (rotate_half RoPE on unpermuted
weights, GQA by repeating KV heads, RMSNorm, SwiGLU; and, where the weights hold them,
Qwen3's per-head Q/K RMSNorm before RoPE) in float64, written here from the
paper-level definitions, independent of llamatool's kernels. With ggml_types (the type of
each matrix) it also rounds where ggml's CPU backend rounds: activations quantized to 8 bits
before quantized matrices (x86 quantize_row_q8_0 / quantize_row_q8_K_ref) or rounded to
f16/bf16 before float ones, keys and values stored as f16, queries rounded to f16 for Q.K.
What is left between it and llamatool is float32 arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llamatool.gguf_io import GGUFWriter, ValueType

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class TinyLlama:
    vocab: int = 320  # 256 byte tokens + 3 specials + padding tokens
    n_embd: int = 256
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 512
    n_ctx_train: int = 512
    eps: float = 1e-5
    rope_base: float = 10000.0
    rope_scaling: dict | None = None  # {"type": "linear"|"yarn"|"llama3", "factor": ..., ...}
    tied: bool = False
    bias: bool = False  # attention and MLP biases (transformers: attention_bias, mlp_bias)
    seed: int = 0
    extra: dict = field(default_factory=dict)
    explicit_head_dim: int | None = None  # Qwen3: n_head * head_dim need not be n_embd
    nope_every: int = 0  # SmolLM3: layers il with (il + 1) % nope_every == 0 have no RoPE

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.n_embd // self.n_head

    def hf_config(self) -> dict:
        """Keyword arguments for transformers.LlamaConfig describing the same model."""
        cfg = dict(
            vocab_size=self.vocab,
            hidden_size=self.n_embd,
            intermediate_size=self.n_ff,
            num_hidden_layers=self.n_layer,
            num_attention_heads=self.n_head,
            num_key_value_heads=self.n_head_kv,
            max_position_embeddings=self.n_ctx_train,
            rms_norm_eps=self.eps,
            rope_theta=self.rope_base,
            tie_word_embeddings=self.tied,
            attention_bias=self.bias,
            mlp_bias=self.bias,
        )
        if self.rope_scaling:
            scaling = dict(self.rope_scaling)
            scaling["rope_type"] = scaling.pop("type")
            cfg["rope_scaling"] = scaling
        return cfg


def random_weights(spec: TinyLlama) -> dict[str, np.ndarray]:
    """Seeded random float32 weights, Hugging Face names and shapes (out_features, in_features).

    Scaled like a trained model (unit-variance activations, peaked logits) so that greedy
    tokens are well separated and quantization errors show."""
    rng = np.random.default_rng(spec.seed)
    e, f, v, hd = spec.n_embd, spec.n_ff, spec.vocab, spec.head_dim
    n_q, n_kv = spec.n_head * hd, spec.n_head_kv * hd

    def mat(rows, cols, gain=1.0):
        return (rng.standard_normal((rows, cols)) * gain / math.sqrt(cols)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((v, e)).astype(np.float32)}
    for i in range(spec.n_layer):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(e)).astype(np.float32)
        w[p + "self_attn.q_proj.weight"] = mat(n_q, e, 2.0)
        w[p + "self_attn.k_proj.weight"] = mat(n_kv, e, 2.0)
        w[p + "self_attn.v_proj.weight"] = mat(n_kv, e)
        w[p + "self_attn.o_proj.weight"] = mat(e, n_q)
        w[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(e)).astype(np.float32)
        w[p + "mlp.gate_proj.weight"] = mat(f, e)
        w[p + "mlp.up_proj.weight"] = mat(f, e)
        w[p + "mlp.down_proj.weight"] = mat(e, f)
        if spec.bias:
            for name, n in (("self_attn.q_proj", n_q), ("self_attn.k_proj", n_kv), ("self_attn.v_proj", n_kv),
                            ("self_attn.o_proj", e), ("mlp.gate_proj", f), ("mlp.up_proj", f), ("mlp.down_proj", e)):
                w[p + name + ".bias"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
    w["model.norm.weight"] = (1 + 0.1 * rng.standard_normal(e)).astype(np.float32)
    if not spec.tied:
        w["lm_head.weight"] = mat(v, e, 3.0)
    return w


# --- GGUF ---------------------------------------------------------------------------------

_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.gate_proj.bias": "ffn_gate.bias",
    "mlp.up_proj.bias": "ffn_up.bias",
    "mlp.down_proj.bias": "ffn_down.bias",
}


def gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{_GGUF_NAMES[rest]}"


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter permutation of Q/K rows (conversion/llama.py LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def quantize_rows(qtype: str, x: np.ndarray) -> np.ndarray:
    """Raw blocks of x (float32 rows) in qtype, by llamatool's quantizers (byte-exact with
    ggml's: the quants tests check them)."""
    from llamatool.quants import registry

    return registry.quantize(registry.ggml_type(qtype), x)


def dequantize_rows(qtype: str, raw: np.ndarray) -> np.ndarray:
    """Reference dequantization: gguf-py's numpy code (independent of llamatool)."""
    import gguf.quants
    from gguf.constants import GGMLQuantizationType

    return gguf.quants.dequantize(raw, GGMLQuantizationType[qtype]).astype(np.float32)


def llama3_rope_factors(spec: TinyLlama) -> np.ndarray:
    """rope_freqs.weight as llama.cpp's converter computes it for rope_type llama3."""
    s = spec.rope_scaling
    hd = spec.head_dim
    freqs = 1.0 / (spec.rope_base ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
    factor, low, high = s.get("factor", 8.0), s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old = s.get("original_max_position_embeddings", 8192)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


def _tokenizer_fields(vocab: int) -> list:
    byte_chars = _bytes_to_unicode()
    tokens = [byte_chars[b] for b in range(256)] + SPECIALS
    tokens += [f"[PAD{i}]" for i in range(vocab - len(tokens))]
    types = [1] * 256 + [3] * len(SPECIALS) + [4] * (vocab - 256 - len(SPECIALS))
    merges = ["Ġ t", "h e", "Ġt he"]  # a few merges so BPE has something to do
    V = ValueType
    return [
        ("tokenizer.ggml.model", "gpt2", V.STRING, None),
        ("tokenizer.ggml.pre", "gpt-2", V.STRING, None),
        ("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING),
        ("tokenizer.ggml.token_type", np.array(types, np.int32), V.ARRAY, V.INT32),
        ("tokenizer.ggml.merges", merges, V.ARRAY, V.STRING),
        ("tokenizer.ggml.bos_token_id", 256, V.UINT32, None),
        ("tokenizer.ggml.eos_token_id", 258, V.UINT32, None),
        ("tokenizer.ggml.add_bos_token", True, V.BOOL, None),
        ("tokenizer.chat_template", CHATML, V.STRING, None),
    ]


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@dataclass
class Written:
    path: Path
    weights: dict  # HF name -> float32 values the file holds (dequantized, HF layout)
    types: dict  # HF name -> ggml type name the file stores it in


def write_gguf(path: Path, spec: TinyLlama, weights: dict, qtype: str = "F32", *, embd_type: str | None = None,
               output_type: str | None = None, fields: list | None = None) -> Written:
    """Write the model as llama.cpp's converter would.

    Matrices are stored in qtype (the token embedding in embd_type, the output matrix in
    output_type, both defaulting to qtype); norms and biases stay F32."""
    V = ValueType
    meta = [
        ("general.architecture", "llama", V.STRING, None),
        ("general.name", "tiny-llama", V.STRING, None),
        ("llama.context_length", spec.n_ctx_train, V.UINT32, None),
        ("llama.embedding_length", spec.n_embd, V.UINT32, None),
        ("llama.block_count", spec.n_layer, V.UINT32, None),
        ("llama.feed_forward_length", spec.n_ff, V.UINT32, None),
        ("llama.attention.head_count", spec.n_head, V.UINT32, None),
        ("llama.attention.head_count_kv", spec.n_head_kv, V.UINT32, None),
        ("llama.attention.layer_norm_rms_epsilon", spec.eps, V.FLOAT32, None),
        ("llama.rope.freq_base", spec.rope_base, V.FLOAT32, None),
        ("llama.rope.dimension_count", spec.head_dim, V.UINT32, None),
        ("llama.vocab_size", spec.vocab, V.UINT32, None),
    ]
    s = spec.rope_scaling
    if s and s["type"] in ("linear", "yarn"):
        meta.append(("llama.rope.scaling.type", s["type"], V.STRING, None))
        meta.append(("llama.rope.scaling.factor", float(s["factor"]), V.FLOAT32, None))
        if s["type"] == "yarn":
            meta.append(("llama.rope.scaling.original_context_length", int(s["original_max_position_embeddings"]), V.UINT32, None))
    meta += _tokenizer_fields(spec.vocab) + list(fields or [])

    stored, types, tensors = {}, {}, []
    for name, value in weights.items():
        data = value
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute(data, spec.n_head)
        elif name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute(data, spec.n_head_kv)
        if data.ndim == 2:
            t = embd_type if name == "model.embed_tokens.weight" and embd_type else qtype
            t = output_type if name == "lm_head.weight" and output_type else t
        else:
            t = "F32"
        raw = np.ascontiguousarray(data, np.float32).view(np.uint8) if t == "F32" else quantize_rows(t, data.astype(np.float32))
        back = data.astype(np.float32) if t == "F32" else dequantize_rows(t, raw.reshape(data.shape[0], -1)).reshape(data.shape)
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            back = unpermute(back, spec.n_head)
        elif name.endswith(("k_proj.weight", "k_proj.bias")):
            back = unpermute(back, spec.n_head_kv)
        stored[name] = back
        types[name] = t
        tensors.append((gguf_name(name), t, tuple(reversed(data.shape)), raw))
    if s and s["type"] == "llama3":
        factors = llama3_rope_factors(spec)
        tensors.append(("rope_freqs.weight", "F32", (factors.size,), factors.view(np.uint8)))

    with GGUFWriter(path, force=True) as w:
        for key, value, vtype, subtype in meta:
            w.add_field(key, value, vtype, subtype)
        for name, t, ne, _ in tensors:
            w.add_tensor_info(name, t, ne)
        for name, _, _, raw in tensors:
            w.write_tensor(name, raw)
    return Written(Path(path), stored, types)


# --- the reference forward pass ---------------------------------------------------------------


def _rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _inv_freq(spec: TinyLlama) -> tuple[np.ndarray, float]:
    """RoPE inverse frequencies and the cos/sin magnitude, as transformers computes them."""
    hd = spec.head_dim
    inv = 1.0 / (spec.rope_base ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    s = spec.rope_scaling
    if not s:
        return inv, 1.0
    if s["type"] == "linear":
        return inv / s["factor"], 1.0
    if s["type"] == "llama3":
        return inv / llama3_rope_factors(spec).astype(np.float64), 1.0
    if s["type"] == "yarn":
        factor, orig = s["factor"], s["original_max_position_embeddings"]

        def corr(rot):
            return hd * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(spec.rope_base))

        low, high = max(math.floor(corr(32)), 0), min(math.ceil(corr(1)), hd - 1)
        ramp = np.clip((np.arange(hd // 2) - low) / max(high - low, 0.001), 0, 1)
        extrapolation = 1 - ramp
        inv = (inv / factor) * (1 - extrapolation) + inv * extrapolation
        return inv, 0.1 * math.log(factor) + 1.0
    raise ValueError(s)


def _rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], -1)


def _f16(x):
    return x.astype(np.float16).astype(np.float64)


def _bf16(x):
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return u.view(np.float32).astype(np.float64)


def _q8_0(x):
    """ggml's x86 quantize_row_q8_0, quantized and expanded back."""
    b = x.astype(np.float32).reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(b).max(-1, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float64)
    inv = np.float32(127) / np.where(amax == 0, np.float32(1), amax)
    return (np.rint(b * inv.astype(np.float32)) * d).reshape(x.shape)


def _q8_k(x):
    """ggml's quantize_row_q8_K_ref, quantized and expanded back."""
    b = x.astype(np.float32).reshape(*x.shape[:-1], -1, 256)
    idx = np.abs(b).argmax(-1)[..., None]
    mx = np.take_along_axis(b, idx, -1)
    iscale = np.float32(-127) / np.where(mx == 0, np.float32(1), mx)
    q = np.minimum(127, np.rint(b * iscale.astype(np.float32)))
    d = np.where(mx == 0, 0, np.float32(1) / iscale)
    return (q * d.astype(np.float64)).reshape(x.shape)


K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "TQ1_0", "TQ2_0", "IQ1_M")


def ggml_activation(x, weight_type: str):
    """What ggml multiplies a matrix of weight_type with, instead of the activation x."""
    if weight_type == "F32":
        return x
    if weight_type == "F16":
        return _f16(x)
    if weight_type == "BF16":
        return _bf16(x)
    return _q8_k(x) if weight_type in K_QUANTS else _q8_0(x)


def numpy_forward(spec: TinyLlama, w: dict, tokens, ggml_types: dict | None = None, deltas: dict | None = None) -> np.ndarray:
    """Logits (n_tokens, vocab) of tokens at positions 0.., in float64; with ggml_types
    (HF name -> type), with ggml's roundings (see the module docstring). deltas (HF name ->
    matrix of the weight's shape): LoRA terms as llama.cpp adds them at run time, a product
    of their own with the activation as it is before ggml rounds it for the weight."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    deltas = {k: v.astype(np.float64) for k, v in (deltas or {}).items()}
    round16 = _f16 if ggml_types else (lambda a: a)
    tokens = np.asarray(tokens)
    n, hd, g = len(tokens), spec.head_dim, spec.n_head // spec.n_head_kv
    inv, mscale = _inv_freq(spec)
    angles = np.arange(n)[:, None] * inv[None, :]
    cos = np.cos(np.concatenate([angles, angles], -1))[:, None, :] * mscale
    sin = np.sin(np.concatenate([angles, angles], -1))[:, None, :] * mscale
    mask = np.triu(np.full((n, n), -np.inf), 1)

    def lin(x, name):
        extra = x @ deltas[name + ".weight"].T if name + ".weight" in deltas else 0.0
        if ggml_types:
            x = ggml_activation(x, ggml_types[name + ".weight"])
        y = x @ w[name + ".weight"].T + extra
        return y + w[name + ".bias"] if name + ".bias" in w else y

    x = w["model.embed_tokens.weight"][tokens]
    if "model.embed_tokens.weight" in deltas:
        x = x + deltas["model.embed_tokens.weight"][tokens]
    for i in range(spec.n_layer):
        p = f"model.layers.{i}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"], spec.eps)
        q = lin(h, p + "self_attn.q_proj").reshape(n, spec.n_head, hd)
        k = lin(h, p + "self_attn.k_proj").reshape(n, spec.n_head_kv, hd)
        v = lin(h, p + "self_attn.v_proj").reshape(n, spec.n_head_kv, hd)
        if p + "self_attn.q_norm.weight" in w:  # Qwen3: each head normed on its own
            q = _rms_norm(q, w[p + "self_attn.q_norm.weight"], spec.eps)
            k = _rms_norm(k, w[p + "self_attn.k_norm.weight"], spec.eps)
        if not (spec.nope_every and (i + 1) % spec.nope_every == 0):
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        q = round16(q)  # ggml: Q to f16 for the dot with the f16 cache
        k = round16(k)  # the cache holds f16 keys and values
        v = round16(v)
        k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        att = np.einsum("hqk,khd->qhd", scores / scores.sum(-1, keepdims=True), v).reshape(n, -1)
        x = x + lin(att, p + "self_attn.o_proj")
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], spec.eps)
        gate = lin(h, p + "mlp.gate_proj")
        x = x + lin(gate / (1 + np.exp(-gate)) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = _rms_norm(x, w["model.norm.weight"], spec.eps)
    name = "model.embed_tokens.weight" if spec.tied else "lm_head.weight"
    extra = x @ deltas[name].T if name in deltas and not spec.tied else 0.0
    if ggml_types:
        x = ggml_activation(x, ggml_types[name])
    return x @ w[name].T + extra
