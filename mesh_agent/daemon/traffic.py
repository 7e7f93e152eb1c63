"""The node's share of the service graph: every call outcome local processes report, counted
per (caller, service) and sent to the control server every :data:`REPORT_INTERVAL` seconds
(``NodeService.ReportTraffic``), for ``meshctl top``.

:class:`TrafficCounter` is the plain state (no grpc, no I/O): ``AgentServicer.ReportOutcomes``
hands it each batch with the reporting process's name (``ReportOutcomesRequest.caller``),
beside the breakers. Per outcome it reads three fields (service, code, latency) and adds one
to a code's count and to one bucket of a fixed-bucket latency histogram
(:data:`mesh_core.traffic.LATENCY_BOUNDS_US`); nothing is built per call. It counts at most
:data:`MAX_EDGES` (caller, service) pairs per span: outcomes of further pairs are counted as
``dropped_calls`` in the next report (and logged once per span) instead of growing the agent.

:class:`TrafficReporter` takes the counts every :data:`REPORT_INTERVAL` seconds when there are
any (an idle node sends nothing) and sends them as deltas, in requests of at most
:data:`~mesh_core.traffic.MAX_REPORT_EDGES` edges, to the control server the upstream is
connected to, each edge with the node's breaker state for the service. While no control server
is connected, or a send fails, the counts stay (added back) and go with the next report, whose
span then covers the whole time; but counts whose span began more than :data:`KEEP_UNSENT`
seconds ago are dropped (logged): the control server's window is one minute, and calls from
long ago, reported at once, would read as a burst. This is apart from ``ReportClientStatus``
(the reporter's full-set report sent on change), which it leaves as it is.

:class:`TrafficComponent` is the agent's ``traffic`` component. Event-loop owned.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc
import structlog

from mesh.v1 import agent_pb2, node_pb2, node_pb2_grpc, traffic_pb2
from mesh_agent.components import AgentContext
from mesh_agent.daemon.breakers.service import BreakerHub
from mesh_agent.daemon.roles import BREAKERS, TRAFFIC, UPSTREAM, BreakersRole, Upstream
from mesh_agent.daemon.settings import SETTINGS, AgentSettings
from mesh_core.errors import ComponentError
from mesh_core.tls import TlsFiles, aio_channel
from mesh_core.traffic import BUCKETS, LATENCY_BOUNDS_MS, LATENCY_BOUNDS_US, MAX_REPORT_EDGES

log = structlog.get_logger(__name__)
REPORT_INTERVAL = 5.0
MAX_EDGES = 2000
"""(caller, service) pairs counted per span; the outcomes of more are dropped and counted."""
SEND_TIMEOUT = 5.0
KEEP_UNSENT = 60.0
STOP_SEND_TIMEOUT = 1.0  # on stop, the last counts' send waits no longer
BREAKER_NAMES = {
    agent_pb2.BREAKER_STATE_CLOSED: "closed",
    agent_pb2.BREAKER_STATE_OPEN: "open",
    agent_pb2.BREAKER_STATE_HALF_OPEN: "half_open",
}


class EdgeCounts:
    """One (caller, service) pair's calls in the current span."""

    __slots__ = ("buckets", "codes", "sum_us")

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.buckets = [0] * BUCKETS
        self.sum_us = 0

    def add(self, other: EdgeCounts) -> None:
        for code, n in other.codes.items():
            self.codes[code] = self.codes.get(code, 0) + n
        for index, n in enumerate(other.buckets):
            self.buckets[index] += n
        self.sum_us += other.sum_us


@dataclass(slots=True)
class Span:
    """What :meth:`TrafficCounter.take` hands over: the counts of ``[start, end]``."""

    start: float
    end: float
    edges: dict[tuple[str, str], EdgeCounts]
    dropped_calls: int


class TrafficCounter:
    """Counts per (caller, service) since the last :meth:`take`. Event-loop owned (the
    agent's servicer and the reporter share the loop), so it takes no lock."""

    def __init__(self, max_edges: int = MAX_EDGES) -> None:
        self.max_edges = max_edges
        self._callers: dict[str, dict[str, EdgeCounts]] = {}
        self._edges = 0
        self._start: float | None = None
        self._dropped = 0

    def record(self, caller: str, outcomes: Iterable[agent_pb2.CallOutcome]) -> None:
        """Counts ``caller``'s outcomes (the agent's hot path: keep it lean)."""
        services = self._callers.get(caller)
        if services is None:
            services = self._callers[caller] = {}
        if self._start is None:
            self._start = time.time()
        bounds = LATENCY_BOUNDS_US
        find = bisect.bisect_left
        for outcome in outcomes:
            edge = services.get(outcome.service)
            if edge is None:
                edge = self._new_edge(services, outcome.service)
                if edge is None:
                    continue
            codes = edge.codes
            code = outcome.code
            codes[code] = codes.get(code, 0) + 1
            latency = outcome.latency_us
            edge.buckets[find(bounds, latency)] += 1
            edge.sum_us += latency

    def _new_edge(self, services: dict[str, EdgeCounts], service: str) -> EdgeCounts | None:
        if self._edges >= self.max_edges:
            if not self._dropped:
                log.warning(
                    "traffic counts dropped: too many caller and service pairs on this node",
                    max_edges=self.max_edges,
                    service=service,
                )
            self._dropped += 1
            return None
        self._edges += 1
        edge = services[service] = EdgeCounts()
        return edge

    @property
    def started(self) -> float | None:
        """When the current span began (Unix seconds), None when nothing was counted."""
        return self._start

    @property
    def pending(self) -> bool:
        """Whether anything was counted since the last :meth:`take`."""
        return self._start is not None

    def take(self) -> Span | None:
        """The counts since the last take (None when there are none), and a fresh start."""
        if self._start is None:
            return None
        edges = {
            (caller, service): counts
            for caller, services in self._callers.items()
            for service, counts in services.items()
        }
        span = Span(self._start, time.time(), edges, self._dropped)
        self._callers = {}
        self._edges = 0
        self._start = None
        self._dropped = 0
        return span

    def put_back(self, span: Span) -> None:
        """Adds an unsent span's counts back (its start kept), within :attr:`max_edges`."""
        self._start = span.start if self._start is None else min(self._start, span.start)
        self._dropped += span.dropped_calls
        for (caller, service), counts in span.edges.items():
            services = self._callers.setdefault(caller, {})
            mine = services.get(service)
            if mine is None:
                mine = self._new_edge(services, service)
                if mine is None:
                    self._dropped += sum(counts.codes.values())
                    continue
            mine.add(counts)


def breaker_name(hub: BreakerHub, service: str) -> str:
    """The node's breaker of ``service``: closed, open, half_open, or "" without a policy."""
    status = hub.status(service)
    return BREAKER_NAMES.get(status.state, "") if status.enabled else ""


def requests(node_id: str, span: Span, hub: BreakerHub) -> Iterator[node_pb2.ReportTrafficRequest]:
    """``span`` as requests of at most MAX_REPORT_EDGES edges each (the dropped calls go
    with the first)."""
    items = sorted(span.edges.items())
    for offset in range(0, max(len(items), 1), MAX_REPORT_EDGES):
        request = node_pb2.ReportTrafficRequest(
            node_id=node_id,
            latency_bounds_ms=LATENCY_BOUNDS_MS,
            dropped_calls=span.dropped_calls if offset == 0 else 0,
        )
        request.start.FromNanoseconds(int(span.start * 1e9))
        request.end.FromNanoseconds(int(span.end * 1e9))
        for (caller, service), counts in items[offset : offset + MAX_REPORT_EDGES]:
            request.edges.append(
                traffic_pb2.TrafficCounts(
                    caller=caller,
                    service=service,
                    codes=counts.codes,
                    latency_buckets=counts.buckets,
                    latency_sum_ms=counts.sum_us / 1000,
                    breaker=breaker_name(hub, service),
                )
            )
        yield request


class TrafficReporter:
    """Sends the counter's spans to ``server()`` (the upstream's control server, "" while
    disconnected) every ``interval`` seconds. Event-loop owned."""

    def __init__(
        self,
        node_id: str,
        counter: TrafficCounter,
        hub: BreakerHub,
        *,
        tls: TlsFiles | None = None,
        interval: float = REPORT_INTERVAL,
    ) -> None:
        self.node_id = node_id
        self.counter = counter
        self.hub = hub
        self.tls = tls
        self.interval = interval
        self.server = ""
        self.sent = 0
        """Reports the control server accepted (requests)."""
        self._failing = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.send_once()

    async def send_once(self) -> bool:
        """Sends what was counted, if anything and if connected; True when it was sent. On
        failure the counts are put back for the next time."""
        server = self.server
        started = self.counter.started
        if started is None:
            return False
        if time.time() - started > KEEP_UNSENT:
            self._discard(self.counter.take())
        if not server or not self.counter.pending:
            return False
        span = self.counter.take()
        if span is None:
            return False
        try:
            async with aio_channel(server, self.tls) as channel:
                stub = node_pb2_grpc.NodeServiceStub(channel)
                for request in requests(self.node_id, span, self.hub):
                    await stub.ReportTraffic(request, timeout=SEND_TIMEOUT)
                    self.sent += 1
        except grpc.aio.AioRpcError as error:
            if time.time() - span.start <= KEEP_UNSENT:
                self.counter.put_back(span)
            else:
                self._discard(span)
            if not self._failing:
                self._failing = True
                log.warning(
                    "traffic report to control server failed; keeping the counts",
                    server=server,
                    code=error.code().name,
                    details=error.details(),
                )
            return False
        if self._failing:
            self._failing = False
            log.info("traffic reports sent again", server=server)
        return True

    def _discard(self, span: Span | None) -> None:
        if span is None:
            return
        calls = sum(sum(c.codes.values()) for c in span.edges.values())
        log.warning(
            "traffic counts dropped: not sent within the window",
            calls=calls,
            edges=len(span.edges),
            since_s=round(time.time() - span.start, 1),
        )


class TrafficComponent:
    """The built-in ``traffic`` component: the node's :class:`TrafficCounter` (made at the
    first start and kept across restarts) and its :class:`TrafficReporter`, following the
    upstream's connection."""

    name = TRAFFIC
    requires = (UPSTREAM, BREAKERS)

    def __init__(self) -> None:
        self._counter: TrafficCounter | None = None
        self._reporter: TrafficReporter | None = None

    @property
    def counter(self) -> TrafficCounter:
        if self._counter is None:
            raise ComponentError("the traffic counter is made when the traffic component starts")
        return self._counter

    async def start(self, ctx: AgentContext) -> None:
        upstream = ctx.require(UPSTREAM, Upstream)
        hub = ctx.require(BREAKERS, BreakersRole).hub
        settings = ctx.setting(SETTINGS, AgentSettings)
        if self._counter is None:
            self._counter = TrafficCounter()
        reporter = self._reporter = TrafficReporter(
            settings.node_id, self._counter, hub, tls=settings.tls
        )
        reporter.server = upstream.connected_to

        def connected(server: str) -> None:
            reporter.server = server

        def disconnected() -> None:
            reporter.server = ""

        ctx.connect(upstream.on_connect, connected)
        ctx.connect(upstream.on_disconnect, disconnected)

    async def run(self) -> None:
        reporter = self._reporter
        if reporter is None:
            raise ComponentError("the traffic component runs once started")
        await reporter.run()

    async def stop(self) -> None:
        reporter = self._reporter
        if reporter is not None:  # the last counts, if a control server takes them at once
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_SEND_TIMEOUT):
                    await reporter.send_once()


__all__ = [
    "MAX_EDGES",
    "REPORT_INTERVAL",
    "EdgeCounts",
    "Span",
    "TrafficComponent",
    "TrafficCounter",
    "TrafficReporter",
    "breaker_name",
    "requests",
]
