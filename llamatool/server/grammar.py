"""Structured output: response_format json_object / json_schema enforced with llguidance.

llguidance (the grammar engine llama.cpp itself can use) compiles a JSON schema into a
grammar and, at each step, tells which tokens may come next: a bit mask over the
vocabulary. Tokens outside it get -inf before sampling, so every reply parses and follows
the schema (and end-of-generation is allowed only once the JSON is complete). It needs each
token's bytes; control tokens are marked with a leading 0xFF, as its llama.cpp bridge does.
"""

from __future__ import annotations

import json
import threading

import numpy as np

from .errors import bad_request

MAX_SCHEMA_BYTES = 256 * 1024
# JSON laid out as json.dumps does: no free whitespace, so a small model cannot loop on
# newlines and spaces until max_tokens and leave the JSON unfinished.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class _TokenizerBridge:
    """What llguidance.TokenizerWrapper reads from a tokenizer: ids, token bytes, encode."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = [i for i in range(tokenizer.n_vocab) if tokenizer.is_control(i)]
        special = set(self.special_token_ids)
        self.tokens = [(b"\xff" if i in special else b"") + tokenizer.token_to_piece(i) for i in range(tokenizer.n_vocab)]

    def __call__(self, data: bytes) -> list[int]:
        return self._tokenizer.encode(data.decode("utf-8", "replace"), add_special=False)


class Grammars:
    """Compiles response formats for one model's tokenizer (built on first use, ~0.5 s)."""

    def __init__(self, tokenizer, n_vocab: int):
        self._tokenizer = tokenizer
        self._n_vocab = n_vocab
        self._lltokenizer = None
        self._lock = threading.Lock()

    def _llg_tokenizer(self):
        import llguidance

        with self._lock:
            if self._lltokenizer is None:
                bridge = llguidance.TokenizerWrapper(_TokenizerBridge(self._tokenizer))
                self._lltokenizer = llguidance.LLTokenizer(bridge, n_vocab=self._n_vocab,
                                                           eos_token=sorted(self._tokenizer.eog_ids))
            return self._lltokenizer

    def schema_of(self, response_format) -> dict | None:
        """The JSON schema a response_format asks for (None: free text)."""
        if response_format is None or response_format.type == "text":
            return None
        if response_format.type == "json_object":
            return {"type": "object"}
        if response_format.json_schema is None:
            raise bad_request("response_format json_schema needs a 'json_schema' object with a 'schema'", "invalid_schema")
        schema = response_format.json_schema.schema_ or {}
        if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
            raise bad_request(f"json_schema is larger than {MAX_SCHEMA_BYTES} bytes", "invalid_schema")
        return schema

    def constraint(self, response_format) -> "Constraint | None":
        """A fresh matcher for one request, or None; a schema llguidance refuses is a 400."""
        schema = self.schema_of(response_format)
        if schema is None:
            return None
        import llguidance

        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_LAYOUT)
        except Exception as e:  # llguidance raises ValueError/RuntimeError for schemas it cannot compile
            raise bad_request(f"json_schema not supported: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                              "invalid_schema") from None
        tokenizer = self._llg_tokenizer()
        error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
        if error:
            raise bad_request(f"json_schema not supported: {error.splitlines()[0]}", "invalid_schema")
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise bad_request(f"json_schema not supported: {matcher.get_error()}", "invalid_schema")
        return Constraint(matcher, self._n_vocab)


class Constraint:
    """One request's grammar state: masks logits, follows the sampled tokens."""

    def __init__(self, matcher, n_vocab: int):
        self._matcher = matcher
        self._n_vocab = n_vocab
        self._bits = np.zeros((n_vocab + 31) // 32, np.int32)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of logits with every token the grammar forbids at -inf."""
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self._n_vocab].astype(bool)
        return np.where(allowed, logits, np.float32(-np.inf)).astype(np.float32, copy=False)

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"grammar rejected token {token}: {self._matcher.get_error()}")

    @property
    def finished(self) -> bool:
        return self._matcher.is_stopped()
