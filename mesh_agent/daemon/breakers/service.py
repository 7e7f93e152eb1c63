"""The node's circuit breakers as a service: policies from the cached config, outcomes from
local interceptors, transitions to watchers, state kept in the state dir. Watchers also hear
each watched service's call policy (its timeout, which the client library applies itself).

The breakers are the plain state of :mod:`mesh_agent.daemon.breakers.board` (no grpc); this
module feeds them and fans their transitions out. Event-loop owned.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from mesh.v1 import agent_pb2, config_pb2
from mesh_agent.daemon.breakers.board import BreakerBoard
from mesh_agent.daemon.breakers.breaker import BreakerState, BreakerStatus, Transition
from mesh_agent.daemon.breakers.policy import Outcome
from mesh_agent.daemon.breakers.risk import RiskBoard
from mesh_agent.daemon.cache import ConfigCache, atomic_write, decode
from mesh_agent.daemon.metrics import AgentMetrics, agent_metrics
from mesh_core.aio import wait_event
from mesh_core.errors import ConfigError
from mesh_core.signals import Signal
from mesh_xds.types import SERVICE_POLICY

log = structlog.get_logger(__name__)
STATE_FILE = "breakers.json"
PROTO_STATES = {
    BreakerState.CLOSED: agent_pb2.BREAKER_STATE_CLOSED,
    BreakerState.OPEN: agent_pb2.BREAKER_STATE_OPEN,
    BreakerState.HALF_OPEN: agent_pb2.BREAKER_STATE_HALF_OPEN,
}


def to_proto(status: BreakerStatus) -> agent_pb2.BreakerStatus:
    message = agent_pb2.BreakerStatus(
        service=status.service,
        state=PROTO_STATES[status.state],
        reason=status.reason,
        enabled=status.enabled,
    )
    if status.open_until is not None and status.state is BreakerState.OPEN:
        message.open_until.FromNanoseconds(int(status.open_until * 1e9))
    return message


def _without_breaker(service: str) -> agent_pb2.BreakerStatus:
    return agent_pb2.BreakerStatus(
        service=service, state=agent_pb2.BREAKER_STATE_CLOSED, enabled=False
    )


def _timeout_of(message: agent_pb2.CallPolicy | agent_pb2.RouteTimeout) -> int | None:
    return message.timeout.ToNanoseconds() if message.HasField("timeout") else None


def call_policy(service: str, policy: config_pb2.ServicePolicy | None) -> agent_pb2.CallPolicy:
    """What the client library applies to each call of ``service`` (no timeout when
    ``policy`` is None: the service is gone). The routes go along only when one of them
    sets a timeout other than the service's: the client then matches each call to its route
    as grpcio does."""
    message = agent_pb2.CallPolicy(service=service)
    if policy is None:
        return message
    default = policy.policy.timeout if policy.policy.HasField("timeout") else None
    if default is not None:
        message.timeout.CopyFrom(default)
    routes = []
    for route in policy.routes:
        own = route.policy.timeout if route.policy.HasField("timeout") else default
        entry = agent_pb2.RouteTimeout(match=route.match)
        if own is not None:
            entry.timeout.CopyFrom(own)
        routes.append(entry)
    if any(_timeout_of(entry) != _timeout_of(message) for entry in routes):
        message.routes.extend(routes)
    message.authorization.extend(policy.security.authorization)
    return message


WatchUpdate = agent_pb2.BreakerStatus | agent_pb2.CallPolicy


@dataclass(eq=False)
class Watcher:
    services: frozenset[str]  # empty: every breaker
    queue: asyncio.Queue[WatchUpdate] = field(default_factory=asyncio.Queue)

    def wants(self, service: str) -> bool:
        return not self.services or service in self.services


class BreakerHub:
    """The node's breakers as a service. ``metrics`` (default: the agent's, on the global
    meter) counts transitions and reports each breaker's state. :attr:`board` holds the
    breakers; its ``transitions`` signal tells of every change of state, and
    :attr:`watched_changed` of a change of the services local processes watch. :attr:`risk`
    judges the same outcomes for early warnings (:mod:`~mesh_agent.daemon.breakers.risk`)."""

    def __init__(self, state_dir: Path | None, *, metrics: AgentMetrics | None = None) -> None:
        self.state_dir = state_dir
        self.board = BreakerBoard()
        self.watchers: set[Watcher] = set()
        self.transitions: collections.Counter[tuple[str, str]] = collections.Counter()
        self.outcomes_received = 0
        self._wake = asyncio.Event()
        self._states: dict[str, BreakerState] = {}
        self.call_policies: dict[str, agent_pb2.CallPolicy] = {}
        self.metrics = metrics if metrics is not None else agent_metrics()
        self.watched_changed: Signal[[]] = Signal()
        self.board.transitions.connect(self._on_transition)
        self.metrics.observe_breakers(self)
        self.risk = RiskBoard(breaker_state=self.board.state, metrics=self.metrics)
        self.board.transitions.connect(self.risk.on_transition)

    # -- policy --------------------------------------------------------------------------------

    def watched(self) -> frozenset[str]:
        """Services some local process watches: the agent fetches their policies."""
        return frozenset(s for w in self.watchers for s in w.services)

    def apply_policies(self, cache: ConfigCache) -> None:
        policies: dict[str, config_pb2.CircuitBreakerPolicy | None] = {}
        calls: dict[str, agent_pb2.CallPolicy] = {}
        service_policies: dict[str, config_pb2.Policy] = {}
        for name, packed in cache.resources(SERVICE_POLICY).items():
            message = decode(packed, SERVICE_POLICY)
            assert isinstance(message, config_pb2.ServicePolicy)
            service_policies[name] = message.policy
            has = message.policy.HasField("circuit_breaker")
            policies[name] = message.policy.circuit_breaker if has else None
            calls[name] = call_policy(name, message)
        self._apply_call_policies(calls)
        self.risk.set_policies(service_policies)
        before = {s: self.status(s).enabled for s in self.board.services()}
        for service in self.board.services():
            if service not in policies:
                self.board.set_policy(service, None)
        for service, policy in policies.items():
            if policy is not None or service in self.board:
                self.board.set_policy(service, policy)
        # A breaker that appeared or went changes what watchers must do, with no transition.
        for service in set(before) | set(self.board.services()):
            if before.get(service, False) != self.status(service).enabled:
                self._notify(self.status(service))
        self._states = self.board.states()
        self._wake.set()

    def _apply_call_policies(self, calls: dict[str, agent_pb2.CallPolicy]) -> None:
        """Keeps the call policies and tells watchers of those that changed; a service whose
        policy went is told it has none."""
        before = self.call_policies
        self.call_policies = calls
        for service in sorted(set(before) | set(calls)):
            old, new = before.get(service), calls.get(service)
            if old != new:
                self._notify(new if new is not None else call_policy(service, None))

    def _notify(self, update: WatchUpdate) -> None:
        for watcher in self.watchers:
            if watcher.wants(update.service):
                watcher.queue.put_nowait(update)

    # -- calls from local processes ------------------------------------------------------------

    def record(self, outcomes: Iterable[agent_pb2.CallOutcome]) -> int:
        by_service: dict[str, list[Outcome]] = {}
        for outcome in outcomes:
            by_service.setdefault(outcome.service, []).append(
                Outcome(
                    code=outcome.code,
                    latency=outcome.latency_us / 1e6,
                    at=outcome.end_unix_ms / 1000,
                    probe=outcome.probe,
                )
            )
        counted = 0
        for service, batch in by_service.items():
            self.outcomes_received += len(batch)
            counted += self.board.record(service, batch)
            self.risk.record(service, batch)
        return counted

    def acquire_permit(self, service: str) -> agent_pb2.AcquirePermitResponse:
        breaker = self.board.get(service)
        if breaker is None:
            return agent_pb2.AcquirePermitResponse(granted=False, status=_without_breaker(service))
        granted = breaker.admit()
        return agent_pb2.AcquirePermitResponse(granted=granted, status=self.status(service))

    def _counted(self, message: agent_pb2.BreakerStatus) -> agent_pb2.BreakerStatus:
        message.transitions = sum(
            n for (service, _), n in self.transitions.items() if service == message.service
        )
        return message

    def status(self, service: str) -> agent_pb2.BreakerStatus:
        breaker = self.board.get(service)
        if breaker is None:
            return _without_breaker(service)
        return self._counted(to_proto(breaker.status()))

    def statuses(self) -> list[agent_pb2.BreakerStatus]:
        return [self._counted(to_proto(s)) for _, s in sorted(self.board.statuses().items())]

    def breaker_states(self) -> dict[str, BreakerState]:
        """Each breaker's state as of its last transition or policy change, by service. Safe
        to call from any thread (a metric reader's): it returns a copy and changes nothing."""
        return self._states.copy()

    def add_watcher(self, services: Iterable[str]) -> Watcher:
        watcher = Watcher(frozenset(services))
        before = self.watched()
        self.watchers.add(watcher)
        if self.watched() != before:
            self.watched_changed.emit()
        return watcher

    def remove_watcher(self, watcher: Watcher) -> None:
        before = self.watched()
        self.watchers.discard(watcher)
        if self.watched() != before:
            self.watched_changed.emit()

    def initial(self, watcher: Watcher) -> list[agent_pb2.BreakerStatus]:
        if watcher.services:
            return [self.status(s) for s in sorted(watcher.services)]
        return self.statuses()

    def initial_call_policies(self, watcher: Watcher) -> list[agent_pb2.CallPolicy]:
        """The call policies the agent holds of the watcher's services (of every service for
        a watcher of all); the others are sent when the agent learns them."""
        return [p for s, p in sorted(self.call_policies.items()) if watcher.wants(s)]

    # -- transitions ---------------------------------------------------------------------------

    def _on_transition(self, transition: Transition) -> None:
        self.transitions[(transition.service, transition.new.value)] += 1
        self.metrics.breaker_transition(transition)
        if transition.service in self.board:
            self._states[transition.service] = transition.new
        else:
            self._states.pop(transition.service, None)
        event = "circuit opened" if transition.new is BreakerState.OPEN else "circuit changed"
        log.info(
            event,
            service=transition.service,
            old=transition.old.value,
            new=transition.new.value,
            reason=transition.reason,
            open_until=transition.open_until,
        )
        self._notify(self.status(transition.service))
        self.save()
        self._wake.set()

    async def run(self) -> None:
        """Turns open breakers half-open on time, so watchers hear of it promptly."""
        while True:
            deadline = self.board.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            self._wake.clear()
            await wait_event(self._wake, timeout)
            self.board.tick()

    # -- persistence ---------------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        return self.state_dir / STATE_FILE if self.state_dir else None

    def save(self) -> None:
        if self.path is not None:
            document = {"format": 1, "breakers": self.board.snapshot()}
            atomic_write(self.path, json.dumps(document).encode())

    def load(self) -> None:
        path = self.path
        if path is None or not path.exists():
            return
        try:
            document = json.loads(path.read_text())
            if not isinstance(document, dict) or document.get("format") != 1:
                raise ConfigError("not a mesh-agent breaker state file of format 1")
            restored = self.board.restore(document["breakers"])
        except (OSError, ValueError, KeyError, TypeError, ConfigError) as error:
            target = path.with_name(f"{path.name}.rejected-{int(time.time())}")
            try:
                os.replace(path, target)
            except OSError:
                target = path
            log.warning(
                "breaker state file rejected",
                path=str(path),
                reason=str(error),
                moved_to=str(target),
            )
            return
        log.info("breaker state restored", services=restored)
