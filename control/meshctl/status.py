"""``meshctl status`` as text and as JSON: pure functions of a ``GetStatusResponse``, no I/O."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from mesh.v1 import admin_pb2, node_pb2
from mesh_xds.types import short_name


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _age(stamp_seconds: int) -> str:
    return _duration(time.time() - stamp_seconds)


def _type_state(t: admin_pb2.TypeStatus) -> str:
    if t.last_nack.message and t.last_nack.version == t.version_sent:
        return "NACKED"
    if t.version_sent and t.version_sent == t.version_acked:
        return "ACKED"
    if t.version_sent:
        return "PENDING"
    return "WAITING"


def _by_node(nodes: Sequence[admin_pb2.NodeStatus]) -> dict[str, list[admin_pb2.NodeStatus]]:
    """The entries of each node id (one per stream, or one without a stream), in order."""
    grouped: dict[str, list[admin_pb2.NodeStatus]] = {}
    for node in nodes:
        grouped.setdefault(node.node_id, []).append(node)
    return grouped


def _config_state(
    response: admin_pb2.GetStatusResponse, entries: Sequence[admin_pb2.NodeStatus]
) -> str:
    """latest (every type sent is ACKed, nothing left to push), NACKED, PENDING or no stream."""
    streams = [e for e in entries if e.stream_id]
    if not streams:
        return "no stream"
    states = {_type_state(t) for e in streams for t in e.types}
    if "NACKED" in states:
        return "NACKED"
    if "PENDING" in states or response.store_revision != response.snapshot_revision:
        return "PENDING"
    return "latest"


def _health_of(entries: Sequence[admin_pb2.NodeStatus]) -> node_pb2.NodeHealth | None:
    return next((e.health for e in entries if e.HasField("health")), None)


def _health_text(health: node_pb2.NodeHealth | None) -> str:
    if health is None:
        return "-"
    down = [f"{c.name}: {c.state}" for c in health.components if c.state != "running"]
    return f"{health.status} ({', '.join(down)})" if down else health.status or "-"


def _utc(stamp: Any) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp.seconds))


def _one_line(text: str, limit: int = 80) -> str:
    return text.replace("\n", " ")[:limit]


def status_lines(response: admin_pb2.GetStatusResponse) -> list[str]:
    """``meshctl status`` as text: the header, the tables, store problems and a summary."""
    streams = sum(1 for node in response.nodes if node.stream_id)
    lines = [
        f"server {response.server_id}: store revision {response.store_revision}, "
        f"serving snapshot of revision {response.snapshot_revision}, "
        f"{streams} node stream(s)"
    ]
    rows = [("NODE", "TYPE", "SENT", "ACKED", "STATE", "CONNECTED", "LAST NACK")]
    for node in response.nodes:
        for t in node.types:
            nack = _one_line(t.last_nack.message) if t.last_nack.message else "-"
            rows.append(
                (
                    node.node_id,
                    short_name(t.type_url),
                    t.version_sent or "-",
                    t.version_acked or "-",
                    _type_state(t),
                    _age(node.connected_since.seconds),
                    nack,
                )
            )
    if len(rows) > 1:
        lines += table_lines(rows)
    lines += _health_tables(response)
    lines += _zone_table(response)
    lines += _node_state_tables(response.nodes)
    for problem in response.store_problems:
        lines.append(f"store problem: {problem.source}: {problem.message}")
    lines += ["", _summary(response)]
    return lines


def _health_tables(response: admin_pb2.GetStatusResponse) -> list[str]:
    """Per node: config state and agent health; the components not running; the breakers
    not closed; the services degrading (early warnings)."""
    nodes = [("NODE", "CONFIG", "HEALTH")]
    components = [("NODE", "COMPONENT", "STATE", "RESTARTS", "LAST ERROR")]
    breakers = [("NODE", "SERVICE", "STATE", "OPEN UNTIL", "LEFT", "SINCE", "REASON")]
    warnings = [("NODE", "DEGRADING", "REASON", "BURN SHORT", "BURN LONG", "SINCE")]
    now = time.time()
    for node_id, entries in _by_node(response.nodes).items():
        health = _health_of(entries)
        nodes.append((node_id, _config_state(response, entries), _health_text(health)))
        if health is None:
            continue
        for c in health.components:
            if c.state != "running":
                error = _one_line(c.last_error) if c.last_error else "-"
                components.append((node_id, c.name, c.state, str(c.restarts), error))
        for b in health.breakers:
            is_open = b.HasField("open_until")
            breakers.append(
                (
                    node_id,
                    b.service,
                    b.state,
                    _utc(b.open_until) if is_open else "-",
                    _duration(b.open_until.seconds - now) if is_open else "-",
                    _age(b.since.seconds) if b.HasField("since") else "-",
                    b.reason or "-",
                )
            )
        for w in health.warnings:
            warnings.append(
                (
                    node_id,
                    w.service,
                    w.reason or "-",
                    f"{w.burn_short:.1f}x",
                    f"{w.burn_long:.1f}x",
                    _age(w.since.seconds) if w.HasField("since") else "-",
                )
            )
    lines: list[str] = []
    for rows in (nodes, components, breakers, warnings):
        if len(rows) > 1:
            lines += ["", *table_lines(rows)]
    return lines


def _zone_table(response: admin_pb2.GetStatusResponse) -> list[str]:
    """Per node with a zone, per service whose endpoints span zones: the priority each zone
    is served at, as the node's agent reported it (after its health checks and spill-over):
    ``eu-1a=0 eu-1b=1``."""
    rows = [("NODE", "ZONE", "SERVICE", "PRIORITIES")]
    for node_id, entries in _by_node(response.nodes).items():
        health = _health_of(entries)
        zone = next((e.zone for e in entries if e.zone), "")
        if health is None or not zone:
            continue
        by_service: dict[str, list[node_pb2.ZonePriority]] = {}
        for entry in health.zone_priorities:
            by_service.setdefault(entry.service, []).append(entry)
        for service, entries_of in sorted(by_service.items()):
            ordered = sorted(entries_of, key=lambda e: (e.priority, e.zone))
            text = " ".join(f"{e.zone or '-'}={e.priority}" for e in ordered)
            rows.append((node_id, zone, service, text))
    return ["", *table_lines(rows)] if len(rows) > 1 else []


def _summary(response: admin_pb2.GetStatusResponse) -> str:
    grouped = _by_node(response.nodes)
    states = {node_id: _config_state(response, e) for node_id, e in grouped.items()}
    healths = [_health_of(e) for e in grouped.values()]
    latest = sum(1 for s in states.values() if s == "latest")
    nacked = sum(1 for s in states.values() if s == "NACKED")
    streamless = sum(1 for s in states.values() if s == "no stream")
    not_serving = sum(1 for h in healths if h is not None and h.status != "SERVING")
    breakers = sum(1 for h in healths if h is not None and h.breakers)
    degrading = sum(1 for h in healths if h is not None and h.warnings)
    return (
        f"{len(grouped)} node(s): {latest} on the latest config, {nacked} NACKed, "
        f"{not_serving} not serving, {breakers} with open breakers, "
        f"{degrading} with degrading services, {streamless} without a stream"
    )


_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def message_document(message: Message) -> dict[str, Any]:
    """``message`` as JSON data for scripts: every field present (an empty list, 0, "",
    false, or null for a message that is not set), 64-bit integers as numbers (protobuf's
    JSON mapping writes them as strings), timestamps as RFC 3339 text, enums by name."""
    document = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _filled(message, document)


def _filled(message: Message, document: dict[str, Any]) -> dict[str, Any]:
    """``document`` completed as :func:`message_document` says, in the fields' order."""
    out: dict[str, Any] = {}
    fields: list[Any] = list(message.DESCRIPTOR.fields)
    for fd in fields:
        value = getattr(message, fd.name)
        data: Any = document.get(fd.name)
        if fd.type in _INT64_TYPES:
            data = [int(v) for v in value] if fd.is_repeated else int(value)
        elif fd.type != FieldDescriptor.TYPE_MESSAGE or fd.message_type.GetOptions().map_entry:
            pass
        elif fd.is_repeated:
            if not fd.message_type.full_name.startswith("google.protobuf."):
                data = [_filled(item, d) for item, d in zip(value, data, strict=True)]
        elif not message.HasField(fd.name):
            data = None
        elif not fd.message_type.full_name.startswith("google.protobuf."):
            data = _filled(value, data)
        out[fd.name] = data
    return out


def status_json(response: admin_pb2.GetStatusResponse, indent: int | None) -> str:
    document = message_document(response)
    return json.dumps(document, indent=indent, separators=None if indent else (",", ":"))


def _node_state_tables(nodes: Sequence[admin_pb2.NodeStatus]) -> list[str]:
    """Registrations per node, and the local clients that rejected config. A node with
    several streams is listed in several NodeStatus entries with the same node state."""
    registered = [("NODE", "SERVICE", "ADDRESS", "DRAINING")]
    nacks = [("NODE", "CLIENT", "TYPE", "NACK")]
    seen: set[str] = set()
    for node in nodes:
        if node.node_id in seen:
            continue
        seen.add(node.node_id)
        for r in node.registrations:
            registered.append((node.node_id, r.service, r.address, "yes" if r.draining else "no"))
        for c in node.local_clients:
            if not c.nack_message:
                continue
            message = _one_line(c.nack_message)
            nack = f"{c.nack_version}: {message}" if c.nack_version else message
            nacks.append((node.node_id, c.client_id or "-", short_name(c.type_url), nack))
    lines: list[str] = []
    for rows in (registered, nacks):
        if len(rows) > 1:
            lines += ["", *table_lines(rows)]
    return lines


def table_lines(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
