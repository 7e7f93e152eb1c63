from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf.duration_pb2 import Duration

from control.config import (
    dump_documents,
    dump_yaml,
    load_documents,
    load_path,
    service_to_dict,
    validate_service,
)
from mesh.v1 import config_pb2
from mesh_core.durations import format_duration, parse_duration
from mesh_core.errors import ConfigError

DESIGN_EXAMPLE = """\
name: orders
endpoints:
  - address: 10.0.0.5:50051
    zone: eu-1a
policy:
  timeout: 2s
  retry: {attempts: 3, retry_on: [UNAVAILABLE], backoff: {base: 25ms, max: 250ms}}
  circuit_breaker: {max_requests: 1000, failure_rate: 0.5, window: 10s, min_requests: 20,
                    consecutive_failures: 5, open_for: 30s, half_open_probes: 3,
                    slow_call: {threshold: 1s, rate: 0.8}}
  outlier_detection: {failure_percentage: {threshold: 50, minimum_hosts: 2}, base_ejection_time: 30s,
                      max_ejection_percent: 50}
  health_check: {interval: 5s, timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 2}
"""  # noqa: E501 - copied verbatim from DESIGN.md


def d(seconds: int = 0, nanos: int = 0) -> Duration:
    return Duration(seconds=seconds, nanos=nanos)


def problems_of(text: str, source: str = "orders.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_documents(text, source)
    return info.value.problems


# ---------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2s", d(2)),
        ("250ms", d(0, 250_000_000)),
        ("1.5s", d(1, 500_000_000)),
        ("100us", d(0, 100_000)),
        ("1m", d(60)),
        ("1h", d(3600)),
        ("0.25s", d(0, 250_000_000)),
        ("1m30s", d(90)),
        ("1h2m3.5s", d(3723, 500_000_000)),
        ("7ns", d(0, 7)),
        ("0s", d(0)),
        (3, d(3)),
        (0.5, d(0, 500_000_000)),
        ("2", d(2)),
        (" 2s ", d(2)),
    ],
)
def test_parse_duration(text: str | int | float, expected: Duration) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1s", "must not be negative"),
        (-2, "must not be negative"),
        ("2 parsecs", "expected a number with a unit"),
        ("", "expected a number with a unit"),
        ("s", "expected a number with a unit"),
        ("1s2", "expected a number with a unit"),
        ("0.1ns", "finer than a nanosecond"),
        (float("inf"), "must be finite"),
        (True, "expected a string"),
    ],
)
def test_parse_duration_rejects(text: str | int | float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_duration(text)


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (d(2), "2s"),
        (d(0, 250_000_000), "250ms"),
        (d(90), "1m30s"),
        (d(1, 500_000_000), "1.5s"),
        (d(3600), "1h"),
        (d(0, 100_000), "100us"),
        (d(0, 1_500_000), "1.5ms"),
        (d(0, 7), "7ns"),
        (d(0), "0s"),
        (d(3723, 500_000_000), "1h2m3.5s"),
    ],
)
def test_format_duration(duration: Duration, text: str) -> None:
    assert format_duration(duration) == text
    assert parse_duration(text) == duration


# ---------------------------------------------------------------------------- loading


def test_design_example_loads() -> None:
    [svc] = load_documents(DESIGN_EXAMPLE, "orders.yaml")
    assert svc.name == "orders"
    assert [(e.address, e.zone) for e in svc.endpoints] == [("10.0.0.5:50051", "eu-1a")]
    p = svc.policy
    assert p.timeout == d(2)
    assert p.retry.attempts == 3
    assert list(p.retry.retry_on) == ["UNAVAILABLE"]
    assert p.retry.backoff.base == d(0, 25_000_000)
    assert p.retry.backoff.max == d(0, 250_000_000)
    cb = p.circuit_breaker
    assert (cb.max_requests, cb.failure_rate, cb.min_requests) == (1000, 0.5, 20)
    assert (cb.consecutive_failures, cb.half_open_probes) == (5, 3)
    assert cb.window == d(10)
    assert cb.open_for == d(30)
    assert cb.slow_call.threshold == d(1)
    assert cb.slow_call.rate == 0.8
    od = p.outlier_detection
    assert od.failure_percentage.threshold == 50
    assert od.failure_percentage.minimum_hosts == 2
    assert od.base_ejection_time == d(30)
    assert od.max_ejection_percent == 50
    assert not od.HasField("success_rate")
    hc = p.health_check
    assert (hc.interval, hc.timeout) == (d(5), d(1))
    assert (hc.unhealthy_threshold, hc.healthy_threshold) == (3, 2)
    assert p.lb == ""


def test_json_and_several_documents() -> None:
    text = (
        '{"name": "a", "endpoints": [{"address": "[::1]:80", "weight": 3}]}\n'
        "---\n"
        "---\n"
        "name: b\n"
        "endpoints: [{address: '10.1.2.3:5432', metadata: {version: 'v2'}}]\n"
        "policy: {retry: {attempts: 2, retry_on: [unavailable, deadline-exceeded]}}\n"
        "---\n"
    )
    a, b = load_documents(text, "x.yaml")
    assert (a.name, a.endpoints[0].address, a.endpoints[0].weight) == ("a", "[::1]:80", 3)
    assert b.endpoints[0].metadata["version"] == "v2"
    assert list(b.policy.retry.retry_on) == ["UNAVAILABLE", "DEADLINE_EXCEEDED"]


def test_empty_text_gives_no_services() -> None:
    assert load_documents("", "x.yaml") == []
    assert load_documents("---\n# nothing\n", "x.yaml") == []


P = "orders.yaml: document 1 (orders): "


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "name: orders\npolicy: {retry: {atempts: 3}}\n",
            [
                P + "policy.retry: unknown field 'atempts' (did you mean 'attempts'?)",
                P + "policy.retry.attempts: must be between 1 and 5",
            ],
            id="unknown-field-suggestion",
        ),
        pytest.param(
            "name: orders\nflavour: vanilla\n",
            [P + "unknown field 'flavour'"],
            id="unknown-field-no-suggestion",
        ),
        pytest.param(
            "name: orders\npolicy: {circuit_breaker: {max_requests: lots}}\n",
            [P + "policy.circuit_breaker.max_requests: expected an integer, got a string"],
            id="string-for-number",
        ),
        pytest.param(
            "name: orders\npolicy: {retry: {attempts: true}}\n",
            [P + "policy.retry.attempts: expected an integer, got a boolean"],
            id="bool-for-int",
        ),
        pytest.param(
            "name: orders\npolicy: {circuit_breaker: {failure_rate: yes}}\n",
            [P + "policy.circuit_breaker.failure_rate: expected a number, got a boolean"],
            id="bool-for-double",
        ),
        pytest.param(
            "name: orders\nendpoints: {address: '10.0.0.1:1'}\n",
            [P + "endpoints: expected a list, got a mapping"],
            id="map-for-list",
        ),
        pytest.param(
            "name: orders\npolicy: [timeout]\n",
            [P + "policy: expected a mapping, got a list"],
            id="list-for-message",
        ),
        pytest.param(
            "name: orders\nendpoints: [{address: '10.0.0.1:1', metadata: [x]}]\n",
            [P + "endpoints[0].metadata: expected a mapping, got a list"],
            id="list-for-map",
        ),
        pytest.param(
            "name: orders\nendpoints: [{address: '10.0.0.1:1', metadata: {version: 2}}]\n",
            [P + "endpoints[0].metadata.version: expected a string, got an integer (quote it)"],
            id="int-for-map-value",
        ),
        pytest.param(
            "name: orders\nendpoints: [{address: '10.0.0.1:1', weight: -1}]\n",
            [P + "endpoints[0].weight: must not be negative, got -1"],
            id="negative-uint",
        ),
        pytest.param(
            "name: orders\npolicy: {timeout: 2 parsecs}\n",
            [
                P + "policy.timeout: invalid duration '2 parsecs': expected a number with a "
                "unit, like '2s', '250ms', '1m30s' (units h, m, s, ms, us, ns)"
            ],
            id="bad-duration",
        ),
        pytest.param(
            "name: orders\npolicy: {timeout: 2d}\n",
            [
                P + "policy.timeout: invalid duration '2d': expected a number with a "
                "unit, like '2s', '250ms', '1m30s' (units h, m, s, ms, us, ns)"
            ],
            id="unknown-duration-unit",
        ),
        pytest.param(
            "name: orders\npolicy: {timeout: 25h}\n",
            [P + "policy.timeout: must be at most 24h (1 day), got 25h"],
            id="duration-over-a-day",
        ),
        pytest.param(
            "name: orders\npolicy: {timeout: 0s}\n",
            [P + "policy.timeout: must be greater than 0, got 0s"],
            id="zero-timeout",
        ),
        pytest.param(
            "name: orders\npolicy: {retry: {attempts: 9}}\n",
            [P + "policy.retry.attempts: must be between 1 and 5"],
            id="attempts-9",
        ),
        pytest.param(
            "name: orders\npolicy: {retry: {attempts: 2, retry_on: [NOT_FOUND, bogus]}}\n",
            [
                P + "policy.retry.retry_on[0]: 'NOT_FOUND' is not retryable; expected one of "
                "CANCELLED, DEADLINE_EXCEEDED, INTERNAL, RESOURCE_EXHAUSTED, UNAVAILABLE",
                P + "policy.retry.retry_on[1]: unknown gRPC status 'BOGUS'; expected one of "
                "CANCELLED, DEADLINE_EXCEEDED, INTERNAL, RESOURCE_EXHAUSTED, UNAVAILABLE",
            ],
            id="bad-retry-on",
        ),
        pytest.param(
            "name: orders\npolicy: {retry: {attempts: 2, backoff: {base: 1s, max: 100ms}}}\n",
            [P + "policy.retry.backoff.max: must be at least base (1s), got 100ms"],
            id="backoff-max-below-base",
        ),
        pytest.param(
            "name: orders\nendpoints: [{address: '10.0.0.1:1'}, {address: '10.0.0.5'}]\n",
            [P + "endpoints[1].address: must be host:port, got '10.0.0.5'"],
            id="address-without-port",
        ),
        pytest.param(
            "name: orders\nendpoints: [{address: '10.0.0.5:70000'}]\n",
            [P + "endpoints[0].address: port must be between 1 and 65535, got 70000"],
            id="port-out-of-range",
        ),
        pytest.param(
            "name: orders\nendpoints: [{address: '::1:80'}]\n",
            [
                P + "endpoints[0].address: IPv6 hosts must be in brackets, like [::1]:50051, "
                "got '::1:80'"
            ],
            id="ipv6-without-brackets",
        ),
        pytest.param(
            "name: orders\nendpoints: [{address: 'bad host:80'}]\n",
            [
                P + "endpoints[0].address: host must be an IP address (xDS clients connect to "
                "addresses, they do not resolve names), got 'bad host'"
            ],
            id="bad-hostname",
        ),
        pytest.param(
            "name: orders\nendpoints: [{zone: eu-1a}]\n",
            [P + "endpoints[0].address: required"],
            id="missing-address",
        ),
        pytest.param(
            "name: orders\nendpoints: [{address: '10.0.0.1:1'}, {address: '10.0.0.2:2'},"
            " {address: '10.0.0.1:1'}]\n",
            [P + "endpoints[2].address: duplicate address '10.0.0.1:1', also endpoints[0]"],
            id="duplicate-endpoint",
        ),
        pytest.param(
            "name: orders\nendpoints: [{address: '10.0.0.1:1', weight: 2000000}]\n",
            [P + "endpoints[0].weight: must be at most 1000000, got 2000000"],
            id="weight-too-large",
        ),
        pytest.param(
            "name: Orders_1\n",
            [
                "orders.yaml: document 1 (Orders_1): name: must be a lowercase DNS name "
                "(letters a-z, digits and '-', starting and ending with a letter or digit, "
                "labels separated by '.'), got 'Orders_1'"
            ],
            id="bad-name",
        ),
        pytest.param(
            "endpoints: []\n",
            ["orders.yaml: document 1: name: required"],
            id="missing-name",
        ),
        pytest.param(
            "name: 42\n",
            ["orders.yaml: document 1: name: expected a string, got an integer (quote it)"],
            id="name-not-a-string",
        ),
        pytest.param(
            "name: orders\npolicy: {lb: random}\n",
            [
                P + "policy.lb: unknown load balancing policy 'random'; expected one of "
                "round_robin, ring_hash"
            ],
            id="bad-lb",
        ),
        pytest.param(
            "name: orders\npolicy: {lb: least_request}\n",
            [
                P + "policy.lb: 'least_request' is not supported: gRPC's xDS clients implement "
                "it only in grpc-java; grpcio and the other languages reject the whole cluster, "
                "and every call to the service fails; use one of round_robin, ring_hash"
            ],
            id="lb-grpcio-rejects",
        ),
        pytest.param(
            "name: orders\nendpoints:\n"
            + "".join(
                f"  - {{address: 10.0.{i // 250}.{i % 250 + 1}:80, weight: 1000000}}\n"
                for i in range(4295)
            ),
            [
                P + "endpoints: the weights add up to 4295000000, more than xDS allows "
                "(4294967295); lower them or split the service"
            ],
            id="weights-overflow-uint32",
        ),
        pytest.param(
            "name: orders\npolicy: {circuit_breaker: {failure_rate: 1.5}}\n",
            [
                P + "policy.circuit_breaker.failure_rate: must be between 0 and 1, got 1.5",
                P + "policy.circuit_breaker.window: required when failure_rate or slow_call is set",
            ],
            id="breaker-rate",
        ),
        pytest.param(
            "name: orders\npolicy: {circuit_breaker: {open_for: 30s, max_open_for: 10s,"
            " half_open_probes: 5000, failure_codes: [internal, OK]}}\n",
            [
                P + "policy.circuit_breaker.max_open_for: must be at least open_for (30s), got 10s",
                P + "policy.circuit_breaker.half_open_probes: must be at most 1000, got 5000",
                P + "policy.circuit_breaker.failure_codes[1]: unknown gRPC status 'OK'; "
                "expected one of CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, "
                "NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, "
                "FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, "
                "UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED",
            ],
            id="breaker-open-for",
        ),
        pytest.param(
            "name: orders\npolicy: {outlier_detection: {max_ejection_percent: 150,"
            " failure_percentage: {threshold: 101}}}\n",
            [
                P + "policy.outlier_detection.max_ejection_percent: must be between 0 and 100, "
                "got 150",
                P + "policy.outlier_detection.failure_percentage.threshold: must be between 0 "
                "and 100, got 101",
            ],
            id="outlier-percentages",
        ),
        pytest.param(
            "name: orders\npolicy: {health_check: {interval: 1s, timeout: 2s}}\n",
            [P + "policy.health_check.timeout: must be at most interval (1s), got 2s"],
            id="health-timeout-above-interval",
        ),
        pytest.param(
            "name: orders\nname: billing\n",
            ["orders.yaml: line 2: duplicate key 'name'"],
            id="duplicate-key",
        ),
        pytest.param(
            "name: orders\nendpoints:\n  - address: 10.0.0.1:1\n zone: x\n",
            ["orders.yaml: line 4: expected <block end>, but found '<block mapping start>'"],
            id="yaml-syntax-error",
        ),
        pytest.param(
            "name: orders\n---\n- a\n- b\n",
            ["orders.yaml: document 2: expected a mapping of service fields, got a list"],
            id="non-mapping-document",
        ),
        pytest.param(
            "name: orders\n---\nname: billing\n---\nname: orders\n",
            [
                "orders.yaml: document 3 (orders): name: duplicate service 'orders', "
                "first defined in document 1"
            ],
            id="duplicate-service",
        ),
    ],
)
def test_bad_documents(text: str, expected: list[str]) -> None:
    assert problems_of(text) == expected


def test_yaml_syntax_error_line() -> None:
    text = "name: orders\npolicy:\n  timeout: [2s\n"
    [problem] = problems_of(text)
    assert problem.startswith("orders.yaml: line 4: ")


def test_every_problem_of_every_document_is_reported() -> None:
    text = (
        "name: orders\n"
        "endpoints:\n"
        "  - address: 10.0.0.5\n"
        "  - address: 10.0.0.6:1\n"
        "    wieght: 3\n"
        "policy:\n"
        "  timeout: soon\n"
        "  retry: {attempts: 9}\n"
        "---\n"
        "name: billing\n"
        "policy: {lb: random}\n"
        "---\n"
        "42\n"
    )
    assert problems_of(text) == [
        P + "endpoints[1]: unknown field 'wieght' (did you mean 'weight'?)",
        P + "policy.timeout: invalid duration 'soon': expected a number with a unit, like "
        "'2s', '250ms', '1m30s' (units h, m, s, ms, us, ns)",
        P + "endpoints[0].address: must be host:port, got '10.0.0.5'",
        P + "policy.retry.attempts: must be between 1 and 5",
        "orders.yaml: document 2 (billing): policy.lb: unknown load balancing policy 'random'; "
        "expected one of round_robin, ring_hash",
        "orders.yaml: document 3: expected a mapping of service fields, got an integer",
    ]


def test_config_error_message_joins_problems() -> None:
    with pytest.raises(ConfigError, match=r"must be between 1 and 5"):
        load_documents("name: orders\npolicy: {retry: {attempts: 0}}\n", "orders.yaml")


# ---------------------------------------------------------------------------- validate_service


def test_validate_service_without_source_prefix() -> None:
    svc = config_pb2.Service(name="orders")
    svc.policy.retry.attempts = 9
    svc.endpoints.add(address="10.0.0.1:0")
    assert validate_service(svc) == [
        "endpoints[0].address: port must be between 1 and 65535, got 0",
        "policy.retry.attempts: must be between 1 and 5",
    ]


def test_validate_service_accepts_valid() -> None:
    svc = config_pb2.Service(name="orders.eu-1")
    svc.endpoints.add(address="[2001:db8::1]:443")
    svc.endpoints.add(address="10.0.0.9:50051", weight=1_000_000)
    svc.endpoints.add(address="127.0.0.1:1")
    svc.policy.health_check.interval.FromMilliseconds(500)
    svc.policy.lb = "ring_hash"
    assert validate_service(svc) == []


# ---------------------------------------------------------------------------- round trips


def full_service() -> object:
    svc = config_pb2.Service(name="orders")
    svc.endpoints.add(address="10.0.0.5:50051", zone="eu-1a", weight=3, node_id="node-1")
    ep = svc.endpoints.add(address="[::1]:50052", draining=True)
    ep.metadata["version"] = "v2"
    ep.metadata["canary"] = "true"
    p = svc.policy
    p.timeout.FromMilliseconds(1500)
    p.lb = "ring_hash"
    p.retry.attempts = 4
    p.retry.retry_on.extend(["UNAVAILABLE", "RESOURCE_EXHAUSTED"])
    p.retry.backoff.base.FromMicroseconds(100)
    p.retry.backoff.max.FromSeconds(90)
    cb = p.circuit_breaker
    cb.max_requests = 1000
    cb.failure_rate = 0.25
    cb.window.FromSeconds(10)
    cb.min_requests = 20
    cb.consecutive_failures = 5
    cb.open_for.FromSeconds(30)
    cb.half_open_probes = 3
    cb.slow_call.threshold.FromNanoseconds(1_000_000_007)
    cb.slow_call.rate = 0.8
    cb.max_open_for.FromSeconds(3600)
    cb.failure_codes.extend(["INTERNAL", "DATA_LOSS"])
    od = p.outlier_detection
    od.failure_percentage.threshold = 50
    od.failure_percentage.minimum_hosts = 2
    od.failure_percentage.request_volume = 100
    od.failure_percentage.enforcement_percentage = 100
    od.success_rate.stdev_factor = 1900
    od.success_rate.minimum_hosts = 5
    od.success_rate.request_volume = 100
    od.success_rate.enforcement_percentage = 90
    od.interval.FromSeconds(10)
    od.base_ejection_time.FromSeconds(30)
    od.max_ejection_time.FromSeconds(300)
    od.max_ejection_percent = 50
    hc = p.health_check
    hc.interval.FromSeconds(5)
    hc.timeout.FromSeconds(1)
    hc.unhealthy_threshold = 3
    hc.healthy_threshold = 2
    hc.service_name = "orders.v1.Orders"
    return svc


def test_full_service_round_trips() -> None:
    svc = full_service()
    assert validate_service(svc) == []
    data = service_to_dict(svc)
    assert list(data) == ["name", "endpoints", "policy"]
    assert list(data["policy"]) == [
        "timeout",
        "retry",
        "circuit_breaker",
        "outlier_detection",
        "health_check",
        "lb",
    ]
    assert data["policy"]["timeout"] == "1.5s"
    assert data["policy"]["retry"]["backoff"] == {"base": "100us", "max": "1m30s"}
    assert data["endpoints"][1] == {
        "address": "[::1]:50052",
        "metadata": {"canary": "true", "version": "v2"},
        "draining": True,
    }
    [back] = load_documents(yaml.safe_dump(data, sort_keys=False), "x.yaml")
    assert back == svc
    [back] = load_documents(yaml.safe_dump(data), "x.yaml")
    assert back == svc


def test_design_example_round_trips() -> None:
    [svc] = load_documents(DESIGN_EXAMPLE, "orders.yaml")
    assert load_documents(yaml.safe_dump(service_to_dict(svc)), "x.yaml") == [svc]


def test_service_to_dict_only_set_fields() -> None:
    svc = config_pb2.Service(name="a")
    svc.policy.retry.attempts = 1
    assert service_to_dict(svc) == {"name": "a", "policy": {"retry": {"attempts": 1}}}


def test_dump_documents_round_trips() -> None:
    a = config_pb2.Service(name="a")
    a.endpoints.add(address="10.0.0.1:1")
    b = full_service()
    text = dump_documents([a, b])
    assert text.startswith("name: a\n")
    assert "\n---\n" in text
    assert load_documents(text, "x.yaml") == [a, b]
    assert dump_documents([]) == ""


# ---------------------------------------------------------------------------- load_path


def test_load_path_directory(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text("name: b\n---\nname: c\n")
    (tmp_path / "a.json").write_text('{"name": "a"}')
    (tmp_path / "notes.txt").write_text("not config")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.yaml").write_text("name: d\n")
    assert [s.name for s in load_path(tmp_path)] == ["a", "b", "c"]


def test_load_path_file_uses_path_as_given(tmp_path: Path) -> None:
    file = tmp_path / "orders.yaml"
    file.write_text("name: orders\npolicy: {retry: {attempts: 9}}\n")
    with pytest.raises(ConfigError) as info:
        load_path(file)
    assert info.value.problems == [
        f"{file}: document 1 (orders): policy.retry.attempts: must be between 1 and 5"
    ]


def test_load_path_duplicates_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: x\n---\nname: orders\n")
    (tmp_path / "b.yaml").write_text("name: orders\npolicy: {lb: random}\n")
    with pytest.raises(ConfigError) as info:
        load_path(tmp_path)
    assert info.value.problems == [
        "b.yaml: document 1 (orders): policy.lb: unknown load balancing policy 'random'; "
        "expected one of round_robin, ring_hash",
        "b.yaml: document 1 (orders): name: duplicate service 'orders', first defined in "
        "a.yaml document 2",
    ]


def test_load_path_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_path(missing)
    assert info.value.problems == [f"{missing}: no such file or directory"]


def test_numbers_with_an_exponent_are_numbers_as_in_json() -> None:
    text = (
        '{"name": "orders", "policy": {"circuit_breaker": '
        '{"failure_rate": 1e-05, "window": "10s", "slow_call": {"threshold": "1s", "rate": 5E-1}}}}'
    )
    (svc,) = load_documents(text, "orders.json")
    assert svc.policy.circuit_breaker.failure_rate == 1e-05
    assert svc.policy.circuit_breaker.slow_call.rate == 0.5
    # Unquoted it is a number where text is expected; quoted it is text.
    assert problems_of("name: 1e5\n") == [
        "orders.yaml: document 1: name: expected a string, got a number (quote it)"
    ]
    assert load_documents("name: '1e5'\n", "orders.yaml")[0].name == "1e5"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("name: orders\npolicy:\n  <<: {timeout: 2s}\n", "policy: "),
        ("name: orders\nendpoints:\n  - <<: {address: '10.0.0.5:1'}\n", "endpoints[0]: "),
        ("<<: {name: orders}\nname: orders\n", ""),
    ],
)
def test_merge_keys_are_refused_at_their_field_path(text: str, where: str) -> None:
    problems = problems_of(text)
    assert P + where + "YAML merge keys ('<<') are not supported: write the fields out in full" in (
        problems
    ), problems


def test_text_that_looks_like_a_number_is_written_quoted_and_reads_back() -> None:
    svc = config_pb2.Service(name="1e5")
    svc.endpoints.add(address="10.0.0.5:50051", zone="2E3")
    text = dump_documents([svc])
    assert "'1e5'" in text and "'2E3'" in text
    assert load_documents(text, "x.yaml") == [svc]
    assert load_documents(dump_yaml(service_to_dict(svc)), "x.yaml") == [svc]
