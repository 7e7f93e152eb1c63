"""``policy.slo`` as written: YAML (percentages with ``%``), the errors that name each bad
field, the warnings, the round trip, and the line ``meshctl get services NAME`` prints."""

from __future__ import annotations

import pytest
import yaml

from control.config import load_documents, service_to_dict
from control.meshctl.services import slo_line, traffic_lines
from mesh_core.errors import ConfigError
from mesh_core.validation import validate_warnings

pytestmark = pytest.mark.timeout(10)

HEAD = "name: orders\nendpoints: [{address: '10.0.0.5:50051'}]\npolicy:\n"


def problems(policy: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_documents(HEAD + policy, "orders.yaml")
    return [p[p.index("policy.") :] for p in info.value.problems]  # from the field's path


def test_percentages_with_or_without_the_sign_and_the_round_trip() -> None:
    [written] = load_documents(
        HEAD
        + "  circuit_breaker: {failure_rate: 0.5, window: 10s}\n"
        + "  slo: {success: 99.95%, latency: {p99: 300ms, p50: 20ms},"
        + " burn: {short_window: 2s, long_window: 1m, threshold: 6}}\n",
        "orders.yaml",
    )
    slo = written.policy.slo
    assert slo.success == 99.95 and slo.latency.p99.ToMilliseconds() == 300
    assert slo.burn.long_window.seconds == 60 and slo.burn.threshold == 6
    data = service_to_dict(written)
    assert data["policy"]["slo"]["success"] == "99.95%"
    [back] = load_documents(yaml.safe_dump(data), "x.yaml")
    assert back == written
    [plain] = load_documents(HEAD + "  slo: {success: 99.9}\n", "orders.yaml")
    assert plain.policy.slo.success == 99.9


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("  slo: {}\n", "policy.slo: needs an objective: success (like 99.9%)"),
        ("  slo: {success: 100%}\n", "policy.slo.success: must be above 0% and below 100%"),
        ("  slo: {success: -1}\n", "policy.slo.success: must be above 0% and below 100%"),
        ("  slo: {success: lots}\n", "policy.slo.success: expected a percentage like 99.9"),
        ("  slo: {latency: {}}\n", "policy.slo.latency: needs at least one quantile: p50"),
        ("  slo: {latency: {p98: 1s}}\n", "policy.slo.latency: unknown field 'p98'"),
        ("  slo: {latency: {p99: 0s}}\n", "policy.slo.latency.p99: must be greater than 0"),
        (
            "  slo: {success: 99, burn: {threshold: 0.5}}\n",
            "policy.slo.burn.threshold: must be above 1 and at most 1000",
        ),
        (
            "  slo: {success: 99, burn: {short_window: 30s, long_window: 10s}}\n",
            "policy.slo.burn.long_window: the long window (10s) must be longer than the short "
            "window (30s)",
        ),
        (
            "  circuit_breaker: {failure_rate: 0.5, window: 2s}\n"
            "  slo: {success: 99, burn: {short_window: 8s}}\n",
            "policy.slo.burn.short_window: the long window (6s, three times the breaker "
            "window) must be longer than the short window (8s)",
        ),
        (
            "  slo: {success: 99, burn: {long_window: 11m}}\n",
            "policy.slo.burn.long_window: must be at most 600s, got 660s",
        ),
    ],
)
def test_errors_name_the_field(policy: str, expected: str) -> None:
    found = problems(policy)
    assert any(p.startswith(expected) for p in found), found


def test_an_objective_the_breaker_would_beat_is_a_warning() -> None:
    [service] = load_documents(
        HEAD + "  circuit_breaker: {failure_rate: 0.3, window: 10s}\n  slo: {success: 95%}\n",
        "orders.yaml",
    )
    ((path, message),) = validate_warnings(service)
    assert path == "policy.slo.success"
    assert "needs 50% of calls failing, the breaker opens at 30%" in message
    [fine] = load_documents(HEAD + "  slo: {success: 99.9%}\n", "orders.yaml")
    assert validate_warnings(fine) == []


def test_meshctl_get_shows_the_objective() -> None:
    [service] = load_documents(
        HEAD + "  slo: {success: 99.9%, latency: {p99: 300ms, p50: 20ms}}\n", "orders.yaml"
    )
    line = slo_line(service.policy)
    assert line == (
        "slo: success 99.9%, p50 20ms, p99 300ms · degrading at a burn rate of 10x "
        "(1.5x for the looser budgets) over 5s and 30s"
    )
    assert traffic_lines(service)[-1] == line
    [without] = load_documents(HEAD + "  timeout: 1s\n", "orders.yaml")
    assert traffic_lines(without) == []
