"""A GGUF model of a supported family (llamatool.arch), ready to evaluate tokens on the CPU.

    model = Model.load("models/SmolLM2-135M-Instruct.Q4_1.gguf")
    logits = model.eval(model.tokenizer.encode("The capital of France is"))
    print(model.generate("The capital of France is", max_tokens=16, temperature=0).text)

ModelArgs    the hyperparameters, from the file's metadata (llama.cpp's keys and defaults),
             and the family's switches for the forward pass
Weights      the tensors as zero-copy views of the mapped file, in their stored types,
             described by small int64 tables the compiled forward pass reads
KV cache     keys and values of every position, as IEEE halves (llama.cpp's default)
Model        eval() appends tokens to the cache and returns logits; generate()/stream()
             add sampling and decoding (llamatool.generate); eval_many() extends several
             sequences' caches (a CachePool) in one forward call, as a server's slots

Heavy lifting is one compiled call per eval (llamatool.kernels.forward); this module only
validates the file, lays out tables and buffers, and splits long inputs into batches. It
never imports the kernels itself: their layout comes from llamatool.kernel_api and the
compiled pass from llamatool.native_forward (saved machine code, Numba where there is none),
so a warm start does not import Numba.
"""

from __future__ import annotations

import math
import mmap
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import arch as families
from .errors import LlamatoolError

SUPPORTED_ARCHITECTURES = families.supported_architectures()
DEFAULT_N_CTX = 4096  # llama-cli's default context size
DEFAULT_N_BATCH = 512  # tokens per forward call while reading a prompt (llama.cpp's n_ubatch)
# repack=None packs the matrices when the panels take at most this many times their bytes: a
# token's decode reads them all. Measured with the Llama-3.2-1B shape, 2 threads, repacked vs
# not: Q4_0 (1.32: its output matrix is Q6_K) tg 0.96x, pp 1.21x; Q4_K_M (1.54) tg 0.63x.
# The default model (Q4_1, Q8_0): 1.03.
REPACK_AUTO_GROWTH = 1.35


def map_weights(path) -> np.ndarray:
    """The whole file as a read-only uint8 array, its mapping advised to use huge pages.

    Decode reads every weight once per token: with 4 KiB pages a 1 GB model costs a TLB
    miss (a page walk) every 4 KiB, 250k per token. A file read in through a MADV_HUGEPAGE
    mapping lands in 2 MiB page-cache folios that are mapped whole (Linux with read-only
    file THP, >= 5.18); elsewhere the advice is ignored."""
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            mapped.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel without transparent huge pages
            pass
    return np.frombuffer(mapped, np.uint8)


@dataclass(frozen=True)
class ModelArgs:
    """Hyperparameters of a model, as llama.cpp reads them."""

    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx_train: int
    norm_eps: float
    rope_base: float
    n_rot: int
    rope_scaling: str = "none"  # none, linear or yarn (Llama 3 scaling is rope_freqs.weight)
    rope_freq_scale: float = 1.0  # 1 / scaling factor
    rope_n_ctx_orig: int = 0  # YaRN's original context length
    rope_attn_factor: float = 1.0
    has_rope_freqs: bool = False  # Llama 3 per-frequency factors present
    tied_output: bool = False  # no output.weight: logits use token_embd.weight
    architecture: str = "llama"
    name: str = ""
    rope_neox: bool = False  # the family rotates the two halves of a head (llama.cpp's NEOX)
    nope_every: int = 0  # every nope_every-th layer has no RoPE (SmolLM3); 0: all have it
    embd_scale: float = 1.0  # token embeddings are multiplied by it (Gemma: sqrt(n_embd))
    gelu: bool = False  # GELU(tanh)-gated FFN (Gemma) instead of SwiGLU
    attn_scale: float = 0.0  # attention scale; 0: 1/sqrt(head_dim)
    scale_q: bool = False  # the scale multiplies Q (Gemma, Phi-3) rather than the K.Q scores
    attn_softcap: float = 0.0  # > 0: scores capped by tanh (Gemma 2)
    final_softcap: float = 0.0  # > 0: logits capped by tanh (Gemma 2)
    n_swa: int = 0  # sliding window of the SWA layers (0: none)
    swa_pattern: int = 0  # which layers slide: il % swa_pattern < swa_pattern - 1 (0: all)
    rope_base_swa: float = 0.0  # the SWA layers' own rope base (0: the model's)
    rope_freq_scale_swa: float = 1.0
    rope_factors: str = ""  # Phi-3 LongRoPE: "rope_factors_long" / "_short" tensors present

    @property
    def family(self):
        return families.by_arch(self.architecture, "model")

    @classmethod
    def from_gguf(cls, reader) -> "ModelArgs":
        arch = reader.architecture
        family = families.by_arch(arch, str(reader.path))
        if _meta(reader, arch, "expert_count", 0):
            raise LlamatoolError(f"{reader.path}: mixture-of-experts models (expert_count > 0) are not supported")
        n_embd = _meta_int(reader, arch, "embedding_length")
        n_layer = _meta_int(reader, arch, "block_count")
        n_head = _meta_int(reader, arch, "attention.head_count")
        n_head_kv = _meta_int(reader, arch, "attention.head_count_kv", n_head)
        head_dim = _meta_int(reader, arch, "attention.key_length", n_embd // n_head if n_head else 0)
        value_dim = _meta_int(reader, arch, "attention.value_length", head_dim)
        if n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
            raise LlamatoolError(f"{reader.path}: {n_head} attention heads cannot share {n_head_kv} KV heads")
        if value_dim != head_dim:
            raise LlamatoolError(f"{reader.path}: key length {head_dim} != value length {value_dim} is not supported")
        n_rot = _meta_int(reader, arch, "rope.dimension_count", head_dim)
        if n_rot != head_dim:
            raise LlamatoolError(f"{reader.path}: invalid n_rot {n_rot}, expected {head_dim} (as llama.cpp)")
        scaling = str(_meta(reader, arch, "rope.scaling.type", "linear"))
        factor = float(_meta(reader, arch, "rope.scaling.factor", 0.0) or _meta(reader, arch, "rope.scale_linear", 0.0) or 0.0)
        if scaling not in ("none", "linear", "yarn", "longrope"):
            raise LlamatoolError(f"{reader.path}: RoPE scaling {scaling!r} is not supported (none, linear, yarn, longrope)")
        freq_scale = 1.0 if scaling == "none" or factor == 0.0 else 1.0 / factor
        if freq_scale == 1.0 and scaling == "linear":
            scaling = "none"
        n_ctx_train = _meta_int(reader, arch, "context_length")
        token_embd = reader.tensor("token_embd.weight")
        switches = family.forward
        attention = family.attention_params(lambda key, default=None: _meta(reader, arch, key, default), n_layer, n_embd,
                                            n_head, head_dim)
        if attention.get("rope_base_swa") and scaling == "yarn":
            raise LlamatoolError(f"{reader.path}: YaRN with a separate rope base for sliding-window layers is not supported")
        has_long = reader.has_tensor("rope_factors_long.weight")
        if has_long != reader.has_tensor("rope_factors_short.weight"):
            raise LlamatoolError(f"{reader.path}: rope_factors_long.weight and rope_factors_short.weight come together")
        return cls(
            n_vocab=token_embd.ne[1] if len(token_embd.ne) > 1 else 0,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_ff=_meta_int(reader, arch, "feed_forward_length"),
            n_ctx_train=n_ctx_train,
            norm_eps=float(_meta(reader, arch, "attention.layer_norm_rms_epsilon", 1e-5)),
            rope_base=float(_meta(reader, arch, "rope.freq_base", 10000.0)),
            n_rot=n_rot,
            rope_scaling=scaling,
            rope_freq_scale=freq_scale,
            rope_n_ctx_orig=_meta_int(reader, arch, "rope.scaling.original_context_length", n_ctx_train),
            rope_attn_factor=float(_meta(reader, arch, "rope.scaling.attn_factor", 1.0)),
            has_rope_freqs=reader.has_tensor("rope_freqs.weight"),
            tied_output=not reader.has_tensor("output.weight"),
            architecture=arch,
            name=str(reader.get("general.name", "") or ""),
            rope_neox=switches.rope == families.ROPE_NEOX,
            nope_every=switches.nope_every,
            embd_scale=math.sqrt(n_embd) if switches.embd_scale else 1.0,
            gelu=switches.gelu,
            scale_q=switches.scale_q,
            rope_factors="rope_factors" if has_long else "",
            **attention,
        )

    def is_swa_layer(self, il: int) -> bool:
        """llama.cpp's hparams.is_swa for the set_swa_pattern layouts."""
        return self.n_swa > 0 and (self.swa_pattern == 0 or il % self.swa_pattern < self.swa_pattern - 1)


def _meta(reader, arch: str, key: str, default=None):
    value = reader.get(f"{arch}.{key}", default)
    if isinstance(value, np.ndarray):  # per-layer arrays: llamatool needs them uniform
        if value.size and (value != value.flat[0]).any():
            raise LlamatoolError(f"{reader.path}: per-layer {arch}.{key} values differ; not supported")
        value = value.flat[0].item() if value.size else default
    return value


def _meta_int(reader, arch: str, key: str, default=None) -> int:
    value = _meta(reader, arch, key, default)
    if value is None:
        raise LlamatoolError(f"{reader.path}: missing metadata key {arch}.{key!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise LlamatoolError(f"{reader.path}: {arch}.{key} must be an integer, got {value!r}") from None


# --- weights --------------------------------------------------------------------------------

_SPLIT_QKV_ROLES = ("WQ", "WK", "WV", "BQ", "BK", "BV")  # replaced by a fused attn_qkv


@dataclass
class Weights:
    """Where every tensor of the model is in the mapped file, as tables for the kernels."""

    data: np.ndarray  # uint8 view of the whole file (read-only mmap); after repack, a read-only copy of the rest
    tensors: np.ndarray  # int64[n, 7]: byte offset, ggml type, row length, rows, bytes per row, packed at (or -1),
    # packed kind (see repack)
    layers: np.ndarray  # int64[n_layer, N_LAYER_ROLES]: tensor index per role, -1 if absent
    globals: np.ndarray  # int64[3]: token_embd, output_norm, output
    freq_factors: np.ndarray  # float32[n_rot/2]: Llama 3 rope_freqs.weight, or ones
    names: list[str] = field(default_factory=list)
    packed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))  # see repack()

    @classmethod
    def from_gguf(cls, reader, args: ModelArgs, n_ctx: int) -> "Weights":
        from . import kernel_api

        fw = kernel_api.load("forward")
        SUPPORTED = kernel_api.load("types").SUPPORTED
        data = map_weights(reader.path)
        rows, names, index = [], [], {}

        def add(name: str, shape: tuple, required: bool = True, float32_only: bool = False) -> int:
            if not reader.has_tensor(name):
                if required:
                    raise LlamatoolError(f"{reader.path}: missing tensor {name!r}")
                return -1
            t = reader.tensor(name)
            ne = tuple(t.ne) + (1,) * (len(shape) - len(t.ne))
            if tuple(ne[: len(shape)]) != shape or any(d != 1 for d in ne[len(shape):]):
                raise LlamatoolError(f"{reader.path}: tensor {name!r} has shape {list(t.ne)}, expected {list(shape)}")
            if float32_only and t.type.name != "F32":
                raise LlamatoolError(f"{reader.path}: tensor {name!r} is {t.type.name}; llamatool needs it in F32")
            if t.type.id not in SUPPORTED:
                raise LlamatoolError(
                    f"{reader.path}: tensor {name!r} has type {t.type.name}, which llamatool cannot run "
                    f"(supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS TQ1_0 TQ2_0 IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ1_S IQ1_M)"
                )
            if name not in index:
                k = ne[0]
                index[name] = len(rows)
                rows.append((reader.data_offset + t.offset, t.type.id, k, t.n_rows, t.type.row_bytes(k)))
                names.append(name)
            return index[name]

        e, v, ff = args.n_embd, args.n_vocab, args.n_ff
        n_q, n_kv = args.n_head * args.head_dim, args.n_head_kv * args.head_dim
        dims = {"n_embd": e, "n_ff": ff, "n_q": n_q, "n_kv": n_kv, "head_dim": args.head_dim, "n_ff2": 2 * ff,
                "n_qkv": n_q + 2 * n_kv}
        embd = add("token_embd.weight", (e, v))
        out_norm = add("output_norm.weight", (e,), float32_only=True)
        output = add("output.weight", (e, v), required=False)
        layers = np.full((args.n_layer, fw.N_LAYER_ROLES), -1, np.int64)
        for i in range(args.n_layer):
            p = f"blk.{i}."
            L = layers[i]
            fused = reader.has_tensor(p + "attn_qkv.weight")
            if fused:
                L[fw.LAYER_WQKV] = add(p + "attn_qkv.weight", (e, n_q + 2 * n_kv))
                L[fw.LAYER_BQKV] = add(p + "attn_qkv.bias", (n_q + 2 * n_kv,), False, True)
            for t in args.family.gguf_layer_tensors:
                if fused and t.role in _SPLIT_QKV_ROLES:
                    continue
                shape = tuple(dims[d] for d in t.shape.split())
                L[getattr(fw, "LAYER_" + t.role)] = add(p + t.name, shape, t.required, t.float32)
        freq_factors = _freq_factors(reader, args, n_ctx)
        table = np.array([r + (-1, -1) for r in rows], dtype=np.int64).reshape(-1, fw.N_TENSOR_COLUMNS)
        glob = np.array([embd, out_norm, embd if output < 0 else output], dtype=np.int64)
        return cls(data, table, layers, glob, freq_factors, names)

    def compile_missing(self, repack: bool) -> None:
        """Compile the kernels these weights need (repacked or not) apart, on a cold cache:
        native_forward.compile_missing."""
        from .native_forward import compile_missing

        kinds = self._packed_kinds() if repack else {}
        compile_missing(self.matrix_types, {int(self.tensors[i, 1]) for i in kinds}, set(kinds.values()))

    def repack(self) -> None:
        """Pack every quantized matrix into 16-row panels (kernels.gemm.pack_matrix) in
        self.packed, so that its products give a token the same bits in a call of any size
        and a few tokens cost little more than one (a server's decode steps). What else the
        forward pass reads is then copied out of the file, which is let go: memory holds
        the panels (the file's size for Q4_0/Q4_1, at most 1.5 bytes per weight) and the
        token embedding once more."""
        from . import kernel_api

        gemm, fw = kernel_api.load("gemm"), kernel_api.load("forward")
        T = self.tensors
        kinds = self._packed_kinds()
        while True:  # a matrix whose scales do not fit f16 is packed again with float32 ones
            starts, size = {}, 0
            for i, kind in kinds.items():
                starts[i] = size
                size += gemm.packed_words(kind, int(T[i, 2]), int(T[i, 3]))
            packed = np.empty(size, np.uint32)
            misfit = [i for i, kind in kinds.items() if not self._pack(i, kind, packed, starts[i])]
            if not misfit:
                break
            for i in misfit:
                kinds[i] -= gemm.F16_SCALES
        for i, kind in kinds.items():
            T[i, fw.T_PACKED], T[i, fw.T_PACKED_KIND] = starts[i], kind
        self.packed = packed
        self._copy_the_rest({int(self.globals[fw.GLOBAL_TOK_EMBD])} | {i for i in range(len(T)) if i not in kinds})

    def _copy_the_rest(self, keep: set[int]) -> None:
        """Copy the tensors the forward pass still reads from the file (the token embedding,
        for lookups; norms, biases, float matrices) into memory and let the file go: the
        packed matrices' bytes are no longer needed, and a mapping would keep them resident
        (a norm read next to them maps its whole huge page back)."""
        T = self.tensors
        at, size = {}, 0
        for i in sorted(keep):
            at[i] = size
            size += (int(T[i, 3] * T[i, 4]) + 63) // 64 * 64
        data = np.zeros(size, np.uint8)
        for i in sorted(keep):
            n = int(T[i, 3] * T[i, 4])
            data[at[i]:at[i] + n] = self.data[int(T[i, 0]):int(T[i, 0]) + n]
            T[i, 0] = at[i]
        for i in range(len(T)):
            if i not in keep:
                T[i, 0] = -1  # packed: read from self.packed only
        data.flags.writeable = False  # as the mapped file is: the forward pass's saved code is for that layout
        self.data = data

    def _packed_kinds(self) -> dict[int, int]:
        """The quantized matrices and the most compact kind of their packed panels."""
        from . import kernel_api

        gemm, float_types = kernel_api.load("gemm"), kernel_api.load("types").FLOAT_TYPES
        return {i: gemm.packed_kind(int(self.tensors[i, 1])) for i in self.matrices() if int(self.tensors[i, 1]) not in float_types}

    def repack_growth(self) -> float:
        """Bytes the packed panels would take over the bytes of the matrices in the file
        (1.0 for Q4_0 and Q4_1 matrices; 1.54 for a Q4_K_M file, whose K-quant scales are kept
        as float32)."""
        from . import kernel_api

        gemm, T = kernel_api.load("gemm"), self.tensors
        kinds = self._packed_kinds()
        packed = sum(4 * gemm.packed_words(k, int(T[i, 2]), int(T[i, 3])) for i, k in kinds.items())
        return packed / max(1, sum(int(T[i, 3] * T[i, 4]) for i in kinds))

    def _pack(self, i: int, kind: int, packed: np.ndarray, start: int) -> bool:
        from . import kernel_api
        from .native_forward import panel_packer

        gemm = kernel_api.load("gemm")
        off, qtype, k, n_rows, row_bytes = (int(v) for v in self.tensors[i, :5])
        size = gemm.packed_words(kind, k, n_rows)
        return gemm.pack_matrix(panel_packer(qtype), qtype, self.data, off, row_bytes, k, n_rows,
                                packed[start:start + size], kind)

    def matrices(self) -> list[int]:
        """Indices of the tensors multiplied as matrices: the layers' and the output."""
        from . import kernel_api

        fw = kernel_api.load("forward")
        roles = [fw.LAYER_WQ, fw.LAYER_WK, fw.LAYER_WV, fw.LAYER_WQKV, fw.LAYER_WO, fw.LAYER_GATE, fw.LAYER_UP, fw.LAYER_DOWN]
        return sorted({int(i) for i in self.layers[:, roles].ravel() if i >= 0} | {int(self.globals[fw.GLOBAL_OUTPUT])})

    @property
    def packed_kinds(self) -> set[int]:
        """gemm.packed_kind of the packed matrices (see repack)."""
        return {int(kind) for kind, at in zip(self.tensors[:, 6], self.tensors[:, 5]) if at >= 0}

    @property
    def matrix_types(self) -> set[int]:
        """ggml type ids of the matrices (the types whose matmul kernels the model needs)."""
        return {int(t) for t, rows in zip(self.tensors[:, 1], self.tensors[:, 3]) if rows > 1}


def _freq_factors(reader, args: ModelArgs, n_ctx: int) -> np.ndarray:
    """RoPE's per-frequency divisors: Llama 3's rope_freqs.weight; Phi-3's LongRoPE long
    factors when the context exceeds the original one, else its short factors (llama.cpp's
    get_rope_factors); or ones."""
    if args.has_rope_freqs:
        name = "rope_freqs.weight"
    elif args.rope_factors:
        name = "rope_factors_long.weight" if n_ctx > args.rope_n_ctx_orig else "rope_factors_short.weight"
    else:
        return np.ones(args.n_rot // 2, np.float32)
    t = reader.tensor(name)
    if t.type.name != "F32" or t.n_elements < args.n_rot // 2:
        raise LlamatoolError(f"{reader.path}: {name} must hold {args.n_rot // 2} F32 values")
    return np.array(t.data.reshape(-1).view(np.float32)[: args.n_rot // 2], dtype=np.float32)


# --- the model ------------------------------------------------------------------------------


class Model:
    """A loaded model with its KV cache; see the module docstring."""

    def __init__(self, path: Path, reader, args: ModelArgs, weights: Weights, n_ctx: int, n_threads: int, n_batch: int,
                 lora: list | None = None):
        self.path = Path(path)
        self.lora = lora or []  # [(llamatool.lora.adapter.Adapter, scale)]: applied at run time
        self.reader = reader
        self.args = args
        self.weights = weights
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.n_past = 0
        self.history: list[int] = []  # tokens whose keys and values are in the cache, in order
        self.load_seconds = 0.0
        self._tokenizer = None
        self._setup_buffers()

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def load(cls, path, n_ctx: int | None = None, n_threads: int | None = None, n_batch: int = DEFAULT_N_BATCH,
             lora=(), repack: bool | None = False) -> "Model":
        """Open a GGUF model. n_ctx: context size (default min(4096, trained); 0 = trained);
        n_threads: compute threads (default: all cores); lora: LoRA adapter files, each a
        path or (path, scale), added at run time (llama.cpp's --lora / --lora-scaled);
        repack: pack the quantized matrices into panels at load (Weights.repack: batch-invariant
        bits, and cheap steps of a few tokens, as a server's slots make; a token's logits
        differ from those of the unpacked file by float summation order only); None: only if
        the panels take at most REPACK_AUTO_GROWTH times the matrices' bytes (decoding one
        token reads them all: more bytes, a slower single stream)."""
        from .gguf_io import GGUFReader

        start = time.perf_counter()
        reader = GGUFReader(path)
        args = ModelArgs.from_gguf(reader)
        _check_shapes(reader, args)
        adapters = []
        if lora:
            from .lora.adapter import load_adapters

            adapters = load_adapters(lora, reader, args.tied_output)
        if n_ctx is None:
            n_ctx = min(DEFAULT_N_CTX, args.n_ctx_train) if args.n_ctx_train > 0 else DEFAULT_N_CTX
        elif n_ctx == 0:
            n_ctx = args.n_ctx_train
        if n_ctx <= 0:
            raise LlamatoolError(f"context size must be positive, got {n_ctx}")
        weights = Weights.from_gguf(reader, args, int(n_ctx))
        repack = repack or (repack is None and weights.repack_growth() <= REPACK_AUTO_GROWTH)
        weights.compile_missing(repack)
        if repack:
            weights.repack()
        if n_batch <= 0:
            raise LlamatoolError(f"batch size must be positive, got {n_batch}")
        threads = _thread_count(n_threads)
        model = cls(Path(path), reader, args, weights, int(n_ctx), threads, int(min(n_batch, n_ctx)), adapters)
        model._load_tokenizer()
        model._run(np.zeros(0, np.int64), 0, model._last_logits)  # compiles or loads the forward pass now
        model.load_seconds = time.perf_counter() - start
        return model

    def _load_tokenizer(self) -> None:
        try:
            from .tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_gguf(self.reader)
        except LlamatoolError as e:
            self._tokenizer_error = str(e)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            raise LlamatoolError(f"{self.path}: no usable tokenizer ({getattr(self, '_tokenizer_error', 'missing')})")
        return self._tokenizer

    def _setup_buffers(self) -> None:
        from . import kernel_api, native_forward

        fw = native_forward.driver()
        a, B, w = self.args, self.n_batch, self.weights
        rows, dequant = native_forward.kernel_tables(w.matrix_types)
        packed_rows = native_forward.packed_table(w.packed_kinds)
        self._net = fw.Net(w.data, w.tensors, w.layers, w.globals, rows, dequant, w.freq_factors, self._lora_tables(),
                           w.packed, packed_rows)
        n_q, n_kv = a.n_head * a.head_dim, a.n_head_kv * a.head_dim
        max_k = max(a.n_embd, n_q, a.n_ff)
        f32 = np.float32
        activation_slot = kernel_api.load("actquant").activation_slot
        self._scratch = fw.Scratch(
            x=np.zeros(B * a.n_embd, f32),
            xn=np.zeros(B * a.n_embd, f32),
            qkv=np.zeros(B * (n_q + 2 * n_kv), f32),
            att=np.zeros(B * n_q, f32),
            tmp=np.zeros(B * a.n_embd, f32),
            gate=np.zeros(B * a.n_ff, f32),
            up=np.zeros(B * a.n_ff, f32),
            xr=np.zeros(B * max_k, f32),
            a8=activation_slot(B * max_k),
            ak=activation_slot(B * max_k, paired=True),
            angles=np.zeros(B * a.n_rot * (2 if _swa_rope(a) else 1), f32),
            scores=np.zeros(self.n_threads * fw.attention_scratch_floats(a.n_head, a.n_head_kv, a.head_dim), f32),
            sq=np.zeros(0, f32),
        )
        cache_positions = fw.kv_cache_positions(self.n_ctx)
        cache_len = a.n_layer * a.n_head_kv * cache_positions * a.head_dim
        # memory is committed only as the context fills
        self.k_cache = _fresh_zeros(cache_len, np.uint16)
        self.v_cache = _fresh_zeros(cache_len, np.uint16)
        self._counters = np.zeros(kernel_api.load("sync").counters_size(fw.phases_per_call(a.n_layer)), np.int64)
        self._dims = fw.Dims(a.n_embd, a.n_layer, a.n_head, a.n_head_kv, a.head_dim, a.n_ff, a.n_vocab, cache_positions, a.n_rot,
                             self.n_threads, int(a.rope_neox), a.nope_every, int(a.gelu), a.n_swa, a.swa_pattern,
                             int(_swa_rope(a)))
        self._rope = fw.FloatParams(*_rope_params(a))
        self._last_logits = np.zeros(a.n_vocab, f32)
        self._pos = np.zeros(B, np.int64)  # each token's position and cache region (fw.Batch)
        self._kv = np.zeros(B, np.int64)
        self._Batch = fw.Batch
        # fewest tokens a fast part of eval_many may have (the fast products' own minimum)
        self.min_fast_tokens = kernel_api.load("gemm").MIN_TOKENS
        self._forward = fw.Forward(self.n_threads)
        self._forward_worker = fw.worker

    def _lora_tables(self):
        from . import kernel_api

        Lora = kernel_api.load("lora")
        if not self.lora:
            return Lora.no_lora(len(self.weights.names))
        from .lora.adapter import lora_tables

        return lora_tables(self.lora, self.weights.names, self.n_batch, Lora.Lora)

    @property
    def input_square_sums_size(self) -> int:
        from . import kernel_api

        a = self.args
        _, (offset, width) = kernel_api.load("forward").input_square_sums(a.n_embd, a.n_head * a.head_dim, a.n_ff, a.n_layer)
        return offset + width

    def sum_input_squares(self, sums: np.ndarray | None) -> None:
        """From the next eval on, add the square of every input column of every matrix, token
        by token, to sums (float32, laid out as kernels.forward.input_square_sums says); None
        stops it. What llama-imatrix collects (llamatool.imatrix)."""
        empty = np.zeros(0, np.float32)
        if sums is not None and (sums.dtype != np.float32 or sums.shape != (self.input_square_sums_size,)):
            raise LlamatoolError(f"internal error: input square sums must be {self.input_square_sums_size} float32 values")
        self._scratch = self._scratch._replace(sq=empty if sums is None else sums)

    # -- the KV cache ------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every token: the next eval starts at position 0."""
        self.n_past = 0
        self.history = []

    def truncate(self, n_past: int) -> None:
        """Keep only the first n_past tokens of the cache (later entries are overwritten)."""
        if not 0 <= n_past <= self.n_past:
            raise LlamatoolError(f"cannot truncate the cache to {n_past} tokens: it holds {self.n_past}")
        self.n_past = n_past
        del self.history[n_past:]

    def new_caches(self, n: int) -> "CachePool":
        """n empty KV caches of this model's context size in one pair of arrays (memory is
        committed as they fill), for eval_many: a server keeps one per slot."""
        size = self.k_cache.size
        k = _fresh_zeros(n * size, self.k_cache.dtype)
        v = _fresh_zeros(n * size, self.v_cache.dtype)
        return CachePool(k, v, [CacheState(k[i * size:(i + 1) * size], v[i * size:(i + 1) * size], 0, [], i * size)
                                for i in range(n)])

    @property
    def split_invariant(self) -> bool:
        """Whether a token's logits are the same however tokens are cut into calls (of any
        size, beside any others): every matrix is packed (repack)."""
        return all(self.weights.tensors[i, 5] >= 0 for i in self.weights.matrices())

    @property
    def forward_backend(self) -> str | None:
        """How the forward pass runs: "native" (saved machine code, no Numba), "numba", or
        None before the first eval."""
        return self._forward_worker.backend

    @property
    def kv_cache_bytes(self) -> int:
        return self.k_cache.nbytes + self.v_cache.nbytes

    # -- evaluation --------------------------------------------------------------------------
    def eval(self, token_ids, all_logits: bool = False) -> np.ndarray:
        """Append tokens to the context and return float32 logits: of the last token
        (n_vocab,), or of every token (n_tokens, n_vocab) with all_logits=True.

        Long inputs are processed in batches of n_batch tokens, each batch through every
        layer as matrix-matrix products.
        """
        ids = np.ascontiguousarray(token_ids, dtype=np.int64).reshape(-1)
        n = ids.size
        self._check_ids(ids)
        result = np.empty((n, self.args.n_vocab), np.float32) if all_logits else self._last_logits
        for b0 in range(0, n, self.n_batch):
            b1 = min(b0 + self.n_batch, n)
            if all_logits:
                out_t0, logits = 0, result[b0:b1].reshape(-1)
            else:
                # only the very last token needs logits; earlier batches skip the output layer
                out_t0, logits = (b1 - b0 - 1 if b1 == n else b1 - b0), self._last_logits
            self._run(ids[b0:b1], out_t0, logits)
            self.n_past += b1 - b0
            self.history.extend(int(t) for t in ids[b0:b1])
        return result if all_logits else result.copy()

    def _check_ids(self, ids: np.ndarray, n_past: int | None = None) -> None:
        """ids can be appended to a cache holding n_past tokens (default: the model's own):
        some, all in the vocabulary, room for them."""
        n = ids.size
        if n == 0:
            raise LlamatoolError("eval needs at least one token")
        if ids.min() < 0 or ids.max() >= self.args.n_vocab:
            bad = int(ids[(ids < 0) | (ids >= self.args.n_vocab)][0])
            raise LlamatoolError(f"token id {bad} is outside the vocabulary (0..{self.args.n_vocab - 1})")
        n_past = self.n_past if n_past is None else n_past
        if n_past + n > self.n_ctx:
            raise LlamatoolError(
                f"context is full: {n_past} cached + {n} new tokens > context size {self.n_ctx} (use -c to enlarge it)"
            )

    def hidden_states(self, token_ids, n_batch: int = 64) -> np.ndarray:
        """The final-norm hidden state of every token (n_tokens, n_embd), evaluated from an
        empty cache (what llama.cpp pools for embeddings). Batches are kept small because the
        forward pass also writes their logits."""
        ids = np.ascontiguousarray(token_ids, dtype=np.int64).reshape(-1)
        self.reset()
        n_embd = self.args.n_embd
        step = max(1, min(n_batch, self.n_batch))
        out = np.empty((ids.size, n_embd), np.float32)
        logits = np.empty(step * self.args.n_vocab, np.float32)
        self._check_ids(ids)
        for b0 in range(0, ids.size, step):
            b1 = min(b0 + step, ids.size)
            self._run(ids[b0:b1], 0, logits)
            out[b0:b1] = self._scratch.xn[: (b1 - b0) * n_embd].reshape(b1 - b0, n_embd)
            self.n_past += b1 - b0
            self.history.extend(int(t) for t in ids[b0:b1])
        return out

    def _run(self, ids: np.ndarray, out_t0: int, logits: np.ndarray) -> None:
        """One forward call: ids at positions n_past.. (the caller advances n_past)."""
        n = ids.size
        self._pos[:n] = np.arange(self.n_past, self.n_past + n)
        self._kv[:n] = 0
        self._forward(self._net, self._dims, self._rope, self.k_cache, self.v_cache, ids, n,
                      self._Batch(self._pos, self._kv, np.int64(n)), out_t0, self._scratch, logits, self._counters)

    def eval_many(self, pool: "CachePool", parts: list["Part"]) -> list[np.ndarray]:
        """Append each part's tokens to its cache in pool (its state's n_past and history
        advance), all in one forward call; returns the logits of the last token of each
        part that asks for them (logits=True), in the order of parts.

        Every part gets the bits it would get alone. The tokens of `exact` parts go through
        the one-token products (kernels/forward.py, batch invariance); the others, prompt
        pieces of at least min_fast_tokens tokens, through the fast products for many
        tokens, whose bits for a token do not depend on which other tokens share them as
        long as there are that many (kernels/gemm.py): a piece gets the bits Model.eval
        gives it. At most n_batch tokens per call."""
        fast = [p for p in parts if not p.exact]
        exact = [p for p in parts if p.exact]
        if any(len(p.ids) < self.min_fast_tokens for p in fast):
            raise LlamatoolError(f"internal error: a fast part needs at least {self.min_fast_tokens} tokens")
        for p in parts:
            self._check_ids(np.asarray(p.ids, np.int64), p.state.n_past)
        # the forward pass gives logits to a tail of the batch, and one-token products to
        # another: fast tokens, their last ones with logits, exact tokens, theirs with logits
        groups = [[(p, 0, len(p.ids) - p.logits) for p in fast], [(p, len(p.ids) - 1, len(p.ids)) for p in fast if p.logits],
                  [(p, 0, len(p.ids) - p.logits) for p in exact], [(p, len(p.ids) - 1, len(p.ids)) for p in exact if p.logits]]
        sizes = [sum(b - a for _, a, b in g) for g in groups]
        n = sum(sizes)
        if n > self.n_batch:
            raise LlamatoolError(f"internal error: {n} tokens in one call, more than the batch size {self.n_batch}")
        ids = np.empty(n, np.int64)
        t = 0
        for p, a, b in (item for g in groups for item in g):
            ids[t:t + b - a] = p.ids[a:b]
            self._pos[t:t + b - a] = np.arange(p.state.n_past + a, p.state.n_past + b)
            self._kv[t:t + b - a] = p.state.offset
            t += b - a
        # logits of group 1 and of group 3 (exact tokens without logits between them get
        # some too: only short prompts have such tokens)
        out_t0 = sizes[0] if sizes[1] else n - sizes[3]
        logits = np.empty((n - out_t0, self.args.n_vocab), np.float32)
        batch = self._Batch(self._pos, self._kv, np.int64(sizes[0] + sizes[1]))
        self._forward(self._net, self._dims, self._rope, pool.k, pool.v, ids, n, batch, out_t0, self._scratch,
                      logits.reshape(-1), self._counters)
        for p in parts:
            p.state.n_past += len(p.ids)
            p.state.history.extend(int(t) for t in p.ids)
        rows = dict(zip([id(p) for p, _, _ in groups[1]], logits[:sizes[1]]))
        rows.update(zip([id(p) for p, _, _ in groups[3]], logits[len(logits) - sizes[3]:]))
        return [rows[id(p)] for p in parts if p.logits]

    # -- generation (see llamatool.generate) ----------------------------------------------------
    def generate(self, prompt, max_tokens: int = 128, **options):
        """Generate text after prompt (str or token ids); returns a GenerationResult.

        Options: temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
        frequency_penalty, presence_penalty, seed, on_text (called with each text piece),
        stop_at_eog (default True). The KV cache is reused for the prompt's longest prefix
        already in it.
        """
        from .generate import generate

        return generate(self, prompt, max_tokens=max_tokens, **options)

    def stream(self, prompt, max_tokens: int = 128, **options):
        """Like generate(), but yields the text piece by piece as it is made."""
        from .generate import stream

        return stream(self, prompt, max_tokens=max_tokens, **options)

    def __repr__(self) -> str:
        a = self.args
        return f"Model({self.path.name!r}, {a.n_layer} layers, n_embd={a.n_embd}, n_ctx={self.n_ctx}, threads={self.n_threads})"


def _fresh_zeros(n: int, dtype) -> np.ndarray:
    """n zeros in private anonymous pages, committed 4 KiB at a time as they are first written.
    (np.zeros advises large arrays to use huge pages: the first write anywhere in 2 MiB commits
    all of it, and the KV cache, written one position per head region, was resident whole
    after the first token.)"""
    mapped = mmap.mmap(-1, max(1, n * np.dtype(dtype).itemsize), flags=mmap.MAP_PRIVATE)
    return np.frombuffer(mapped, dtype, n)


@dataclass
class CacheState:
    """One sequence's KV cache: keys, values, how many positions are filled, their tokens,
    and where k and v start in their pool's arrays."""

    k: np.ndarray
    v: np.ndarray
    n_past: int
    history: list[int]
    offset: int = 0

    def truncate(self, n_past: int) -> None:
        """Keep only the first n_past positions (later ones are overwritten)."""
        self.n_past = n_past
        del self.history[n_past:]


@dataclass
class CachePool:
    """KV caches of several sequences in one pair of arrays (Model.new_caches)."""

    k: np.ndarray
    v: np.ndarray
    states: list[CacheState]


@dataclass
class Part:
    """A sequence's share of an eval_many call: tokens to append to its cache; exact: with
    one-token bits (else a prompt piece of at least min_fast_tokens); logits: of its last token."""

    state: CacheState
    ids: list[int]
    exact: bool = True
    logits: bool = True


def _check_shapes(reader, args: ModelArgs) -> None:
    if args.n_vocab <= 0 or args.n_embd <= 0 or args.n_layer <= 0 or args.n_ff <= 0:
        raise LlamatoolError(f"{reader.path}: implausible hyperparameters {args}")
    if args.head_dim % 16 or args.n_rot % 2:
        raise LlamatoolError(f"{reader.path}: head dimension {args.head_dim} is not a multiple of 16")


def _thread_count(n_threads: int | None) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_threads is None or n_threads <= 0:
        return cores
    return int(n_threads)


def _rope_params(a: ModelArgs) -> tuple:
    """FloatParams as llama.cpp computes them (llama-context.cpp, ggml_rope_yarn_corr_dims)."""
    f32 = np.float32
    theta_scale = f32(np.power(f32(a.rope_base), f32(-2.0) / f32(a.n_rot)))
    ext_factor = 1.0 if a.rope_scaling == "yarn" else 0.0
    attn_factor = 1.0
    if ext_factor:  # YaRN: llama.cpp cancels the magnitude correction ggml's rope_yarn applies
        factor = 1.0 / a.rope_freq_scale
        mscale = 1.0 if factor <= 1.0 else 0.1 * math.log(factor) + 1.0
        attn_factor = mscale / (1.0 + 0.1 * math.log(factor))
    attn_factor *= a.rope_attn_factor

    def corr_dim(n_rot_turns: float) -> float:
        return a.n_rot * math.log(a.rope_n_ctx_orig / (n_rot_turns * 2 * math.pi)) / (2 * math.log(a.rope_base))

    corr0 = max(0.0, math.floor(corr_dim(32.0)))
    corr1 = min(a.n_rot - 1.0, math.ceil(corr_dim(1.0)))
    scale = a.attn_scale or 1.0 / math.sqrt(a.head_dim)
    q_scale, kq_scale = (scale, 1.0) if a.scale_q else (1.0, scale)
    base_swa = a.rope_base_swa or a.rope_base
    theta_scale_swa = f32(np.power(f32(base_swa), f32(-2.0) / f32(a.n_rot)))
    return tuple(f32(v) for v in (theta_scale, a.rope_freq_scale, ext_factor, attn_factor, corr0, corr1, a.norm_eps, kq_scale,
                                  a.embd_scale, q_scale, a.attn_softcap, a.final_softcap, theta_scale_swa,
                                  a.rope_freq_scale_swa))


def _swa_rope(a: ModelArgs) -> bool:
    """Whether sliding-window layers rotate by angles of their own (Gemma 3's local rope base)."""
    if a.n_swa <= 0 or not any(a.is_swa_layer(il) for il in range(a.n_layer)):
        return False
    return (a.rope_base_swa or a.rope_base) != a.rope_base or a.rope_freq_scale_swa != a.rope_freq_scale
