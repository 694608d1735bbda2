"""GGUF LoRA adapters as the runtime and export-lora use them.

An adapter file (`llamatool convert-lora`, llama.cpp's convert_lora_to_gguf.py) holds
general.type=adapter, adapter.type=lora, adapter.lora.alpha and, per adapted matrix W of
the base (ggml shape K x N), `<name>.lora_a` (K x r) and `<name>.lora_b` (r x N), so that

    W' = W + scale * alpha / r * B.A        (llama.cpp: alpha 0 means scale alone)

A token embedding's lora_a is stored transposed (r x vocab). Everything about an adapter
that does not fit its base (architecture, a tensor the base lacks, shapes, a tied
embedding) is a one-line error before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LlamatoolError
from ..gguf_io import GGUFReader, TensorInfo

EMBEDDING = "token_embd.weight"


@dataclass
class Adapter:
    path: Path
    arch: str
    alpha: float
    pairs: dict[str, tuple[TensorInfo, TensorInfo]]  # base tensor name -> (lora_a, lora_b)
    reader: GGUFReader

    def rank(self, name: str) -> int:
        return self.pairs[name][1].ne[0]

    def factor(self, name: str, scale: float) -> float:
        """What B.A is multiplied by: llama.cpp's scale * alpha / rank (scale alone if alpha is 0)."""
        return scale * self.alpha / self.rank(name) if self.alpha else scale

    def matrices(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(A, B) as float32 in numpy order: A (r, K) (an embedding's: (vocab, r)), B (N, r)."""
        a, b = self.pairs[name]
        return a.values(), b.values()


def read_adapter(path) -> Adapter:
    """A LoRA adapter file, checked on its own (not yet against a base)."""
    path = Path(path)
    reader = GGUFReader(path)
    kind, lora_kind = reader.get("general.type"), reader.get("adapter.type")
    if kind != "adapter" or lora_kind != "lora":
        raise LlamatoolError(f"{path}: not a LoRA adapter (general.type {kind!r}, adapter.type {lora_kind!r}; convert one with `llamatool convert-lora`)")
    alpha = reader.get("adapter.lora.alpha", 0.0)
    if not isinstance(alpha, (int, float)) or not np.isfinite(alpha) or alpha < 0:
        raise LlamatoolError(f"{path}: adapter.lora.alpha must be a non-negative number, got {alpha!r}")
    halves: dict[str, dict[str, TensorInfo]] = {}
    for t in reader.tensors:
        base, dot, side = t.name.rpartition(".")
        if side not in ("lora_a", "lora_b") or not dot:
            raise LlamatoolError(f"{path}: tensor {t.name!r} is not a lora_a or lora_b tensor")
        if len(t.ne) != 2:
            raise LlamatoolError(f"{path}: tensor {t.name!r} has {len(t.ne)} dimensions, a LoRA matrix has 2")
        halves.setdefault(base, {})[side] = t
    pairs = {}
    for base, h in halves.items():
        if len(h) != 2:
            raise LlamatoolError(f"{path}: {base!r} has {'no lora_b' if 'lora_b' not in h else 'no lora_a'} tensor")
        a, b = h["lora_a"], h["lora_b"]
        r = b.ne[0]
        fits = a.ne[1] == r if base != EMBEDDING else a.ne[0] == r
        if not fits or r <= 0:
            raise LlamatoolError(f"{path}: {base!r}: lora_a {list(a.ne)} and lora_b {list(b.ne)} have different ranks")
        pairs[base] = (a, b)
    if not pairs:
        raise LlamatoolError(f"{path}: the adapter holds no LoRA tensors")
    return Adapter(path, str(reader.architecture), float(alpha), pairs, reader)


def check_against(adapter: Adapter, base_reader, tied_output: bool) -> None:
    """The adapter fits the base model of base_reader: same architecture, tensors it has, shapes."""
    arch = base_reader.architecture
    if adapter.arch != arch:
        raise LlamatoolError(f"{adapter.path}: the adapter is for architecture {adapter.arch!r}, the model {base_reader.path.name} is {arch!r}")
    for name, (a, b) in adapter.pairs.items():
        if not base_reader.has_tensor(name):
            raise LlamatoolError(f"{adapter.path}: the adapter adapts {name!r}, which {base_reader.path.name} does not have")
        ne = base_reader.tensor(name).ne
        if name == EMBEDDING:
            if tied_output:
                raise LlamatoolError(f"{adapter.path}: LoRA on {name!r} of a model with tied embeddings is not supported (it is also the output matrix)")
            want_a, want_b = (b.ne[0], ne[1]), (b.ne[0], ne[0])
        else:
            want_a, want_b = (ne[0], b.ne[0]), (b.ne[0], ne[1] if len(ne) > 1 else 1)
        if tuple(a.ne) != want_a or tuple(b.ne) != want_b:
            raise LlamatoolError(f"{adapter.path}: {name!r}: lora_a {list(a.ne)} and lora_b {list(b.ne)} do not fit the model's {list(ne)}")


def parse_lora_options(lora, lora_scaled) -> list[tuple[Path, float]]:
    """--lora F (scale 1) and --lora-scaled F SCALE, in that order, as (path, scale)."""
    out = [(Path(p), 1.0) for p in lora or ()]
    for item in lora_scaled or ():
        path, scale = item
        out.append((Path(path), float(scale)))
    return out


def load_adapters(specs, base_reader, tied_output: bool) -> list[tuple[Adapter, float]]:
    """(path or (path, scale)) items read and checked against the base; scale 1 by default."""
    out = []
    for spec in specs or ():
        path, scale = (spec, 1.0) if isinstance(spec, (str, Path)) else spec
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise LlamatoolError(f"{path}: LoRA scale must be a number, got {scale!r}") from None
        if not np.isfinite(scale):
            raise LlamatoolError(f"{path}: LoRA scale must be finite, got {scale}")
        adapter = read_adapter(path)
        check_against(adapter, base_reader, tied_output)
        out.append((adapter, scale))
    return out


def merged_terms(adapters: list[tuple[Adapter, float]], name: str):
    """All adapters' terms on tensor `name` as one: A stacked (R, K) (an embedding's
    (vocab, R)), B side by side (N, R), and each rank row's factor (R,); None if no adapter
    touches it."""
    a_parts, b_parts, f_parts = [], [], []
    for adapter, scale in adapters:
        if name in adapter.pairs:
            a, b = adapter.matrices(name)
            a_parts.append(a)
            b_parts.append(b)
            f_parts.append(np.full(b.shape[1], adapter.factor(name, scale), np.float32))
    if not a_parts:
        return None
    axis = 1 if name == EMBEDDING else 0
    return np.concatenate(a_parts, axis=axis), np.concatenate(b_parts, axis=1), np.concatenate(f_parts)


def _half(adapters: list[tuple[Adapter, float]], name: str) -> bool:
    """Whether every adapter holds tensor `name` as F16: it is then held as halves."""
    types = {t.type.name for adapter, _ in adapters if name in adapter.pairs for t in adapter.pairs[name]}
    return types == {"F16"}


def lora_tables(adapters: list[tuple[Adapter, float]], names: list[str], n_tokens: int, Lora):
    """The forward pass's Lora (kernels/lora.py) for the model's tensor table `names`."""
    table = np.zeros((len(names), 7), np.int64)
    parts: dict[bool, list[np.ndarray]] = {False: [], True: []}
    size = {False: 0, True: 0}
    factors: list[np.ndarray] = []
    n_factors = 0
    used: dict[str, int] = {}  # u floats per group of tensors whose A.x are alive at once (a layer)
    for i, name in enumerate(names):
        terms = merged_terms(adapters, name)
        if terms is None:
            continue
        a, b, f = terms
        half = _half(adapters, name)
        rank, at = b.shape[1], size[half]
        group = name.split(".")[1] if name.startswith("blk.") else name
        table[i] = (at, at + a.size, rank, used.get(group, 0), b.shape[0], n_factors, int(half))
        used[group] = used.get(group, 0) + rank
        parts[half] += [a.reshape(-1), np.ascontiguousarray(b.T).reshape(-1)]
        size[half] += a.size + b.size
        factors.append(f)
        n_factors += f.size
    w32 = np.concatenate(parts[False]).astype(np.float32) if parts[False] else np.zeros(16, np.float32)
    w16 = np.concatenate(parts[True]).astype(np.float16).view(np.uint16) if parts[True] else np.zeros(16, np.uint16)
    f = np.concatenate(factors).astype(np.float32) if factors else np.zeros(16, np.float32)
    stride = max(used.values(), default=0)
    return Lora(table, w32, w16, f, np.zeros(max(16, n_tokens * stride), np.float32), stride)
