"""The node agent's per-service circuit breakers (DESIGN decisions 4 and 5).

Plain state machines with no grpc import. The agent holds one :class:`CircuitBreaker` per
service for the whole node, in a :class:`BreakerBoard`; the interceptors of every local process
report call outcomes to it in batches (only what backends answered, never the mesh's own
rejections) and follow its state through a watch stream. Transport code only feeds these
objects (outcomes, permit requests, timer ticks) and reads them (states, transitions).

States::

    CLOSED --trip--> OPEN --open_until passes--> HALF_OPEN --probes succeed--> CLOSED
                      ^                              |
                      +-------- a probe fails -------+

Time-driven transitions are evaluated lazily on every call, and on :meth:`CircuitBreaker.tick`,
which the agent calls from a timer at :meth:`CircuitBreaker.next_deadline` so watchers see them
promptly.

Ownership: every object here belongs to the agent's asyncio event loop. Nothing is locked;
use them from that loop only (or from one thread, in tests). Subscribers are called
synchronously from inside the call that caused the transition.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import structlog

from mesh_core import policy

if TYPE_CHECKING:
    from google.protobuf.duration_pb2 import Duration

    from mesh.v1 import config_pb2

__all__ = [
    "DEFAULT_FAILURE_CODES",
    "GRPC_STATUS_NAMES",
    "BreakerBoard",
    "BreakerPolicy",
    "BreakerState",
    "BreakerStatus",
    "CircuitBreaker",
    "Clock",
    "Outcome",
    "Transition",
    "TransitionCallback",
]

log = structlog.get_logger(__name__)

Clock = Callable[[], float]

GRPC_STATUS_NAMES: Final = frozenset({"OK", *policy.GRPC_STATUS_NAMES})
DEFAULT_FAILURE_CODES: Final = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "RESOURCE_EXHAUSTED"}
)
DEFAULT_WINDOW: Final = 10.0
DEFAULT_MIN_REQUESTS: Final = 20
DEFAULT_OPEN_FOR: Final = 5.0
DEFAULT_MAX_OPEN_FACTOR: Final = 10.0
DEFAULT_HALF_OPEN_PROBES: Final = 1
MIN_PERMIT_TIMEOUT: Final = 5.0
"""A half-open permit not resolved within ``max(open_for, MIN_PERMIT_TIMEOUT)`` is reclaimed."""
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


def _seconds(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """One service's breaker policy. Durations are float seconds (sub-second allowed).

    Rates are in [0, 1]; a rate of 0 (or ``consecutive_failures`` 0, or a ``None``
    ``slow_call_threshold``) disables that trigger. ``max_open_for`` 0 means
    ``10 * open_for``; it is never below ``open_for``. With no trigger enabled the breaker
    always admits (:attr:`enabled` is False).
    """

    failure_rate: float = 0.0
    window: float = DEFAULT_WINDOW
    min_requests: int = DEFAULT_MIN_REQUESTS
    consecutive_failures: int = 0
    open_for: float = DEFAULT_OPEN_FOR
    max_open_for: float = 0.0
    half_open_probes: int = DEFAULT_HALF_OPEN_PROBES
    slow_call_threshold: float | None = None
    slow_call_rate: float = 0.0
    failure_codes: frozenset[str] = DEFAULT_FAILURE_CODES

    def __post_init__(self) -> None:
        for name in ("failure_rate", "slow_call_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        for name in ("window", "open_for"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        if not (math.isfinite(self.max_open_for) and self.max_open_for >= 0):
            raise ValueError(f"max_open_for must be >= 0 seconds, got {self.max_open_for}")
        if self.min_requests < 1:
            raise ValueError(f"min_requests must be >= 1, got {self.min_requests}")
        if self.consecutive_failures < 0:
            raise ValueError(f"consecutive_failures must be >= 0, got {self.consecutive_failures}")
        if self.half_open_probes < 1:
            raise ValueError(f"half_open_probes must be >= 1, got {self.half_open_probes}")
        if self.slow_call_threshold is not None and not (
            math.isfinite(self.slow_call_threshold) and self.slow_call_threshold > 0
        ):
            raise ValueError(
                f"slow_call_threshold must be a positive number of seconds or None, "
                f"got {self.slow_call_threshold}"
            )
        codes = frozenset(self.failure_codes)
        unknown = sorted(c for c in codes if c not in GRPC_STATUS_NAMES)
        if unknown:
            raise ValueError(f"failure_codes: unknown gRPC status name(s) {', '.join(unknown)}")
        if "OK" in codes:
            raise ValueError("failure_codes: OK cannot be a failure")
        object.__setattr__(self, "failure_codes", codes or DEFAULT_FAILURE_CODES)
        default_max = self.open_for * DEFAULT_MAX_OPEN_FACTOR
        object.__setattr__(
            self, "max_open_for", max(self.max_open_for or default_max, self.open_for)
        )

    @classmethod
    def from_proto(cls, policy: config_pb2.CircuitBreakerPolicy | None) -> BreakerPolicy:
        """Converts a ``mesh.v1.CircuitBreakerPolicy``; unset or zero fields take the
        defaults. ``None`` gives a disabled policy. Raises ValueError on values out of range."""
        if policy is None:
            return cls()
        window = _seconds(policy.window)
        open_for = _seconds(policy.open_for)
        threshold = _seconds(policy.slow_call.threshold) if policy.HasField("slow_call") else 0.0
        codes = frozenset(
            c.strip().upper().replace("-", "_") for c in policy.failure_codes if c.strip()
        )
        return cls(
            failure_rate=policy.failure_rate,
            window=window if window > 0 else DEFAULT_WINDOW,
            min_requests=policy.min_requests or DEFAULT_MIN_REQUESTS,
            consecutive_failures=policy.consecutive_failures,
            open_for=open_for if open_for > 0 else DEFAULT_OPEN_FOR,
            max_open_for=max(_seconds(policy.max_open_for), 0.0),
            half_open_probes=policy.half_open_probes or DEFAULT_HALF_OPEN_PROBES,
            slow_call_threshold=threshold if threshold > 0 else None,
            slow_call_rate=policy.slow_call.rate if threshold > 0 else 0.0,
            failure_codes=codes or DEFAULT_FAILURE_CODES,
        )

    @property
    def slow_call_enabled(self) -> bool:
        return self.slow_call_threshold is not None and self.slow_call_rate > 0

    @property
    def enabled(self) -> bool:
        """False when no trigger is set: the breaker then always admits."""
        return self.failure_rate > 0 or self.consecutive_failures > 0 or self.slow_call_enabled

    @property
    def permit_timeout(self) -> float:
        """How long a half-open probe permit may stay unresolved before it is reclaimed."""
        return max(self.open_for, MIN_PERMIT_TIMEOUT)

    def is_failure(self, code: str) -> bool:
        return code in self.failure_codes

    def is_slow(self, latency: float) -> bool:
        return self.slow_call_threshold is not None and latency >= self.slow_call_threshold


@dataclass(frozen=True, slots=True)
class Outcome:
    """One call's result as a backend answered it.

    ``code`` is the gRPC status name ("OK" for success), ``latency`` in seconds, ``at`` when
    the call ended (same clock as the breaker's, ``time.time()`` by default). ``probe`` is set
    on the outcome of a call admitted by a half-open permit.
    """

    code: str
    latency: float
    at: float
    probe: bool = False


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


TransitionCallback = Callable[[Transition], None]


class _Call:
    __slots__ = ("at", "code", "failed", "latency", "slow")

    def __init__(self, at: float, code: str, latency: float, policy: BreakerPolicy) -> None:
        self.at = at
        self.code = code
        self.latency = latency
        self.failed = policy.is_failure(code)
        self.slow = policy.is_slow(latency)


@dataclass(frozen=True, slots=True)
class _Saved:
    state: BreakerState
    open_until: float | None
    trips_in_a_row: int
    reason: str


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"breaker snapshot: {key} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"breaker snapshot: {key} must be finite, got {value}")
    return float(value)


def _parse_snapshot(data: object) -> _Saved:
    if not isinstance(data, Mapping):
        raise ValueError(f"breaker snapshot must be a mapping, got {type(data).__name__}")
    version = data.get("version", SNAPSHOT_VERSION)
    if version != SNAPSHOT_VERSION:
        raise ValueError(
            f"breaker snapshot: unsupported version {version!r} (expected {SNAPSHOT_VERSION})"
        )
    raw_state = data.get("state")
    try:
        state = BreakerState(raw_state)
    except ValueError:
        choices = ", ".join(s.value for s in BreakerState)
        raise ValueError(
            f"breaker snapshot: state must be one of {choices}, got {raw_state!r}"
        ) from None
    trips = data.get("trips_in_a_row", 0)
    if isinstance(trips, bool) or not isinstance(trips, int) or trips < 0:
        raise ValueError(f"breaker snapshot: trips_in_a_row must be an integer >= 0, got {trips!r}")
    if state is not BreakerState.CLOSED and trips < 1:
        raise ValueError(f"breaker snapshot: a {state.value} breaker needs trips_in_a_row >= 1")
    reason = data.get("reason", "")
    if reason is None:
        reason = ""
    if not isinstance(reason, str):
        raise ValueError(f"breaker snapshot: reason must be a string, got {type(reason).__name__}")
    open_until = _number(data, "open_until")
    if state is BreakerState.OPEN and open_until is None:
        raise ValueError("breaker snapshot: an open breaker needs open_until")
    return _Saved(
        state=state,
        open_until=open_until if state is BreakerState.OPEN else None,
        trips_in_a_row=trips,
        reason=reason,
    )


def _dump(saved: _Saved, saved_at: float) -> dict[str, Any]:
    return {
        "version": SNAPSHOT_VERSION,
        "state": saved.state.value,
        "open_until": saved.open_until,
        "trips_in_a_row": saved.trips_in_a_row,
        "reason": saved.reason,
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
        self._subscribers: list[TransitionCallback] = []

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

    def subscribe(self, callback: TransitionCallback) -> Callable[[], None]:
        """Calls ``callback(transition)`` on every transition; returns an unsubscribe
        function. A raising callback is logged and does not stop the others."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    # -- persistence ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The state worth keeping across an agent restart, JSON-serialisable."""
        now = self._clock()
        self._advance(now)
        saved = _Saved(self._state, self._open_until, self._trips_in_a_row, self._reason)
        return _dump(saved, now)

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
        With a disabled policy the breaker is CLOSED. Raises ValueError on a malformed dict."""
        saved = _parse_snapshot(data)
        breaker = cls(service, policy, clock=clock, rng=rng, history=history)
        breaker._apply(saved)
        return breaker

    def _apply(self, saved: _Saved, notify: bool = False) -> Transition | None:
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
        for callback in list(self._subscribers):
            try:
                callback(transition)
            except Exception:
                log.exception("breaker subscriber failed", service=self.service)
        return transition

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker({self.service!r}, state={self._state.value}, "
            f"open_until={self._open_until}, trips_in_a_row={self._trips_in_a_row}, "
            f"reason={self._reason!r})"
        )


class BreakerBoard:
    """Every service's breaker on the node.

    :meth:`set_policy` creates, updates or removes a service's breaker. Services without a
    breaker always admit. Saved state restored for a service that has no policy yet is kept
    and applied when its policy arrives (and is still part of :meth:`snapshot`).
    """

    def __init__(
        self,
        clock: Clock = time.time,
        rng: random.Random | None = None,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._history = history
        self._breakers: dict[str, CircuitBreaker] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self._pending: dict[str, _Saved] = {}
        self._subscribers: list[TransitionCallback] = []

    # -- policies ------------------------------------------------------------------------

    def set_policy(
        self,
        service: str,
        policy: BreakerPolicy | config_pb2.CircuitBreakerPolicy | None,
    ) -> list[Transition]:
        """Creates, updates (keeping state) or, with None, removes ``service``'s breaker.
        Removing a breaker that is not CLOSED emits a transition to CLOSED."""
        now = self._clock()
        if policy is None:
            self._pending.pop(service, None)
            breaker = self._breakers.pop(service, None)
            if breaker is None:
                return []
            state = breaker.state()
            self._unsubscribe.pop(service)()
            if state is BreakerState.CLOSED:
                return []
            transition = Transition(service, state, BreakerState.CLOSED, REASON_POLICY_REMOVED, now)
            log.info(
                "circuit breaker removed",
                service=service,
                old=state.value,
                reason=REASON_POLICY_REMOVED,
            )
            self._dispatch(transition)
            return [transition]
        pol = policy if isinstance(policy, BreakerPolicy) else BreakerPolicy.from_proto(policy)
        existing = self._breakers.get(service)
        if existing is not None:
            return existing.update_policy(pol)
        breaker = CircuitBreaker(
            service, pol, clock=self._clock, rng=self._rng, history=self._history
        )
        saved = self._pending.pop(service, None)
        if saved is not None:
            breaker._apply(saved)
        self._breakers[service] = breaker
        self._unsubscribe[service] = breaker.subscribe(self._dispatch)
        return breaker.tick()

    def get(self, service: str) -> CircuitBreaker | None:
        return self._breakers.get(service)

    def services(self) -> list[str]:
        return list(self._breakers)

    def __contains__(self, service: object) -> bool:
        return service in self._breakers

    # -- feeding and reading -------------------------------------------------------------

    def record(self, service: str, outcomes: Iterable[Outcome]) -> int:
        """Records a batch of ``service``'s outcomes; returns how many were counted (0 for
        a service without a breaker)."""
        breaker = self._breakers.get(service)
        if breaker is None:
            return 0
        return breaker.record_all(outcomes)

    def admit(self, service: str) -> bool:
        """Whether a call to ``service`` may go ahead (True when it has no breaker)."""
        breaker = self._breakers.get(service)
        return True if breaker is None else breaker.admit()

    def state(self, service: str) -> BreakerState | None:
        breaker = self._breakers.get(service)
        return None if breaker is None else breaker.state()

    def states(self) -> dict[str, BreakerState]:
        return {service: b.state() for service, b in self._breakers.items()}

    def statuses(self) -> dict[str, BreakerStatus]:
        return {service: b.status() for service, b in self._breakers.items()}

    def next_deadline(self) -> float | None:
        deadlines = [d for b in self._breakers.values() if (d := b.next_deadline()) is not None]
        return min(deadlines, default=None)

    def tick(self) -> list[Transition]:
        transitions: list[Transition] = []
        for breaker in list(self._breakers.values()):
            transitions.extend(breaker.tick())
        return transitions

    def subscribe(self, callback: TransitionCallback) -> Callable[[], None]:
        """Calls ``callback(transition)`` on every transition of any breaker; returns an
        unsubscribe function. A raising callback is logged and does not stop the others."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _dispatch(self, transition: Transition) -> None:
        for callback in list(self._subscribers):
            try:
                callback(transition)
            except Exception:
                log.exception("breaker board subscriber failed", service=transition.service)

    # -- persistence ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{service: breaker snapshot}`` for every breaker, plus restored state still
        waiting for its policy. JSON-serialisable."""
        now = self._clock()
        data = {service: _dump(saved, now) for service, saved in self._pending.items()}
        data.update({service: b.snapshot() for service, b in self._breakers.items()})
        return data

    def restore(self, data: object) -> list[str]:
        """Restores what :meth:`snapshot` saved; returns the services restored. A malformed
        entry is skipped with a warning; the others are restored. An existing breaker takes
        the restored state in place (subscribers stay and see the change as a transition
        with reason "restored"); an entry for a service without a
        policy waits for :meth:`set_policy`. Raises ValueError if ``data`` is not a mapping."""
        if not isinstance(data, Mapping):
            raise ValueError(f"breaker board snapshot must be a mapping, got {type(data).__name__}")
        restored: list[str] = []
        for service, entry in data.items():
            if not isinstance(service, str) or not service:
                log.warning("skipping breaker snapshot entry: bad service name", service=service)
                continue
            try:
                saved = _parse_snapshot(entry)
            except ValueError as exc:
                log.warning(
                    "skipping malformed breaker snapshot entry", service=service, error=str(exc)
                )
                continue
            existing = self._breakers.get(service)
            if existing is None:
                self._pending[service] = saved
            else:
                existing._apply(saved, notify=True)
            restored.append(service)
        return restored
