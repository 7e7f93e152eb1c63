"""The service graph on the control server: a short rolling window of the calls node agents
report (``NodeService.ReportTraffic``), read as edges by ``MeshAdminService.GetTraffic``
(``meshctl top``).

The window. Each report carries, per (caller, service), the calls made since the agent's
previous report: counts by status code and a latency histogram over the fixed buckets of
:mod:`mesh_core.traffic`. :class:`TrafficGraph` adds each report into the slot of the time it
arrived (:data:`SLOT_SECONDS` long, aligned on Unix time so that every control server's slots
agree), per (node, caller, service), and keeps the slots of the last :data:`WINDOW_SECONDS`.
An edge is read by adding its slots' counts and histograms:

- ``rps``: its calls over the seconds its reports cover: from the earliest start of a report
  in the window to now (at least 1 s, at most the window plus a slot). An edge whose calls
  stopped decays towards zero and is gone once its last slot leaves the window.
- ``error_rate``: calls not ``OK`` over calls (only calls a backend answered are counted).
- ``p50_ms``/``p99_ms``: from the merged histogram (:func:`mesh_core.traffic.quantile_ms`).
- ``breaker`` and ``warning``: from the node's health (``NodeHealth.breakers``,
  ``NodeHealth.warnings``, which agents send on change, so they hold while calls are
  rejected and no traffic is reported); the breaker falls back to the state the last traffic
  report carried when the node's health is not known.

Bounds. At most :data:`MAX_EDGES` edges are kept; a report's edges past that are dropped
(counted in ``GetTrafficResponse.dropped_edges``, logged once a minute) until old edges leave
the window. Calls an agent could not count (its own cap) are summed in ``dropped_calls``.
Edges go with their last slot, so a node that left is forgotten one window after its last
report.

Several control servers on one etcd (:mod:`control.shared_traffic`): each server's window is
exported summed per edge (:meth:`TrafficGraph.export`) and the others' are merged in on read
(:meth:`TrafficGraph.set_remote`), edge by edge (a node that moved to another server within
the window has counts on both, which add up: each report reached one server).

Event-loop owned; nothing here does I/O.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from mesh.v1 import admin_pb2, node_pb2, traffic_pb2
from mesh_core.errors import ConfigError
from mesh_core.traffic import (
    BUCKETS,
    LATENCY_BOUNDS_MS,
    check_bounds,
    check_buckets,
    merge_into,
    quantile_ms,
)

log = structlog.get_logger(__name__)

WINDOW_SECONDS = 60.0
SLOT_SECONDS = 5.0
SLOTS = int(WINDOW_SECONDS // SLOT_SECONDS)
MAX_EDGES = 2000
"""Edges (node, caller, service) one control server keeps; a shared record of this many
stays well under etcd's request size limit (1.5 MiB)."""
MIN_SECONDS = 1.0
DROP_LOG_INTERVAL = 60.0
HealthOf = Callable[[str], node_pb2.NodeHealth | None]
"""The node's last reported health, or None when it is not known."""
EdgeKey = tuple[str, str, str]  # node, caller, service


@dataclass(slots=True)
class Counts:
    """Calls of one edge over some span: the unit the window adds up."""

    codes: dict[str, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    sum_ms: float = 0.0
    start: float = math.inf  # earliest start of a report counted (Unix seconds)
    last: float = 0.0  # when the last report counted arrived
    breaker: str = ""  # as the last report counted said

    def add(self, counts: traffic_pb2.TrafficCounts, start: float, last: float) -> None:
        codes = self.codes
        for code, n in counts.codes.items():
            codes[code] = codes.get(code, 0) + n
        merge_into(self.buckets, counts.latency_buckets)
        self.sum_ms += counts.latency_sum_ms
        self.start = min(self.start, start)
        if last >= self.last:
            self.last = last
            self.breaker = counts.breaker

    def merge(self, other: Counts) -> None:
        for code, n in other.codes.items():
            self.codes[code] = self.codes.get(code, 0) + n
        merge_into(self.buckets, other.buckets)
        self.sum_ms += other.sum_ms
        self.start = min(self.start, other.start)
        if other.last >= self.last:
            self.last = other.last
            self.breaker = other.breaker

    def subtract(self, other: Counts) -> None:
        """Takes ``other``'s calls out (a slot leaving the window); start, last and breaker
        are the caller's to set again."""
        codes = self.codes
        for code, n in other.codes.items():
            left = codes.get(code, 0) - n
            if left > 0:
                codes[code] = left
            else:
                codes.pop(code, None)
        buckets = self.buckets
        for index, count in enumerate(other.buckets):
            if count:
                buckets[index] -= count
        self.sum_ms -= other.sum_ms

    def copy(self) -> Counts:
        return Counts(
            dict(self.codes), list(self.buckets), self.sum_ms, self.start, self.last, self.breaker
        )

    @property
    def calls(self) -> int:
        return sum(self.codes.values())

    def to_proto(self, caller: str, service: str) -> traffic_pb2.TrafficCounts:
        return traffic_pb2.TrafficCounts(
            caller=caller,
            service=service,
            codes=self.codes,
            latency_buckets=self.buckets,
            latency_sum_ms=self.sum_ms,
            breaker=self.breaker,
        )


@dataclass(slots=True)
class _Edge:
    """An edge of this server's window: its slots, and their sum kept up to date (so reading
    the window costs one look per edge, not one per slot)."""

    slots: dict[int, Counts] = field(default_factory=dict)
    total: Counts = field(default_factory=Counts)

    def drop_before(self, oldest: int) -> None:
        gone = [index for index in self.slots if index < oldest]
        if not gone:
            return
        for index in gone:
            self.total.subtract(self.slots.pop(index))
        total = self.total
        total.start = min((c.start for c in self.slots.values()), default=math.inf)
        total.last = max((c.last for c in self.slots.values()), default=0.0)


def check_report(request: node_pb2.ReportTrafficRequest) -> None:
    """ConfigError naming what is wrong with a report (its bounds, an edge's fields)."""
    check_bounds(request.latency_bounds_ms)
    for index, edge in enumerate(request.edges):
        where = f"edges[{index}]"
        if not edge.caller or not edge.service:
            raise ConfigError(f"{where}: caller and service must be set")
        check_buckets(edge.latency_buckets, where)
        if any(n < 0 for n in edge.codes.values()):
            raise ConfigError(f"{where}.codes: negative count")


class TrafficGraph:
    """The window (see the module docstring). ``clock`` gives Unix seconds (tests pass
    their own); ``window``/``slot`` are seconds."""

    def __init__(
        self,
        *,
        window: float = WINDOW_SECONDS,
        slot: float = SLOT_SECONDS,
        max_edges: int = MAX_EDGES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if slot <= 0 or window < slot:
            raise ConfigError(
                f"traffic window {window:g} s must hold at least a slot of {slot:g} s"
            )
        self.window = window
        self.slot = slot
        self.slots = int(window // slot)
        self.max_edges = max_edges
        self.clock = clock
        self.dropped_edges = 0
        self.dropped_calls = 0
        self._edges: dict[EdgeKey, _Edge] = {}
        self._pruned_slot: int | None = None
        self._remote: dict[str, list[tuple[EdgeKey, Counts]]] = {}
        self._last_drop_log = -math.inf

    # -- reports -------------------------------------------------------------------------------

    def add(self, request: node_pb2.ReportTrafficRequest) -> int:
        """Adds an agent's report (checked with :func:`check_report` first: ConfigError);
        returns how many of its edges were kept."""
        check_report(request)
        now = self.clock()
        self._prune(now)
        slot = int(now // self.slot)
        start = request.start.ToNanoseconds() / 1e9 if request.HasField("start") else now
        start = min(start, now)
        node = request.node_id
        if request.dropped_calls > 0:
            self.dropped_calls += request.dropped_calls
            log.warning(
                "node could not count all its calls: too many caller and service pairs",
                node=node,
                dropped_calls=request.dropped_calls,
            )
        kept = dropped = 0
        for edge in request.edges:
            key = (node, edge.caller, edge.service)
            known = self._edges.get(key)
            if known is None:
                if len(self._edges) >= self.max_edges:
                    dropped += 1
                    continue
                known = self._edges[key] = _Edge()
            counts = known.slots.get(slot)
            if counts is None:
                counts = known.slots[slot] = Counts()
            counts.add(edge, start, now)
            known.total.add(edge, start, now)
            kept += 1
        if dropped:
            self.dropped_edges += dropped
            if now - self._last_drop_log >= DROP_LOG_INTERVAL:
                self._last_drop_log = now
                log.warning(
                    "traffic edges dropped: the window is full",
                    node=node,
                    dropped=dropped,
                    max_edges=self.max_edges,
                )
        return kept

    def _prune(self, now: float) -> None:
        """Drops the slots that left the window (once per slot of time)."""
        current = int(now // self.slot)
        if current == self._pruned_slot:
            return
        self._pruned_slot = current
        oldest = current - self.slots + 1
        for key in list(self._edges):
            edge = self._edges[key]
            edge.drop_before(oldest)
            if not edge.slots:
                del self._edges[key]

    def _local(self, now: float) -> dict[EdgeKey, Counts]:
        """Each edge's sum over the window: this server's own objects, not to be changed."""
        self._prune(now)
        return {key: edge.total for key, edge in self._edges.items()}

    # -- sharing -------------------------------------------------------------------------------

    def export(self, server_id: str) -> traffic_pb2.TrafficWindow:
        """This server's window (its agents' reports only), each edge summed over it."""
        now = self.clock()
        record = traffic_pb2.TrafficWindow(
            server_id=server_id, window_seconds=self.window, latency_bounds_ms=LATENCY_BOUNDS_MS
        )
        record.time.FromNanoseconds(int(now * 1e9))
        for (node, caller, service), counts in sorted(self._local(now).items()):
            record.edges.add(
                node_id=node,
                start_unix=counts.start,
                last_unix=counts.last,
                counts=counts.to_proto(caller, service),
            )
        return record

    def set_remote(self, records: Iterable[traffic_pb2.TrafficWindow], own: str) -> None:
        """The other servers' windows (``own``'s record is skipped), replacing those set
        before. A record with other latency bounds, or an edge with malformed counts, is
        left out with a warning."""
        remote: dict[str, list[tuple[EdgeKey, Counts]]] = {}
        for record in records:
            if record.server_id == own:
                continue
            try:
                check_bounds(record.latency_bounds_ms)
            except ConfigError as error:
                log.warning(
                    "shared traffic record ignored", server=record.server_id, error=str(error)
                )
                continue
            edges: list[tuple[EdgeKey, Counts]] = []
            for span in record.edges[: self.max_edges]:
                if len(span.counts.latency_buckets) != BUCKETS:
                    continue
                counts = Counts()
                counts.add(span.counts, span.start_unix, span.last_unix)
                edges.append(((span.node_id, span.counts.caller, span.counts.service), counts))
            remote[record.server_id] = edges
        self._remote = remote

    # -- reading -------------------------------------------------------------------------------

    def merged(self) -> dict[EdgeKey, Counts]:
        """Every edge of the window, this server's and the others' (as last set), added up.
        The counts returned may be the window's own: read them, do not change them."""
        now = self.clock()
        edges = self._local(now)
        horizon = now - self.window - self.slot
        copied: set[EdgeKey] = set()
        for spans in self._remote.values():
            for key, counts in spans:
                if counts.last < horizon:
                    continue
                mine = edges.get(key)
                if mine is None:
                    edges[key] = counts
                    continue
                if key not in copied:  # never change this server's totals or a record's
                    copied.add(key)
                    mine = edges[key] = mine.copy()
                mine.merge(counts)
        return edges

    def edges(
        self, health: HealthOf | None = None, *, service: str = "", caller: str = ""
    ) -> list[traffic_pb2.TrafficEdge]:
        """The graph's edges, sorted by service, caller, node; only those to ``service`` and
        from ``caller`` when given. ``health`` gives each node's reported health, for the
        breaker and warning columns."""
        now = self.clock()
        result: list[traffic_pb2.TrafficEdge] = []
        healths: dict[str, node_pb2.NodeHealth | None] = {}
        merged = self.merged()
        for key in sorted(merged, key=lambda k: (k[2], k[1], k[0])):
            node, name, target = key
            if (service and target != service) or (caller and name != caller):
                continue
            if health is not None and node not in healths:
                healths[node] = health(node)
            result.append(self._edge(key, merged[key], now, healths.get(node)))
        return result

    def _edge(
        self, key: EdgeKey, counts: Counts, now: float, health: node_pb2.NodeHealth | None
    ) -> traffic_pb2.TrafficEdge:
        node, caller, service = key
        calls = counts.calls
        seconds = min(max(now - counts.start, MIN_SECONDS), self.window + self.slot)
        failed = calls - counts.codes.get("OK", 0)
        edge = traffic_pb2.TrafficEdge(
            caller=caller,
            service=service,
            node_id=node,
            rps=calls / seconds,
            error_rate=failed / calls if calls else 0.0,
            p50_ms=quantile_ms(counts.buckets, 0.5),
            p99_ms=quantile_ms(counts.buckets, 0.99),
            breaker=breaker_state(service, counts.breaker, health),
            warning=warning_state(service, health),
            codes=counts.codes,
            calls=calls,
            latency_buckets=counts.buckets,
            mean_ms=counts.sum_ms / calls if calls else 0.0,
            seconds=seconds,
        )
        edge.last_seen.FromNanoseconds(int(counts.last * 1e9))
        return edge

    def response(
        self, request: admin_pb2.GetTrafficRequest, health: HealthOf | None, server_id: str
    ) -> admin_pb2.GetTrafficResponse:
        """``GetTraffic``'s answer."""
        response = admin_pb2.GetTrafficResponse(
            edges=self.edges(health, service=request.service, caller=request.caller),
            window_seconds=self.window,
            server_id=server_id,
            latency_bounds_ms=LATENCY_BOUNDS_MS,
            dropped_edges=self.dropped_edges,
            dropped_calls=self.dropped_calls,
        )
        response.time.FromNanoseconds(int(self.clock() * 1e9))
        return response


def breaker_state(service: str, reported: str, health: node_pb2.NodeHealth | None) -> str:
    """The node's breaker of ``service``: as its health lists it (open, half_open), closed
    when its health lists it not but the traffic report said it has one, else what the
    traffic report said (empty: no breaker policy)."""
    if health is None:
        return reported
    for breaker in health.breakers:
        if breaker.service == service:
            return breaker.state
    return "closed" if reported else ""


def warning_state(service: str, health: node_pb2.NodeHealth | None) -> str:
    """The node's early warning for ``service`` (e.g. degrading), empty when none."""
    if health is None:
        return ""
    for warning in health.warnings:
        if warning.service == service:
            return warning.state
    return ""


def health_lookup(
    local: Callable[[str], node_pb2.NodeHealth | None],
    remote: Mapping[str, admin_pb2.NodeStatus] | None = None,
) -> HealthOf:
    """A node's health from this server's registrations, else from another server's shared
    record of the node."""

    def health(node_id: str) -> node_pb2.NodeHealth | None:
        found = local(node_id)
        if found is not None:
            return found
        status = remote.get(node_id) if remote is not None else None
        if status is not None and status.HasField("health"):
            return status.health
        return None

    return health


__all__ = [
    "MAX_EDGES",
    "SLOT_SECONDS",
    "WINDOW_SECONDS",
    "Counts",
    "HealthOf",
    "TrafficGraph",
    "breaker_state",
    "check_report",
    "health_lookup",
    "warning_state",
]
