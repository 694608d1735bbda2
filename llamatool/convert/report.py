"""What `llamatool convert` prints: the plan (--dry-run) or a summary of the file written."""

from __future__ import annotations

from collections import Counter

from .pipeline import Plan

MIB = 1024 * 1024


def _console():
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(width=160, highlight=False)  # a pipe or a log: do not wrap names
    return console


def _describe(plan: Plan) -> list[str]:
    hp, v = plan.hp, plan.vocab
    model = f"{hp.hf_arch} -> {hp.family.arch}: {hp.n_layer} layers, {hp.n_embd} embd, {hp.n_head} heads ({hp.n_head_kv} KV), head dim {hp.head_dim}"
    if plan.tensors:
        model += ", untied embeddings" if "output.weight" in plan.types else ", tied embeddings"
    merges = f", {len(v.special.merges)} merges" if v.special.merges else ""
    return [
        f"model       = {model}",
        f"tokenizer   = {v.model} (pre {v.pre}), {len(v.tokens)} tokens{merges}",
        f"output type = {plan.out.name} (general.file_type {plan.out.file_type})",
    ]


def _type_counts(plan: Plan) -> str:
    counts = Counter(plan.types[t.name].name for t in plan.tensors)
    return ", ".join(f"{name} x{n}" for name, n in sorted(counts.items()))


def print_plan(plan: Plan) -> None:
    from rich import box
    from rich.table import Table

    console = _console()
    console.print(f"{plan.folder} -> {plan.output} (dry run: nothing written)")
    for line in _describe(plan):
        console.print(line)
    if plan.tensors:
        table = Table(box=box.SIMPLE, title_justify="left")
        for col in ("#", "tensor", "shape", "from", "to", "MiB"):
            table.add_column(col, justify="right" if col in ("#", "MiB") else "left", no_wrap=True)
        for i, t in enumerate(plan.tensors, 1):
            qtype = plan.types[t.name]
            size = qtype.nbytes(t.n_elements) / MIB
            table.add_row(str(i), t.name, " x ".join(map(str, t.ne)), t.src_dtype, qtype.name, f"{size:.2f}")
        console.print(table)
        console.print(f"tensors     = {len(plan.tensors)} ({_type_counts(plan)}), {plan.n_params:,} parameters")
    exists = " (exists: --force to overwrite)" if plan.output.exists() else ""
    console.print(f"output size = {plan.output_size / MIB:.2f} MiB, {len(plan.fields)} metadata keys{exists}")


def print_summary(plan: Plan) -> None:
    console = _console()
    size = plan.output.stat().st_size
    console.print(f"converted {plan.folder} -> {plan.output}")
    for line in _describe(plan):
        console.print(line)
    if plan.tensors:
        console.print(f"tensors     = {len(plan.tensors)} ({_type_counts(plan)}), {plan.n_params:,} parameters")
    rate = size / MIB / plan.seconds if plan.seconds else 0.0
    console.print(f"file        = {size:,} bytes ({size / MIB:.2f} MiB), {len(plan.fields)} metadata keys")
    console.print(f"time        = {plan.seconds:.2f} s ({rate:.1f} MiB/s)")
