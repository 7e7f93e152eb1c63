"""Everything ``meshctl validate`` accepts is accepted by grpcio's own xDS client.

One table names every enumerated option of the service config (each load balancing policy,
retry code, outlier detection form, health-check and circuit-breaker field, the endpoint
fields). Each row becomes a service; grpcio's real xDS client, connected straight to the
control server, calls every one of them. Every call must succeed and ``meshctl status`` must
show the client's stream with every type ACKed and no NACK. New config fields add rows here.

A second table holds what gRPC's xDS clients would reject: ``meshctl validate`` refuses each,
naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh_core.names import client_listener_name
from mesh_core.policy import GRPC_STATUS_NAMES, RETRYABLE_STATUS_NAMES
from tests.conftest import run_cli, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import meshctl, status_json

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

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
                    "circuit_breaker": {"max_requests": 100},
                    "outlier_detection": {"failure_percentage": FAILURE_PERCENTAGE},
                    "health_check": {"interval": "5s"},
                },
            },
        ),
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
    for document in documents:
        if not document.get("policy"):
            document.pop("policy", None)
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return [str(d["name"]) for d in documents]


def test_grpcio_acks_every_option_and_calls_succeed(procs: MeshProcesses, tmp_path: Path) -> None:
    # grpcio opens one ADS stream per channel target (gRFC A71), all with one node id.
    _, control = procs.start_control("--max-streams-per-node", "0")
    _, backend = procs.start_backend("backend-1")
    _, spare = procs.start_backend("backend-2")
    path = tmp_path / "conformance.yaml"
    names = write_services(path, backend, spare)
    assert len(names) == len(set(names))

    validated = run_cli("control.meshctl", "validate", "-f", str(path))
    assert validated.returncode == 0, validated.stdout + validated.stderr
    meshctl(control, "apply", "-f", str(path))

    # Every service through its own Listener (what any grpcio client dials) and through the
    # alias the client library dials.
    alias_only = {f"conf-{row}" for row, _ in ALIAS_ONLY}
    targets = [n for n in names if n not in alias_only]
    targets += [client_listener_name(n) for n in names]
    caller = procs.python(
        "caller",
        "tests.xds_caller",
        "--server",
        control,
        "--node-id",
        "conformance",
        "--hold",
        *targets,
    )

    def all_called() -> bool:
        assert caller.alive, caller.errors()[-3000:]
        return len(caller.lines()) == len(targets)

    wait_for(all_called, 150, "a call to every service")
    records = [json.loads(line) for line in caller.lines()]
    assert [r["target"] for r in records] == [f"xds:///{t}" for t in targets]
    failed = [r for r in records if not r["ok"]]
    assert not failed, failed

    status = status_json(control)
    streams = [n for n in status["nodes"] if n["node_id"] == "conformance"]
    assert streams, status
    for node in streams:
        for t in node["types"]:
            assert t["last_nack"] is None, t
            assert t["version_sent"] == t["version_acked"], t


# What grpcio (or any gRPC xDS client) would reject: validate refuses it, naming the field.
REFUSED: list[tuple[str, str, str]] = [
    (
        "lb-least-request",
        "policy: {lb: least_request}",
        "policy.lb: 'least_request' is not supported",
    ),
    ("lb-unknown", "policy: {lb: maglev}", "policy.lb: unknown load balancing policy 'maglev'"),
    *[
        (
            f"retry-{code.lower()}",
            f"policy: {{retry: {{attempts: 2, retry_on: [{code}]}}}}",
            f"policy.retry.retry_on[0]: '{code}' is not retryable",
        )
        for code in ("NOT_FOUND", "UNKNOWN", "ABORTED", "PERMISSION_DENIED")
    ],
    ("retry-attempts", "policy: {retry: {attempts: 6}}", "policy.retry.attempts: must be between"),
    (
        "retry-backoff-without-base",
        "policy: {retry: {attempts: 2, backoff: {max: 1s}}}",
        "policy.retry.backoff.base: required",
    ),
    (
        "outlier-percent",
        "policy: {outlier_detection: {max_ejection_percent: 101}}",
        "policy.outlier_detection.max_ejection_percent: must be between 0 and 100",
    ),
    (
        "outlier-threshold",
        "policy: {outlier_detection: {failure_percentage: {threshold: 150}}}",
        "policy.outlier_detection.failure_percentage.threshold: must be between 0 and 100",
    ),
    ("timeout-zero", "policy: {timeout: 0s}", "policy.timeout: must be greater than 0"),
]


@pytest.mark.parametrize(("row", "policy", "expected"), REFUSED, ids=[r[0] for r in REFUSED])
def test_validate_refuses_what_grpc_clients_reject(
    tmp_path: Path, row: str, policy: str, expected: str
) -> None:
    path = tmp_path / f"{row}.yaml"
    path.write_text(f"name: orders\nendpoints: [{{address: 10.0.0.5:50051}}]\n{policy}\n")
    result = run_cli("control.meshctl", "validate", "-f", str(path))
    assert result.returncode != 0
    assert f"{path}: document 1 (orders): {expected}" in result.stdout, result.stdout
