"""The one retry policy: delays grow to the cap, jittered, drawn without touching the global
random state (reconnect loops run in background threads beside code that seeds or watches
it, hypothesis among them)."""

from __future__ import annotations

import itertools
import random

from mesh_core.backoff import Backoff


def test_delays_grow_to_the_cap_within_the_jitter() -> None:
    delays = list(itertools.islice(Backoff(base=0.1, cap=1.0, jitter=0.5).delays(), 8))
    nominal = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    for delay, top in zip(delays, nominal, strict=True):
        assert top * 0.5 <= delay <= top


def test_delays_leave_the_global_random_state_alone() -> None:
    before = random.getstate()
    list(itertools.islice(Backoff().delays(), 20))
    assert random.getstate() == before


def test_a_given_generator_makes_delays_repeatable() -> None:
    first = list(itertools.islice(Backoff().delays(random.Random(7)), 5))
    assert first == list(itertools.islice(Backoff().delays(random.Random(7)), 5))
