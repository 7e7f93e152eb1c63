"""The node's circuit breakers: a service's :mod:`~mesh_agent.daemon.breakers.policy`, one
service's :mod:`~mesh_agent.daemon.breakers.breaker` (the state machine), the
:mod:`~mesh_agent.daemon.breakers.board` of every service's breaker (all plain state, no
grpc), and the :mod:`~mesh_agent.daemon.breakers.service` that feeds them for the agent and
its :mod:`~mesh_agent.daemon.breakers.component`. The early warnings judge the same outcomes:
:mod:`~mesh_agent.daemon.breakers.risk` (counted in :mod:`~mesh_agent.daemon.breakers.slots`)."""

from mesh_agent.daemon.breakers.board import BreakerBoard
from mesh_agent.daemon.breakers.breaker import (
    BreakerState,
    BreakerStatus,
    CircuitBreaker,
    Clock,
    SavedBreaker,
    Transition,
)
from mesh_agent.daemon.breakers.policy import (
    DEFAULT_FAILURE_CODES,
    GRPC_STATUS_NAMES,
    BreakerPolicy,
    Outcome,
)

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
    "SavedBreaker",
    "Transition",
]
