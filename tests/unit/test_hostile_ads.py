"""Hostile ADS clients against :class:`~mesh_xds.session.SotwSession` and the ADS servicer:
arbitrary sequences of DiscoveryRequests (our type URLs and garbage, huge and odd resource
name lists, random versions and nonces, NACKs, the node absent or changing mid-stream,
repeats and unsubscribes).

Properties: the only exceptions are the documented ones (ProtocolError when the first request
names no node, PermissionDeniedError when the node is refused), which the servicer turns into
INVALID_ARGUMENT and PERMISSION_DENIED (requests over its limits end INVALID_ARGUMENT or
RESOURCE_EXHAUSTED), and a finished stream leaves no session registered; every response
answers the request being handled, with its type, to a client subscribed to that type (as the
client itself sees its subscription), without duplicate names, only names it subscribed to
(all of them that exist for full-state types), byte for byte what the snapshot holds; nonces
are unique and increase; the stream keeps the node it began with; and the snapshot the
session reads is the same, byte for byte, afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from control.resources import build_resources
from mesh.v1 import config_pb2
from mesh_core.errors import PermissionDeniedError, ProtocolError
from mesh_xds.cache import SnapshotCache
from mesh_xds.callbacks import SessionCallbacks
from mesh_xds.metrics import XdsMetrics
from mesh_xds.registry import SessionRegistry
from mesh_xds.servicer import AdsServicer
from mesh_xds.session import Request, Session
from mesh_xds.snapshot import Snapshot
from mesh_xds.sotw import SotwSession
from mesh_xds.testing import resource_name as name_of
from mesh_xds.types import (
    ALL_TYPES,
    FULL_STATE,
    LEGACY_WILDCARD,
    LISTENER,
)

pytestmark = pytest.mark.timeout(60)

HOSTILE = settings(
    database=None,
    deadline=timedelta(seconds=1),
    max_examples=150,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
REFUSED_NODE = "refused-node"


def _services() -> list[config_pb2.Service]:
    a = config_pb2.Service(name="a", endpoints=[config_pb2.Endpoint(address="10.0.0.1:1")])
    b = config_pb2.Service(name="b", endpoints=[config_pb2.Endpoint(address="[::1]:2")])
    b.policy.timeout.seconds = 3
    b.policy.retry.attempts = 2
    b.policy.retry.retry_on.append("UNAVAILABLE")
    c = config_pb2.Service(name="c.example")
    c.policy.circuit_breaker.max_requests = 10
    return [a, b, c]


def _serialized(snapshot: Snapshot) -> dict[str, dict[str, tuple[bytes, str]]]:
    return {
        type_url: {
            name: (r.packed.SerializeToString(deterministic=True), r.digest)
            for name, r in by_name.items()
        }
        for type_url, by_name in snapshot.resources.items()
    }


# ---------------------------------------------------------------------------- strategies

GARBAGE_TYPES = [
    "",
    "*",
    "type.googleapis.com/",
    "type.googleapis.com/envoy.config.listener.v2.Listener",
    "type.googleapis.com/envoy.api.v2.Listener",
    LISTENER + " ",
    LISTENER.upper(),
    "type.googleapis.com/mesh.v1.Service",
    "type.googleapis.com/envoy.service.discovery.v3.DeltaDiscoveryRequest",
]


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked in proportion to its weight."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(
        lambda chosen: chosen
    )


type_urls = weighted(
    (8, st.sampled_from(sorted(ALL_TYPES))), (1, st.sampled_from(GARBAGE_TYPES)), (1, st.text())
)
resource_name = weighted(
    (8, st.sampled_from(["a", "b", "c.example", "*", "missing"])),
    (1, st.sampled_from(["", "A", "a ", "x" * 10_000, "\x00", "\u202e"])),
    (1, st.text()),
)
resource_names = weighted(
    (9, st.lists(resource_name, max_size=6)),
    # Huge lists, built in one draw so hypothesis need not generate each name.
    (1, st.integers(1_000, 20_000).map(lambda n: [f"n{i}" for i in range(n)] + ["a", "*"])),
)
nodes = st.one_of(
    st.none(),
    st.just(base_pb2.Node()),
    st.builds(base_pb2.Node, id=st.sampled_from(["node-1", "node-2", REFUSED_NODE]) | st.text()),
    st.builds(
        lambda id_, zone: base_pb2.Node(id=id_, locality=base_pb2.Locality(zone=zone)),
        st.text(min_size=1),
        st.text(),
    ),
)


@dataclass
class Step:
    """One request; ``nonce`` ``"last"``/``"previous"`` is resolved against the responses seen
    so far, so that ACKs, NACKs and stale nonces all happen."""

    type_url: str
    names: list[str]
    version: str
    nonce: str
    error: str | None
    node: base_pb2.Node | None

    def __repr__(self) -> str:
        names = self.names if len(self.names) < 10 else f"<{len(self.names)} names>"
        node = None if self.node is None else f"Node(id={self.node.id!r})"
        return (
            f"Step({self.type_url!r}, {names!r}, version={self.version!r}, "
            f"nonce={self.nonce!r}, error={self.error!r}, node={node})"
        )


steps = st.builds(
    Step,
    type_url=type_urls,
    names=resource_names,
    version=weighted((6, st.just("last")), (3, st.sampled_from(["", "0", "x"])), (1, st.text())),
    nonce=weighted(
        (6, st.just("last")),
        (3, st.sampled_from(["", "previous", "1", "999999"])),
        (1, st.text(max_size=8)),
    ),
    error=weighted((8, st.none()), (2, st.text(max_size=50))),
    node=weighted((8, st.none()), (2, nodes)),
)


@st.composite
def sequences(draw: st.DrawFn) -> list[Step]:
    first = draw(steps)
    if draw(st.sampled_from([True] * 9 + [False])):  # mostly a stream that starts well
        first.node = base_pb2.Node(id=draw(st.sampled_from(["node-1", "node-2"])))
    return [first, *draw(st.lists(steps, max_size=12))]


caches = st.sampled_from([(True, True)] * 4 + [(True, False), (False, False)])


# ---------------------------------------------------------------------------- the client model


@dataclass
class TypeView:
    """What the client has asked for of one type, per the xDS spec."""

    names: set[str] = field(default_factory=set)
    wildcard: bool = False
    named_before: bool = False
    last_nonce: str = ""
    previous_nonce: str = ""
    last_version: str = ""


class HostileClient:
    """Drives one SotwSession with ``steps``, modelling independently what the client is
    subscribed to, and checks every response against that model."""

    def __init__(self, cache: SnapshotCache, steps_: list[Step]) -> None:
        self.cache = cache
        self.steps = steps_
        self.views: dict[str, TypeView] = {}
        self.node_known = False
        self.current: discovery_pb2.DiscoveryRequest | None = None
        self.answered = False
        self.handled = 0
        self.responses: list[discovery_pb2.DiscoveryResponse] = []
        self.last_nonce = 0
        self.expected_error: type[Exception] | None = None
        self.session = SotwSession(
            cache,
            self.send,
            peer="hostile",
            server_id="test",
            callbacks=_Refusing(handled=self.handled_one),
        )

    def build(self, step: Step) -> discovery_pb2.DiscoveryRequest:
        view = self.views.get(step.type_url, TypeView())
        resolve = {"last": view.last_nonce, "previous": view.previous_nonce}
        request = discovery_pb2.DiscoveryRequest(
            type_url=step.type_url,
            resource_names=step.names,
            version_info=view.last_version if step.version == "last" else step.version,
            response_nonce=resolve.get(step.nonce, step.nonce),
        )
        if step.node is not None:
            request.node.CopyFrom(step.node)
        if step.error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=step.error))
        return request

    async def requests(self, paced: bool = True) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        """The requests; ``paced``: each built once the one before it was handled, so that
        "last" is the latest nonce received, and the model updated for it (the session has
        nothing else to do meanwhile: the cache does not change)."""
        for index, step in enumerate(self.steps):
            while paced and self.handled < index:
                await asyncio.sleep(0)
            request = self.build(step)
            if paced:
                self.expect(request)
            yield request

    def handled_one(self, request: Request) -> None:
        self.handled += 1

    def expect(self, request: discovery_pb2.DiscoveryRequest) -> None:
        """Updates the model for ``request``, the next to be handled."""
        self.current, self.answered = request, False
        if not self.node_known:
            if not request.HasField("node") or not request.node.id:
                self.expected_error = ProtocolError
                return
            if request.node.id == REFUSED_NODE:
                self.expected_error = PermissionDeniedError
                return
            self.node_known = True
        if request.type_url not in ALL_TYPES:
            return
        view = self.views.setdefault(request.type_url, TypeView())
        if request.response_nonce and request.response_nonce != view.last_nonce:
            return  # stale: ignored altogether
        names = set(request.resource_names)
        view.wildcard = "*" in names or (
            not names and not view.named_before and request.type_url in LEGACY_WILDCARD
        )
        view.named_before = view.named_before or bool(names)
        view.names = names - {"*"}

    async def send(self, data: bytes) -> None:
        response = discovery_pb2.DiscoveryResponse.FromString(data)
        request = self.current
        assert request is not None, "a response before any request"
        assert not self.answered, "two responses to one request"
        self.answered = True
        assert response.type_url == request.type_url, "a response of a type not asked for"
        assert response.type_url in ALL_TYPES
        assert int(response.nonce) > self.last_nonce, "nonces must be unique and increase"
        self.last_nonce = int(response.nonce)
        assert response.version_info
        view = self.views[response.type_url]
        assert view.wildcard or view.names, "a response to a client subscribed to nothing"
        names = [name_of(r) for r in response.resources]
        assert len(names) == len(set(names)), f"duplicate names in one response: {names}"
        available = self.cache.snapshot_for(self.session.node or base_pb2.Node()).resources.get(
            response.type_url, {}
        )
        for name, resource in zip(names, response.resources, strict=True):
            assert resource.type_url == response.type_url, "a resource of another type"
            assert view.wildcard or name in view.names, f"{name!r} was not subscribed to"
            assert resource == available[name].packed, f"{name!r} differs from the snapshot"
        if response.type_url in FULL_STATE:
            wanted = set(available) if view.wildcard else view.names & set(available)
            assert set(names) == wanted, "full state must carry every subscribed resource"
        view.previous_nonce, view.last_nonce = view.last_nonce, response.nonce
        view.last_version = response.version_info
        self.responses.append(response)

    async def run(self) -> None:
        await self.session.run(self.requests())


def _cache(loaded: bool, services: bool) -> SnapshotCache:
    cache = SnapshotCache(build_resources)
    if loaded:
        cache.set_services(7, _services() if services else [])
    return cache


async def _drive(steps_: list[Step], loaded: bool, services: bool) -> HostileClient:
    cache = _cache(loaded, services)
    probe = base_pb2.Node(id="probe")
    before = _serialized(cache.snapshot_for(probe)) if loaded else None
    client = HostileClient(cache, steps_)
    try:
        await asyncio.wait_for(client.run(), 5)
    except (ProtocolError, PermissionDeniedError) as error:
        assert type(error) is client.expected_error, f"unexpected {error!r}"
    else:
        assert client.expected_error is None, f"expected {client.expected_error}"
    if client.node_known:
        first = next(s.node for s in steps_ if s.node is not None and s.node.id)
        assert client.session.node_id == first.id, "the node is the one the stream began with"
    if before is not None:
        assert _serialized(cache.snapshot_for(probe)) == before, "the snapshot changed"
        assert cache.revision == 7
    return client


@HOSTILE
@given(sequences(), caches)
def test_hostile_requests_to_a_session(steps_: list[Step], cache: tuple[bool, bool]) -> None:
    asyncio.run(_drive(steps_, *cache))


@settings(HOSTILE, max_examples=60)
@given(st.lists(st.sampled_from(sorted(ALL_TYPES)), min_size=1, max_size=5), resource_names)
def test_subscribe_ack_unsubscribe_cycles(types: list[str], names: list[str]) -> None:
    """Well-formed but relentless: subscribe, ACK, NACK, unsubscribe and resubscribe, repeated."""
    node = base_pb2.Node(id="node-1")
    steps_ = []
    for type_url in types:
        for request_names, nonce, error in [
            (names, "", None),
            (names, "last", None),
            (names, "last", "rejected"),
            ([], "last", None),
            (names, "last", None),
            (["*"], "previous", None),
            (["*"], "last", None),
        ]:
            steps_.append(Step(type_url, request_names, "last", nonce, error, node))
    asyncio.run(_drive(steps_, True, True))


# ---------------------------------------------------------------------------- the servicer


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


class FakeContext:
    """The part of a grpc.aio servicer context the ADS servicer uses: it reads ``requests``
    with ``read()`` (then ``grpc.aio.EOF``) and writes serialised responses."""

    def __init__(self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]) -> None:
        self.written: list[discovery_pb2.DiscoveryResponse] = []
        self._requests = requests

    async def read(self) -> Any:
        return await anext(self._requests, grpc.aio.EOF)

    async def write(self, data: bytes) -> None:
        self.written.append(discovery_pb2.DiscoveryResponse.FromString(data))

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def abort(self, code: grpc.StatusCode, details: str = "", **_: object) -> None:
        raise Aborted(code, details)


class _Refusing(SessionCallbacks):
    """Refuses one node id (mTLS identity checks do, in production); tells ``handled`` of
    each request handled."""

    def __init__(self, handled: Callable[[Request], None] | None = None) -> None:
        self._handled = handled

    def on_handled(self, session: Session, request: Request) -> None:
        if self._handled is not None:
            self._handled(request)

    def on_node(self, session: Session) -> None:
        if session.node_id == REFUSED_NODE:
            raise PermissionDeniedError(f"ADS stream may not speak for {REFUSED_NODE!r}")


_METRICS = XdsMetrics("control")


async def _through_servicer(steps_: list[Step]) -> None:
    cache = _cache(True, True)
    registry = SessionRegistry()
    servicer = AdsServicer(
        cache, registry, "test", _METRICS, stream_callbacks=lambda context: _Refusing()
    )
    client = HostileClient(cache, steps_)  # builds the requests; its session is not used
    requests = client.requests(paced=False)
    context = FakeContext(requests)
    try:
        await asyncio.wait_for(
            servicer.StreamAggregatedResources(requests, context),  # type: ignore[arg-type]
            5,
        )
    except Aborted as aborted:
        assert aborted.code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ), aborted
    assert registry.sessions() == [], "a finished stream stays registered"
    for response in context.written:
        names = [name_of(r) for r in response.resources]
        assert len(names) == len(set(names))


@settings(HOSTILE, max_examples=80)
@given(sequences())
def test_hostile_requests_through_the_servicer(steps_: list[Step]) -> None:
    asyncio.run(_through_servicer(steps_))
