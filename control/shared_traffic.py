"""The service graph shared by the control servers of one etcd store.

Agents each report their calls to the one control server their upstream is connected to, so
each server's :class:`~control.traffic.TrafficGraph` holds only its own agents' edges. To show
every edge on any server without writing to etcd per call or per report, each server, every
:data:`SHARE_INTERVAL` seconds:

- writes its own window, each edge summed over it (``mesh.v1.TrafficWindow``, at most
  :data:`~control.traffic.MAX_EDGES` edges, a few hundred KB at most), under
  ``<prefix>/traffic/<server_id>``, attached to a lease of its own with TTL
  :data:`RECORD_TTL` that it keeps alive on the same beat; an empty window is not written
  (its key is deleted once when its edges are gone);
- reads every server's key and hands the others' records to the graph
  (:meth:`~control.traffic.TrafficGraph.set_remote`), which adds them in when read.

So another server's edges are at most SHARE_INTERVAL (its write) plus SHARE_INTERVAL (this
read) older than its own view, and a dead server's record is gone with its lease, at most
RECORD_TTL after its last keep-alive (its edges' own times bound them too: an edge whose last
report is older than the window is ignored). Cost per server: one put, one keep-alive and one
range read every SHARE_INTERVAL while there is traffic. Event-loop owned.
"""

from __future__ import annotations

import asyncio

import structlog
from google.protobuf.message import DecodeError

from control.shared_nodes import etcd_ttl
from control.store.etcd import EtcdKeys, EtcdStore
from control.traffic import TrafficGraph
from mesh.v1 import traffic_pb2
from mesh_core.errors import StoreUnavailableError

log = structlog.get_logger(__name__)
SHARE_INTERVAL = 2.0
RECORD_TTL = etcd_ttl(3 * SHARE_INTERVAL)
SECTION = "traffic"


class SharedTraffic:
    def __init__(
        self,
        store: EtcdStore,
        graph: TrafficGraph,
        server_id: str,
        *,
        interval: float = SHARE_INTERVAL,
    ) -> None:
        self._keys = EtcdKeys(store, SECTION)
        self._graph = graph
        self._server_id = server_id
        self._interval = interval
        self._lease: int | None = None
        self._written = False
        self._unreachable = False
        self.syncs = 0
        """Completed syncs (write and read), for tests and logs."""

    async def run(self) -> None:
        while True:
            try:
                await self.sync()
                if self._unreachable:
                    self._unreachable = False
                    log.info("shared traffic synced again")
            except StoreUnavailableError as error:
                if not self._unreachable:
                    self._unreachable = True
                    log.warning("shared traffic not synced; etcd unreachable", error=str(error))
            await asyncio.sleep(self._interval)

    async def sync(self) -> None:
        """Writes this server's window (or removes it when empty), then reads the others'."""
        record = self._graph.export(self._server_id)
        if record.edges:
            if self._lease is not None and not await self._keys.keep_alive(self._lease):
                self._lease = None
            if self._lease is None:
                self._lease = await self._keys.grant(RECORD_TTL)
            await self._keys.put(
                self._server_id, record.SerializeToString(deterministic=True), self._lease
            )
            self._written = True
        elif self._written:
            await self._keys.delete(self._server_id)
            self._written = False
        records: list[traffic_pb2.TrafficWindow] = []
        for name, value in await self._keys.items():
            if name == self._server_id:
                continue
            try:
                records.append(traffic_pb2.TrafficWindow.FromString(value))
            except DecodeError as error:  # a record we cannot read is left out, not fatal
                log.warning("shared traffic record unreadable", server=name, error=str(error))
        self._graph.set_remote(records, own=self._server_id)
        self.syncs += 1


__all__ = ["RECORD_TTL", "SHARE_INTERVAL", "SharedTraffic"]
