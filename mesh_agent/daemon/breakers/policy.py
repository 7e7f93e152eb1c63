"""A service's circuit-breaker policy, and the outcome of one call it judges.

:class:`BreakerPolicy` is the agent's form of ``mesh.v1.CircuitBreakerPolicy`` (durations as
float seconds, defaults filled in, values checked); :class:`Outcome` is one call's result as a
backend answered it, as local interceptors report it. Plain values with no grpc import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from mesh_core import policy
from mesh_core.errors import ConfigError

if TYPE_CHECKING:
    from google.protobuf.duration_pb2 import Duration

    from mesh.v1 import config_pb2

__all__ = [
    "DEFAULT_FAILURE_CODES",
    "GRPC_STATUS_NAMES",
    "BreakerPolicy",
    "Outcome",
]

GRPC_STATUS_NAMES: Final = frozenset({"OK", *policy.GRPC_STATUS_NAMES})
DEFAULT_FAILURE_CODES: Final = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "RESOURCE_EXHAUSTED"}
)
DEFAULT_WINDOW: Final = 10.0
DEFAULT_MIN_REQUESTS: Final = 20
DEFAULT_OPEN_FOR: Final = 5.0
DEFAULT_MAX_OPEN_FACTOR: Final = 10.0
DEFAULT_HALF_OPEN_PROBES: Final = 1
MIN_PERMIT_TIMEOUT: Final = 5.0
"""A half-open permit not resolved within ``max(open_for, MIN_PERMIT_TIMEOUT)`` is reclaimed."""


def _seconds(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """One service's breaker policy. Durations are float seconds (sub-second allowed).

    Rates are in [0, 1]; a rate of 0 (or ``consecutive_failures`` 0, or a ``None``
    ``slow_call_threshold``) disables that trigger. ``max_open_for`` 0 means
    ``10 * open_for``; it is never below ``open_for``. With no trigger enabled the breaker
    always admits (:attr:`enabled` is False).
    """

    failure_rate: float = 0.0
    window: float = DEFAULT_WINDOW
    min_requests: int = DEFAULT_MIN_REQUESTS
    consecutive_failures: int = 0
    open_for: float = DEFAULT_OPEN_FOR
    max_open_for: float = 0.0
    half_open_probes: int = DEFAULT_HALF_OPEN_PROBES
    slow_call_threshold: float | None = None
    slow_call_rate: float = 0.0
    failure_codes: frozenset[str] = DEFAULT_FAILURE_CODES

    def __post_init__(self) -> None:
        for name in ("failure_rate", "slow_call_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        for name in ("window", "open_for"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value}")
        if not (math.isfinite(self.max_open_for) and self.max_open_for >= 0):
            raise ConfigError(f"max_open_for must be >= 0 seconds, got {self.max_open_for}")
        if self.min_requests < 1:
            raise ConfigError(f"min_requests must be >= 1, got {self.min_requests}")
        if self.consecutive_failures < 0:
            raise ConfigError(f"consecutive_failures must be >= 0, got {self.consecutive_failures}")
        if self.half_open_probes < 1:
            raise ConfigError(f"half_open_probes must be >= 1, got {self.half_open_probes}")
        if self.slow_call_threshold is not None and not (
            math.isfinite(self.slow_call_threshold) and self.slow_call_threshold > 0
        ):
            raise ConfigError(
                f"slow_call_threshold must be a positive number of seconds or None, "
                f"got {self.slow_call_threshold}"
            )
        codes = frozenset(self.failure_codes)
        unknown = sorted(c for c in codes if c not in GRPC_STATUS_NAMES)
        if unknown:
            raise ConfigError(f"failure_codes: unknown gRPC status name(s) {', '.join(unknown)}")
        if "OK" in codes:
            raise ConfigError("failure_codes: OK cannot be a failure")
        object.__setattr__(self, "failure_codes", codes or DEFAULT_FAILURE_CODES)
        default_max = self.open_for * DEFAULT_MAX_OPEN_FACTOR
        object.__setattr__(
            self, "max_open_for", max(self.max_open_for or default_max, self.open_for)
        )

    @classmethod
    def from_proto(cls, policy: config_pb2.CircuitBreakerPolicy | None) -> BreakerPolicy:
        """Converts a ``mesh.v1.CircuitBreakerPolicy``; unset or zero fields take the
        defaults. ``None`` gives a disabled policy. Raises ConfigError on values out of range."""
        if policy is None:
            return cls()
        window = _seconds(policy.window)
        open_for = _seconds(policy.open_for)
        threshold = _seconds(policy.slow_call.threshold) if policy.HasField("slow_call") else 0.0
        codes = frozenset(
            c.strip().upper().replace("-", "_") for c in policy.failure_codes if c.strip()
        )
        return cls(
            failure_rate=policy.failure_rate,
            window=window if window > 0 else DEFAULT_WINDOW,
            min_requests=policy.min_requests or DEFAULT_MIN_REQUESTS,
            consecutive_failures=policy.consecutive_failures,
            open_for=open_for if open_for > 0 else DEFAULT_OPEN_FOR,
            max_open_for=max(_seconds(policy.max_open_for), 0.0),
            half_open_probes=policy.half_open_probes or DEFAULT_HALF_OPEN_PROBES,
            slow_call_threshold=threshold if threshold > 0 else None,
            slow_call_rate=policy.slow_call.rate if threshold > 0 else 0.0,
            failure_codes=codes or DEFAULT_FAILURE_CODES,
        )

    @property
    def slow_call_enabled(self) -> bool:
        return self.slow_call_threshold is not None and self.slow_call_rate > 0

    @property
    def enabled(self) -> bool:
        """False when no trigger is set: the breaker then always admits."""
        return self.failure_rate > 0 or self.consecutive_failures > 0 or self.slow_call_enabled

    @property
    def permit_timeout(self) -> float:
        """How long a half-open probe permit may stay unresolved before it is reclaimed."""
        return max(self.open_for, MIN_PERMIT_TIMEOUT)

    def is_failure(self, code: str) -> bool:
        return code in self.failure_codes

    def is_slow(self, latency: float) -> bool:
        return self.slow_call_threshold is not None and latency >= self.slow_call_threshold


@dataclass(frozen=True, slots=True)
class Outcome:
    """One call's result as a backend answered it.

    ``code`` is the gRPC status name ("OK" for success), ``latency`` in seconds, ``at`` when
    the call ended (same clock as the breaker's, ``time.time()`` by default). ``probe`` is set
    on the outcome of a call admitted by a half-open permit.
    """

    code: str
    latency: float
    at: float
    probe: bool = False
