"""The policy's vocabulary, shared by whoever reads a service's policy: the control server
(validating and building xDS), the agent (breakers, health checks) and the client library.
Plain constants; no module here parses anything."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration

NANOS_PER_SECOND = 1_000_000_000
MAX_DURATION = Duration(seconds=86_400)
"""Longest duration any policy field accepts (one day)."""

# Health-check defaults for fields a policy leaves unset. The control server advertises them
# in Cluster.health_checks and the agent's checker applies them: one definition for both.
HEALTH_CHECK_INTERVAL_S = 5.0
HEALTH_CHECK_TIMEOUT_S = 1.0
HEALTH_CHECK_UNHEALTHY_THRESHOLD = 3
HEALTH_CHECK_HEALTHY_THRESHOLD = 2

SPILL_OVER_BELOW = 0.7
"""When fewer than this fraction of the own zone's endpoints pass their health checks, the
agent serves the next zone at priority 0 too (``policy.locality.spill_over_below`` unset).
Envoy's default overprovisioning factor, 1.4, starts spilling at 1/1.4 ≈ 0.71."""

GRPC_STATUS_NAMES: tuple[str, ...] = (
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
"""The 16 non-OK gRPC status names."""
GRPC_STATUS_CODES: dict[str, int] = {name: code for code, name in enumerate(GRPC_STATUS_NAMES, 1)}
"""Each non-OK status name's code (CANCELLED is 1, UNAUTHENTICATED 16)."""

RETRYABLE_STATUS_NAMES: tuple[str, ...] = (
    "CANCELLED",
    "DEADLINE_EXCEEDED",
    "INTERNAL",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
)
"""Status names a retry policy may list in ``retry_on``."""

LB_POLICIES: tuple[str, ...] = ("", "round_robin", "ring_hash")
"""Load balancing policies every gRPC xDS client implements ("" is round_robin)."""
UNSUPPORTED_LB_POLICIES: dict[str, str] = {
    "least_request": "gRPC's xDS clients implement it only in grpc-java; grpcio and the "
    "other languages reject the whole cluster, and every call to the service fails",
}
"""Policies xDS can express but gRPC clients reject, with the reason."""
RING_HASH = "ring_hash"
RING_SIZE_CAP = 4096
"""Entries gRPC builds a hash ring of at most (its default ``ring_size_cap``), whatever the
Cluster asks for."""
DEFAULT_MIN_RING_SIZE = 1024
"""The ring's minimum size when a Cluster sets none (gRFC A42 and Envoy alike)."""

MAX_WEIGHT = 1_000_000
MAX_HALF_OPEN_PROBES = 1000
UINT32_MAX = 2**32 - 1

MAX_SUBSETS = 100
MAX_ROUTES = 100
MAX_ROUTE_WEIGHT = 1_000_000
"""Bounds of a service's traffic rules, far above what an operator writes by hand."""

SECURITY_DISABLED = "disabled"
SECURITY_STRICT = "strict"
SECURITY_MODES: tuple[str, ...] = ("", SECURITY_DISABLED, SECURITY_STRICT)
"""``security.mode``: unset means disabled."""
MAX_SECURITY_HOSTS = 1000
MAX_AUTHORIZATION_RULES = 100
