"""Weights packed once at load (Model.load(repack=True), the server's default): the panel
products of kernels/gemm.py from panels kept in memory, for any number of tokens.

What must hold: the products are bit for bit those of the prompt products (quant_gemm),
whatever the token count, row range and compact form (nibbles, f16 scales); so a token gets
the same logits in a call of any size, and the model stays the model (against numpy)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as GQ

from llamatool import host
from llamatool.kernels import gemm
from llamatool.kernels.matmul import PACKED_ARGS, _c_packed
from llamatool.native_forward import panel_packer
from llamatool.model import Model, Part, Weights

from .test_kernels import K_TYPES, QUANT_TYPES, activation, random_blocks, run_matmul
from .test_model import TOKENS, relative_error
from .tiny_llama import TinyLlama, numpy_forward, random_weights, write_gguf

N_TOK = gemm.MIN_TOKENS + 3  # the reference takes the prompt products for all of them
N_ROWS = 2 * gemm.PANEL + 5


def call_packed(kind: int, P: np.ndarray, K: int, r0: int, r1: int, t0: int, t1: int, a, out: np.ndarray, ldo: int,
                amx: bool = False):
    """A C entry point the forward pass calls (matmul.packed_table), through ctypes: by AMX
    tiles if amx (where the kind allows), else by vpdpbusd."""
    argtypes = []
    for k in PACKED_ARGS:
        argtypes += [ctypes.c_int64] if k is int else [ctypes.c_void_p, ctypes.c_int64]
    fn = ctypes.CFUNCTYPE(None, *argtypes)(_c_packed(kind, amx))
    args = []
    for value in (P, 0, K, r0, r1, t0, t1, a.q, a.d, a.s16, a.s32, out, ldo, 0, 0):
        args += [value] if isinstance(value, int) else [value.ctypes.data, value.size]
    fn(*args)


def pack(name: str, raw: np.ndarray, k: int, kind: int) -> np.ndarray | None:
    qtype = int(GQ[name])
    P = np.zeros((raw.shape[0] + gemm.PANEL - 1) // gemm.PANEL * gemm.packed_panel_words(kind, k), np.uint32)
    ok = gemm.pack_matrix(panel_packer(qtype), qtype, raw.reshape(-1), 0, raw.shape[1], k, raw.shape[0], P, kind)
    return P if ok else None


def compact_forms(name: str) -> list[int]:
    """The type's most compact kind and every kind with fewer flags."""
    full = gemm.packed_kind(int(GQ[name]))
    flags = full & (gemm.NIBBLES | gemm.F16_SCALES)
    return sorted({full - f for f in (0, flags & gemm.NIBBLES, flags & gemm.F16_SCALES, flags)})


@pytest.mark.parametrize("name", QUANT_TYPES)
def test_packed_panels_give_the_prompt_products_bits(name):
    """From 1 to N_TOK tokens, any row range (panels cut in the middle too), every compact
    form: each sum is bit for bit the prompt product's, and nothing outside the call's rows
    and tokens is written."""
    rng = np.random.default_rng(31)
    k = 768 if name in K_TYPES else 608
    raw = random_blocks(name, N_ROWS, k, rng)
    x = rng.standard_normal((N_TOK, k)).astype(np.float32)
    a, _ = activation("Q8_K" if name in K_TYPES else "Q8_0", x)
    expected = run_matmul(name, raw, k, x, act=a)
    for kind in compact_forms(name):
        P = pack(name, raw, k, kind)
        assert P is not None, (name, kind)
        for r0, r1, t0, t1 in [(0, N_ROWS, 0, 1), (0, N_ROWS, 0, N_TOK), (5, 30, 2, 5), (17, 18, 4, N_TOK), (32, N_ROWS, 3, 4)]:
            out = np.full((N_TOK, N_ROWS), np.nan, np.float32)
            call_packed(kind, P, k, r0, r1, t0, t1, a, out.reshape(-1), N_ROWS)
            assert np.array_equal(out[t0:t1, r0:r1], expected[t0:t1, r0:r1]), (name, kind, r0, r1, t0, t1)
            out[t0:t1, r0:r1] = np.nan
            assert np.isnan(out).all(), (name, kind, "wrote outside its rows and tokens")


@pytest.mark.skipif(not host.amx_int8(), reason="this CPU (or kernel) has no AMX-INT8 tiles, or LLAMATOOL_NO_AMX / "
                    "LLAMATOOL_NO_NATIVE turns them off: the products run by vpdpbusd only")
@pytest.mark.parametrize("name", [n for n in QUANT_TYPES if any(gemm.amx_kind(k) for k in compact_forms(n))])
def test_amx_tiles_give_the_panel_products_bits(name):
    """Tokens by eights in tile products, the rest by vpdpbusd: every sum bit for bit the
    vpdpbusd product's, for every compact form, token counts around 8 and 16 and row ranges
    that cut panels; nothing outside the call's rows and tokens is written."""
    rng = np.random.default_rng(37)
    k = 768 if name in K_TYPES else 2144  # more than one block of unpacked nibbles (gemm._AMX_CHUNKS)
    n_tok = 2 * gemm.AMX_TOKENS + 3
    raw = random_blocks(name, N_ROWS, k, rng)
    x = rng.standard_normal((n_tok, k)).astype(np.float32)
    a, _ = activation("Q8_K" if name in K_TYPES else "Q8_0", x)
    for kind in [k_ for k_ in compact_forms(name) if gemm.amx_kind(k_)]:
        P = pack(name, raw, k, kind)
        for r0, r1, t0, t1 in [(0, N_ROWS, 0, 8), (0, N_ROWS, 0, n_tok), (5, 30, 1, 17), (17, 18, 3, 11), (32, N_ROWS, 2, 19)]:
            expected = np.full((n_tok, N_ROWS), np.nan, np.float32)
            call_packed(kind, P, k, r0, r1, t0, t1, a, expected.reshape(-1), N_ROWS)
            out = np.full((n_tok, N_ROWS), np.nan, np.float32)
            call_packed(kind, P, k, r0, r1, t0, t1, a, out.reshape(-1), N_ROWS, amx=True)
            assert np.array_equal(out.view(np.uint32), expected.view(np.uint32)), (name, kind, r0, r1, t0, t1)


def test_compact_forms_are_smaller():
    """Q4_0 keeps its file size (nibbles, f16 scale and min); Q8_0 and Q4_K pay their mins."""
    sizes = {name: gemm.packed_panel_words(gemm.packed_kind(int(GQ[name])), 256) * 4 / (16 * 256)
             for name in ("Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K")}
    assert sizes == {"Q4_0": 0.625, "Q4_1": 0.625, "Q8_0": 1.125, "Q4_K": 0.75, "Q6_K": 1.5}


def test_scales_beyond_f16_keep_float32():
    """A Q8_0 scale whose min (-128 d) overflows f16 cannot be kept as f16: pack_matrix says
    so, and the float32 form still gives the prompt products' bits."""
    rng = np.random.default_rng(32)
    k = 256
    raw = random_blocks("Q8_0", N_ROWS, k, rng)
    raw.reshape(N_ROWS, -1, 34)[3, 2, 0:2] = np.array([60000], np.float16).view(np.uint8)
    x = rng.standard_normal((N_TOK, k)).astype(np.float32)
    a, _ = activation("Q8_0", x)
    kind = gemm.packed_kind(int(GQ["Q8_0"]))
    assert kind & gemm.F16_SCALES and pack("Q8_0", raw, k, kind) is None
    P = pack("Q8_0", raw, k, kind - gemm.F16_SCALES)
    out = np.full((N_TOK, N_ROWS), np.nan, np.float32)
    call_packed(kind - gemm.F16_SCALES, P, k, 0, N_ROWS, 0, N_TOK, a, out.reshape(-1), N_ROWS)
    assert np.array_equal(out, run_matmul("Q8_0", raw, k, x, act=a))


# --- the model -----------------------------------------------------------------------------------

# one type per packed form: nibbles + f16 (Q4_0, Q4_1 with f16 block sums), bytes + f16 (Q8_0),
# nibbles (Q4_K), 16-weight halves as bytes (Q6_K) and as nibbles (Q2_K), bytes (IQ4_XS)
MODEL_TYPES = ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K", "Q2_K", "IQ4_XS"]
PROMPTS = [[256, 72, 101, 108, 108, 111], [256, 84, 104, 101, 32, 115, 107, 121, 32, 105, 115], [256, 33]]


def tiny(tmp_path, qtype: str, **load):
    spec = TinyLlama()
    written = write_gguf(tmp_path / f"tiny-{qtype}.gguf", spec, random_weights(spec), qtype)
    return spec, written, Model.load(written.path, n_ctx=256, n_threads=2, repack=True, **load)


@pytest.mark.parametrize("qtype", MODEL_TYPES)
def test_repacked_model_is_the_model(tmp_path, qtype):
    """Against numpy with ggml's roundings, as test_model checks the unpacked file; and
    every matrix is packed, in its most compact form."""
    spec, written, model = tiny(tmp_path, qtype)
    w = model.weights
    packed = {w.names[i] for i in range(len(w.names)) if w.tensors[i, 5] >= 0}
    output = "output.weight" if "output.weight" in w.names else "token_embd.weight"  # tied: the embedding
    assert packed == {n for n in w.names if n.startswith("blk.") and n.endswith(".weight") and "norm" not in n} | {output}
    assert {int(k) for k in w.tensors[w.tensors[:, 5] >= 0, 6]} == {gemm.packed_kind(int(GQ[qtype]))}
    logits = model.eval(TOKENS, all_logits=True)
    expected = numpy_forward(spec, written.weights, TOKENS, ggml_types=written.types)
    assert relative_error(logits, expected) < 3e-2
    assert (logits.argmax(1) == expected.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("qtype", MODEL_TYPES)
def test_a_token_gets_the_same_bits_in_any_call(tmp_path, qtype):
    """Repacked, there is no one-token path: a prompt read at once, token by token, or in
    pieces beside other sequences' decode steps gives the same logits, bit for bit."""
    _, _, model = tiny(tmp_path, qtype)
    whole = model.eval(PROMPTS[1], all_logits=True)
    model.reset()
    one_by_one = np.stack([model.eval([t]) for t in PROMPTS[1]])
    assert np.array_equal(whole, one_by_one)
    pool = model.new_caches(3)
    alone = []
    for i, prompt in enumerate(PROMPTS):
        out = [model.eval_many(pool, [Part(pool.states[i], prompt)])[0].copy()]
        for _ in range(4):
            out.append(model.eval_many(pool, [Part(pool.states[i], [int(out[-1].argmax())])])[0].copy())
        alone.append(out)
    assert np.array_equal(alone[1][0], whole[-1])
    for state in pool.states:
        state.truncate(0)
    together = [[] for _ in PROMPTS]
    for step in range(5):
        parts = [Part(pool.states[i], PROMPTS[i] if step == 0 else [int(together[i][-1].argmax())]) for i in range(3)]
        for i, logits in enumerate(model.eval_many(pool, parts)):
            together[i].append(logits.copy())
    for i in range(3):
        for a, b in zip(alone[i], together[i]):
            assert np.array_equal(a, b), (qtype, i)


def mapped_kib(path) -> int:
    """Resident KiB of this process's mappings of the file (/proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if not line[0].isupper() or line.split()[0].count("-") == 1:  # a mapping's first line
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc/self/smaps to see resident pages")
def test_the_file_is_let_go(tmp_path):
    """The packed panels replace the file's bytes in memory: what else the forward pass
    reads is copied, and no page of the tensor data stays mapped (only the GGUF reader's
    metadata), so memory holds the model about once."""
    spec = TinyLlama(n_embd=512, n_ff=2048, vocab=320)
    written = write_gguf(tmp_path / "tiny.gguf", spec, random_weights(spec), "Q8_0")
    model = Model.load(written.path, n_ctx=256, n_threads=1, repack=True)
    logits = model.eval(TOKENS)
    assert mapped_kib(written.path) * 1024 <= model.reader.data_offset + 64 * 1024
    w = model.weights
    assert w.data.nbytes < written.path.stat().st_size - w.packed.nbytes // 2
    plain = Model.load(written.path, n_ctx=256, n_threads=1)
    assert relative_error(logits, plain.eval(TOKENS)) < 1e-2
    # the copy is laid out as the mapped file (read-only): the same saved forward pass serves both
    assert not w.data.flags.writeable and model.forward_backend == plain.forward_backend


def test_a_matrix_whose_scales_do_not_fit_f16_is_packed_with_float32_ones(tmp_path, monkeypatch):
    """Weights.repack lays the buffer out again for such a matrix, and the logits do not
    change: f16 and float32 forms hold the same values."""
    spec = TinyLlama()
    written = write_gguf(tmp_path / "tiny.gguf", spec, random_weights(spec), "Q8_0")
    reference = Model.load(written.path, n_ctx=256, n_threads=1, repack=True).eval(TOKENS)
    pack = Weights._pack

    def refuse_f16_for_one(self, i, kind, packed, start):
        if self.names[i] == "blk.0.ffn_down.weight" and kind & gemm.F16_SCALES:
            return False
        return pack(self, i, kind, packed, start)

    monkeypatch.setattr(Weights, "_pack", refuse_f16_for_one)
    model = Model.load(written.path, n_ctx=256, n_threads=1, repack=True)
    kinds = dict(zip(model.weights.names, model.weights.tensors[:, 6]))
    assert not kinds["blk.0.ffn_down.weight"] & gemm.F16_SCALES and kinds["blk.0.ffn_up.weight"] & gemm.F16_SCALES
    assert np.array_equal(model.eval(TOKENS), reference)


@pytest.mark.parametrize("qtype, packed", [("Q4_0", True), ("Q8_0", True), ("Q6_K", False), ("IQ4_XS", False)])
def test_repack_none_packs_when_the_panels_are_compact(tmp_path, qtype, packed):
    """Model.load(repack=None), the server's default: packed when the panels take at most
    REPACK_AUTO_GROWTH times the matrices' bytes (a single stream reads them all per token)."""
    from llamatool.model import REPACK_AUTO_GROWTH

    spec = TinyLlama()
    written = write_gguf(tmp_path / f"tiny-{qtype}.gguf", spec, random_weights(spec), qtype)
    model = Model.load(written.path, n_ctx=256, n_threads=1, repack=None)
    assert (model.weights.repack_growth() <= REPACK_AUTO_GROWTH) == packed
    assert model.split_invariant == packed and (model.weights.packed.size > 0) == packed
