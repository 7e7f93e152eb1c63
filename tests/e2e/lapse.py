"""Measuring how long a departed node's registrations last: from the moment the node went (the
control server's own log line of the stream's end) to the moment the registration is observed
gone, polled every ``POLL`` seconds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

import grpc
import pytest

from control.shared_nodes import RENEWAL_INTERVAL
from mesh.v1 import admin_pb2, admin_pb2_grpc
from tests.conftest import Proc, wait_for
from tests.e2e.conftest import EtcdServer

POLL = 0.05
# What the observer adds on a loaded two-core machine: the control server's event loop and
# etcd calls running late, the poll itself, and etcd's own check for expired leases (every
# 500 ms) when a lease runs out rather than being revoked.
DETECTION_MARGIN = 1.5


def within_bounds(lapse: float, grace: float) -> bool:
    """The contract: at least the grace, at most the grace plus one renewal interval (plus
    what observing it costs)."""
    return grace <= lapse <= grace + RENEWAL_INTERVAL + DETECTION_MARGIN


def logged_at(proc: Proc, event: str, node: str, after: float, timeout: float = 10) -> float:
    """The time (``time.time()`` scale) of ``proc``'s first JSON log line ``event`` about
    ``node`` written after ``after``; waited for up to ``timeout`` seconds."""

    def find() -> float | None:
        for line in proc.errors().splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == event and entry.get("node") == node:
                logged = datetime.fromisoformat(entry["timestamp"]).timestamp()
                if logged >= after:
                    return logged
        return None

    result: float = wait_for(find, timeout, f"{proc.name} to log {event!r} for {node}")
    return result


async def _poll_until(present: Callable[[], Awaitable[bool]], timeout: float) -> float:
    deadline = time.time() + timeout
    while await present():
        if time.time() > deadline:
            pytest.fail(f"still present after {timeout}s")
        await asyncio.sleep(POLL)
    return time.time()


def etcd_key_gone(etcd: EtcdServer, key: str, timeout: float = 30) -> float:
    """Polls ``key`` in etcd until it is gone; returns when it was first seen gone."""

    async def run() -> float:
        async with etcd.client() as client:

            async def present() -> bool:
                return await client.get(key.encode()) is not None

            return await _poll_until(present, timeout)

    return asyncio.run(run())


def etcd_record(etcd: EtcdServer, key: str) -> admin_pb2.NodeStatus | None:
    """The node status stored at ``key``; None when there is none."""

    async def run() -> admin_pb2.NodeStatus | None:
        async with etcd.client() as client:
            found = await client.get(key.encode())
            return None if found is None else admin_pb2.NodeStatus.FromString(found.value)

    return asyncio.run(run())


def registrations_gone(control: str, node: str, timeout: float = 30) -> float:
    """Polls the control server's status until ``node`` has no registrations there; returns
    when that was first seen."""

    async def run() -> float:
        async with grpc.aio.insecure_channel(control) as channel:
            stub = admin_pb2_grpc.MeshAdminServiceStub(channel)

            async def present() -> bool:
                reply = await stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
                return any(n.node_id == node and n.registrations for n in reply.nodes)

            return await _poll_until(present, timeout)

    return asyncio.run(run())
