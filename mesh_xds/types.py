"""Type URLs and names shared by the xDS modules."""

from __future__ import annotations

from typing import Final, TypeAlias

TypeUrl: TypeAlias = str
NodeId: TypeAlias = str
ResourceName: TypeAlias = str
Version: TypeAlias = str

_PREFIX: Final = "type.googleapis.com/"
LISTENER: Final[TypeUrl] = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE: Final[TypeUrl] = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER: Final[TypeUrl] = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT: Final[TypeUrl] = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SERVICE_POLICY: Final[TypeUrl] = _PREFIX + "mesh.v1.ServicePolicy"

# Make before break: clusters, then endpoints, then listeners, then routes.
PUSH_ORDER: Final[tuple[TypeUrl, ...]] = (CLUSTER, ENDPOINT, SERVICE_POLICY, LISTENER, ROUTE)
ALL_TYPES: Final[frozenset[TypeUrl]] = frozenset(PUSH_ORDER)
KNOWN_TYPES: Final[dict[str, TypeUrl]] = {type_url: type_url for type_url in PUSH_ORDER}
"""Each type URL served, to itself: the one string every stream can hold."""
# Types whose every response carries every subscribed resource (absence means deletion),
# and which accept wildcard subscriptions.
FULL_STATE: Final[frozenset[TypeUrl]] = frozenset({LISTENER, CLUSTER, SERVICE_POLICY})
# Types where a first request with no names means "everything" (the spec's legacy wildcard).
# Our own policy type takes only the explicit "*": an empty request subscribes to nothing,
# which lets an agent with nothing to ask for still announce its node on the stream.
LEGACY_WILDCARD: Final[frozenset[TypeUrl]] = frozenset({LISTENER, CLUSTER})

SHORT_NAMES: Final[dict[TypeUrl, str]] = {
    LISTENER: "LDS",
    ROUTE: "RDS",
    CLUSTER: "CDS",
    ENDPOINT: "EDS",
    SERVICE_POLICY: "POLICY",
}


def short_name(type_url: TypeUrl) -> str:
    return SHORT_NAMES.get(type_url, type_url.removeprefix(_PREFIX))
