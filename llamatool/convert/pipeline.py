"""Plan a conversion (read and check everything, decide every key and type), then stream it.

Metadata is laid out in the order convert_hf_to_gguf.py writes it:

    general.architecture, general.type, authorship (general.*),
    <arch>.* hyperparameters with general.file_type, general.quantization_version,
    tokenizer.* (vocab, merges, special tokens, flags, chat template)

and the tensors in its order: generated rope_freqs first, then the checkpoint's files
sorted by name, each file's tensors sorted by name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from ..errors import LlamatoolError
from ..gguf_io import GGUFWriter, ValueType
from ..quants.registry import GGMLType
from .general import default_file_name, general_fields, load_metadata
from .hparams import Hparams, load_hparams
from .tensors import ModelTensor, model_tensors
from .outtype import OutType, resolve, tensor_types
from .stream import progress_bar, write_tensor
from .tensor_files import checkpoint_dtype, checkpoint_tensors
from .vocab import Vocab

QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION

Field = tuple[str, Any, ValueType, "ValueType | None"]


@dataclass
class ConvertOptions:
    outtype: str = "auto"
    outfile: Path | None = None
    model_name: str | None = None
    vocab_only: bool = False
    dry_run: bool = False
    force: bool = False
    progress: bool = True


@dataclass
class Plan:
    folder: Path
    hp: Hparams
    out: OutType
    vocab: Vocab
    output: Path
    fields: list[Field]
    tensors: list[ModelTensor] = field(default_factory=list)
    types: dict[str, GGMLType] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    def declare(self, writer: GGUFWriter) -> None:
        for key, value, vtype, subtype in self.fields:
            writer.add_field(key, value, vtype, subtype)
        for t in self.tensors:
            writer.add_tensor_info(t.name, self.types[t.name], t.ne)

    @property
    def output_size(self) -> int:
        writer = GGUFWriter(self.output)  # not entered: nothing is opened
        self.declare(writer)
        return writer.planned_size


def _output_path(folder: Path, outfile: Path | None, default_name: str, label: str) -> Path:
    """--outfile as given ({ftype} filled in), a folder to put the default name in, or the model folder."""
    if outfile is None:
        return folder / default_name
    outfile = Path(outfile)
    if outfile.is_dir():
        return outfile / default_name
    return outfile.parent / gguf.fill_templated_filename(outfile.name, label)


def _weights_for_vocab_only(folder: Path) -> dict:
    """--vocab-only needs no weights, but `auto` still looks at their dtype when they are there."""
    try:
        return checkpoint_tensors(folder)
    except LlamatoolError:
        return {}


def plan_conversion(folder: str | Path, options: ConvertOptions) -> Plan:
    folder = Path(folder)
    if not folder.is_dir():
        raise LlamatoolError(f"{folder}: not a directory (give the folder of a Hugging Face checkpoint)")
    hp = load_hparams(folder)
    stored = _weights_for_vocab_only(folder) if options.vocab_only else checkpoint_tensors(folder)
    tensors = [] if options.vocab_only else model_tensors(hp, stored)
    out = resolve(options.outtype, checkpoint_dtype(stored))
    vocab = hp.family.load_vocab(folder, hp)
    n_params = sum(t.n_elements for t in tensors)
    meta = load_metadata(folder, options.model_name, n_params)
    family = hp.family
    fields: list[Field] = [("general.architecture", family.arch, ValueType.STRING, None)]
    fields += [(k, v, t, None) for k, v, t in family.tensor_fields(hp)]
    fields += general_fields(meta)
    fields += [(k, v, t, None) for k, v, t in family.hyperparameter_fields(hp, out.file_type)]
    fields.append(("general.quantization_version", QUANTIZATION_VERSION, ValueType.UINT32, None))
    fields += vocab.fields()
    fields += family.vocab_fields(folder, hp, vocab)
    output = _output_path(folder, options.outfile, default_file_name(meta, out.label, options.vocab_only), out.label)
    plan = Plan(folder, hp, out, vocab, output, fields, tensors)
    metadata = {key: value for key, value, _, _ in fields}
    plan.types = tensor_types([(t.name, t.shape) for t in tensors], out, metadata)
    return plan


def _check_kernels(plan: Plan) -> None:
    missing = sorted({t.name for t in plan.types.values() if not t.can_quantize})
    if missing:
        raise LlamatoolError(f"--outtype {plan.out.name}: no quantization kernel for {', '.join(missing)} yet")
    if any(t.is_quantized and t.name != "Q8_0" for t in plan.types.values()):
        from ..jit import set_threads

        set_threads(None)


def write_plan(plan: Plan, options: ConvertOptions) -> None:
    _check_kernels(plan)
    inputs = [p for p in plan.folder.iterdir() if p.is_file()]
    start = time.perf_counter()
    writer = GGUFWriter(plan.output, force=options.force, inputs=inputs)
    plan.declare(writer)
    total = sum(plan.types[t.name].nbytes(t.n_elements) for t in plan.tensors)
    with progress_bar(total, options.progress) as update, writer:
        for t in plan.tensors:
            update(0, t.name)
            write_tensor(writer, t, plan.types[t.name], update)
    plan.seconds = time.perf_counter() - start


def convert_model(folder: str | Path, options: ConvertOptions) -> Plan:
    """Convert the checkpoint in `folder`; with options.dry_run only plan it."""
    plan = plan_conversion(folder, options)
    if not options.dry_run:
        write_plan(plan, options)
    return plan
