"""Every service's circuit breaker on the node: :class:`BreakerBoard` creates, updates and
removes breakers as policies come and go, feeds them, relays their transitions, and keeps
their saved state (restored state waits there for its service's policy).

Plain state with no grpc import, owned by the agent's event loop (see
:mod:`mesh_agent.daemon.breakers.breaker`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from mesh_agent.daemon.breakers.breaker import (
    DEFAULT_HISTORY,
    REASON_POLICY_REMOVED,
    BreakerState,
    BreakerStatus,
    CircuitBreaker,
    Clock,
    SavedBreaker,
    Transition,
)
from mesh_agent.daemon.breakers.policy import BreakerPolicy, Outcome
from mesh_core.errors import ConfigError
from mesh_core.signals import GuardedSignal

if TYPE_CHECKING:
    from mesh.v1 import config_pb2

__all__ = ["BreakerBoard"]

log = structlog.get_logger(__name__)


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
        self._disconnect: dict[str, Callable[[], None]] = {}
        self._pending: dict[str, SavedBreaker] = {}
        self.transitions: GuardedSignal[[Transition]] = GuardedSignal(
            "breaker board subscriber failed"
        )
        """Emitted with every transition of any breaker (and with the transition to CLOSED of
        a breaker removed while not closed). An observer that raises is logged; the others
        are still called."""

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
            self._disconnect.pop(service)()
            if state is BreakerState.CLOSED:
                return []
            transition = Transition(service, state, BreakerState.CLOSED, REASON_POLICY_REMOVED, now)
            log.info(
                "circuit breaker removed",
                service=service,
                old=state.value,
                reason=REASON_POLICY_REMOVED,
            )
            self.transitions.emit(transition)
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
            breaker.apply_saved(saved)
        self._breakers[service] = breaker
        self._disconnect[service] = breaker.transitions.connect(self.transitions.emit)
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

    # -- persistence ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{service: breaker snapshot}`` for every breaker, plus restored state still
        waiting for its policy. JSON-serialisable."""
        now = self._clock()
        data = {service: saved.dump(now) for service, saved in self._pending.items()}
        data.update({service: b.snapshot() for service, b in self._breakers.items()})
        return data

    def restore(self, data: object) -> list[str]:
        """Restores what :meth:`snapshot` saved; returns the services restored. A malformed
        entry is skipped with a warning; the others are restored. An existing breaker takes
        the restored state in place (subscribers stay and see the change as a transition
        with reason "restored"); an entry for a service without a
        policy waits for :meth:`set_policy`. Raises ConfigError if ``data`` is not a mapping."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"breaker board snapshot must be a mapping, got {type(data).__name__}"
            )
        restored: list[str] = []
        for service, entry in data.items():
            if not isinstance(service, str) or not service:
                log.warning("skipping breaker snapshot entry: bad service name", service=service)
                continue
            try:
                saved = SavedBreaker.parse(entry)
            except ConfigError as exc:
                log.warning(
                    "skipping malformed breaker snapshot entry", service=service, error=str(exc)
                )
                continue
            existing = self._breakers.get(service)
            if existing is None:
                self._pending[service] = saved
            else:
                existing.apply_saved(saved, notify=True)
            restored.append(service)
        return restored
