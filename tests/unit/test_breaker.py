"""The per-service circuit breaker state machine and the board holding one per service."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration

from mesh.v1 import config_pb2
from mesh_agent.daemon.breakers import (
    DEFAULT_FAILURE_CODES,
    BreakerBoard,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    Outcome,
    Transition,
)
from mesh_core.errors import ConfigError

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, seed: int = 7, service: str = "orders", **fields: Any) -> CircuitBreaker:
    return CircuitBreaker(service, BreakerPolicy(**fields), clock=clock, rng=random.Random(seed))


def fail(clock: FakeClock, code: str = "UNAVAILABLE", latency: float = 0.01) -> Outcome:
    return Outcome(code, latency, clock.now)


def ok(clock: FakeClock, latency: float = 0.01) -> Outcome:
    return Outcome("OK", latency, clock.now)


def trip(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Trips a breaker whose policy has consecutive_failures set."""
    for _ in range(breaker.policy.consecutive_failures):
        breaker.record(fail(clock))
    assert breaker.state() is OPEN


def to_half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    assert breaker.open_until is not None
    clock.now = breaker.open_until
    assert breaker.state() is HALF_OPEN


# -- policy --------------------------------------------------------------------------------


def test_policy_from_proto_fills_defaults() -> None:
    policy = BreakerPolicy.from_proto(config_pb2.CircuitBreakerPolicy(failure_rate=0.5))
    assert policy.failure_rate == 0.5
    assert policy.window == 10.0
    assert policy.min_requests == 20
    assert policy.consecutive_failures == 0
    assert policy.open_for == 5.0
    assert policy.max_open_for == 50.0
    assert policy.half_open_probes == 1
    assert policy.slow_call_threshold is None
    assert policy.slow_call_rate == 0.0
    assert policy.failure_codes == DEFAULT_FAILURE_CODES
    assert {
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "INTERNAL",
        "UNKNOWN",
        "RESOURCE_EXHAUSTED",
    } == DEFAULT_FAILURE_CODES
    assert policy.enabled


def test_policy_from_proto_converts_every_field() -> None:
    proto = config_pb2.CircuitBreakerPolicy(
        failure_rate=0.25,
        window=Duration(seconds=2, nanos=500_000_000),
        min_requests=4,
        consecutive_failures=3,
        open_for=Duration(nanos=250_000_000),
        max_open_for=Duration(seconds=4),
        half_open_probes=2,
        slow_call=config_pb2.SlowCallPolicy(threshold=Duration(nanos=100_000_000), rate=0.8),
        failure_codes=["unavailable", "deadline-exceeded"],
    )
    policy = BreakerPolicy.from_proto(proto)
    assert policy == BreakerPolicy(
        failure_rate=0.25,
        window=2.5,
        min_requests=4,
        consecutive_failures=3,
        open_for=0.25,
        max_open_for=4.0,
        half_open_probes=2,
        slow_call_threshold=0.1,
        slow_call_rate=0.8,
        failure_codes=frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"}),
    )


def test_policy_max_open_for_defaults_to_ten_times_and_never_below_open_for() -> None:
    assert BreakerPolicy(open_for=2.0).max_open_for == 20.0
    assert BreakerPolicy(open_for=30.0, max_open_for=10.0).max_open_for == 30.0
    proto = config_pb2.CircuitBreakerPolicy(
        consecutive_failures=1, open_for=Duration(seconds=30), max_open_for=Duration(seconds=10)
    )
    assert BreakerPolicy.from_proto(proto).max_open_for == 30.0


def test_policy_enabled() -> None:
    assert not BreakerPolicy().enabled
    assert not BreakerPolicy.from_proto(None).enabled
    assert not BreakerPolicy.from_proto(config_pb2.CircuitBreakerPolicy(max_requests=10)).enabled
    assert BreakerPolicy(consecutive_failures=1).enabled
    assert BreakerPolicy(failure_rate=0.1).enabled
    assert BreakerPolicy(slow_call_threshold=1.0, slow_call_rate=0.5).enabled
    assert not BreakerPolicy(slow_call_rate=0.5).enabled  # no threshold: nothing is slow


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"failure_rate": 1.5}, "failure_rate must be between 0 and 1"),
        ({"window": 0.0}, "window must be a positive"),
        ({"open_for": -1.0}, "open_for must be a positive"),
        ({"half_open_probes": 0}, "half_open_probes must be >= 1"),
        ({"slow_call_threshold": 0.0}, "slow_call_threshold"),
        ({"failure_codes": frozenset({"BOGUS"})}, "unknown gRPC status name(s) BOGUS"),
        ({"failure_codes": frozenset({"OK"})}, "OK cannot be a failure"),
    ],
)
def test_policy_rejects_bad_values(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BreakerPolicy(**fields)


# -- CLOSED: tripping ------------------------------------------------------------------------


def test_starts_closed_and_admits(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=3)
    assert breaker.state() is CLOSED
    assert breaker.admit()
    assert breaker.open_until is None
    assert breaker.next_deadline() is None


def test_consecutive_failures_trip(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=3)
    breaker.record(fail(clock))
    breaker.record(fail(clock))
    breaker.record(ok(clock))  # a success resets the streak
    breaker.record(fail(clock))
    breaker.record(fail(clock))
    assert breaker.state() is CLOSED
    breaker.record(fail(clock, "DEADLINE_EXCEEDED"))
    assert breaker.state() is OPEN
    assert breaker.reason == "consecutive_failures"
    assert breaker.trips_in_a_row == 1
    assert not breaker.admit()


def test_failure_rate_trip_needs_min_requests(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=0.5, min_requests=10)
    for _ in range(9):
        breaker.record(fail(clock))
    assert breaker.state() is CLOSED  # 100 % failures, but only 9 calls
    assert breaker.window_counts() == (9, 9, 0)
    breaker.record(ok(clock))
    assert breaker.state() is OPEN
    assert breaker.reason == "failure_rate"


def test_failure_rate_below_threshold_stays_closed(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=0.5, min_requests=4)
    for _ in range(20):
        breaker.record(ok(clock))
        breaker.record(ok(clock))
        breaker.record(fail(clock))
    assert breaker.state() is CLOSED


def test_outcomes_outside_the_window_expire(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=0.5, min_requests=4, window=1.0)
    for _ in range(3):
        breaker.record(fail(clock))
    clock.advance(1.5)
    assert breaker.window_counts() == (0, 0, 0)
    breaker.record(fail(clock))
    assert breaker.state() is CLOSED  # the three earlier failures no longer count
    assert breaker.window_counts() == (1, 1, 0)
    # An outcome reported after it already left the window is not counted at all.
    assert not breaker.record(Outcome("UNAVAILABLE", 0.01, clock.now - 2.0))
    assert breaker.window_counts() == (1, 1, 0)


def test_window_expires_partially(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=0.5, min_requests=4, window=1.0)
    breaker.record(ok(clock))
    breaker.record(ok(clock))
    clock.advance(0.6)
    breaker.record(fail(clock))
    clock.advance(0.6)  # the two successes leave, the failure stays
    assert breaker.window_counts() == (1, 1, 0)
    breaker.record(fail(clock))
    breaker.record(ok(clock))
    assert breaker.state() is CLOSED
    breaker.record(ok(clock))
    assert breaker.state() is OPEN  # 2 of 4 failed


def test_slow_call_trip(clock: FakeClock) -> None:
    breaker = make(clock, slow_call_threshold=0.5, slow_call_rate=0.5, min_requests=4)
    breaker.record(ok(clock, latency=0.6))
    breaker.record(ok(clock, latency=0.1))
    breaker.record(ok(clock, latency=0.5))  # latency >= threshold is slow
    assert breaker.state() is CLOSED
    assert breaker.window_counts() == (3, 0, 2)
    breaker.record(ok(clock, latency=0.1))
    assert breaker.state() is OPEN
    assert breaker.reason == "slow_call_rate"


def test_slow_calls_ignored_without_slow_call_policy(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=0.5, min_requests=2)
    for _ in range(10):
        breaker.record(ok(clock, latency=30.0))
    assert breaker.state() is CLOSED


@pytest.mark.parametrize("code", ["OK", "NOT_FOUND", "INVALID_ARGUMENT", "PERMISSION_DENIED"])
def test_non_failure_codes_count_as_successes(clock: FakeClock, code: str) -> None:
    breaker = make(clock, failure_rate=0.5, min_requests=2, consecutive_failures=2)
    for _ in range(10):
        assert breaker.record(Outcome(code, 0.01, clock.now))
    assert breaker.state() is CLOSED
    assert breaker.window_counts() == (10, 0, 0)


def test_custom_failure_codes(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=2, failure_codes=frozenset({"NOT_FOUND"}))
    breaker.record(fail(clock, "UNAVAILABLE"))
    breaker.record(fail(clock, "UNAVAILABLE"))
    assert breaker.state() is CLOSED
    breaker.record(fail(clock, "NOT_FOUND"))
    breaker.record(fail(clock, "NOT_FOUND"))
    assert breaker.state() is OPEN


# -- OPEN ----------------------------------------------------------------------------------


def test_open_duration_grows_exponentially_and_is_capped(clock: FakeClock) -> None:
    breaker = make(clock, seed=1, consecutive_failures=1, open_for=1.0, max_open_for=5.0)
    durations = []
    breaker.record(fail(clock))
    for _ in range(6):
        assert breaker.state() is OPEN
        assert breaker.open_until is not None
        durations.append(breaker.open_until - clock.now)
        to_half_open(breaker, clock)
        assert breaker.admit()
        breaker.record(fail(clock))  # the probe fails: open again, for longer
    assert breaker.trips_in_a_row == 7
    expected = [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    for got, base in zip(durations, expected, strict=True):
        assert 0.9 * base <= got <= min(1.1 * base, 5.0)
    assert durations[0] < durations[1] < durations[2]
    assert max(durations) <= 5.0


def test_open_duration_jitter_stays_within_ten_percent(clock: FakeClock) -> None:
    seen = []
    for seed in range(200):
        breaker = make(clock, seed=seed, consecutive_failures=1, open_for=10.0)
        breaker.record(fail(clock))
        assert breaker.open_until is not None
        seen.append(breaker.open_until - clock.now)
    assert all(9.0 <= d <= 11.0 for d in seen)
    assert min(seen) < 9.5 and max(seen) > 10.5  # jitter is really applied, both ways


def test_jitter_is_reproducible_with_a_seeded_rng(clock: FakeClock) -> None:
    a = make(clock, seed=42, consecutive_failures=1)
    b = make(clock, seed=42, consecutive_failures=1)
    a.record(fail(clock))
    b.record(fail(clock))
    assert a.open_until == b.open_until


def test_stragglers_ignored_while_open(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=2, half_open_probes=1)
    trip(breaker, clock)
    clock.advance(0.1)
    assert not breaker.record(ok(clock))
    assert not breaker.record(fail(clock))
    assert breaker.state() is OPEN
    assert breaker.trips_in_a_row == 1
    to_half_open(breaker, clock)
    # Calls that ended before the breaker turned half-open are stragglers too.
    assert not breaker.record(Outcome("OK", 0.01, clock.now - 1.0))
    assert breaker.state() is HALF_OPEN


def test_becomes_half_open_lazily_and_on_tick(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=1)
    breaker.record(fail(clock))
    deadline = breaker.next_deadline()
    assert deadline is not None and deadline == breaker.open_until
    clock.now = deadline - 0.001
    assert breaker.tick() == []
    clock.now = deadline
    transitions = breaker.tick()
    assert [(t.old, t.new, t.reason) for t in transitions] == [(OPEN, HALF_OPEN, "open_elapsed")]
    assert breaker.open_until is None
    assert breaker.tick() == []


# -- HALF_OPEN -----------------------------------------------------------------------------


def test_half_open_permits_limited_to_half_open_probes(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=1, half_open_probes=3)
    trip(breaker, clock)
    to_half_open(breaker, clock)
    assert [breaker.acquire_permit() for _ in range(5)] == [True, True, True, False, False]
    assert breaker.permits_out() == 3
    assert not breaker.admit()


def test_probe_successes_close(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=1, half_open_probes=2)
    trip(breaker, clock)
    to_half_open(breaker, clock)
    assert breaker.admit() and breaker.admit()
    breaker.record(Outcome("OK", 0.01, clock.now, probe=True))
    assert breaker.state() is HALF_OPEN
    assert not breaker.admit()  # one success and one permit out: no third permit
    breaker.record(Outcome("NOT_FOUND", 0.01, clock.now, probe=True))  # not a failure
    assert breaker.state() is CLOSED
    assert breaker.trips_in_a_row == 0
    assert breaker.window_counts() == (0, 0, 0)
    assert breaker.history[-1].reason == "probes_succeeded"
    assert breaker.admit()
    # Closed again: a single failure trips it, and the open duration starts over.
    breaker.record(fail(clock))
    assert breaker.trips_in_a_row == 1


def test_probe_needs_consecutive_successes_a_reclaim_frees_a_slot(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=1, half_open_probes=2, open_for=1.0)
    trip(breaker, clock)
    to_half_open(breaker, clock)
    assert breaker.admit()
    breaker.record(ok(clock))  # an unflagged outcome after the grant counts as the probe
    assert breaker.state() is HALF_OPEN
    assert breaker.admit()
    clock.advance(5.0)  # permit timeout is max(open_for, 5 s)
    assert breaker.permits_out() == 0
    assert breaker.admit()
    breaker.record(ok(clock))
    assert breaker.state() is CLOSED


def test_probe_failure_reopens_with_longer_duration(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=1, open_for=2.0, max_open_for=100.0)
    trip(breaker, clock)
    to_half_open(breaker, clock)
    assert breaker.admit()
    breaker.record(fail(clock, "INTERNAL"))
    assert breaker.state() is OPEN
    assert breaker.reason == "probe_failed"
    assert breaker.trips_in_a_row == 2
    assert breaker.open_until is not None
    assert 3.6 <= breaker.open_until - clock.now <= 4.4


def test_slow_probe_reopens_when_slow_calls_are_judged(clock: FakeClock) -> None:
    breaker = make(
        clock, consecutive_failures=1, slow_call_threshold=0.5, slow_call_rate=0.9, min_requests=5
    )
    trip(breaker, clock)
    to_half_open(breaker, clock)
    assert breaker.admit()
    breaker.record(ok(clock, latency=0.7))
    assert breaker.state() is OPEN
    assert breaker.reason == "probe_failed"


def test_permit_reclaimed_after_timeout(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=1, open_for=1.0)
    trip(breaker, clock)
    to_half_open(breaker, clock)
    granted = clock.now
    assert breaker.admit()
    assert not breaker.admit()
    assert breaker.next_deadline() == granted + 5.0
    clock.now = granted + 4.9
    assert not breaker.admit()
    clock.now = granted + 5.0
    assert breaker.tick() == []  # reclaiming is not a transition
    assert breaker.permits_out() == 0
    assert breaker.next_deadline() is None
    assert breaker.admit()


def test_permit_timeout_follows_a_long_open_for(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=1, open_for=30.0, max_open_for=30.0)
    trip(breaker, clock)
    to_half_open(breaker, clock)
    assert breaker.admit()
    clock.advance(29.0)
    assert not breaker.admit()
    clock.advance(1.0)
    assert breaker.admit()


def test_outcome_without_permit_ignored_in_half_open(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=1)
    trip(breaker, clock)
    to_half_open(breaker, clock)
    assert not breaker.record(fail(clock))
    assert breaker.state() is HALF_OPEN


# -- disabled ------------------------------------------------------------------------------


def test_disabled_policy_always_admits(clock: FakeClock) -> None:
    breaker = make(clock)
    assert not breaker.enabled
    for _ in range(100):
        assert not breaker.record(fail(clock))
        assert breaker.admit()
    assert breaker.state() is CLOSED
    assert breaker.next_deadline() is None


# -- subscribers and history -----------------------------------------------------------------


def test_subscribers_get_transitions(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=1)
    seen: list[Transition] = []
    unsubscribe = breaker.transitions.connect(seen.append)

    def broken(_: Transition) -> None:
        raise RuntimeError("boom")

    breaker.transitions.connect(broken)  # a raising subscriber does not stop the others
    breaker.record(fail(clock))
    assert len(seen) == 1
    t = seen[0]
    assert (t.service, t.old, t.new, t.reason, t.at) == (
        "orders",
        CLOSED,
        OPEN,
        "consecutive_failures",
        clock.now,
    )
    assert t.open_until == breaker.open_until
    to_half_open(breaker, clock)
    breaker.admit()
    breaker.record(ok(clock))
    assert [(t.old, t.new) for t in seen] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]
    assert seen[1].open_until is None
    assert breaker.history == seen
    unsubscribe()
    breaker.record(fail(clock))
    assert len(seen) == 3
    assert len(breaker.history) == 4


def test_history_is_bounded(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "orders", BreakerPolicy(consecutive_failures=1), clock=clock, history=3
    )
    for _ in range(5):
        breaker.record(fail(clock))
        to_half_open(breaker, clock)
        breaker.admit()
        breaker.record(ok(clock))
    assert len(breaker.history) == 3


def test_state_values() -> None:
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]


# -- update_policy -------------------------------------------------------------------------


def test_update_policy_reevaluates_the_window(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=0.9, min_requests=4)
    for code in ["UNAVAILABLE", "UNAVAILABLE", "OK", "NOT_FOUND"]:
        breaker.record(Outcome(code, 0.01, clock.now))
    assert breaker.state() is CLOSED
    transitions = breaker.update_policy(BreakerPolicy(failure_rate=0.5, min_requests=4))
    assert [(t.new, t.reason) for t in transitions] == [(OPEN, "failure_rate")]


def test_update_policy_reclassifies_with_new_failure_codes(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=0.5, min_requests=2)
    breaker.record(fail(clock, "NOT_FOUND"))
    breaker.record(fail(clock, "NOT_FOUND"))
    assert breaker.window_counts() == (2, 0, 0)
    breaker.update_policy(
        BreakerPolicy(failure_rate=0.5, min_requests=3, failure_codes=frozenset({"NOT_FOUND"}))
    )
    assert breaker.window_counts() == (2, 2, 0)
    assert breaker.state() is CLOSED


def test_update_policy_keeps_open_state_and_caps_it(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=1, open_for=20.0)
    trip(breaker, clock)
    assert breaker.update_policy(BreakerPolicy(consecutive_failures=3, open_for=20.0)) == []
    assert breaker.state() is OPEN
    breaker.update_policy(BreakerPolicy(consecutive_failures=3, open_for=1.0, max_open_for=2.0))
    assert breaker.open_until is not None
    assert breaker.open_until <= clock.now + 2.0


def test_update_policy_to_disabled_closes(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=1)
    trip(breaker, clock)
    transitions = breaker.update_policy(BreakerPolicy())
    assert [(t.old, t.new, t.reason) for t in transitions] == [(OPEN, CLOSED, "policy_disabled")]
    assert breaker.admit()


# -- persistence ---------------------------------------------------------------------------


def roundtrip(breaker: CircuitBreaker, clock: FakeClock) -> CircuitBreaker:
    data = json.loads(json.dumps(breaker.snapshot()))
    return CircuitBreaker.restore(
        breaker.service, breaker.policy, data, clock=clock, rng=random.Random(3)
    )


def test_snapshot_restore_closed(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=0.5, min_requests=2, consecutive_failures=3)
    breaker.record(fail(clock))
    snap = breaker.snapshot()
    assert snap["state"] == "closed"
    restored = roundtrip(breaker, clock)
    assert restored.state() is CLOSED
    assert restored.window_counts() == (0, 0, 0)
    assert restored.trips_in_a_row == 0


def test_snapshot_restore_open(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=1)
    trip(breaker, clock)
    snap = breaker.snapshot()
    assert snap["state"] == "open"
    assert snap["open_until"] == breaker.open_until
    assert snap["reason"] == "consecutive_failures"
    restored = roundtrip(breaker, clock)
    assert restored.state() is OPEN
    assert restored.open_until == breaker.open_until
    assert restored.reason == "consecutive_failures"
    assert restored.trips_in_a_row == 1
    assert not restored.admit()


def test_snapshot_restore_half_open_has_no_permits_out(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=1, half_open_probes=2)
    trip(breaker, clock)
    to_half_open(breaker, clock)
    assert breaker.admit() and breaker.admit()
    restored = roundtrip(breaker, clock)
    assert restored.state() is HALF_OPEN
    assert restored.permits_out() == 0
    assert restored.trips_in_a_row == 1
    assert restored.admit()


def test_restore_expired_open_becomes_half_open(clock: FakeClock) -> None:
    breaker = make(clock, consecutive_failures=1)
    trip(breaker, clock)
    data = breaker.snapshot()
    clock.advance(3600.0)  # the agent was down for an hour
    restored = CircuitBreaker.restore("orders", breaker.policy, data, clock=clock)
    seen: list[Transition] = []
    restored.transitions.connect(seen.append)
    assert restored.state() is HALF_OPEN
    assert [(t.old, t.new) for t in seen] == [(OPEN, HALF_OPEN)]


def test_restore_caps_open_until_at_max_open_for(clock: FakeClock) -> None:
    policy = BreakerPolicy(consecutive_failures=1, open_for=1.0, max_open_for=2.0)
    data = {"state": "open", "open_until": clock.now + 1e6, "trips_in_a_row": 1, "reason": ""}
    restored = CircuitBreaker.restore("orders", policy, data, clock=clock)
    assert restored.open_until == clock.now + 2.0


def test_restore_with_disabled_policy_is_closed(clock: FakeClock) -> None:
    data = {"state": "open", "open_until": clock.now + 10, "trips_in_a_row": 1, "reason": "x"}
    restored = CircuitBreaker.restore("orders", BreakerPolicy(), data, clock=clock)
    assert restored.state() is CLOSED
    assert restored.admit()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("open", "must be a mapping"),
        ({"state": "ajar", "trips_in_a_row": 0}, "state must be one of closed, open, half_open"),
        ({"trips_in_a_row": 0}, "state must be one of"),
        ({"state": "open", "trips_in_a_row": 1}, "an open breaker needs open_until"),
        ({"state": "open", "open_until": "soon", "trips_in_a_row": 1}, "open_until must be a"),
        ({"state": "open", "open_until": float("nan"), "trips_in_a_row": 1}, "must be finite"),
        ({"state": "closed", "trips_in_a_row": -1}, "trips_in_a_row must be an integer"),
        ({"state": "closed", "trips_in_a_row": True}, "trips_in_a_row must be an integer"),
        ({"state": "half_open", "trips_in_a_row": 0}, "needs trips_in_a_row >= 1"),
        ({"state": "closed", "reason": 3}, "reason must be a string"),
        ({"state": "closed", "version": 99}, "unsupported version 99"),
    ],
)
def test_restore_rejects_malformed_snapshots(clock: FakeClock, data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CircuitBreaker.restore("orders", BreakerPolicy(consecutive_failures=1), data, clock=clock)


# -- board ---------------------------------------------------------------------------------


def make_board(clock: FakeClock) -> BreakerBoard:
    return BreakerBoard(clock=clock, rng=random.Random(5))


def test_board_routes_by_service(clock: FakeClock) -> None:
    board = make_board(clock)
    board.set_policy("orders", BreakerPolicy(consecutive_failures=2))
    board.set_policy("users", config_pb2.CircuitBreakerPolicy(failure_rate=0.5, min_requests=100))
    assert board.record("orders", [fail(clock), fail(clock)]) == 2
    assert board.record("unknown", [fail(clock)]) == 0
    assert board.states() == {"orders": OPEN, "users": CLOSED}
    assert not board.admit("orders")
    assert board.admit("users")
    assert board.admit("unknown")  # no breaker: always admitted
    assert board.state("unknown") is None
    statuses = board.statuses()
    assert statuses["orders"].reason == "consecutive_failures"
    assert statuses["orders"].enabled


def test_board_set_policy_updates_and_removes(clock: FakeClock) -> None:
    board = make_board(clock)
    seen: list[Transition] = []
    board.transitions.connect(seen.append)
    board.set_policy("orders", BreakerPolicy(consecutive_failures=5))
    breaker = board.get("orders")
    board.record("orders", [fail(clock)] * 2)
    board.set_policy("orders", BreakerPolicy(consecutive_failures=2))
    assert board.get("orders") is breaker
    assert board.state("orders") is OPEN
    transitions = board.set_policy("orders", None)
    assert [(t.old, t.new, t.reason) for t in transitions] == [(OPEN, CLOSED, "policy_removed")]
    assert "orders" not in board
    assert [(t.old, t.new) for t in seen] == [(CLOSED, OPEN), (OPEN, CLOSED)]
    assert board.admit("orders")


def test_board_subscribers_get_transitions_of_every_breaker(clock: FakeClock) -> None:
    board = make_board(clock)
    seen: list[Transition] = []
    unsubscribe = board.transitions.connect(seen.append)
    for name in ("a", "b"):
        board.set_policy(name, BreakerPolicy(consecutive_failures=1))
        board.record(name, [fail(clock)])
    assert [(t.service, t.new) for t in seen] == [("a", OPEN), ("b", OPEN)]
    unsubscribe()
    clock.advance(100.0)
    board.tick()
    assert len(seen) == 2


def test_board_next_deadline_and_tick(clock: FakeClock) -> None:
    board = make_board(clock)
    assert board.next_deadline() is None
    board.set_policy("a", BreakerPolicy(consecutive_failures=1, open_for=1.0))
    board.set_policy("b", BreakerPolicy(consecutive_failures=1, open_for=10.0))
    board.record("a", [fail(clock)])
    board.record("b", [fail(clock)])
    a, b = board.get("a"), board.get("b")
    assert a is not None and b is not None
    assert board.next_deadline() == a.open_until
    assert a.open_until is not None
    clock.now = a.open_until
    transitions = board.tick()
    assert [(t.service, t.new) for t in transitions] == [("a", HALF_OPEN)]
    assert board.next_deadline() == b.open_until


def test_board_snapshot_restore_round_trip(clock: FakeClock) -> None:
    board = make_board(clock)
    policies = {
        "a": BreakerPolicy(consecutive_failures=1, open_for=60.0),
        "b": BreakerPolicy(consecutive_failures=1, open_for=1.0),
        "c": BreakerPolicy(consecutive_failures=1),
    }
    for name, policy in policies.items():
        board.set_policy(name, policy)
    board.record("a", [fail(clock)])
    board.record("b", [fail(clock)])
    b = board.get("b")
    assert b is not None and b.open_until is not None
    clock.now = b.open_until
    assert board.state("b") is HALF_OPEN
    a = board.get("a")
    assert a is not None
    a_until = a.open_until
    data = json.loads(json.dumps(board.snapshot()))

    fresh = make_board(clock)
    for name, policy in policies.items():
        fresh.set_policy(name, policy)
    assert sorted(fresh.restore(data)) == ["a", "b", "c"]
    assert fresh.states() == {"a": OPEN, "b": HALF_OPEN, "c": CLOSED}
    fresh_a = fresh.get("a")
    assert fresh_a is not None and fresh_a.open_until == a_until


def test_board_restore_skips_a_bad_entry(clock: FakeClock) -> None:
    board = make_board(clock)
    board.set_policy("good", BreakerPolicy(consecutive_failures=1))
    board.set_policy("bad", BreakerPolicy(consecutive_failures=1))
    data = {
        "good": {"state": "open", "open_until": clock.now + 3.0, "trips_in_a_row": 2},
        "bad": {"state": "open", "trips_in_a_row": 2},
        "worse": "not a dict",
    }
    seen: list[Transition] = []
    board.transitions.connect(seen.append)
    assert board.restore(data) == ["good"]
    assert [(t.service, t.old, t.new, t.reason) for t in seen] == [
        ("good", CLOSED, OPEN, "restored")
    ]
    assert board.states() == {"good": OPEN, "bad": CLOSED}
    good = board.get("good")
    assert good is not None and good.trips_in_a_row == 2
    with pytest.raises(ConfigError, match="must be a mapping"):
        board.restore(["good"])


def test_board_restore_before_policy_waits_for_it(clock: FakeClock) -> None:
    board = make_board(clock)
    assert board.restore(
        {"orders": {"state": "open", "open_until": clock.now + 3.0, "trips_in_a_row": 1}}
    ) == ["orders"]
    assert board.states() == {}
    assert board.snapshot()["orders"]["state"] == "open"  # kept across another restart
    board.set_policy("orders", BreakerPolicy(consecutive_failures=1))
    assert board.state("orders") is OPEN
    assert not board.admit("orders")
