"""Test tools for anything that serves xDS, shipped with the package (after ``structlog.testing``
and httpx's ``MockTransport``): ADS clients on real gRPC streams that check every response
against what a conforming server must do, and the rule checkers themselves, for fakes that
drive a session in process.

    async with AdsClient("127.0.0.1:15010", "node-1") as client:
        client.subscribe(CLUSTER)
        await client.wait_for(lambda c: bool(c.of_type(CLUSTER)))

The rules (envoy ``xds_protocol.rst``), checked on every response as it arrives:

- state of the world (:class:`SotwRules`): the nonce is set and never repeats on the stream;
  ``version_info`` is set; the type URL is one the client requested on this stream; every
  resource is of that type and no name comes twice; every resource is one the client
  subscribed to (any, for a wildcard subscription); for a full-state type (LDS, CDS, our
  policy type), when the checker is told what exists, the response carries every subscribed
  resource that exists.
- delta (:class:`DeltaRules`): the nonce is set and never repeats; the type URL is one the
  client requested; the response is not empty; every resource carries a version and a message
  of the response's type whose name is the resource's name; no name is sent twice, removed
  twice, or both sent and removed.

A broken rule is a :class:`ProtocolViolation` (an ``AssertionError``). A client that meets
one stops reading, keeps it in ``violation`` and raises it from :meth:`~AdsClient.wait_for`,
:meth:`~AdsClient.next` and the end of its ``async with`` block, so a test fails even if it
never looked. Each checker also takes our own server's stricter habits as options (nonces that
are increasing integers, ``system_version_info`` on delta responses).

The clients ACK every response as it arrives (or NACK it, when ``reject`` says why) and record
it with the ``time.time()`` of its arrival, taken before anything else is done with it.
Everything here runs on the caller's event loop and is not thread-safe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, message, symbol_database
from google.rpc import status_pb2

from mesh.v1 import config_pb2
from mesh_xds.types import (
    CLUSTER,
    ENDPOINT,
    FULL_STATE,
    LEGACY_WILDCARD,
    LISTENER,
    ROUTE,
    SERVICE_POLICY,
    ResourceName,
    TypeUrl,
    short_name,
)

__all__ = [
    "AdsClient",
    "DeltaAdsClient",
    "DeltaRules",
    "ProtocolViolation",
    "Received",
    "SotwRules",
    "names_in",
    "resource_name",
    "unpack",
]

WILDCARD = "*"
_MESSAGES: dict[TypeUrl, type[message.Message]] = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    SERVICE_POLICY: config_pb2.ServicePolicy,
}

Reject = Callable[[Any], str | None]
Existing = Callable[[TypeUrl], Collection[ResourceName]]


class ProtocolViolation(AssertionError):
    """A server broke a rule of the xDS protocol on one stream."""


# -- resources ------------------------------------------------------------------------------


def unpack(packed: any_pb2.Any) -> message.Message:
    """The message ``packed`` carries: our five types, or any type whose module is imported."""
    type_url: str = packed.type_url
    cls = _MESSAGES.get(type_url)
    if cls is None:
        full_name = type_url.rsplit("/", 1)[-1]
        try:
            cls = symbol_database.Default().GetSymbol(full_name)
        except KeyError:
            raise ProtocolViolation(f"a resource of unknown type {type_url!r}") from None
    found = cls()
    if not packed.Unpack(found):
        raise ProtocolViolation(f"a resource that does not parse as {type_url!r}")
    return found


def resource_name(packed: any_pb2.Any) -> ResourceName:
    """The name of the resource ``packed`` carries (``cluster_name`` for an assignment)."""
    found: Any = unpack(packed)
    name = found.cluster_name if packed.type_url == ENDPOINT else getattr(found, "name", "")
    return str(name)


def names_in(response: Any) -> list[ResourceName]:
    """The names of a SotW response's resources, in the order sent."""
    return [resource_name(packed) for packed in response.resources]


# -- the rules -------------------------------------------------------------------------------


@dataclass
class _Subscription:
    """What a client asked of one type: now, and ever on this stream."""

    wildcard: bool = False
    names: set[ResourceName] = field(default_factory=set)
    named_before: bool = False
    ever_wildcard: bool = False
    ever_names: set[ResourceName] = field(default_factory=set)

    def update(self, type_url: TypeUrl, requested: Iterable[str]) -> None:
        names = set(requested)
        self.wildcard = WILDCARD in names or (
            not names and not self.named_before and type_url in LEGACY_WILDCARD
        )
        self.named_before = self.named_before or bool(names)
        self.names = names - {WILDCARD}
        self.ever_wildcard = self.ever_wildcard or self.wildcard
        self.ever_names |= self.names


class _Nonces:
    def __init__(self, increasing: bool) -> None:
        self.increasing = increasing
        self.seen: set[str] = set()
        self.last = 0

    def check(self, nonce: str) -> None:
        if not nonce:
            raise ProtocolViolation("a response without a nonce")
        if nonce in self.seen:
            raise ProtocolViolation(f"nonce {nonce!r} sent twice on one stream")
        self.seen.add(nonce)
        if self.increasing:
            if not nonce.isdigit() or int(nonce) <= self.last:
                raise ProtocolViolation(
                    f"nonce {nonce!r} after {self.last}: nonces must be increasing integers"
                )
            self.last = int(nonce)


def _no_duplicates(names: Sequence[str], what: str) -> None:
    if len(names) != len(set(names)):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ProtocolViolation(f"{what} twice in one response: {twice}")


class SotwRules:
    """The state-of-the-world rules for one stream. Tell it every request the client sends
    (:meth:`requested`) and check every response with :meth:`check`.

    ``in_order``: the server handles each request before the next response is checked (an
    in-process session driven step by step). Names are then checked against the latest
    subscription, a subscription of nothing must get no response, and ``existing`` (the names
    of each type the server had when it answered) checks that full-state responses are full.
    On a real stream a response in flight may answer an earlier subscription, so by default
    names are checked against every subscription the stream made.
    ``increasing_nonces``: nonces must be increasing integers (our server's habit)."""

    def __init__(
        self,
        *,
        in_order: bool = False,
        increasing_nonces: bool = False,
        existing: Existing | None = None,
    ) -> None:
        self.in_order = in_order
        self.existing = existing
        self._nonces = _Nonces(increasing_nonces)
        self._subscriptions: dict[TypeUrl, _Subscription] = {}

    def requested(self, request: Any) -> None:
        self._subscriptions.setdefault(request.type_url, _Subscription()).update(
            request.type_url, request.resource_names
        )

    def check(self, response: Any) -> list[ResourceName]:
        """Raises :class:`ProtocolViolation` for a broken rule; returns the names sent."""
        type_url: TypeUrl = response.type_url
        kind = short_name(type_url)
        self._nonces.check(response.nonce)
        if not response.version_info:
            raise ProtocolViolation(f"a {kind} response without version_info")
        subscription = self._subscriptions.get(type_url)
        if subscription is None:
            raise ProtocolViolation(f"a {kind} response, a type the client never requested")
        for packed in response.resources:
            if packed.type_url != type_url:
                raise ProtocolViolation(f"a {packed.type_url} resource in a {kind} response")
        names = names_in(response)
        _no_duplicates(names, f"{kind} resources named")
        if self.in_order:
            wildcard, wanted = subscription.wildcard, subscription.names
            if not wildcard and not wanted:
                raise ProtocolViolation(f"a {kind} response to a subscription of nothing")
        else:
            wildcard, wanted = subscription.ever_wildcard, subscription.ever_names
        if not wildcard and not set(names) <= wanted:
            unasked = sorted(set(names) - wanted)
            raise ProtocolViolation(f"{kind} resources nobody subscribed to: {unasked}")
        if self.in_order and self.existing is not None and type_url in FULL_STATE:
            present = set(self.existing(type_url))
            full = present if wildcard else wanted & present
            if set(names) != full:
                raise ProtocolViolation(
                    f"a full-state {kind} response with {sorted(names)}, "
                    f"not every subscribed resource: {sorted(full)}"
                )
        return names


class DeltaRules:
    """The delta rules for one stream; used like :class:`SotwRules`. ``system_version``:
    every response carries ``system_version_info`` (our server's habit; the protocol makes
    it optional)."""

    def __init__(self, *, increasing_nonces: bool = False, system_version: bool = False) -> None:
        self.system_version = system_version
        self._nonces = _Nonces(increasing_nonces)
        self._types: set[TypeUrl] = set()

    def requested(self, request: Any) -> None:
        self._types.add(request.type_url)

    def check(self, response: Any) -> list[ResourceName]:
        """Raises :class:`ProtocolViolation` for a broken rule; returns the names sent."""
        type_url: TypeUrl = response.type_url
        kind = short_name(type_url)
        self._nonces.check(response.nonce)
        if self.system_version and not response.system_version_info:
            raise ProtocolViolation(f"a delta {kind} response without system_version_info")
        if type_url not in self._types:
            raise ProtocolViolation(f"a delta {kind} response, a type never requested")
        if not response.resources and not response.removed_resources:
            raise ProtocolViolation(f"an empty delta {kind} response")
        names = [resource.name for resource in response.resources]
        removed = list(response.removed_resources)
        _no_duplicates(names, f"{kind} resources named")
        _no_duplicates(removed, f"{kind} names removed")
        if both := sorted(set(names) & set(removed)):
            raise ProtocolViolation(f"{kind} names both sent and removed: {both}")
        for resource in response.resources:
            if resource.resource.type_url != type_url:
                raise ProtocolViolation(
                    f"a {resource.resource.type_url} resource in a delta {kind} response"
                )
            if not resource.version:
                raise ProtocolViolation(f"{kind} resource {resource.name!r} without a version")
            carried = resource_name(resource.resource)
            if carried != resource.name:
                raise ProtocolViolation(
                    f"{kind} resource named {resource.name!r} carries {carried!r}"
                )
        return names


# -- clients on real streams ---------------------------------------------------------------

ResponseT = TypeVar("ResponseT")


@dataclass(frozen=True, slots=True)
class Received(Generic[ResponseT]):
    t: float  # time.time() when the response came off the stream, before it was checked
    response: ResponseT


class _Stream:
    """What both clients share: the channel, the request queue, the reading task, the record
    of responses and the waits on it."""

    def __init__(
        self,
        target: str,
        node_id: str,
        *,
        rules: SotwRules | DeltaRules,
        reject: Reject | None,
        credentials: grpc.ChannelCredentials | None,
        channel_options: Sequence[tuple[str, Any]],
    ) -> None:
        self.rules = rules
        self.target = target
        self.node_id = node_id
        self.reject = reject or (lambda _: None)
        self.received: list[Received[Any]] = []
        self.changed = asyncio.Condition()  # notified on every response and at the end
        self.error: grpc.RpcError | None = None  # the stream's end, when it ended in error
        self.violation: ProtocolViolation | None = None
        self._credentials = credentials
        self._options = list(channel_options)
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self._unread: collections.deque[Any] = collections.deque()
        self._ended = False
        self._named = False
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None

    # -- to be provided -------------------------------------------------------------------

    def _open(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, requests: Any) -> Any:
        raise NotImplementedError

    def _answer(self, response: Any) -> None:
        """ACKs or NACKs ``response``."""
        raise NotImplementedError

    # -- life ------------------------------------------------------------------------------

    async def __aenter__(self) -> Any:
        if self._credentials is not None:
            channel = grpc.aio.secure_channel(self.target, self._credentials, self._options)
        else:
            channel = grpc.aio.insecure_channel(self.target, self._options)
        self._channel = channel
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self._task = asyncio.create_task(self._receive(self._open(stub, self._iterate())))
        return self

    async def __aexit__(self, exc_type: object, *_: object) -> None:
        await self.close()
        if self.violation is not None and exc_type is None:
            raise self.violation

    async def close(self, grace: float = 1.0) -> None:
        """Ends the stream: half-closes it, gives the server ``grace`` seconds to end it (after
        reading what was sent), then cancels it; closes the channel."""
        self._requests.put_nowait(None)
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=grace)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
                await self._task
            self._task = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _iterate(self) -> AsyncIterator[Any]:
        while (request := await self._requests.get()) is not None:
            yield request

    def _send(self, request: Any) -> None:
        self.rules.requested(request)
        self._requests.put_nowait(request)

    def _with_node(self, request: Any) -> Any:
        request.node.id = self.node_id
        self._named = True
        return request

    async def _receive(self, call: Any) -> None:
        try:
            async for response in call:
                arrived = time.time()
                try:
                    self.rules.check(response)
                except ProtocolViolation as violation:
                    self.violation = violation
                    call.cancel()
                    break
                self._answer(response)
                async with self.changed:
                    self.received.append(Received(arrived, response))
                    self._unread.append(response)
                    self.changed.notify_all()
        except grpc.RpcError as error:
            self.error = error
        finally:
            self._ended = True
            async with self.changed:
                self.changed.notify_all()

    # -- what came -------------------------------------------------------------------------

    @property
    def responses(self) -> list[Any]:
        return [r.response for r in self.received]

    def of_type(self, type_url: TypeUrl) -> list[Any]:
        return [r.response for r in self.received if r.response.type_url == type_url]

    def latest(self, type_url: TypeUrl) -> Any:
        found = self.of_type(type_url)
        return found[-1] if found else None

    def _failure(self) -> BaseException:
        if self.violation is not None:
            return self.violation
        if self.error is not None:
            return self.error
        return AssertionError(f"the stream to {self.target} ended")

    async def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 10.0) -> None:
        """Waits until ``predicate(self)`` holds: raises TimeoutError, the protocol violation
        met, or the stream's error when it ended first."""

        async def until() -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: predicate(self) or self._ended)

        async with asyncio.timeout(timeout):
            await until()
        if self.violation is not None or not predicate(self):
            raise self._failure()

    async def next(self, timeout: float = 10.0) -> Any:
        """The next response not taken yet (they are ACKed as they come, taken or not)."""

        async def until() -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: bool(self._unread) or self._ended)

        async with asyncio.timeout(timeout):
            await until()
        if self._unread:
            return self._unread.popleft()
        raise self._failure()

    async def nothing(self, wait: float) -> None:
        """Asserts that no response comes (and none is left untaken) for ``wait`` seconds."""
        with contextlib.suppress(TimeoutError):
            await self.wait_for(lambda c: bool(c._unread), wait)
        if self.violation is not None:
            raise self.violation
        if self._unread:
            raise AssertionError(f"unexpected response: {self._unread[0]}")


class AdsClient(_Stream):
    """One state-of-the-world ADS stream (``StreamAggregatedResources``). :meth:`subscribe`
    asks for a type; every response is checked against ``rules`` (default: :class:`SotwRules`
    for a real stream), then ACKed with the names subscribed, or NACKed with the text
    ``reject(response)`` returns. ``version_info`` in each request is the last version
    accepted. ``wait_for_ready``: the stream waits for the server to listen (a start-up
    benchmark); ``channel_options`` go to the channel."""

    def __init__(
        self,
        target: str,
        node_id: str,
        *,
        reject: Reject | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        wait_for_ready: bool = False,
        rules: SotwRules | None = None,
    ) -> None:
        super().__init__(
            target,
            node_id,
            rules=rules if rules is not None else SotwRules(),
            reject=reject,
            credentials=credentials,
            channel_options=channel_options,
        )
        self._wait_for_ready = wait_for_ready
        self._names: dict[TypeUrl, list[ResourceName]] = {}
        self._accepted: dict[TypeUrl, str] = {}

    async def __aenter__(self) -> AdsClient:
        await super().__aenter__()
        return self

    def _open(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, requests: Any) -> Any:
        return stub.StreamAggregatedResources(requests, wait_for_ready=self._wait_for_ready)

    def subscribe(self, type_url: TypeUrl, names: Sequence[ResourceName] | None = None) -> None:
        """Subscribes to ``names`` of ``type_url`` (none: the type's wildcard, where it has
        one), replacing what was subscribed to of it."""
        self._names[type_url] = list(names or [])
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=self._names[type_url],
            version_info=self._accepted.get(type_url, ""),
        )
        self._send(self._with_node(request))

    def _answer(self, response: Any) -> None:
        type_url = response.type_url
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=self._names.get(type_url, []),
            response_nonce=response.nonce,
        )
        error = self.reject(response)
        if error is None:
            self._accepted[type_url] = response.version_info
        else:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        request.version_info = self._accepted.get(type_url, "")
        self._send(request)


class DeltaAdsClient(_Stream):
    """One delta ADS stream (``DeltaAggregatedResources``). :meth:`request` subscribes and
    unsubscribes; every response is checked against ``rules`` (default: :class:`DeltaRules`),
    then ACKed, or NACKed with the text ``reject(response)`` returns. ``held`` is what the
    client holds per type, name -> version: what it declared in ``initial_resource_versions``
    and what it accepted since, less what it unsubscribed from or was told is removed."""

    def __init__(
        self,
        target: str,
        node_id: str,
        *,
        reject: Reject | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        rules: DeltaRules | None = None,
    ) -> None:
        super().__init__(
            target,
            node_id,
            rules=rules if rules is not None else DeltaRules(),
            reject=reject,
            credentials=credentials,
            channel_options=channel_options,
        )
        self.held: dict[TypeUrl, dict[ResourceName, str]] = {}

    async def __aenter__(self) -> DeltaAdsClient:
        await super().__aenter__()
        return self

    def _open(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, requests: Any) -> Any:
        return stub.DeltaAggregatedResources(requests)

    def request(
        self,
        type_url: TypeUrl,
        subscribe: Sequence[ResourceName] = (),
        unsubscribe: Sequence[ResourceName] = (),
        *,
        initial: dict[ResourceName, str] | None = None,
    ) -> None:
        """Sends a request of ``type_url``; the stream's first request names the node."""
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            initial_resource_versions=initial or {},
        )
        held = self.held.setdefault(type_url, {})
        held.update(initial or {})
        for name in unsubscribe:
            held.pop(name, None)
        self._send(request if self._named else self._with_node(request))

    def _answer(self, response: Any) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=response.type_url, response_nonce=response.nonce
        )
        error = self.reject(response)
        if error is None:
            held = self.held.setdefault(response.type_url, {})
            for resource in response.resources:
                held[resource.name] = resource.version
            for name in response.removed_resources:
                held.pop(name, None)
        else:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._send(request)
