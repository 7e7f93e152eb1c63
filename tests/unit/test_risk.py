"""The early-warning maths (``mesh_agent.daemon.breakers.risk``): slot counts, burn rates over
two windows, the breaker trend, hysteresis, and the board's log lines, metrics and signal.
Outcomes are fed on a fake clock; the breaker judged against is the real state machine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from control.config.convert import Converter
from mesh.v1 import config_pb2
from mesh_agent.daemon.breakers.breaker import BreakerState, CircuitBreaker, Transition
from mesh_agent.daemon.breakers.policy import BreakerPolicy, Outcome
from mesh_agent.daemon.breakers.risk import (
    EVALUATE_EVERY,
    REASON_ERROR_BUDGET,
    REASON_FAILURE_TREND,
    REASON_LATENCY_BUDGET,
    REASON_SLOW_TREND,
    Change,
    RiskBoard,
    RiskPolicy,
    ServiceRisk,
)
from mesh_agent.daemon.breakers.slots import SlotCounts, trend
from mesh_agent.daemon.metrics import AgentMetrics

pytestmark = pytest.mark.timeout(30)

BREAKER = {"failure_rate": 0.5, "window": "10s", "min_requests": 20}
START = 1_000_000.0


def policy(**doc: Any) -> config_pb2.Policy:
    converter = Converter()
    message = config_pb2.Policy()
    converter.fill(message, doc, "policy")
    assert not converter.problems
    return message


def risk_policy(**doc: Any) -> RiskPolicy:
    found = RiskPolicy.from_proto(policy(**doc))
    assert found is not None
    return found


class Feed:
    """Calls at ``rate`` per second from START, each failing when the running share owed
    reaches one (so a share of 0.01 is exactly one call in a hundred), fed to a
    :class:`ServiceRisk` and to a real breaker under the same policy, evaluated on time."""

    def __init__(self, doc: dict[str, Any], rate: int = 40) -> None:
        self.message = policy(**doc)
        found = RiskPolicy.from_proto(self.message)
        assert found is not None
        self.risk = ServiceRisk("orders", found)
        self.now = START
        self.breaker = CircuitBreaker(
            "orders",
            BreakerPolicy.from_proto(self.message.circuit_breaker),
            clock=lambda: self.now,
        )
        self.rate = rate
        self.owed = 0.0
        self.changes: list[tuple[float, Change]] = []
        self.opened: float | None = None
        self.closed: float | None = None
        self._next_evaluation = START + EVALUATE_EVERY

    def run(self, seconds: float, share: Any, latency: Any = lambda t: 0.001) -> None:
        """Calls for ``seconds`` more; ``share(t)`` and ``latency(t)`` of the time since START."""
        for _ in range(round(seconds * self.rate)):
            self.now += 1 / self.rate
            t = self.now - START
            self.owed += share(t)
            failed = self.owed >= 1
            if failed:
                self.owed -= 1
            outcome = Outcome("UNAVAILABLE" if failed else "OK", latency(t), self.now)
            if self.breaker.admit():
                self.breaker.record(outcome)
                self.risk.counts.add([outcome])
            if self.opened is None and self.breaker.state() is BreakerState.OPEN:
                self.opened = t
            if (
                self.closed is None
                and self.opened is not None
                and self.breaker.state() is BreakerState.CLOSED
            ):
                self.closed = t
                self.risk.counts = SlotCounts(  # as RiskBoard.breaker_closed does
                    self.risk.policy.slot,
                    self.risk.policy.span,
                    self.risk.policy.targets,
                    self.risk.policy.failure_codes,
                )
            if self.now >= self._next_evaluation:
                self._next_evaluation += EVALUATE_EVERY
                change = self.risk.evaluate(self.now, self.breaker.state())
                if change is not None:
                    self.changes.append((t, change))

    def raised(self) -> list[tuple[float, str]]:
        return [(t, c.new.reason) for t, c in self.changes if c.old is None and c.new]

    def cleared(self) -> list[float]:
        return [t for t, c in self.changes if c.new is None]


def ramp(t: float) -> float:
    """0 to 60 % over 30 s, then 60 %."""
    return min(0.6, 0.02 * t)


# -- the policy ----------------------------------------------------------------------------------


def test_windows_and_thresholds_follow_the_breaker_and_the_objective() -> None:
    found = risk_policy(
        circuit_breaker=BREAKER, slo={"success": "99.9%", "latency": {"p99": "300ms"}}
    )
    assert (found.short_window, found.long_window) == (5.0, 30.0)
    success, p99 = found.objectives
    assert success.budget == pytest.approx(0.001) and success.alert == 10
    assert p99.budget == pytest.approx(0.01) and p99.target == pytest.approx(0.3)
    own = risk_policy(
        circuit_breaker={**BREAKER, "window": "4s"},
        slo={"success": 99, "burn": {"long_window": "1m", "threshold": 6}},
    )
    assert (own.short_window, own.long_window) == (2.0, 60.0)
    assert own.objectives[0].alert == 6
    # A loose budget's alert is capped halfway between 1 and every call bad: 90 % -> 5.5x.
    loose = risk_policy(slo={"success": 90, "latency": {"p50": "10ms"}})
    assert loose.objectives[0].alert == pytest.approx(5.5)
    assert loose.objectives[1].alert == pytest.approx(1.5)
    assert loose.min_requests == 20
    # Nothing to judge: no objective and no rate on the breaker.
    assert RiskPolicy.from_proto(policy(circuit_breaker={"consecutive_failures": 5})) is None
    assert RiskPolicy.from_proto(policy(timeout="1s")) is None


# -- counting ------------------------------------------------------------------------------------


def test_slots_count_windows_drop_the_old_and_reuse_the_ring() -> None:
    counts = SlotCounts(0.5, 10.0, [0.3], frozenset({"UNAVAILABLE"}))
    counts.add(
        [
            Outcome("OK", 0.1, 100.0),
            Outcome("UNAVAILABLE", 0.4, 100.2),
            Outcome("OK", 0.5, 104.9),
            Outcome("INVALID_ARGUMENT", 0.01, 104.9),
        ]
    )
    assert counts.window(105.0, 1.0) == (2, 0)  # the last second: two calls, no failure
    assert counts.window(105.0, 6.0) == (4, 1)
    assert counts.window(105.0, 6.0, series=0) == (4, 2)  # two at or over 300 ms
    counts.add([Outcome("UNAVAILABLE", 0.1, 120.0)])  # the ring wrapped: old slots are stale
    assert counts.window(120.0, 10.0) == (1, 1)
    counts.add([Outcome("UNAVAILABLE", 0.1, 100.2)])  # older than the ring: dropped
    assert counts.window(120.0, 10.0) == (1, 1)


def test_trend_is_the_weighted_least_squares_slope() -> None:
    times = [float(x) for x in range(-9, 1)]
    calls, rate, slope = trend(times, [100] * 10, [10 + 2 * int(x) + 18 for x in times])
    assert calls == 1000
    assert rate == pytest.approx(0.19)
    assert slope == pytest.approx(0.02)  # 2 % more per second
    # Weighted: a slot with more calls pulls the fit; empty slots count for nothing.
    assert trend(times, [0] * 9 + [50], [0] * 9 + [5])[1:] == (pytest.approx(0.1), 0.0)
    assert trend([], [], []) == (0, 0.0, 0.0)
    counts = SlotCounts(1.0, 10.0, [], frozenset({"UNAVAILABLE"}))
    for second in range(10):  # 1 % more failing each second, 100 calls a second
        counts.add(
            [
                Outcome("UNAVAILABLE" if i < second else "OK", 0.0, 500.0 + second)
                for i in range(100)
            ]
        )
    assert counts.trend(509.5, 10.0) == (1000, pytest.approx(0.045), pytest.approx(0.01))
    assert counts.trend(512.5, 10.0)[0] == 700  # three seconds on: three slots left the window


# -- the signals against a real breaker ----------------------------------------------------------


def test_a_rising_failure_rate_warns_well_before_the_breaker_opens() -> None:
    feed = Feed({"circuit_breaker": BREAKER})
    feed.run(45, ramp)
    assert feed.opened is not None
    (warned, reason), *_ = feed.raised()
    assert reason == REASON_FAILURE_TREND
    assert feed.opened - warned >= 7, (warned, feed.opened)


def test_error_budget_burn_warns_first_on_a_ramp() -> None:
    feed = Feed({"circuit_breaker": BREAKER, "slo": {"success": "99%"}})
    feed.run(45, ramp)
    (warned, reason), *_ = feed.raised()
    assert reason == REASON_ERROR_BUDGET
    assert feed.opened is not None and feed.opened - warned >= 15
    warning = feed.changes[0][1].new
    assert warning is not None and min(warning.burn_short, warning.burn_long) >= 10


def test_a_steady_error_rate_within_the_objective_warns_never() -> None:
    feed = Feed({"circuit_breaker": BREAKER, "slo": {"success": "99%"}})
    feed.run(120, lambda t: 0.01)
    assert feed.changes == []
    assert feed.risk.reading.burns[0][1] == pytest.approx(1.0, abs=0.3)
    # Steady at 5x the budget: burning, but below the alert.
    feed.run(60, lambda t: 0.05)
    assert feed.changes == []


def test_a_burst_in_the_short_window_alone_does_not_warn() -> None:
    feed = Feed({"circuit_breaker": BREAKER, "slo": {"success": "99%"}})
    feed.run(40, lambda t: 0.0)
    feed.run(2, lambda t: 0.5)  # 40 failures in 2 s: the short window burns 20x
    feed.run(3, lambda t: 0.0)
    assert feed.risk.reading.burns[0][2] < 10  # the long one (30 s) stays below
    assert feed.changes == []


def test_latency_objective_burn_and_slow_call_trend() -> None:
    slow_breaker = {
        "window": "10s",
        "min_requests": 20,
        "slow_call": {"threshold": "1s", "rate": 0.5},
    }
    feed = Feed({"circuit_breaker": slow_breaker, "slo": {"latency": {"p99": "300ms"}}})
    feed.run(30, lambda t: 0.0, latency=lambda t: 0.5 if t > 10 else 0.05)
    assert feed.raised()[0][1] == REASON_LATENCY_BUDGET
    trend_only = Feed({"circuit_breaker": slow_breaker})
    every = iter(range(10**9))
    trend_only.run(40, lambda t: 0.0, latency=lambda t: 2.0 if next(every) % 50 < t else 0.01)
    assert trend_only.raised()[0][1] == REASON_SLOW_TREND


# -- hysteresis ------------------------------------------------------------------------------------


def test_raised_after_two_evaluations_kept_in_the_band_cleared_after_the_short_window() -> None:
    feed = Feed({"circuit_breaker": BREAKER, "slo": {"success": "99%"}})
    feed.run(30, lambda t: 0.2)  # 20x in both windows, under the breaker's 50 %
    (warned, _), *_ = feed.raised()
    assert warned <= 2.0 + 2 * EVALUATE_EVERY  # min_requests after 0.5 s, then two evaluations
    # Between 0.8x and 1x the alert (8x to 10x): a raised warning stays.
    feed.run(40, lambda t: 0.09)
    assert feed.cleared() == []
    # Well: cleared once no signal held for the short window (5 s), not at once.
    feed.run(40, lambda t: 0.0)
    (cleared,) = feed.cleared()
    # The short window falls below 8x within a second (both must hold, so the long one
    # lagging does not keep it), then 5 s of quiet.
    assert 75 <= cleared <= 77, cleared
    assert len(feed.raised()) == 1  # no flapping


def test_kept_while_the_breaker_is_open() -> None:
    feed = Feed({"circuit_breaker": {**BREAKER, "open_for": "20s"}, "slo": {"success": "99%"}})
    feed.run(33, ramp)
    assert feed.opened is not None and feed.risk.warning is not None
    feed.run(12, lambda t: 0.0)  # the breaker is still open: calls rejected, nothing counted
    assert feed.breaker.state() is BreakerState.OPEN
    assert feed.cleared() == [] and feed.risk.warning is not None
    feed.run(30, lambda t: 0.0)  # closed again after its probes: cleared a short window later
    assert feed.breaker.state() is BreakerState.CLOSED and feed.closed is not None
    (cleared,) = feed.cleared()
    assert 5 <= cleared - feed.closed <= 6.5, (feed.closed, cleared)


# -- the board -------------------------------------------------------------------------------------


@pytest.fixture
def reader() -> Iterator[tuple[InMemoryMetricReader, AgentMetrics]]:
    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory])
    yield memory, AgentMetrics(provider.get_meter("test"))
    provider.shutdown()


def points(memory: InMemoryMetricReader, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
    data = memory.get_metrics_data()
    found: dict[frozenset[tuple[str, Any]], Any] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for p in metric.data.data_points:  # type: ignore[union-attr]
                        found[frozenset((p.attributes or {}).items())] = p.value
    return found


def test_a_breaker_closing_starts_the_counts_afresh() -> None:
    board = RiskBoard(clock=lambda: START + 1)
    board.set_policies({"orders": policy(circuit_breaker=BREAKER)})
    risk = board.get("orders")
    assert risk is not None
    board.record("orders", [Outcome("UNAVAILABLE", 0.01, START + 0.5)] * 30)
    assert risk.counts.window(START + 1, 10.0) == (30, 30)
    board.on_transition(
        Transition("orders", BreakerState.OPEN, BreakerState.HALF_OPEN, "open_elapsed", START)
    )
    assert risk.counts.window(START + 1, 10.0) == (30, 30)
    board.on_transition(
        Transition("orders", BreakerState.HALF_OPEN, BreakerState.CLOSED, "probes", START)
    )
    assert risk.counts.window(START + 1, 10.0) == (0, 0)


def test_board_logs_counts_and_signals_raise_and_clear(
    reader: tuple[InMemoryMetricReader, AgentMetrics],
) -> None:
    memory, metrics = reader
    now = [START]
    board = RiskBoard(clock=lambda: now[0], metrics=metrics)
    board.set_policies(
        {
            "orders": policy(circuit_breaker=BREAKER, slo={"success": "99%"}),
            "plain": policy(timeout="1s"),
        }
    )
    assert "orders" in board and "plain" not in board
    seen: list[Change] = []
    board.changes.connect(seen.append)
    with structlog.testing.capture_logs() as logs:
        for _ in range(60):  # 30 s: 20 calls per 0.5 s, 3 failing
            now[0] += 0.5
            calls = [
                Outcome("UNAVAILABLE" if i < 3 else "OK", 0.01, now[0] - i * 0.02)
                for i in range(20)
            ]
            board.record("orders", calls)
            board.record("plain", calls)
            board.evaluate()
    assert [(c.old, c.new is not None) for c in seen] == [(None, True)]
    (warning,) = board.warnings()
    assert warning.reason == REASON_ERROR_BUDGET and warning.burn_short == pytest.approx(
        15, rel=0.1
    )
    (raised,) = [line for line in logs if line["event"] == "service degrading"]
    assert raised["service"] == "orders" and raised["reason"] == REASON_ERROR_BUDGET
    assert points(memory, "mesh.service.degrading") == {frozenset({("mesh.service", "orders")}): 1}
    assert points(memory, "mesh.service.warnings") == {
        frozenset({("mesh.service", "orders"), ("mesh.warning.reason", REASON_ERROR_BUDGET)}): 1
    }
    burns = points(memory, "mesh.slo.burn_rate")
    short = frozenset(
        {
            ("mesh.service", "orders"),
            ("mesh.slo.objective", "success"),
            ("mesh.slo.window", "short"),
        }
    )
    assert burns[short] == pytest.approx(15, rel=0.1) and len(burns) == 2
    proto = warning.to_proto()
    assert proto.state == "degrading" and proto.since.seconds == int(warning.since)

    # The objective goes: the warning is cleared at once, with a log line.
    with structlog.testing.capture_logs() as logs:
        board.set_policies({"orders": policy(timeout="1s")})
    assert seen[-1].new is None and board.warnings() == []
    assert [line["event"] for line in logs] == ["service recovered"]
    assert points(memory, "mesh.service.degrading") == {}
