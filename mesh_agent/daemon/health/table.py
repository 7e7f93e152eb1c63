"""Endpoint health state for the node agent's active health checks (DESIGN decision 5).

Plain objects with no grpc import: they take health-check results and emit transitions.
The transport code (:mod:`mesh_agent.daemon.health.checker`) only feeds them check results and
target lists; the local EDS it serves only reads :meth:`HealthTable.overrides`.

Ownership: every object here belongs to the agent's asyncio event loop. Nothing is locked;
mutate and read them from that loop only (or from one thread, in tests).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from mesh_core import policy as policy_defaults
from mesh_core.errors import ConfigError
from mesh_core.signals import GuardedSignal

if TYPE_CHECKING:
    from mesh.v1 import config_pb2

HealthStatus = Literal["unknown", "healthy", "unhealthy"]
UNKNOWN: Final = "unknown"
HEALTHY: Final = "healthy"
UNHEALTHY: Final = "unhealthy"

DEFAULT_INTERVAL: Final = policy_defaults.HEALTH_CHECK_INTERVAL_S
DEFAULT_TIMEOUT: Final = policy_defaults.HEALTH_CHECK_TIMEOUT_S
DEFAULT_UNHEALTHY_THRESHOLD: Final = policy_defaults.HEALTH_CHECK_UNHEALTHY_THRESHOLD
DEFAULT_HEALTHY_THRESHOLD: Final = policy_defaults.HEALTH_CHECK_HEALTHY_THRESHOLD
DEFAULT_PANIC_THRESHOLD: Final = 0.5
DEFAULT_TRANSITION_HISTORY: Final = 100

Placement = tuple[str, int]
"""Where an endpoint is served: its zone and its priority in the service's assignment (as the
control server set it for this node's zone)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the local EDS serves of one service's endpoints, from their checks.

    ``unhealthy``: the endpoints to serve as unhealthy, ``{address: status}`` (empty in
    panic). ``first_zones``: when the own zone spills over, every zone served at priority 0
    (the own zone and the next ones); empty to keep the priorities as received.
    ``panic``: every zone has too few usable endpoints, so the checks are ignored."""

    unhealthy: Mapping[str, str] = field(default_factory=dict)
    first_zones: frozenset[str] = frozenset()
    panic: bool = False


NO_VERDICT: Final = Verdict()


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """How one service's endpoints are checked. Durations in seconds."""

    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    unhealthy_threshold: int = DEFAULT_UNHEALTHY_THRESHOLD
    healthy_threshold: int = DEFAULT_HEALTHY_THRESHOLD
    service_name: str = ""

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ConfigError(f"health check interval must be > 0, got {self.interval}")
        if self.timeout <= 0:
            raise ConfigError(f"health check timeout must be > 0, got {self.timeout}")
        if self.unhealthy_threshold < 1:
            raise ConfigError(f"unhealthy_threshold must be >= 1, got {self.unhealthy_threshold}")
        if self.healthy_threshold < 1:
            raise ConfigError(f"healthy_threshold must be >= 1, got {self.healthy_threshold}")

    @classmethod
    def from_proto(cls, policy: config_pb2.HealthCheckPolicy | None) -> HealthPolicy:
        """Converts a ``mesh.v1.HealthCheckPolicy``; 0 or unset fields take the defaults
        (5s interval, 1s timeout, 3 failures to go unhealthy, 2 successes to come back)."""
        if policy is None:
            return cls()
        interval = policy.interval.seconds + policy.interval.nanos / 1e9
        timeout = policy.timeout.seconds + policy.timeout.nanos / 1e9
        return cls(
            interval=interval if interval > 0 else DEFAULT_INTERVAL,
            timeout=timeout if timeout > 0 else DEFAULT_TIMEOUT,
            unhealthy_threshold=policy.unhealthy_threshold or DEFAULT_UNHEALTHY_THRESHOLD,
            healthy_threshold=policy.healthy_threshold or DEFAULT_HEALTHY_THRESHOLD,
            service_name=policy.service_name,
        )


@dataclass(frozen=True, slots=True)
class Transition:
    """One endpoint's change of health state. ``at`` is wall-clock time (``time.time()``)."""

    service: str
    address: str
    old: HealthStatus
    new: HealthStatus
    at: float


class EndpointHealthState:
    """Health of one endpoint (service, address), from consecutive check results.

    Starts ``unknown`` (usable). ``unhealthy_threshold`` consecutive failures make it
    ``unhealthy``; ``healthy_threshold`` consecutive successes make it ``healthy``. A result
    of the other kind resets the opposite counter. Owned by the agent's event loop.
    """

    __slots__ = (
        "address",
        "consecutive_failures",
        "consecutive_successes",
        "healthy_threshold",
        "service",
        "status",
        "unhealthy_threshold",
    )

    def __init__(
        self,
        service: str,
        address: str,
        unhealthy_threshold: int = DEFAULT_UNHEALTHY_THRESHOLD,
        healthy_threshold: int = DEFAULT_HEALTHY_THRESHOLD,
    ) -> None:
        if unhealthy_threshold < 1 or healthy_threshold < 1:
            raise ConfigError("health thresholds must be >= 1")
        self.service = service
        self.address = address
        self.unhealthy_threshold = unhealthy_threshold
        self.healthy_threshold = healthy_threshold
        self.status: HealthStatus = UNKNOWN
        self.consecutive_failures = 0
        self.consecutive_successes = 0

    @property
    def usable(self) -> bool:
        """Whether traffic may go to the endpoint: ``healthy`` or ``unknown``."""
        return self.status != UNHEALTHY

    def record(self, ok: bool, now: float | None = None) -> Transition | None:
        """Takes one check result; returns the transition if the state changed."""
        if ok:
            self.consecutive_successes += 1
            self.consecutive_failures = 0
            new: HealthStatus = (
                HEALTHY if self.consecutive_successes >= self.healthy_threshold else self.status
            )
        else:
            self.consecutive_failures += 1
            self.consecutive_successes = 0
            new = (
                UNHEALTHY if self.consecutive_failures >= self.unhealthy_threshold else self.status
            )
        if new == self.status:
            return None
        old, self.status = self.status, new
        return Transition(self.service, self.address, old, new, time.time() if now is None else now)

    def __repr__(self) -> str:
        return (
            f"EndpointHealthState({self.service!r}, {self.address!r}, status={self.status!r}, "
            f"failures={self.consecutive_failures}, successes={self.consecutive_successes})"
        )


class HealthTable:
    """Health states of every checked (service, address) pair, and the verdicts the agent
    serves from them.

    :meth:`verdict` says what the local EDS serves of a service's endpoints, zone by zone
    (each endpoint's zone and priority come with its targets):

    - the endpoints that fail their checks are served as unhealthy, so calls avoid them;
    - spill-over: when fewer than ``spill_over_below`` of the endpoints at priority 0 (the own
      zone) are usable, or none is, the zones at the next priority are served at priority 0
      too, and so on (gRPC fails over by priority but does no overprovisioning);
    - panic, measured per zone like Envoy's panic threshold per priority: only when every
      zone has fewer than ``panic_threshold`` of its endpoints usable are the checks ignored
      for the service, so traffic still flows when every endpoint fails its checks; a zone
      below the threshold while another is above it is failed over from, not panicked in.

    Owned by the agent's asyncio event loop: not thread-safe; observers of :attr:`changed` are
    called synchronously, on that loop, from inside the mutating call.
    """

    def __init__(
        self,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        history: int = DEFAULT_TRANSITION_HISTORY,
    ) -> None:
        if not 0.0 <= panic_threshold <= 1.0:
            raise ConfigError(f"panic_threshold must be in [0, 1], got {panic_threshold}")
        self.panic_threshold = panic_threshold
        self._states: dict[str, dict[str, EndpointHealthState]] = {}
        self._policies: dict[str, HealthPolicy] = {}
        self._placement: dict[str, Mapping[str, Placement]] = {}
        self._spill: dict[str, float] = {}
        self._transitions: deque[Transition] = deque(maxlen=history)
        self._verdicts: dict[str, Verdict] = {}
        """Each service's verdict, computed when first read after a change: a check result
        that changes no state (nearly all of them) costs a lookup, not a verdict."""
        self.changed: GuardedSignal[[str]] = GuardedSignal("health subscriber failed")
        """Emitted with a service name whenever that service's overrides or panic flag
        change. An observer that raises is logged; the others are still called."""
        self._generation = 0

    # -- feeding -------------------------------------------------------------------------

    def update_targets(
        self,
        service: str,
        addresses: Iterable[str],
        policy: HealthPolicy | config_pb2.HealthCheckPolicy | None = None,
        placement: Mapping[str, Placement] | None = None,
        spill_over_below: float = policy_defaults.SPILL_OVER_BELOW,
    ) -> None:
        """Sets the endpoints checked for ``service``. New ones start ``unknown``, removed
        ones are forgotten, survivors keep their state (and take the policy's thresholds).
        ``placement`` gives each endpoint's zone and priority (unlisted: zone "", priority
        0). An empty list forgets the service."""
        pol = policy if isinstance(policy, HealthPolicy) else HealthPolicy.from_proto(policy)
        wanted = list(dict.fromkeys(addresses))
        before = self._verdict(service)
        if not wanted:
            self._states.pop(service, None)
            self._policies.pop(service, None)
            self._placement.pop(service, None)
            self._spill.pop(service, None)
        else:
            self._placement[service] = dict(placement or {})
            self._spill[service] = spill_over_below
            old = self._states.get(service, {})
            states: dict[str, EndpointHealthState] = {}
            for address in wanted:
                state = old.get(address)
                if state is None:
                    state = EndpointHealthState(
                        service, address, pol.unhealthy_threshold, pol.healthy_threshold
                    )
                else:
                    state.unhealthy_threshold = pol.unhealthy_threshold
                    state.healthy_threshold = pol.healthy_threshold
                states[address] = state
            self._states[service] = states
            self._policies[service] = pol
        self._verdicts.pop(service, None)
        self._changed(service, before)

    def remove_service(self, service: str) -> None:
        """Forgets every endpoint of ``service``."""
        self.update_targets(service, [])

    def record(self, service: str, address: str, ok: bool) -> Transition | None:
        """Takes one check result. Results for endpoints no longer targeted are ignored."""
        state = self._states.get(service, {}).get(address)
        if state is None:
            return None
        before = self._verdict(service)
        transition = state.record(ok)
        if transition is not None:
            self._transitions.append(transition)
            self._verdicts.pop(service, None)
            self._changed(service, before)
        return transition

    # -- reading -------------------------------------------------------------------------

    def verdict(self, service: str) -> Verdict:
        """What the local EDS serves of ``service``'s endpoints (see the class)."""
        return self._verdict(service)

    def overrides(self, service: str) -> dict[str, str]:
        """Endpoints of ``service`` that must be served as unhealthy, ``{address: status}``.
        Empty when no endpoint failed its checks or when the service is in panic."""
        return dict(self._verdict(service).unhealthy)

    def in_panic(self, service: str) -> bool:
        """True when every zone has too few usable endpoints and the checks are ignored."""
        return self._verdict(service).panic

    def status(self, service: str, address: str) -> HealthStatus | None:
        """The endpoint's health state, or None when it is not targeted."""
        state = self._states.get(service, {}).get(address)
        return None if state is None else state.status

    def state(self, service: str, address: str) -> EndpointHealthState | None:
        return self._states.get(service, {}).get(address)

    def statuses(self, service: str) -> dict[str, HealthStatus]:
        """Every targeted endpoint of ``service`` and its raw health state."""
        return {a: s.status for a, s in self._states.get(service, {}).items()}

    def policy(self, service: str) -> HealthPolicy | None:
        return self._policies.get(service)

    def services(self) -> list[str]:
        return list(self._states)

    def endpoint_usability(self) -> list[tuple[str, str, bool]]:
        """``(service, address, usable)`` of every targeted endpoint, from its raw state (a
        service in panic still shows its unhealthy endpoints). Safe to call from any thread
        (a metric reader's): it reads copies and changes nothing."""
        return [
            (service, address, state.usable)
            for service, states in self._states.copy().items()
            for address, state in states.copy().items()
        ]

    def recent_transitions(self) -> list[Transition]:
        """The most recent transitions, oldest first (bounded by ``history``)."""
        return list(self._transitions)

    @property
    def generation(self) -> int:
        """Counter bumped each time any service's overrides or panic flag change."""
        return self._generation

    def _verdict(self, service: str) -> Verdict:
        verdict = self._verdicts.get(service)
        if verdict is None:
            if service not in self._states:
                return NO_VERDICT
            verdict = self._verdicts[service] = self._judge(service)
        return verdict

    def _judge(self, service: str) -> Verdict:
        states = self._states.get(service)
        if not states:
            return NO_VERDICT
        placement = self._placement.get(service, {})
        zones: dict[str, list[EndpointHealthState]] = {}
        levels: dict[int, list[EndpointHealthState]] = {}
        zones_at: dict[int, set[str]] = {}
        for address, state in states.items():
            zone, level = placement.get(address, ("", 0))
            zones.setdefault(zone, []).append(state)
            levels.setdefault(level, []).append(state)
            zones_at.setdefault(level, set()).add(zone)
        if all(_usable_share(members) < self.panic_threshold for members in zones.values()):
            return Verdict(panic=True)
        unhealthy = {a: s.status for a, s in states.items() if not s.usable}
        order = sorted(levels)
        spill = self._spill.get(service, policy_defaults.SPILL_OVER_BELOW)
        served: list[EndpointHealthState] = []
        first: set[str] = set()
        for level in order:
            served += levels[level]
            first |= zones_at[level]
            share = _usable_share(served)
            if share >= spill and share > 0:
                break
        spilled = len(first) > len(zones_at[order[0]])
        return Verdict(unhealthy, frozenset(first) if spilled else frozenset())

    def _changed(self, service: str, before: Verdict) -> None:
        if self._verdict(service) == before:
            return
        self._generation += 1
        self.changed.emit(service)


def _usable_share(states: list[EndpointHealthState]) -> float:
    return sum(1 for state in states if state.usable) / len(states)
