"""Retry policy as data: exponential backoff with full jitter, shared by every reconnect and
restart loop in the project."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

# Jitter draws from a generator of its own: reconnect loops run in background threads, and
# moving the global random state under other code (a seeded test, hypothesis) is not theirs.
_RNG = random.Random()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays ``base * factor**n`` capped at ``cap``, each drawn uniformly from
    ``[delay * (1 - jitter), delay]`` so that many clients do not retry in step."""

    base: float = 0.1
    cap: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """An endless series of delays; start a new one after a success."""
        draw = (rng or _RNG).uniform
        delay = self.base
        while True:
            yield draw(delay * (1 - self.jitter), delay)
            delay = min(self.cap, delay * self.factor)
