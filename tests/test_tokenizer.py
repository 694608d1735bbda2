"""Tokenizer: byte-exact with llama.cpp on its own test vectors, on recorded references, and live.

Recorded references (tests/data/tokenizer_reference.json) come from llama.cpp through
llama-cpp-python (scripts/gen_tokenizer_reference.py), so these tests need neither; the
`live` tests compare with llama.cpp directly when llama-cpp-python is installed.
"""

from __future__ import annotations

import ctypes
import json
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from llamatool.errors import LlamatoolError
from llamatool.gguf_io import GGUFReader
from llamatool.tokenizer import Tokenizer
from llamatool.tokenizer.unicode import WHITESPACE, class_table
from tests.conftest import llama_cpp_lib, llama_cpp_module
from tests.gguf_factory import write_gguf
from tests.tokenizer_cases import (
    PRE_TOKENIZER_NAMES, RECORDED_VECTORS, SMOLLM2_TEXTS, VECTORS, fuzz_texts, read_vector_cases, relabel_vocab,
)  # fmt: skip

REFERENCE = Path(__file__).parent / "data" / "tokenizer_reference.json"


@lru_cache(maxsize=1)
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


@lru_cache(maxsize=None)
def load(path: str) -> Tokenizer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Tokenizer.from_gguf(GGUFReader(path))


def vector_tokenizer(root: Path, name: str) -> tuple[Tokenizer, list]:
    path, cases = read_vector_cases(name, root)
    return load(str(path)), cases


# --- llama.cpp's test vectors -----------------------------------------------------------


@pytest.mark.parametrize("name", VECTORS)
def test_vectors_encode_exactly(tokenizer_vectors, name):
    tok, cases = vector_tokenizer(tokenizer_vectors, name)
    assert len(cases) == 46
    failed = [(text, ids, tok.encode(text, add_special=False)) for text, ids in cases if tok.encode(text, add_special=False) != ids]
    assert not failed, f"{len(failed)}/{len(cases)} cases differ, first: {failed[0]}"


@pytest.mark.parametrize("name", RECORDED_VECTORS)
def test_vectors_decode_like_llama_cpp(tokenizer_vectors, name):
    """Decoding the expected ids gives llama_detokenize's bytes, and the text wherever llama.cpp does."""
    tok, cases = vector_tokenizer(tokenizer_vectors, name)
    recorded = reference()["vectors"][name]["detokenized_hex"]
    for (text, ids), hexed in zip(cases, recorded, strict=True):
        expected = bytes.fromhex(hexed)
        assert tok.decode_bytes(ids) == expected, text
        if expected == text.encode():
            assert tok.decode(ids) == text


# llama-vocab.cpp: BPE vocabularies clean up spaces on detokenizing unless their pre-type says not to
CLEANS_SPACES = {"qwen2": False, "command-r": False, "llama-bpe": True}


@pytest.mark.parametrize("name", sorted(set(VECTORS) - set(RECORDED_VECTORS)))
def test_vectors_decode_byte_level_losslessly(tokenizer_vectors, name):
    """Byte-level BPE vocabularies without recorded detokenizations: decoding the expected ids
    gives back the text byte for byte, after llama.cpp's clean-up of spaces where it applies it
    (test_clean_up_spaces checks that clean-up against llama.cpp's own output)."""
    from llamatool.tokenizer.decode import clean_up_spaces

    tok, cases = vector_tokenizer(tokenizer_vectors, name)
    expected = [clean_up_spaces(text.encode()) if CLEANS_SPACES[name] else text.encode() for text, _ in cases]
    assert [tok.decode_bytes(ids) for _, ids in cases] == expected
    assert CLEANS_SPACES[name] == (expected != [text.encode() for text, _ in cases])  # the rule matters here


@pytest.mark.parametrize("name", RECORDED_VECTORS)
def test_vectors_fuzz(tokenizer_vectors, name):
    tok, _ = vector_tokenizer(tokenizer_vectors, name)
    for case in reference()["vectors"][name]["fuzz"]:
        assert tok.encode(case["text"], add_special=False) == case["ids"], repr(case["text"])


@pytest.mark.parametrize("pre", PRE_TOKENIZER_NAMES)
def test_pre_tokenizers(tokenizer_vectors, tmp_path, pre):
    """Every pre-tokenizer's regexes split as llama.cpp's do (on the gpt-2 vocabulary)."""
    tok = load(str(relabel_vocab(tmp_path / f"{pre}.gguf", pre, tokenizer_vectors)))
    for case in reference()["pre_tokenizers"][pre]:
        assert tok.encode(case["text"], add_special=False) == case["ids"], repr(case["text"])


# --- SmolLM2 (the default model) --------------------------------------------------------


def smollm2(default_model) -> Tokenizer:
    return load(str(default_model))


def test_smollm2_cases(default_model):
    """Code, CJK, emoji, runs of spaces and newlines, digits, special tokens, with and without
    BOS and special parsing: ids as llama.cpp gives them (and Hugging Face, which agrees)."""
    tok = smollm2(default_model)
    cases = reference()["smollm2"]
    assert {c["text"] for c in cases} == set(SMOLLM2_TEXTS)
    for c in cases:
        got = tok.encode(c["text"], add_special=c["add_special"], parse_special=c["parse_special"])
        assert got == c["ids"], (c["text"], c["add_special"], c["parse_special"])
        assert tok.decode_bytes(c["ids"]) == bytes.fromhex(c["detokenized_hex"])
        if "hf_ids" in c:
            assert got == c["hf_ids"]


def test_smollm2_special_tokens(default_model):
    tok = smollm2(default_model)
    text = "<|im_start|>user\nHi<|im_end|>"
    ids = tok.encode(text, add_special=False, parse_special=True)
    assert ids[0] == tok.token_id("<|im_start|>") == 1 and ids[-1] == tok.token_id("<|im_end|>") == 2
    plain = tok.encode(text, add_special=False, parse_special=False)
    assert 1 not in plain and 2 not in plain and len(plain) > len(ids)
    assert tok.decode(ids) == text  # control tokens shown by default
    assert tok.decode(ids, skip_special=True) == "user\nHi"


def test_smollm2_facts(default_model):
    tok = smollm2(default_model)
    assert (tok.n_vocab, tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == (49152, 1, 2, False, False)
    assert tok.eog_ids == {0, 2, 4}  # <|endoftext|>, <|im_end|>, <reponame> (a FIM token), as llama.cpp says
    assert tok.is_control(1) and not tok.is_control(tok.token_id("Hello"))
    assert tok.encode("Hello", add_special=True) == tok.encode("Hello", add_special=False)  # no BOS for SmolLM2


def test_bos_eos_added_when_the_model_asks(tokenizer_vectors):
    tok, _ = vector_tokenizer(tokenizer_vectors, "llama-spm")
    assert tok.add_bos and not tok.add_eos
    assert tok.encode("Hello") == [1, 15043]
    assert tok.encode("Hello", add_special=False) == [15043]
    assert tok.encode("") == [1] and tok.encode("", add_special=False) == []
    # llama_detokenize keeps the prefix space when it removes a BOS (HF would strip it)
    assert tok.decode([1, 15043], skip_special=True) == " Hello"
    assert tok.decode([15043]) == "Hello" and tok.decode([1, 15043]) == "<s> Hello"


def test_spm_space_prefix_after_special_tokens(tokenizer_vectors):
    tok, _ = vector_tokenizer(tokenizer_vectors, "llama-spm")
    # "</s>" is parsed as a token, and the text after it gets the "▁" prefix again
    ids = tok.encode("Hi</s>there", add_special=False, parse_special=True)
    assert ids == tok.encode("Hi", add_special=False) + [2] + tok.encode("there", add_special=False)
    assert tok.encode("Hi</s>", add_special=False) != tok.encode("Hi", add_special=False) + [2]


def test_spm_byte_fallback_and_pieces(tokenizer_vectors):
    tok, _ = vector_tokenizer(tokenizer_vectors, "llama-spm")
    ids = tok.encode("\U0001f999", add_special=False)  # not in the vocabulary: 4 byte tokens after "▁"
    assert [tok.tokens[i] for i in ids] == ["▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    assert [tok.token_to_piece(i) for i in ids] == [b" ", b"\xf0", b"\x9f", b"\xa6", b"\x99"]
    assert tok.decode(ids) == "\U0001f999"  # the leading space the prefix added is removed
    assert tok.token_to_piece(1) == b"<s>" and tok.token_to_piece(1, special=False) == b""


def test_incremental_decoder_never_breaks_utf8(tokenizer_vectors):
    tok, _ = vector_tokenizer(tokenizer_vectors, "llama-spm")
    text = "Llamas 🦙 and 中文 é"
    ids = tok.encode(text, add_special=False)
    dec = tok.incremental_decoder()
    parts = [dec.add(i) for i in ids] + [dec.flush()]
    assert "".join(parts) == " " + text  # streaming keeps the prefix space, like llama.cpp's pieces
    assert all("\ufffd" not in p for p in parts)
    assert "" in parts  # the emoji's first byte tokens returned nothing yet


def test_incremental_decoder_byte_level(default_model):
    tok = smollm2(default_model)
    ids = tok.encode("日本語 🦙🦙 ok", add_special=False)
    dec = tok.incremental_decoder()
    assert "".join(dec.add(i) for i in ids) + dec.flush() == "日本語 🦙🦙 ok"
    dec = tok.incremental_decoder()
    assert dec.add(ids[0]) + dec.flush() in ("\ufffd", "日")  # a lone partial character is replaced on flush


def test_clean_up_spaces(tokenizer_vectors):
    """gpt-2 decodes with clean_up_tokenization_spaces (llama.cpp's three passes)."""
    tok, _ = vector_tokenizer(tokenizer_vectors, "gpt-2")
    ids = tok.encode("Hello , world ! I 'm here ' ok ' and he 's", add_special=False)
    assert tok.decode(ids) == "Hello, world! I'm here'ok'and he's"


def test_decode_rejects_bad_ids(default_model):
    tok = smollm2(default_model)
    with pytest.raises(LlamatoolError, match="out of the vocabulary"):
        tok.decode([49152])
    with pytest.raises(LlamatoolError):
        tok.token_to_piece(-1)


# --- metadata handling ------------------------------------------------------------------


def tiny_vocab(tmp_path, **fields) -> Path:
    base = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["a", "b", "ab", "Ġ", "<|end|>"],
        "tokenizer.ggml.token_type": np.array([1, 1, 1, 1, 3], np.int32),
        "tokenizer.ggml.merges": ["a b"],
        "tokenizer.ggml.pre": "gpt-2",
    }
    base.update({k.replace("__", "."): v for k, v in fields.items()})
    return write_gguf(tmp_path / "vocab.gguf", {k: v for k, v in base.items() if v is not None}, {})


def test_unknown_tokenizer_model_is_a_clear_error(tmp_path):
    path = tiny_vocab(tmp_path, tokenizer__ggml__model="t5")
    with pytest.raises(LlamatoolError, match="unsupported tokenizer model 't5'"):
        Tokenizer.from_gguf(GGUFReader(path))


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    path = tiny_vocab(tmp_path, tokenizer__ggml__tokens=None)
    with pytest.raises(LlamatoolError, match="tokenizer.ggml.tokens"):
        Tokenizer.from_gguf(GGUFReader(path))
    path = tiny_vocab(tmp_path, tokenizer__ggml__merges=None)
    with pytest.raises(LlamatoolError, match="tokenizer.ggml.merges"):
        Tokenizer.from_gguf(GGUFReader(path))


def test_unknown_pre_tokenizer_falls_back_with_a_warning(tmp_path):
    path = tiny_vocab(tmp_path, tokenizer__ggml__pre="no-such-pre")
    with pytest.warns(UserWarning, match="unknown pre-tokenizer 'no-such-pre'"):
        tok = Tokenizer.from_gguf(GGUFReader(path))
    assert tok.encode("ab", add_special=False) == [2]
    assert tok.eog_ids == {4} and tok.eos_id is None  # BPE's default EOS id 11 is out of range


def test_duplicate_tokens_are_refused(tmp_path):
    path = tiny_vocab(tmp_path, tokenizer__ggml__tokens=["a", "b", "ab", "Ġ", "a"])
    with pytest.raises(LlamatoolError, match="appears twice"):
        Tokenizer.from_gguf(GGUFReader(path))


def test_merge_only_when_ranked(tmp_path):
    tok = Tokenizer.from_gguf(GGUFReader(tiny_vocab(tmp_path)))
    assert tok.encode("ab ba", add_special=False) == [2, 3, 1, 0]
    assert tok.decode([2, 3, 1, 0]) == "ab ba"


# --- unicode classes against llama.cpp's own table -------------------------------------


def test_unicode_classes_match_llama_cpp():
    lib = ctypes.CDLL(str(llama_cpp_lib("libllama")))
    flags_of = lib._Z26unicode_cpt_flags_from_cptj  # unicode_cpt_flags unicode_cpt_flags_from_cpt(uint32_t)
    flags_of.restype, flags_of.argtypes = ctypes.c_uint16, [ctypes.c_uint32]
    bits = {"U": 0x1, "N": 0x2, "L": 0x4, "Z": 0x8, "M": 0x10, "P": 0x20, "S": 0x40, "C": 0x80}
    ours = np.zeros(256, np.uint16)
    for cls, bit in bits.items():
        ours[ord(cls)] = bit
    table = ours[class_table()]
    cps = np.arange(0, 0x110000, 1)
    theirs = np.array([flags_of(int(c)) for c in cps], dtype=np.uint16)
    assert np.array_equal(theirs & 0xFF, table)
    assert set(np.nonzero(theirs & 0x100)[0].tolist()) == WHITESPACE


# --- live comparison with llama.cpp -----------------------------------------------------


class LiveVocab:
    def __init__(self, path):
        llama_cpp = llama_cpp_module()
        self.api = llama_cpp
        self.llama = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llama._model.model)

    def tokenize(self, text, add_special, parse_special):
        return self.llama.tokenize(text.encode(), add_bos=add_special, special=parse_special)

    def detokenize(self, ids, remove_special, unparse_special) -> bytes:
        api = self.api
        arr = (api.llama_token * max(1, len(ids)))(*ids)
        buf = (ctypes.c_char * (64 + 64 * len(ids)))()
        n = api.llama_detokenize(self.vocab, arr, len(ids), buf, len(buf), remove_special, unparse_special)
        assert n >= 0
        return bytes(buf[:n])


@pytest.mark.parametrize("name", VECTORS)
def test_live_fuzz_and_facts(tokenizer_vectors, name):
    tok, _ = vector_tokenizer(tokenizer_vectors, name)
    live = LiveVocab(tokenizer_vectors / f"ggml-vocab-{name}.gguf")
    api, v = live.api, live.vocab
    assert tok.n_vocab == api.llama_vocab_n_tokens(v)
    assert (tok.add_bos, tok.add_eos) == (api.llama_vocab_get_add_bos(v), api.llama_vocab_get_add_eos(v))
    assert tok.bos_id == api.llama_vocab_bos(v) and tok.eos_id == api.llama_vocab_eos(v)
    assert tok.eog_ids == {i for i in range(tok.n_vocab) if api.llama_vocab_is_eog(v, i)}
    assert [tok.vocab.attrs[i] for i in range(tok.n_vocab)] == [api.llama_vocab_get_attr(v, i) for i in range(tok.n_vocab)]
    for text in fuzz_texts(seed=12345, n=150):
        for add_special, parse_special in ((False, False), (True, True)):
            ids = live.tokenize(text, add_special, parse_special)
            assert tok.encode(text, add_special, parse_special) == ids, repr(text)
            for skip in (False, True):
                assert tok.decode_bytes(ids, skip_special=skip) == live.detokenize(ids, skip, not skip), repr(text)


def test_live_smollm2_special_and_chat_text(default_model):
    tok = smollm2(default_model)
    live = LiveVocab(default_model)
    texts = [*SMOLLM2_TEXTS, *("<|im_start|>" + t + "<|im_end|><|endoftext|>" for t in fuzz_texts(seed=99, n=100))]
    for text in texts:
        for parse_special in (False, True):
            assert tok.encode(text, True, parse_special) == live.tokenize(text, True, parse_special), repr(text)
