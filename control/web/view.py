"""The web page's data: one JSON document (``GET /api/mesh``) built from the control server's
own objects (its store, the status ``GetStatus`` answers, the registered endpoints), never
by calling itself over gRPC.

The document (every time RFC 3339 UTC, every list sorted so equal state gives equal JSON)::

    server_id, generated_at, store_revision, snapshot_revision
    store_problems  [{source, message}]
    services        [{name, revision (0: only registered), state (ok, degrading, half_open,
                      open: the worst of its breakers and warnings), endpoints [{address,
                      zone, weight, node, source (config, registered), state (serving,
                      draining, node_away)}], breakers [{node, state (open, half_open),
                      reason, since, open_until, transitions}], warnings [{node, state,
                      reason, burn_short, burn_long, detail, since}], zone_priorities [{node, zone,
                      priority}]}]
    nodes           [{node_id, zone, server_id, peer, connected, connected_since, health,
                      components [{name, state, last_error, restarts}], breakers (count)}]
    nacks           [{node, client (empty: the agent itself), type, version, message,
                      time}], newest first
    changes         [{time, who, action, services, outcome, reason, detail, revision,
                      message, server_id}]: the audit trail's newest entries, newest first
    traffic         {available, edges [{caller, service, nodes, calls, rps, error_rate,
                      p50_ms, p99_ms, breaker (the worst of the nodes': closed, half_open,
                      open; empty: no breaker), warning}]}: GetTraffic's edges over its
                      window, one per caller and service (summed over the callers' nodes)
    errors          [text]: parts that could not be read this time (e.g. the store is down)

A document is kept for :data:`FRESH_FOR` seconds, so many open pages cost one build.
Event-loop owned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from control.registry import merge_registered
from control.store import Store
from mesh.v1 import admin_pb2, config_pb2, node_pb2, traffic_pb2
from mesh_core.errors import MeshError
from mesh_core.traffic import BUCKETS, merge_into, quantile_ms

FRESH_FOR = 1.0
"""Seconds a built document is served again."""
MAX_CHANGES = 50
MAX_NACKS = 100
Json = dict[str, Any]
StatusSource = Callable[[], admin_pb2.GetStatusResponse]
RegisteredSource = Callable[[], Mapping[str, Sequence[config_pb2.Endpoint]]]
TrafficSource = Callable[[], admin_pb2.GetTrafficResponse]

_RANK = {"ok": 0, "degrading": 1, "half_open": 2, "open": 3}


def _time(stamp: Timestamp) -> str:
    return stamp.ToJsonString() if stamp.seconds or stamp.nanos else ""


def _short_type(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


class MeshView:
    def __init__(
        self,
        store: Store,
        status: StatusSource,
        registered: RegisteredSource,
        traffic: TrafficSource | None = None,
    ) -> None:
        """``status``: what GetStatus answers; ``registered``: the endpoints nodes
        registered, per service; ``traffic``: the calls between services, as the document's
        ``traffic.edges``, summed over the callers' nodes (None: not known)."""
        self._store = store
        self._status = status
        self._registered = registered
        self._traffic = traffic
        self._kept: tuple[float, Json] | None = None
        self._lock = asyncio.Lock()

    async def document(self) -> Json:
        async with self._lock:
            now = time.monotonic()
            if self._kept is not None and now - self._kept[0] < FRESH_FOR:
                return self._kept[1]
            built = await self._build()
            self._kept = (time.monotonic(), built)
            return built

    async def _build(self) -> Json:
        status = self._status()
        errors: list[str] = []
        try:
            _, stored = await self._store.list()
        except MeshError as error:
            stored, errors = [], [*errors, f"services: {error}"]
        try:
            audit = (await self._store.audit())[-MAX_CHANGES:]
        except MeshError as error:
            audit, errors = [], [*errors, f"changes: {error}"]
        edges = _edges(self._traffic().edges) if self._traffic is not None else []
        now = Timestamp()
        now.GetCurrentTime()
        return {
            "server_id": status.server_id,
            "generated_at": now.ToJsonString(),
            "store_revision": status.store_revision,
            "snapshot_revision": status.snapshot_revision,
            "store_problems": [
                {"source": p.source, "message": p.message} for p in status.store_problems
            ],
            "services": self._services(stored, status.nodes),
            "nodes": [_node(n) for n in sorted(status.nodes, key=lambda n: n.node_id)],
            "nacks": _nacks(status.nodes),
            "changes": [_change(e) for e in reversed(audit)],
            "traffic": {"available": self._traffic is not None, "edges": edges},
            "errors": errors,
        }

    def _services(
        self, stored: Sequence[admin_pb2.StoredService], nodes: Sequence[admin_pb2.NodeStatus]
    ) -> list[Json]:
        revisions = {s.service.name: s.revision for s in stored}
        services = merge_registered([s.service for s in stored], self._registered())
        away = {n.node_id for n in nodes if not n.stream_id}
        out: dict[str, Json] = {
            s.name: {
                "name": s.name,
                "revision": revisions.get(s.name, 0),
                "state": "ok",
                "endpoints": [_endpoint(e, away) for e in s.endpoints],
                "breakers": [],
                "warnings": [],
                "zone_priorities": [],
            }
            for s in services
        }
        for node in sorted(nodes, key=lambda n: n.node_id):
            health = node.health
            for breaker in health.breakers:
                entry = out.get(breaker.service)
                if entry is not None:
                    entry["breakers"].append(_breaker(node.node_id, breaker))
                    _worsen(entry, breaker.state)
            for warning in health.warnings:
                entry = out.get(warning.service)
                if entry is not None:
                    entry["warnings"].append(_warning(node.node_id, warning))
                    _worsen(entry, "degrading")
            for zone in health.zone_priorities:
                entry = out.get(zone.service)
                if entry is not None:
                    entry["zone_priorities"].append(
                        {"node": node.node_id, "zone": zone.zone, "priority": zone.priority}
                    )
        return [out[name] for name in sorted(out)]


_BREAKER_RANK = {"": 0, "closed": 1, "half_open": 2, "open": 3}


def _edges(edges: Sequence[traffic_pb2.TrafficEdge]) -> list[Json]:
    """One edge per (caller, service): the nodes' rates added, the error rate over all their
    calls, the quantiles of their merged latency histograms, the worst breaker."""
    groups: dict[tuple[str, str], list[traffic_pb2.TrafficEdge]] = {}
    for edge in edges:
        groups.setdefault((edge.caller, edge.service), []).append(edge)
    out = []
    for (caller, service), parts in sorted(groups.items()):
        calls = sum(p.calls for p in parts)
        buckets = [0] * BUCKETS
        for part in parts:
            if len(part.latency_buckets) == BUCKETS:
                merge_into(buckets, part.latency_buckets)
        failed = sum(p.error_rate * p.calls for p in parts)
        out.append(
            {
                "caller": caller,
                "service": service,
                "nodes": sorted({p.node_id for p in parts}),
                "calls": calls,
                "rps": round(sum(p.rps for p in parts), 3),
                "error_rate": round(failed / calls, 4) if calls else 0.0,
                "p50_ms": round(quantile_ms(buckets, 0.5), 3),
                "p99_ms": round(quantile_ms(buckets, 0.99), 3),
                "breaker": max((p.breaker for p in parts), key=lambda b: _BREAKER_RANK.get(b, 0)),
                "warning": next(
                    (p.warning for p in sorted(parts, key=lambda p: p.node_id) if p.warning), ""
                ),
            }
        )
    return out


def _worsen(entry: Json, state: str) -> None:
    if _RANK.get(state, 0) > _RANK[entry["state"]]:
        entry["state"] = state


def _endpoint(endpoint: config_pb2.Endpoint, away: set[str]) -> Json:
    if endpoint.draining:
        state = "draining"
    elif endpoint.node_id and endpoint.node_id in away:
        state = "node_away"
    else:
        state = "serving"
    return {
        "address": endpoint.address,
        "zone": endpoint.zone,
        "weight": endpoint.weight or 1,
        "node": endpoint.node_id,
        "source": "registered" if endpoint.node_id else "config",
        "state": state,
    }


def _breaker(node: str, breaker: node_pb2.OpenBreaker) -> Json:
    return {
        "node": node,
        "state": breaker.state,
        "reason": breaker.reason,
        "since": _time(breaker.since),
        "open_until": _time(breaker.open_until),
        "transitions": breaker.transitions,
    }


def _warning(node: str, warning: node_pb2.ServiceWarning) -> Json:
    return {
        "node": node,
        "state": warning.state,
        "reason": warning.reason,
        "burn_short": warning.burn_short,
        "burn_long": warning.burn_long,
        "detail": warning.detail,
        "since": _time(warning.since),
    }


def _node(node: admin_pb2.NodeStatus) -> Json:
    health = node.health
    return {
        "node_id": node.node_id,
        "zone": node.zone,
        "server_id": node.server_id,
        "peer": node.peer,
        "connected": bool(node.stream_id),
        "connected_since": _time(node.connected_since),
        "health": health.status if node.HasField("health") else "",
        "components": [
            {"name": c.name, "state": c.state, "last_error": c.last_error, "restarts": c.restarts}
            for c in health.components
        ],
        "breakers": len(health.breakers),
    }


def _nacks(nodes: Sequence[admin_pb2.NodeStatus]) -> list[Json]:
    nacks: list[tuple[int, Json]] = []
    for node in nodes:
        for kind in node.types:
            nack = kind.last_nack
            if nack.message:
                nacks.append(
                    (
                        nack.time.ToNanoseconds(),
                        {
                            "node": node.node_id,
                            "client": "",
                            "type": _short_type(kind.type_url),
                            "version": nack.version,
                            "message": nack.message,
                            "time": _time(nack.time),
                        },
                    )
                )
        for client in node.local_clients:
            if client.nack_message:
                nacks.append(
                    (
                        client.nack_time.ToNanoseconds(),
                        {
                            "node": node.node_id,
                            "client": client.client_id,
                            "type": _short_type(client.type_url),
                            "version": client.nack_version,
                            "message": client.nack_message,
                            "time": _time(client.nack_time),
                        },
                    )
                )
    nacks.sort(key=lambda n: (n[0], n[1]["node"], n[1]["client"], n[1]["type"]), reverse=True)
    return [nack for _, nack in nacks[:MAX_NACKS]]


def _change(entry: admin_pb2.AuditEntry) -> Json:
    return {
        "time": _time(entry.time),
        "who": entry.who,
        "action": entry.action,
        "services": list(entry.services),
        "outcome": entry.outcome,
        "reason": entry.reason,
        "detail": entry.detail,
        "revision": entry.revision,
        "message": entry.message,
        "server_id": entry.server_id,
    }
