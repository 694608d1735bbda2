"""Tokenizer test inputs, shared by the tests and scripts/gen_tokenizer_reference.py."""

from __future__ import annotations

import random
from pathlib import Path

from llamatool.gguf_io import GGUFReader, GGUFWriter, copy_fields

VECTORS_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "tokenizer-vectors"
# llama.cpp's vocab test vectors; the first ones also have recorded detokenizations and fuzz
# cases from llama.cpp (tests/data/tokenizer_reference.json, scripts/gen_tokenizer_reference.py)
RECORDED_VECTORS = ("llama-spm", "phi-3", "gpt-2", "starcoder", "refact", "falcon", "mpt", "deepseek-llm", "deepseek-coder")
VECTORS = RECORDED_VECTORS + ("qwen2", "llama-bpe", "command-r")
SEPARATOR = "\n__ggml_vocab_test__\n"


def read_vector_cases(name: str, root: Path = VECTORS_DIR) -> tuple[Path, list[tuple[str, list[int]]]]:
    """A llama.cpp test vocabulary and its (text, expected ids) cases."""
    path = root / f"ggml-vocab-{name}.gguf"
    texts = Path(f"{path}.inp").read_bytes().decode("utf-8").split(SEPARATOR)
    if texts and texts[-1] == "":
        texts.pop()  # the file ends with the separator
    lines = Path(f"{path}.out").read_bytes().decode("utf-8").split("\n")
    ids = [[int(t) for t in line.strip().split()] for line in lines[: len(texts)]]
    assert len(ids) == len(texts), f"{path}: {len(texts)} inputs but {len(ids)} outputs"
    return path, list(zip(texts, ids))


# Pre-tokenizer names beyond those of the test vocabularies; each is tried on the gpt-2 vocabulary.
PRE_TOKENIZER_NAMES = (
    "default", "llama-bpe", "qwen2", "smollm", "gpt-2", "starcoder", "falcon", "deepseek-llm",
    "deepseek-coder", "deepseek-v3", "mpt", "refact", "dbrx", "tekken", "chameleon", "bloom",
    "viking", "bailingmoe", "seed-coder", "minicpm5", "command-r", "stablelm2", "chatglm-bpe",
)  # fmt: skip


def relabel_vocab(out: Path, pre: str, root: Path = VECTORS_DIR) -> Path:
    """Write the gpt-2 test vocabulary with tokenizer.ggml.pre set to pre."""
    with GGUFReader(root / "ggml-vocab-gpt-2.gguf") as reader, GGUFWriter(out, force=True) as writer:
        copy_fields(reader, writer, skip={"tokenizer.ggml.pre"})
        writer.add_field("tokenizer.ggml.pre", pre)
    return out


# Pieces that random texts are made of: every class of character the pre-tokenizers tell apart.
FUZZ_PIECES = (
    "Hello", " world", "WORLD", "a", "I", "'s", "'S", "'t", "'ll", "'LL", "'Re", "'ve", "'m", "'d", "'",
    "0", "7", "12", "345", "2024", "3.14", " 42", "٣٤", "\u216b", "\u00bd", "\u00b2",
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x00", "\x7f",
    "\x85", "\xa0", "\u1680", "\u2003", "\u2028", "\u3000", "\u200b", "\ufeff",
    ".", ",", "!", "?", "...", "```", "$", "+", "<", "=", ">", "^", "~", "|", "`", "(", ")", "[", "]",
    "{", "}", "_", "-", "--", "#", "@", "&", "*", "/", "\\", '"', ":", ";", "%",
    "\u00e9", "e\u0301", "\u0301", "\u00df", "\u00b5", "\u01c5", "\u2126", "\u212a", "\u1f7d",
    "\u4e2d\u6587", "\u65e5\u672c\u8a9e", "\u3072\u3089\u304c\u306a", "\u30ab\u30bf", "\ud55c\uad6d\uc5b4",
    "\u043f\u0440\u0438\u0432\u0435\u0442", "\u0645\u0631\u062d\u0628\u0627", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "\u1780\u17b6\u1793\u17cb", "\U0001d518", "\U0001f999", "\U0001f636\u200d\U0001f32b\ufe0f", "\u2705",
    "\U0001f469\U0001f3fd\u200d\U0001f4bb", "\uff01", "\u3002", "\u2018", "\u201c", "\u2026",
    "\u2fff", "\u31ef", "\U00031350", "\U0002ebf0", "\ue000", "\U000e0001", "\u0378", "\uffff",
)  # fmt: skip


def fuzz_texts(seed: int, n: int) -> list[str]:
    """n random texts of 1 to 12 pieces (deterministic for a seed)."""
    rng = random.Random(seed)
    return ["".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(1, 12))) for _ in range(n)]


# Our own cases on the default model (SmolLM2: gpt2 BPE, pre "smollm").
SMOLLM2_TEXTS = (
    "",
    " ",
    "Hello world",
    " Hello World!",
    "The quick brown fox jumps over the lazy dog.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    '#include <stdio.h>\nint main(void) {\n\tprintf("%d\\n", 42);\n\treturn 0;\n}\n',
    "for (int i = 0; i < 10; ++i) { x[i] = i * i; }  // squares",
    "\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e \u4f60\u597d\uff0c\u4e16\u754c\uff01",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\ud55c\uad6d\uc5b4",
    "\U0001f999\U0001f999 \U0001f636\u200d\U0001f32b\ufe0f \U0001f469\U0001f3fd\u200d\U0001f4bb \u2705 \U0001f680",
    "a  b   c    d\t\te\t \tf",
    "\n\n\nHello\n \n  \n\n\n   \n",
    "     leading and trailing     ",
    "\r\nWindows\r\nline\r\n",
    "1234567890 3.14159 1,000,000 2024-01-01 0x1F 1e-9",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<|endoftext|>",
    "<|im_start|<|im_end|>>",
    "<repo_name>my/repo<file_sep>main.py\n<filename>x",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    "\u00dcn\u00efc\u00f6d\u00e9 na\u00efve caf\u00e9 r\u00e9sum\u00e9 e\u0301",
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438",
    "!!!!!! ?????? ...... ``````` \"\"\"\"\"\" ------=======",
    "\u00a0non-breaking\u00a0spaces\u3000and\u2003em",
)
