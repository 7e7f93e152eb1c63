"""Counting call outcomes in a ring of fixed time slots, for the early warnings of
:mod:`~mesh_agent.daemon.breakers.risk`: O(1) per outcome on the agent's outcome path, and
windows read as list slices summed in C when the warnings are judged (with the weighted
least-squares :func:`trend` of the bad share). Plain state, owned by the agent's event loop.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence

from mesh_agent.daemon.breakers.policy import Outcome

__all__ = ["SlotCounts", "trend"]


class SlotCounts:
    """A ring of time slots, each counting calls, failures and calls over each of
    ``targets`` (seconds) that ended in it. Slots are reused as time moves on; an outcome
    older than the ring is dropped.

    :meth:`add` resets a slot when the first outcome of a new slot lands in it; the readers
    first :meth:`sweep` the slots time has reached with no outcome, so that the ring then
    holds exactly the last ``size`` slots and a window is one or two list slices, summed in
    C."""

    __slots__ = (
        "_swept",
        "_xs",
        "calls",
        "codes",
        "epochs",
        "failed",
        "size",
        "slow",
        "targets",
        "width",
    )

    def __init__(
        self, width: float, span: float, targets: Sequence[float], codes: frozenset[str]
    ) -> None:
        self.width = width
        self.size = math.ceil(span / width) + 2
        self.targets = tuple(targets)
        self.codes = codes
        self.epochs = [-1] * self.size
        self.calls = [0] * self.size
        self.failed = [0] * self.size
        self.slow = [[0] * self.size for _ in self.targets]
        self._swept = -1
        self._xs: dict[int, tuple[list[float], list[float]]] = {}

    def add(self, outcomes: Iterable[Outcome]) -> None:
        """Counts ``outcomes``: O(1) each (the hot path; keep it lean)."""
        width, size, epochs, calls, failed = (
            self.width,
            self.size,
            self.epochs,
            self.calls,
            self.failed,
        )
        codes, targets, slow = self.codes, self.targets, self.slow
        last = pos = -1
        for outcome in outcomes:
            index = int(outcome.at / width)
            if index != last:  # a batch's outcomes mostly share a slot
                pos = index % size
                held = epochs[pos]
                if held != index:
                    if held > index:
                        continue  # older than the ring holds
                    epochs[pos] = index
                    calls[pos] = failed[pos] = 0
                    for counts in slow:
                        counts[pos] = 0
                last = index
            calls[pos] += 1
            if outcome.code in codes:
                failed[pos] += 1
            if targets:
                latency = outcome.latency
                for k, target in enumerate(targets):
                    if latency >= target:
                        slow[k][pos] += 1

    def sweep(self, now: float) -> int:
        """Empties the slots time reached with no outcome, up to ``now``; returns the slot
        index of ``now``."""
        current = int(now / self.width)
        first = max(self._swept + 1, current - self.size + 1)
        for index in range(first, current + 1):
            pos = index % self.size
            if self.epochs[pos] != index:
                self.epochs[pos] = index
                self.calls[pos] = self.failed[pos] = 0
                for counts in self.slow:
                    counts[pos] = 0
        self._swept = max(self._swept, current)
        return current

    def _slice(self, values: list[int], current: int, count: int) -> list[int]:
        start = (current - count + 1) % self.size
        stop = start + count
        return (
            values[start:stop] if stop <= self.size else values[start:] + values[: stop - self.size]
        )

    def _series(self, current: int, seconds: float, series: int) -> tuple[list[int], list[int]]:
        """The calls and bad counts of the window's slots, oldest first."""
        count = min(max(1, round(seconds / self.width)), self.size - 1)
        bad_of = self.failed if series < 0 else self.slow[series]
        return self._slice(self.calls, current, count), self._slice(bad_of, current, count)

    def window(self, now: float, seconds: float, series: int = -1) -> tuple[int, int]:
        """``(calls, bad)`` over the last ``seconds``: bad are failures (``series`` -1) or
        calls over ``targets[series]``."""
        calls, bad = self._series(self.sweep(now), seconds, series)
        return sum(calls), sum(bad)

    def trend(self, now: float, seconds: float, series: int = -1) -> tuple[int, float, float]:
        """``(calls, rate, slope per second)`` of the bad share over the last ``seconds``."""
        calls, bad = self._series(self.sweep(now), seconds, series)
        xs = self._xs.get(len(calls))
        if xs is None:
            times = [(j - len(calls) + 1) * self.width for j in range(len(calls))]
            xs = self._xs[len(calls)] = (times, [x * x for x in times])
        return trend(xs[0], calls, bad, xs[1])


def trend(
    times: Sequence[float],
    calls: Sequence[int],
    bad: Sequence[int],
    squares: Sequence[float] | None = None,
) -> tuple[int, float, float]:
    """``(calls, rate, slope)`` of slots at ``times`` with ``calls`` of which ``bad``: the
    overall bad share and the weighted least-squares slope of each slot's share against time
    (weights: the slots' calls; 0 when the slots with calls do not span time). ``squares``
    are the times squared, if the caller has them."""
    n = sum(calls)
    if n == 0:
        return 0, 0.0, 0.0
    sy = sum(bad)
    sx = sum(map(operator.mul, calls, times))
    sxx = sum(map(operator.mul, calls, squares if squares is not None else [t * t for t in times]))
    sxy = sum(map(operator.mul, bad, times))
    spread = n * sxx - sx * sx
    slope = (n * sxy - sx * sy) / spread if spread > 1e-9 * n * n else 0.0
    return n, sy / n, slope
