"""The node records control servers share through etcd (control.shared_nodes), in process
against a real etcd: a node that comes back, or moves to another server, within its grace keeps
its record once the grace of the server it left is up, however the writes interleave."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from control.registry import Registrations
from control.shared_nodes import SharedNodes
from control.store import EtcdStore
from mesh.v1 import admin_pb2, node_pb2
from mesh_core.backoff import Backoff
from tests.conftest import eventually
from tests.e2e.conftest import EtcdServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

GRACE = 2.0  # etcd's shortest lease
KEY = b"/mesh/nodes/n1"
REGISTRATION = node_pb2.Registration(service="reg", address="127.0.0.1:7001")


class Registry:
    """Stands in for the ADS sessions: the streams a server holds, one per node."""

    def __init__(self, registrations: Registrations) -> None:
        self.registrations = registrations
        self.streams: dict[str, str] = {}

    def node_statuses(self) -> list[admin_pb2.NodeStatus]:
        return [admin_pb2.NodeStatus(node_id=n, stream_id=s) for n, s in self.streams.items()]

    def connect(self, node_id: str) -> None:
        self.streams[node_id] = f"{node_id}-stream"
        self.registrations.connected(node_id)

    def disconnect(self, node_id: str) -> None:
        del self.streams[node_id]
        self.registrations.disconnected(node_id)


class Server:
    def __init__(self, etcd: EtcdServer, server_id: str) -> None:
        self.server_id = server_id
        self.store = EtcdStore(
            etcd.endpoint,
            prefix="/mesh",
            backoff=Backoff(base=0.05, cap=0.3),
            start_timeout=5,
            op_timeout=3,
        )
        self.registrations = Registrations(GRACE)
        self.registry = Registry(self.registrations)
        self.shared = SharedNodes(
            self.store,
            self.registrations,
            self.registry,  # type: ignore[arg-type]
            server_id,
            GRACE,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.store.start()
        self._task = asyncio.create_task(self.shared.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.registrations.close()
        await self.store.close()


@pytest.fixture
async def servers(etcd: EtcdServer) -> AsyncIterator[tuple[Server, Server]]:
    a, b = Server(etcd, "a"), Server(etcd, "b")
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def record(etcd: EtcdServer) -> admin_pb2.NodeStatus | None:
    async with etcd.client() as client:
        found = await client.get(KEY)
        return None if found is None else admin_pb2.NodeStatus.FromString(found.value)


async def until(
    etcd: EtcdServer, check: Callable[[admin_pb2.NodeStatus | None], bool], what: str
) -> None:
    last: list[admin_pb2.NodeStatus | None] = [None]

    async def shown() -> bool:
        last[0] = await record(etcd)
        return check(last[0])

    await eventually(shown, 10, lambda: f"the record to show {what}: {last[0]}", every=0.05)


def held_by(server: Server) -> Callable[[admin_pb2.NodeStatus | None], bool]:
    return lambda r: r is not None and r.server_id == server.server_id and bool(r.stream_id)


def departed_from(server: Server) -> Callable[[admin_pb2.NodeStatus | None], bool]:
    return lambda r: r is not None and r.server_id == server.server_id and not r.stream_id


async def outlives_the_grace(etcd: EtcdServer, holder: Server) -> None:
    """The record stays, held by ``holder`` with the registration, past the grace of the
    server the node left."""
    await asyncio.sleep(GRACE + 1.5)
    kept = await record(etcd)
    assert kept is not None, "the record went with the grace of the server the node left"
    assert kept.server_id == holder.server_id and kept.stream_id
    assert [r.address for r in kept.registrations] == [REGISTRATION.address]


async def test_a_node_back_within_its_grace_keeps_its_record(
    etcd: EtcdServer, servers: tuple[Server, Server]
) -> None:
    a, _ = servers
    a.registry.connect("n1")
    a.registrations.set("n1", [REGISTRATION])
    await until(etcd, held_by(a), "n1 held by a")
    a.registry.disconnect("n1")
    await until(etcd, departed_from(a), "n1's departure from a")
    await asyncio.sleep(0.5)
    a.registry.connect("n1")
    await until(etcd, held_by(a), "n1 held by a again")
    await outlives_the_grace(etcd, a)


async def test_a_node_taken_over_within_its_grace_keeps_its_record(
    etcd: EtcdServer, servers: tuple[Server, Server]
) -> None:
    a, b = servers
    a.registry.connect("n1")
    a.registrations.set("n1", [REGISTRATION])
    await until(etcd, held_by(a), "n1 held by a")
    a.registry.disconnect("n1")
    await until(etcd, departed_from(a), "n1's departure from a")
    b.registry.connect("n1")  # it has yet to send its set to b: a's record carries it
    await until(etcd, held_by(b), "n1 held by b")
    await outlives_the_grace(etcd, b)


async def test_a_node_on_two_servers_keeps_its_record_when_one_lets_go(
    etcd: EtcdServer, servers: tuple[Server, Server]
) -> None:
    """Both servers hold a stream of the node (a failover whose old stream is not gone yet);
    the one that wrote last lets go: it moves the record to its departure lease, and the other
    one, still holding the node, writes it again."""
    a, b = servers
    b.registry.connect("n1")
    b.registrations.set("n1", [REGISTRATION])
    await until(etcd, held_by(b), "n1 held by b")
    a.registry.connect("n1")
    a.registrations.set("n1", [REGISTRATION])
    await until(etcd, held_by(a), "n1 written last by a")
    a.registry.disconnect("n1")
    await until(etcd, held_by(b), "n1 written again by b")
    await outlives_the_grace(etcd, b)
