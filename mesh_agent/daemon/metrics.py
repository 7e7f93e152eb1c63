"""OpenTelemetry instruments of the node agent: circuit breakers, active health checks, its
stream to the control plane and the age of the config it serves. (Its local ADS server uses
:class:`mesh_xds.metrics.XdsMetrics`.)

Only the OpenTelemetry API is used here. Instruments come from ``metrics.get_meter`` unless a
``Meter`` is given, so they record into whatever ``MeterProvider`` the process installs,
before or after they are created, and cost next to nothing when none is.

=================================== ============ ===============================================
metric                              unit         attributes
=================================== ============ ===============================================
``mesh.breaker.state`` (gauge)      {state}      ``mesh.service``; 0 closed, 1 half-open, 2 open
``mesh.breaker.transitions``        {transition} ``mesh.service``, ``mesh.breaker.state``,
(counter)                                        ``mesh.breaker.previous_state``
``mesh.health_check.results``       {check}      ``mesh.service``, ``server.address``,
(counter)                                        ``mesh.health_check.result``
``mesh.health_check.duration``      s            ``mesh.service``, ``mesh.health_check.result``
(histogram)
``mesh.endpoint.health`` (gauge)    {endpoint}   ``mesh.service``, ``server.address``; 1 usable,
                                                 0 marked unhealthy
``mesh.agent.upstream.connected``   {stream}     (none); 1 while a stream to a control server
(gauge)                                          is up, else 0
``mesh.agent.upstream.connects``    {stream}     ``server.address`` (the control server)
(counter)
``mesh.agent.cache.age`` (gauge)    s            (none)
``mesh.service.degrading`` (gauge)  {service}    ``mesh.service``; 1 degrading (an early warning
                                                 is raised), 0 judged and well
``mesh.service.warnings`` (counter) {warning}    ``mesh.service``, ``mesh.warning.reason``;
                                                 warnings raised
``mesh.slo.burn_rate`` (gauge)      1            ``mesh.service``, ``mesh.slo.objective``
                                                 (``success``, ``p99``...), ``mesh.slo.window``
                                                 (``short``, ``long``)
=================================== ============ ===============================================

``mesh.agent.upstream.connects`` starts at zero for every control server the agent is given,
so a first reconnect is a step ``increase()`` sees.

The gauges read the objects registered with ``observe_*`` when a metric reader collects,
possibly on the reader's thread: those objects answer from copies of their state, and are
held weakly, so an object that is gone stops being reported.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Final, Generic, Protocol, TypeVar

from opentelemetry import metrics
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS

from mesh_agent import __version__
from mesh_agent.daemon.breakers.breaker import BreakerState, Transition
from mesh_core.rpc_telemetry import DURATION_BUCKETS

METER_NAME: Final = "mesh.agent"

BREAKER_STATE: Final = "mesh.breaker.state"
BREAKER_TRANSITIONS: Final = "mesh.breaker.transitions"
HEALTH_CHECK_RESULTS: Final = "mesh.health_check.results"
HEALTH_CHECK_DURATION: Final = "mesh.health_check.duration"
UPSTREAM_CONNECTED: Final = "mesh.agent.upstream.connected"
UPSTREAM_CONNECTS: Final = "mesh.agent.upstream.connects"
ENDPOINT_HEALTH: Final = "mesh.endpoint.health"
CACHE_AGE: Final = "mesh.agent.cache.age"
SERVICE_DEGRADING: Final = "mesh.service.degrading"
SERVICE_WARNINGS: Final = "mesh.service.warnings"
SLO_BURN_RATE: Final = "mesh.slo.burn_rate"

SERVICE: Final = "mesh.service"
STATE: Final = "mesh.breaker.state"
PREVIOUS_STATE: Final = "mesh.breaker.previous_state"
RESULT: Final = "mesh.health_check.result"
WARNING_REASON: Final = "mesh.warning.reason"
OBJECTIVE: Final = "mesh.slo.objective"
WINDOW: Final = "mesh.slo.window"

STATE_VALUES: Final[Mapping[BreakerState, int]] = {
    BreakerState.CLOSED: 0,
    BreakerState.HALF_OPEN: 1,
    BreakerState.OPEN: 2,
}


class BreakerSource(Protocol):
    def breaker_states(self) -> Mapping[str, BreakerState]:
        """Each breaker's state, by service; callable from any thread."""
        ...


class EndpointSource(Protocol):
    def endpoint_usability(self) -> Iterable[tuple[str, str, bool]]:
        """``(service, address, usable)`` of every checked endpoint; callable from any thread."""
        ...


class UpstreamSource(Protocol):
    def upstream_connected(self) -> bool:
        """Whether a stream to a control server is up; callable from any thread."""
        ...


class ConfigAgeSource(Protocol):
    def config_age(self) -> float | None:
        """Seconds the config served has gone unconfirmed, None with no config; callable
        from any thread."""
        ...


_T = TypeVar("_T")


class RiskSource(Protocol):
    def degrading(self) -> Mapping[str, bool]:
        """Whether each judged service is degrading; callable from any thread."""
        ...

    def burn_rates(self) -> Iterable[tuple[str, str, str, float]]:
        """``(service, objective, window, burn rate)``; callable from any thread."""
        ...


class _Sources(Generic[_T]):
    """A thread-safe set of weakly held objects."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: weakref.WeakSet[_T] = weakref.WeakSet()

    def add(self, item: _T) -> None:
        with self._lock:
            self._items.add(item)

    def __iter__(self) -> Iterator[_T]:
        with self._lock:
            items = list(self._items)
        return iter(items)


def agent_meter() -> metrics.Meter:
    """The agent package's meter on the process's global ``MeterProvider``."""
    return metrics.get_meter(METER_NAME, __version__)


class AgentMetrics:
    """The agent's instruments. Build one per ``Meter`` (an asynchronous instrument keeps the
    callbacks it was first created with); production code uses :func:`agent_metrics`."""

    def __init__(self, meter: metrics.Meter | None = None) -> None:
        m = meter if meter is not None else agent_meter()
        self._breakers: _Sources[BreakerSource] = _Sources()
        self._endpoints: _Sources[EndpointSource] = _Sources()
        self._caches: _Sources[ConfigAgeSource] = _Sources()
        self._upstreams: _Sources[UpstreamSource] = _Sources()
        self._risks: _Sources[RiskSource] = _Sources()
        self.breaker_transitions = m.create_counter(
            BREAKER_TRANSITIONS,
            unit="{transition}",
            description="Circuit breaker state changes.",
        )
        self.health_checks = m.create_counter(
            HEALTH_CHECK_RESULTS,
            unit="{check}",
            description=(
                "Active health check results taken by each endpoint of a service, by result "
                "(services that share a target take the results of one check)."
            ),
        )
        self.health_check_duration = m.create_histogram(
            HEALTH_CHECK_DURATION,
            unit="s",
            description="Time an active health check took, by result (a timeout: the timeout).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.upstream_connects = m.create_counter(
            UPSTREAM_CONNECTS,
            unit="{stream}",
            description="Streams established to a control server (the first and every reconnect).",
        )
        m.create_observable_gauge(
            UPSTREAM_CONNECTED,
            callbacks=[self._observe_upstreams],
            unit="{stream}",
            description="1 while the agent's stream to a control server is up, else 0.",
        )
        m.create_observable_gauge(
            BREAKER_STATE,
            callbacks=[self._observe_breakers],
            unit="{state}",
            description="Circuit breaker state: 0 closed, 1 half-open, 2 open.",
        )
        m.create_observable_gauge(
            ENDPOINT_HEALTH,
            callbacks=[self._observe_endpoints],
            unit="{endpoint}",
            description="1 when the endpoint may get traffic, 0 when checks marked it unhealthy.",
        )
        self.service_warnings = m.create_counter(
            SERVICE_WARNINGS,
            unit="{warning}",
            description="Early warnings raised: a service seen degrading before its breaker opens.",
        )
        m.create_observable_gauge(
            SERVICE_DEGRADING,
            callbacks=[self._observe_degrading],
            unit="{service}",
            description="1 while the service is degrading (an early warning is raised), else 0.",
        )
        m.create_observable_gauge(
            SLO_BURN_RATE,
            callbacks=[self._observe_burn_rates],
            unit="1",
            description=(
                "Error-budget burn rate of the service's objective over the alert's short and "
                "long window (1: the budget spent exactly as fast as the objective allows)."
            ),
        )
        m.create_observable_gauge(
            CACHE_AGE,
            callbacks=[self._observe_cache_age],
            unit="s",
            description=(
                "Seconds the config served has gone without confirmation from a control server."
            ),
        )

    # -- sources of the gauges -------------------------------------------------------------

    def observe_breakers(self, source: BreakerSource) -> None:
        self._breakers.add(source)

    def observe_endpoints(self, source: EndpointSource) -> None:
        self._endpoints.add(source)

    def observe_config_age(self, source: ConfigAgeSource) -> None:
        self._caches.add(source)

    def observe_upstream(self, source: UpstreamSource, servers: Iterable[str]) -> None:
        """Reports ``source``'s connection, and starts the connect counter of each of its
        ``servers`` at zero."""
        self._upstreams.add(source)
        for server in servers:
            self.upstream_connects.add(0, {SERVER_ADDRESS: server})

    def observe_risk(self, source: RiskSource) -> None:
        self._risks.add(source)

    # -- events ----------------------------------------------------------------------------

    def breaker_transition(self, transition: Transition) -> None:
        self.breaker_transitions.add(
            1,
            {
                SERVICE: transition.service,
                STATE: transition.new.value,
                PREVIOUS_STATE: transition.old.value,
            },
        )

    def service_warning(self, service: str, reason: str) -> None:
        self.service_warnings.add(1, {SERVICE: service, WARNING_REASON: reason})

    def health_check(self, service: str, address: str, ok: bool, duration: float) -> None:
        result = "healthy" if ok else "unhealthy"
        self.health_checks.add(1, {SERVICE: service, SERVER_ADDRESS: address, RESULT: result})
        self.health_check_duration.record(duration, {SERVICE: service, RESULT: result})

    def upstream_connect(self, server: str) -> None:
        self.upstream_connects.add(1, {SERVER_ADDRESS: server})

    # -- callbacks -------------------------------------------------------------------------

    def _observe_breakers(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        observations: list[metrics.Observation] = []
        for source in self._breakers:
            for service, state in source.breaker_states().items():
                observations.append(metrics.Observation(STATE_VALUES[state], {SERVICE: service}))
        return observations

    def _observe_endpoints(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        observations: list[metrics.Observation] = []
        for source in self._endpoints:
            for service, address, usable in source.endpoint_usability():
                observations.append(
                    metrics.Observation(
                        1 if usable else 0, {SERVICE: service, SERVER_ADDRESS: address}
                    )
                )
        return observations

    def _observe_upstreams(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [
            metrics.Observation(1 if source.upstream_connected() else 0)
            for source in self._upstreams
        ]

    def _observe_degrading(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [
            metrics.Observation(1 if degrading else 0, {SERVICE: service})
            for source in self._risks
            for service, degrading in source.degrading().items()
        ]

    def _observe_burn_rates(
        self, options: metrics.CallbackOptions
    ) -> Iterable[metrics.Observation]:
        return [
            metrics.Observation(burn, {SERVICE: service, OBJECTIVE: objective, WINDOW: window})
            for source in self._risks
            for service, objective, window, burn in source.burn_rates()
        ]

    def _observe_cache_age(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        observations: list[metrics.Observation] = []
        for source in self._caches:
            age = source.config_age()
            if age is not None:
                observations.append(metrics.Observation(age))
        return observations


@functools.cache
def agent_metrics() -> AgentMetrics:
    """The agent's instruments on the global meter, created once per process."""
    return AgentMetrics()


__all__ = [
    "AgentMetrics",
    "BreakerSource",
    "ConfigAgeSource",
    "EndpointSource",
    "RiskSource",
    "UpstreamSource",
    "agent_meter",
    "agent_metrics",
]
