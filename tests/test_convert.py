"""`llamatool convert`: Hugging Face checkpoint folders to GGUF.

The bar is llama.cpp's convert_hf_to_gguf.py. Its outputs for the seeded fixtures of
tests/hf_factory.py (every outtype, --vocab-only, --model-name) are committed in
tests/data/convert_reference.json: metadata keys, types and values (long arrays by
sha256), tensor names, types, shapes, offsets and sha256, and the file's sha256.
Our output must match them exactly; the reference tier re-derives the file by running
the vendored converter when its source is present (`python -m tests.test_convert
--regenerate` rewrites it).

Reference tier (torch + transformers): the real SmolLM2-135M-Instruct as a Hugging Face
checkpoint, built by transformers from the default GGUF, converted back and compared
with that GGUF (weights, tokenizer, hyperparameters) and with the vendored converter.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llamatool.convert import ConvertOptions, convert_model, plan_conversion
from llamatool import arch
from llamatool.convert.tensors import expected_tensors, head_row_order
from llamatool.convert.pretokenizer import GPT2, LLAMA3, QWEN2, describe, recognise
from llamatool.convert.sentencepiece_model import read_pieces
from llamatool.errors import LlamatoolError
from llamatool.gguf_io import GGUFReader
from llamatool.model import Model
from llamatool.quantize import QuantizeOptions, preset_file_type, quantize_model
from tests.conftest import missing_reference
from tests.hf_factory import FIXTURES, CheckpointSpec, write_checkpoint, write_safetensors

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "convert_reference.json"
# llama.cpp's source as llama-cpp-python 0.3.36 vendors it: $LLAMA_CPP_SRC (.ci/run sets it to
# the tree scripts/build_llamacpp.sh built), else the shared reference checkout beside this one.
VENDOR = Path(os.environ.get("LLAMA_CPP_SRC") or ROOT.parent / "ref" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp")

# The tokenizer.ggml.pre convert_hf_to_gguf.py gives the real tokenizers these fixtures
# imitate (Llama 3, SmolLM). Its hash lookup cannot know a tiny generated vocab, so the
# reference run is told the answer; the SmolLM2 test checks the real lookup.
REFERENCE_PRE = {"llama3-bpe": "llama-bpe", "smollm-bpe": "smollm", "qwen2-bpe": "qwen2", "qwen3-bpe": "qwen2",
                 "smollm3-bpe": "llama-bpe"}  # SentencePiece fixtures (gemma2-spm, phi3-spm) need no hint


def _cases() -> dict[str, tuple[str, dict]]:
    cases = {f"{key}/{t}": (key, {"outtype": t}) for key in FIXTURES for t in ("f32", "f16", "bf16", "q8_0")}
    cases["llama3-bpe/vocab-only"] = ("llama3-bpe", {"outtype": "auto", "vocab_only": True})
    cases["mistral-spm/vocab-only-q8_0"] = ("mistral-spm", {"outtype": "q8_0", "vocab_only": True})
    cases["llama2-spm/model-name"] = ("llama2-spm", {"outtype": "auto", "model_name": "My Model v2.1 7B"})
    cases["llama3-bpe/auto"] = ("llama3-bpe", {"outtype": "auto"})
    return cases


CASES = _cases()


def _cli_args(opts: dict) -> list[str]:
    args = ["--outtype", opts["outtype"]]
    if opts.get("vocab_only"):
        args.append("--vocab-only")
    if opts.get("model_name"):
        args += ["--model-name", opts["model_name"]]
    return args


# --- summaries of a GGUF file ---------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _value(field) -> object:
    v = field.plain()
    if isinstance(v, np.ndarray):
        return v.tolist() if len(v) <= 16 else {"n": len(v), "sha256": _sha(np.ascontiguousarray(v).tobytes())}
    if isinstance(v, list):
        return v if len(v) <= 16 else {"n": len(v), "sha256": _sha(json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogateescape"))}
    return v.item() if isinstance(v, np.generic) else v


def summarize(path: Path) -> dict:
    """A GGUF file as JSON-friendly data: everything that must match the reference."""
    with GGUFReader(path) as r:
        metadata = [[k, f.type.name, f.subtype.name if f.subtype else None, _value(f)] for k, f in r.fields.items()]
        tensors = [[t.name, t.type.name, list(t.ne), t.offset, _sha(t.data.tobytes())] for t in r.tensors]
        rope = r.tensor("rope_freqs.weight").values().tolist() if r.has_tensor("rope_freqs.weight") else None
    out = {"file": path.name, "sha256": _sha(path.read_bytes()), "metadata": metadata, "tensors": tensors}
    if rope is not None:
        out["rope_freqs"] = rope
    return out


def _only_gguf(folder: Path) -> Path:
    files = list(folder.glob("*.gguf"))
    assert len(files) == 1, files
    return files[0]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {key: write_checkpoint(root, spec) for key, spec in FIXTURES.items()}


@pytest.fixture(scope="session")
def reference() -> dict:
    return json.loads(DATA.read_text(encoding="utf-8"))


def _convert(folder: Path, out_dir: Path, **opts) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = convert_model(folder, ConvertOptions(outfile=out_dir, progress=False, **opts))
    return plan.output


def _assert_matches(ours: dict, ref: dict, case: str) -> None:
    assert ours["file"] == ref["file"], f"{case}: default file name"
    assert ours["metadata"] == ref["metadata"], f"{case}: metadata"
    if "rope_freqs" in ref:
        # torch's float32 pow is not correctly rounded: allow the last bits to differ
        np.testing.assert_allclose(ours["rope_freqs"], ref["rope_freqs"], rtol=2e-6, err_msg=f"{case}: rope_freqs")
        strip = lambda ts: [t for t in ts if t[0] != "rope_freqs.weight"]  # noqa: E731
        assert strip(ours["tensors"]) == strip(ref["tensors"]), f"{case}: tensors"
        if ours["rope_freqs"] != ref["rope_freqs"]:
            return
    assert ours["tensors"] == ref["tensors"], f"{case}: tensors"
    if ref.get("vocab_only"):
        # Our writer pads the header to the alignment; the reference stops after the metadata.
        assert ours["sha256"] != "" and ours["metadata"] == ref["metadata"]
    else:
        assert ours["sha256"] == ref["sha256"], f"{case}: file bytes"


@pytest.mark.parametrize("case", list(CASES))
def test_matches_llama_cpp_converter(case, checkpoints, reference, tmp_path):
    key, opts = CASES[case]
    out = _convert(checkpoints[key], tmp_path / "out", **opts)
    _assert_matches(summarize(out), reference["cases"][case], case)


def test_streams_in_slabs(checkpoints, reference, tmp_path, monkeypatch):
    """Tiny slabs (a few rows at a time, Q/K reordered per slab) give the same bytes."""
    import llamatool.convert.stream as stream

    monkeypatch.setattr(stream, "SLAB_BYTES", 1000)
    for case in ("llama3-bpe/q8_0", "mistral-spm/f16"):
        key, opts = CASES[case]
        out = _convert(checkpoints[key], tmp_path / case.replace("/", "-"), **opts)
        _assert_matches(summarize(out), reference["cases"][case], case)


def test_transformers_v5_config_converts_alike(reference, tmp_path):
    """A config saved by transformers 5 (rope_parameters instead of rope_theta + rope_scaling)."""
    folder = write_checkpoint(tmp_path / "in", FIXTURES["llama3-bpe"])
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"] = {**config.pop("rope_scaling"), "rope_theta": config.pop("rope_theta")}
    (folder / "config.json").write_text(json.dumps(config))
    out = _convert(folder, tmp_path / "out", outtype="f16")
    _assert_matches(summarize(out), reference["cases"]["llama3-bpe/f16"], "llama3-bpe/f16 (v5 config)")


def test_progress_counts_every_output_byte(checkpoints, tmp_path, monkeypatch):
    from contextlib import contextmanager

    import llamatool.convert.pipeline as pipeline

    seen = {"total": None, "done": 0, "names": []}

    @contextmanager
    def recorder(total, enabled):
        seen["total"] = total

        def update(n, description=None):
            seen["done"] += n
            if description:
                seen["names"].append(description)

        yield update

    monkeypatch.setattr(pipeline, "progress_bar", recorder)
    out = _convert(checkpoints["mistral-spm"], tmp_path, outtype="q8_0")
    with GGUFReader(out) as r:
        assert seen["total"] == seen["done"] == sum(t.nbytes for t in r.tensors)
        assert seen["names"] == [t.name for t in r.tensors]


# --- the pieces, against independent references ---------------------------------------------


@pytest.mark.parametrize("family", arch.FAMILIES, ids=lambda f: f.arch)
def test_tensor_names_follow_gguf_py_table(family):
    """Every HF name of every family maps to what gguf-py's tensor_mapping.py says, and every
    tensor the converter writes is one llama.cpp's loader knows for that architecture."""
    import gguf

    hp = plan_hparams(CheckpointSpec("x", heads=4, layers=3), family, attention_bias=True, mlp_bias=True)
    model_arch = {name: a for a, name in gguf.MODEL_ARCH_NAMES.items()}[family.arch]
    table = gguf.get_tensor_name_map(model_arch, hp.n_layer)
    known = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[model_arch]}
    for hf_name, exp in expected_tensors(hp).items():
        assert table.get_name(hf_name, try_suffixes=(".weight", ".bias")) == exp.gguf_name, hf_name
        assert re.sub(r"^blk\.\d+\.", "blk.{bid}.", exp.gguf_name.rpartition(".")[0]) in known, exp.gguf_name


def plan_hparams(spec: CheckpointSpec, family=arch.FAMILIES[0], **config):
    from llamatool.convert.hparams import Hparams

    hd = spec.head_dim or spec.hidden // spec.heads
    return Hparams(Path("config.json"), spec.arch, family, config, spec.layers, spec.hidden, spec.intermediate, spec.heads,
                   spec.kv_heads or spec.heads, hd, 100, spec.tied)  # fmt: skip


def _rope_hf(x, pos, base=10000.0):
    """transformers' rotate_half RoPE on (n_heads, head_dim) vectors."""
    hd = x.shape[-1]
    inv = base ** (-np.arange(0, hd, 2) / hd)
    ang = np.concatenate([pos * inv, pos * inv])
    rot = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], axis=-1)
    return x * np.cos(ang) + rot * np.sin(ang)


def _rope_ggml(x, pos, base=10000.0):
    """ggml's RoPE (mode 0, llama): rotate adjacent pairs."""
    hd = x.shape[-1]
    theta = pos * base ** (-np.arange(0, hd, 2) / hd)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * np.cos(theta) - x1 * np.sin(theta)
    out[..., 1::2] = x0 * np.sin(theta) + x1 * np.cos(theta)
    return out


@pytest.mark.parametrize("n_heads,head_dim", [(4, 16), (3, 64), (1, 8)])
def test_qk_permutation_turns_hf_rope_into_ggml_rope(n_heads, head_dim):
    """q.k after HF RoPE on the HF weights equals q.k after ggml RoPE on the permuted weights."""
    rng = np.random.default_rng(0)
    E = 24
    wq, wk = rng.standard_normal((n_heads * head_dim, E)), rng.standard_normal((n_heads * head_dim, E))
    x1, x2 = rng.standard_normal(E), rng.standard_normal(E)
    order = head_row_order(n_heads * head_dim, n_heads)
    for p1, p2 in [(0, 0), (3, 7), (100, 2)]:
        q_hf = _rope_hf((wq @ x1).reshape(n_heads, head_dim), p1)
        k_hf = _rope_hf((wk @ x2).reshape(n_heads, head_dim), p2)
        q_gg = _rope_ggml((wq[order] @ x1).reshape(n_heads, head_dim), p1)
        k_gg = _rope_ggml((wk[order] @ x2).reshape(n_heads, head_dim), p2)
        np.testing.assert_allclose((q_hf * k_hf).sum(-1), (q_gg * k_gg).sum(-1), rtol=1e-10, atol=1e-10)


@pytest.mark.reference  # sentencepiece comes with the reference tier's extra
def test_sentencepiece_reader_matches_sentencepiece(checkpoints):
    spm = pytest.importorskip("sentencepiece", reason="the sentencepiece package is the reference for tokenizer.model")
    path = checkpoints["llama2-spm"] / "tokenizer.model"
    proc = spm.SentencePieceProcessor()
    proc.LoadFromFile(str(path))
    pieces = read_pieces(path)
    assert len(pieces) == proc.vocab_size()
    for i, p in enumerate(pieces):
        assert (p.text, p.score) == (proc.IdToPiece(i), proc.GetScore(i))
        assert (p.type == 2, p.type == 3, p.type == 5, p.type == 6) == (proc.IsUnknown(i), proc.IsControl(i), proc.IsUnused(i), proc.IsByte(i))


def _tokenizer_json(pre, ignore_merges=False):
    return {"pre_tokenizer": pre, "model": {"type": "BPE", "ignore_merges": ignore_merges}}


def _split(regex):
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
NO_REGEX = {**BYTE_LEVEL, "use_regex": False}


@pytest.mark.parametrize(
    "pre,ignore_merges,clean,expected",
    [
        ({"type": "Sequence", "pretokenizers": [_split(LLAMA3), NO_REGEX]}, True, True, "llama-bpe"),  # Llama 3.x
        ({"type": "Sequence", "pretokenizers": [_split(LLAMA3), NO_REGEX]}, False, True, "smaug-bpe"),
        ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}, False, False, "smollm"),
        ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}, False, True, "starcoder"),
        (BYTE_LEVEL, False, True, "gpt-2"),
        ({"type": "Sequence", "pretokenizers": [_split(QWEN2), NO_REGEX]}, False, False, "qwen2"),
    ],
)
def test_pretokenizer_recognised_from_its_regexes(pre, ignore_merges, clean, expected):
    found = describe(_tokenizer_json(pre, ignore_merges), {"clean_up_tokenization_spaces": clean}, "tokenizer.json")
    assert recognise(found, "tokenizer.json") == expected


def test_pretokenizer_unknown_or_not_byte_level_is_refused():
    with pytest.raises(LlamatoolError, match="not recognised"):
        recognise(describe(_tokenizer_json({"type": "Sequence", "pretokenizers": [_split(r"\w+"), NO_REGEX]}), {}, "t.json"), "t.json")
    with pytest.raises(LlamatoolError, match="no ByteLevel"):
        describe(_tokenizer_json({"type": "Metaspace", "replacement": "\u2581"}), {}, "t.json")
    assert GPT2 in describe(_tokenizer_json(BYTE_LEVEL), {}, "t.json").regexes


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key,expected", [("llama2-spm", "F16"), ("llama3-bpe", "BF16"), ("smollm-bpe", "F16")])
def test_auto_follows_checkpoint_dtype(key, expected, checkpoints):
    plan = plan_conversion(checkpoints[key], ConvertOptions(outtype="auto"))
    assert plan.types["token_embd.weight"].name == expected
    assert plan.output.parent == checkpoints[key] and plan.output.name.endswith(f"-{expected}.gguf")


def _cli(args: list[str]) -> None:
    from llamatool.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code in (0, None)


def test_outfile_template_and_dry_run(checkpoints, tmp_path, capsys):
    folder = checkpoints["smollm-bpe"]
    before = sorted(os.listdir(folder))
    _cli(["convert", str(folder), "--outtype", "q8_0", "--outfile", str(tmp_path / "m-{ftype}.gguf"), "--dry-run"])
    out = capsys.readouterr().out
    assert "dry run" in out and "blk.1.ffn_down.weight" in out and "Q8_0" in out and "F16" in out
    assert "m-q8_0.gguf" in out and not list(tmp_path.iterdir()) and sorted(os.listdir(folder)) == before
    _cli(["convert", str(folder), "--outtype", "q8_0", "--outfile", str(tmp_path / "m-{ftype}.gguf")])
    assert (tmp_path / "m-q8_0.gguf").is_file()
    assert "converted" in capsys.readouterr().out


def test_existing_output_needs_force(checkpoints, tmp_path):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"keep me")
    opts = dict(outtype="f16", outfile=out, progress=False)
    with pytest.raises(LlamatoolError, match="already exists"):
        convert_model(checkpoints["llama2-spm"], ConvertOptions(**opts))
    assert out.read_bytes() == b"keep me"
    convert_model(checkpoints["llama2-spm"], ConvertOptions(force=True, **opts))
    assert out.read_bytes()[:4] == b"GGUF"
    with pytest.raises(LlamatoolError, match="input"):
        convert_model(checkpoints["llama2-spm"], ConvertOptions(outtype="f16", outfile=checkpoints["llama2-spm"] / "config.json", force=True))


def test_interrupted_write_leaves_nothing(checkpoints, tmp_path, monkeypatch):
    import llamatool.convert.pipeline as pipeline

    calls = []

    def fail_on_third(writer, t, qtype, advance):
        calls.append(t.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_write(writer, t, qtype, advance)

    real_write = pipeline.write_tensor
    monkeypatch.setattr(pipeline, "write_tensor", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        _convert(checkpoints["mistral-spm"], tmp_path / "out", outtype="f16")
    assert list((tmp_path / "out").iterdir()) == []


def test_q8_0_equals_quantize_of_f16_output(checkpoints, tmp_path):
    """--outtype q8_0 of an f16 checkpoint == `llamatool quantize <f16 conversion> Q8_0`."""
    folder = checkpoints["smollm-bpe"]  # f16 weights, rows of 48 (F16 fallback) and 96
    direct = _convert(folder, tmp_path / "direct", outtype="q8_0")
    f16 = _convert(folder, tmp_path / "f16", outtype="f16")
    requant = tmp_path / "requant.gguf"
    quantize_model(f16, requant, QuantizeOptions(preset="Q8_0"), progress=False)
    with GGUFReader(direct) as a, GGUFReader(requant) as b:
        for t in a.tensors:
            u = b.tensor(t.name)
            assert (t.type, t.ne) == (u.type, u.ne), t.name
            assert np.array_equal(t.data, u.data), t.name


@pytest.mark.parametrize("key,preset", [("llama2-spm", "q4_k_m"), ("llama3-bpe", "q4_k_m"), ("mistral-spm", "q6_k")])
def test_preset_equals_convert_then_quantize(key, preset, checkpoints, tmp_path):
    """--outtype <preset> in one pass == converting losslessly, then `llamatool quantize`."""
    folder = checkpoints[key]
    lossless = "bf16" if FIXTURES[key].dtype == "bfloat16" else "f32"
    one_pass = _convert(folder, tmp_path / "one", outtype=preset)
    base = _convert(folder, tmp_path / "base", outtype=lossless)
    two_pass = tmp_path / "two.gguf"
    quantize_model(base, two_pass, QuantizeOptions(preset=preset), progress=False)
    with GGUFReader(one_pass) as a, GGUFReader(two_pass) as b:
        assert a.get("general.file_type") == b.get("general.file_type") == preset_file_type(preset)
        assert sorted(t.name for t in a.tensors) == sorted(t.name for t in b.tensors)
        for t in a.tensors:
            u = b.tensor(t.name)
            assert (t.type, t.ne) == (u.type, u.ne), t.name
            assert np.array_equal(t.data, u.data), t.name
    assert one_pass.name.endswith(f"-{preset.upper()}.gguf")


def test_unknown_outtype():
    with pytest.raises(LlamatoolError, match="unknown --outtype 'q9_9'"):
        from llamatool.convert.outtype import resolve

        resolve("q9_9", None)


# --- bad input: one clear line, nothing written ---------------------------------------------


@pytest.fixture
def victim(tmp_path):
    """A fresh copy of a small checkpoint to break."""
    return write_checkpoint(tmp_path / "in", FIXTURES["llama3-bpe"])


def _refused(folder: Path, tmp_path: Path, match: str, **opts) -> str:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    before = sorted(os.listdir(folder)) if folder.is_dir() else None
    with pytest.raises(LlamatoolError, match=match) as e:
        convert_model(folder, ConvertOptions(outfile=out, progress=False, **{"outtype": "f16", **opts}))
    msg = str(e.value)
    assert "\n" not in msg
    assert list(out.iterdir()) == [], "an output file was left behind"
    if before is not None:
        assert sorted(os.listdir(folder)) == before
    return msg


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_refuses_missing_folder_and_config(victim, tmp_path):
    _refused(tmp_path / "nowhere", tmp_path, "not a directory")
    (victim / "config.json").unlink()
    _refused(victim, tmp_path, r"config\.json: missing config\.json")


def test_refuses_bad_config(victim, tmp_path):
    (victim / "config.json").write_text("{not json")
    _refused(victim, tmp_path, r"config\.json: not valid JSON")


def test_refuses_unknown_architecture(victim, tmp_path):
    _edit_json(victim / "config.json", architectures=["GPTNeoXForCausalLM"])
    msg = _refused(victim, tmp_path, "architecture 'GPTNeoXForCausalLM' is not supported")
    assert all(c in msg for c in ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")) and "\n" not in msg


@pytest.mark.parametrize("change, what", [({"num_local_experts": 8}, "mixture-of-experts"),
                                          ({"vision_config": {"hidden_size": 32}}, "vision tower")])  # fmt: skip
def test_refuses_unsupported_feature(victim, tmp_path, change, what):
    """A feature the forward pass lacks is refused before anything is written."""
    _edit_json(victim / "config.json", **change)
    msg = _refused(victim, tmp_path, what)
    assert "\n" not in msg


# checkpoints people try that llamatool (and this llama.cpp's text families) do not convert
REFUSED_CHECKPOINTS = [
    ("gemma3-spm", {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
                    "vision_config": {"hidden_size": 32}}, r"'Gemma3ForConditionalGeneration' is not supported \(.*Gemma3ForCausalLM"),
    ("gemma3-spm", {"vision_config": {"hidden_size": 32}}, "a vision tower"),
    ("qwen2-bpe", {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "num_experts": 4},
     r"'Qwen2MoeForCausalLM' is not supported \(.*Qwen2ForCausalLM"),
    ("qwen3-bpe", {"num_experts": 8}, "mixture-of-experts"),
    ("phi3-spm", {"rope_scaling": {"type": "dynamic", "factor": 2.0}}, r"rope_scaling 'dynamic' is not supported for phi3 \(longrope\)"),
    ("phi3-spm", {"rope_scaling": {"type": "yarn", "factor": 2.0, "long_factor": [1.0] * 8, "short_factor": [1.0] * 8}},
     r"rope_scaling 'yarn' with long/short factors is not supported \(longrope, su\)"),
]  # fmt: skip


@pytest.mark.parametrize("key, change, match", REFUSED_CHECKPOINTS)
def test_refuses_vision_moe_and_unsupported_rope_of_the_families(key, change, match, tmp_path):
    """One line naming what is supported, nothing written, the checkpoint untouched."""
    folder = write_checkpoint(tmp_path / "in", FIXTURES[key])
    _edit_json(folder / "config.json", **change)
    _refused(folder, tmp_path, match)


def test_refuses_pickles_without_loading_them(tmp_path):
    folder = write_checkpoint(tmp_path / "in", FIXTURES["llama2-spm"])
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Exploit()))
    _refused(folder, tmp_path, r"pytorch_model\.bin: pickled PyTorch weights are not supported")
    assert not marker.exists()


def test_refuses_missing_tensor(victim, tmp_path):
    index = victim / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    del data["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    index.write_text(json.dumps(data))
    _refused(victim, tmp_path, r"model-0000\d-of-00003\.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' is not listed")


def test_refuses_missing_tensor_in_single_file(tmp_path):
    folder = write_checkpoint(tmp_path / "in", FIXTURES["llama2-spm"])
    _rewrite_single(folder / "model.safetensors", drop="model.layers.1.self_attn.k_proj.weight")
    _refused(folder, tmp_path, r"tiny-llama2-spm: missing tensor 'model.layers.1.self_attn.k_proj.weight'")


def test_refuses_missing_lm_head_when_untied(tmp_path):
    folder = write_checkpoint(tmp_path / "in", FIXTURES["llama2-spm"])
    _rewrite_single(folder / "model.safetensors", drop="lm_head.weight")
    _refused(folder, tmp_path, r"missing tensor 'lm_head.weight' \(config.json says tie_word_embeddings is false\)")


def _rewrite_single(path: Path, drop: str | None = None, dtype: str | None = None) -> None:
    from llamatool.convert.tensor_files import read_safetensors

    entries = {}
    for t in read_safetensors(path):
        if t.name == drop:
            continue
        with open(path, "rb") as f:
            f.seek(t.offset)
            raw = f.read(t.nbytes)
        entries[t.name] = (dtype or t.dtype, t.shape, raw)
    write_safetensors(path, entries)


def test_refuses_shape_not_matching_config(victim, tmp_path):
    _edit_json(victim / "config.json", intermediate_size=256)
    _refused(victim, tmp_path, r"tensor 'model.layers.\d.mlp.\w+_proj.weight' has shape \[\d+, \d+\], config.json implies")


def test_refuses_unsupported_dtype(tmp_path):
    folder = write_checkpoint(tmp_path / "in", FIXTURES["llama2-spm"])
    _rewrite_single(folder / "model.safetensors", dtype="I32")
    _refused(folder, tmp_path, "has dtype I32")


def test_refuses_missing_tokenizer(victim, tmp_path):
    (victim / "tokenizer.json").unlink()
    _refused(victim, tmp_path, "no tokenizer.model or tokenizer.json")


def test_refuses_unrecognised_pretokenizer(victim, tmp_path):
    tok = json.loads((victim / "tokenizer.json").read_text())
    tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+|\s+"
    (victim / "tokenizer.json").write_text(json.dumps(tok))
    _refused(victim, tmp_path, r"tokenizer\.json: pre-tokenizer not recognised")


def test_refuses_vocab_larger_than_config(victim, tmp_path):
    _edit_json(victim / "config.json", vocab_size=100)
    _refused(victim, tmp_path, r"tensor 'model.embed_tokens.weight' has shape \[388, 64\], config.json implies \[100, 64\]")
    _refused(victim, tmp_path, r"tokenizer\.json: token id 382 does not fit the vocab_size 100 of config\.json", vocab_only=True)


def test_refuses_missing_shard(victim, tmp_path):
    (victim / "model-00002-of-00003.safetensors").unlink()
    _refused(victim, tmp_path, r"model-00002-of-00003\.safetensors: missing shard")


def test_refuses_truncated_safetensors(victim, tmp_path):
    shard = victim / "model-00003-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    _refused(victim, tmp_path, r"model-00003-of-00003\.safetensors: tensor '[^']+': bytes \d+\.\.\d+ lie outside")


@pytest.mark.parametrize(
    "header,match",
    [
        (b"\xff" * 8, r"safetensors header of 18446744073709551615 bytes is larger than the 100 MiB limit"),  # 2**64-1 bytes: must not be allocated
        ((1 << 20).to_bytes(8, "little"), "truncated safetensors file: header of 1048576 bytes"),
        (b"\x05\0\0\0\0\0\0\0{oops", "safetensors header is not valid JSON"),
        (b"\x02\0\0\0\0\0\0\0[]", "safetensors header is not a JSON object"),
        (b"\x04", r"truncated safetensors file \(1 bytes, no header\)"),
    ],
)
def test_refuses_hostile_safetensors_header(victim, tmp_path, header, match):
    shard = victim / "model-00001-of-00003.safetensors"
    shard.write_bytes(header)
    _refused(victim, tmp_path, r"model-00001-of-00003\.safetensors: " + match)


@pytest.mark.parametrize(
    "entry,match",
    [
        ({"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}, "lie outside"),
        ({"dtype": "F32", "shape": [4, -4], "data_offsets": [0, 0]}, "invalid shape"),
        ({"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}, "needs 16 bytes, the header gives 8"),
        ({"dtype": "F32", "shape": [2], "data_offsets": "x"}, "invalid data_offsets"),
    ],
)
def test_refuses_inconsistent_safetensors_entries(victim, tmp_path, entry, match):
    header = json.dumps({"model.norm.weight": entry}).encode()
    (victim / "model-00003-of-00003.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    _refused(victim, tmp_path, match)


def test_refuses_overlapping_tensors(victim, tmp_path):
    header = json.dumps({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }).encode()  # fmt: skip
    (victim / "model-00003-of-00003.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 12)
    _refused(victim, tmp_path, "tensors 'a' and 'b' overlap")


def test_refuses_hostile_sentencepiece_model(tmp_path):
    folder = write_checkpoint(tmp_path / "in", FIXTURES["llama2-spm"])
    (folder / "tokenizer.model").write_bytes(b"\x0a\xff\xff\xff\xff\x0f")  # a 4 GB piece in 6 bytes
    _refused(folder, tmp_path, r"tokenizer\.model: not a valid SentencePiece model \(field of \d+ bytes runs past the end")


def test_refuses_bad_model_card(victim, tmp_path):
    (victim / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    _refused(victim, tmp_path, r"README\.md: the model card's front matter is not valid YAML")


def test_cli_error_is_one_line(victim, tmp_path):
    _edit_json(victim / "config.json", architectures=["GPT2LMHeadModel"])
    proc = subprocess.run(
        [sys.executable, "-m", "llamatool", "convert", str(victim), "--outfile", str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "GPT2LMHeadModel" in proc.stderr and list(tmp_path.glob("*.gguf")) == []


# --- reference tier: the vendored converter and transformers ----------------------------------

_RUN_REFERENCE = """
import os, runpy, sys
vendor = sys.argv[1]
sys.path[:0] = [os.path.join(vendor, "gguf-py"), vendor]
if os.environ.get("LLAMATOOL_REFERENCE_PRE"):
    import conversion.base as base
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: os.environ["LLAMATOOL_REFERENCE_PRE"]
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[2:]]
runpy.run_path(os.path.join(vendor, "convert_hf_to_gguf.py"), run_name="__main__")
"""


def run_reference_converter(folder: Path, out_dir: Path, args: list[str], pre: str | None) -> Path:
    """Run llama.cpp's convert_hf_to_gguf.py (needs torch and transformers) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LLAMATOOL_REFERENCE_PRE": pre or ""}
    cmd = [sys.executable, "-c", _RUN_REFERENCE, str(VENDOR), str(folder), *args, "--outfile", f"{out_dir}{os.sep}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{proc.stderr[-3000:]}")
    return _only_gguf(out_dir)


def _need_reference_converter():
    pytest.importorskip("torch", reason="the reference converter needs torch")
    pytest.importorskip("transformers", reason="the reference converter needs transformers")
    if not (VENDOR / "convert_hf_to_gguf.py").is_file():
        missing_reference(f"vendored llama.cpp converter not found at {VENDOR} (set LLAMA_CPP_SRC)")


def derive_reference(root: Path) -> dict:
    """Run the vendored converter on every case; the content of tests/data/convert_reference.json."""
    import torch
    import transformers

    folders = {key: write_checkpoint(root / "hf", spec) for key, spec in FIXTURES.items()}
    cases = {}
    for case, (key, opts) in CASES.items():
        out = run_reference_converter(folders[key], root / "ref" / case.replace("/", "-"), _cli_args(opts), REFERENCE_PRE.get(key))
        cases[case] = {**summarize(out), **({"vocab_only": True} if opts.get("vocab_only") else {})}
    return {
        "generator": f"convert_hf_to_gguf.py of llama-cpp-python 0.3.36 (vendored), transformers {transformers.__version__}, torch {torch.__version__}",
        "cases": cases,
    }


@pytest.mark.reference
def test_reference_data_rederived(reference, tmp_path):
    """The committed expectations are what the vendored converter writes today."""
    _need_reference_converter()
    fresh = derive_reference(tmp_path)
    for case, ref in reference["cases"].items():
        _assert_matches(fresh["cases"][case], ref, case)


SMOLLM2_PRE_TOKENIZER = {
    # what HuggingFaceTB/SmolLM2's tokenizer.json declares; transformers' GGUF import
    # writes a plain ByteLevel instead (the GGUF only says "smollm")
    "type": "Sequence",
    "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL],
}


@pytest.fixture(scope="session")
def smollm2_hf(default_model, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face checkpoint (float32), made by transformers from the GGUF."""
    torch = pytest.importorskip("torch", reason="building the HF checkpoint needs torch")
    transformers = pytest.importorskip("transformers", reason="building the HF checkpoint needs transformers")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load a GGUF")
    folder = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    src, name = str(default_model.parent), default_model.name
    transformers.AutoTokenizer.from_pretrained(src, gguf_file=name).save_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = model.config
    del config.quantization_config  # a plain float32 checkpoint, not a GGUF-backed one
    plain = transformers.LlamaForCausalLM(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(folder)
    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tok["pre_tokenizer"] = SMOLLM2_PRE_TOKENIZER
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def smollm2_f32(smollm2_hf, tmp_path_factory) -> Path:
    return _convert(smollm2_hf, tmp_path_factory.mktemp("smollm2_f32"), outtype="f32")


@pytest.mark.reference
def test_smollm2_weights_equal_the_gguf(smollm2_f32, default_model):
    """Every tensor converted back equals the original GGUF's, dequantized (Q/K permutation undone by
    transformers, redone by us)."""
    with GGUFReader(default_model) as orig, GGUFReader(smollm2_f32) as ours:
        assert sorted(t.name for t in ours.tensors) == sorted(t.name for t in orig.tensors)
        for t in orig.tensors:
            assert np.array_equal(ours.tensor(t.name).values(), t.values()), t.name


SAME_AS_ORIGINAL = [
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template", "llama.block_count", "llama.context_length", "llama.embedding_length",
    "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
    "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "llama.rope.dimension_count", "llama.vocab_size",
]  # fmt: skip


@pytest.mark.reference
def test_smollm2_tokenizer_and_hparams_equal_the_gguf(smollm2_f32, default_model):
    with GGUFReader(default_model) as orig, GGUFReader(smollm2_f32) as ours:
        for key in SAME_AS_ORIGINAL:
            a, b = orig.fields[key], ours.fields[key]
            assert (a.type, a.subtype) == (b.type, b.subtype), key
            assert np.array_equal(np.asarray(a.plain()), np.asarray(b.plain())), key


@pytest.mark.reference
def test_smollm2_matches_reference_converter(smollm2_hf, tmp_path):
    """Byte for byte, with the reference's own hash lookup of the pre-tokenizer."""
    _need_reference_converter()
    ref = run_reference_converter(smollm2_hf, tmp_path / "ref", ["--outtype", "f16"], pre=None)
    ours = _convert(smollm2_hf, tmp_path / "ours", outtype="f16")
    assert ours.name == ref.name
    assert summarize(ours)["metadata"] == summarize(ref)["metadata"]
    assert _sha(ours.read_bytes()) == _sha(ref.read_bytes())


@pytest.mark.reference
@pytest.mark.parametrize(
    "raw",
    [
        {"model_type": "llama"},
        {"model_type": "mistral", "hidden_size": 64, "num_attention_heads": 4, "head_dim": None, "sliding_window": None},
        {"model_type": "llama", "num_key_value_heads": None, "rope_theta": 500000, "rope_scaling": {"type": "linear", "factor": 2}},
        {"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
        {"model_type": "llama", "head_dim": 96, "tie_word_embeddings": True, "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}},
        {"model_type": "qwen2"},
        {"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": None, "rope_theta": 1e6},
        {"model_type": "qwen3"},
        {"model_type": "qwen3", "head_dim": 32, "attention_bias": True},
        {"model_type": "smollm3"},
        {"model_type": "smollm3", "num_hidden_layers": 8, "tie_word_embeddings": False},
        {"model_type": "gemma2"},
        {"model_type": "gemma3_text"},
        {"model_type": "gemma3_text", "rope_theta": 500000.0, "rope_local_base_freq": 20000.0,
         "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
    ],
)  # fmt: skip
def test_config_defaults_match_autoconfig(raw, tmp_path):
    """normalized_config sees a config as transformers' AutoConfig does (the reference reads it so)."""
    transformers = pytest.importorskip("transformers")
    from llamatool.convert.hparams import normalized_config

    classes = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "smollm3": "SmolLM3ForCausalLM",
               "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
    raw = {"architectures": [classes.get(raw["model_type"], "LlamaForCausalLM")], **raw}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    auto = transformers.AutoConfig.from_pretrained(tmp_path).to_dict()
    ours = normalized_config(raw)
    keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "max_position_embeddings", "rms_norm_eps", "head_dim", "tie_word_embeddings", "rope_parameters"]  # fmt: skip
    assert {k: ours.get(k) for k in keys} == {k: auto.get(k) for k in keys}


def _transformers_logits(folder: Path, ids: list[int]) -> np.ndarray:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.reference
@pytest.mark.parametrize("key", [k for k in FIXTURES if not k.endswith("-spm") or k in ("llama2-spm", "mistral-spm")])
def test_round_trip_logits_tiny(key, checkpoints, tmp_path):
    # gemma2-spm and phi3-spm: tests/test_families.py (ggml's half-table GELU, and Phi-3's
    # LongRoPE factors chosen by the context size as llama.cpp does, need their own set-up)
    """HF -> convert (f32) -> llamatool's forward pass gives transformers' logits."""
    folder = checkpoints[key]
    ids = [1, 5, 77, 123, 9, 42, 300, 17]
    expected = _transformers_logits(folder, ids)
    model = Model.load(_convert(folder, tmp_path, outtype="f32"))
    got = np.asarray(model.eval(ids, all_logits=True))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


@pytest.mark.reference
def test_round_trip_logits_smollm2(smollm2_hf, smollm2_f32):
    ids = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 2]
    expected = _transformers_logits(smollm2_hf, ids)
    got = np.asarray(Model.load(smollm2_f32).eval(ids, all_logits=True))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


if __name__ == "__main__":
    # python -m tests.test_convert --regenerate: rewrite tests/data/convert_reference.json
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python -m tests.test_convert --regenerate")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = derive_reference(Path(tmp))
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {DATA} ({len(data['cases'])} cases)")
