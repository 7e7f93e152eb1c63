"""The client library's alias Listener (``mesh-client/SERVICE``): what the control server
builds, that the agent's cache takes it, and that dialling it makes the agent fetch the
service's policy."""

from __future__ import annotations

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, duration_pb2

from control.resources import ROUTER_FILTER, build_resources, build_route
from mesh.v1 import config_pb2
from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.upstream.interest import compute_interest
from mesh_core.names import CLIENT_LISTENER_PREFIX, client_listener_name, service_of_listener
from mesh_xds.types import LISTENER, ROUTE, SERVICE_POLICY


def _service(timeout_s: int = 3) -> config_pb2.Service:
    return config_pb2.Service(
        name="orders",
        endpoints=[config_pb2.Endpoint(address="10.0.0.5:50051")],
        policy=config_pb2.Policy(
            timeout=duration_pb2.Duration(seconds=timeout_s),
            retry=config_pb2.RetryPolicy(attempts=3, retry_on=["UNAVAILABLE"]),
        ),
    )


def _manager(listener: listener_pb2.Listener) -> hcm_pb2.HttpConnectionManager:
    manager = hcm_pb2.HttpConnectionManager()
    assert listener.api_listener.api_listener.Unpack(manager)
    return manager


def test_the_naming_is_one_prefix() -> None:
    assert client_listener_name("orders") == CLIENT_LISTENER_PREFIX + "orders"
    assert service_of_listener(client_listener_name("orders")) == "orders"
    assert service_of_listener("orders") == "orders"


def test_each_service_has_an_alias_listener_with_its_routes_minus_the_timeout() -> None:
    service = _service()
    resources = build_resources([service])
    alias = client_listener_name("orders")
    assert set(resources[LISTENER]) == {"orders", alias}
    assert set(resources[ROUTE]) == {"orders"}  # the alias's routes are inline

    # The service's own Listener and routes keep the timeout as xDS defines it (gRFC A31).
    own = _manager(resources[LISTENER]["orders"])  # type: ignore[arg-type]
    assert own.rds.route_config_name == "orders"
    route = resources[ROUTE]["orders"]
    assert isinstance(route, route_pb2.RouteConfiguration)
    action = route.virtual_hosts[0].routes[0].route
    assert action.max_stream_duration.max_stream_duration.seconds == 3
    assert action.max_stream_duration.grpc_timeout_header_max.seconds == 3

    listener = resources[LISTENER][alias]
    assert isinstance(listener, listener_pb2.Listener) and listener.name == alias
    manager = _manager(listener)
    assert not manager.HasField("rds") and manager.HasField("route_config")
    assert manager.http_filters == own.http_filters
    assert manager.http_filters[-1].name == ROUTER_FILTER
    inline = manager.route_config
    assert inline.name == alias
    for host in inline.virtual_hosts:
        for entry in host.routes:
            assert not entry.route.HasField("max_stream_duration"), entry
    # Otherwise the very same routes: cluster, retries, matchers, domains.
    expected = build_route(service)
    expected.name = alias
    for host in expected.virtual_hosts:
        for entry in host.routes:
            entry.route.ClearField("max_stream_duration")
    assert inline == expected
    assert inline.virtual_hosts[0].routes[0].route.retry_policy.num_retries.value == 2


def test_the_agent_cache_takes_the_alias_and_dialling_it_fetches_the_policy() -> None:
    resources = build_resources([_service()])
    cache = ConfigCache(None, "n1")
    packed = [any_pb2.Any() for _ in resources[LISTENER]]
    for box, message in zip(packed, resources[LISTENER].values(), strict=True):
        box.Pack(message)
    assert cache.accept(LISTENER, "v1", packed, None) is None
    assert cache.names(LISTENER) == {"orders", client_listener_name("orders")}

    demand = {LISTENER: frozenset({client_listener_name("orders")})}
    interest = compute_interest(ConfigCache(None, "n1"), demand)  # type: ignore[arg-type]
    policies = interest[SERVICE_POLICY]
    assert policies is not None and "orders" in policies
    assert client_listener_name("orders") not in policies
    assert interest[LISTENER] == frozenset({client_listener_name("orders")})
