"""Tokenizer: text <-> token ids, byte-exact with llama.cpp's llama_tokenize / llama_detokenize.

    tok = Tokenizer.from_gguf(GGUFReader("model.gguf"))
    ids = tok.encode("Hello world")              # BOS/EOS as the model asks
    text = tok.decode(ids)

Encoding (llama_vocab::impl::tokenize):
1. Special tokens are cut out of the text first, longest text first: user-defined tokens
   always, control and unknown tokens only with parse_special (so "<|im_start|>" typed by a
   user is plain text by default).
2. Each remaining piece of text is tokenized on its own:
   - SPM ("llama" vocabularies): a space is put in front when the piece starts the text or
     follows a special token (add_space_prefix), spaces become "▁", characters merge by token
     score, and what is left unknown falls back to byte tokens <0xNN>;
   - BPE ("gpt2" vocabularies): the pre-tokenizer splits the piece into words, each word's
     UTF-8 bytes are spelled in the byte alphabet and merged by merge rank.
3. BOS and EOS are added when add_special and the model's add_bos/add_eos say so.

Words repeat, so each word's ids are cached: that makes a megabyte of prose take seconds.
"""

from __future__ import annotations

import re

from ..errors import LlamatoolError
from .decode import SPECIAL_ATTRS, SPACE_MARK, IncrementalDecoder, build_piece, clean_up_spaces
from .merges import bpe_merge, spm_merge
from .pretokenize import PreTokenizer
from .unicode import bytes_to_alphabet, replace_surrogates
from .vocab import Attr, Vocab, load_vocab

LSTRIP, RSTRIP, CONTROL = int(Attr.LSTRIP), int(Attr.RSTRIP), int(Attr.CONTROL)
C_WHITESPACE = " \t\n\v\f\r"  # isspace() in the C locale: what lstrip/rstrip of special tokens remove
CACHE_LIMIT = 1 << 18  # cached words; the cache is emptied when it grows past this
# SentencePiece text can be cut before every run of "▁" that follows another character,
# when no token holds such a spot (then no merge crosses the cut).
SPM_SEGMENT = re.compile(f"{SPACE_MARK}*[^{SPACE_MARK}]+|{SPACE_MARK}+")
SPM_CROSSES_SEGMENTS = re.compile(f"[^{SPACE_MARK}]{SPACE_MARK}")


class Tokenizer:
    """A GGUF model's tokenizer. Token pieces are bytes (see token_to_piece); text is str."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self._cache: dict[str, tuple[int, ...]] = {}
        self._pieces: dict[int, bytes] = {}
        if vocab.model == "bpe":
            self._pre = PreTokenizer(vocab.pre.regexes)
            self._encode_text = self._encode_bpe
        else:
            self._pre = None
            self._spm_segmentable = not any(SPM_CROSSES_SEGMENTS.search(t) for t in vocab.tokens)
            self._encode_text = self._encode_spm

    @classmethod
    def from_gguf(cls, reader) -> "Tokenizer":
        """The tokenizer described by a GGUFReader's tokenizer.ggml.* metadata."""
        return cls(load_vocab(reader))

    # -- vocabulary facts --------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self.vocab.n_vocab

    @property
    def tokens(self) -> list[str]:
        return self.vocab.tokens

    @property
    def bos_id(self) -> int | None:
        return self.vocab.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.vocab.eos_id

    @property
    def eot_id(self) -> int | None:
        return self.vocab.eot_id

    @property
    def eog_ids(self) -> frozenset[int]:
        """Tokens that end generation (EOS, end of turn, end of message, ...)."""
        return self.vocab.eog_ids

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self.vocab.add_eos

    @property
    def model(self) -> str:
        """'spm' or 'bpe'."""
        return self.vocab.model

    def is_control(self, token: int) -> bool:
        return bool(self.vocab.attrs[token] & CONTROL)

    def token_id(self, text: str) -> int | None:
        """The id of the token whose text is exactly text, if any."""
        return self.vocab.token_to_id.get(text)

    # -- encoding -----------------------------------------------------------------------
    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of text, as llama_tokenize(text, add_special, parse_special) gives them."""
        v = self.vocab
        out: list[int] = []
        if add_special and v.add_bos:
            out.append(self._required(v.bos_id, "BOS"))
        prev_special = True  # an SPM piece at the start gets the space prefix too
        for fragment in self._split_special(text, parse_special) if text else ():
            if isinstance(fragment, int):
                out.append(fragment)
                prev_special = True
            else:
                out.extend(self._encode_text(fragment, prev_special))
                prev_special = False
        if add_special and v.add_eos:
            out.append(self._required(v.eos_id, "EOS"))
        return out

    def _required(self, token: int | None, what: str) -> int:
        if token is None:
            raise LlamatoolError(f"the model asks for a {what} token but does not name one")
        return token

    def _split_special(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut special tokens out of text: a list of text pieces (str) and token ids (int)."""
        v = self.vocab
        fragments: list[str | int] = [text]
        for sid in v.special_ids:
            attr = v.attrs[sid]
            if not parse_special and attr & SPECIAL_ATTRS:
                continue
            special = v.tokens[sid]
            if not any(isinstance(f, str) and special in f for f in fragments):
                continue
            out: list[str | int] = []
            for frag in fragments:
                if isinstance(frag, int) or special not in frag:
                    out.append(frag)
                    continue
                pos = 0
                while (hit := frag.find(special, pos)) >= 0:
                    left = frag[pos:hit]
                    if attr & LSTRIP:
                        left = left.rstrip(C_WHITESPACE)
                    if left:
                        out.append(left)
                    out.append(sid)
                    pos = hit + len(special)
                    if attr & RSTRIP:
                        while pos < len(frag) and frag[pos] in C_WHITESPACE:
                            pos += 1
                if pos < len(frag):
                    out.append(frag[pos:])
            fragments = out
        return fragments

    def _cached(self, key: str, compute) -> tuple[int, ...]:
        ids = self._cache.get(key)
        if ids is None:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            ids = self._cache[key] = tuple(compute(key))
        return ids

    def _encode_bpe(self, text: str, prev_special: bool) -> list[int]:
        out: list[int] = []
        cache = self._cache
        for word in self._pre.split(replace_surrogates(text)):
            ids = cache.get(word)
            if ids is None:
                ids = self._cached(word, self._bpe_word)
            out.extend(ids)
        return out

    def _bpe_word(self, word: str) -> list[int]:
        v = self.vocab
        spelled = bytes_to_alphabet(word)
        if v.pre.ignore_merges and spelled in v.token_to_id:
            return [v.token_to_id[spelled]]
        # a symbol that is not a token gives its bytes, each looked up as a one-byte token
        return self._symbols_to_ids(bpe_merge(spelled, v.merges), self._one_byte_token)

    def _symbols_to_ids(self, symbols: list[str], byte_token) -> list[int]:
        """Each symbol's token id, or the ids byte_token gives for its bytes (None: dropped)."""
        get = self.vocab.token_to_id.get
        ids = []
        for sym in symbols:
            tid = get(sym)
            if tid is not None:
                ids.append(tid)
                continue
            for b in sym.encode("utf-8", "surrogateescape"):
                tid = byte_token(b)
                if tid is not None:
                    ids.append(tid)
        return ids

    def _one_byte_token(self, b: int) -> int | None:
        # token texts hold undecodable bytes as surrogates (see gguf_io)
        return self.vocab.token_to_id.get(chr(b) if b < 0x80 else chr(0xDC00 + b))

    def _encode_spm(self, text: str, prev_special: bool) -> list[int]:
        if self.vocab.add_space_prefix and prev_special:
            text = " " + text
        text = text.replace(" ", SPACE_MARK)
        if not self._spm_segmentable:
            return self._spm_segment(text)
        out: list[int] = []
        cache = self._cache
        for segment in SPM_SEGMENT.findall(text):
            ids = cache.get(segment)
            if ids is None:
                ids = self._cached(segment, self._spm_segment)
            out.extend(ids)
        return out

    def _spm_segment(self, text: str) -> list[int]:
        v = self.vocab
        return self._symbols_to_ids(spm_merge(text, v.token_to_id, v.scores), self._byte_token)

    def _byte_token(self, b: int) -> int:
        v = self.vocab
        tid = v.token_to_id.get(f"<0x{b:02X}>")
        if tid is None:
            tid = self._one_byte_token(b)
        if tid is None:
            tid = self._required(v.unk_id, f"byte 0x{b:02X} has no token, and the unknown")
        return tid

    # -- decoding -----------------------------------------------------------------------
    def token_to_piece(self, token: int, special: bool = True) -> bytes:
        """The bytes of one token (llama_token_to_piece). With special=False, control and
        unknown tokens give b"". Bytes, because a token may hold part of a UTF-8 character."""
        if not 0 <= token < self.vocab.n_vocab:
            raise LlamatoolError(f"token id {token} is out of the vocabulary (0..{self.vocab.n_vocab - 1})")
        if not special and self.vocab.attrs[token] & SPECIAL_ATTRS:
            return b""
        piece = self._pieces.get(token)
        if piece is None:  # built on first use: building all of them costs ~0.1 s per model
            piece = self._pieces[token] = build_piece(self.vocab, token)
        return piece

    def decode_bytes(self, ids, skip_special: bool = False) -> bytes:
        """llama_detokenize(ids, remove_special=skip_special, unparse_special=not skip_special)."""
        v = self.vocab
        ids = list(ids)
        strip_space = v.add_space_prefix  # the space SPM put in front of the text
        if skip_special and v.add_bos and ids and ids[0] == v.bos_id:
            strip_space = False
            ids = ids[1:]
        if skip_special and v.add_eos and ids and ids[-1] == v.eos_id:
            ids = ids[:-1]
        parts = []
        for i, token in enumerate(ids):
            piece = self.token_to_piece(token, special=not skip_special)
            if i == 0 and strip_space and piece.startswith(b" "):
                piece = piece[1:]
            parts.append(piece)
        text = b"".join(parts)
        return clean_up_spaces(text) if v.clean_spaces else text

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of token ids, as llama.cpp detokenizes them (invalid UTF-8 becomes U+FFFD).

        skip_special drops a leading BOS / trailing EOS the model adds, and renders control
        tokens as nothing; otherwise they appear as their text (e.g. "<|im_end|>")."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", "replace")

    def incremental_decoder(self, skip_special: bool = False) -> IncrementalDecoder:
        """A streaming decoder: .add(id) -> newly complete text, .flush() -> the rest."""
        return IncrementalDecoder(self, skip_special)
