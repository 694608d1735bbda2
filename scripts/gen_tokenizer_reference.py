"""Record llama.cpp's tokenizations as test data: tests/data/tokenizer_reference.json.

Needs llama-cpp-python (llama.cpp itself) and, for the SmolLM2 cases, optionally
transformers (its GGUF tokenizer, recorded for comparison only). The tests read the
recorded ids, so CI needs neither. Run from the repository root:

    .venv/bin/python scripts/gen_tokenizer_reference.py

What is recorded:
- vectors: for each llama.cpp test vocabulary, llama_detokenize of the expected ids;
- smollm2: ids of texts on the default model, for add_special / parse_special on and off;
- pre_tokenizers: the gpt-2 test vocabulary re-labelled with other tokenizer.ggml.pre
  names, and the ids llama.cpp gives for tricky texts (exercises every splitting regex);
- fuzz: random texts on each test vocabulary.
"""

from __future__ import annotations

import json
import random
import re
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tokenizer_cases import (  # noqa: E402
    PRE_TOKENIZER_NAMES,
    SMOLLM2_TEXTS,
    VECTORS,
    fuzz_texts,
    read_vector_cases,
    relabel_vocab,
)

OUT = ROOT / "tests" / "data" / "tokenizer_reference.json"
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaCppVocab:
    """llama.cpp's own tokenizer, through llama-cpp-python's C API."""

    def __init__(self, path: Path):
        import llama_cpp

        self.api = llama_cpp
        self.llama = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llama._model.model)

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)

    def detokenize(self, ids: list[int], remove_special: bool = False, unparse_special: bool = True) -> bytes:
        api = self.api
        arr = (api.llama_token * max(1, len(ids)))(*ids)
        size = 64 + 32 * len(ids)
        while True:
            buf = (api.ctypes.c_char * size)()
            n = api.llama_detokenize(self.vocab, arr, len(ids), buf, size, remove_special, unparse_special)
            if n >= 0:
                return bytes(buf[:n])
            size = -n + 1


def main() -> None:
    data: dict = {"llama_cpp_python": __import__("llama_cpp").__version__}

    data["vectors"] = {}
    for name in VECTORS:
        path, cases = read_vector_cases(name)
        ref = LlamaCppVocab(path)
        data["vectors"][name] = {
            "detokenized_hex": [ref.detokenize(ids).hex() for _, ids in cases],
            "fuzz": [{"text": t, "ids": ref.tokenize(t, False, False)} for t in fuzz_texts(seed=zlib.crc32(name.encode()), n=60)],
        }

    ref = LlamaCppVocab(MODEL)
    hf = _hf_tokenizer(MODEL)
    cases = []
    for text in SMOLLM2_TEXTS:
        for add_special in (False, True):
            for parse_special in (False, True):
                ids = ref.tokenize(text, add_special, parse_special)
                case = {"text": text, "add_special": add_special, "parse_special": parse_special, "ids": ids}
                case["detokenized_hex"] = ref.detokenize(ids).hex()
                if hf is not None and not add_special:
                    case["hf_ids"] = hf.encode(text, add_special_tokens=False, split_special_tokens=not parse_special)
                cases.append(case)
    data["smollm2"] = cases

    data["pre_tokenizers"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        texts = fuzz_texts(seed=7, n=80)
        for pre in PRE_TOKENIZER_NAMES:
            path = relabel_vocab(Path(tmp) / f"{pre}.gguf", pre)
            ref = LlamaCppVocab(path)
            data["pre_tokenizers"][pre] = [{"text": t, "ids": ref.tokenize(t, False, False)} for t in texts]

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(_compact(json.dumps(data, ensure_ascii=True, indent=1)) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


def _compact(text: str) -> str:
    """Lists of ids on one line each."""
    text = re.sub(r"\[\n\s+(-?\d)", r"[\1", text)
    text = re.sub(r",\n\s+(-?\d)", r",\1", text)
    return re.sub(r"(\d)\n\s+\]", r"\1]", text)


def _hf_tokenizer(model: Path):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    return AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)


if __name__ == "__main__":
    random.seed(0)
    main()
