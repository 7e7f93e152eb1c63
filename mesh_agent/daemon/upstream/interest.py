"""What the agent asks the control plane for: what its parts demand (what local processes
subscribe to, the policies of the services they watch the breakers of), plus what it already
holds, plus what that references (routes of held listeners, endpoints and policies of held
clusters). Plain functions over the cache and the local sessions, and :class:`References`,
which follows the cache's changes so that a change costs in proportion to itself; no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from mesh_agent.daemon.cache import ConfigCache, decode
from mesh_core.limits import Limits
from mesh_core.names import is_server_listener, service_of_cluster, service_of_listener
from mesh_xds.session import Session
from mesh_xds.types import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SERVICE_POLICY,
    ResourceName,
    TypeUrl,
)

Interest = frozenset[ResourceName] | None
"""Names wanted of one type; None means every resource (wildcard)."""
Demand = Mapping[TypeUrl, Interest]
"""What one part of the agent asks for, per type."""

MAX_NAMES = Limits().max_names_per_request // 2
"""Past this many names of one type, or MAX_NAME_BYTES of them, the agent asks for every
resource of the type instead: a request over the control server's limits would cut the node
off, and local processes together may ask for more than one of them may."""
MAX_NAME_BYTES = Limits().max_message_bytes // 4


class References:
    """What the held listeners and clusters refer to: the route of each listener (RDS) and
    the endpoints of each cluster (EDS), kept up to date from the cache's changes alone, so a
    change decodes only the resources it touched. Owned by the event loop."""

    def __init__(self) -> None:
        self._route_of: dict[ResourceName, str] = {}  # listener -> its RDS name ("": inline)
        self._endpoints_of: dict[ResourceName, str] = {}  # cluster -> its EDS name

    @classmethod
    def of(cls, cache: ConfigCache) -> References:
        references = cls()
        references.update(cache, {LISTENER: cache.names(LISTENER), CLUSTER: cache.names(CLUSTER)})
        return references

    def update(self, cache: ConfigCache, change: Mapping[TypeUrl, Iterable[ResourceName]]) -> bool:
        """Follows a change of the cache (per type, the names set or removed); True when a
        listener or cluster came, went or now refers to something else."""
        moved = False
        for name in change.get(LISTENER, ()):
            packed = cache.resources(LISTENER).get(name)
            moved |= _set(self._route_of, name, None if packed is None else _route_of(packed))
        for name in change.get(CLUSTER, ()):
            packed = cache.resources(CLUSTER).get(name)
            moved |= _set(self._endpoints_of, name, None if packed is None else _eds_of(packed))
        return moved

    def routes(self) -> set[str]:
        return {route for route in self._route_of.values() if route}

    def endpoints(self) -> set[str]:
        return set(self._endpoints_of.values())


def _set(mapping: dict[ResourceName, str], name: ResourceName, value: str | None) -> bool:
    if value is None:
        return mapping.pop(name, None) is not None
    if mapping.get(name) == value:
        return False
    mapping[name] = value
    return True


def _route_of(packed: Any) -> str:
    listener = decode(packed, LISTENER)
    assert isinstance(listener, listener_pb2.Listener)
    manager = hcm_pb2.HttpConnectionManager()
    if listener.api_listener.api_listener.Unpack(manager) and manager.HasField("rds"):
        return str(manager.rds.route_config_name)
    return ""


def _eds_of(packed: Any) -> str:
    cluster = decode(packed, CLUSTER)
    assert isinstance(cluster, cluster_pb2.Cluster)
    return str(cluster.eds_cluster_config.service_name or cluster.name)


def local_demand(sessions: Iterable[Session]) -> dict[TypeUrl, Interest]:
    """The union of what local sessions subscribe to, per type (None: someone wants all),
    less the server Listeners, which the agent builds itself."""
    demand: dict[TypeUrl, set[str] | None] = {}
    for session in sessions:
        for type_url, state in session.types.items():
            current = demand.get(type_url, set())
            if state.wildcard or current is None:
                demand[type_url] = None
            elif type_url == LISTENER:
                own = {name for name in state.names if not is_server_listener(name)}
                demand[type_url] = current | own
            else:
                demand[type_url] = current | state.names
    return {t: None if n is None else frozenset(n) for t, n in demand.items()}


def merged(demands: Iterable[Demand]) -> dict[TypeUrl, Interest]:
    """The union of several parts' demands, per type (None: one of them wants all)."""
    union: dict[TypeUrl, set[str] | None] = {}
    for demand in demands:
        for type_url, names in demand.items():
            current = union.get(type_url, set())
            union[type_url] = None if names is None or current is None else current | names
    return {t: None if n is None else frozenset(n) for t, n in union.items()}


def compute_interest(
    cache: ConfigCache, demand: Demand, references: References | None = None
) -> dict[TypeUrl, Interest]:
    """What to ask the control plane for, per type: ``demand`` and what the cache's config
    refers to (a type with too many names to list is asked for whole). ``references``: what
    the cache's listeners and clusters refer to, if kept already (else worked out now)."""
    if references is None:
        references = References.of(cache)
    held_clusters = cache.names(CLUSTER)
    derived: dict[TypeUrl, set[str]] = {
        LISTENER: cache.names(LISTENER),
        CLUSTER: held_clusters,
        ROUTE: references.routes(),
        ENDPOINT: references.endpoints(),
        SERVICE_POLICY: {service_of_cluster(name) for name in held_clusters},
    }
    # Interceptors (and the breakers) need the policy of every service a process dials,
    # whether through the service's own Listener or the client library's alias of it.
    listener_demand = demand.get(LISTENER, frozenset())
    policy_demand = demand.get(SERVICE_POLICY, frozenset())
    if listener_demand is not None and policy_demand is not None:
        derived[SERVICE_POLICY] |= {service_of_listener(name) for name in listener_demand}
    interest: dict[TypeUrl, Interest] = {}
    for type_url, names in derived.items():
        wanted = demand.get(type_url, frozenset())
        union = None if wanted is None else frozenset(names | wanted)
        interest[type_url] = None if union is None or _too_many(union) else union
    return interest


def _too_many(names: frozenset[str]) -> bool:
    return len(names) > MAX_NAMES or sum(len(n.encode()) for n in names) > MAX_NAME_BYTES
