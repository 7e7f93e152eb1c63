"""Traffic rules piece by piece: route matching as gRPC's xDS client does it (A28), the
validation of subsets, routes and faults, the resources they become, what the agent tells
the client library (each route's timeout) and how the agent's health checks cover subsets."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from control.config import load_documents
from control.resources import FAULT_FILTER, ROUTER_FILTER, build_resources
from mesh.v1 import config_pb2
from mesh_agent.client._link import call_timeout_of
from mesh_agent.daemon.breakers.service import call_policy
from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.health.component import health_targets
from mesh_agent.daemon.health.table import Verdict
from mesh_agent.daemon.local import LocalSnapshotSource
from mesh_agent.daemon.upstream.interest import compute_interest
from mesh_core.errors import ConfigError
from mesh_core.routing import RouteMatcher, RouteTimeouts, compile_regex
from mesh_xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SERVICE_POLICY
from tests.unit.agent_caches import agent_cache

pytestmark = pytest.mark.timeout(30)

ORDERS = """
name: orders
endpoints:
  - {address: 10.0.0.5:50051, labels: {version: v1}}
  - {address: 10.0.0.6:50051, labels: {version: v2}}
  - {address: 10.0.0.7:50051, labels: {version: v2, track: beta}}
subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: beta, labels: {version: v2, track: beta}}
policy: {timeout: 3s, health_check: {interval: 1s}}
routes:
  - name: refund
    match: {method: /shop.Orders/Refund}
    to: {v2: 100}
    policy: {timeout: 1s}
  - match: {headers: {x-canary: {exact: "yes"}}}
    to: {beta: 1}
  - to: {v1: 90, v2: 10}
    fault: {abort: {status: unavailable, percent: 20}, delay: {fixed: 50ms, percent: 10.5}}
"""


def orders() -> config_pb2.Service:
    (service,) = load_documents(ORDERS, "orders.yaml")
    return service


def matcher(yaml_match: str) -> RouteMatcher:
    (service,) = load_documents(f"name: s\nroutes: [{{match: {yaml_match}}}]\n", "match.yaml")
    return RouteMatcher.of(service.routes[0].match)


ECHO = "/pkg.Echo/Say"


@pytest.mark.parametrize(
    ("match", "method", "metadata", "expected"),
    [
        ("{method: /pkg.Echo/Say}", ECHO, [], True),
        ("{method: /pkg.Echo/Say}", "/pkg.Echo/SayMore", [], False),
        ("{method: /pkg.Echo/*}", "/pkg.Echo/Other", [], True),
        ("{method: /pkg.Echo/*}", "/pkg.EchoX/Say", [], False),
        ("{headers: {x-a: {exact: 'yes'}}}", ECHO, [("x-a", "yes")], True),
        ("{headers: {x-a: {exact: 'yes'}}}", ECHO, [("x-a", "no")], False),
        ("{headers: {x-a: {exact: 'yes'}}}", ECHO, [], False),
        # several values of one header are joined with ',' before matching
        ("{headers: {x-a: {exact: 'a,b'}}}", ECHO, [("x-a", "a"), ("x-a", "b")], True),
        ("{headers: {x-a: {prefix: 'ca'}}}", ECHO, [("x-a", "canary")], True),
        ("{headers: {x-a: {regex: 'v[0-9]+'}}}", ECHO, [("x-a", "v12")], True),
        ("{headers: {x-a: {regex: 'v[0-9]+'}}}", ECHO, [("x-a", "v12x")], False),  # whole value
        ("{headers: {x-a: {present: true}}}", ECHO, [("x-a", "")], True),
        ("{headers: {x-a: {present: true}}}", ECHO, [], False),
        ("{headers: {x-a: {present: false}}}", ECHO, [], True),
        ("{headers: {x-a: {present: false}}}", ECHO, [("x-a", "1")], False),
        ("{headers: {x-a: {exact: 'yes', invert: true}}}", ECHO, [("x-a", "no")], True),
        # a missing header matches no value test, inverted or not (as in C-core)
        ("{headers: {x-a: {exact: 'yes', invert: true}}}", ECHO, [], False),
        ("{headers: {x-a: {present: true, invert: true}}}", ECHO, [], True),
        ("{headers: {content-type: {exact: application/grpc}}}", ECHO, [], True),
        (
            "{method: /pkg.Echo/Say, headers: {x-a: {exact: '1'}, x-b: {present: true}}}",
            ECHO,
            [("x-a", "1")],
            False,
        ),
        (
            "{method: /pkg.Echo/Say, headers: {x-a: {exact: '1'}, x-b: {present: true}}}",
            ECHO,
            [("x-a", "1"), ("x-b", "")],
            True,
        ),
    ],
)
def test_route_matching(match: str, method: str, metadata: list[Any], expected: bool) -> None:
    assert matcher(match).matches(method, metadata) is expected


def test_regexes_are_re2() -> None:
    compile_regex("a(b|c)+")
    for pattern in ("(a)\\1", "(?=a)b", "a(b"):  # backreference, lookahead: Python's, not RE2's
        with pytest.raises(ConfigError, match="not an RE2 regular expression"):
            compile_regex(pattern)


BAD = [
    (
        "subsets: {v1: {labels: {version: v1}}}",
        "subsets: expected a list, got a mapping; write one entry per item, like '- name: v1'",
    ),
    (
        "subsets: [{name: v1, labels: {version: v1}}, {name: v1, labels: {version: v2}}]",
        "subsets[1].name: duplicate subset 'v1'",
    ),
    ("subsets: [{name: V1, labels: {version: v1}}]", "subsets[0].name: must be a DNS label"),
    ("subsets: [{name: v1}]", "subsets[0].labels: required"),
    ("routes: [{to: {v9: 1}}]", "routes[0].to.v9: unknown subset 'v9' (subsets: none"),
    (
        "subsets: [{name: v1, labels: {a: b}}]\nroutes: [{to: {v1: 0}}]",
        "routes[0].to: the weights add up to 0",
    ),
    ("routes: [{to: {}}, {match: {method: /a.B/C}}]", "routes[0].match: matches every call"),
    (
        "routes: [{match: {method: a.B/C}}]",
        "routes[0].match.method: must be '/package.Service/Method'",
    ),
    ("routes: [{match: {method: /a.B/C/D}}]", "routes[0].match.method"),
    ("routes: [{match: {headers: {x-a-bin: {present: true}}}}]", "binary headers"),
    ("routes: [{match: {headers: {grpc-timeout: {present: true}}}}]", "gRPC's own headers"),
    ("routes: [{match: {headers: {X-Upper: {present: true}}}}]", "must be a metadata key"),
    (
        "routes: [{match: {headers: {x-a: {exact: a, prefix: b}}}}]",
        "routes[0].match.headers.x-a: needs exactly one of exact, prefix, regex or present; "
        "got exact, prefix",
    ),
    ("routes: [{match: {headers: {x-a: {invert: true}}}}]", "got none"),
    ("routes: [{match: {headers: {x-a: {prefix: ''}}}}]", "prefix: must not be empty"),
    (
        "routes: [{match: {headers: {x-a: {regex: '(a)\\1'}}}}]",
        "not an RE2 regular expression",
    ),
    ("routes: [{fault: {}}]", "routes[0].fault: needs a delay, an abort or both"),
    ("routes: [{fault: {delay: {percent: 10}}}]", "routes[0].fault.delay.fixed: required"),
    ("routes: [{fault: {abort: {status: NOPE, percent: 10}}}]", "unknown gRPC status 'NOPE'"),
    ("routes: [{fault: {abort: {status: OK, percent: 10}}}]", "unknown gRPC status 'OK'"),
    ("routes: [{fault: {abort: {status: INTERNAL, percent: 101}}}]", "must be between 0 and 100"),
    ("routes: [{fault: {abort: {status: INTERNAL, percent: 0.00001}}}]", "one call in a million"),
    ("routes: [{policy: {timeout: 0s}}]", "routes[0].policy.timeout: must be greater than 0"),
    (
        "routes: [{policy: {retry: {attempts: 2, retry_on: [NOT_FOUND]}}}]",
        "routes[0].policy.retry.retry_on[0]: 'NOT_FOUND' is not retryable",
    ),
    ("routes: [{name: a}, {name: a}]", "routes[1].name: duplicate route name 'a'"),
    ("endpoints: [{address: '10.0.0.1:1', labels: {' bad': x}}]", "endpoints[0].labels. bad"),
]


@pytest.mark.parametrize(("fields", "expected"), BAD)
def test_validation_names_the_field(fields: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_documents(f"name: s\n{fields}\n", "bad.yaml")
    assert expected in str(error.value)


def test_resources_of_subsets_routes_splits_and_faults() -> None:
    resources = build_resources([orders()])
    assert set(resources[CLUSTER]) == {"orders", "orders/v1", "orders/v2", "orders/beta"}
    assignments = resources[ENDPOINT]
    assert set(assignments) == set(resources[CLUSTER])

    def addresses(name: str) -> set[str]:
        assignment = assignments[name]
        assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
        assert assignment.cluster_name == name
        return {
            f"{lb.endpoint.address.socket_address.address}:"
            f"{lb.endpoint.address.socket_address.port_value}"
            for locality in assignment.endpoints
            for lb in locality.lb_endpoints
        }

    assert addresses("orders/v1") == {"10.0.0.5:50051"}
    assert addresses("orders/v2") == {"10.0.0.6:50051", "10.0.0.7:50051"}
    assert addresses("orders/beta") == {"10.0.0.7:50051"}
    assert resources[CLUSTER]["orders/v2"].eds_cluster_config.service_name == "orders/v2"

    route = resources[ROUTE]["orders"]
    assert isinstance(route, route_pb2.RouteConfiguration)
    entries = route.virtual_hosts[0].routes
    assert [e.name for e in entries] == ["refund", "route-1", "route-2"]  # the last catches all
    refund, canary, split = entries
    assert refund.match.path == "/shop.Orders/Refund" and refund.route.cluster == "orders/v2"
    assert refund.route.max_stream_duration.max_stream_duration.seconds == 1
    assert canary.match.headers[0].string_match.exact == "yes"
    assert canary.route.cluster == "orders/beta"
    assert canary.route.max_stream_duration.max_stream_duration.seconds == 3  # the service's
    weights = {c.name: c.weight.value for c in split.route.weighted_clusters.clusters}
    assert weights == {"orders/v1": 90, "orders/v2": 10}
    fault = fault_pb2.HTTPFault()
    assert split.typed_per_filter_config[FAULT_FILTER].Unpack(fault)
    assert fault.abort.grpc_status == 14
    assert fault.abort.percentage.numerator == 200_000  # per million
    assert fault.delay.fixed_delay.ToMilliseconds() == 50
    assert fault.delay.percentage.numerator == 105_000

    for name in ("orders", "mesh-client/orders"):
        manager = hcm_pb2.HttpConnectionManager()
        assert resources[LISTENER][name].api_listener.api_listener.Unpack(manager)
        assert [f.name for f in manager.http_filters] == [FAULT_FILTER, ROUTER_FILTER]
    policy = resources[SERVICE_POLICY]["orders"]
    assert isinstance(policy, config_pb2.ServicePolicy)
    assert [r.name for r in policy.routes] == ["refund", "", ""]


def test_without_faults_the_filters_stay_the_router_alone() -> None:
    (service,) = load_documents("name: plain\nroutes: [{match: {method: /a.B/*}}]\n", "p.yaml")
    resources = build_resources([service])
    manager = hcm_pb2.HttpConnectionManager()
    assert resources[LISTENER]["plain"].api_listener.api_listener.Unpack(manager)
    assert [f.name for f in manager.http_filters] == [ROUTER_FILTER]
    routes = resources[ROUTE]["plain"].virtual_hosts[0].routes
    assert [r.name for r in routes] == ["route-0", "default"]  # a default route appended
    assert routes[0].match.prefix == "/a.B/" and routes[1].match.prefix == ""


def test_the_client_library_takes_each_calls_route_timeout() -> None:
    service = orders()
    told = call_policy(
        "orders",
        config_pb2.ServicePolicy(name="orders", policy=service.policy, routes=service.routes),
    )
    assert len(told.routes) == 3
    timeouts = call_timeout_of(told)
    assert isinstance(timeouts, RouteTimeouts)
    assert timeouts.timeout_for("/shop.Orders/Refund", None) == 1.0
    assert timeouts.timeout_for(b"/shop.Orders/Refund", None) == 1.0  # grpc.aio's bytes
    assert timeouts.timeout_for("/shop.Orders/Get", [("x-canary", "yes")]) == 3.0
    assert timeouts.timeout_for("/shop.Orders/Get", None) == 3.0


def test_routes_without_their_own_timeout_are_not_sent() -> None:
    (service,) = load_documents(
        "name: s\npolicy: {timeout: 2s}\n"
        "routes: [{match: {method: /a.B/C}, policy: {timeout: 2s}}]\n",
        "s.yaml",
    )
    told = call_policy(
        "s", config_pb2.ServicePolicy(name="s", policy=service.policy, routes=service.routes)
    )
    assert not told.routes and call_timeout_of(told) == 2.0
    (untimed,) = load_documents(
        "name: s\nroutes: [{match: {method: /a.B/C}, policy: {timeout: 1s}}]\n", "s.yaml"
    )
    told = call_policy(
        "s", config_pb2.ServicePolicy(name="s", policy=untimed.policy, routes=untimed.routes)
    )
    timeouts = call_timeout_of(told)
    assert isinstance(timeouts, RouteTimeouts)
    assert timeouts.timeout_for("/a.B/C", None) == 1.0
    assert timeouts.timeout_for("/a.B/D", None) is None


def _agent_cache(service: config_pb2.Service, names: dict[str, set[str]]) -> ConfigCache:
    """An agent cache holding ``names`` of each type of ``service``'s resources."""
    return agent_cache(build_resources([service]), names)


def test_the_agent_checks_each_endpoint_once_and_marks_it_in_every_subset() -> None:
    # Local processes that only use the subsets: the service's own assignment is not held.
    cache = _agent_cache(
        orders(),
        {
            ENDPOINT: {"orders/v1", "orders/v2", "orders/beta"},
            SERVICE_POLICY: {"orders"},
        },
    )
    targets = health_targets(cache)
    assert set(targets) == {"orders"}
    assert sorted(targets["orders"].addresses) == [
        "10.0.0.5:50051",
        "10.0.0.6:50051",
        "10.0.0.7:50051",
    ]

    asked: list[str] = []

    def overrides(service: str) -> Verdict:
        asked.append(service)
        return Verdict(unhealthy={"10.0.0.7:50051": "unhealthy"})

    source = LocalSnapshotSource(cache, overrides)
    snapshot = source.snapshot_for(base_pb2.Node(id="app"))
    assert set(asked) == {"orders"}
    beta = endpoint_pb2.ClusterLoadAssignment()
    assert snapshot.resources[ENDPOINT]["orders/beta"].packed.Unpack(beta)
    assert beta.endpoints[0].lb_endpoints[0].health_status == health_check_pb2.UNHEALTHY


def test_the_agent_asks_for_the_policy_of_a_subsets_service() -> None:
    cache = _agent_cache(orders(), {CLUSTER: {"orders/v1", "orders/v2"}})
    interest = compute_interest(cache, {})
    assert interest[SERVICE_POLICY] == frozenset({"orders"})
    assert interest[ENDPOINT] == frozenset({"orders/v1", "orders/v2"})
