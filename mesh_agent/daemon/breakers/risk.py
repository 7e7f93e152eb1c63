"""Early warning: each service's risk signal, computed by the node agent from the call
outcomes its breakers already receive. A service is marked ``degrading`` before its breaker's
own thresholds are reached, or while its objective (``policy.slo``) is at risk. The signal is
only shown (GetAgentStatus, ``NodeHealth.warnings`` to mesh-control, the metrics
``mesh.service.degrading``, ``mesh.slo.burn_rate`` and ``mesh.service.warnings``, and the log
lines ``service degrading`` / ``service recovered``): it never changes routing.

Counting, on the hot path. Each outcome goes into a ring of fixed time slots of its service
(:mod:`~mesh_agent.daemon.breakers.slots`, by the outcome's end time; slot width
``max(short window / 10, span / 120, 0.1 s)``, the span being the longest window judged):
per outcome, an index, two integer additions and one comparison per latency target. Nothing
is judged per call: :meth:`RiskBoard.run` evaluates every service every ``EVALUATE_EVERY``
(0.5 s) from the slots' sums.

The signals, each from the calls of a window (a window with fewer than the breaker's
``min_requests`` calls, 20 without a breaker, is not judged):

1. **Error-budget burn** (``slo.success``), the multi-window burn rate of the SRE workbook.
   An objective S (99.9 %) leaves the budget b = 1 - S (0.1 % of calls may fail). Over a
   window with n calls of which f failed (by the breaker's ``failure_codes``),
   ``burn = (f / n) / b``: 1 spends the budget exactly as fast as the objective allows, 10
   ten times as fast. The service is degrading while the burn is at least B over *both* the
   short window (which reacts fast and lets go fast once the cause is gone) and the long
   window (so that a burst in the short one alone does not warn). The workbook pages at
   14.4 over 1 h and 5 min of a 30-day budget; a mesh must warn within seconds, so the
   windows follow the breaker's window W (short W/2, long 3W: 5 s and 30 s by default;
   ``slo.burn.short_window``/``long_window``) and B defaults to 10 (``slo.burn.threshold``).
   B is capped at (1 + 1/b) / 2, halfway between spending the budget exactly and every call
   failing, so that a loose objective (90 %) can still warn.
2. **Latency budget burn** (``slo.latency``, e.g. ``p99: 300ms``): the same, with the share
   of calls slower than the target against the budget 1 - q (1 % for p99, 50 % for p50).
3. **Breaker trend** (a breaker with ``failure_rate``; the same for ``slow_call``): over the
   breaker's window W, the rate r the breaker judges and its slope a, the weighted least
   squares fit of each slot's rate against time (weights: the slots' calls). For a rate
   rising linearly the window's average h seconds from now is r + a*h, so the breaker's
   threshold F is reached in h* = (F - r) / a. The service is degrading when r >= 0.8 F
   (close to the threshold, rising or not), or when r >= 0.5 F, a > 0 and h* <= W (halfway
   there and reaching it within a window).

Worked example (the e2e test's): a failure rate rising from 0 to 60 % over 30 s, a breaker
at F = 0.5 over W = 10 s. The window's rate is r(t) = 0.02 (t - 5) and a = 0.02/s, so the
breaker opens at t = 30 s; the trend warns when r >= 0.25 and h* <= 10 s, at t = 20 s. With
a 99 % objective (b = 1 %, B = 10: 10 % failing in both windows; the long window holds all
calls since 0, 0.01 t), the burn warns at t = 10 s. A steady 1 % against 99 % burns at 1.

Hysteresis. A warning is raised when a signal holds at ``RAISE_AFTER`` evaluations in a
row (1 s). While it is raised every level is multiplied by ``CLEAR_FACTOR`` (0.8; the
trend's horizon divided by it), and it is cleared once no signal has held for the short
window. While the service's breaker is open or half-open the warning is kept as it is: the
breaker says more, and the calls it rejects say nothing of the backend. When the breaker
closes again the counts start afresh (as the breaker's window does), so the warning clears a
short window later unless the calls since then raise it again.

Ownership: the agent's event loop. :meth:`RiskBoard.record` is called from
``BreakerHub.record``; gauges read :meth:`RiskBoard.degrading` and
:meth:`RiskBoard.burn_rates` from any thread (copies made at each evaluation).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final

import structlog

from mesh.v1 import node_pb2
from mesh_agent.daemon.breakers.breaker import BreakerState, Clock, Transition
from mesh_agent.daemon.breakers.policy import DEFAULT_MIN_REQUESTS, BreakerPolicy, Outcome
from mesh_agent.daemon.breakers.slots import SlotCounts
from mesh_core import slo as objectives
from mesh_core.errors import ConfigError
from mesh_core.signals import GuardedSignal

if TYPE_CHECKING:
    from mesh.v1 import config_pb2
    from mesh_agent.daemon.metrics import AgentMetrics

__all__ = [
    "DEGRADING",
    "BurnObjective",
    "RiskBoard",
    "RiskPolicy",
    "RiskWarning",
    "ServiceRisk",
]

log = structlog.get_logger(__name__)

EVALUATE_EVERY: Final = 0.5
RAISE_AFTER: Final = 2
CLEAR_FACTOR: Final = 0.8
NEAR: Final = 0.8
"""Share of the breaker's threshold at which the trend warns, rising or not."""
HALFWAY: Final = 0.5
"""Share of the breaker's threshold from which a rising rate warns when it reaches it
within one window."""
MAX_SLOTS: Final = 120
MIN_SLOT: Final = 0.1
SLOTS_PER_SHORT_WINDOW: Final = 10
LATENCY_RESOLUTION: Final = 1e-6
"""Outcomes carry whole microseconds: a call is over a latency target when it took at
least one microsecond more."""

DEGRADING: Final = "degrading"
REASON_ERROR_BUDGET: Final = "error_budget_burn"
REASON_LATENCY_BUDGET: Final = "latency_budget_burn"
REASON_FAILURE_TREND: Final = "failure_rate_trend"
REASON_SLOW_TREND: Final = "slow_call_trend"
SUCCESS: Final = "success"


@dataclass(frozen=True, slots=True)
class BurnObjective:
    """One budget judged by burn rate: ``success`` (failures) or a latency quantile
    (``p99``: calls slower than ``target`` seconds)."""

    name: str
    budget: float
    alert: float
    """The burn rate that raises a warning (``mesh_core.slo.alert_burn``)."""
    target: float | None = None
    objective: str = ""
    """The objective in words (``99.9%``, ``p99 300ms``), for log lines and details."""


@dataclass(frozen=True, slots=True)
class RiskPolicy:
    """What the agent judges of one service: its breaker's rate thresholds and its
    objectives, with every default filled in."""

    failure_codes: frozenset[str]
    window: float
    min_requests: int
    failure_rate: float = 0.0
    slow_threshold: float | None = None
    slow_rate: float = 0.0
    objectives: tuple[BurnObjective, ...] = ()
    short_window: float = 5.0
    long_window: float = 30.0

    @classmethod
    def from_proto(cls, policy: config_pb2.Policy) -> RiskPolicy | None:
        """The risk policy of a service's ``mesh.v1.Policy``; None when it has nothing to
        judge (no objective, and no breaker on a rate). Raises ConfigError on bad values."""
        has_breaker = policy.HasField("circuit_breaker")
        breaker = BreakerPolicy.from_proto(policy.circuit_breaker if has_breaker else None)
        burns: list[BurnObjective] = []
        short, long = objectives.burn_windows(policy)
        if policy.HasField("slo"):
            slo = policy.slo
            threshold = objectives.burn_threshold(slo)
            budget = objectives.success_budget(slo)
            if budget is not None:
                if not 0 < budget < 1:
                    raise ConfigError(f"slo.success must be in (0%, 100%), got {slo.success}%")
                alert = objectives.alert_burn(threshold, budget)
                burns.append(BurnObjective(SUCCESS, budget, alert, None, f"{slo.success:g}%"))
            for name, target, budget in objectives.latency_objectives(slo):
                if target <= 0:
                    raise ConfigError(f"slo.latency.{name} must be positive, got {target}s")
                alert = objectives.alert_burn(threshold, budget)
                words = f"{name} {target * 1000:g}ms"
                burns.append(BurnObjective(name, budget, alert, target, words))
            if not 0 < short < long:
                raise ConfigError(
                    f"slo.burn: need 0 < short window < long window, got {short}s, {long}s"
                )
        on_rates = breaker.failure_rate > 0 or breaker.slow_call_enabled
        if not burns and not on_rates:
            return None
        return cls(
            failure_codes=breaker.failure_codes,
            window=breaker.window,
            min_requests=breaker.min_requests if has_breaker else DEFAULT_MIN_REQUESTS,
            failure_rate=breaker.failure_rate,
            slow_threshold=breaker.slow_call_threshold if breaker.slow_call_enabled else None,
            slow_rate=breaker.slow_call_rate if breaker.slow_call_enabled else 0.0,
            objectives=tuple(burns),
            short_window=short,
            long_window=long,
        )

    @property
    def targets(self) -> tuple[float, ...]:
        """The latency thresholds counted per slot: a call is slow for each it reaches. The
        breaker's slow-call threshold first (judged like the breaker, ``>=``), then each
        latency objective's (a call is over ``p99: 300ms`` when it took longer)."""
        own = () if self.slow_threshold is None else (self.slow_threshold,)
        return own + tuple(
            o.target + LATENCY_RESOLUTION for o in self.objectives if o.target is not None
        )

    @property
    def span(self) -> float:
        """The longest window judged."""
        return max(self.window, self.long_window if self.objectives else 0.0)

    @property
    def slot(self) -> float:
        return max(self.short_window / SLOTS_PER_SHORT_WINDOW, self.span / MAX_SLOTS, MIN_SLOT)


@dataclass(frozen=True, slots=True)
class RiskWarning:
    """A raised warning (``mesh.v1.ServiceWarning``): what raised it, the burn rates over
    the short and the long window (of the objective that raised it, else of the success
    objective; 0 without one) and the reading in words."""

    service: str
    reason: str
    since: float
    burn_short: float = 0.0
    burn_long: float = 0.0
    detail: str = ""
    state: str = DEGRADING

    def to_proto(self) -> node_pb2.ServiceWarning:
        message = node_pb2.ServiceWarning(
            service=self.service,
            state=self.state,
            reason=self.reason,
            burn_short=self.burn_short,
            burn_long=self.burn_long,
            detail=self.detail,
        )
        message.since.FromNanoseconds(int(self.since * 1e9))
        return message


@dataclass(frozen=True, slots=True)
class Reading:
    """One evaluation of one service: the first signal that holds (None: none does) and
    the burn rates and words to show."""

    reason: str | None
    judged: bool
    burn_short: float = 0.0
    burn_long: float = 0.0
    detail: str = ""
    burns: tuple[tuple[str, float, float], ...] = ()
    """``(objective, short burn, long burn)`` of every objective judged."""


@dataclass(frozen=True, slots=True)
class Change:
    """A warning raised (``old`` None), cleared (``new`` None) or whose reason changed."""

    service: str
    old: RiskWarning | None
    new: RiskWarning | None


@dataclass(eq=False)
class ServiceRisk:
    """One service's counts and warning state."""

    service: str
    policy: RiskPolicy
    counts: SlotCounts = field(init=False)
    warning: RiskWarning | None = None
    reading: Reading = field(default_factory=lambda: Reading(None, judged=False))
    _streak: int = 0
    _quiet_since: float | None = None

    def __post_init__(self) -> None:
        p = self.policy
        self.counts = SlotCounts(p.slot, p.span, p.targets, p.failure_codes)

    def read(self, now: float) -> Reading:
        """The signals at ``now``, with the levels lowered while a warning is raised."""
        p, counts = self.policy, self.counts
        factor = CLEAR_FACTOR if self.warning is not None else 1.0
        reason: str | None = None
        judged = False
        burns: list[tuple[str, float, float]] = []
        shown: tuple[float, float] | None = None
        details: list[str] = []
        series = 0 if p.slow_threshold is not None else -1
        for objective in p.objectives:
            index = -1 if objective.target is None else series + 1
            if objective.target is not None:
                series += 1
            short_calls, short_bad = counts.window(now, p.short_window, index)
            long_calls, long_bad = counts.window(now, p.long_window, index)
            if short_calls < p.min_requests or long_calls < p.min_requests:
                continue
            judged = True
            burn_short = short_bad / short_calls / objective.budget
            burn_long = long_bad / long_calls / objective.budget
            burns.append((objective.name, burn_short, burn_long))
            hot = min(burn_short, burn_long) >= objective.alert * factor
            if shown is None or (hot and reason is None):
                shown = (burn_short, burn_long)
            words = (
                f"{objective.objective}: burn {burn_short:.1f}x over {p.short_window:g}s, "
                f"{burn_long:.1f}x over {p.long_window:g}s (warns at {objective.alert:g}x)"
            )
            if hot and reason is None:
                reason = REASON_ERROR_BUDGET if objective.target is None else REASON_LATENCY_BUDGET
                details.insert(0, words)
            elif hot:
                details.append(words)
        trends = (
            (REASON_FAILURE_TREND, "failure rate", p.failure_rate, -1),
            (REASON_SLOW_TREND, "slow-call rate", p.slow_rate, 0),
        )
        for name, what, threshold, index in trends:
            if threshold <= 0:
                continue
            calls, rate, slope = counts.trend(now, p.window, index)
            if calls < p.min_requests:
                continue
            judged = True
            near = rate >= NEAR * threshold * factor
            rising = (
                rate >= HALFWAY * threshold * factor
                and slope > 0
                and (threshold - rate) / slope <= p.window / factor
            )
            if near or rising:
                words = (
                    f"{what} {rate:.2f} over {p.window:g}s, {slope:+.3f}/s; "
                    f"the breaker opens at {threshold:g}"
                )
                if slope > 0 and rate < threshold:
                    words += f" (in ~{(threshold - rate) / slope:.0f}s at this pace)"
                if reason is None:
                    reason = name
                    details.insert(0, words)
                else:
                    details.append(words)
        burn_short, burn_long = shown if shown is not None else (0.0, 0.0)
        return Reading(reason, judged, burn_short, burn_long, "; ".join(details), tuple(burns))

    def evaluate(self, now: float, breaker: BreakerState | None) -> Change | None:
        """Reads the signals and moves the warning; returns the change, if any."""
        reading = self.read(now)
        self.reading = reading
        old = self.warning
        if breaker is not None and breaker is not BreakerState.CLOSED and old is not None:
            self._quiet_since = None
            return None  # kept while the breaker is not closed
        if reading.reason is not None:
            self._streak += 1
            self._quiet_since = None
            if old is None:
                if self._streak < RAISE_AFTER:
                    return None
                self.warning = RiskWarning(
                    self.service,
                    reading.reason,
                    now,
                    reading.burn_short,
                    reading.burn_long,
                    reading.detail,
                )
                return Change(self.service, None, self.warning)
            self.warning = replace(
                old,
                reason=reading.reason,
                burn_short=reading.burn_short,
                burn_long=reading.burn_long,
                detail=reading.detail,
            )
            return Change(self.service, old, self.warning) if old.reason != reading.reason else None
        self._streak = 0
        if old is None:
            return None
        if self._quiet_since is None:
            self._quiet_since = now
        if now - self._quiet_since < self.policy.short_window:
            return None
        self.warning = None
        return Change(self.service, old, None)


BreakerStateOf = Callable[[str], "BreakerState | None"]


class RiskBoard:
    """Every service's risk signal on the node. :meth:`set_policies` follows the config,
    :meth:`record` takes outcomes (hot path), :meth:`evaluate` (from :meth:`run`, on a
    timer) moves the warnings and emits each change on :attr:`changes`, after logging it
    and counting it in ``metrics``."""

    def __init__(
        self,
        *,
        clock: Clock = time.time,
        breaker_state: BreakerStateOf | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self._clock = clock
        self._breaker_state = breaker_state
        self._metrics = metrics
        self._services: dict[str, ServiceRisk] = {}
        self._degrading: dict[str, bool] = {}
        self._burns: list[tuple[str, str, str, float]] = []
        self.changes: GuardedSignal[[Change]] = GuardedSignal("risk subscriber failed")
        """Emitted when a warning is raised, cleared, or raised for another reason."""
        if metrics is not None:
            metrics.observe_risk(self)

    def __contains__(self, service: object) -> bool:
        return service in self._services

    def get(self, service: str) -> ServiceRisk | None:
        return self._services.get(service)

    def set_policies(self, policies: Mapping[str, config_pb2.Policy]) -> None:
        """Judges each service of ``policies`` that has something to judge. A service whose
        policy is unchanged keeps its counts and warning; a new policy starts counting
        afresh (keeping the warning); a service gone, or with nothing left to judge, has its
        warning cleared."""
        wanted: dict[str, RiskPolicy] = {}
        for service, policy in policies.items():
            try:
                risk = RiskPolicy.from_proto(policy)
            except ConfigError as error:
                log.warning("risk signal off: bad policy", service=service, reason=str(error))
                continue
            if risk is not None:
                wanted[service] = risk
        for service in sorted(set(self._services) - set(wanted)):
            gone = self._services.pop(service)
            if gone.warning is not None:
                self._announce(Change(service, gone.warning, None), gone.reading)
        for service, risk in wanted.items():
            current = self._services.get(service)
            if current is not None and current.policy == risk:
                continue
            fresh = ServiceRisk(service, risk)
            if current is not None:
                fresh.warning = current.warning
            self._services[service] = fresh
        self._publish()

    def breaker_closed(self, service: str) -> None:
        """The service's breaker closed again: like the breaker's window, the counts start
        afresh, so that calls from before it opened do not keep (or raise) a warning."""
        risk = self._services.get(service)
        if risk is not None:
            risk.counts = SlotCounts(
                risk.policy.slot, risk.policy.span, risk.policy.targets, risk.policy.failure_codes
            )

    def on_transition(self, transition: Transition) -> None:
        """For a breaker board's ``transitions`` signal."""
        if transition.new is BreakerState.CLOSED and transition.old is not BreakerState.CLOSED:
            self.breaker_closed(transition.service)

    def record(self, service: str, outcomes: Sequence[Outcome]) -> None:
        """Counts one service's outcomes (the hot path: a lookup and O(1) per outcome)."""
        risk = self._services.get(service)
        if risk is not None:
            risk.counts.add(outcomes)

    def evaluate(self) -> list[Change]:
        now = self._clock()
        changes = []
        for service, risk in list(self._services.items()):
            state = self._breaker_state(service) if self._breaker_state is not None else None
            change = risk.evaluate(now, state)
            if change is not None:
                changes.append(change)
                self._announce(change, risk.reading)
        self._publish()
        return changes

    def warnings(self) -> list[RiskWarning]:
        """The warnings raised, by service."""
        return [r.warning for _, r in sorted(self._services.items()) if r.warning is not None]

    def degrading(self) -> dict[str, bool]:
        """Whether each judged service is degrading; callable from any thread."""
        return self._degrading

    def burn_rates(self) -> list[tuple[str, str, str, float]]:
        """``(service, objective, window, burn)`` as of the last evaluation, window
        ``short`` or ``long``; callable from any thread."""
        return self._burns

    def _publish(self) -> None:
        """New copies for readers on other threads (each replaced whole, never changed)."""
        self._degrading = {s: r.warning is not None for s, r in self._services.items()}
        self._burns = [
            (service, objective, window, burn)
            for service, risk in self._services.items()
            for objective, short, long in risk.reading.burns
            for window, burn in (("short", short), ("long", long))
        ]

    def _announce(self, change: Change, reading: Reading) -> None:
        if change.new is not None:
            warning = change.new
            if change.old is None and self._metrics is not None:
                self._metrics.service_warning(warning.service, warning.reason)
            log.warning(
                "service degrading",
                service=warning.service,
                reason=warning.reason,
                burn_short=round(warning.burn_short, 3),
                burn_long=round(warning.burn_long, 3),
                detail=warning.detail,
                since=warning.since,
                **({"previous_reason": change.old.reason} if change.old is not None else {}),
            )
        elif change.old is not None:
            log.info(
                "service recovered",
                service=change.service,
                reason=change.old.reason,
                burn_short=round(reading.burn_short, 3),
                burn_long=round(reading.burn_long, 3),
                degraded_for=round(self._clock() - change.old.since, 3),
            )
        self.changes.emit(change)

    async def run(self) -> None:
        """Evaluates every ``EVALUATE_EVERY`` seconds, for ever."""
        while True:
            await asyncio.sleep(EVALUATE_EVERY)
            self.evaluate()
