"""GGUF reader and writer: real files, round trips, and a corpus of malformed files."""

from __future__ import annotations

import hashlib
import struct

import gguf
import numpy as np
import pytest

from llamatool.errors import GGUFError, LlamatoolError
from llamatool.gguf_io import GGUFReader, GGUFWriter, ValueType, copy_fields

from .gguf_factory import all_value_types_fields, write_gguf


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def small_gguf(tmp_path):
    """A valid file: metadata of every type and three F32 tensors of different shapes."""
    rng = np.random.default_rng(0)
    tensors = {
        "a.weight": ("F32", rng.standard_normal((4, 64))),
        "b.weight": ("F32", rng.standard_normal(7)),
        "c.weight": ("F32", rng.standard_normal((2, 3, 32))),
    }
    return write_gguf(tmp_path / "small.gguf", all_value_types_fields(), tensors)


# --- reading -------------------------------------------------------------------------


def test_default_model_metadata_and_tensors(default_model):
    r = GGUFReader(default_model)
    assert r.version == 3
    assert r.architecture == "llama"
    assert r.get("llama.block_count") == 30
    assert r.get("llama.embedding_length") == 576
    assert len(r.get("tokenizer.ggml.tokens")) == 49152
    assert r.get("tokenizer.ggml.model") == "gpt2"
    assert len(r.tensors) == 272
    emb = r.tensor("token_embd.weight")
    assert emb.type.name == "Q8_0" and emb.ne == (576, 49152) and emb.shape == (49152, 576)
    assert emb.data.shape == (49152, 576 // 32 * 34)
    # zero-copy: the view's memory is the file mapping, not a copy
    assert not emb.data.flags.owndata and not emb.data.flags.writeable


def test_reader_agrees_with_gguf_py(default_model):
    """gguf-py's own reader sees the same metadata, tensor types, shapes and bytes."""
    ours = GGUFReader(default_model)
    ref = gguf.GGUFReader(default_model)
    for key, f in ours.fields.items():
        rf = ref.fields[key]
        if f.type == ValueType.ARRAY:
            got = list(f.value) if f.subtype == ValueType.STRING else np.asarray(f.value).tolist()
            assert got == rf.contents(), key
        else:
            assert f.value == pytest.approx(rf.contents()), key
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for t, rt in zip(ours.tensors, ref.tensors):
        assert t.type.id == int(rt.tensor_type)
        assert list(t.ne) == rt.shape.tolist()
        assert t.offset + ours.data_offset == rt.data_offset
        assert t.nbytes == rt.n_bytes
    probe = ours.tensor("blk.3.ffn_up.weight")
    ref_t = next(t for t in ref.tensors if t.name == "blk.3.ffn_up.weight")
    assert np.array_equal(probe.data.reshape(-1), np.asarray(ref_t.data).reshape(-1).view(np.uint8))


def test_all_value_types_round_trip_and_gguf_py_reads_ours(small_gguf):
    r = GGUFReader(small_gguf)
    for key, value, vtype, subtype in all_value_types_fields():
        f = r.fields[key]
        assert f.type == vtype and f.subtype == subtype, key
        got = f.plain()
        if vtype == ValueType.ARRAY and subtype == ValueType.ARRAY:
            assert [list(x) for x in got] == [list(x) for x in value]
        elif vtype == ValueType.ARRAY:
            assert list(got) == list(value)
        elif vtype in (ValueType.FLOAT32,):
            assert got == pytest.approx(value)
        else:
            assert got == value, key
    ref = gguf.GGUFReader(small_gguf)
    assert ref.fields["test.string"].contents() == "héllo ▁ wörld 🦙"
    assert ref.fields["test.u64"].contents() == 2**60
    assert ref.fields["test.arr_str"].contents() == ["a", "", "ünï"]
    assert [t.name for t in ref.tensors] == ["a.weight", "b.weight", "c.weight"]
    c = r.tensor("c.weight")
    assert c.shape == (2, 3, 32) and c.ne == (32, 3, 2)
    np.testing.assert_array_equal(np.asarray(ref.tensors[2].data).reshape(-1), c.values().reshape(-1))


def test_writer_round_trip_default_model_is_byte_identical(default_model, tmp_path):
    r = GGUFReader(default_model)
    out = tmp_path / "copy.gguf"
    with GGUFWriter(out, inputs=[default_model]) as w:
        copy_fields(r, w)
        for t in r.tensors:
            w.add_tensor_info(t.name, t.type, t.ne)
        assert w.planned_size == r.file_size
        for t in r.tensors:
            w.write_tensor(t.name, t.data)
    assert sha256(out) == sha256(default_model)


def test_writer_honours_alignment(tmp_path):
    rng = np.random.default_rng(1)
    path = write_gguf(
        tmp_path / "al.gguf",
        {"general.architecture": "llama"},
        {"x": ("F32", rng.standard_normal(5)), "y": ("F32", rng.standard_normal(3))},
        alignment=64,
    )
    r = GGUFReader(path)
    assert r.alignment == 64 and r.data_offset % 64 == 0
    assert all(t.offset % 64 == 0 for t in r.tensors)
    assert gguf.GGUFReader(path).alignment == 64


def test_writer_refuses_overwrite_and_input(tmp_path, small_gguf):
    with pytest.raises(LlamatoolError, match="already exists"):
        write_gguf(small_gguf, {"general.architecture": "llama"}, {}, force=False)
    before = sha256(small_gguf)
    with pytest.raises(LlamatoolError, match="input"):
        with GGUFWriter(small_gguf, force=True, inputs=[small_gguf]) as w:
            w.add_field("k", 1)
    assert sha256(small_gguf) == before


def test_writer_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "partial.gguf"
    with pytest.raises(RuntimeError):
        with GGUFWriter(out) as w:
            w.add_field("general.architecture", "llama")
            w.add_tensor_info("x", "F32", (4,))
            w.add_tensor_info("y", "F32", (4,))
            w.write_tensor("x", np.zeros(4, np.float32))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(LlamatoolError, match="never written"):
        with GGUFWriter(out) as w:
            w.add_tensor_info("x", "F32", (4,))
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_tensors(tmp_path):
    with GGUFWriter(tmp_path / "w.gguf") as w:
        with pytest.raises(LlamatoolError, match="block size"):
            w.add_tensor_info("q", "Q4_0", (33, 2))
        with pytest.raises(LlamatoolError, match="longer than"):
            w.add_tensor_info("n" * 64, "F32", (4,))
        w.add_tensor_info("x", "F32", (4,))
        with pytest.raises(LlamatoolError, match="duplicate"):
            w.add_tensor_info("x", "F32", (4,))
        with pytest.raises(LlamatoolError, match="expected 16"):
            w.write_tensor("x", np.zeros(3, np.float32))
        w.write_tensor("x", np.zeros(4, np.float32))


# --- malformed files ----------------------------------------------------------------------


def _header_layout(path):
    """Offsets inside a valid file, found by walking it with struct (independently of the reader)."""
    data = path.read_bytes()
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip_value(pos, vtype):
        if vtype == 8:
            (n,) = struct.unpack_from("<Q", data, pos)
            return pos + 8 + n
        if vtype == 9:
            sub, n = struct.unpack_from("<IQ", data, pos)
            pos += 12
            for _ in range(n):
                if sub in (8, 9):
                    pos = skip_value(pos, sub)
                else:
                    pos += sizes[sub]
            return pos
        return pos + sizes[vtype]

    kv_starts = []
    for _ in range(n_kv):
        kv_starts.append(pos)
        (klen,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + klen
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos = skip_value(pos + 4, vtype)
    tensor_starts = []
    for _ in range(n_tensors):
        tensor_starts.append(pos)
        (nlen,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + nlen
        (ndims,) = struct.unpack_from("<I", data, pos)
        pos += 4 + 8 * ndims + 4 + 8
    return data, kv_starts, tensor_starts, pos


def _patched(tmp_path, data: bytes, offset: int, fmt: str, value) -> object:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    p = tmp_path / f"bad-{offset}-{fmt}-{value}.gguf"
    p.write_bytes(bytes(buf))
    return p


def _tensor_field(data, start, field):
    """Offset of a field of the tensor info starting at `start`."""
    (nlen,) = struct.unpack_from("<Q", data, start)
    p = start + 8 + nlen
    (ndims,) = struct.unpack_from("<I", data, p)
    return {"ndims": p, "ne0": p + 4, "type": p + 4 + 8 * ndims, "offset": p + 8 + 8 * ndims}[field]


def expect_clean_error(path, match=None):
    with pytest.raises(GGUFError, match=match) as info:
        GGUFReader(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_truncated_at_many_points(tmp_path, small_gguf):
    data = small_gguf.read_bytes()
    cuts = sorted(set(list(range(0, 200, 3)) + list(np.linspace(200, len(data) - 1, 60).astype(int))))
    for cut in cuts:
        p = tmp_path / "trunc.gguf"
        p.write_bytes(data[:cut])
        if cut == 0:
            expect_clean_error(p, "empty")
        else:
            expect_clean_error(p, "truncated|not a GGUF")


def test_bad_magic_and_versions(tmp_path, small_gguf):
    data = small_gguf.read_bytes()
    expect_clean_error(_patched(tmp_path, data, 0, "<4s", b"GGML"), "not a GGUF")
    expect_clean_error(_patched(tmp_path, data, 4, "<I", 1), "version 1")
    expect_clean_error(_patched(tmp_path, data, 4, "<I", 99), "version 99")
    expect_clean_error(_patched(tmp_path, data, 4, ">I", 3), "big-endian")
    # version 2 uses the same layout as 3
    assert GGUFReader(_patched(tmp_path, data, 4, "<I", 2)).version == 2


def test_huge_counts_and_lengths(tmp_path, small_gguf):
    data, kv_starts, tensor_starts, _ = _header_layout(small_gguf)
    expect_clean_error(_patched(tmp_path, data, 8, "<Q", 2**63), "tensor count")
    expect_clean_error(_patched(tmp_path, data, 16, "<Q", 2**40), "metadata count")
    expect_clean_error(_patched(tmp_path, data, kv_starts[0], "<Q", 2**62), "truncated")  # key length
    # the array length of test.arr_str
    arr = next(s for s in kv_starts if data[s + 8 : s + 8 + 12] == b"test.arr_str")
    expect_clean_error(_patched(tmp_path, data, arr + 8 + 12 + 4 + 4, "<Q", 2**50), "length of array")
    expect_clean_error(_patched(tmp_path, data, tensor_starts[0], "<Q", 2**61), "truncated")  # name length
    expect_clean_error(_patched(tmp_path, data, _tensor_field(data, tensor_starts[0], "ndims"), "<I", 9), "dimensions")
    expect_clean_error(_patched(tmp_path, data, _tensor_field(data, tensor_starts[0], "ne0"), "<Q", 2**62), "impossible|past the end")


def test_bad_value_type_and_tensor_type(tmp_path, small_gguf):
    data, kv_starts, tensor_starts, _ = _header_layout(small_gguf)
    (klen,) = struct.unpack_from("<Q", data, kv_starts[1])
    expect_clean_error(_patched(tmp_path, data, kv_starts[1] + 8 + klen, "<I", 77), "unknown value type 77")
    expect_clean_error(_patched(tmp_path, data, _tensor_field(data, tensor_starts[0], "type"), "<I", 4), "unknown ggml type id 4")
    expect_clean_error(_patched(tmp_path, data, _tensor_field(data, tensor_starts[0], "type"), "<I", 2**31), "unknown ggml type")
    # a Q4_0 type on a row of 64 is fine for block size, but 7 values are not whole blocks
    expect_clean_error(_patched(tmp_path, data, _tensor_field(data, tensor_starts[1], "type"), "<I", 2), "block size")


def test_out_of_range_and_misaligned_offsets(tmp_path, small_gguf):
    data, _, tensor_starts, _ = _header_layout(small_gguf)
    off = _tensor_field(data, tensor_starts[2], "offset")
    expect_clean_error(_patched(tmp_path, data, off, "<Q", 2**40), "past the end")
    expect_clean_error(_patched(tmp_path, data, off, "<Q", 2**64 - 32), "past the end")
    expect_clean_error(_patched(tmp_path, data, off, "<Q", 4), "alignment")
    expect_clean_error(_patched(tmp_path, data, off, "<Q", 0), "overlap")


def test_bad_alignment_and_duplicates(tmp_path):
    good = write_gguf(tmp_path / "a.gguf", [("general.alignment", 32, ValueType.UINT32, None)], {})
    data = good.read_bytes()
    type_at = 24 + 8 + len(b"general.alignment")
    for bad in (0, 3, 48):
        expect_clean_error(_patched(tmp_path, data, type_at + 4, "<I", bad), "alignment")
    expect_clean_error(_patched(tmp_path, data, type_at, "<I", int(ValueType.INT32)), "alignment")
    with pytest.raises(LlamatoolError, match="alignment"):
        write_gguf(tmp_path / "b.gguf", [("general.alignment", 48, ValueType.UINT32, None)], {})
    rng = np.random.default_rng(0)
    p = write_gguf(tmp_path / "t.gguf", {}, {"aa": ("F32", rng.standard_normal(4)), "ab": ("F32", rng.standard_normal(4))})
    p3 = tmp_path / "t2.gguf"
    p3.write_bytes(p.read_bytes().replace(b"ab", b"aa"))
    expect_clean_error(p3, "duplicate tensor name")
    p = write_gguf(tmp_path / "k.gguf", {"k.aa": 1, "k.ab": 2}, {})
    p4 = tmp_path / "k2.gguf"
    p4.write_bytes(p.read_bytes().replace(b"k.ab", b"k.aa"))
    expect_clean_error(p4, "duplicate metadata key")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(LlamatoolError, match="no such file"):
        GGUFReader(tmp_path / "nope.gguf")
    with pytest.raises(LlamatoolError, match="directory"):
        GGUFReader(tmp_path)


def test_random_garbage_never_crashes(tmp_path, small_gguf):
    """Flip random bytes in the header: every result is a valid read or a GGUFError."""
    data, _, _, header_end = _header_layout(small_gguf)
    rng = np.random.default_rng(42)
    for i in range(300):
        buf = bytearray(data)
        for _ in range(rng.integers(1, 4)):
            pos = int(rng.integers(0, header_end))
            buf[pos] = int(rng.integers(0, 256))
        p = tmp_path / "fuzz.gguf"
        p.write_bytes(bytes(buf))
        try:
            GGUFReader(p)
        except GGUFError as e:
            assert "\n" not in str(e)


def test_output_mode_follows_umask_and_tensorless_file_is_unpadded(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = write_gguf(tmp_path / "vocab.gguf", {"general.architecture": "llama", "tokenizer.ggml.model": "gpt2"}, {})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    r = GGUFReader(path)
    assert r.tensors == [] and r.get("tokenizer.ggml.model") == "gpt2"
    # like gguf-py's writer (convert_hf_to_gguf.py --vocab-only), no padding after the header
    assert path.read_bytes().endswith(b"gpt2")
    assert gguf.GGUFReader(path).fields["tokenizer.ggml.model"].contents() == "gpt2"


# --- string arrays (decoded in one pass) ------------------------------------------------


def _string_array_file(tmp_path, strings: list[bytes]):
    """A tensorless GGUF whose one metadata entry is the array of raw strings given."""
    body = b"".join(struct.pack("<Q", len(s)) + s for s in strings)
    key = b"test.strings"
    raw = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
           + struct.pack("<IIQ", ValueType.ARRAY, ValueType.STRING, len(strings)) + body)
    path = tmp_path / "strings.gguf"
    path.write_bytes(raw)
    return path, raw


def test_string_arrays_decode_like_each_string_alone(tmp_path):
    """Invalid UTF-8 (cut characters, lone continuation bytes, surrogates, 0xFF) and NULs
    inside strings: each string reads as bytes.decode("utf-8", "surrogateescape") of itself."""
    rng = np.random.default_rng(7)
    pieces = [b"a", b"\xc3", b"\xa9", b"\xe2\x82", b"\xac", b"\xf0\x9f", b"\x98\x80", b"\xff", b"\xed\xa0\x80", b" "]
    for with_nul in (False, True):
        strings = []
        for _ in range(3000):
            parts = rng.choice(len(pieces) + with_nul, size=rng.integers(0, 6))
            strings.append(b"".join(pieces[p] if p < len(pieces) else b"\x00" for p in parts))
        path, _ = _string_array_file(tmp_path, strings)
        assert GGUFReader(path).fields["test.strings"].value == [s.decode("utf-8", "surrogateescape") for s in strings]
    path, _ = _string_array_file(tmp_path, [])
    assert GGUFReader(path).fields["test.strings"].value == []


def test_string_array_errors_name_the_string(tmp_path):
    path, raw = _string_array_file(tmp_path, [b"one", b"two", b"three"])
    path.write_bytes(raw[:-2])
    assert "test.strings'[2]" in expect_clean_error(path, "truncated")
    at = raw.index(b"two") - 8
    for length in (2**40, 2**63 + 5):
        path.write_bytes(raw[:at] + struct.pack("<Q", length) + raw[at + 8 :])
        assert "test.strings'[1]" in expect_clean_error(path, "truncated")
