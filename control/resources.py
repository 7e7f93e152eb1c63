"""Builds the standard xDS resources for a mesh service, in the forms grpcio's xDS client
honours (``doc/grpc_xds_features.md``): timeouts as ``max_stream_duration`` (gRFC A31),
``max_requests`` as the only circuit-breaker threshold (A32), retries per A44 and
success-rate / failure-percentage outlier detection (A50). Envoy accepts the same resources,
so the policy means the same thing behind a sidecar.

Every resource is named after the service: ``xds:///orders`` asks for Listener ``orders``,
which routes to RouteConfiguration ``orders``, Cluster ``orders`` and ClusterLoadAssignment
``orders``. Policy fields xDS has no place for travel as ``mesh.v1.ServicePolicy``.

Traffic rules (gRFC A28, A33): each subset is a Cluster and a ClusterLoadAssignment of its
own, ``orders/v2``, holding the endpoints with the subset's labels and the service's cluster
policy; each route of the service becomes a route of RouteConfiguration ``orders`` in the same
order (a split as ``weighted_clusters``, a fault as the fault filter's per-route config), and
a default route to the whole service ends it unless the operator's last route matches every
call.

Zones (gRFC A27/A56): gRPC does no zone preference of its own, so the assignments a node
gets depend on the node's zone (its xDS ``Node.locality.zone``): the endpoints of its own
zone at priority 0 and every other zone at priority 1, unless the service says
``locality.prefer_own_zone: false`` or its endpoints are not in that zone and another. The
resources are built once per zone (:func:`zone_key` names the variant a node gets) and shared
by every node of the zone.

Consistent hashing (A42): a service with ``lb: ring_hash`` and a ``hash`` policy gives every
one of its routes the same ``hash_policy`` (a request header, or the channel as filter state
``io.grpc.channel_id``), and its Cluster, which its subsets' copy, a ``ring_hash_lb_config``.

Beside it each service has an alias Listener, ``mesh-client/orders``
(:func:`mesh_core.names.client_listener_name`), which the client library's channels dial: the
same routes inline, without ``max_stream_duration``, since grpcio starts a route timeout 1-2 s
early (grpc/grpc#40633) and the client library applies the timeout to each call itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    health_check_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from mesh.v1 import config_pb2
from mesh_core import policy
from mesh_core.names import client_listener_name, subset_cluster_name
from mesh_core.policy import SECURITY_STRICT
from mesh_core.routing import matches_every_call, path_match
from mesh_xds.addresses import split_address
from mesh_xds.transport import upstream_tls
from mesh_xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SERVICE_POLICY, ResourceName, TypeUrl

Resources = dict[TypeUrl, dict[ResourceName, Message]]

ROUTER_FILTER = "envoy.filters.http.router"
FAULT_FILTER = "envoy.filters.http.fault"
DEFAULT_ROUTE = "default"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
LB_POLICIES: Mapping[str, int] = {
    "": cluster_pb2.Cluster.ROUND_ROBIN,
    "round_robin": cluster_pb2.Cluster.ROUND_ROBIN,
    "ring_hash": cluster_pb2.Cluster.RING_HASH,
}
CHANNEL_ID_KEY = "io.grpc.channel_id"
"""The filter state key gRPC hashes a channel's calls on (gRFC A42): one hash per channel."""
# Health-check defaults when a service asks for checks but leaves a field unset.
_HC_INTERVAL = duration_pb2.Duration(seconds=int(policy.HEALTH_CHECK_INTERVAL_S))
_HC_TIMEOUT = duration_pb2.Duration(seconds=int(policy.HEALTH_CHECK_TIMEOUT_S))
_HC_UNHEALTHY = policy.HEALTH_CHECK_UNHEALTHY_THRESHOLD
_HC_HEALTHY = policy.HEALTH_CHECK_HEALTHY_THRESHOLD


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


_ADS = _ads()  # copied into the messages that name it, never changed


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _has_faults(service: config_pb2.Service) -> bool:
    return any(route.HasField("fault") for route in service.routes)


# The HCM's filters, built once; a manager's ``http_filters`` holds copies.
_FAULT_HTTP_FILTER = hcm_pb2.HttpFilter(
    name=FAULT_FILTER, typed_config=_pack(fault_pb2.HTTPFault())
)
_ROUTER_HTTP_FILTER = hcm_pb2.HttpFilter(
    name=ROUTER_FILTER, typed_config=_pack(router_pb2.Router())
)


def _http_filters(service: config_pb2.Service) -> list[hcm_pb2.HttpFilter]:
    """The HCM's filters: the fault filter when a route injects faults (empty here; each
    route's faults are its override, A33), then the router, last."""
    if _has_faults(service):
        return [_FAULT_HTTP_FILTER, _ROUTER_HTTP_FILTER]
    return [_ROUTER_HTTP_FILTER]


def build_listener(service: config_pb2.Service) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(stat_prefix=service.name)
    manager.rds.config_source.CopyFrom(_ADS)
    manager.rds.route_config_name = service.name
    manager.http_filters.extend(_http_filters(service))
    listener = listener_pb2.Listener(name=service.name)
    listener.api_listener.api_listener.Pack(manager)
    return listener


def build_client_listener(
    service: config_pb2.Service, route: route_pb2.RouteConfiguration
) -> listener_pb2.Listener:
    """The alias Listener the client library dials: ``route`` inline, renamed, with
    ``max_stream_duration`` cleared from every route action (the client library applies the
    timeout itself; grpcio would fire it early), and the same filters as
    :func:`build_listener`."""
    name = client_listener_name(service.name)
    manager = hcm_pb2.HttpConnectionManager(stat_prefix=service.name)
    inline = manager.route_config
    inline.CopyFrom(route)
    inline.name = name
    for host in inline.virtual_hosts:
        for entry in host.routes:
            if entry.HasField("route"):
                entry.route.ClearField("max_stream_duration")
    manager.http_filters.extend(_http_filters(service))
    listener = listener_pb2.Listener(name=name)
    listener.api_listener.api_listener.Pack(manager)
    return listener


def _retry_policy(retry: config_pb2.RetryPolicy) -> route_components_pb2.RetryPolicy | None:
    if retry.attempts <= 1:
        return None
    codes = retry.retry_on or ["UNAVAILABLE"]
    policy = route_components_pb2.RetryPolicy(
        retry_on=",".join(code.lower().replace("_", "-") for code in codes),
        num_retries=wrappers_pb2.UInt32Value(value=retry.attempts - 1),
    )
    if retry.HasField("backoff"):
        back_off = policy.retry_back_off
        back_off.base_interval.CopyFrom(retry.backoff.base)
        if retry.backoff.HasField("max"):
            back_off.max_interval.CopyFrom(retry.backoff.max)
    return policy


def _percent(share: float) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(
        numerator=round(share * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def build_fault(fault: config_pb2.FaultPolicy) -> fault_pb2.HTTPFault:
    """A route's faults as the fault filter's per-route config (A33)."""
    http_fault = fault_pb2.HTTPFault()
    if fault.HasField("delay"):
        http_fault.delay.CopyFrom(
            common_fault_pb2.FaultDelay(
                fixed_delay=fault.delay.fixed, percentage=_percent(fault.delay.percent)
            )
        )
    if fault.HasField("abort"):
        http_fault.abort.CopyFrom(
            fault_pb2.FaultAbort(
                grpc_status=policy.GRPC_STATUS_CODES[fault.abort.status],
                percentage=_percent(fault.abort.percent),
            )
        )
    if fault.max_active_faults:
        http_fault.max_active_faults.value = fault.max_active_faults
    return http_fault


def _fill_string_match(matcher: string_pb2.StringMatcher, header: config_pb2.HeaderMatch) -> None:
    if header.HasField("exact"):
        matcher.exact = header.exact
    elif header.HasField("prefix"):
        matcher.prefix = header.prefix
    else:
        matcher.safe_regex.SetInParent()
        matcher.safe_regex.regex = header.regex


def _fill_match(built: route_components_pb2.RouteMatch, match: config_pb2.RouteMatch) -> None:
    path, is_prefix = path_match(match.method)
    if is_prefix:
        built.prefix = path
    else:
        built.path = path
    if not match.headers:
        return
    for name, header in sorted(match.headers.items()):
        matcher = built.headers.add(name=name)
        if header.HasField("present") and not (
            header.HasField("exact") or header.HasField("prefix") or header.HasField("regex")
        ):
            matcher.present_match = True
            matcher.invert_match = header.invert != (not header.present)
        else:
            _fill_string_match(matcher.string_match, header)
            matcher.invert_match = header.invert


def _policy_action(
    timeout: duration_pb2.Duration | None,
    retry_policy: route_components_pb2.RetryPolicy | None,
    hash_policy: route_components_pb2.RouteAction.HashPolicy | None = None,
) -> route_components_pb2.RouteAction:
    """A route action holding only how calls are made: the timeout, the retries and what
    ring_hash hashes them on."""
    action = route_components_pb2.RouteAction()
    if timeout is not None:
        action.max_stream_duration.max_stream_duration.CopyFrom(timeout)
        action.max_stream_duration.grpc_timeout_header_max.CopyFrom(timeout)
    if retry_policy is not None:
        action.retry_policy.CopyFrom(retry_policy)
    if hash_policy is not None:
        action.hash_policy.append(hash_policy)
    return action


def _hash_policy(
    service_policy: config_pb2.Policy,
) -> route_components_pb2.RouteAction.HashPolicy | None:
    """What every route of a ring_hash service hashes calls on (A42): a request header, or
    the channel (filter state ``io.grpc.channel_id``). None without a hash policy."""
    if not service_policy.HasField("hash"):
        return None
    hashed = service_policy.hash
    built = route_components_pb2.RouteAction.HashPolicy()
    if hashed.channel:
        built.filter_state.key = CHANNEL_ID_KEY
    else:
        built.header.header_name = hashed.header
    return built


def _fill_target(
    action: route_components_pb2.RouteAction, service: str, to: Mapping[str, int]
) -> None:
    """Where a route sends calls: the whole service, one subset or a split."""
    weights = [item for item in sorted(to.items()) if item[1] > 0]
    if not weights:
        action.cluster = service
    elif len(weights) == 1:
        action.cluster = subset_cluster_name(service, weights[0][0])
    else:
        clusters = action.weighted_clusters.clusters
        for name, weight in weights:
            clusters.add(name=subset_cluster_name(service, name)).weight.value = weight


class _Inherited(NamedTuple):
    """The service's policy as routes inherit it, built once per service."""

    timeout: duration_pb2.Duration | None
    retry: route_components_pb2.RetryPolicy | None
    action: route_components_pb2.RouteAction  # all three, for a route that sets neither
    hash: route_components_pb2.RouteAction.HashPolicy | None  # every route's, own or not


def _inherited(service: config_pb2.Service) -> _Inherited:
    base = service.policy
    timeout = base.timeout if base.HasField("timeout") else None
    retry = _retry_policy(base.retry) if base.HasField("retry") else None
    hashed = _hash_policy(base)
    return _Inherited(timeout, retry, _policy_action(timeout, retry, hashed), hashed)


def _fill_route_entry(
    entry: route_components_pb2.Route,
    service: config_pb2.Service,
    route: config_pb2.Route,
    index: int,
    inherited: _Inherited,
) -> None:
    """One route, built in place: a route policy's fields override the service's."""
    own = route.policy
    own_timeout, own_retry = own.HasField("timeout"), own.HasField("retry")
    if own_timeout or own_retry:
        entry.route.CopyFrom(
            _policy_action(
                own.timeout if own_timeout else inherited.timeout,
                _retry_policy(own.retry) if own_retry else inherited.retry,
                inherited.hash,
            )
        )
    else:
        entry.route.CopyFrom(inherited.action)
    entry.name = route.name or f"route-{index}"
    _fill_match(entry.match, route.match)
    _fill_target(entry.route, service.name, route.to)
    if route.HasField("fault"):
        entry.typed_per_filter_config[FAULT_FILTER].Pack(build_fault(route.fault))


def build_route(service: config_pb2.Service) -> route_pb2.RouteConfiguration:
    """The service's routes in order, then (unless the last one matches every call) the
    default route: every other call to the whole service, with the service's policy. Built
    in place, each message once (no copies of nested messages)."""
    inherited = _inherited(service)
    config = route_pb2.RouteConfiguration(name=service.name)
    host = config.virtual_hosts.add(name=service.name, domains=["*"])
    for index, route in enumerate(service.routes):
        _fill_route_entry(host.routes.add(), service, route, index, inherited)
    if not service.routes or not matches_every_call(service.routes[-1]):
        default = config_pb2.Route(name=DEFAULT_ROUTE)
        _fill_route_entry(host.routes.add(), service, default, len(service.routes), inherited)
    return config


def _outlier_detection(
    policy: config_pb2.OutlierDetectionPolicy,
) -> outlier_detection_pb2.OutlierDetection:
    detection = outlier_detection_pb2.OutlierDetection(
        # gRPC implements only success-rate and failure-percentage ejection (A50); switch the
        # consecutive-error forms off so a sidecar given the same resource behaves alike.
        enforcing_consecutive_5xx=wrappers_pb2.UInt32Value(value=0),
        enforcing_consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=0),
        enforcing_success_rate=wrappers_pb2.UInt32Value(value=0),
    )
    for field in ("interval", "base_ejection_time", "max_ejection_time"):
        if policy.HasField(field):
            getattr(detection, field).CopyFrom(getattr(policy, field))
    if policy.max_ejection_percent:
        detection.max_ejection_percent.value = policy.max_ejection_percent
    if policy.HasField("success_rate"):
        rate = policy.success_rate
        detection.enforcing_success_rate.value = rate.enforcement_percentage or 100
        if rate.stdev_factor:
            detection.success_rate_stdev_factor.value = rate.stdev_factor
        if rate.minimum_hosts:
            detection.success_rate_minimum_hosts.value = rate.minimum_hosts
        if rate.request_volume:
            detection.success_rate_request_volume.value = rate.request_volume
    if policy.HasField("failure_percentage"):
        failure = policy.failure_percentage
        detection.failure_percentage_threshold.value = failure.threshold
        detection.enforcing_failure_percentage.value = failure.enforcement_percentage or 100
        if failure.minimum_hosts:
            detection.failure_percentage_minimum_hosts.value = failure.minimum_hosts
        if failure.request_volume:
            detection.failure_percentage_request_volume.value = failure.request_volume
    return detection


def _health_check(policy: config_pb2.HealthCheckPolicy) -> health_check_pb2.HealthCheck:
    return health_check_pb2.HealthCheck(
        interval=policy.interval if policy.HasField("interval") else _HC_INTERVAL,
        timeout=policy.timeout if policy.HasField("timeout") else _HC_TIMEOUT,
        unhealthy_threshold=wrappers_pb2.UInt32Value(
            value=policy.unhealthy_threshold or _HC_UNHEALTHY
        ),
        healthy_threshold=wrappers_pb2.UInt32Value(value=policy.healthy_threshold or _HC_HEALTHY),
        grpc_health_check=health_check_pb2.HealthCheck.GrpcHealthCheck(
            service_name=policy.service_name
        ),
    )


def _ring_hash_config(hashed: config_pb2.HashPolicy) -> cluster_pb2.Cluster.RingHashLbConfig:
    """The ring of a ring_hash Cluster: the service's ring sizes when it sets them (else the
    clients' defaults) and xxHash, the one hash function gRPC implements (A42)."""
    ring = cluster_pb2.Cluster.RingHashLbConfig(
        hash_function=cluster_pb2.Cluster.RingHashLbConfig.XX_HASH
    )
    if hashed.HasField("min_ring_size"):
        ring.minimum_ring_size.value = hashed.min_ring_size
    if hashed.HasField("max_ring_size"):
        ring.maximum_ring_size.value = hashed.max_ring_size
    return ring


def build_cluster(
    service: config_pb2.Service, subset: str = "", trust_domain: str | None = None
) -> cluster_pb2.Cluster:
    """The service's Cluster, or with ``subset`` that subset's (the same policy, its own
    endpoints)."""
    cluster = _build_cluster(service, trust_domain)
    return _subset_cluster(cluster, service.name, subset) if subset else cluster


def _subset_cluster(cluster: cluster_pb2.Cluster, service: str, subset: str) -> cluster_pb2.Cluster:
    """The service's ``cluster`` as the subset's: a copy under the subset's name (the
    cluster's and its EDS service name, the only fields that differ)."""
    name = subset_cluster_name(service, subset)
    copy = cluster_pb2.Cluster()
    copy.CopyFrom(cluster)
    copy.name = name
    copy.eds_cluster_config.service_name = name
    return copy


def _build_cluster(
    service: config_pb2.Service, trust_domain: str | None = None
) -> cluster_pb2.Cluster:
    policy = service.policy
    name = service.name
    http2 = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ADS, service_name=name),
        connect_timeout=duration_pb2.Duration(seconds=1),
        lb_policy=LB_POLICIES.get(policy.lb, cluster_pb2.Cluster.ROUND_ROBIN),
    )
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Pack(http2)
    if policy.circuit_breaker.max_requests:
        cluster.circuit_breakers.CopyFrom(
            circuit_breaker_pb2.CircuitBreakers(
                thresholds=[
                    circuit_breaker_pb2.CircuitBreakers.Thresholds(
                        priority=base_pb2.DEFAULT,
                        max_requests=wrappers_pb2.UInt32Value(
                            value=policy.circuit_breaker.max_requests
                        ),
                    )
                ]
            )
        )
    if cluster.lb_policy == cluster_pb2.Cluster.RING_HASH:
        cluster.ring_hash_lb_config.CopyFrom(_ring_hash_config(policy.hash))
    if policy.HasField("outlier_detection"):
        cluster.outlier_detection.CopyFrom(_outlier_detection(policy.outlier_detection))
    if policy.HasField("health_check"):
        cluster.health_checks.append(_health_check(policy.health_check))
    if service.security.mode == SECURITY_STRICT:
        cluster.transport_socket.CopyFrom(upstream_tls(name, trust_domain))
    return cluster


def _socket_address(address: str) -> address_pb2.Address:
    host, port = split_address(address)
    ipaddress.ip_address(host)  # xDS clients connect to IP literals; never a name here
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def endpoint_health(endpoint: config_pb2.Endpoint) -> int:
    return int(health_check_pb2.DRAINING if endpoint.draining else health_check_pb2.UNKNOWN)


class _Member(NamedTuple):
    """An endpoint of the service, read once: its zone, weight and labels, and its built
    ``LbEndpoint`` (shared by the service's assignment and its subsets')."""

    zone: str
    weight: int
    labels: dict[str, str]
    built: endpoint_components_pb2.LbEndpoint


def _members(service: config_pb2.Service, health: Mapping[str, int] | None = None) -> list[_Member]:
    members: list[_Member] = []
    for endpoint in service.endpoints:
        status = (health or {}).get(endpoint.address, endpoint_health(endpoint))
        weight = endpoint.weight or 1
        built = endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=_socket_address(endpoint.address)),
            health_status=status,
            load_balancing_weight=wrappers_pb2.UInt32Value(value=weight),
        )
        members.append(_Member(endpoint.zone, weight, dict(endpoint.labels), built))
    return members


def _assignment(
    name: str, members: Iterable[_Member], subset: config_pb2.Subset | None, zone: str = ""
) -> endpoint_pb2.ClusterLoadAssignment:
    """The assignment of ``members`` (those carrying all of ``subset``'s labels, if given),
    grouped by zone into localities weighted by their endpoints' total weight. With ``zone``,
    that zone's locality at priority 0 and the others at 1; when this assignment has no
    endpoint in ``zone``, every locality at 0 (priorities have no gaps)."""
    if subset is not None:
        wanted = list(subset.labels.items())
        members = [m for m in members if all(m.labels.get(k) == v for k, v in wanted)]
    by_zone: dict[str, list[_Member]] = {}
    for member in members:
        by_zone.setdefault(member.zone, []).append(member)
    own = zone if zone in by_zone else ""
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    for locality_zone in sorted(by_zone):
        in_zone = by_zone[locality_zone]
        locality = assignment.endpoints.add()
        locality.locality.SetInParent()  # present even for the zone ""
        locality.locality.zone = locality_zone
        locality.load_balancing_weight.value = sum(member.weight for member in in_zone)
        locality.lb_endpoints.extend(member.built for member in in_zone)
        if own and locality_zone != own:
            locality.priority = 1
    return assignment


def build_load_assignment(
    service: config_pb2.Service,
    health: Mapping[str, int] | None = None,
    subset: config_pb2.Subset | None = None,
    zone: str = "",
) -> endpoint_pb2.ClusterLoadAssignment:
    """Groups endpoints by zone into localities weighted by their endpoints' total weight.
    ``health`` overrides the health status per address (the agent's active checks). With
    ``subset``, only the endpoints carrying its labels, under the subset's name. With
    ``zone``, as a node of that zone is served it (:func:`zone_key`)."""
    name = service.name if subset is None else subset_cluster_name(service.name, subset.name)
    return _assignment(name, _members(service, health), subset, zone_key(service, zone))


def prefers_own_zone(service: config_pb2.Service) -> bool:
    """Whether callers are served their own zone first (``locality.prefer_own_zone``, on
    unless set to false)."""
    locality = service.policy.locality
    return not locality.HasField("prefer_own_zone") or locality.prefer_own_zone


def zone_key(service: config_pb2.Service, zone: str) -> str:
    """The zone whose variant of ``service``'s resources a node of ``zone`` is served: the
    zone itself when the service prefers the caller's zone and has endpoints in it and in
    another; otherwise "", the variant every node shares."""
    if not zone or not prefers_own_zone(service):
        return ""
    zones = {endpoint.zone for endpoint in service.endpoints}
    return zone if zone in zones and len(zones) > 1 else ""


def build_policy(service: config_pb2.Service) -> config_pb2.ServicePolicy:
    """The service's policy resource. ``security`` travels so that a node's agent knows which
    of the services it registered have an identity to hold (unset when the service has none,
    so the resource of a service without one is what it always was)."""
    policy = config_pb2.ServicePolicy(
        name=service.name, policy=service.policy, routes=service.routes
    )
    if service.HasField("security"):
        policy.security.CopyFrom(service.security)
    return policy


def build_resources(
    services: Iterable[config_pb2.Service], zone: str = "", trust_domain: str | None = None
) -> Resources:
    """Every resource of every service, by type URL and name (two Listeners per service: its
    own and the client library's alias; a Cluster and an assignment per subset besides the
    service's own), as a node of ``zone`` is served them (:func:`zone_key`). The Clusters of
    services in ``strict`` mode name the server's identity in ``trust_domain``."""
    resources: Resources = {t: {} for t in (LISTENER, ROUTE, CLUSTER, ENDPOINT, SERVICE_POLICY)}
    for service in services:
        route = build_route(service)
        resources[LISTENER][service.name] = build_listener(service)
        resources[LISTENER][client_listener_name(service.name)] = build_client_listener(
            service, route
        )
        resources[ROUTE][service.name] = route
        cluster = resources[CLUSTER][service.name] = _build_cluster(service, trust_domain)
        members = _members(service)
        own = zone_key(service, zone)
        resources[ENDPOINT][service.name] = _assignment(service.name, members, None, own)
        for subset in service.subsets:
            name = subset_cluster_name(service.name, subset.name)
            resources[CLUSTER][name] = _subset_cluster(cluster, service.name, subset.name)
            resources[ENDPOINT][name] = _assignment(name, members, subset, own)
        resources[SERVICE_POLICY][service.name] = build_policy(service)
    return resources
