"""Tokenizers read from GGUF metadata, byte-exact with llama.cpp (see tokenizer.py)."""

from .decode import IncrementalDecoder
from .tokenizer import Tokenizer

__all__ = ["Tokenizer", "IncrementalDecoder"]
