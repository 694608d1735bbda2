"""Tokenizer speed: encode about 1 MB of English text, ours against llama.cpp in the same run.

    .venv/bin/python scripts/bench_tokenizer.py [--mb 1] [--repeat 3] [--model PATH ...]

Prints, per vocabulary, the time to load the tokenizer and the median time to encode the text
(cold: a fresh tokenizer with an empty word cache; warm: the same text again), and
llama.cpp's median through llama-cpp-python when it is installed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llamatool.gguf_io import GGUFReader  # noqa: E402
from llamatool.tokenizer import Tokenizer  # noqa: E402

TEXT = ROOT / "tests" / "data" / "shakespeare-sonnets.txt"
DEFAULT_MODELS = [
    ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    ROOT.parent / "shared" / "tokenizer-vectors" / "ggml-vocab-llama-spm.gguf",
    ROOT.parent / "shared" / "tokenizer-vectors" / "ggml-vocab-deepseek-llm.gguf",
]


def english_text(megabytes: float, source: Path) -> str:
    """source repeated (with a changing number in front) up to the size wanted."""
    base = source.read_text(encoding="utf-8", errors="replace")
    parts, size, i = [], 0, 0
    while size < megabytes * 1e6:
        chunk = f"[{i}]\n{base}"
        parts.append(chunk)
        size += len(chunk.encode())
        i += 1
    return "".join(parts)


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", type=Path, action="append")
    ap.add_argument("--text", type=Path, default=TEXT, help="English text to use (repeated up to --mb)")
    args = ap.parse_args()
    text = english_text(args.mb, args.text)
    print(f"text: {len(text.encode()) / 1e6:.2f} MB, {len(text)} characters")
    for path in args.model or DEFAULT_MODELS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load, tok = timed(lambda: Tokenizer.from_gguf(GGUFReader(path)), args.repeat)
            cold, ids = timed(lambda: Tokenizer.from_gguf(GGUFReader(path)).encode(text), args.repeat)
            cold -= load
            warm, _ = timed(lambda: tok.encode(text), args.repeat)
        line = f"{path.name}: load {load:.2f} s, encode cold {cold:.2f} s, warm {warm:.2f} s, {len(ids)} tokens"
        ref = llama_cpp_time(path, text, args.repeat)
        if ref is not None:
            ref_time, ref_ids = ref
            line += f"; llama.cpp {ref_time:.2f} s (x{cold / ref_time:.1f} cold), same ids: {ref_ids == ids}"
        print(line)


def llama_cpp_time(path: Path, text: str, repeat: int):
    try:
        import llama_cpp
    except ImportError:
        return None
    llama = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    data = text.encode()
    return timed(lambda: llama.tokenize(data, add_bos=True, special=False), repeat)


if __name__ == "__main__":
    main()
