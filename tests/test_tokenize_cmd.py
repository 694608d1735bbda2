"""`llamatool tokenize`: output like llama-tokenize, clean one-line errors."""

from __future__ import annotations

import pytest

from llamatool.tokenize_cmd import format_piece, process_escapes

from .conftest import llamatool


def test_pieces_like_llama_tokenize(default_model):
    proc = llamatool("tokenize", "-m", default_model, "-p", "Hello world!")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == " 19556 -> 'Hello'\n   905 -> ' world'\n    17 -> '!'\n"


def test_ids_only_and_count(default_model):
    proc = llamatool("tokenize", "-m", default_model, "-p", "Hello world", "--ids", "--show-count")
    assert proc.stdout == "[19556, 905]\nTotal number of tokens: 2\n"


def test_special_tokens_only_with_special(default_model):
    text = "<|im_start|>user"
    plain = llamatool("tokenize", "-m", default_model, "-p", text, "--ids").stdout
    parsed = llamatool("tokenize", "-m", default_model, "-p", text, "--ids", "--special").stdout
    assert parsed == "[1, 4093]\n"
    assert plain != parsed and not plain.startswith("[1,")


def test_bos_and_no_bos(tokenizer_vectors):
    vocab = tokenizer_vectors / "ggml-vocab-llama-spm.gguf"
    assert llamatool("tokenize", "-m", vocab, "-p", "Hello", "--ids").stdout == "[1, 15043]\n"
    assert llamatool("tokenize", "-m", vocab, "-p", "Hello", "--ids", "--no-bos").stdout == "[15043]\n"


def test_escapes_file_and_stdin(default_model, tmp_path):
    newline_ids = llamatool("tokenize", "-m", default_model, "-p", r"a\nb", "--ids").stdout
    literal_ids = llamatool("tokenize", "-m", default_model, "-p", r"a\nb", "--ids", "--no-escape").stdout
    assert newline_ids != literal_ids
    path = tmp_path / "prompt.txt"
    path.write_text("a\nb")
    assert llamatool("tokenize", "-m", default_model, "-f", path, "--ids").stdout == newline_ids
    assert llamatool("tokenize", "-m", default_model, "--stdin", "--ids", input="a\nb").stdout == newline_ids


def test_partial_utf8_pieces_are_shown_in_hex(tokenizer_vectors):
    proc = llamatool("tokenize", "-m", tokenizer_vectors / "ggml-vocab-llama-spm.gguf", "-p", "🦙", "--no-bos")
    assert "   243 -> '<f0>' (utf-8 decode failure)" in proc.stdout.splitlines()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "missing.gguf", "-p", "x"], "missing.gguf: no such file"),
        (["-p", "x", "-f", "y.txt"], "exactly one of"),
        ([], "exactly one of"),
        (["-f", "no-such-prompt.txt"], "no-such-prompt.txt: no such file"),
    ],
)
def test_errors_are_one_line(default_model, args, message):
    if "-m" not in args:
        args = ["-m", default_model, *args]
    proc = llamatool("tokenize", *args)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    proc = llamatool("tokenize", "-m", bad, "-p", "x")
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_unknown_pre_tokenizer_is_a_one_line_warning(tokenizer_vectors, tmp_path):
    from llamatool.gguf_io import GGUFReader, GGUFWriter, copy_fields

    path = tmp_path / "odd-pre.gguf"
    with GGUFReader(tokenizer_vectors / "ggml-vocab-gpt-2.gguf") as reader, GGUFWriter(path) as writer:
        copy_fields(reader, writer, skip={"tokenizer.ggml.pre"})
        writer.add_field("tokenizer.ggml.pre", "brand-new-pre")
    proc = llamatool("tokenize", "-m", path, "-p", "Hello world", "--ids")
    assert proc.returncode == 0 and proc.stdout == "[15496, 995]\n"
    assert proc.stderr == "warning: unknown pre-tokenizer 'brand-new-pre': using 'default'; tokens may differ from the model's own\n"


def test_helpers():
    assert process_escapes(r"a\nb\tc\\d\x41\q") == "a\nb\tc\\dA\\q"
    assert format_piece(b"ok") == ("ok", True)
    assert format_piece(b" \xf0\x9f") == ("<20 f0 9f>", False)
