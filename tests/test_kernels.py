"""The inference kernels, each against an independent reference.

- quantized blocks: gguf-py's numpy dequantize (bit-exact), and ggml's own CPU dot products
  and activation quantizers through llama-cpp-python's libggml-cpu when installed;
- float math: numpy in float64, with tolerances derived from float32 rounding or from
  the 8-bit activation quantization (see each test).
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from numba.core.errors import TypingError
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as GQ
from gguf.quants import dequantize as gguf_dequantize

from llamatool import host
from llamatool.jit import njit
from llamatool.kernels import simd
from llamatool.kernels.actquant import activation_slot, quantize_q8_0, quantize_q8_k, round_row_bf16, round_row_f16
from llamatool.kernels.matmul import kernel_tables, kernels
from llamatool.kernels.norm import rmsnorm
from llamatool.kernels.rope import rope_angles, rope_rotate
from llamatool.kernels.sync import claim, counters_size, finish, wait
from llamatool.kernels.vmath import geglu, round_half, swiglu, vexp
from tests.conftest import llama_cpp_lib
from tests.lowbit_cases import put_iq1_m_scale

# byte offsets of the f16 scale fields of each block type (ggml-common.h)
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "IQ4_NL": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_XS": [0],
    "TQ1_0": [52], "TQ2_0": [64], "IQ2_XXS": [0], "IQ3_S": [0], "IQ2_XS": [0], "IQ3_XXS": [0], "IQ2_S": [0], "IQ1_S": [0],
    "IQ1_M": [],  # its d: in the scales' top nibbles (put_iq1_m_scale)
}
QUANT_TYPES = list(F16_FIELDS)
K_TYPES = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "TQ1_0", "TQ2_0", "IQ2_XXS", "IQ3_S", "IQ2_XS", "IQ3_XXS", "IQ2_S", "IQ1_S", "IQ1_M"}
FLOAT_TYPES = ["F32", "F16", "BF16"]


def random_blocks(name: str, rows: int, k: int, rng) -> np.ndarray:
    """Random but valid rows of blocks: any bits for the quants and packed scales, finite
    positive f16 super-scales (so every code path of the layout is exercised)."""
    block, size = GGML_QUANT_SIZES[GQ[name]]
    raw = rng.integers(0, 256, (rows, k // block, size), dtype=np.uint8)
    for o in F16_FIELDS[name]:
        scales = rng.uniform(0.001, 0.05, (rows, k // block)).astype(np.float16)
        raw[:, :, o : o + 2] = scales.view(np.uint8).reshape(rows, k // block, 2)
    if name == "IQ1_M":
        put_iq1_m_scale(raw, rng.uniform(0.001, 0.05, (rows, k // block)))
    return raw.reshape(rows, -1)


def float_rows(name: str, w: np.ndarray) -> np.ndarray:
    from llamatool.quants.registry import quantize

    return quantize(name, np.atleast_2d(w)).reshape(w.shape[0] if w.ndim > 1 else 1, -1)


def activation(kind: str, x: np.ndarray):
    """Our activation slot for rows x (n_tok, K), and the values it stands for (float64)."""
    n, k = x.shape
    a = activation_slot(n * k, paired=kind == "Q8_K")
    fn = quantize_q8_k if kind == "Q8_K" else quantize_q8_0
    flat = np.ascontiguousarray(x, np.float32).reshape(-1)
    for t in range(n):
        fn(flat, t * k, k, a, t)
    deq = (a.q[: n * k].reshape(n, k // 32, 32) * a.d.reshape(n, k // 32, 1).astype(np.float64)).reshape(n, k)
    return a, deq


# --- ggml itself, through llama-cpp-python's shared library ------------------------------------


def ggml_cpu():
    ctypes.CDLL(str(llama_cpp_lib("libggml-base")), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(llama_cpp_lib("libggml-cpu")))
    lib.ggml_cpu_init()  # fills the f16 -> f32 table the dot products read scales through
    return lib


def ggml_quantize_activation(lib, kind: str, x: np.ndarray) -> bytes:
    fn = getattr(lib, "quantize_row_q8_K" if kind == "Q8_K" else "quantize_row_q8_0" if kind == "Q8_0" else "quantize_row_q8_1")
    size = {"Q8_0": 34 * x.size // 32, "Q8_1": 36 * x.size // 32, "Q8_K": 292 * x.size // 256}[kind]
    out = ctypes.create_string_buffer(size)
    x = np.ascontiguousarray(x, np.float32)
    fn(x.ctypes.data_as(ctypes.c_void_p), out, ctypes.c_int64(x.size))
    return out.raw


def ggml_vec_dot(lib, name: str, row: np.ndarray, act: bytes | np.ndarray, n: int) -> float:
    vec_dot = {"Q4_1": "q8_1", "Q5_1": "q8_1"}.get(name, "q8_K" if name in K_TYPES else "q8_0")
    ggml_name = name[:-1].lower() + "K" if name.endswith("_K") else name.lower()  # ggml spells q4_K
    fn = getattr(lib, f"ggml_vec_dot_{ggml_name}_{vec_dot}" if name not in FLOAT_TYPES else f"ggml_vec_dot_{ggml_name}")
    out = ctypes.c_float()
    row = np.ascontiguousarray(row)
    buf = act if isinstance(act, bytes) else np.ascontiguousarray(act).tobytes()
    fn(ctypes.c_int(n), ctypes.byref(out), ctypes.c_size_t(0), row.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(0),
       ctypes.c_char_p(buf), ctypes.c_size_t(0), ctypes.c_int(1))
    return out.value


# --- reading blocks ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", QUANT_TYPES + FLOAT_TYPES)
def test_dequantize_row_is_bit_exact_with_gguf_py(name):
    rng = np.random.default_rng(1)
    k = 512
    if name in FLOAT_TYPES:
        raw = float_rows(name, rng.standard_normal((3, k + 16)).astype(np.float32))  # a row that is not whole vectors
        k += 16
    else:
        raw = random_blocks(name, 3, k, rng)
    expected = gguf_dequantize(raw, GQ[name])
    flat = raw.reshape(-1)
    for r in range(3):
        out = np.full(k + 8, np.nan, np.float32)
        kernels(GQ[name])[1](flat, r * raw.shape[1], k, out, 4)
        np.testing.assert_array_equal(out[4 : 4 + k], expected[r])
        assert np.isnan(out[:4]).all() and np.isnan(out[4 + k :]).all()  # writes only its span


# --- activation quantization ------------------------------------------------------------------


def numpy_q8_0(x: np.ndarray):
    """ggml's x86 quantize_row_q8_0: d = f16(amax/127), q = round_half_even(x * 127/amax)."""
    b = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(b).max(1)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    inv = np.where(amax == 0, np.float32(0), np.float32(127) / np.where(amax == 0, 1, amax)).astype(np.float32)
    return np.rint(b * inv[:, None]).astype(np.int16).reshape(-1), d


def numpy_q8_k(x: np.ndarray):
    """ggml's quantize_row_q8_K_ref: iscale = -127/max (max: the value of largest magnitude)."""
    b = x.reshape(-1, 256).astype(np.float32)
    mx = b[np.arange(len(b)), np.abs(b).argmax(1)]
    iscale = np.where(mx == 0, np.float32(0), np.float32(-127) / np.where(mx == 0, 1, mx)).astype(np.float32)
    q = np.minimum(127, np.rint(b * iscale[:, None])).astype(np.int16)
    d = np.where(mx == 0, np.float32(0), np.float32(1) / np.where(iscale == 0, 1, iscale)).astype(np.float32)
    return q.reshape(-1), d


def test_q8_0_activation_follows_ggml_algorithm():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 256)).astype(np.float32) * np.float32(3)
    x[1, :32] = 0  # an all-zero block
    x[2, 32:64] = 0.5  # a constant block: every value rounds to 127
    a, _ = activation("Q8_0", x)
    q_ref, d_ref = numpy_q8_0(x)
    np.testing.assert_array_equal(a.q, q_ref)
    np.testing.assert_array_equal(a.d, d_ref)
    check_sums(a, q_ref)


def check_q8_k_values(a, q_ref):
    """A Q8_K slot's q: the values, then again with every 128 in chunk order 0, 2, 1, 3."""
    n = len(q_ref)
    assert len(a.q) == 2 * n
    np.testing.assert_array_equal(a.q[:n], q_ref)
    np.testing.assert_array_equal(a.q[n:], q_ref.reshape(-1, 4, 32)[:, [0, 2, 1, 3]].reshape(-1))


def check_sums(a, q_ref):
    """The slot's scaled sums: d times the integer sums of each 16 and each 32 values."""
    sums16 = q_ref.reshape(-1, 16).sum(1, dtype=np.int32).astype(np.float32)
    np.testing.assert_array_equal(a.s16, np.repeat(a.d, 2) * sums16)
    np.testing.assert_array_equal(a.s32, a.d * (sums16[0::2] + sums16[1::2]))


def test_q8_k_activation_follows_ggml_algorithm():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    x[0, 5], x[0, 9] = 4.0, -4.0  # a tie of magnitudes: the first one sets the sign
    x[1, 256:] = 0  # an all-zero super-block
    x[2, 7] = -9.0  # negative max
    a, _ = activation("Q8_K", x)
    q_ref, d_ref = numpy_q8_k(x)
    check_q8_k_values(a, q_ref)
    np.testing.assert_array_equal(a.d.reshape(-1, 8), np.repeat(d_ref[:, None], 8, 1))
    check_sums(a, q_ref)


@pytest.mark.parametrize("kind", ["Q8_0", "Q8_K"])
def test_activation_quantization_is_byte_exact_with_ggml(kind):
    lib = ggml_cpu()
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(1024) * rng.uniform(0.1, 10, 1024)).astype(np.float32)
    raw = np.frombuffer(ggml_quantize_activation(lib, kind, x), np.uint8)
    a, _ = activation(kind, x[None, :])
    if kind == "Q8_0":
        blocks = raw.reshape(-1, 34)
        np.testing.assert_array_equal(blocks[:, :2].copy().view(np.float16).astype(np.float32).reshape(-1), a.d)
        np.testing.assert_array_equal(blocks[:, 2:].copy().view(np.int8).reshape(-1), a.q)
    else:
        blocks = raw.reshape(-1, 292)
        np.testing.assert_array_equal(np.repeat(blocks[:, :4].copy().view(np.float32), 8), a.d)
        check_q8_k_values(a, blocks[:, 4:260].copy().view(np.int8).reshape(-1))
        bsums = blocks[:, 260:].copy().view(np.int16).reshape(-1).astype(np.float32)
        np.testing.assert_array_equal(a.s16, np.repeat(a.d, 2) * bsums)


def test_float_activation_rounding():
    from llamatool.quants.registry import dequantize, quantize

    rng = np.random.default_rng(5)
    x = (rng.standard_normal(300) * 10.0 ** rng.uniform(-6, 5, 300)).astype(np.float32)
    x[:4] = [65504.0, 65520.0, 1e-8, -0.0]  # largest half, rounds to inf, subnormal, signed zero
    out = np.zeros_like(x)
    round_row_f16(x, 0, x.size, out, 0)
    np.testing.assert_array_equal(out, _as_half(x))
    round_row_bf16(x, 0, x.size, out, 0)
    np.testing.assert_array_equal(out, dequantize("BF16", quantize("BF16", x)))


# --- matrix products ------------------------------------------------------------------------------


def run_matmul(name: str, raw: np.ndarray, k: int, x: np.ndarray, act=None, r0=0, r1=None, t0=0, t1=None) -> np.ndarray:
    rows = raw.shape[0]
    r1 = rows if r1 is None else r1
    t1 = x.shape[0] if t1 is None else t1
    # the kernel does not check its ranges (a token past x would write past out)
    assert 0 <= r0 <= r1 <= rows and 0 <= t0 <= t1 <= x.shape[0], "rows or tokens outside the operands"
    a = act if act is not None else activation("Q8_K" if name in K_TYPES else "Q8_0", x)[0]
    out = np.full(x.shape[0] * rows, np.nan, np.float32)
    kernels(GQ[name])[0](raw.reshape(-1), 0, raw.shape[1], k, r0, r1, t0, t1,
                         np.ascontiguousarray(x, np.float32).reshape(-1), a.q, a.d, a.s16, a.s32, out, rows, 0, 0)
    return out.reshape(x.shape[0], rows)


@pytest.mark.parametrize("name", QUANT_TYPES)
def test_quantized_matmul_is_the_dot_product_of_both_quantized_operands(name):
    """Against float64 products of the dequantized weights and the dequantized activation:
    only float32 rounding separates them (relative 1e-5 of the row's sum of |terms|)."""
    rng = np.random.default_rng(6)
    # 7 tokens: a small batch; 17 chunks: pairs plus an odd one
    k, rows, n_tok = (512 if name in K_TYPES else 544), 21, 7
    raw = random_blocks(name, rows, k, rng)
    w = gguf_dequantize(raw, GQ[name]).astype(np.float64)
    x = rng.standard_normal((n_tok, k)).astype(np.float32)
    _, xq = activation("Q8_K" if name in K_TYPES else "Q8_0", x)
    out = run_matmul(name, raw, k, x)
    scale = np.abs(xq) @ np.abs(w).T
    assert np.all(np.abs(out - xq @ w.T) <= 1e-5 * scale + 1e-7)


@pytest.mark.parametrize("name", QUANT_TYPES)
def test_quantized_matmul_error_is_bounded_by_the_activation_quantization(name):
    """Against the unquantized activation: |error| <= sum_i |w_i| * |x_i - xq_i| (the 8-bit
    rounding of x, at most half a step d per value) plus float32 rounding."""
    rng = np.random.default_rng(7)
    k, rows = 768, 10
    raw = random_blocks(name, rows, k, rng) if name not in K_TYPES else random_blocks(name, rows, 512, rng)
    k = 512 if name in K_TYPES else k
    w = gguf_dequantize(raw, GQ[name]).astype(np.float64)
    x = rng.standard_normal((2, k)).astype(np.float32)
    _, xq = activation("Q8_K" if name in K_TYPES else "Q8_0", x)
    bound = np.abs(x - xq) @ np.abs(w).T + 1e-5 * (np.abs(x) @ np.abs(w).T)
    assert np.all(np.abs(run_matmul(name, raw, k, x) - x.astype(np.float64) @ w.T) <= bound)


@pytest.mark.parametrize("name", QUANT_TYPES + FLOAT_TYPES)
def test_matmul_matches_ggml_vec_dot(name):
    """Same blocks, same 8-bit activation as ggml quantizes it: ggml's own vec_dot agrees to
    float32 summation-order rounding."""
    lib = ggml_cpu()
    rng = np.random.default_rng(8)
    k, rows = 512, 6
    x = rng.standard_normal((1, k)).astype(np.float32)
    if name in FLOAT_TYPES:
        raw = float_rows(name, rng.standard_normal((rows, k)).astype(np.float32) / 10)
        xr = x.copy()
        if name == "F16":
            round_row_f16(x.reshape(-1), 0, k, xr.reshape(-1), 0)
            act = x.astype(np.float16)
        elif name == "BF16":
            round_row_bf16(x.reshape(-1), 0, k, xr.reshape(-1), 0)
            act = float_rows("BF16", x).reshape(-1)
        else:
            act = x
        ours = run_matmul(name, raw, k, xr)[0]
    else:
        raw = random_blocks(name, rows, k, rng)
        kind = "Q8_K" if name in K_TYPES else ("Q8_1" if name in ("Q4_1", "Q5_1") else "Q8_0")
        act = ggml_quantize_activation(lib, kind, x.reshape(-1))
        ours = run_matmul(name, raw, k, x)[0]
    ref = np.array([ggml_vec_dot(lib, name, raw[r], act, k) for r in range(rows)])
    w = gguf_dequantize(raw, GQ[name]).astype(np.float64)
    scale = np.abs(w) @ np.abs(x.reshape(-1)).astype(np.float64)
    # Q4_1/Q5_1: ggml stores the block sum s as f16 (relative 2^-11 of the offset term)
    tol = 2e-3 if name in ("Q4_1", "Q5_1") else 1e-5
    assert np.all(np.abs(ours - ref) <= tol * scale + 1e-6), (ours, ref)


#: byte ranges of the packed sub-block scales of the K-quants decoded by whole super-blocks
SCALE_BYTES = {"Q2_K": (0, 16), "Q3_K": (96, 108), "Q4_K": (4, 16), "Q5_K": (4, 16), "Q6_K": (192, 208),
               "IQ4_XS": (2, 8)}


@pytest.mark.parametrize("name", list(SCALE_BYTES))
def test_superblock_decode_on_long_rows_and_extreme_scales(name):
    """One token (the super-block path) over rows of 8 super-blocks whose packed scale bytes
    are all ones (Q4_K/Q5_K: every 6-bit scale and min 63; Q3_K: every scale 31; Q6_K: -1),
    0x80 (Q6_K: -128), 0x7F (Q6_K: 127), zero, or random: the dot product of both quantized
    operands to float32 rounding, and bit for bit the numbers of a small batch of four tokens."""
    rng = np.random.default_rng(12)
    k, rows = 2048, 6
    raw = random_blocks(name, rows, k, rng).reshape(rows, k // 256, -1)
    lo, hi = SCALE_BYTES[name]
    for r, byte in enumerate((0xFF, 0x80, 0x7F, 0x00)):
        raw[r, :, lo:hi] = byte
    raw[4, :, lo:hi:3] = 0xFF  # a mix
    raw = raw.reshape(rows, -1)
    w = gguf_dequantize(raw, GQ[name]).astype(np.float64)
    x = (rng.standard_normal((5, k)) * rng.uniform(0.01, 100, (5, 1))).astype(np.float32)
    _, xq = activation("Q8_K", x)
    scale = np.abs(xq) @ np.abs(w).T
    tiled = run_matmul(name, raw, k, x, t1=4)
    for t in range(5):
        single = run_matmul(name, raw, k, x, t0=t, t1=t + 1)[t]
        assert np.all(np.abs(single - xq[t] @ w.T) <= 1e-5 * scale[t] + 1e-7), t
        if t < 4:
            np.testing.assert_array_equal(single, tiled[t])


@pytest.mark.parametrize("name", ["Q4_0", "Q6_K", "F16"])
def test_matmul_row_and_token_ranges(name):
    """A chunk computes exactly its rows and tokens, whatever the tiling."""
    rng = np.random.default_rng(9)
    k, rows, n_tok = 256, 9, 6
    raw = random_blocks(name, rows, k, rng) if name != "F16" else float_rows(name, rng.standard_normal((rows, k)).astype(np.float32))
    x = rng.standard_normal((n_tok, k)).astype(np.float32)
    if name == "F16":
        round_row_f16(x.reshape(-1).copy(), 0, x.size, x.reshape(-1), 0)
    full = run_matmul(name, raw, k, x)
    part = run_matmul(name, raw, k, x, r0=2, r1=7, t0=1, t1=6)
    np.testing.assert_array_equal(part[1:6, 2:7], full[1:6, 2:7])
    assert np.isnan(part[0]).all() and np.isnan(part[:, :2]).all() and np.isnan(part[:, 7:]).all()
    for t in range(n_tok):  # one token at a time gives the numbers of a small batch
        np.testing.assert_array_equal(run_matmul(name, raw, k, x, t0=t, t1=t + 1)[t], full[t])


def decode_pass(rows_fn, qtype: int):
    """The one-token decode of a 32-weight type by rows_fn (matmul.block32_rows_by_four or
    matmul.block32_rows_singly), compiled here whichever of them this host's kernels use."""

    @njit(_nrt=False)
    def run(raw, row_bytes, k, r0, r1, q, d, s16, s32, out):
        rows_fn(qtype, raw, 0, row_bytes, k // 32, r0, r1, q, d, s16, s32, 0, k, out, 0)

    return run


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"])
def test_both_decode_passes_give_the_same_bits(name):
    """Four rows per pass (Intel hosts, short rows) and one row per pass (one forward stream:
    AMD hosts, and rows of 2048 weights or more anywhere; see matmul.STREAM_BY_BYTES) give
    every row the same bits, on any host, and they are what this host's rows() kernel gives."""
    from llamatool.kernels import matmul

    by_four = decode_pass(matmul.block32_rows_by_four, int(GQ[name]))
    singly = decode_pass(matmul.block32_rows_singly, int(GQ[name]))
    rng = np.random.default_rng(37)
    for k in (512, 576, 544, 96, 32, 2048, 2080):
        rows = 11
        raw = random_blocks(name, rows, k, rng)
        x = rng.standard_normal((1, k)).astype(np.float32)
        a, _ = activation("Q8_0", x)
        host_kernel = run_matmul(name, raw, k, x, act=a)[0]
        for r0, r1 in ((0, rows), (3, 10), (5, 6)):
            four, one = np.full(rows, np.nan, np.float32), np.full(rows, np.nan, np.float32)
            by_four(raw.reshape(-1), raw.shape[1], k, r0, r1, a.q, a.d, a.s16, a.s32, four)
            singly(raw.reshape(-1), raw.shape[1], k, r0, r1, a.q, a.d, a.s16, a.s32, one)
            np.testing.assert_array_equal(four, one)
            np.testing.assert_array_equal(one[r0:r1], host_kernel[r0:r1])
            assert np.isnan(one[:r0]).all() and np.isnan(one[r1:]).all()


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"])
def test_decode_by_four_rows_gives_the_numbers_of_one_row(name):
    """One token of a 32-weight type is read four rows per pass (matmul._rows4_block32): a
    row gives the same bits whether it is in a pass of four, among the rows left over, or
    alone, for rows of whole groups of 8 blocks, with a partial group, and with an odd last
    block; and the products are those of both quantized operands."""
    rng = np.random.default_rng(31)
    for k in (512, 576, 544, 96, 32, 2048, 2080):
        rows = 11
        raw = random_blocks(name, rows, k, rng)
        w = gguf_dequantize(raw, GQ[name]).astype(np.float64)
        x = rng.standard_normal((1, k)).astype(np.float32)
        a, xq = activation("Q8_0", x)
        full = run_matmul(name, raw, k, x, act=a)[0]
        assert np.all(np.abs(full - xq[0] @ w.T) <= 1e-5 * (np.abs(xq[0]) @ np.abs(w).T) + 1e-7), k
        for r in range(rows):
            assert run_matmul(name, raw, k, x, act=a, r0=r, r1=r + 1)[0, r] == full[r], (k, r)
        part = run_matmul(name, raw, k, x, act=a, r0=3, r1=10)[0]
        np.testing.assert_array_equal(part[3:10], full[3:10])
        assert np.isnan(part[:3]).all() and np.isnan(part[10:]).all()

@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"])
def test_small_batches_give_every_token_its_one_token_bits(name):
    """A call of 2 .. gemm.MIN_TOKENS - 1 tokens of a 32-weight type (a server's decode step:
    matmul._small_batch decodes four rows once for all the tokens) gives each token, bit for
    bit, what a call of that token alone gives, whatever its place in the call and whichever
    rows (passes of four and rows left over), for rows of whole groups, with a partial group
    and with an odd last block. What batch invariance (kernels/forward.py) rests on."""
    from llamatool.kernels.gemm import MIN_TOKENS

    rng = np.random.default_rng(37)
    for k in (512, 576, 544, 96):
        rows = 11
        raw = random_blocks(name, rows, k, rng)
        x = rng.standard_normal((MIN_TOKENS - 1, k)).astype(np.float32)
        a = activation("Q8_0", x)[0]
        alone = np.stack([run_matmul(name, raw, k, x, act=a, t0=t, t1=t + 1)[t] for t in range(len(x))])
        n = len(x)
        for t0, t1 in ((0, 2), (1, 5), (0, n), (3, n)):
            np.testing.assert_array_equal(run_matmul(name, raw, k, x, act=a, t0=t0, t1=t1)[t0:t1], alone[t0:t1])
        # tokens and rows inside the call, with tokens and rows outside it on both sides
        part = run_matmul(name, raw, k, x, act=a, r0=2, r1=9, t0=1, t1=n - 1)
        np.testing.assert_array_equal(part[1 : n - 1, 2:9], alone[1 : n - 1, 2:9])
        assert np.isnan(part[:, :2]).all() and np.isnan(part[:, 9:]).all()
        assert np.isnan(part[:1]).all() and np.isnan(part[n - 1 :]).all()


def test_kernel_tables_hold_entry_points_of_the_requested_types_only():
    rows, dequant = kernel_tables([GQ.Q4_1, GQ.Q8_0])
    assert rows[GQ.Q4_1] and rows[GQ.Q8_0] and dequant[GQ.Q4_1] and dequant[GQ.Q8_0]
    assert rows[GQ.Q4_0] == 0 and rows[GQ.F16] == 0
    again, _ = kernel_tables([GQ.Q8_0])
    assert again[GQ.Q8_0] == rows[GQ.Q8_0]  # built once per process


# --- norm, rope, exp (attention: test_attention.py) ---------------------------------------------------------------


def test_rmsnorm_matches_float64():
    rng = np.random.default_rng(10)
    k = 200  # not a multiple of 16: the scalar tail too
    x = (rng.standard_normal(k) * 5).astype(np.float32)
    weight = rng.uniform(0.5, 1.5, k).astype(np.float32)
    out = np.zeros(k, np.float32)
    rmsnorm(x, 0, k, np.float32(1e-5), weight.view(np.uint8), 0, out, 0)
    x64 = x.astype(np.float64)
    expected = x64 / np.sqrt((x64 * x64).mean() + 1e-5) * weight
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def ggml_rope_angles(pos, n_rot, base, freq_scale=1.0, factors=None):
    """ggml_rope_cache_init without YaRN, in float32 as ggml computes it."""
    f32 = np.float32
    theta_scale = f32(np.power(f32(base), f32(-2.0) / f32(n_rot)))
    theta = f32(pos)
    out = []
    for i in range(n_rot // 2):
        ff = f32(1) if factors is None else factors[i]
        angle = f32(freq_scale) * (theta / ff)
        out += [np.cos(angle), np.sin(angle)]
        theta = f32(theta * theta_scale)
    return np.array(out, np.float32)


@pytest.mark.parametrize("freq_scale,with_factors", [(1.0, False), (0.25, False), (1.0, True)])
def test_rope_angles_follow_ggml(freq_scale, with_factors):
    n_rot, base = 64, 500000.0
    factors = np.linspace(1, 8, n_rot // 2).astype(np.float32) if with_factors else np.ones(n_rot // 2, np.float32)
    theta_scale = np.float32(np.power(np.float32(base), np.float32(-2.0) / np.float32(n_rot)))
    for pos in (0, 1, 17, 4095):
        out = np.zeros(n_rot, np.float32)
        rope_angles(pos, n_rot, theta_scale, np.float32(freq_scale), np.float32(0), np.float32(1), np.float32(0),
                    np.float32(0), factors, out, 0)
        expected = ggml_rope_angles(pos, n_rot, base, freq_scale, factors if with_factors else None)
        np.testing.assert_allclose(out, expected, rtol=0, atol=2e-7)
        # and the exact angles pos * base^(-2i/n) are within float32 accumulation of them
        exact = pos * freq_scale / factors * base ** (-np.arange(0, n_rot, 2) / n_rot)
        np.testing.assert_allclose(out[0::2], np.cos(exact), atol=1e-6 * max(pos, 1))


def test_rope_rotates_adjacent_pairs():
    rng = np.random.default_rng(11)
    angles = rng.uniform(-3, 3, 16)
    tab = np.empty(32, np.float32)
    tab[0::2], tab[1::2] = np.cos(angles), np.sin(angles)
    v = rng.standard_normal(40).astype(np.float32)
    out = v.copy()
    rope_rotate(out, 4, 32, tab, 0)
    pairs = v[4:36].reshape(16, 2).astype(np.float64)
    c, s = np.cos(angles), np.sin(angles)
    expected = np.stack([pairs[:, 0] * c - pairs[:, 1] * s, pairs[:, 0] * s + pairs[:, 1] * c], 1).reshape(-1)
    np.testing.assert_allclose(out[4:36], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[:4], v[:4])
    np.testing.assert_array_equal(out[36:], v[36:])


def test_vexp_and_swiglu():
    @njit(cache=True)
    def exp_all(x, out):
        for i in range(0, x.size, 16):
            simd.store(out, i, vexp(simd.load(x, i, 16)))

    x = np.concatenate([np.linspace(-87, 88, 4000), np.array([-1e4, -200.0, 0.0, 1e-8, 100.0, 1e4]), np.zeros(10)])
    x = x.astype(np.float32)
    out = np.zeros_like(x)
    exp_all(x, out)
    # vexp clamps its input to float32 bounds (exp underflows / overflows past them)
    expected = np.exp(np.clip(x, np.float32(-87.3365447505531), np.float32(88.3762626647949)).astype(np.float64))
    np.testing.assert_allclose(out, expected, rtol=4e-7)  # a few ulp (Cephes expf)
    gate = np.linspace(-20, 20, 37).astype(np.float32)
    up = np.linspace(2, -2, 37).astype(np.float32)
    h = np.zeros(37, np.float32)
    swiglu(gate, up, 0, 37, h)
    g = gate.astype(np.float64)
    np.testing.assert_allclose(h, g / (1 + np.exp(-g)) * up, rtol=1e-6, atol=1e-7)


def test_geglu_reads_ggmls_table_of_halves():
    """ggml_vec_geglu_f32 (GGML_GELU_FP16): gelu(x) from a table indexed by x as a half and
    holding halves; 0 at or below -10, x * g at or above 10. The table is built here as
    ggml_cpu_init builds it, with numpy's float16 for the roundings."""
    rng = np.random.default_rng(4)
    gate = np.concatenate([rng.standard_normal(5000) * 4, [-10, -10.001, -9.999, 10, 9.999, 10.5, 0, 6e-5, 65000 / 1e4]])
    gate = gate.astype(np.float32)
    up = rng.standard_normal(gate.size).astype(np.float32)
    out = np.zeros_like(gate)
    geglu(gate, up, 0, gate.size, out)
    half = gate.astype(np.float16).astype(np.float32)
    c, a = np.float32(0.79788456080286535587989211986876), np.float32(0.044715)
    table = (np.float32(0.5) * half * (np.float32(1) + np.tanh(c * half * (np.float32(1) + a * half * half)))).astype(np.float16)
    expected = np.where(gate <= -10, np.float32(0), np.where(gate >= 10, gate * up, table.astype(np.float32) * up))
    # numpy's float32 tanh and libm's tanhf (ggml's, and the kernel's) may differ by an ulp:
    # that moves a half by one where 1 + tanh cancels (x below about -3, gelu ~ 1e-4 and less)
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=2e-6 * np.abs(up).max())
    assert (out != expected)[np.abs(gate) < 2].mean() < 0.01
    # and it is not the exact GELU: the table's roundings show
    exact = 0.5 * gate * (1 + np.tanh(c * gate * (1 + a * gate * gate))) * up
    assert (out != exact.astype(np.float32)).mean() > 0.5

    @njit(cache=True)
    def halves(x, out):  # round_half is inlined into kernels: it has no Python entry
        for i in range(x.size):
            out[i] = round_half(x[i])

    rounded = np.zeros(500, np.float32)
    halves(gate[:500], rounded)
    np.testing.assert_array_equal(rounded, gate[:500].astype(np.float16).astype(np.float32))


# --- SIMD primitives --------------------------------------------------------------------------------


@njit(cache=True)
def _halves_to_f32(raw, out):
    for i in range(0, raw.size // 2, 16):
        simd.store(out, i, simd.load_f16(raw, 2 * i, 16))


@njit(cache=True)
def _round_to_f16(x, out):
    for i in range(0, x.size, 16):
        simd.store(out, i, simd.round_f16(simd.load(x, i, 16)))


def _as_half(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # numpy warns when it rounds to infinity, as it should
        return x.astype(np.float16).astype(np.float32)


def _every_half() -> np.ndarray:
    return np.arange(65536, dtype=np.uint32).astype(np.uint16)


def _awkward_floats() -> np.ndarray:
    rng = np.random.default_rng(13)
    x = (rng.standard_normal(8192) * 10.0 ** rng.uniform(-9, 6, 8192)).astype(np.float32)
    halves = _every_half().view(np.float16).astype(np.float64)
    halves = halves[np.isfinite(halves)]
    mid = ((halves[:-1] + halves[1:]) / 2).astype(np.float32)  # ties between neighbouring halves
    x = np.concatenate([x, mid[::7], [65504, 65519.99, 65520, 1e9, np.inf, -np.inf, np.nan, 0.0, -0.0]])
    return x[: x.size - x.size % 16].astype(np.float32)


def test_half_conversions_are_exact():
    h = _every_half()
    out = np.zeros(65536, np.float32)
    _halves_to_f32(h.view(np.uint8), out)
    np.testing.assert_array_equal(out, h.view(np.float16).astype(np.float32))
    x = _awkward_floats()
    r = np.zeros_like(x)
    _round_to_f16(x, r)
    np.testing.assert_array_equal(r, _as_half(x))


def test_portable_half_conversions_without_f16c(monkeypatch):
    """The integer fallback used on x86 CPUs without F16C gives the same bits."""
    monkeypatch.setattr(simd, "_NATIVE_HALF", False)

    @njit(cache=False)
    def to_f32(raw, out):
        for i in range(0, raw.size // 2, 16):
            simd.store(out, i, simd.load_f16(raw, 2 * i, 16))

    @njit(cache=False)
    def round_half(x, out):
        for i in range(0, x.size, 16):
            simd.store(out, i, simd.round_f16(simd.load(x, i, 16)))

    h = _every_half()
    out = np.zeros(65536, np.float32)
    to_f32(h.view(np.uint8), out)
    np.testing.assert_array_equal(out, h.view(np.float16).astype(np.float32))
    x = _awkward_floats()
    r = np.zeros_like(x)
    round_half(x, r)
    np.testing.assert_array_equal(r, _as_half(x))


def test_simd_integer_primitives():
    @njit(cache=True)
    def probe(a, b, table, idx, bits, out_madd, out_look, out_mask):
        acc = simd.load(out_madd, 0, 16)
        simd.store(out_madd, 0, simd.dot4_u8i8(acc, simd.load(a, 0, 64), simd.load(b, 0, 64)))
        simd.store(out_look, 0, simd.lookup16(simd.load(table, 0, 16), simd.load(idx, 0, 32)))
        simd.store(out_mask, 0, simd.bit_mask(bits, 32, 3))

    rng = np.random.default_rng(14)
    a = rng.integers(0, 256, 64).astype(np.uint8)
    b = rng.integers(-128, 128, 64).astype(np.int8)
    table = rng.integers(-128, 127, 16).astype(np.int8)
    idx = rng.integers(0, 16, 32).astype(np.uint8)
    bits = np.uint64(0xDEADBEEF12345678)
    out_madd, out_look, out_mask = np.arange(16, dtype=np.int32), np.zeros(32, np.int8), np.zeros(32, np.uint8)
    probe(a, b, table, idx, bits, out_madd, out_look, out_mask)
    products = a.astype(np.int32) * b
    np.testing.assert_array_equal(out_madd, np.arange(16) + products.reshape(16, 4).sum(1))
    np.testing.assert_array_equal(out_look, table[idx])
    np.testing.assert_array_equal(out_mask, (bits >> (np.uint64(3) + np.arange(32, dtype=np.uint64))) & np.uint64(1))


def test_simd_gather_and_bit_select():
    """gather reads a table at a vector of indices (32- and 64-bit elements, as the IQ grids
    are read); where_bits picks lanes by the bits of an integer (the IQ sign bits)."""
    @njit(cache=True)
    def probe(t32, t64, idx, bits, out32, out64, out_sel):
        i = simd.to_i32(simd.load(idx, 0, 16))
        simd.store(out32, 0, simd.gather(t32, i))
        simd.store(out64, 0, simd.gather(t64, simd.to_i32(simd.load(idx, 16, 8))))
        simd.store(out_sel, 0, simd.where_bits(bits, simd.load(out_sel, 0, 64), simd.load(out_sel, 64, 64)))

    rng = np.random.default_rng(16)
    t32 = rng.integers(0, 2**32, 512, dtype=np.uint64).astype(np.uint32)
    t64 = rng.integers(0, 2**63, 256, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # top and bottom bits used
    idx = rng.integers(0, 256, 24).astype(np.uint8)
    bits = np.uint64(0xDEADBEEF12345678)
    out32, out64 = np.zeros(16, np.uint32), np.zeros(8, np.uint64)
    out_sel = rng.integers(0, 256, 128).astype(np.uint8)
    a, b = out_sel[:64].copy(), out_sel[64:].copy()
    probe(t32, t64, idx, bits, out32, out64, out_sel)
    np.testing.assert_array_equal(out32, t32[idx[:16]])
    np.testing.assert_array_equal(out64, t64[idx[16:]])
    np.testing.assert_array_equal(out_sel[:64], np.where((bits >> np.arange(64, dtype=np.uint64)) & np.uint64(1), a, b))


def test_computed_ksigns_are_ggmls_table():
    """The IQ2_XXS/IQ3_XXS decoders compute ksigns_iq2xs (an index and its parity) instead of
    reading the table: every index in every one of the four 7-bit fields of a sign word."""
    from llamatool.kernels.blocks import _sign_bits
    from llamatool.quants.grids import KSIGNS

    @njit(cache=True)
    def signs(aux, out):
        for i in range(aux.size):
            out[i] = _sign_bits(aux[i])

    i = np.arange(128, dtype=np.uint32)
    aux = (i | (i[::-1] << 7) | (((i * 5) % 128) << 14) | (((i * 37) % 128) << 21) | (np.uint32(0xF) << 28)).astype(np.uint32)
    out = np.zeros(128, np.uint32)
    signs(aux, out)
    expected = [KSIGNS[(aux >> s) & 127].astype(np.uint32) << (8 * k) for k, s in enumerate((0, 7, 14, 21))]
    np.testing.assert_array_equal(out, expected[0] | expected[1] | expected[2] | expected[3])


@pytest.mark.parametrize("avx2", [False, True], ids=["portable-ir", "avx2-maddubs"])
def test_byte_dot_products_without_vnni(monkeypatch, avx2):
    """The lowerings used on CPUs without VNNI (AVX2's vpmaddubsw + vpmaddwd, else portable IR)
    give the same sums as vpdpbusd, at the extremes too (where an int16 product pair would
    saturate): dot4_u8i8 for any bytes, dot4_u7i8 for weights below 128."""
    if avx2 and not host.features().avx2:
        pytest.skip("this CPU has no AVX2")
    monkeypatch.setattr(simd, "_VNNI_512", False)
    monkeypatch.setattr(simd, "_VNNI_256", False)
    monkeypatch.setattr(simd, "_AVX2", avx2)

    @njit(cache=False)
    def dot(a, b, out16, out8, small16):
        simd.store(out16, 0, simd.dot4_u8i8(simd.load(out16, 0, 16), simd.load(a, 0, 64), simd.load(b, 0, 64)))
        simd.store(out8, 0, simd.dot4_u8i8(simd.load(out8, 0, 8), simd.load(a, 0, 32), simd.load(b, 0, 32)))
        simd.store(small16, 0, simd.dot4_u7i8(simd.load(small16, 0, 16), simd.load(a, 0, 64) >> np.uint8(1),
                                              simd.load(b, 0, 64)))

    rng = np.random.default_rng(15)
    for case in range(4):
        a = rng.integers(0, 256, 64).astype(np.uint8)
        b = rng.integers(-128, 128, 64).astype(np.int8)
        if case == 1:
            a[:], b[:] = 255, -128
        elif case == 2:
            a[:], b[:] = 255, 127
        out16, out8, small16 = np.full(16, 7, np.int32), np.full(8, -3, np.int32), np.full(16, 5, np.int32)
        dot(a, b, out16, out8, small16)
        products = a.astype(np.int32) * b
        np.testing.assert_array_equal(out16, 7 + products.reshape(16, 4).sum(1))
        np.testing.assert_array_equal(out8, -3 + products[:32].reshape(8, 4).sum(1))
        np.testing.assert_array_equal(small16, 5 + ((a >> 1).astype(np.int32) * b).reshape(16, 4).sum(1))


@pytest.fixture(params=[True, False], ids=["gfni", "portable-ir"])
def gfni(request, monkeypatch):
    """The byte shifts' two lowerings in turn: vgf2p8affineqb's bit matrices (where the kernels
    would choose them) and the portable word shift."""
    if request.param and not simd._GFNI_512:  # the kernels' own choice, made from host.features()
        pytest.skip("no GFNI with AVX-512 here (not on this CPU, or LLAMATOOL_NO_NATIVE): the portable lowering runs")
    monkeypatch.setattr(simd, "_GFNI_512", request.param)


def test_nibbles_split_by_quarters(gfni):
    """split_nibbles (the 4-bit types' chunk pairs: Q4_0, Q4_1, IQ4_NL, IQ4_XS) keeps the low
    nibbles of the first and third 16 bytes and moves down the high nibbles of the second and
    fourth, with vgf2p8affineqb's bit matrices and with the portable word shift alike."""

    @njit(cache=False)
    def split(v, out):
        simd.store(out, 0, simd.split_nibbles(simd.load(v, 0, 64)))

    v = np.arange(256, dtype=np.uint8)[np.random.default_rng(17).permutation(256)[:64]]
    v[:2], v[16:18] = (0, 255), (255, 0)
    out = np.zeros(64, np.uint8)
    split(v, out)
    high = (np.arange(64) // 16) % 2 == 1
    np.testing.assert_array_equal(out, np.where(high, v >> 4, v & 15))


def test_bits_shifted_by_halves(gfni):
    """shift_bits (the fifth and sixth bits of Q5_K and Q6_K) shifts each byte by one amount in
    the first 32 bytes and another in the last 32, then masks, with vgf2p8affineqb's bit
    matrices and with the portable word shift alike; moves that would need bits of a
    neighbouring byte, or a left and a right shift at once, are refused when compiled."""
    v = np.arange(256, dtype=np.uint8)[np.random.default_rng(18).permutation(256)[:64]]
    v[:2], v[32:34] = (0, 255), (255, 0)
    first_half = np.arange(64) < 32
    for a, b, mask in [(4, 2, 48), (0, -2, 48), (4, 2, 16), (3, 1, 16), (0, -2, 16), (-1, -3, 16), (0, -4, 15)]:
        @njit(cache=False)
        def shifted(v, out):
            simd.store(out, 0, simd.shift_bits(simd.load(v, 0, 64), a, b, mask))

        out = np.zeros(64, np.uint8)
        shifted(v, out)
        by = np.where(first_half, a, b)
        expected = np.where(by >= 0, v.astype(np.int32) << np.maximum(by, 0), v >> np.maximum(-by, 0)) & mask
        np.testing.assert_array_equal(out, expected.astype(np.uint8), err_msg=str((a, b, mask)))
    for a, b, mask in [(4, 2, 0xFF), (1, -1, 16)]:
        @njit(cache=False)
        def refused(v, out):
            simd.store(out, 0, simd.shift_bits(simd.load(v, 0, 64), a, b, mask))

        with pytest.raises(TypingError):
            refused(v, np.zeros(64, np.uint8))


@pytest.mark.parametrize("lowering", ["host", "avx2", "portable-ir"])
def test_scaled_byte_pairs_are_exact(monkeypatch, lowering):
    """scaled_dot4 (the K-quants' super-block products: byte pairs summed in int16, times an
    int16 scale each, summed in int32) gives the exact sums with every lowering: vpmaddubsw +
    vpdpwssd, AVX2's 32-byte halves, portable IR; at the extremes of its operands too
    (weights 127, activations -128 and 127, scales -32768 and 32767)."""
    if lowering == "avx2" and not host.features().avx2:
        pytest.skip("this CPU has no AVX2")
    if lowering != "host":
        monkeypatch.setattr(simd, "_VNNI_512", False)
        monkeypatch.setattr(simd, "_AVX2", lowering == "avx2")

    @njit(cache=False)
    def scaled(w, x, k, out):
        simd.store(out, 0, simd.scaled_dot4(simd.load(out, 0, 16), simd.load(w, 0, 64), simd.load(x, 0, 64),
                                            simd.load(k, 0, 32)))

    rng = np.random.default_rng(16)
    for case in range(4):
        w = rng.integers(0, 128, 64).astype(np.uint8)
        x = rng.integers(-128, 128, 64).astype(np.int8)
        k = rng.integers(-(2**15), 2**15, 32).astype(np.int16)
        if case == 1:
            w[:], x[:], k[:] = 127, -128, 2**15 - 1
        elif case == 2:
            w[:], x[:], k[:] = 127, 127, -(2**15)
        out = np.full(16, -9, np.int32)
        scaled(w, x, k, out)
        pairs = (w.astype(np.int64) * x).reshape(32, 2).sum(1)
        expected = -9 + (pairs * k).reshape(16, 2).sum(1)
        np.testing.assert_array_equal(out, expected.astype(np.int32))  # wraps as int32 does, at the extremes


# --- threads ---------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _claim_all(counters, hits, n_phases, n_chunks):
    for p in range(n_phases):
        done = 0
        while True:
            c = claim(counters, p)
            if c >= n_chunks:
                break
            hits[p, c] += 1
            done += 1
        finish(counters, p, done)
        wait(counters, p, n_chunks)
        # every chunk of this phase is done before anyone starts the next one
        for c in range(n_chunks):
            if hits[p, c] != 1:
                hits[p, c] = -100


def test_every_chunk_runs_exactly_once_across_threads():
    import threading

    n_phases, n_chunks = 200, 7
    counters = np.zeros(counters_size(n_phases), np.int64)
    hits = np.zeros((n_phases, n_chunks), np.int64)
    _claim_all(np.zeros(counters_size(1), np.int64), np.zeros((1, 1), np.int64), 1, 1)  # compile first
    workers = [threading.Thread(target=_claim_all, args=(counters, hits, n_phases, n_chunks)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    np.testing.assert_array_equal(hits, 1)


def test_python_rows_kernels_cache_in_the_versioned_folder():
    """The Python-callable rows kernel, decorated after the package import, caches beside the
    module-level kernels, in the folder keyed on every source of the package: Numba alone
    checks only matmul.py's time stamp, and this kernel inlines gemm.py and blocks.py (once it
    kept running a previous gemm.py's products after that file changed)."""
    from pathlib import Path

    from llamatool import jit
    from llamatool.kernels import matmul

    folder = Path(kernels(GQ.Q4_K)[0]._cache._cache_path)
    assert folder == Path(matmul.quant_dequant._cache._cache_path)
    assert jit._keyed_folder(Path(matmul.__file__).parent, "kernels") in folder.parts
