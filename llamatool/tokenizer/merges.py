"""The two merge algorithms: byte-level BPE (merge ranks) and SentencePiece BPE (token scores).

Both keep the symbols of one word in a linked list and a heap of candidate pairs, and merge
the best pair until none is left, exactly as llama.cpp's llm_tokenizer_bpe_session and
llm_tokenizer_spm_session do: the best pair is the lowest merge rank (BPE) or the highest
token score (SPM), the leftmost one on ties; a pair whose symbols changed since it was
queued is skipped.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush


def _link(n: int) -> tuple[list[int], list[int]]:
    return list(range(-1, n - 1)), [*range(1, n), -1]


def bpe_merge(word: str, ranks: dict[str, int]) -> list[str]:
    """Merge the characters of word (in the byte alphabet) by rank; returns the final symbols.

    ranks maps "left right" (a merge line of tokenizer.ggml.merges) to its rank.
    """
    syms = list(word)
    n = len(syms)
    if n < 2:
        return syms
    prev, nxt = _link(n)
    get = ranks.get
    heap = []
    for i in range(n - 1):
        rank = get(syms[i] + " " + syms[i + 1])
        if rank is not None:
            heap.append((rank, i, i + 1, syms[i] + syms[i + 1]))
    heapify(heap)

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0:
            rank = get(syms[left] + " " + syms[right])
            if rank is not None:
                heappush(heap, (rank, left, right, syms[left] + syms[right]))

    while heap:
        _, left, right, text = heappop(heap)
        a, b = syms[left], syms[right]
        if not a or not b or a + b != text:
            continue  # outdated: one side has merged since
        syms[left], syms[right] = text, ""
        after = nxt[right]
        nxt[left] = after
        if after >= 0:
            prev[after] = left
        push(prev[left], left)
        push(left, after)
    return [s for s in syms if s]


def spm_merge(text: str, token_to_id: dict[str, int], scores: list[float]) -> list[str]:
    """Merge the characters of text into vocabulary tokens by score; returns the final symbols."""
    syms = list(text)
    n = len(syms)
    if n < 2:
        return syms
    prev, nxt = _link(n)
    get = token_to_id.get
    heap = []

    def candidate(left: int, right: int):
        merged = syms[left] + syms[right]
        tid = get(merged)
        if tid is not None:
            # highest score first, then leftmost; the length tells whether the pair is still current
            return (-scores[tid], left, right, len(merged))
        return None

    for i in range(n - 1):
        c = candidate(i, i + 1)
        if c is not None:
            heap.append(c)
    heapify(heap)

    while heap:
        _, left, right, size = heappop(heap)
        a, b = syms[left], syms[right]
        if not a or not b or len(a) + len(b) != size:
            continue
        syms[left], syms[right] = a + b, ""
        after = nxt[right]
        nxt[left] = after
        if after >= 0:
            prev[after] = left
        for pair in ((prev[left], left), (left, after)):
            if pair[0] >= 0 and pair[1] >= 0:
                c = candidate(*pair)
                if c is not None:
                    heappush(heap, c)
    return [s for s in syms if s]
