"""One service's circuit breaker for the whole node (DESIGN decisions 4 and 5): its state
machine, the transitions it emits, and the state of it worth keeping across an agent restart.

A plain state machine with no grpc import. The interceptors of every local process report
call outcomes to it in batches (only what backends answered, never the mesh's own rejections)
and follow its state through a watch stream. Transport code only feeds it (outcomes, permit
requests, timer ticks) and reads it (states, transitions).

States::

    CLOSED --trip--> OPEN --open_until passes--> HALF_OPEN --probes succeed--> CLOSED
                      ^                              |
                      +-------- a probe fails -------+

Time-driven transitions are evaluated lazily on every call, and on :meth:`CircuitBreaker.tick`,
which the agent calls from a timer at :meth:`CircuitBreaker.next_deadline` so watchers see them
promptly.

Ownership: every object here belongs to the agent's asyncio event loop. Nothing is locked;
use them from that loop only (or from one thread, in tests). Observers of
:attr:`CircuitBreaker.transitions` are called synchronously from inside the call that caused
the transition.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog

from mesh_agent.daemon.breakers.policy import BreakerPolicy, Outcome
from mesh_core.errors import ConfigError
from mesh_core.signals import GuardedSignal

__all__ = [
    "BreakerState",
    "BreakerStatus",
    "CircuitBreaker",
    "Clock",
    "SavedBreaker",
    "Transition",
]

log = structlog.get_logger(__name__)

Clock = Callable[[], float]

JITTER: Final = 0.1
"""Open durations are multiplied by a factor drawn uniformly from [1 - JITTER, 1 + JITTER]."""
DEFAULT_HISTORY: Final = 100
SNAPSHOT_VERSION: Final = 1
_MAX_EXPONENT: Final = 62

# Transition reasons.
REASON_CONSECUTIVE_FAILURES: Final = "consecutive_failures"
REASON_FAILURE_RATE: Final = "failure_rate"
REASON_SLOW_CALL_RATE: Final = "slow_call_rate"
REASON_PROBE_FAILED: Final = "probe_failed"
REASON_OPEN_ELAPSED: Final = "open_elapsed"
REASON_PROBES_SUCCEEDED: Final = "probes_succeeded"
REASON_POLICY_DISABLED: Final = "policy_disabled"
REASON_POLICY_REMOVED: Final = "policy_removed"
REASON_RESTORED: Final = "restored"


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Transition:
    """One breaker's change of state. ``open_until`` is set when ``new`` is OPEN."""

    service: str
    old: BreakerState
    new: BreakerState
    reason: str
    at: float
    open_until: float | None = None


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """What watchers need to follow a breaker (mirrors ``mesh.v1.BreakerStatus``)."""

    service: str
    state: BreakerState
    open_until: float | None
    reason: str
    enabled: bool


class _Call:
    __slots__ = ("at", "code", "failed", "latency", "slow")

    def __init__(self, at: float, code: str, latency: float, policy: BreakerPolicy) -> None:
        self.at = at
        self.code = code
        self.latency = latency
        self.failed = policy.is_failure(code)
        self.slow = policy.is_slow(latency)


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"breaker snapshot: {key} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ConfigError(f"breaker snapshot: {key} must be finite, got {value}")
    return float(value)


@dataclass(frozen=True, slots=True)
class SavedBreaker:
    """The state of one breaker worth keeping across an agent restart: what
    :meth:`CircuitBreaker.snapshot` writes (as JSON-serialisable data, :meth:`dump`) and
    :meth:`CircuitBreaker.restore` reads back (:meth:`parse`)."""

    state: BreakerState
    open_until: float | None
    trips_in_a_row: int
    reason: str

    @classmethod
    def parse(cls, data: object) -> SavedBreaker:
        """The saved state in ``data``; raises ConfigError naming what is malformed."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"breaker snapshot must be a mapping, got {type(data).__name__}")
        version = data.get("version", SNAPSHOT_VERSION)
        if version != SNAPSHOT_VERSION:
            raise ConfigError(
                f"breaker snapshot: unsupported version {version!r} (expected {SNAPSHOT_VERSION})"
            )
        raw_state = data.get("state")
        try:
            state = BreakerState(raw_state)
        except ValueError:
            choices = ", ".join(s.value for s in BreakerState)
            raise ConfigError(
                f"breaker snapshot: state must be one of {choices}, got {raw_state!r}"
            ) from None
        trips = data.get("trips_in_a_row", 0)
        if isinstance(trips, bool) or not isinstance(trips, int) or trips < 0:
            raise ConfigError(
                f"breaker snapshot: trips_in_a_row must be an integer >= 0, got {trips!r}"
            )
        if state is not BreakerState.CLOSED and trips < 1:
            raise ConfigError(
                f"breaker snapshot: a {state.value} breaker needs trips_in_a_row >= 1"
            )
        reason = data.get("reason", "")
        if reason is None:
            reason = ""
        if not isinstance(reason, str):
            raise ConfigError(
                f"breaker snapshot: reason must be a string, got {type(reason).__name__}"
            )
        open_until = _number(data, "open_until")
        if state is BreakerState.OPEN and open_until is None:
            raise ConfigError("breaker snapshot: an open breaker needs open_until")
        return cls(
            state=state,
            open_until=open_until if state is BreakerState.OPEN else None,
            trips_in_a_row=trips,
            reason=reason,
        )

    def dump(self, saved_at: float) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "state": self.state.value,
            "open_until": self.open_until,
            "trips_in_a_row": self.trips_in_a_row,
            "reason": self.reason,
            "saved_at": saved_at,
        }


class CircuitBreaker:
    """The breaker of one service for the whole node.

    CLOSED: outcomes feed a sliding time window (``policy.window``, by the outcomes' ``at``)
    and a consecutive-failure counter; the breaker trips when consecutive failures reach
    ``consecutive_failures``, or, with at least ``min_requests`` calls in the window, when
    the failure ratio reaches ``failure_rate`` or the slow ratio reaches ``slow_call_rate``.
    Codes not in ``failure_codes`` count as successes.

    OPEN: lasts ``open_for * 2^(trips_in_a_row - 1)`` with ±10 % jitter, capped at
    ``max_open_for``; outcomes are ignored (stragglers). Then HALF_OPEN.

    HALF_OPEN: at most ``half_open_probes`` permits are out (a permit unresolved after
    ``policy.permit_timeout`` is reclaimed). ``half_open_probes`` probe successes close the
    breaker (and reset ``trips_in_a_row``); a probe failure (failure code, or slow call when
    slow calls are judged) opens it again for the next longer duration.

    Outcomes that ended before the current state began are stragglers from an earlier phase
    and are ignored, except those flagged ``probe``.
    """

    def __init__(
        self,
        service: str,
        policy: BreakerPolicy,
        clock: Clock = time.time,
        rng: random.Random | None = None,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        self.service = service
        self._policy = policy
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._state = BreakerState.CLOSED
        self._since = -math.inf  # when the current state began; earlier outcomes are stragglers
        self._open_until: float | None = None
        self._trips_in_a_row = 0
        self._reason = ""
        # CLOSED: sliding window and running counts.
        self._window: deque[_Call] = deque()
        self._failures = 0
        self._slow = 0
        self._consecutive = 0
        # HALF_OPEN: grant times of outstanding permits (oldest first) and probe successes.
        self._permits: deque[float] = deque()
        self._probe_successes = 0
        self._history: deque[Transition] = deque(maxlen=history)
        self.transitions: GuardedSignal[[Transition]] = GuardedSignal(
            "breaker subscriber failed", service=service
        )
        """Emitted with every transition, from inside the call that caused it. An observer
        that raises is logged; the others are still called."""

    # -- reading -------------------------------------------------------------------------

    @property
    def policy(self) -> BreakerPolicy:
        return self._policy

    @property
    def enabled(self) -> bool:
        return self._policy.enabled

    def state(self) -> BreakerState:
        self._advance(self._clock())
        return self._state

    @property
    def open_until(self) -> float | None:
        """While OPEN: when the breaker turns HALF_OPEN. None in other states."""
        return self._open_until

    @property
    def trips_in_a_row(self) -> int:
        return self._trips_in_a_row

    @property
    def reason(self) -> str:
        """Why the breaker last opened ("" if it never did)."""
        return self._reason

    @property
    def history(self) -> list[Transition]:
        """The most recent transitions, oldest first (bounded)."""
        return list(self._history)

    def status(self) -> BreakerStatus:
        state = self.state()
        return BreakerStatus(self.service, state, self._open_until, self._reason, self.enabled)

    def window_counts(self) -> tuple[int, int, int]:
        """(calls, failures, slow calls) currently in the CLOSED window."""
        self._advance(self._clock())
        return len(self._window), self._failures, self._slow

    def permits_out(self) -> int:
        """Half-open permits granted and not yet resolved or reclaimed."""
        self._advance(self._clock())
        return len(self._permits)

    def next_deadline(self) -> float | None:
        """When the next time-driven transition (or permit reclaim) is due, or None."""
        self._advance(self._clock())
        if self._state is BreakerState.OPEN:
            return self._open_until
        if self._state is BreakerState.HALF_OPEN and self._permits:
            return self._permits[0] + self._policy.permit_timeout
        return None

    # -- feeding -------------------------------------------------------------------------

    def tick(self) -> list[Transition]:
        """Evaluates time-driven transitions now; returns those that happened."""
        return self._advance(self._clock())

    def admit(self) -> bool:
        """Whether a call may go ahead: CLOSED yes, OPEN no, HALF_OPEN if a permit is free."""
        return self.acquire_permit()

    def acquire_permit(self) -> bool:
        """Hands out one of the half-open probe permits. CLOSED always grants (no permit is
        needed), OPEN never does."""
        now = self._clock()
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            return False
        if len(self._permits) + self._probe_successes >= self._policy.half_open_probes:
            return False
        self._permits.append(now)
        return True

    def record(self, outcome: Outcome) -> bool:
        """Takes one outcome; returns True if it was counted (False when ignored: breaker
        disabled or OPEN, outcome a straggler or older than the window, or no probe
        outstanding while HALF_OPEN)."""
        if not self._policy.enabled:
            return False
        now = self._clock()
        self._advance(now)
        if self._state is BreakerState.OPEN:
            return False
        if outcome.at < self._since and not outcome.probe:
            return False
        if self._state is BreakerState.HALF_OPEN:
            return self._record_probe(outcome, now)
        if outcome.at <= now - self._policy.window:
            return False
        call = _Call(outcome.at, outcome.code, outcome.latency, self._policy)
        self._window.append(call)
        self._failures += call.failed
        self._slow += call.slow
        self._consecutive = self._consecutive + 1 if call.failed else 0
        self._maybe_trip(now)
        return True

    def record_all(self, outcomes: Iterable[Outcome]) -> int:
        """Records a batch; returns how many outcomes were counted."""
        return sum(self.record(o) for o in outcomes)

    def update_policy(self, policy: BreakerPolicy) -> list[Transition]:
        """Applies a new policy keeping the state: the CLOSED window is reclassified and
        re-evaluated (it may trip), an OPEN period is shortened to the new ``max_open_for``,
        HALF_OPEN keeps its permits. A disabled policy closes the breaker."""
        now = self._clock()
        transitions = self._advance(now)
        self._policy = policy
        if not policy.enabled:
            if self._state is not BreakerState.CLOSED:
                transitions.append(self._close(now, REASON_POLICY_DISABLED))
            self._reset_window()
            return transitions
        if self._state is BreakerState.CLOSED:
            calls = list(self._window)
            self._reset_window(keep_consecutive=True)
            for old in calls:
                call = _Call(old.at, old.code, old.latency, policy)
                self._window.append(call)
                self._failures += call.failed
                self._slow += call.slow
            self._expire(now)
            transitions.extend(self._maybe_trip(now))
        elif self._state is BreakerState.OPEN:
            assert self._open_until is not None
            self._open_until = min(self._open_until, now + policy.max_open_for)
        elif self._probe_successes >= policy.half_open_probes:
            transitions.append(self._close(now, REASON_PROBES_SUCCEEDED))
        transitions.extend(self._advance(now))
        return transitions

    # -- persistence ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The state worth keeping across an agent restart, JSON-serialisable."""
        now = self._clock()
        self._advance(now)
        saved = SavedBreaker(self._state, self._open_until, self._trips_in_a_row, self._reason)
        return saved.dump(now)

    @classmethod
    def restore(
        cls,
        service: str,
        policy: BreakerPolicy,
        data: object,
        clock: Clock = time.time,
        rng: random.Random | None = None,
        history: int = DEFAULT_HISTORY,
    ) -> CircuitBreaker:
        """A breaker in the state :meth:`snapshot` saved. OPEN keeps its ``open_until``
        (at most ``max_open_for`` from now; if already past it turns HALF_OPEN on the next
        evaluation), HALF_OPEN comes back with no permits out, CLOSED with an empty window.
        With a disabled policy the breaker is CLOSED. Raises ConfigError on a malformed dict."""
        saved = SavedBreaker.parse(data)
        breaker = cls(service, policy, clock=clock, rng=rng, history=history)
        breaker.apply_saved(saved)
        return breaker

    def apply_saved(self, saved: SavedBreaker, *, notify: bool = False) -> Transition | None:
        """Replaces the whole state with ``saved``. With ``notify``, a change of state is
        emitted as a transition (reason "restored"), for breakers that may have watchers."""
        now = self._clock()
        old = self._state
        self._state = BreakerState.CLOSED
        self._since = -math.inf
        self._open_until = None
        self._trips_in_a_row = 0
        self._reset_window()
        self._permits.clear()
        self._probe_successes = 0
        self._reason = saved.reason
        if self._policy.enabled:
            self._trips_in_a_row = saved.trips_in_a_row
            self._state = saved.state
            if saved.state is not BreakerState.CLOSED:
                self._since = now
            if saved.state is BreakerState.OPEN:
                assert saved.open_until is not None
                self._open_until = min(saved.open_until, now + self._policy.max_open_for)
        if not notify or self._state is old:
            return None
        new_state, self._state = self._state, old
        return self._transition(new_state, REASON_RESTORED, now)

    # -- internals -----------------------------------------------------------------------

    def _advance(self, now: float) -> list[Transition]:
        transitions: list[Transition] = []
        if self._state is BreakerState.OPEN:
            assert self._open_until is not None
            if now >= self._open_until:
                transitions.append(self._half_open(now))
        if self._state is BreakerState.HALF_OPEN:
            timeout = self._policy.permit_timeout
            while self._permits and self._permits[0] + timeout <= now:
                granted = self._permits.popleft()
                log.info(
                    "breaker probe permit reclaimed",
                    service=self.service,
                    granted_at=granted,
                    timeout=timeout,
                )
        elif self._state is BreakerState.CLOSED:
            self._expire(now)
        return transitions

    def _expire(self, now: float) -> None:
        # Outcomes arrive roughly in order (batches from several processes); one that arrives
        # behind a newer one leaves the window when that one does.
        horizon = now - self._policy.window
        window = self._window
        while window and window[0].at <= horizon:
            call = window.popleft()
            self._failures -= call.failed
            self._slow -= call.slow

    def _reset_window(self, keep_consecutive: bool = False) -> None:
        self._window.clear()
        self._failures = 0
        self._slow = 0
        if not keep_consecutive:
            self._consecutive = 0

    def _trip_reason(self) -> str | None:
        p = self._policy
        if p.consecutive_failures and self._consecutive >= p.consecutive_failures:
            return REASON_CONSECUTIVE_FAILURES
        calls = len(self._window)
        if calls < p.min_requests or calls == 0:
            return None
        if p.failure_rate > 0 and self._failures / calls >= p.failure_rate:
            return REASON_FAILURE_RATE
        if p.slow_call_enabled and self._slow / calls >= p.slow_call_rate:
            return REASON_SLOW_CALL_RATE
        return None

    def _maybe_trip(self, now: float) -> list[Transition]:
        reason = self._trip_reason()
        if reason is None:
            return []
        return [self._open(now, reason)]

    def _record_probe(self, outcome: Outcome, now: float) -> bool:
        if not self._permits:
            return False  # nobody holds a permit: a straggler
        if not outcome.probe and outcome.at < self._permits[0]:
            return False  # ended before any outstanding probe was granted
        self._permits.popleft()
        p = self._policy
        if p.is_failure(outcome.code) or (p.slow_call_enabled and p.is_slow(outcome.latency)):
            self._open(now, REASON_PROBE_FAILED)
        else:
            self._probe_successes += 1
            if self._probe_successes >= p.half_open_probes:
                self._close(now, REASON_PROBES_SUCCEEDED)
        return True

    def _open_duration(self) -> float:
        p = self._policy
        exponent = min(self._trips_in_a_row - 1, _MAX_EXPONENT)
        base = min(p.open_for * 2.0**exponent, p.max_open_for)
        jitter = self._rng.uniform(1.0 - JITTER, 1.0 + JITTER)
        return min(base * jitter, p.max_open_for)

    def _open(self, now: float, reason: str) -> Transition:
        self._trips_in_a_row += 1
        duration = self._open_duration()
        self._open_until = now + duration
        self._reason = reason
        self._reset_window()
        self._permits.clear()
        self._probe_successes = 0
        return self._transition(BreakerState.OPEN, reason, now, open_for=duration)

    def _half_open(self, now: float) -> Transition:
        self._open_until = None
        self._permits.clear()
        self._probe_successes = 0
        return self._transition(BreakerState.HALF_OPEN, REASON_OPEN_ELAPSED, now)

    def _close(self, now: float, reason: str) -> Transition:
        self._open_until = None
        self._trips_in_a_row = 0
        self._reset_window()
        self._permits.clear()
        self._probe_successes = 0
        return self._transition(BreakerState.CLOSED, reason, now)

    def _transition(
        self, new: BreakerState, reason: str, now: float, open_for: float | None = None
    ) -> Transition:
        old, self._state = self._state, new
        if reason != REASON_RESTORED:
            self._since = now
        transition = Transition(self.service, old, new, reason, now, self._open_until)
        self._history.append(transition)
        fields: dict[str, Any] = {
            "service": self.service,
            "old": old.value,
            "new": new.value,
            "reason": reason,
        }
        if new is BreakerState.OPEN:
            fields.update(open_until=self._open_until, trips_in_a_row=self._trips_in_a_row)
            if open_for is not None:
                fields["open_for"] = round(open_for, 3)
            log.warning("circuit breaker opened", **fields)
        else:
            log.info("circuit breaker transition", **fields)
        self.transitions.emit(transition)
        return transition

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker({self.service!r}, state={self._state.value}, "
            f"open_until={self._open_until}, trips_in_a_row={self._trips_in_a_row}, "
            f"reason={self._reason!r})"
        )
