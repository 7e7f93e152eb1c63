"""``meshctl top``: the service graph as a table (caller → service, rps, error %, p50/p99,
breaker, warning) or, with ``-o json``, one object per edge, from ``GetTraffic``.

The JSON keys ``caller``, ``service``, ``rps``, ``error_rate``, ``p50_ms``, ``p99_ms``,
``breaker`` and ``warning`` are a contract (scripts read them); ``node``, ``calls`` and
``codes`` come along. Rendering is pure: it takes the response and returns text.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from control.meshctl.commands import watch
from control.meshctl.connection import call, metadata, stub
from control.meshctl.status import table_lines
from mesh.v1 import admin_pb2, admin_pb2_grpc, traffic_pb2

HEADER = ("CALLER → SERVICE", "RPS", "ERROR %", "P50/P99 MS", "BREAKER", "WARNING", "NODE")


def edge_document(edge: traffic_pb2.TrafficEdge) -> dict[str, Any]:
    """One edge as ``-o json`` prints it."""
    return {
        "caller": edge.caller,
        "service": edge.service,
        "rps": round(edge.rps, 3),
        "error_rate": round(edge.error_rate, 4),
        "p50_ms": round(edge.p50_ms, 3),
        "p99_ms": round(edge.p99_ms, 3),
        "breaker": edge.breaker,
        "warning": edge.warning,
        "node": edge.node_id,
        "calls": edge.calls,
        "codes": dict(sorted(edge.codes.items())),
    }


def top_json(response: admin_pb2.GetTrafficResponse, indent: int | None = 2) -> str:
    """A JSON array, one object per edge."""
    return json.dumps([edge_document(e) for e in response.edges], indent=indent)


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def top_lines(response: admin_pb2.GetTrafficResponse) -> list[str]:
    """The table, then a line saying what it covers."""
    window = f"over the last {response.window_seconds:g}s"
    if not response.edges:
        return [f"no calls reported {window}"]
    rows = [HEADER]
    for edge in response.edges:
        rows.append(
            (
                f"{edge.caller} → {edge.service}",
                _number(edge.rps),
                f"{edge.error_rate * 100:.1f}",
                f"{_number(edge.p50_ms)}/{_number(edge.p99_ms)}",
                edge.breaker or "-",
                edge.warning or "-",
                edge.node_id,
            )
        )
    lines = table_lines(rows)
    summary = f"{len(response.edges)} edge(s) {window}, from server {response.server_id}"
    if response.dropped_edges:
        summary += f"; {response.dropped_edges} edge(s) dropped over its cap"
    if response.dropped_calls:
        summary += f"; {response.dropped_calls} call(s) not counted by agents over theirs"
    return [*lines, "", summary]


def _request(args: argparse.Namespace) -> admin_pb2.GetTrafficRequest:
    return admin_pb2.GetTrafficRequest(service=args.service or "", caller=args.caller or "")


def cmd_top(args: argparse.Namespace) -> None:
    if args.watch:

        def fetch(admin: admin_pb2_grpc.MeshAdminServiceStub) -> admin_pb2.GetTrafficResponse:
            response: admin_pb2.GetTrafficResponse = admin.GetTraffic(
                _request(args), timeout=args.timeout, metadata=metadata(args)
            )
            return response

        watch(args, fetch, lambda r: top_json(r, indent=None), top_lines)
        return
    response = call(args, stub(args).GetTraffic, _request(args))
    if args.output == "json":
        print(top_json(response))
        return
    print("\n".join(top_lines(response)))


__all__ = ["HEADER", "cmd_top", "edge_document", "top_json", "top_lines"]
