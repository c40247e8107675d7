"""Incremental detokenization with stop sequences.

Text is released only when it is final: never half of a multi-byte character (the tokenizer
yields U+FFFD for an incomplete byte sequence) and never a tail that might still become a stop
sequence.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.token_ids: list[int] = []
        self.text = ""  # decoded text of token_ids (up to a stop sequence)
        self.emitted = 0  # characters of self.text already released
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Add a generated token; return the newly final text (possibly empty)."""
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""  # wait for the rest of the character
        self.text = text
        for stop in self.stop:
            at = text.find(stop)
            if at != -1:
                self.text = text[:at]
                self.stopped = True
        if self.stopped:
            return self._release(len(self.text))
        hold = max(
            (k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0
        )
        return self._release(len(self.text) - hold)

    def finish(self) -> str:
        """Release whatever is held back (generation ended without a stop sequence)."""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        chunk = self.text[self.emitted : upto]
        self.emitted = upto
        return chunk
