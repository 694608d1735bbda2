"""`llamatool convert-lora`: a PEFT LoRA adapter folder to a GGUF adapter.

The output is what llama.cpp's convert_lora_to_gguf.py writes (same keys in the same order,
same tensor names, types and bytes for f32/f16/bf16/q8_0):

    general.architecture        the base model's
    general.type = adapter, adapter.type = lora
    general.*                   from the adapter folder's model card (gguf-py's Metadata);
                                the name falls back to the base folder's name
    adapter.lora.alpha          float32
    general.quantization_version

and, per adapted matrix of the base, `<GGUF name>.lora_a` (PEFT's lora_A, rank x in) and
`<GGUF name>.lora_b` (lora_B, out x rank), in the order of the adapter file's sorted tensor
names. The base family's transforms apply to the output side, so LLaMA's Q/K row
permutation reorders the rows of lora_b; an embedding's lora_a is stored transposed
(vocab x rank, the rows llama.cpp gathers by token). Q8_0 falls back to F16 for a tensor
whose rows are not whole 32-value blocks (every lora_b of rank < 32).

Where the reference is wrong we are right and say so: it ignores `use_rslora` (PEFT then
scales by alpha/sqrt(r), llama.cpp's runtime by alpha/r), so we write alpha*sqrt(r) and
print a note. What a GGUF adapter cannot express is refused in one line, never
mis-scaled: DoRA, modules_to_save, per-module alphas, LoRA on a tied model's embeddings.
Pickled adapter_model.bin is refused without being opened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from ..errors import LlamatoolError
from ..gguf_io import GGUFWriter, ValueType
from ..quants.registry import GGMLType, ggml_type
from ..convert.general import default_file_name, general_fields, load_metadata
from ..convert.hparams import Hparams, load_hparams, read_json_object
from ..convert.outtype import FLOAT_OUTTYPES, OutType, resolve
from ..convert.pipeline import QUANTIZATION_VERSION, _output_path, write_plan
from ..convert.tensor_files import PICKLE_SUFFIXES, StoredTensor, checkpoint_dtype, read_safetensors, to_float32
from ..convert.tensors import ModelTensor, expected_tensors, head_row_order

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
EMBEDDING_MODULES = ("model.embed_tokens.weight", "lm_head.weight")
# PEFT's suffix -> (side, embedding?)
_LORA_SUFFIXES = {
    ".lora_A.weight": ("A", False),
    ".lora_B.weight": ("B", False),
    ".lora_embedding_A": ("A", True),
    ".lora_embedding_B": ("B", True),
}


@dataclass
class LoraConvertOptions:
    base: Path | None = None
    outtype: str = "f32"  # the reference converter's default
    outfile: Path | None = None
    dry_run: bool = False
    force: bool = False
    progress: bool = True


@dataclass
class AdapterConfig:
    """What adapter_config.json says that the GGUF needs."""

    alpha: float  # as written to adapter.lora.alpha (rsLoRA already folded in)
    rank: int
    rslora: bool
    base_hint: str | None  # base_model_name_or_path

    @property
    def notes(self) -> list[str]:
        if not self.rslora:
            return []
        return [f"use_rslora: PEFT scales by alpha/sqrt(r), llama.cpp by alpha/r; writing adapter.lora.alpha = "
                f"{self.alpha:g} (alpha*sqrt({self.rank})) so that llama.cpp's formula gives PEFT's scale "
                "(llama.cpp's convert_lora_to_gguf.py ignores use_rslora)"]


@dataclass
class LoraPlan:
    folder: Path
    base: Path
    hp: Hparams
    config: AdapterConfig
    out: OutType
    output: Path
    fields: list
    tensors: list[ModelTensor] = field(default_factory=list)
    types: dict[str, GGMLType] = field(default_factory=dict)
    seconds: float = 0.0

    def declare(self, writer: GGUFWriter) -> None:
        for key, value, vtype, subtype in self.fields:
            writer.add_field(key, value, vtype, subtype)
        for t in self.tensors:
            writer.add_tensor_info(t.name, self.types[t.name], t.ne)


# --- adapter_config.json -------------------------------------------------------------------


def _number(cfg: dict, key: str, path: Path, integer: bool = False):
    value = cfg.get(key)
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or value <= 0:
        raise LlamatoolError(f"{path}: {key} must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return value


def read_adapter_config(folder: Path) -> AdapterConfig:
    path = folder / ADAPTER_CONFIG
    cfg = read_json_object(path, f"{ADAPTER_CONFIG} (a PEFT adapter's settings)")
    peft_type = cfg.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise LlamatoolError(f"{path}: peft_type {peft_type!r} is not a LoRA adapter")
    if cfg.get("use_dora"):
        raise LlamatoolError(f"{path}: DoRA adapters (use_dora) are not supported: a GGUF LoRA adapter cannot hold DoRA's per-column magnitudes")
    if cfg.get("modules_to_save"):
        raise LlamatoolError(f"{path}: modules_to_save {cfg['modules_to_save']!r} are full trained copies of modules, which a GGUF LoRA adapter cannot hold")
    if cfg.get("alpha_pattern"):
        raise LlamatoolError(f"{path}: alpha_pattern (a lora_alpha per module) is not supported: a GGUF adapter has one alpha")
    rank = _number(cfg, "r", path, integer=True)
    alpha = float(_number(cfg, "lora_alpha", path))
    rslora = bool(cfg.get("use_rslora"))
    if rslora:
        if cfg.get("rank_pattern"):
            raise LlamatoolError(f"{path}: use_rslora with rank_pattern: no single adapter.lora.alpha gives every rank its alpha/sqrt(r) scale")
        alpha *= math.sqrt(rank)
    hint = cfg.get("base_model_name_or_path")
    return AdapterConfig(alpha, rank, rslora, hint if isinstance(hint, str) and hint else None)


def base_folder(folder: Path, config: AdapterConfig, base: Path | None) -> Path:
    """--base, else base_model_name_or_path when it is a local folder with a config.json."""
    if base is not None:
        if not (Path(base) / "config.json").is_file():
            raise LlamatoolError(f"{base}: no config.json (--base is the base model's Hugging Face folder)")
        return Path(base)
    if config.base_hint and (Path(config.base_hint) / "config.json").is_file():
        return Path(config.base_hint)
    hint = f" (base_model_name_or_path {config.base_hint!r} is not a local folder)" if config.base_hint else ""
    raise LlamatoolError(f"{folder}: give the base model's folder with --base{hint}")


# --- tensors ------------------------------------------------------------------------------


def adapter_tensors(folder: Path) -> list[StoredTensor]:
    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
        if pickles:
            raise LlamatoolError(f"{folder / pickles[0]}: pickled adapter weights are not supported (loading a pickle can run arbitrary code); save the adapter as safetensors")
        raise LlamatoolError(f"{folder}: no {ADAPTER_WEIGHTS}")
    return read_safetensors(path)


def _split_name(t: StoredTensor) -> tuple[str, str, bool] | None:
    """(base HF tensor name, "A" or "B", embedding?) of a PEFT tensor; None for one the
    reference skips (a base_layer copy); an error for anything else."""
    name = t.name.replace(PEFT_PREFIX, "", 1) if t.name.startswith(PEFT_PREFIX) else t.name
    for suffix, (side, embedding) in _LORA_SUFFIXES.items():
        if name.endswith(suffix):
            return name[: -len(suffix)] + ".weight", side, embedding
    if ".base_layer.weight" in name:
        return None
    raise LlamatoolError(f"{t.path}: tensor {t.name!r} is not a lora_A or lora_B tensor (only LoRA matrices can be converted)")


def _check_dtype(t: StoredTensor) -> None:
    if t.dtype not in ("F32", "F16", "BF16") or len(t.shape) != 2:
        raise LlamatoolError(f"{t.path}: tensor {t.name!r} is {t.dtype} {list(t.shape)}; LoRA matrices must be 2-D F32, F16 or BF16")


def _pair_tensors(hp: Hparams, base: str, a: StoredTensor, b: StoredTensor, embedding: bool) -> list[ModelTensor]:
    """lora_a and lora_b of one adapted matrix, shapes checked against the base."""
    exp = expected_tensors(hp).get(base)
    if exp is None or len(exp.shape) != 2:
        raise LlamatoolError(f"{a.path}: {a.name!r} adapts {base!r}, which is not a matrix of a {hp.hf_arch} with this config.json")
    if hp.tied and base in EMBEDDING_MODULES:
        raise LlamatoolError(f"{a.path}: LoRA on {base!r} of a model with tied embeddings is not supported (one matrix serves as both embedding and output)")
    for t in (a, b):
        _check_dtype(t)
    n_out, n_in = (exp.shape[1], exp.shape[0]) if embedding else exp.shape
    rank = a.shape[0]
    if a.shape != (rank, n_in) or b.shape != (n_out, rank):
        raise LlamatoolError(f"{a.path}: {base!r}: lora_A {list(a.shape)} and lora_B {list(b.shape)} do not fit the base's {list(exp.shape)}")
    if embedding:  # lora_a transposed: rows gathered by token id
        with a.mapped() as m:
            values = np.ascontiguousarray(to_float32(m.array, a.dtype).T)
        lora_a = ModelTensor(exp.gguf_name + ".lora_a", values.shape, values=values)
    else:
        lora_a = ModelTensor(exp.gguf_name + ".lora_a", a.shape, source=a)
    order = head_row_order(b.shape[0], exp.permute_heads) if exp.permute_heads else None
    return [lora_a, ModelTensor(exp.gguf_name + ".lora_b", b.shape, source=b, row_order=order)]


def lora_model_tensors(hp: Hparams, stored: list[StoredTensor]) -> list[ModelTensor]:
    """The GGUF's tensors: pairs in the order their first tensor appears (names sorted)."""
    pairs: dict[str, dict] = {}
    for t in stored:
        split = _split_name(t)
        if split is None:
            continue
        base, side, embedding = split
        pair = pairs.setdefault(base, {"embedding": embedding})
        if side in pair:
            raise LlamatoolError(f"{t.path}: two lora_{side} tensors for {base!r}")
        pair[side] = t
    out = []
    for base, pair in pairs.items():
        if "A" not in pair or "B" not in pair:
            lacking = "A" if "A" not in pair else "B"
            raise LlamatoolError(f"{pair.get('A', pair.get('B')).path}: {base!r} has no lora_{lacking} tensor")
        out += _pair_tensors(hp, base, pair["A"], pair["B"], pair["embedding"])
    if not out:
        raise LlamatoolError(f"{stored[0].path if stored else 'adapter'}: no LoRA tensors")
    return out


def lora_type(shape: tuple[int, ...], out: OutType) -> GGMLType:
    """The reference's choice for a lora_a/lora_b: the outtype, or F16 for Q8_0 rows that are
    not whole blocks."""
    t = ggml_type(out.matrix_type)
    return ggml_type("F16") if shape[-1] % t.block_size else t


def lora_parameter_count(tensors: list[ModelTensor]) -> int:
    """gguf-py's count for an adapter (negative: "not exact"): per pair, lora_b's rows times
    lora_a's row length."""
    total = sum(b.shape[0] * a.shape[-1] for a, b in zip(tensors[::2], tensors[1::2]))
    return -total


# --- plan and write -------------------------------------------------------------------------


def _resolve_outtype(outtype: str, stored: list[StoredTensor]) -> OutType:
    if outtype.strip().lower() not in (*FLOAT_OUTTYPES, "auto"):
        raise LlamatoolError(f"unknown --outtype {outtype!r} for an adapter (choose from f32, f16, bf16, q8_0, auto)")
    return resolve(outtype, checkpoint_dtype({t.name: t for t in stored}))


def plan_lora(folder: str | Path, options: LoraConvertOptions) -> LoraPlan:
    folder = Path(folder)
    if not folder.is_dir():
        raise LlamatoolError(f"{folder}: not a directory (give the folder of a PEFT adapter)")
    config = read_adapter_config(folder)
    stored = adapter_tensors(folder)
    base = base_folder(folder, config, options.base)
    hp = load_hparams(base)
    tensors = lora_model_tensors(hp, stored)
    out = _resolve_outtype(options.outtype, stored)
    total = lora_parameter_count(tensors)
    meta = load_metadata(folder, None, total, default_name=base.name)
    fields = [("general.architecture", hp.family.arch, ValueType.STRING, None)]
    general = general_fields(meta)
    fields.append(("general.type", "adapter", ValueType.STRING, None))
    fields.append(("adapter.type", "lora", ValueType.STRING, None))
    fields += [f for f in general if f[0] != "general.type"]
    fields.append(("adapter.lora.alpha", config.alpha, ValueType.FLOAT32, None))
    fields.append(("general.quantization_version", QUANTIZATION_VERSION, ValueType.UINT32, None))
    name = gguf.naming_convention(meta.name, meta.basename, meta.finetune, meta.version, meta.size_label, out.label, model_type="LoRA")
    output = _output_path(folder, options.outfile, f"{name}.gguf", out.label)
    plan = LoraPlan(folder, base, hp, config, out, output, fields, tensors)
    plan.types = {t.name: lora_type(t.shape, out) for t in tensors}
    return plan


def convert_lora(folder: str | Path, options: LoraConvertOptions) -> LoraPlan:
    plan = plan_lora(folder, options)
    if not options.dry_run:
        write_plan(plan, options)  # a LoraPlan streams as a model's Plan does
    return plan


def run_convert_lora_command(folder, options: LoraConvertOptions) -> LoraPlan:
    """The CLI's entry: convert (or plan) and print what happened."""
    import sys

    plan = convert_lora(folder, options)
    for note in plan.config.notes:
        print(f"note: {note}", file=sys.stderr)
    pairs = len(plan.tensors) // 2
    types = sorted({t.name for t in plan.types.values()})
    print(f"adapter     = {plan.folder} on {plan.base} ({plan.hp.hf_arch} -> {plan.hp.family.arch})")
    print(f"tensors     = {pairs} adapted matrices, rank {plan.config.rank}, alpha {plan.config.alpha:g}, types {', '.join(types)}")
    if options.dry_run:
        for t in plan.tensors:
            print(f"  {t.name:<32} {plan.types[t.name].name:<5} {list(t.ne)}")
        print(f"would write {plan.output}")
    else:
        size = plan.output.stat().st_size
        print(f"wrote       = {plan.output} ({size / 1024 / 1024:.2f} MiB in {plan.seconds:.2f} s)")
    return plan
