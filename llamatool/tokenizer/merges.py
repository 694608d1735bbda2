"""The two merge algorithms: byte-level BPE (merge ranks) and SentencePiece BPE (token scores).

Both keep the symbols of one word in a linked list and a heap of candidate pairs, and merge
the best pair until none is left, exactly as llama.cpp's llm_tokenizer_bpe_session and
llm_tokenizer_spm_session do: the best pair is the lowest merge rank (BPE) or the highest
token score (SPM), the leftmost one on ties; a pair whose symbols changed since it was
queued is skipped.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush


def merge_symbols(syms: list[str], priority) -> list[str]:
    """Merge adjacent symbols, best pair first, until no pair can merge; returns the symbols left.

    priority(left, right) -> a sortable value (lower merges first) or None when the two
    cannot merge. Ties go to the leftmost pair. A queued pair whose sides have changed
    since (its concatenation is no longer what was queued) is skipped.
    """
    n = len(syms)
    if n < 2:
        return syms
    prev, nxt = list(range(-1, n - 1)), [*range(1, n), -1]
    heap = []

    def push(left: int, right: int, into) -> None:
        p = priority(syms[left], syms[right])
        if p is not None:
            into(heap, (p, left, right, syms[left] + syms[right]))

    for i in range(n - 1):
        push(i, i + 1, list.append)
    heapify(heap)

    while heap:
        _, left, right, merged = heappop(heap)
        a, b = syms[left], syms[right]
        if not a or not b or a + b != merged:
            continue
        syms[left], syms[right] = merged, ""
        after = nxt[right]
        nxt[left] = after
        if after >= 0:
            prev[after] = left
            push(left, after, heappush)
        if prev[left] >= 0:
            push(prev[left], left, heappush)
    return [s for s in syms if s]


def bpe_merge(word: str, ranks: dict[str, int]) -> list[str]:
    """Merge the characters of word (in the byte alphabet) by merge rank.

    ranks maps "left right" (a line of tokenizer.ggml.merges) to its rank.
    """
    get = ranks.get
    return merge_symbols(list(word), lambda a, b: get(a + " " + b))


def spm_merge(text: str, token_to_id: dict[str, int], scores: list[float]) -> list[str]:
    """Merge the characters of text into vocabulary tokens, highest token score first."""
    get = token_to_id.get

    def priority(a: str, b: str):
        tid = get(a + b)
        return None if tid is None else -scores[tid]

    return merge_symbols(list(text), priority)
