"""Incremental stop-sequence matching for backends that decode token by token."""

from __future__ import annotations

from collections.abc import Sequence


class StopSequenceMatcher:
    """Feeds on generated text; releases only text that cannot be the start of a stop sequence.

    `feed` returns (text safe to emit, whether a stop sequence was hit). On a hit,
    the text before the stop sequence is returned and the rest is dropped.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = tuple(s for s in stop if s)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        pending = self._held + text
        hits = [index for index in (pending.find(s) for s in self._stop) if index >= 0]
        if hits:
            self._held = ""
            return pending[: min(hits)], True
        keep = self._longest_partial_stop(pending)
        self._held = pending[len(pending) - keep :] if keep else ""
        return pending[: len(pending) - keep], False

    def flush(self) -> str:
        """The held-back text, once generation ended without a stop sequence."""
        held, self._held = self._held, ""
        return held

    def _longest_partial_stop(self, text: str) -> int:
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
