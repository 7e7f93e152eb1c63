"""Endpoint health state and the health table: thresholds, transitions, panic threshold."""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration

from mesh.v1 import config_pb2
from mesh_agent.daemon.health.table import EndpointHealthState, HealthPolicy, HealthTable
from mesh_core.errors import ConfigError

POLICY = HealthPolicy(interval=0.1, timeout=0.05, unhealthy_threshold=2, healthy_threshold=2)


def test_starts_unknown_and_usable() -> None:
    state = EndpointHealthState("orders", "10.0.0.1:1", 3, 2)
    assert state.status == "unknown"
    assert state.usable


def test_unhealthy_after_threshold_consecutive_failures() -> None:
    state = EndpointHealthState("orders", "10.0.0.1:1", unhealthy_threshold=3, healthy_threshold=2)
    assert state.record(False) is None
    assert state.record(False) is None
    transition = state.record(False)
    assert transition is not None
    assert (transition.old, transition.new) == ("unknown", "unhealthy")
    assert (transition.service, transition.address) == ("orders", "10.0.0.1:1")
    assert not state.usable
    assert state.record(False) is None  # already unhealthy: no new transition


def test_a_success_resets_the_failure_count() -> None:
    state = EndpointHealthState("orders", "a", unhealthy_threshold=3, healthy_threshold=5)
    state.record(False)
    state.record(False)
    state.record(True)
    state.record(False)
    state.record(False)
    assert state.status == "unknown"
    t = state.record(False)
    assert t is not None and t.new == "unhealthy"


def test_healthy_after_threshold_consecutive_successes_and_back() -> None:
    state = EndpointHealthState("orders", "a", unhealthy_threshold=2, healthy_threshold=2)
    assert state.record(True) is None
    t = state.record(True)
    assert t is not None and (t.old, t.new) == ("unknown", "healthy")
    state.record(False)
    t = state.record(False)
    assert t is not None and (t.old, t.new) == ("healthy", "unhealthy")
    assert state.record(True) is None
    state.record(False)  # interrupts the streak
    assert state.record(True) is None
    t = state.record(True)
    assert t is not None and (t.old, t.new) == ("unhealthy", "healthy")


def test_thresholds_of_one() -> None:
    state = EndpointHealthState("s", "a", 1, 1)
    t = state.record(False)
    assert t is not None and t.new == "unhealthy"
    t = state.record(True)
    assert t is not None and t.new == "healthy"


def test_policy_from_proto_defaults_and_values() -> None:
    assert HealthPolicy.from_proto(config_pb2.HealthCheckPolicy()) == HealthPolicy(
        interval=5.0, timeout=1.0, unhealthy_threshold=3, healthy_threshold=2
    )
    assert HealthPolicy.from_proto(None) == HealthPolicy()
    proto = config_pb2.HealthCheckPolicy(
        interval=Duration(nanos=100_000_000),
        timeout=Duration(seconds=2),
        unhealthy_threshold=4,
        healthy_threshold=1,
        service_name="orders.v1.Orders",
    )
    assert HealthPolicy.from_proto(proto) == HealthPolicy(0.1, 2.0, 4, 1, "orders.v1.Orders")


def test_policy_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="interval"):
        HealthPolicy(interval=0)
    with pytest.raises(ConfigError, match="unhealthy_threshold"):
        HealthPolicy(unhealthy_threshold=0)


def fail(table: HealthTable, service: str, address: str, times: int = 2) -> None:
    for _ in range(times):
        table.record(service, address, False)


def test_one_of_two_unhealthy_is_overridden() -> None:
    table = HealthTable()
    table.update_targets("orders", ["a:1", "b:1"], POLICY)
    assert table.overrides("orders") == {}
    fail(table, "orders", "a:1")
    assert table.overrides("orders") == {"a:1": "unhealthy"}
    assert not table.in_panic("orders")


def test_both_unhealthy_is_panic_with_no_overrides() -> None:
    table = HealthTable()
    table.update_targets("orders", ["a:1", "b:1"], POLICY)
    fail(table, "orders", "a:1")
    fail(table, "orders", "b:1")
    assert table.in_panic("orders")
    assert table.overrides("orders") == {}
    # One comes back: 1/2 usable is not below 0.5, so the other is overridden again.
    table.record("orders", "b:1", True)
    table.record("orders", "b:1", True)
    assert not table.in_panic("orders")
    assert table.overrides("orders") == {"a:1": "unhealthy"}


def test_two_of_three_unhealthy_is_panic() -> None:
    table = HealthTable()
    table.update_targets("orders", ["a:1", "b:1", "c:1"], POLICY)
    fail(table, "orders", "a:1")
    assert table.overrides("orders") == {"a:1": "unhealthy"}
    fail(table, "orders", "b:1")
    assert table.in_panic("orders")
    assert table.overrides("orders") == {}


def test_panic_threshold_is_configurable() -> None:
    table = HealthTable(panic_threshold=0.0)  # never panic
    table.update_targets("orders", ["a:1", "b:1"], POLICY)
    fail(table, "orders", "a:1")
    fail(table, "orders", "b:1")
    assert not table.in_panic("orders")
    assert table.overrides("orders") == {"a:1": "unhealthy", "b:1": "unhealthy"}
    with pytest.raises(ConfigError):
        HealthTable(panic_threshold=1.5)


def test_services_are_independent() -> None:
    table = HealthTable()
    table.update_targets("orders", ["a:1", "b:1"], POLICY)
    table.update_targets("users", ["a:1", "c:1"], POLICY)
    fail(table, "orders", "a:1")
    assert table.overrides("orders") == {"a:1": "unhealthy"}
    assert table.overrides("users") == {}
    assert table.status("users", "a:1") == "unknown"
    assert table.overrides("nope") == {}
    assert not table.in_panic("nope")


def test_update_targets_keeps_survivors_and_forgets_the_removed() -> None:
    table = HealthTable()
    table.update_targets("orders", ["a:1", "b:1", "c:1"], POLICY)
    fail(table, "orders", "a:1")
    table.record("orders", "b:1", True)
    table.record("orders", "b:1", True)
    fail(table, "orders", "c:1")
    table.update_targets("orders", ["a:1", "b:1", "d:1"], POLICY)
    assert table.statuses("orders") == {"a:1": "unhealthy", "b:1": "healthy", "d:1": "unknown"}
    assert table.record("orders", "c:1", False) is None  # forgotten: ignored
    assert table.status("orders", "c:1") is None
    # Re-added later, it starts over.
    table.update_targets("orders", ["a:1", "b:1", "c:1"], POLICY)
    assert table.status("orders", "c:1") == "unknown"
    table.update_targets("orders", [], POLICY)
    assert table.services() == []


def test_update_targets_applies_new_thresholds_to_survivors() -> None:
    table = HealthTable()
    table.update_targets("orders", ["a:1", "b:1"], POLICY)
    table.record("orders", "a:1", False)
    table.update_targets(
        "orders", ["a:1", "b:1"], HealthPolicy(unhealthy_threshold=3, healthy_threshold=2)
    )
    table.record("orders", "a:1", False)
    assert table.status("orders", "a:1") == "unknown"
    table.record("orders", "a:1", False)
    assert table.status("orders", "a:1") == "unhealthy"


def test_update_targets_accepts_the_proto_policy() -> None:
    table = HealthTable()
    table.update_targets(
        "orders", ["a:1", "b:1"], config_pb2.HealthCheckPolicy(unhealthy_threshold=1)
    )
    table.record("orders", "a:1", False)
    assert table.overrides("orders") == {"a:1": "unhealthy"}
    policy = table.policy("orders")
    assert policy is not None and policy.interval == 5.0


def test_subscribers_hear_override_and_panic_changes_only() -> None:
    table = HealthTable()
    heard: list[str] = []
    unsubscribe = table.changed.connect(heard.append)
    table.update_targets("orders", ["a:1", "b:1"], POLICY)
    assert heard == []  # no verdict changed
    table.record("orders", "a:1", True)
    table.record("orders", "a:1", True)  # unknown -> healthy: still no override change
    assert heard == []
    generation = table.generation
    fail(table, "orders", "b:1")
    assert heard == ["orders"]
    assert table.generation == generation + 1
    fail(table, "orders", "a:1")  # panic: overrides go from {b} to {}
    assert heard == ["orders", "orders"]
    table.update_targets("orders", ["c:1"], POLICY)  # panic over
    assert heard == ["orders"] * 3
    unsubscribe()
    fail(table, "orders", "c:1")
    assert heard == ["orders"] * 3


def test_a_raising_subscriber_does_not_break_the_table() -> None:
    table = HealthTable()
    heard: list[str] = []

    def boom(service: str) -> None:
        raise RuntimeError("subscriber bug")

    table.changed.connect(boom)
    table.changed.connect(heard.append)
    table.update_targets("orders", ["a:1", "b:1"], POLICY)
    fail(table, "orders", "a:1")
    assert heard == ["orders"]
    assert table.overrides("orders") == {"a:1": "unhealthy"}


def test_recent_transitions_are_kept_and_bounded() -> None:
    table = HealthTable(history=3)
    table.update_targets("orders", ["a:1", "b:1"], POLICY)
    fail(table, "orders", "a:1")
    [t] = table.recent_transitions()
    assert (t.service, t.address, t.old, t.new) == ("orders", "a:1", "unknown", "unhealthy")
    for _ in range(3):
        table.record("orders", "a:1", True)
        table.record("orders", "a:1", True)
        fail(table, "orders", "a:1")
    assert len(table.recent_transitions()) == 3
    assert table.recent_transitions()[-1].new == "unhealthy"
