"""Exponential back-off: ``initial`` seconds, doubling up to ``maximum``; ``reset`` starts over."""

from __future__ import annotations


class Backoff:
    def __init__(self, initial: float, maximum: float) -> None:
        self._initial = initial
        self._maximum = maximum
        self.delay = 0.0

    def next(self) -> float:
        self.delay = min(self._maximum, max(self._initial, self.delay * 2))
        return self.delay

    def reset(self) -> None:
        self.delay = 0.0
