"""``meshctl get services NAME``'s subset and route tables (``control/meshctl/services.py``),
line by line, and against what the control server builds from the same service: the same
route names in the same order, the default route when it adds one, and the endpoints each
subset's ClusterLoadAssignment holds."""

from __future__ import annotations

import pytest

from control.config import load_documents
from control.meshctl.services import (
    match_text,
    registrations_of,
    route_rows,
    served_endpoints,
    subset_rows,
    traffic_lines,
)
from control.registry import merge_registered, registration_endpoint
from control.resources import build_load_assignment, build_route
from mesh.v1 import admin_pb2, config_pb2, node_pb2

pytestmark = pytest.mark.timeout(30)

ORDERS = """\
name: orders
endpoints:
  - {address: 10.0.0.1:50051, zone: eu-1a, labels: {version: v1}}
  - {address: 10.0.0.2:50051, labels: {version: v2, track: canary}}
policy: {timeout: 5s, retry: {attempts: 3}}
subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
routes:
  - name: refund
    match: {method: /shop.Orders/Refund}
    to: {v2: 100}
  - match: {headers: {x-canary: {exact: "yes"}, x-user: {prefix: beta-, invert: true}}}
    to: {v3: 100}
    policy: {timeout: 2s, retry: {attempts: 2, retry_on: [unavailable, deadline-exceeded]}}
  - match: {method: "/shop.Orders/*", headers: {x-debug: {present: false}, x-id: {regex: "[0-9]+"}}}
    to: {v1: 1, v2: 2}
    fault: {abort: {status: UNAVAILABLE, percent: 20}, delay: {fixed: 50ms, percent: 10},
            max_active_faults: 5}
"""

REGISTERED = [
    node_pb2.Registration(service="orders", address="10.0.0.3:50051", labels={"version": "v3"}),
    # The operator already lists this address: the operator's entry (version v2) stands.
    node_pb2.Registration(service="orders", address="10.0.0.2:50051", labels={"version": "v3"}),
    node_pb2.Registration(
        service="orders", address="10.0.0.4:50051", labels={"version": "v2"}, draining=True
    ),
    node_pb2.Registration(service="billing", address="10.0.0.5:50051", labels={"version": "v1"}),
]


def _service(text: str = ORDERS) -> config_pb2.Service:
    (service,) = load_documents(text, "orders.yaml")
    assert isinstance(service, config_pb2.Service)
    return service


SHOWN = """
ZONE   ENDPOINTS  WEIGHT
-      3          3
eu-1a  1          1
(a caller's own zone first, then the others; the next joins below 70% usable)

SUBSET  LABELS      ENDPOINTS       CLUSTER
v1      version=v1  1               orders/v1
v2      version=v2  2 (1 draining)  orders/v2
v3      version=v3  1               orders/v3
(the subsets count 2 endpoint(s) registered by nodes)

ROUTE    MATCH                                                                           TO                     TIMEOUT       RETRY                                        FAULT
refund   method=/shop.Orders/Refund                                                      v2 100%                5s (service)  3 attempts on UNAVAILABLE (service)          -
route-1  header x-canary exact "yes" and header x-user not prefix "beta-"                v3 100%                2s            2 attempts on UNAVAILABLE,DEADLINE_EXCEEDED  -
route-2  method=/shop.Orders/* and header x-debug absent and header x-id regex "[0-9]+"  v1 33.33% · v2 66.67%  5s (service)  3 attempts on UNAVAILABLE (service)          abort UNAVAILABLE 20% · delay 50ms 10% · at most 5 active
default  every other call (implicit)                                                     whole service          5s (service)  3 attempts on UNAVAILABLE (service)          -
"""  # noqa: E501


def test_the_tables_read_as_operators_see_them() -> None:
    assert traffic_lines(_service(), REGISTERED) == SHOWN.splitlines()


def test_a_subset_a_route_sends_to_without_endpoints_says_its_calls_fail() -> None:
    rows = subset_rows(_service(), served_endpoints(_service()))
    assert rows[3] == ("v3", "version=v3", "0 (calls routed to it fail)", "orders/v3")
    unused = _service(ORDERS.replace("to: {v3: 100}", "to: {v1: 100}"))
    assert subset_rows(unused, served_endpoints(unused))[3][2] == "0"


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        ("{exact: 'yes'}", 'header x-h exact "yes"'),
        ("{exact: 'yes', invert: true}", 'header x-h not exact "yes"'),
        ("{prefix: 'a\"b'}", 'header x-h prefix "a\\"b"'),
        ("{regex: 'v[0-9]+'}", 'header x-h regex "v[0-9]+"'),
        ("{present: true}", "header x-h present"),
        ("{present: false}", "header x-h absent"),
        ("{present: true, invert: true}", "header x-h absent"),
        ("{present: false, invert: true}", "header x-h present"),
    ],
)
def test_each_header_matcher_reads_as_it_is_served(header: str, shown: str) -> None:
    service = _service(
        "name: s\nendpoints: [{address: '10.0.0.1:1', labels: {v: a}}]\n"
        "subsets: [{name: a, labels: {v: a}}]\n"
        f"routes: [{{match: {{headers: {{x-h: {header}}}}}, to: {{a: 1}}}}]\n"
    )
    assert match_text(service.routes[0].match) == shown


def test_routes_without_a_policy_or_ending_in_a_catch_all() -> None:
    text = (
        "name: s\nendpoints: [{address: '10.0.0.1:1', labels: {v: a}}]\n"
        "subsets: [{name: a, labels: {v: a}}, {name: b, labels: {v: b}}]\n"
        "routes:\n"
        "  - {match: {method: /p.S/M}, policy: {retry: {attempts: 1}}}\n"
        "  - {name: split, to: {a: 3, b: 1}}\n"
    )
    rows = route_rows(_service(text))
    assert rows[1:] == [
        ("route-0", "method=/p.S/M", "whole service", "-", "none", "-"),
        ("split", "every call", "a 75% · b 25%", "-", "-", "-"),
    ]
    plain = _service("name: s\nendpoints: [{address: '10.0.0.1:1'}]\n")
    assert traffic_lines(plain) == []  # nothing added for a service without traffic rules
    only_routes = _service(
        "name: s\nendpoints: [{address: '10.0.0.1:1'}]\nroutes: [{match: {method: /p.S/*}}]\n"
    )
    assert [row[0] for row in route_rows(only_routes)] == ["ROUTE", "route-0", "default"]
    assert not any(line.startswith("SUBSET") for line in traffic_lines(only_routes))


@pytest.mark.parametrize("catch_all", [False, True])
def test_the_routes_shown_are_the_routes_served(catch_all: bool) -> None:
    text = ORDERS + ("  - {to: {v1: 9, v2: 1}}\n" if catch_all else "")
    service = _service(text)
    served = [route.name for route in build_route(service).virtual_hosts[0].routes]
    assert [row[0] for row in route_rows(service)[1:]] == served
    assert served[-1] == ("route-3" if catch_all else "default")


def test_the_endpoints_counted_are_the_endpoints_served() -> None:
    service = _service()
    registered = {
        "orders": [registration_endpoint("n1", r) for r in REGISTERED if r.service == "orders"]
    }
    (merged,) = merge_registered([service], registered)
    rows = subset_rows(service, served_endpoints(service, REGISTERED))
    for subset, row in zip(service.subsets, rows[1:], strict=True):
        assignment = build_load_assignment(merged, subset=subset)
        served = sum(len(locality.lb_endpoints) for locality in assignment.endpoints)
        assert row[2].split()[0] == str(served), (subset.name, row)


def test_registrations_are_taken_once_per_node() -> None:
    first = node_pb2.Registration(service="orders", address="10.0.0.9:1")
    other = node_pb2.Registration(service="billing", address="10.0.0.8:1")
    nodes = [
        admin_pb2.NodeStatus(node_id="b", stream_id="1", registrations=[first, other]),
        admin_pb2.NodeStatus(node_id="b", stream_id="2", registrations=[first, other]),
        admin_pb2.NodeStatus(node_id="a", registrations=[REGISTERED[0]]),
    ]
    assert registrations_of(nodes, "orders") == [REGISTERED[0], first]


def test_apply_warns_of_timeouts_raw_grpcio_channels_would_fire_at_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from control.meshctl.commands import _warn_about

    (service,) = load_documents(
        "name: orders\npolicy: {timeout: 5s}\n"
        "routes: [{match: {method: /a.B/C}, policy: {timeout: 500ms}}, {policy: {timeout: 3s}}]\n",
        "orders.yaml",
    )
    _warn_about([service])
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(
        "meshctl: warning: service/orders: routes[0].policy.timeout 0.5s is under 2s"
    )
