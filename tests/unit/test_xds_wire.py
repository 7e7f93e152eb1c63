"""Responses written as shared bytes (``mesh_xds.wire``), and how a session interleaves the
requests it reads with the pushes it writes: a serialised body plus a stream's nonce parses as
the whole response, one body serves every stream with the same subscription, a request read
during a push waits for it, and a push that fails ends a stream that is waiting for a
request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from mesh_core.errors import NoConfigError
from mesh_xds import sotw
from mesh_xds.cache import SnapshotCache
from mesh_xds.delta import DeltaSession
from mesh_xds.session import Session
from mesh_xds.snapshot import Snapshot
from mesh_xds.sotw import SotwSession
from mesh_xds.testing import unpack
from mesh_xds.types import CLUSTER, ENDPOINT, ROUTE
from mesh_xds.wire import delta_body, sotw_body, with_nonce
from tests.conftest import eventually
from tests.unit.xds_streams import FakeStream, service

pytestmark = pytest.mark.timeout(10)


def _snapshot(cache: SnapshotCache) -> Snapshot:
    return cache.snapshot_for(base_pb2.Node(id="n"))


@pytest.mark.parametrize("nonce", ["1", "98765", "n" * 300])
def test_a_body_and_its_nonce_parse_as_the_whole_response(cache: SnapshotCache, nonce: str) -> None:
    snapshot = _snapshot(cache)
    clusters = list(snapshot.resources[CLUSTER].values())
    whole = discovery_pb2.DiscoveryResponse(
        version_info="v1",
        type_url=CLUSTER,
        nonce=nonce,
        resources=[r.packed for r in clusters],
    )
    whole.control_plane.identifier = "control-1"
    sent = with_nonce(sotw_body(CLUSTER, "v1", clusters, "control-1"), nonce)
    assert discovery_pb2.DiscoveryResponse.FromString(sent) == whole

    delta = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info="v1", type_url=CLUSTER, nonce=nonce, removed_resources=["gone"]
    )
    delta.resources.extend(r.delta for r in clusters)
    delta.control_plane.identifier = "control-1"
    sent = with_nonce(delta_body(CLUSTER, "v1", clusters, ["gone"], "control-1"), nonce)
    assert discovery_pb2.DeltaDiscoveryResponse.FromString(sent) == delta


def test_a_snapshot_encodes_each_response_once(cache: SnapshotCache) -> None:
    snapshot = _snapshot(cache)
    calls: list[int] = []

    def encode() -> bytes:
        calls.append(1)
        return b"body"

    first = snapshot.encoded(("sotw", CLUSTER, True), encode)
    assert snapshot.encoded(("sotw", CLUSTER, True), encode) is first
    assert calls == [1]
    snapshot.encoded(("sotw", CLUSTER, False), encode)
    assert calls == [1, 1], "another subscription is another body"


async def test_streams_subscribed_alike_are_sent_the_same_body(cache: SnapshotCache) -> None:
    streams = [FakeStream(cache, f"node-{i}") for i in range(3)]
    for stream in streams:
        stream.start()
    try:
        for stream in streams:
            await stream.request(ENDPOINT, ["a", "b"])
            await stream.ack(await stream.next(), ["a", "b"])
        # Different nonces per stream, for the second stream one step further.
        await streams[1].request(ROUTE, ["a"])
        await streams[1].ack(await streams[1].next(), ["a"])
        cache.set_services(2, [service("a", "10.0.0.9:1"), service("b", "10.0.0.2:1")])
        pushed = [await stream.next() for stream in streams]
        assert len({p.nonce for p in pushed}) == 2
        bodies = set()
        for response in pushed:
            response.ClearField("nonce")
            bodies.add(response.SerializeToString())
        assert len(bodies) == 1
    finally:
        for stream in streams:
            await stream.close()


async def test_a_body_by_change_is_shared_by_the_streams_that_held_the_same(
    cache: SnapshotCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EDS by change: two streams that held the same get one body of the changed assignment;
    a stream subscribed alike (so sent the same version) that held nothing yet gets a body of
    its own, whole; one that unsubscribed a name and subscribed it again gets it again."""
    encoded: list[list[str]] = []

    def counting(type_url: str, version: str, resources: Any, server_id: str) -> bytes:
        resources = list(resources)
        encoded.append([resource.name for resource in resources])
        return sotw_body(type_url, version, resources, server_id)

    monkeypatch.setattr(sotw, "sotw_body", counting)
    held = [FakeStream(cache, f"held-{i}") for i in range(2)]
    later, again = FakeStream(cache, "later"), FakeStream(cache, "again")
    streams = [*held, later, again]
    for stream in streams:
        stream.start()
    try:
        for stream in [*held, again]:
            await stream.request(ENDPOINT, ["a", "b"])
            first = await stream.next()
            await stream.ack(first, ["a", "b"])
        assert encoded == [["a", "b"]], "one first response for all three"
        await again.ack(first, ["a"])  # b unsubscribed
        await again.nothing()
        cache.set_services(2, [service("a", "10.0.0.9:1"), service("b", "10.0.0.2:1")])
        pushed = [await stream.next() for stream in held]
        for stream, response in zip(held, pushed, strict=True):
            assert [unpack(r).cluster_name for r in response.resources] == ["a"]
            await stream.ack(response, ["a", "b"])
        only_a = await again.next()
        await again.ack(only_a, ["a"])
        await later.request(ENDPOINT, ["a", "b"])
        whole = await later.next()
        assert [unpack(r).cluster_name for r in whole.resources] == ["a", "b"]
        assert whole.version_info == pushed[0].version_info
        await again.ack(only_a, ["a", "b"])
        resent = await again.next()
        assert [unpack(r).cluster_name for r in resent.resources] == ["b"]
        assert resent.version_info == pushed[0].version_info
        # One body of a's change for both held streams; again's own (another subscription,
        # another version); later's whole selection at the same version as held's; again's b.
        assert encoded == [["a", "b"], ["a"], ["a"], ["a", "b"], ["b"]]
        assert only_a.version_info != pushed[0].version_info
    finally:
        for stream in streams:
            await stream.close()


class _Requests:
    """Requests handed to a session one by one; ``drained`` once it has taken them all."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    async def __call__(self) -> AsyncIterator[Any]:
        while (request := await self.queue.get()) is not None:
            yield request

    def drained(self) -> bool:
        return self.queue.empty()


async def test_a_request_read_during_a_push_is_handled_after_it(cache: SnapshotCache) -> None:
    done: list[str] = []  # type URL of each response, when its write has finished
    gate = asyncio.Event()
    gate.set()

    async def send(data: bytes) -> None:
        response = discovery_pb2.DiscoveryResponse.FromString(data)
        if response.type_url == CLUSTER and done:
            await gate.wait()  # the push's write is slow
        done.append(response.type_url)

    requests = _Requests()
    session = SotwSession(cache, send, server_id="test")
    task = asyncio.create_task(session.run(requests()))
    try:
        first = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
        first.node.id = "node-1"
        await requests.queue.put(first)
        await eventually(lambda: done == [CLUSTER], 2.0, "the first CDS response")
        gate.clear()
        cache.set_services(2, [service("a"), service("b"), service("c")])  # a push of CDS
        await eventually(lambda: len(session.types[CLUSTER].sent or {}) == 3, 2.0, "push")
        await requests.queue.put(
            discovery_pb2.DiscoveryRequest(type_url=ROUTE, resource_names=["a"])
        )
        await eventually(requests.drained, 2.0, "the request read")
        for _ in range(20):
            await asyncio.sleep(0)
        assert done == [CLUSTER], "nothing else written while the push waits"
        gate.set()
        await eventually(lambda: len(done) == 3, 2.0, "the push, then the answer")
        assert done == [CLUSTER, CLUSTER, ROUTE]
    finally:
        gate.set()
        await requests.queue.put(None)
        await asyncio.wait_for(task, 2.0)


class _Unreachable:
    """The agent's view of its cache, as a session sees it: loaded until ``reason`` says the
    control plane is out of reach."""

    def __init__(self, cache: SnapshotCache) -> None:
        self._cache = cache
        self.reason: str | None = None

    @property
    def loaded(self) -> bool:
        return self.reason is None

    def unavailable(self) -> str | None:
        return self.reason

    def snapshot_for(self, node: base_pb2.Node) -> Snapshot:
        return self._cache.snapshot_for(node)

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self._cache.subscribe(callback)


@pytest.mark.parametrize("kind", [SotwSession, DeltaSession])
async def test_a_failed_push_ends_a_stream_waiting_for_a_request(
    cache: SnapshotCache, kind: type[Session]
) -> None:
    source = _Unreachable(cache)
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    requests = _Requests()
    session = kind(source, send, server_id="test")
    task = asyncio.create_task(session.run(requests()))
    request_type = (
        discovery_pb2.DiscoveryRequest
        if kind is SotwSession
        else discovery_pb2.DeltaDiscoveryRequest
    )
    first = request_type(type_url=CLUSTER)
    first.node.id = "node-1"
    await requests.queue.put(first)
    await eventually(lambda: len(sent) == 1, 2.0, "the first response")
    source.reason = "the control plane is unreachable"
    cache.set_services(2, [service("a")])
    with pytest.raises(NoConfigError, match="unreachable"):
        await asyncio.wait_for(task, 2.0)
    assert requests.drained(), "no request came: the push ended the stream"
