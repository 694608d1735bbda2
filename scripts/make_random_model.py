#!/usr/bin/env python3
"""Random-weight LLaMA checkpoints of real model shapes, converted and quantized: the scale
fixtures for measuring decode where the weights no longer fit in the CPU's caches.

    .venv/bin/python scripts/make_random_model.py llama-3.2-1b --presets Q4_0,Q8_0,Q4_K_M
    .venv/bin/python scripts/make_random_model.py llama-3.2-3b --out /work/fixtures

For each shape this writes, under --out (default: `fixtures/` next to the checkout, kept out
of the repository):
    <shape>-hf/            a Hugging Face folder: config.json, sharded model*.safetensors
                           (f16, written with numpy + safetensors), tokenizer.json and
                           tokenizer_config.json rebuilt from a vocab-only GGUF of llama.cpp's
                           test set (default: Llama 3's 128256-token vocab)
    <shape>-F16.gguf       `llamatool convert` of it
    <shape>-<PRESET>.gguf  `llamatool quantize` of the F16 file, one per preset
Existing outputs are kept (delete them, or pass --force, to remake them).

Weights are i.i.d. normal with a scale chosen so activations stay where trained models keep
them: 1/sqrt(fan_in) for the projections into attention and the FFN (unit-variance outputs),
and a further 1/sqrt(2 n_layer) for the two projections back into the residual stream (its
variance then grows to about 2x over the depth instead of exploding); norm weights are 1.
The same seed gives the same bytes (each tensor draws from its own stream, seeded by the seed
and the tensor's name). Speed does not depend on the values, only on the shape and the types,
so this stands in for the real model in `bench` and scripts/compare_llamacpp.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOCABS = ROOT.parent / "shared" / "tokenizer-vectors"
DEFAULT_VOCAB = VOCABS / "ggml-vocab-llama-bpe.gguf"
DEFAULT_OUT = Path(os.environ.get("LLAMATOOL_FIXTURES", ROOT.parent / "fixtures"))
SHARD_BYTES = 1 << 30  # safetensors shards of about 1 GiB: memory follows one shard


@dataclass(frozen=True)
class Shape:
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    tied: bool = True
    rope_theta: float = 500000.0
    n_ctx_train: int = 131072
    llama3_rope: bool = True  # Llama 3.1+'s rope_scaling (written as the rope_freqs tensor)


# Shapes of released models (their config.json), and a tiny one for tests.
SHAPES = {
    "llama-3.2-1b": Shape(n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, n_ff=8192),
    "llama-3.2-3b": Shape(n_embd=3072, n_layer=28, n_head=24, n_head_kv=8, n_ff=8192),
    "llama-3.1-8b": Shape(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, tied=False),
    "tiny": Shape(n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=256, n_ctx_train=2048, llama3_rope=False),
}


# --- tokenizer: a vocab-only GGUF back into tokenizer.json ------------------------------------

# The pre-tokenizers tokenizer.json declares for the vocabs llama.cpp tests with.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    "llama-bpe": ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}, True),
    "gpt-2": ({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}, False),
}
CONTROL = 3


def read_vocab(path: Path) -> dict:
    """tokens, types, merges, pre-tokenizer name and bos/eos of a vocab-only GGUF."""
    from llamatool.gguf_io import GGUFReader

    meta = GGUFReader(path).metadata
    pre = meta.get("tokenizer.ggml.pre")
    if meta.get("tokenizer.ggml.model") != "gpt2" or pre not in PRE_TOKENIZERS:
        raise SystemExit(f"{path}: a byte-level BPE vocab with pre-tokenizer {', '.join(PRE_TOKENIZERS)} is needed")
    return {
        "tokens": list(meta["tokenizer.ggml.tokens"]),
        "types": [int(t) for t in meta["tokenizer.ggml.token_type"]],
        "merges": list(meta["tokenizer.ggml.merges"]),
        "pre": pre,
        "bos": int(meta["tokenizer.ggml.bos_token_id"]),
        "eos": int(meta["tokenizer.ggml.eos_token_id"]),
    }


def write_tokenizer(vocab: dict, folder: Path) -> None:
    """tokenizer.json and tokenizer_config.json of the vocab (its control tokens as added
    special tokens), as `tokenizers` saves a byte-level BPE."""
    pre_tokenizer, ignore_merges = PRE_TOKENIZERS[vocab["pre"]]
    tokens, types = vocab["tokens"], vocab["types"]
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, (t, kind) in enumerate(zip(tokens, types)) if kind == CONTROL]
    tokenizer = {
        "version": "1.0",
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": vocab["merges"]},
    }
    config = {"bos_token": tokens[vocab["bos"]], "eos_token": tokens[vocab["eos"]],
              "clean_up_tokenization_spaces": True, "model_max_length": 131072,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    _write_json(folder / "tokenizer.json", tokenizer)
    _write_json(folder / "tokenizer_config.json", config)


# --- weights ----------------------------------------------------------------------------------


def config_json(shape: Shape, vocab: dict) -> dict:
    """config.json as transformers writes it for LlamaForCausalLM."""
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": shape.n_embd, "intermediate_size": shape.n_ff, "num_hidden_layers": shape.n_layer,
        "num_attention_heads": shape.n_head, "num_key_value_heads": shape.n_head_kv,
        "head_dim": shape.n_embd // shape.n_head, "vocab_size": len(vocab["tokens"]),
        "max_position_embeddings": shape.n_ctx_train, "rms_norm_eps": 1e-5, "rope_theta": shape.rope_theta,
        "tie_word_embeddings": shape.tied, "bos_token_id": vocab["bos"], "eos_token_id": vocab["eos"],
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "float16",
    }
    if shape.llama3_rope:
        config["rope_scaling"] = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    return config


def tensor_specs(shape: Shape, n_vocab: int) -> list[tuple[str, tuple[int, ...], float]]:
    """(name, shape, standard deviation; 0 = all ones) of every tensor, in checkpoint order."""
    E, F = shape.n_embd, shape.n_ff
    hd = E // shape.n_head
    into, back_attn, back_ffn = E ** -0.5, (shape.n_head * hd * 2 * shape.n_layer) ** -0.5, (F * 2 * shape.n_layer) ** -0.5
    specs = [("model.embed_tokens.weight", (n_vocab, E), into)]
    for i in range(shape.n_layer):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (E,), 0.0),
            (p + "self_attn.q_proj.weight", (shape.n_head * hd, E), into),
            (p + "self_attn.k_proj.weight", (shape.n_head_kv * hd, E), into),
            (p + "self_attn.v_proj.weight", (shape.n_head_kv * hd, E), into),
            (p + "self_attn.o_proj.weight", (E, shape.n_head * hd), back_attn),
            (p + "post_attention_layernorm.weight", (E,), 0.0),
            (p + "mlp.gate_proj.weight", (F, E), into),
            (p + "mlp.up_proj.weight", (F, E), into),
            (p + "mlp.down_proj.weight", (E, F), back_ffn),
        ]
    specs.append(("model.norm.weight", (E,), 0.0))
    if not shape.tied:
        specs.append(("lm_head.weight", (n_vocab, E), into))
    return specs


def random_tensor(name: str, dims: tuple[int, ...], std: float, seed: int) -> np.ndarray:
    """The tensor's f16 values: its own random stream, so shards and order do not matter."""
    if std == 0.0:
        return np.ones(dims, np.float16)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    out = np.empty(dims, np.float16)
    rows_per_step = max(1, (1 << 24) // max(1, int(np.prod(dims[1:], dtype=np.int64))))
    for r in range(0, dims[0], rows_per_step):  # in slices: no full-size float32 copy
        part = rng.standard_normal((min(rows_per_step, dims[0] - r),) + dims[1:], dtype=np.float32)
        part *= np.float32(std)
        out[r:r + len(part)] = part
    return out


def write_weights(shape: Shape, n_vocab: int, folder: Path, seed: int) -> None:
    """model-0000i-of-0000n.safetensors shards of about SHARD_BYTES and their index."""
    from safetensors.numpy import save_file

    shards: list[list[tuple[str, tuple[int, ...], float]]] = [[]]
    size = 0
    for spec in tensor_specs(shape, n_vocab):
        nbytes = 2 * int(np.prod(spec[1], dtype=np.int64))
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    weight_map, total = {}, 0
    for i, specs in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: random_tensor(n, dims, std, seed) for n, dims, std in specs}
        tmp = folder / (name + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(folder / name)
        total += sum(t.nbytes for t in tensors.values())
        weight_map.update({n: name for n in tensors})
    _write_json(folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def write_checkpoint(shape: Shape, vocab: dict, folder: Path, seed: int) -> None:
    """The whole Hugging Face folder; written beside `folder` and renamed at the end."""
    tmp = folder.with_name(folder.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    _write_json(tmp / "config.json", config_json(shape, vocab))
    write_tokenizer(vocab, tmp)
    write_weights(shape, len(vocab["tokens"]), tmp, seed)
    tmp.rename(folder)


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")


# --- convert and quantize -----------------------------------------------------------------


def llamatool_command() -> list[str]:
    return [sys.executable, "-m", "llamatool"]


def make(name: str, out: Path, presets: list[str], vocab_path: Path, seed: int, force: bool, log=print) -> dict:
    """The checkpoint, F16 GGUF and quantized GGUFs of one shape (those missing or forced);
    returns {"hf": folder, "F16": path, preset: path...}."""
    shape = SHAPES[name]
    out.mkdir(parents=True, exist_ok=True)
    hf = out / f"{name}-hf"
    made = {"hf": hf, "F16": out / f"{name}-F16.gguf"}
    if force or not hf.is_dir():
        if hf.is_dir():
            for f in hf.iterdir():
                f.unlink()
            hf.rmdir()
        log(f"writing {hf}")
        write_checkpoint(shape, read_vocab(vocab_path), hf, seed)
    if force or not made["F16"].is_file():
        log(f"converting to {made['F16']}")
        _run(llamatool_command() + ["convert", str(hf), "--outtype", "f16", "--outfile", str(made["F16"]),
                                      "--model-name", f"random {name}"]
             + (["--force"] if force else []))
    for preset in presets:
        path = out / f"{name}-{preset}.gguf"
        made[preset] = path
        if force or not path.is_file():
            log(f"quantizing to {path}")
            _run(llamatool_command() + ["quantize", str(made["F16"]), str(path), preset] + (["--force"] if force else []))
    return made


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {result.stderr.strip()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shapes", nargs="+", choices=sorted(SHAPES), help="model shapes to make")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}; $LLAMATOOL_FIXTURES)")
    parser.add_argument("--presets", default="Q4_0,Q8_0,Q4_K_M", help="quantize presets, comma-separated ('' for none)")
    parser.add_argument("--vocab", type=Path, default=DEFAULT_VOCAB, help="vocab-only GGUF of a byte-level BPE tokenizer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="remake outputs that exist")
    args = parser.parse_args(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    for name in args.shapes:
        for kind, path in make(name, args.out, presets, args.vocab, args.seed, args.force).items():
            print(f"{name} {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
