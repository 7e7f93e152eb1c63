"""The conformance table: every option of the service config, one row each (each load
balancing policy and what ring_hash hashes on, retry code, outlier detection form,
health-check and circuit-breaker field, the endpoint fields, the traffic rules: subsets,
routes, splits, faults, the zones, and who may hold a service's identity). New config fields
add rows here; grpcio's xDS client (:mod:`tests.e2e.test_conformance`) and Envoy
(:mod:`tests.e2e.test_envoy_xds`) are both run against every row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mesh_core.policy import GRPC_STATUS_NAMES, RETRYABLE_STATUS_NAMES

BREAKER_FIELDS: dict[str, Any] = {
    "max_requests": 1000,
    "failure_rate": 0.5,
    "window": "10s",
    "min_requests": 20,
    "consecutive_failures": 5,
    "open_for": "30s",
    "max_open_for": "5m",
    "half_open_probes": 3,
    "slow_call": {"threshold": "1s", "rate": 0.8},
    "failure_codes": ["UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"],
}
FAILURE_PERCENTAGE: dict[str, Any] = {
    "threshold": 50,
    "minimum_hosts": 2,
    "request_volume": 10,
    "enforcement_percentage": 100,
}
SUCCESS_RATE: dict[str, Any] = {
    "stdev_factor": 1900,
    "minimum_hosts": 2,
    "request_volume": 10,
    "enforcement_percentage": 50,
}
EJECTION: dict[str, Any] = {
    "interval": "1s",
    "base_ejection_time": "30s",
    "max_ejection_time": "5m",
    "max_ejection_percent": 50,
}

# Ring bounds: gRPC's own cap at the top, and the smallest ring there is.
RING_SIZES: dict[str, Any] = {"min_ring_size": 16, "max_ring_size": 4096}
RING_OF_ONE: dict[str, Any] = {"min_ring_size": 1, "max_ring_size": 1}


def breaker_field(name: str, value: Any) -> dict[str, Any]:
    """A breaker policy setting one field (and the window the rates need)."""
    needs_window = name in ("failure_rate", "slow_call")
    return {name: value, **({"window": "10s"} if needs_window else {})}


# (row id, policy); every service has the backend as its endpoint unless the row says more.
POLICIES: list[tuple[str, dict[str, Any]]] = [
    ("no-policy", {}),
    ("lb-default", {"lb": ""}),
    ("lb-round-robin", {"lb": "round_robin"}),
    ("lb-ring-hash", {"lb": "ring_hash"}),
    ("hash-header", {"lb": "ring_hash", "hash": {"header": "x-user-id"}}),
    ("hash-channel", {"lb": "ring_hash", "hash": {"channel": True}}),
    (
        "hash-ring-sizes",
        {"lb": "ring_hash", "hash": {"header": "x-user-id", **RING_SIZES}},
    ),
    ("hash-ring-of-one", {"lb": "ring_hash", "hash": {"channel": True, **RING_OF_ONE}}),
    ("hash-ring-min-only", {"lb": "ring_hash", "hash": {"channel": True, "min_ring_size": 4096}}),
    ("hash-ring-max-only", {"lb": "ring_hash", "hash": {"channel": True, "max_ring_size": 1024}}),
    ("timeout", {"timeout": "5s"}),
    *[
        (f"retry-{code.lower().replace('_', '-')}", {"retry": {"attempts": 3, "retry_on": [code]}})
        for code in RETRYABLE_STATUS_NAMES
    ],
    ("retry-default-codes", {"retry": {"attempts": 2}}),
    ("retry-one-attempt", {"retry": {"attempts": 1, "retry_on": ["UNAVAILABLE"]}}),
    (
        "retry-all-codes-backoff",
        {
            "retry": {
                "attempts": 5,
                "retry_on": list(RETRYABLE_STATUS_NAMES),
                "backoff": {"base": "25ms", "max": "250ms"},
            }
        },
    ),
    ("retry-backoff-base-only", {"retry": {"attempts": 2, "backoff": {"base": "10ms"}}}),
    *[
        (f"breaker-{name.replace('_', '-')}", {"circuit_breaker": breaker_field(name, value)})
        for name, value in BREAKER_FIELDS.items()
    ],
    ("breaker-all", {"circuit_breaker": BREAKER_FIELDS}),
    (
        "outlier-failure-percentage",
        {"outlier_detection": {"failure_percentage": FAILURE_PERCENTAGE}},
    ),
    ("outlier-success-rate", {"outlier_detection": {"success_rate": SUCCESS_RATE}}),
    (
        "outlier-both-and-ejection",
        {
            "outlier_detection": {
                "failure_percentage": FAILURE_PERCENTAGE,
                "success_rate": SUCCESS_RATE,
                **EJECTION,
            }
        },
    ),
    ("outlier-ejection-only", {"outlier_detection": EJECTION}),
    ("health-check-defaults", {"health_check": {}}),
    (
        "health-check-all",
        {
            "health_check": {
                "interval": "2s",
                "timeout": "500ms",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "service_name": "mesh.demo.v1.EchoService",
            }
        },
    ),
    (
        "everything",
        {
            "timeout": "5s",
            "lb": "ring_hash",
            "hash": {"header": "x-user-id", **RING_SIZES},
            "retry": {"attempts": 3, "retry_on": ["UNAVAILABLE"], "backoff": {"base": "25ms"}},
            "circuit_breaker": BREAKER_FIELDS,
            "outlier_detection": {"failure_percentage": FAILURE_PERCENTAGE, **EJECTION},
            "health_check": {"interval": "5s"},
        },
    ),
]


# Rows served as written but called only through the alias Listener the client library dials
# (``mesh-client/NAME``): with a timeout under ~2 s grpcio fails every call on the plain
# Listener at once (grpc/grpc#40633), which the alias exists to avoid.
ALIAS_ONLY: list[tuple[str, dict[str, Any]]] = [
    ("timeout-short", {"timeout": "500ms"}),
    ("timeout-short-retry", {"timeout": "300ms", "retry": {"attempts": 2}}),
]


CALLER_ZONE = "eu-1a"
"""The zone of the clients run against the table (grpcio's bootstrap, Envoy's node): rows
with endpoints in it and in another are served with priorities (own zone 0, others 1)."""

LOCALITY_POLICIES: list[tuple[str, dict[str, Any]]] = [
    ("zones-own-zone-first", {}),
    ("zones-prefer-own-zone-false", {"locality": {"prefer_own_zone": False}}),
    ("zones-prefer-own-zone-true", {"locality": {"prefer_own_zone": True}}),
    ("zones-spill-over-below", {"locality": {"spill_over_below": 0.5}}),
    ("zones-spill-over-never", {"locality": {"spill_over_below": 0}}),
]


def zone_rows(backend: str, spare: str) -> list[tuple[str, dict[str, Any]]]:
    """Rows of zone-aware routing (gRFC A27/A56): each row's fields besides ``name``. The
    caller's zone holds ``backend``; ``spare`` is in another zone."""
    two_zones = [
        {"address": backend, "zone": CALLER_ZONE, "weight": 2},
        {"address": spare, "zone": "eu-1b"},
    ]
    rows = [(row, {"endpoints": two_zones, "policy": policy}) for row, policy in LOCALITY_POLICIES]
    elsewhere = [{"address": backend, "zone": "eu-1b"}, {"address": spare, "zone": "eu-1c"}]
    rows.append(("zones-none-in-the-callers", {"endpoints": elsewhere}))
    rows.append(
        (
            "zones-with-subsets",
            {
                "endpoints": [
                    {**two_zones[0], "labels": {"version": "v1"}},
                    {**two_zones[1], "labels": {"version": "v2"}},
                ],
                "subsets": SUBSETS,
                "routes": [{"to": {"v1": 50, "v2": 50}}],
            },
        )
    )
    return rows


def endpoint_rows(backend: str, spare: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rows of endpoint forms; ``spare`` is a second, live backend."""
    return [
        (
            "endpoint-zone-weight-metadata",
            [
                {"address": backend, "zone": "eu-1a", "weight": 3, "metadata": {"version": "v1"}},
                {"address": spare, "zone": "eu-1b", "weight": 1_000_000},
            ],
        ),
        (
            "endpoint-draining-beside-a-live-one",
            [
                {"address": backend},
                {"address": spare, "draining": True},
            ],
        ),
    ]


ECHO = "/mesh.demo.v1.EchoService/Echo"
NO_SUCH_METHOD = "/mesh.demo.v1.EchoService/Nothing"
SUBSETS = [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]
TO_V1 = {"v1": 100}
# A share of the calls small enough that the row's one call is not hit (one in a million).
RARE = 0.0001


def traffic_rows(backend: str, spare: str) -> list[tuple[str, dict[str, Any]]]:
    """Rows of subsets, routes, splits and faults (gRFC A28, A33): each row's fields besides
    ``name``. Both subsets have a live backend, so every route's calls succeed."""
    endpoints = [
        {"address": backend, "labels": {"version": "v1", "track": "stable"}},
        {"address": spare, "labels": {"version": "v2"}},
    ]

    def routes(*items: dict[str, Any]) -> dict[str, Any]:
        return {"endpoints": endpoints, "subsets": SUBSETS, "routes": list(items)}

    def header(match: dict[str, Any]) -> dict[str, Any]:
        return {"match": {"headers": {"x-mesh-test": match}}, "to": {"v2": 1}}

    return [
        ("subsets-no-routes", {"endpoints": endpoints, "subsets": SUBSETS}),
        (
            "subset-two-labels",
            {
                "endpoints": endpoints,
                "subsets": [{"name": "stable", "labels": {"version": "v1", "track": "stable"}}],
                "routes": [{"to": {"stable": 1}}],
            },
        ),
        ("split-90-10", routes({"to": {"v1": 90, "v2": 10}})),
        ("split-with-zero", routes({"to": {"v1": 0, "v2": 5}})),
        ("route-to-one-subset", routes({"to": TO_V1})),
        ("route-method-exact", routes({"match": {"method": ECHO}, "to": TO_V1})),
        (
            "route-method-service",
            routes({"match": {"method": "/mesh.demo.v1.EchoService/*"}, "to": TO_V1}),
        ),
        ("route-method-elsewhere", routes({"match": {"method": NO_SUCH_METHOD}, "to": {"v2": 1}})),
        ("header-exact", routes(header({"exact": "yes"}))),
        ("header-exact-empty", routes(header({"exact": ""}))),
        ("header-prefix", routes(header({"prefix": "ca"}))),
        ("header-regex", routes(header({"regex": "v[0-9]+(\\.[0-9]+)?"}))),
        ("header-present", routes(header({"present": True}))),
        ("header-absent", routes(header({"present": False}))),
        ("header-inverted", routes(header({"exact": "yes", "invert": True}))),
        (
            "headers-and-method",
            routes(
                {
                    "match": {
                        "method": ECHO,
                        "headers": {"x-a": {"exact": "1"}, "x-b": {"present": True}},
                    },
                    "to": TO_V1,
                }
            ),
        ),
        (
            "route-timeout",
            routes({"match": {"method": ECHO}, "to": TO_V1, "policy": {"timeout": "5s"}}),
        ),
        (
            "route-retry",
            routes(
                {
                    "to": TO_V1,
                    "policy": {
                        "retry": {
                            "attempts": 3,
                            "retry_on": ["UNAVAILABLE", "CANCELLED"],
                            "backoff": {"base": "25ms", "max": "250ms"},
                        }
                    },
                }
            ),
        ),
        ("route-name", routes({"name": "canary", "to": {"v1": 9, "v2": 1}})),
        # A hash on every route: one with its own policy, one to a subset, a split, and the
        # default route the server adds.
        (
            "hash-header-routes",
            {
                **routes(
                    {"match": {"method": ECHO}, "to": TO_V1, "policy": {"timeout": "5s"}},
                    {"match": {"headers": {"x-canary": {"exact": "yes"}}}, "to": {"v2": 1}},
                    {"match": {"method": NO_SUCH_METHOD}, "to": {"v1": 1, "v2": 1}},
                ),
                "policy": {"lb": "ring_hash", "hash": {"header": "x-user-id", **RING_SIZES}},
            },
        ),
        (
            "hash-channel-split",
            {
                **routes({"to": {"v1": 50, "v2": 50}}),
                "policy": {"lb": "ring_hash", "hash": {"channel": True}},
            },
        ),
        (
            "fault-delay",
            routes({"to": TO_V1, "fault": {"delay": {"fixed": "5ms", "percent": 100}}}),
        ),
        (
            "fault-abort",
            routes({"to": TO_V1, "fault": {"abort": {"status": "UNAVAILABLE", "percent": RARE}}}),
        ),
        *[
            (
                f"fault-abort-{code.lower().replace('_', '-')}",
                routes({"fault": {"abort": {"status": code, "percent": RARE}}}),
            )
            for code in GRPC_STATUS_NAMES
        ],
        (
            "fault-both-max-active",
            routes(
                {
                    "to": TO_V1,
                    "fault": {
                        "delay": {"fixed": "1ms", "percent": 50.5},
                        "abort": {"status": "INTERNAL", "percent": 0},
                        "max_active_faults": 10,
                    },
                }
            ),
        ),
        (
            "fault-on-a-matched-route",
            routes(
                {
                    "match": {"method": NO_SUCH_METHOD},
                    "fault": {"abort": {"status": "INTERNAL", "percent": 100}},
                },
                {"to": TO_V1},
            ),
        ),
        (
            "everything-traffic",
            {
                **routes(
                    {"name": "refund", "match": {"method": NO_SUCH_METHOD}, "to": {"v2": 100}},
                    {
                        "match": {"headers": {"x-canary": {"exact": "yes"}}},
                        "to": {"v2": 100},
                        "policy": {"timeout": "2s"},
                    },
                    {
                        "to": {"v1": 90, "v2": 10},
                        "fault": {
                            "abort": {"status": "UNAVAILABLE", "percent": RARE},
                            "delay": {"fixed": "1ms", "percent": 10},
                        },
                    },
                ),
                "policy": {
                    "timeout": "5s",
                    "retry": {"attempts": 2},
                    "lb": "ring_hash",
                    "hash": {"channel": True, **RING_OF_ONE},
                    "circuit_breaker": {"max_requests": 100},
                    "outlier_detection": {"failure_percentage": FAILURE_PERCENTAGE},
                    "health_check": {"interval": "5s"},
                },
            },
        ),
    ]


# Who may hold each service's identity (``security``): carried in our own policy resource,
# nothing in the standard four changes yet (mode strict is enforced by the client/server side,
# which adds its rows then).
SECURITY_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("security-hosts", {"hosts": ["conformance", "web-*", "edge-[0-9]", "db-[!x]?"]}),
    ("security-disabled", {"hosts": ["*"], "mode": "disabled"}),
]


def write_services(path: Path, backend: str, spare: str) -> list[str]:
    documents = [
        {"name": f"conf-{row}", "endpoints": [{"address": backend}], "policy": policy}
        for row, policy in [*POLICIES, *ALIAS_ONLY]
    ]
    documents += [
        {"name": f"conf-{row}", "endpoints": endpoints}
        for row, endpoints in endpoint_rows(backend, spare)
    ]
    documents += [{"name": f"conf-{row}", **fields} for row, fields in traffic_rows(backend, spare)]
    documents += [{"name": f"conf-{row}", **fields} for row, fields in zone_rows(backend, spare)]
    documents += [
        {"name": f"conf-{row}", "endpoints": [{"address": backend}], "security": security}
        for row, security in SECURITY_ROWS
    ]
    for document in documents:
        if not document.get("policy"):
            document.pop("policy", None)
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return [str(d["name"]) for d in documents]
