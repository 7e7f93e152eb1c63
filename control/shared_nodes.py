"""Node state shared by the control servers of one etcd store.

Each control server writes, for every node whose ADS stream it holds, one key
``<prefix>/nodes/<node_id>`` holding the node's ``mesh.v1.NodeStatus`` (versions sent and
ACKed, last NACK, registrations, local clients, agent health and open breakers, and which
server holds it), attached to a lease of its own that it keeps alive while it holds a stream
of that node. When the node goes (or the server dies) the lease is not refreshed and etcd
deletes the key after its TTL, the registration grace; a node that reconnects to another
server within it is written again by that server under its lease, so its registrations never
lapse. Every server reads all the keys, so registered endpoints reach every node and
``meshctl status`` on any server shows every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping

import structlog

from mesh.v1 import admin_pb2, config_pb2

from .errors import StoreUnavailableError
from .registry import Registrations, registration_endpoint
from .store.etcd import EtcdKeys, EtcdStore
from .xds.server import NodeRegistry

log = structlog.get_logger(__name__)
SYNC_INTERVAL = 0.25


class SharedNodes:
    """Event-loop owned. A registration source for the publisher (``by_service``,
    ``subscribe``) built from every server's records, not only this one's."""

    def __init__(
        self,
        store: EtcdStore,
        registrations: Registrations,
        registry: NodeRegistry,
        server_id: str,
        ttl: float,
    ) -> None:
        self._keys = EtcdKeys(store, "nodes")
        self._registrations = registrations
        self._registry = registry
        self._server_id = server_id
        self._ttl = max(2, math.ceil(ttl))  # etcd rounds shorter TTLs up anyway
        self._leases: dict[str, tuple[int, float]] = {}  # node -> (lease id, last refresh)
        self._written: dict[str, bytes] = {}
        self._records: dict[str, admin_pb2.NodeStatus] = {}
        self._listeners: list[Callable[[], None]] = []

    # -- registration source -----------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    def by_service(self) -> Mapping[str, list[config_pb2.Endpoint]]:
        result: dict[str, list[config_pb2.Endpoint]] = {}
        for node_id in sorted(self._records):
            for registration in self._records[node_id].registrations:
                result.setdefault(registration.service, []).append(
                    registration_endpoint(node_id, registration)
                )
        return result

    def remote_statuses(self, local: set[str]) -> list[admin_pb2.NodeStatus]:
        """Nodes held by other servers (their last written status)."""
        return [
            status
            for node_id, status in sorted(self._records.items())
            if node_id not in local and status.server_id != self._server_id
        ]

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self._sync()
            except StoreUnavailableError as error:
                log.warning("shared node state not synced; etcd unreachable", error=str(error))
            await asyncio.sleep(SYNC_INTERVAL)

    async def _sync(self) -> None:
        statuses = {s.node_id: s for s in self._registry.node_statuses() if s.stream_id}
        for node_id in list(self._registrations.nodes()):
            if node_id not in statuses and self._registrations.is_connected(node_id):
                statuses[node_id] = admin_pb2.NodeStatus(node_id=node_id)
        now = time.monotonic()
        for node_id, status in statuses.items():
            if not self._registrations.is_connected(node_id):
                continue
            status.server_id = self._server_id
            del status.registrations[:]
            if self._registrations.has_reported(node_id):
                status.registrations.extend(self._registrations.registrations(node_id))
            elif node_id in self._records:
                # Taken over from another server before the node re-sent its set: keep what
                # it registered there, so its endpoints do not blink out meanwhile.
                status.registrations.extend(self._records[node_id].registrations)
            del status.local_clients[:]
            status.local_clients.extend(self._registrations.local_clients(node_id))
            health = self._registrations.health(node_id)
            if health is not None:
                status.health.CopyFrom(health)
            elif not self._registrations.has_reported(node_id) and node_id in self._records:
                # Taken over, as above: keep the health reported there until it is re-sent.
                previous = self._records[node_id]
                if previous.HasField("health"):
                    status.health.CopyFrom(previous.health)
            else:
                status.ClearField("health")
            value = status.SerializeToString(deterministic=True)
            lease = self._leases.get(node_id)
            if lease is not None and now - lease[1] > self._ttl / 3:
                if await self._keys.keep_alive(lease[0]):
                    self._leases[node_id] = (lease[0], now)
                else:
                    lease = None
            if lease is None:
                lease = (await self._keys.grant(self._ttl), now)
                self._leases[node_id] = lease
                self._written.pop(node_id, None)
            if self._written.get(node_id) != value:
                await self._keys.put(node_id, value, lease[0])
                self._written[node_id] = value
        for node_id in list(self._leases):
            if node_id not in statuses or not self._registrations.is_connected(node_id):
                # No stream here any more: stop refreshing; etcd drops it after the TTL.
                del self._leases[node_id]
                self._written.pop(node_id, None)
        await self._read()

    async def _read(self) -> None:
        records: dict[str, admin_pb2.NodeStatus] = {}
        for node_id, value in await self._keys.items():
            status = admin_pb2.NodeStatus()
            with contextlib.suppress(Exception):
                status.ParseFromString(value)
                records[node_id] = status
        before = {n: list(s.registrations) for n, s in self._records.items()}
        after = {n: list(s.registrations) for n, s in records.items()}
        self._records = records
        if before != after:
            log.info("registered endpoints changed", nodes=sorted(n for n in after if after[n]))
            for callback in list(self._listeners):
                callback()
