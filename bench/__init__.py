"""``make bench``: benchmark sections run side by side in one process, one table each.

A section is a function registered with :func:`section`; it takes the run's
:class:`Options` and returns rows (flat dicts). Rows with a ``table`` key are printed in a
sub-table of that name. ``python -m bench`` runs every registered section (``--only NAME``
selects some), prints the tables and ends with one JSON line holding every row.

To add a section: write ``bench/NAME.py`` with a function decorated ``@section("NAME")``
and add the module to ``SECTION_MODULES`` below.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Row = dict[str, Any]
SectionFn = Callable[["Options"], list[Row]]

# Modules that register sections when imported, in the order their sections run.
SECTION_MODULES = (
    "bench.control",
    "bench.agent",
    "bench.graph",
    "bench.datapath",
    "bench.outcomes",
    "bench.tracing",
    "bench.mtls",
    "bench.service_mtls",
    "bench.identity",
    "bench.etcd",
    "bench.scale",
)


@dataclass(frozen=True)
class Options:
    """What a section is asked to do. ``sizes`` is None unless ``--sizes`` was given, in
    which case a section that has problem sizes (service counts, ...) uses only these."""

    quick: bool = False
    sizes: tuple[int, ...] | None = None
    workdir: Path = field(default_factory=Path)


SECTIONS: dict[str, SectionFn] = {}


def section(name: str) -> Callable[[SectionFn], SectionFn]:
    """Registers ``fn`` as the benchmark section ``name``."""

    def register(fn: SectionFn) -> SectionFn:
        if name in SECTIONS:
            raise ValueError(f"benchmark section {name!r} registered twice")
        SECTIONS[name] = fn
        return fn

    return register


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: with fewer than 100 samples, p99 is the maximum."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values_ms: Sequence[float]) -> Row:
    """median / p99 / min / max of a list of milliseconds, rounded for the table."""
    return {
        "median_ms": round(statistics.median(values_ms), 3),
        "p99_ms": round(percentile(values_ms, 99), 3),
        "min_ms": round(min(values_ms), 3),
        "max_ms": round(max(values_ms), 3),
    }


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None
