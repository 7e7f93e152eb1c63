"""Node state shared by the control servers of one etcd store.

Each control server writes, for every node whose ADS stream it holds, one key
``<prefix>/nodes/<node_id>`` holding the node's ``mesh.v1.NodeStatus`` (versions sent and
ACKed, last NACK, registrations, local clients, agent health and open breakers, and which
server holds it). Every server reads all the keys, so registered endpoints reach every node and
``meshctl status`` on any server shows every node.

How long a record lasts. As on every store, a departed node's registrations last at least
``--registration-grace`` and at most the grace plus :data:`RENEWAL_INTERVAL` after the node
goes, whether its agent stopped or the server holding it died (in that case with the grace as
etcd counts it, :func:`etcd_ttl`: whole seconds, at least 2). Two kinds of lease make it so, and
neither costs a keep-alive per node:

- The *holding lease*, one per server. The keys of every node whose stream the server holds
  are attached to it. Its TTL is ``etcd_ttl(grace) + RENEWAL_INTERVAL``, and it is kept alive
  every RENEWAL_INTERVAL / 2. When the server dies, its keys therefore go between
  ``etcd_ttl(grace)`` + RENEWAL_INTERVAL / 2 and ``etcd_ttl(grace)`` + RENEWAL_INTERVAL after
  its death: never before the grace, even when the last keep-alive before the death ran up to
  half an interval late.
- A *departure lease*, one per departed node, written once. When the node's last stream to this
  server ends (the grace timer of :class:`~control.registry.Registrations` starts), the server
  moves the node's record, now without a stream, to a lease of its own with TTL
  ``etcd_ttl(grace)``, in one transaction that does so only while the key is still on this
  server's holding lease (another server may hold the node by then). When the grace timer
  fires, the server revokes that lease, which deletes the key then and there, unless it has
  been attached to another lease meanwhile: exactly the grace after the stream ended, whatever
  etcd's rounding. Should the server die within the grace, the lease runs out on its own,
  ``etcd_ttl(grace)`` after it was written.

A node that comes back to this server within the grace is written under the holding lease
again, and only then is its departure lease revoked. A node that connects to another server is
written there, under that server's holding lease; a server that finds a node it holds on another
server's departure record (a record with no stream) writes it again. A node that left nothing
to keep (no registrations, client reports or health) has its record deleted when it goes.

Two delays sit on top of the bound, both outside this module: etcd deletes the keys of a lease
that ran out (rather than being revoked) on its own check, every 500 ms; and the other servers
see a key go on their next read, every :data:`SYNC_INTERVAL`.

Cost per server: one keep-alive every RENEWAL_INTERVAL / 2, whatever the number of nodes it
holds; one range read of all the node keys every SYNC_INTERVAL; a put when the status of a node
it holds changes; and per departure one grant, one transaction and, when the grace ends, one
revoke.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from control.nodes import ConnectedNodes
from control.registry import Registrations, registration_endpoint
from control.store.etcd import EtcdKeys, EtcdStore
from mesh.v1 import admin_pb2, config_pb2
from mesh_core.aio import wait_event
from mesh_core.errors import StoreUnavailableError
from mesh_core.signals import Signal

log = structlog.get_logger(__name__)

# How often every server reads all the node keys (and writes what changed).
SYNC_INTERVAL = 0.25
# A departed node's registrations last at most this long past the grace (seconds, whole): the
# holding lease outlives its last keep-alive by the grace plus this, and is kept alive twice
# per interval, so one late keep-alive cannot cut the grace short.
RENEWAL_INTERVAL = 1
# etcd's shortest lease (its election timeout, 1 s by default, times 1.5, rounded up).
MIN_ETCD_TTL = 2


def etcd_ttl(seconds: float) -> int:
    """A TTL of at least ``seconds`` as etcd grants it: whole seconds, at least
    :data:`MIN_ETCD_TTL`."""
    return max(MIN_ETCD_TTL, math.ceil(seconds))


@dataclass(slots=True)
class _Departure:
    """A node whose last stream to this server ended, within its grace."""

    record: bytes  # its last status, without a stream: kept for the grace
    lease: int | None = None  # its departure lease, once granted
    moved: bool = False  # the key was moved to that lease (or was on this server's no more)


class SharedNodes:
    """Event-loop owned. A registration source for the publisher (``by_service``,
    ``subscribe``) built from every server's records, not only this one's."""

    def __init__(
        self,
        store: EtcdStore,
        registrations: Registrations,
        nodes: ConnectedNodes,
        server_id: str,
        ttl: float,
    ) -> None:
        """``ttl`` is the registration grace (seconds)."""
        self._keys = EtcdKeys(store, "nodes")
        self._registrations = registrations
        self._nodes = nodes
        self._server_id = server_id
        self._departure_ttl = etcd_ttl(ttl)
        self._holding_ttl = self._departure_ttl + RENEWAL_INTERVAL
        self._lease: int | None = None  # the holding lease
        self._written: dict[str, bytes] = {}  # node -> record written under the holding lease
        self._departed: dict[str, _Departure] = {}
        self._records: dict[str, admin_pb2.NodeStatus] = {}
        self.changed: Signal[[]] = Signal()
        """Emitted after every change of the registered endpoints, any server's."""
        self._wake = asyncio.Event()
        registrations.liveness.connect(lambda _node_id: self._wake.set())

    # -- registration source -----------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self.changed.connect(callback)

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
        renewal = asyncio.create_task(self._renew(), name="holding-lease")
        try:
            while True:
                self._wake.clear()
                try:
                    await self._sync()
                except StoreUnavailableError as error:
                    log.warning("shared node state not synced; etcd unreachable", error=str(error))
                # A node going, coming back or its grace running out wakes the loop at once.
                # Not asyncio.wait_for: on stop, the nodes' streams end (waking the loop) just
                # before this task is cancelled, and wait_for would lose that cancellation.
                await wait_event(self._wake, SYNC_INTERVAL)
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal

    async def _renew(self) -> None:
        """Keeps the holding lease alive every RENEWAL_INTERVAL / 2, on its own task so that
        a long sync cannot delay it; when etcd no longer knows it, the sync grants another and
        writes every held node again."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due = max(due + RENEWAL_INTERVAL / 2, loop.time())
            await asyncio.sleep(due - loop.time())
            lease = self._lease
            if lease is None:
                continue
            try:
                alive = await self._keys.keep_alive(lease)
            except StoreUnavailableError as error:
                log.debug("holding lease not renewed; etcd unreachable", error=str(error))
                continue
            if not alive and self._lease == lease:
                log.warning("holding lease expired; writing the nodes held here again")
                self._lease = None
                self._wake.set()

    async def _sync(self) -> None:
        statuses = self._held_statuses()
        if any(self._unknown(node_id) for node_id in statuses):
            # A node new here, before it re-sent its set: read first whether another server
            # had it, so what it registered there is carried over rather than blanked.
            await self._read()
            statuses = self._held_statuses()
        for node_id in [n for n in self._written if n not in statuses]:
            self._depart(node_id)
        await self._end_graces()
        if self._lease is None:
            self._lease = await self._keys.grant(self._holding_ttl)
            self._written.clear()
        lease = self._lease
        await self._move_departed(lease)
        for node_id, status in statuses.items():
            value = status.SerializeToString(deterministic=True)
            if self._written.get(node_id) == value and not self._superseded(node_id):
                continue
            await self._keys.put(node_id, value, lease)
            self._written[node_id] = value
            departure = self._departed.pop(node_id, None)
            if departure is not None and departure.lease is not None:
                # Back within its grace: on the holding lease again, so this deletes nothing.
                await self._keys.revoke(departure.lease)
        await self._read()

    def _held_statuses(self) -> dict[str, admin_pb2.NodeStatus]:
        """The record to write for every node whose stream this server holds."""
        statuses = {s.node_id: s for s in self._nodes.node_statuses() if s.stream_id}
        for node_id in list(self._registrations.nodes()):
            if node_id not in statuses and self._registrations.is_connected(node_id):
                statuses[node_id] = admin_pb2.NodeStatus(node_id=node_id)
        held: dict[str, admin_pb2.NodeStatus] = {}
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
            held[node_id] = status
        return held

    def _unknown(self, node_id: str) -> bool:
        return (
            node_id not in self._written
            and node_id not in self._records
            and not self._registrations.has_reported(node_id)
        )

    def _superseded(self, node_id: str) -> bool:
        """Whether the record of a node held here is gone from etcd, or is another server's
        departure record (a record with no stream): then it is written again."""
        record = self._records.get(node_id)
        if record is None:
            return True
        return record.server_id != self._server_id and not record.stream_id

    def _depart(self, node_id: str) -> None:
        """The node's last stream here ended: its record, without a stream, is to be moved to
        a departure lease (or deleted, once its grace is over)."""
        record = admin_pb2.NodeStatus.FromString(self._written.pop(node_id))
        record.stream_id = ""
        self._departed[node_id] = _Departure(record.SerializeToString(deterministic=True))

    async def _end_graces(self) -> None:
        """Deletes the records of departed nodes whose grace is over."""
        for node_id, departure in list(self._departed.items()):
            if self._registrations.is_connected(node_id):
                continue  # back: written under the holding lease below
            if self._registrations.pending_drop(node_id):
                continue  # within its grace
            if not departure.moved and self._lease is not None:
                await self._keys.delete_if_on(node_id, self._lease)
            if departure.lease is not None:
                await self._keys.revoke(departure.lease)
            del self._departed[node_id]
            log.info("node's shared record ended with its grace", node=node_id)

    async def _move_departed(self, lease: int) -> None:
        """Moves the records of nodes that departed within their grace to a lease of their
        own, once each."""
        for node_id, departure in list(self._departed.items()):
            if departure.moved or not self._registrations.pending_drop(node_id):
                continue
            if departure.lease is None:
                departure.lease = await self._keys.grant(self._departure_ttl)
            moved = await self._keys.move(node_id, departure.record, lease, departure.lease)
            # When the key was not on the holding lease any more, another server holds the
            # node (or the key went with an expired lease): nothing of ours to keep.
            departure.moved = True
            log.info(
                "node departed; its shared record lapses after the grace",
                node=node_id,
                moved=moved,
                ttl=self._departure_ttl,
            )

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
            self.changed.emit()
