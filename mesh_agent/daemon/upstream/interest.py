"""What the agent asks the control plane for: what its parts demand (what local processes
subscribe to, the policies of the services they watch the breakers of), plus what it already
holds, plus what that references (routes of held listeners, endpoints and policies of held
clusters). Plain functions over the cache and the local sessions; no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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


def _route_names(cache: ConfigCache) -> set[str]:
    names: set[str] = set()
    for packed in cache.resources(LISTENER).values():
        listener = decode(packed, LISTENER)
        assert isinstance(listener, listener_pb2.Listener)
        manager = hcm_pb2.HttpConnectionManager()
        if listener.api_listener.api_listener.Unpack(manager) and manager.HasField("rds"):
            names.add(manager.rds.route_config_name)
    return names


def _endpoint_names(cache: ConfigCache) -> set[str]:
    names: set[str] = set()
    for name, packed in cache.resources(CLUSTER).items():
        cluster = decode(packed, CLUSTER)
        assert isinstance(cluster, cluster_pb2.Cluster)
        names.add(cluster.eds_cluster_config.service_name or name)
    return names


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


def compute_interest(cache: ConfigCache, demand: Demand) -> dict[TypeUrl, Interest]:
    """What to ask the control plane for, per type: ``demand`` and what the cache's config
    refers to (a type with too many names to list is asked for whole)."""
    held_clusters = cache.names(CLUSTER)
    derived: dict[TypeUrl, set[str]] = {
        LISTENER: cache.names(LISTENER),
        CLUSTER: held_clusters,
        ROUTE: _route_names(cache),
        ENDPOINT: _endpoint_names(cache),
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
