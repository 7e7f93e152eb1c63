"""A service's objective (``policy.slo``) as numbers: the quantiles it may name, the error
budgets they leave, and the burn-rate alert's windows and threshold with their defaults.

Shared by the config's validation and by the node agent, which judges the objective
(``mesh_agent.daemon.breakers.risk``, whose docstring explains the maths). No grpc import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from google.protobuf.duration_pb2 import Duration

    from mesh.v1 import config_pb2

__all__ = [
    "DEFAULT_BREAKER_WINDOW",
    "DEFAULT_BURN_THRESHOLD",
    "MAX_LONG_WINDOW",
    "QUANTILES",
    "alert_burn",
    "burn_threshold",
    "burn_windows",
    "latency_objectives",
    "success_budget",
]

QUANTILES: Final = (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99), ("p999", 0.999))
"""The fields of ``mesh.v1.LatencyObjective`` and the quantile each names."""
DEFAULT_BURN_THRESHOLD: Final = 10.0
DEFAULT_BREAKER_WINDOW: Final = 10.0
"""The breaker's window when it sets none (the agent's default too)."""
SHORT_WINDOW_SHARE: Final = 0.5
"""The short window's default, as a share of the breaker's window."""
LONG_WINDOW_FACTOR: Final = 3.0
"""The long window's default, in breaker windows."""
MAX_LONG_WINDOW: Final = 600.0


def _seconds(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


def breaker_window(policy: config_pb2.Policy) -> float:
    """The window of the service's breaker in seconds (the default when unset)."""
    window = _seconds(policy.circuit_breaker.window) if policy.HasField("circuit_breaker") else 0
    return window if window > 0 else DEFAULT_BREAKER_WINDOW


def burn_windows(policy: config_pb2.Policy) -> tuple[float, float]:
    """The short and the long window of ``policy.slo.burn`` in seconds, defaults filled in
    from the breaker's window (half of it, and three times it)."""
    window = breaker_window(policy)
    burn = policy.slo.burn
    short = _seconds(burn.short_window) if burn.HasField("short_window") else 0.0
    long = _seconds(burn.long_window) if burn.HasField("long_window") else 0.0
    return (
        short if short > 0 else window * SHORT_WINDOW_SHARE,
        long if long > 0 else window * LONG_WINDOW_FACTOR,
    )


def burn_threshold(slo: config_pb2.SloPolicy) -> float:
    return slo.burn.threshold if slo.burn.threshold > 0 else DEFAULT_BURN_THRESHOLD


def success_budget(slo: config_pb2.SloPolicy) -> float | None:
    """The share of calls that may fail (0.001 for 99.9 %); None without a success objective."""
    return 1.0 - slo.success / 100.0 if slo.success > 0 else None


def latency_objectives(slo: config_pb2.SloPolicy) -> list[tuple[str, float, float]]:
    """``(name, target seconds, budget)`` per latency objective set: ``p99: 300ms`` gives
    ``("p99", 0.3, 0.01)``, the share of calls that may take longer than the target."""
    objectives = []
    for name, quantile in QUANTILES:
        if slo.latency.HasField(name):
            target = _seconds(getattr(slo.latency, name))
            objectives.append((name, target, 1.0 - quantile))
    return objectives


def alert_burn(threshold: float, budget: float) -> float:
    """The burn rate that raises a warning for ``budget``: ``threshold``, capped halfway
    between 1 (the budget spent exactly) and ``1 / budget`` (every call bad), so that a loose
    objective (90 %, or p50) can still warn."""
    return min(threshold, (1.0 + 1.0 / budget) / 2.0)
