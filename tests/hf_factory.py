"""Tiny, seeded Hugging Face checkpoints for the convert tests.

`write_checkpoint(root, spec)` writes a folder as `save_pretrained` would: config.json,
weights as model.safetensors or shards with model.safetensors.index.json (f32, f16 or
bf16), and a tokenizer: a SentencePiece tokenizer.model (protobuf written by hand) or a
byte-level BPE tokenizer.json (vocab and merges trained here on a fixed text), with
tokenizer_config.json, and optionally generation_config.json and a README.md model card.

Everything is deterministic for a given spec (uniform random weights from a seeded PCG64,
JSON with fixed key order), so expected outputs can be committed as test data.
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llamatool.tokenizer.unicode import BYTE_TO_CHAR  # GPT-2's byte -> printable character map

CORPUS = (
    "The quick brown fox jumps over the lazy dog. A llama is a domesticated South American camelid, "
    "widely used as a meat and pack animal by Andean cultures since the pre-Columbian era. "
    "Llamas are social animals and live with others as a herd. Their wool is soft and contains only "
    "a small amount of lanolin. Llamas can learn simple tasks after a few repetitions. When using a pack, "
    "they can carry about 25 to 30% of their body weight for 8 to 13 km (5-8 miles). The name llama was "
    "adopted by European settlers from native Peruvians. In 2024, 1234 llamas ate 56789 leaves; café, naïve, "
    "déjà vu — 東京 and 🦙 emoji too. Don't they'll we've I'm you're it's.\n\n    def f(x):\n        return x\n"
)

LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] | trim"
    " + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass
class CheckpointSpec:
    name: str  # folder name (the converter derives general.name and the file name from it)
    arch: str = "LlamaForCausalLM"
    tokenizer: str = "spm"  # spm | bpe-llama3 | bpe-smollm | bpe-gpt2 | bpe-qwen2
    hidden: int = 64
    intermediate: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int | None = None
    head_dim: int | None = None  # written to config.json when given
    extra_vocab: int = 0  # config vocab_size beyond the tokenizer ([PAD] tokens)
    tied: bool = False
    dtype: str = "float32"  # float32 | float16 | bfloat16
    shards: int = 1
    rope_theta: float | None = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    seed: int = 0
    config_extra: dict = field(default_factory=dict)
    tokenizer_config_extra: dict = field(default_factory=dict)
    generation_config: dict | None = None
    readme: str | None = None
    bpe_merges: int = 120
    merges_as_pairs: bool = True


# --- weights ----------------------------------------------------------------------------


def tensor_shapes(spec: CheckpointSpec, n_vocab: int) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes, in the order transformers' *ForCausalLM lists them
    (Qwen2: Q/K/V biases; Qwen3: per-head Q/K norms)."""
    hd = spec.head_dim or spec.hidden // spec.heads
    kv = spec.kv_heads or spec.heads
    E, F = spec.hidden, spec.intermediate
    shapes = {"model.embed_tokens.weight": (n_vocab, E)}
    if spec.arch == "Phi3ForCausalLM":
        return _phi3_shapes(spec, shapes, hd, kv, n_vocab)
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        for proj, rows in (("q_proj", spec.heads * hd), ("k_proj", kv * hd), ("v_proj", kv * hd)):
            shapes[p + f"self_attn.{proj}.weight"] = (rows, E)
            if spec.arch == "Qwen2ForCausalLM":
                shapes[p + f"self_attn.{proj}.bias"] = (rows,)
        shapes[p + "self_attn.o_proj.weight"] = (E, spec.heads * hd)
        if spec.arch in ("Qwen3ForCausalLM", "Gemma3ForCausalLM"):
            shapes.update({p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)})
        shapes.update({
            p + "mlp.gate_proj.weight": (F, E),
            p + "mlp.up_proj.weight": (F, E),
            p + "mlp.down_proj.weight": (E, F),
            p + "input_layernorm.weight": (E,),
            p + "post_attention_layernorm.weight": (E,),
        })  # fmt: skip
        if spec.arch in GEMMA_ARCHS:
            shapes.update({p + "pre_feedforward_layernorm.weight": (E,), p + "post_feedforward_layernorm.weight": (E,)})
    shapes["model.norm.weight"] = (E,)
    if not spec.tied:
        shapes["lm_head.weight"] = (n_vocab, E)
    return shapes


GEMMA_ARCHS = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")


def _phi3_shapes(spec: CheckpointSpec, shapes: dict, hd: int, kv: int, n_vocab: int) -> dict:
    """Phi-3's layer: fused qkv_proj and gate_up_proj."""
    E, F = spec.hidden, spec.intermediate
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.qkv_proj.weight": ((spec.heads + 2 * kv) * hd, E),
            p + "self_attn.o_proj.weight": (E, spec.heads * hd),
            p + "mlp.gate_up_proj.weight": (2 * F, E),
            p + "mlp.down_proj.weight": (E, F),
            p + "input_layernorm.weight": (E,),
            p + "post_attention_layernorm.weight": (E,),
        })  # fmt: skip
    shapes["model.norm.weight"] = (E,)
    if not spec.tied:
        shapes["lm_head.weight"] = (n_vocab, E)
    return shapes


def random_weights(spec: CheckpointSpec, n_vocab: int) -> dict[str, np.ndarray]:
    """float32 values: uniform weights scaled by fan-in, norms near 1 (as the model multiplies by them)."""
    rng = np.random.default_rng(spec.seed)
    out = {}
    for name, shape in tensor_shapes(spec, n_vocab).items():
        u = rng.random(shape, dtype=np.float32) * 2 - 1
        if name.endswith(".bias"):
            out[name] = (0.1 * u).astype(np.float32)
        elif len(shape) == 1 and spec.arch in GEMMA_ARCHS:  # Gemma stores w - 1: effective weights near 1
            out[name] = (0.1 * u).astype(np.float32)
        elif len(shape) == 1:
            out[name] = (1 + 0.1 * u).astype(np.float32)
        else:
            out[name] = (u * np.float32(1.7 / np.sqrt(shape[1]))).astype(np.float32)
    return out


_ST_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def stored_bytes(values: np.ndarray, dtype: str) -> bytes:
    if dtype == "float32":
        return values.astype("<f4").tobytes()
    if dtype == "float16":
        return values.astype("<f2").tobytes()
    bits = values.astype("<f4").view(np.uint32).astype(np.uint64)  # round to nearest even
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]], metadata: dict | None = None) -> None:
    """tensors: name -> (safetensors dtype, shape, raw bytes), laid out in the given order."""
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, _, raw in tensors.values():
            f.write(raw)


def write_weights(folder: Path, spec: CheckpointSpec, weights: dict[str, np.ndarray]) -> None:
    dtype = _ST_DTYPE[spec.dtype]
    entries = {name: (dtype, v.shape, stored_bytes(v, spec.dtype)) for name, v in weights.items()}
    if spec.shards <= 1:
        write_safetensors(folder / "model.safetensors", entries)
        return
    names = list(entries)
    per = -(-len(names) // spec.shards)
    weight_map, total = {}, 0
    for k in range(spec.shards):
        file = f"model-{k + 1:05d}-of-{spec.shards:05d}.safetensors"
        part = {n: entries[n] for n in names[k * per : (k + 1) * per]}
        write_safetensors(folder / file, part)
        weight_map.update({n: file for n in part})
        total += sum(len(raw) for _, _, raw in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


# --- byte-level BPE --------------------------------------------------------------------


def _words(text: str, digits_apart: bool) -> list[str]:
    pattern = r" ?[^\W\d_]+|\d| ?[^\s\w]+|\s+" if digits_apart else r" ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+"
    return re.findall(pattern, text)


def train_bpe(text: str, n_merges: int, digits_apart: bool) -> list[tuple[str, str]]:
    """Greedy BPE merges over byte-level words (ties broken by the pair's text)."""
    counts = Counter(tuple(BYTE_TO_CHAR[b] for b in w.encode()) for w in _words(text, digits_apart))
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for word, n in counts.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = Counter()
        for word, n in counts.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        counts = merged
    return merges


def _added(tid: int, content: str, special: bool, normalized: bool = False) -> dict:
    return {"id": tid, "content": content, "single_word": False, "lstrip": False, "rstrip": False, "normalized": normalized, "special": special}


def bpe_tokenizer(spec: CheckpointSpec) -> tuple[dict, dict, int]:
    """(tokenizer.json, tokenizer_config.json, tokenizer size) for a byte-level BPE flavour."""
    style = spec.tokenizer.removeprefix("bpe-")
    merges = train_bpe(CORPUS, spec.bpe_merges, digits_apart=style != "gpt2")
    pieces = list(BYTE_TO_CHAR) + [a + b for a, b in merges]
    pieces = list(dict.fromkeys(pieces))
    if style == "qwen2":  # Qwen puts them last, has no BOS and ends turns with <|im_end|>
        vocab = {t: i for i, t in enumerate(pieces)}
        n = len(vocab)
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        added = [_added(n + i, t, True) for i, t in enumerate(specials)] + [_added(n + 3, "<tool_call>", False)]
        bos, eos, unk = None, "<|im_end|>", None
    elif style == "smollm":  # SmolLM puts its special tokens first
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>"]
        vocab = {t: i for i, t in enumerate(specials + pieces)}
        added = [_added(i, t, True) for i, t in enumerate(specials)]
        bos, eos, unk = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
    else:  # Llama 3 puts them last
        vocab = {t: i for i, t in enumerate(pieces)}
        n = len(vocab)
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|reserved_special_token_0|>"]
        added = [_added(n + i, t, True) for i, t in enumerate(specials)]
        added += [_added(n + 4, "<tool_call>", False), _added(n + 5, "<|fake_control|>", False), _added(n + 6, "\u2581spaced", False, True)]
        bos, eos, unk = "<|begin_of_text|>", "<|eot_id|>", None
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if style == "llama3":
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
            {**byte_level, "use_regex": False}]}  # fmt: skip
        post = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [vocab.get(bos, len(vocab))], "tokens": [bos]}},
        }  # fmt: skip
    elif style == "qwen2":
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
            {**byte_level, "use_regex": False}]}  # fmt: skip
        post = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    elif style == "smollm":
        pre = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
        post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    else:
        pre, post = byte_level, {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    merge_list = [[a, b] for a, b in merges] if spec.merges_as_pairs else [f"{a} {b}" for a, b in merges]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": style == "llama3", "vocab": vocab, "merges": merge_list,
        },
    }  # fmt: skip
    config = {
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
        "bos_token": bos,
        "clean_up_tokenization_spaces": style not in ("smollm", "qwen2"),
        "eos_token": eos,
        "model_max_length": spec.max_position_embeddings,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
    }
    if unk:
        config["unk_token"] = unk
    if style == "qwen2":
        config.update({"pad_token": "<|endoftext|>", "errors": "replace", "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer"})
    size = max([*vocab.values(), *(a["id"] for a in added)]) + 1
    return tokenizer, config, size


# --- SentencePiece ----------------------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes | int) -> bytes:
    key = _varint(number << 3 | wire)
    if wire == 0:
        return key + _varint(payload)
    if wire == 5:
        return key + payload
    return key + _varint(len(payload)) + payload


def sentencepiece_pieces() -> list[tuple[str, float, int]]:
    """(piece, score, type) of a small BPE SentencePiece model with byte fallback."""
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    words = Counter(w.replace(" ", "\u2581") for w in _words(CORPUS.replace("\n", " "), digits_apart=True))
    chars = sorted({c for w in words for c in w})
    merged = [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:60]
    normal = list(dict.fromkeys(chars + merged))
    pieces += [(p, -float(i), 1) for i, p in enumerate(normal)]
    pieces += [("<tool>", 0.0, 4), ("<unused0>", 0.0, 5)]
    return pieces


def sentencepiece_model(pieces: list[tuple[str, float, int]]) -> bytes:
    out = bytearray()
    for text, score, ptype in pieces:
        body = _field(1, 2, text.encode()) + _field(2, 5, struct.pack("<f", score)) + _field(3, 0, ptype)
        out += _field(1, 2, body)
    trainer = _field(3, 0, 2) + _field(4, 0, len(pieces)) + _field(35, 0, 1) + _field(40, 0, 0) + _field(41, 0, 1) + _field(42, 0, 2)
    normalizer = _field(1, 2, b"identity") + _field(3, 0, 1) + _field(4, 0, 0) + _field(5, 0, 1)
    return bytes(out + _field(2, 2, trainer) + _field(3, 2, normalizer))


def spm_tokenizer_config(spec: CheckpointSpec, n_pieces: int) -> dict:
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "legacy": False,
        "tokenizer_class": "LlamaTokenizer",
        "added_tokens_decoder": {
            "0": {"content": "<unk>", "special": True, "normalized": False},
            "1": {"content": "<s>", "special": True, "normalized": False},
            "2": {"content": "</s>", "special": True, "normalized": False},
        },
    }
    turn_tokens = {"Gemma2ForCausalLM": ["<start_of_turn>", "<end_of_turn>"], "Gemma3ForCausalLM": ["<start_of_turn>", "<end_of_turn>"],
                   "Phi3ForCausalLM": ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>"]}.get(spec.arch, [])
    for i, text in enumerate(turn_tokens):  # chat tokens after the SentencePiece model (extra_vocab covers them)
        config["added_tokens_decoder"][str(n_pieces + i)] = {"content": text, "special": True, "normalized": False}
    if turn_tokens:
        config["chat_template"] = PHI3_TEMPLATE if spec.arch == "Phi3ForCausalLM" else GEMMA_TEMPLATE
    if spec.arch == "MistralForCausalLM":  # Mistral-style control and user-defined tokens
        config["added_tokens_decoder"].update({
            str(n_pieces - 2): {"content": "[INST]", "special": True, "normalized": False},
            str(n_pieces - 1): {"content": "\u2581user\u2581tag", "special": False, "normalized": False},
        })  # fmt: skip
        config["chat_template"] = CHAT_TEMPLATE
    return config


# --- the folder ---------------------------------------------------------------------------


_MODEL_TYPES = {"MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
                "SmolLM3ForCausalLM": "smollm3", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3_text",
                "Phi3ForCausalLM": "phi3"}
_TURN_TOKEN_ARCHS = ("Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM")  # added tokens in tokenizer_config


def config_json(spec: CheckpointSpec, n_vocab: int) -> dict:
    model_type = _MODEL_TYPES.get(spec.arch, "llama")
    cfg = {
        "architectures": [spec.arch],
        "model_type": model_type,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads or spec.heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.rms_norm_eps,
        "vocab_size": n_vocab,
        "tie_word_embeddings": spec.tied,
        "torch_dtype": spec.dtype,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
    }
    if spec.arch in GEMMA_ARCHS:
        del cfg["hidden_act"]
        cfg["hidden_activation"] = "gelu_pytorch_tanh"
    if spec.head_dim is not None:
        cfg["head_dim"] = spec.head_dim
    if spec.rope_theta is not None:
        cfg["rope_theta"] = spec.rope_theta
    if spec.rope_scaling is not None:
        cfg["rope_scaling"] = spec.rope_scaling
    cfg.update(spec.config_extra)
    return cfg


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_checkpoint(root: Path, spec: CheckpointSpec) -> Path:
    """Write the checkpoint folder root/spec.name and return it."""
    folder = Path(root) / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    if spec.tokenizer == "spm":
        pieces = sentencepiece_pieces()
        (folder / "tokenizer.model").write_bytes(sentencepiece_model(pieces))
        tok_config = spm_tokenizer_config(spec, len(pieces))
        size = len(pieces)
        if spec.extra_vocab and spec.arch not in _TURN_TOKEN_ARCHS:  # a token past the SentencePiece model
            _write_json(folder / "added_tokens.json", {"<extra_added>": size})
    else:
        tokenizer, tok_config, size = bpe_tokenizer(spec)
        _write_json(folder / "tokenizer.json", tokenizer)
    tok_config.update(spec.tokenizer_config_extra)
    _write_json(folder / "tokenizer_config.json", tok_config)
    n_vocab = size + spec.extra_vocab
    _write_json(folder / "config.json", config_json(spec, n_vocab))
    if spec.generation_config is not None:
        _write_json(folder / "generation_config.json", spec.generation_config)
    if spec.readme is not None:
        (folder / "README.md").write_text(spec.readme, encoding="utf-8")
    write_weights(folder, spec, random_weights(spec, n_vocab))
    return folder


README = """---
license: apache-2.0
language:
- en
- fr
tags:
- llama
- tiny
base_model: example-org/Tiny-Base-1M
datasets:
- example-org/tiny-corpus
---
# A tiny test model
"""

# The seeded fixtures: every case the converter must handle, each small enough to convert
# in milliseconds. Their reference outputs are committed in tests/data/convert_reference.json.
FIXTURES = {
    "llama2-spm": CheckpointSpec(
        "tiny-llama2-spm", tokenizer="spm", extra_vocab=3, dtype="float32", seed=1, readme=README,
        rope_theta=None, generation_config={"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.1},
    ),
    "llama3-bpe": CheckpointSpec(
        "tiny-llama3-bpe", tokenizer="bpe-llama3", heads=4, kv_heads=2, tied=True, dtype="bfloat16", shards=3,
        extra_vocab=5, rope_theta=500000.0, max_position_embeddings=131072, seed=2,
        rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        config_extra={"bos_token_id": None, "eos_token_id": [1, 2]},
    ),
    "smollm-bpe": CheckpointSpec(
        "tiny-smollm-bpe", tokenizer="bpe-smollm", hidden=48, intermediate=96, heads=3, kv_heads=1, tied=True,
        dtype="float16", seed=3, merges_as_pairs=False, rope_theta=100000.0, max_position_embeddings=8192,
        tokenizer_config_extra={"add_prefix_space": False},
    ),
    "mistral-spm": CheckpointSpec(
        "tiny-mistral-spm", arch="MistralForCausalLM", tokenizer="spm", heads=4, kv_heads=2, head_dim=32,
        dtype="bfloat16", shards=2, seed=4, rope_scaling={"type": "linear", "factor": 2.0},
        max_position_embeddings=32768, tokenizer_config_extra={"add_prefix_space": True},
    ),
    "qwen2-bpe": CheckpointSpec(
        "tiny-qwen2-bpe", arch="Qwen2ForCausalLM", tokenizer="bpe-qwen2", heads=4, kv_heads=2, tied=True,
        dtype="bfloat16", seed=5, extra_vocab=4, rope_theta=1000000.0, max_position_embeddings=32768, rms_norm_eps=1e-6,
        config_extra={"bos_token_id": None, "eos_token_id": 2, "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 2},
        generation_config={"eos_token_id": [2, 0], "pad_token_id": 0, "temperature": 0.7, "top_p": 0.8, "top_k": 20},
    ),
    "qwen3-bpe": CheckpointSpec(
        "tiny-qwen3-bpe", arch="Qwen3ForCausalLM", tokenizer="bpe-qwen2", heads=4, kv_heads=2, head_dim=32,
        dtype="float16", shards=2, seed=6, rope_theta=1000000.0, max_position_embeddings=40960, rms_norm_eps=1e-6,
        config_extra={"bos_token_id": None, "eos_token_id": 2, "attention_bias": False, "use_sliding_window": False},
    ),
    "smollm3-bpe": CheckpointSpec(
        "tiny-smollm3-bpe", arch="SmolLM3ForCausalLM", tokenizer="bpe-llama3", layers=4, heads=4, kv_heads=2, tied=True,
        dtype="bfloat16", seed=7, rope_theta=5000000.0, max_position_embeddings=65536, rms_norm_eps=1e-6,
        config_extra={"no_rope_layers": [1, 1, 1, 0], "no_rope_layer_interval": 4, "use_sliding_window": False,
                      "bos_token_id": None, "eos_token_id": 2, "pad_token_id": None},
    ),
    # Gemma 2: a 16-position window on layers 0 and 2, soft-caps small enough to bite on
    # these weights, norms stored as w - 1 in bfloat16 (the converter's +1 rounds there)
    "gemma2-spm": CheckpointSpec(
        "tiny-gemma2-spm", arch="Gemma2ForCausalLM", tokenizer="spm", layers=3, heads=4, kv_heads=2, head_dim=32,
        tied=True, dtype="bfloat16", seed=8, extra_vocab=2, rope_theta=10000.0, max_position_embeddings=8192,
        rms_norm_eps=1e-6,
        config_extra={"query_pre_attn_scalar": 32, "sliding_window": 16, "attn_logit_softcapping": 10.0,
                      "final_logit_softcapping": 5.0, "attention_bias": False, "pad_token_id": 0},
    ),
    # Gemma 3 text: 7 layers (layer 5 global, the others slide over 16 positions with base
    # 10000), Q/K norms, linear rope scaling on the global layers, float16 (the +1 rounds there)
    "gemma3-spm": CheckpointSpec(
        "tiny-gemma3-spm", arch="Gemma3ForCausalLM", tokenizer="spm", layers=7, heads=4, kv_heads=1, head_dim=32,
        tied=True, dtype="float16", seed=10, extra_vocab=2, rope_theta=None, max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        config_extra={"query_pre_attn_scalar": 32, "sliding_window": 16, "attention_bias": False, "pad_token_id": 0,
                      "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                          "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0}}},
    ),
    # Phi-3 with LongRoPE: long factors beyond 32 positions (the original context), fused
    # qkv and gate|up; sliding_window as the real checkpoints declare it (llama.cpp ignores it)
    "phi3-spm": CheckpointSpec(
        "tiny-phi3-spm", arch="Phi3ForCausalLM", tokenizer="spm", heads=4, kv_heads=2, dtype="bfloat16", seed=9,
        extra_vocab=4, max_position_embeddings=128,
        rope_scaling={"type": "longrope", "long_factor": [1.0, 1.2, 1.5, 2.0, 3.0, 4.5, 6.0, 8.0],
                      "short_factor": [1.0, 1.0, 1.1, 1.2, 1.3, 1.5, 1.8, 2.0]},
        config_extra={"original_max_position_embeddings": 32, "sliding_window": 2047, "eos_token_id": 2,
                      "pad_token_id": 0},
    ),
}  # fmt: skip
