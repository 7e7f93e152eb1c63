"""The agent's one ADS stream to the control plane.

:class:`UpstreamClient` keeps an ADS stream to one of the configured control servers,
failing over between them with jittered exponential backoff. It speaks delta xDS when the
server offers it (only changed resources travel; on a reconnect it names the resource
versions it holds) and falls back to state of the world with a server that answers
UNIMPLEMENTED. On every (re)connect it asks again for what it wants, with the versions it
already holds, so a server with the same content has nothing to resend. Each response is
checked by the :class:`~mesh_agent.daemon.cache.ConfigCache` before it replaces anything: usable
responses are ACKed, others NACKed with the reason while the last good config stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.metrics import AgentMetrics, agent_metrics
from mesh_core.backoff import Backoff
from mesh_core.tls import TlsFiles, aio_channel
from mesh_xds.types import PUSH_ORDER, SERVICE_POLICY, ResourceName, TypeUrl, short_name

log = structlog.get_logger(__name__)
RECONNECT_BACKOFF = Backoff(base=0.2, cap=5.0)

Interest = frozenset[ResourceName] | None
"""Names wanted of one type; None means every resource (wildcard)."""

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
CONNECT_TIMEOUT = 3.0
PROTOCOLS = ("auto", "delta", "sotw")
STABLE_AFTER = 10.0  # a stream that lived this long resets the backoff
UNREACHABLE_AFTER = 1.0  # seconds of failed attempts before the control plane counts as away


@dataclass(slots=True)
class TypeStats:
    responses: int = 0
    last_nack: str = ""
    rejected: bool = False  # the latest response was NACKed


class UpstreamClient:
    """Event-loop owned. ``want`` may be called at any time; the stream follows. ``metrics``
    (default: the agent's, on the global meter) reports :meth:`config_age`."""

    def __init__(
        self,
        servers: Sequence[str],
        node: base_pb2.Node,
        cache: ConfigCache,
        *,
        backoff: Backoff = RECONNECT_BACKOFF,
        metrics: AgentMetrics | None = None,
        tls: TlsFiles | None = None,
        protocol: str = "auto",
    ) -> None:
        """``tls``: connect with mTLS, the files read again at every (re)connect.
        ``protocol``: ``auto`` (delta, or state of the world where the server has no delta),
        ``delta`` or ``sotw``."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        self.protocol = protocol
        self.speaking = ""  # the protocol of the current stream: "delta" or "sotw"
        self._sotw_only: set[str] = set()  # servers that answered UNIMPLEMENTED to delta
        self._delta_queue: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] | None = None
        self._delta_subscribed: dict[TypeUrl, Interest] = {}
        self._delta_versions: dict[TypeUrl, dict[ResourceName, str]] = {}
        if not servers:
            raise ValueError("at least one control server address is needed")
        self.tls = tls
        self.servers = list(servers)
        self.node = node
        self.cache = cache
        self.backoff = backoff
        self.interest: dict[TypeUrl, Interest] = {}
        self.stats: dict[TypeUrl, TypeStats] = {}
        self.connected_to = ""
        self._queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] | None = None
        self._nonces: dict[TypeUrl, str] = {}
        self._sent_node = False
        self._requested: set[TypeUrl] = set()
        self._on_connect: list[Callable[[str], None]] = []
        self._on_disconnect: list[Callable[[], None]] = []
        self._on_unreachable: list[Callable[[str], None]] = []
        # Why the last attempt to reach a control server failed, and since when attempts have
        # failed (None once a stream has delivered a response).
        self.last_error = ""
        self._failing_since: float | None = None
        self._connected_once = asyncio.Event()
        self._up_until = 0.0  # wall time the last stream ended; 0: none has
        (metrics if metrics is not None else agent_metrics()).observe_config_age(self)

    @property
    def connected(self) -> bool:
        return bool(self.connected_to)

    def config_age(self) -> float | None:
        """Seconds the cached config has gone without confirmation from a control server:
        0 while a stream is up (on a resumed stream the server sends nothing when the
        versions match, so an open stream is the confirmation), else since a stream was last
        up or, if none has been, since the cache was written (its state file, on a start
        from the state dir). None while there is no config. Safe to call from any thread."""
        if not self.cache.types:
            return None
        if self.connected:
            return 0.0
        return max(0.0, time.time() - max(self._up_until, self.cache.updated_at))

    def on_connect(self, callback: Callable[[str], None]) -> None:
        self._on_connect.append(callback)

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        self._on_disconnect.append(callback)

    def on_unreachable(self, callback: Callable[[str], None]) -> None:
        """``callback(reason)`` after every attempt that did not get (or lost) a stream."""
        self._on_unreachable.append(callback)

    @property
    def unreachable(self) -> str:
        """Why no control server can be reached, once none has been for ``UNREACHABLE_AFTER``
        seconds of failed attempts; empty otherwise (one failure may be a blip)."""
        if self.connected or self._failing_since is None:
            return ""
        if time.monotonic() - self._failing_since < UNREACHABLE_AFTER:
            return ""
        return self.last_error

    def want(self, type_url: TypeUrl, names: Interest) -> None:
        """Subscribes to ``names`` of ``type_url`` (None: wildcard) on the current and every
        later stream."""
        if type_url in self.interest and self.interest[type_url] == names:
            return
        self.interest[type_url] = names
        if self._queue is not None and (names != frozenset() or type_url in self._requested):
            self._queue.put_nowait(self._request(type_url))
        if self._delta_queue is not None:
            request = self._delta_change(type_url)
            if request is not None:
                self._delta_queue.put_nowait(request)

    def _request(self, type_url: TypeUrl) -> discovery_pb2.DiscoveryRequest:
        names = self.interest.get(type_url)
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=self.cache.version(type_url),
            resource_names=["*"] if names is None else sorted(names),
            response_nonce=self._nonces.get(type_url, ""),
        )
        if not self._sent_node:
            request.node.CopyFrom(self.node)
            self._sent_node = True
        self._requested.add(type_url)
        return request

    async def run(self) -> None:
        """Connects, serves and reconnects until cancelled."""
        delays = self.backoff.delays()
        attempt = 0
        while True:
            server = self.servers[attempt % len(self.servers)]
            attempt += 1
            started = time.monotonic()
            try:
                if self._use_delta(server):
                    try:
                        await self._delta_stream(server)
                    except grpc.aio.AioRpcError as error:
                        if error.code() is not grpc.StatusCode.UNIMPLEMENTED:
                            raise
                        log.info("no delta xDS on this server; state of the world", server=server)
                        self._sotw_only.add(server)
                        await self._stream(server)
                else:
                    await self._stream(server)
                log.warning("upstream stream ended", server=server)
                reason = "the control server ended the stream"
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "upstream stream failed",
                    server=server,
                    code=error.code().name,
                    details=error.details(),
                )
                reason = f"{error.code().name}: {error.details()}"
            except _Unreachable as error:
                log.warning("control server unreachable", server=server, reason=error.reason)
                reason = error.reason
            if time.monotonic() - started > STABLE_AFTER:
                delays = self.backoff.delays()
                self._failing_since = None  # a long-lived stream: this is a new outage
            self._failed(server, reason)
            await asyncio.sleep(next(delays))

    def _failed(self, server: str, reason: str) -> None:
        self.last_error = f"{server}: {reason}"
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        for callback in list(self._on_unreachable):
            callback(self.last_error)

    def _use_delta(self, server: str) -> bool:
        return self.protocol == "delta" or (
            self.protocol == "auto" and server not in self._sotw_only
        )

    async def _stream(self, server: str) -> None:
        self.speaking = "sotw"
        channel = aio_channel(server, self.tls, CHANNEL_OPTIONS)
        try:
            await _ready(channel)
            queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
            self._nonces.clear()
            self._sent_node = False
            self._requested.clear()
            for type_url in sorted(self.interest, key=_push_rank):
                # An empty first LDS/CDS request would be a wildcard subscription.
                if self.interest[type_url] != frozenset():
                    queue.put_nowait(self._request(type_url))
            if not self._requested:
                # Announce the node even when there is nothing to ask for yet: the control
                # server keeps a node's registrations alive while its stream lasts. An empty
                # request for our own policy type subscribes to nothing.
                self.interest.setdefault(SERVICE_POLICY, frozenset())
                queue.put_nowait(self._request(SERVICE_POLICY))
            self._queue = queue
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.StreamAggregatedResources(_drain(queue))
            self._connected(server)
            async for response in call:
                self._handle(response)
        finally:
            self._queue = None
            self._disconnected()
            with contextlib.suppress(Exception):
                await channel.close()

    def _connected(self, server: str) -> None:
        self.connected_to = server
        log.info("upstream connected", server=server, protocol=self.speaking)
        for callback in list(self._on_connect):
            callback(server)

    def _disconnected(self) -> None:
        if not self.connected:
            return
        self._up_until = time.time()
        self.connected_to = ""
        for notify in list(self._on_disconnect):
            notify()

    def _handle(self, response: discovery_pb2.DiscoveryResponse) -> None:
        self._failing_since = None
        type_url = response.type_url
        stats = self.stats.setdefault(type_url, TypeStats())
        stats.responses += 1
        self._nonces[type_url] = response.nonce
        interest = self.interest.get(type_url)
        error = self.cache.accept(
            type_url,
            response.version_info,
            response.resources,
            None if interest is None else set(interest),
        )
        request = self._request(type_url)
        stats.rejected = error is not None
        if error is not None:
            stats.last_nack = error
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
            log.warning(
                "upstream config rejected (NACK)",
                type=short_name(type_url),
                version=response.version_info,
                error=error,
            )
        else:
            log.debug(
                "upstream config accepted", type=short_name(type_url), version=response.version_info
            )
        if self._queue is not None:
            self._queue.put_nowait(request)

    # -- delta xDS -------------------------------------------------------------------------------

    def _delta_change(self, type_url: TypeUrl) -> discovery_pb2.DeltaDiscoveryRequest | None:
        """The request that moves the stream's subscription of ``type_url`` to the current
        interest, or None when nothing changes."""
        wanted = self.interest.get(type_url)
        had = self._delta_subscribed.get(type_url, frozenset())
        if type_url in self._delta_subscribed and wanted == had:
            return None
        request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url)
        if wanted is None:
            if had is not None:
                request.resource_names_subscribe.append("*")
                request.resource_names_unsubscribe.extend(sorted(had))
        elif had is None:
            request.resource_names_unsubscribe.append("*")
            request.resource_names_subscribe.extend(sorted(wanted))
        else:
            request.resource_names_subscribe.extend(sorted(wanted - had))
            request.resource_names_unsubscribe.extend(sorted(had - wanted))
        first = type_url not in self._delta_subscribed
        self._delta_subscribed[type_url] = wanted
        if first:
            held = self._delta_versions.get(type_url)
            if held:
                request.initial_resource_versions.update(held)
        elif not request.resource_names_subscribe and not request.resource_names_unsubscribe:
            return None
        if not self._sent_node:
            request.node.CopyFrom(self.node)
            self._sent_node = True
        return request

    async def _delta_stream(self, server: str) -> None:
        self.speaking = "delta"
        channel = aio_channel(server, self.tls, CHANNEL_OPTIONS)
        try:
            await _ready(channel)
            queue: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = asyncio.Queue()
            self._sent_node = False
            self._delta_subscribed.clear()
            for type_url in sorted(self.interest, key=_push_rank):
                if self.interest[type_url] != frozenset():
                    request = self._delta_change(type_url)
                    if request is not None:
                        queue.put_nowait(request)
            if not self._sent_node:
                # Announce the node even with nothing to ask for (see the SotW stream).
                self.interest.setdefault(SERVICE_POLICY, frozenset())
                announce = discovery_pb2.DeltaDiscoveryRequest(type_url=SERVICE_POLICY)
                announce.node.CopyFrom(self.node)
                self._sent_node = True
                self._delta_subscribed[SERVICE_POLICY] = frozenset()
                queue.put_nowait(announce)
            self._delta_queue = queue
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.DeltaAggregatedResources(_drain(queue))
            self._connected(server)
            async for response in call:
                self._handle_delta(response)
        finally:
            self._delta_queue = None
            self._disconnected()
            with contextlib.suppress(Exception):
                await channel.close()

    def _handle_delta(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        self._failing_since = None
        type_url = response.type_url
        stats = self.stats.setdefault(type_url, TypeStats())
        stats.responses += 1
        versions = dict(self._delta_versions.get(type_url, {}))
        updated = [r for r in response.resources if r.HasField("resource")]
        for resource in updated:
            versions[resource.name] = resource.version
        for name in response.removed_resources:
            versions.pop(name, None)
        version = response.system_version_info or _digest(versions)
        error = self.cache.accept_delta(
            type_url, version, [r.resource for r in updated], list(response.removed_resources)
        )
        ack = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce)
        stats.rejected = error is not None
        if error is None:
            self._delta_versions[type_url] = versions
            log.debug("upstream config accepted", type=short_name(type_url), version=version)
        else:
            stats.last_nack = error
            ack.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
            log.warning(
                "upstream config rejected (NACK)",
                type=short_name(type_url),
                version=version,
                error=error,
            )
        if self._delta_queue is not None:
            self._delta_queue.put_nowait(ack)


class _Unreachable(Exception):
    """No connection to the control server within the connect timeout; ``reason`` is what
    grpc last saw (refused, a failed handshake, a name that does not resolve, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _ready(channel: grpc.aio.Channel) -> None:
    """Waits until ``channel`` is connected; raises :class:`_Unreachable` with grpc's reason
    as soon as the connection attempt fails (refused, a failed handshake), or after
    ``CONNECT_TIMEOUT`` without an answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_TIMEOUT
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise _Unreachable(await _connect_error(channel))
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise _Unreachable(await _connect_error(channel))
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), remaining)
        except TimeoutError:
            continue
        state = channel.get_state(try_to_connect=True)


async def _connect_error(channel: grpc.aio.Channel) -> str:
    """Why ``channel`` cannot connect, as grpc reports it to a call that does not wait for the
    connection (the channel's own state carries no reason)."""
    probe: Any = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda _: b"",
        response_deserializer=lambda _: None,
    )
    try:
        await probe(None, timeout=1.0, wait_for_ready=False)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            return error.details() or error.code().name
    return f"no connection within {CONNECT_TIMEOUT:g}s"


def _digest(versions: dict[ResourceName, str]) -> str:
    """A version for a type's whole delta state: a digest of its resources' versions."""
    body = "\n".join(f"{name}={version}" for name, version in sorted(versions.items()))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _push_rank(type_url: TypeUrl) -> int:
    return PUSH_ORDER.index(type_url) if type_url in PUSH_ORDER else len(PUSH_ORDER)


async def _drain(
    queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None],
) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
    while (request := await queue.get()) is not None:
        yield request
