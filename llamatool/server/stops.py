"""Stop strings over streamed text: never emit a stop string, not even its first characters.

Text arrives in pieces (whole UTF-8 characters: the tokenizer's incremental decoder keeps
them whole). A piece is held back as long as the end of what is pending could still be the
start of a stop string; once a stop string appears, the text before it is the last to go out.
"""

from __future__ import annotations


class StopFilter:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add generated text; returns what may be sent now (sets .stopped on a stop string)."""
        if self.stopped:
            return ""
        pending = self._pending + text
        cut = min((i for i in (pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return pending[:cut]
        hold = self._held_suffix(pending)
        self._pending = pending[len(pending) - hold:] if hold else ""
        return pending[: len(pending) - hold]

    def flush(self) -> str:
        """Generation ended without a stop string: what was held back goes out."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

    def _held_suffix(self, text: str) -> int:
        """Length of the longest end of text that begins some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
