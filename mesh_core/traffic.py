"""The latency buckets of the service graph and the arithmetic on them, shared by the node
agent (which counts calls into them) and the control server (which merges and reads them).

Quantiles computed in different processes cannot be merged; histograms with the same fixed
buckets can (add the counts). Every agent and control server therefore uses
:data:`LATENCY_BOUNDS_MS`, and a report says which bounds it used, so a mismatch is refused
rather than mixed. The bounds follow a 1-1.5-2-3-5-7 series from 0.1 ms to 70 s: neighbouring
bounds differ by at most 1.67x, so a quantile read from them is within that factor's bucket,
and a loopback call (~0.5 ms) still falls in a fine bucket.

A quantile is read as Prometheus' ``histogram_quantile`` reads one: find the bucket holding
the rank, interpolate linearly inside it (the first bucket from 0); a rank in the overflow
bucket reads as the last bound.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Final

from mesh_core.errors import ConfigError


def _series() -> tuple[float, ...]:
    bounds: list[float] = []
    for decade in (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0):
        for step in (1.0, 1.5, 2.0, 3.0, 5.0, 7.0):
            bounds.append(round(decade * step, 6))
    return tuple(bounds)


LATENCY_BOUNDS_MS: Final = _series()
"""Upper bounds of the latency buckets, milliseconds; one more bucket counts slower calls."""
BUCKETS: Final = len(LATENCY_BOUNDS_MS) + 1
MAX_REPORT_EDGES: Final = 500
"""Edges in one ``ReportTraffic`` request: an agent with more sends several."""
LATENCY_BOUNDS_US: Final = tuple(round(b * 1000) for b in LATENCY_BOUNDS_MS)
"""The same bounds in whole microseconds, as outcomes carry latencies (``latency_us``)."""


def bucket_of_us(latency_us: int) -> int:
    """The bucket of a latency in microseconds: the first whose bound is at least it."""
    return bisect.bisect_left(LATENCY_BOUNDS_US, latency_us)


def check_bounds(bounds: Sequence[float]) -> None:
    """ConfigError unless ``bounds`` are :data:`LATENCY_BOUNDS_MS`."""
    if tuple(bounds) != LATENCY_BOUNDS_MS:
        raise ConfigError(
            f"latency_bounds_ms: {len(bounds)} bounds "
            f"({', '.join(f'{b:g}' for b in list(bounds)[:4])}...) differ from this server's "
            f"{BUCKETS - 1} (mesh_core.traffic.LATENCY_BOUNDS_MS); agent and control server "
            "must use the same buckets"
        )


def check_buckets(counts: Sequence[int], where: str) -> None:
    """ConfigError unless ``counts`` has one entry per bucket, none negative."""
    if len(counts) != BUCKETS:
        raise ConfigError(f"{where}.latency_buckets: {len(counts)} entries, expected {BUCKETS}")
    if any(c < 0 for c in counts):
        raise ConfigError(f"{where}.latency_buckets: negative count")


def merge_into(total: list[int], counts: Sequence[int]) -> None:
    """Adds ``counts`` to ``total`` bucket by bucket (same length)."""
    for index, count in enumerate(counts):
        if count:
            total[index] += count


def quantile_ms(counts: Sequence[int], q: float) -> float:
    """The ``q`` quantile (0 < q <= 1) of a histogram over :data:`LATENCY_BOUNDS_MS`,
    milliseconds, interpolated linearly within its bucket; 0.0 for an empty histogram."""
    total = sum(counts)
    if total <= 0:
        return 0.0
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(LATENCY_BOUNDS_MS):
                return LATENCY_BOUNDS_MS[-1]
            lower = LATENCY_BOUNDS_MS[index - 1] if index > 0 else 0.0
            upper = LATENCY_BOUNDS_MS[index]
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return LATENCY_BOUNDS_MS[-1]


__all__ = [
    "BUCKETS",
    "LATENCY_BOUNDS_MS",
    "LATENCY_BOUNDS_US",
    "MAX_REPORT_EDGES",
    "bucket_of_us",
    "check_bounds",
    "check_buckets",
    "merge_into",
    "quantile_ms",
]
