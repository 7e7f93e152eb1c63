"""The agent's one ADS stream to the control plane, kept up.

:class:`UpstreamClient` keeps a stream to one of the configured control servers, failing over
between them with jittered exponential backoff. It speaks delta xDS
(:class:`~mesh_agent.daemon.upstream.delta.DeltaStream`) when the server offers it and falls
back to state of the world (:class:`~mesh_agent.daemon.upstream.sotw.SotwStream`) with a
server that answers UNIMPLEMENTED. Every (re)connect asks again for what the client wants,
with the versions the cache holds, so a server with the same content has nothing to resend.
The streams have the cache check each response before it replaces anything; the client keeps
what lasts across streams: what it wants (:meth:`UpstreamClient.want`), per-type stats, the
connection's state and the signals that announce its changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc

from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.metrics import AgentMetrics, agent_metrics
from mesh_agent.daemon.upstream.channel import open_channel, wait_ready
from mesh_agent.daemon.upstream.delta import DeltaStream, HeldVersions
from mesh_agent.daemon.upstream.interest import Interest
from mesh_agent.daemon.upstream.sotw import SotwStream
from mesh_agent.daemon.upstream.stream import TypeStats, UpstreamStream
from mesh_core.backoff import Backoff
from mesh_core.errors import ConfigError, UnavailableError
from mesh_core.signals import Signal
from mesh_core.tls import TlsFiles
from mesh_xds.types import SERVICE_POLICY, TypeUrl, Version, short_name

log = structlog.get_logger(__name__)
RECONNECT_BACKOFF = Backoff(base=0.2, cap=5.0)

PROTOCOLS = ("auto", "delta", "sotw")
STABLE_AFTER = 10.0  # a stream that lived this long resets the backoff
UNREACHABLE_AFTER = 1.0  # seconds of failed attempts before the control plane counts as away


class UpstreamClient:
    """Event-loop owned. ``want`` may be called at any time; the stream follows. ``metrics``
    (default: the agent's, on the global meter) reports :meth:`config_age`, whether the stream
    is up and every stream established.

    :attr:`on_connect` is emitted with the server on every (re)connect, :attr:`on_disconnect`
    when a connected stream ends, :attr:`on_unreachable` with the reason after every attempt
    that did not get (or lost) a stream."""

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
            raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        if not servers:
            raise ConfigError("at least one control server address is needed")
        self.protocol = protocol
        self.tls = tls
        self.servers = list(servers)
        self.node = node
        self.cache = cache
        self.backoff = backoff
        # Our own policy type is always there, empty until asked for: a stream with nothing
        # else to ask for announces the node with a request for it that subscribes to nothing.
        self.interest: dict[TypeUrl, Interest] = {SERVICE_POLICY: frozenset()}
        self.stats: dict[TypeUrl, TypeStats] = {}
        self.connected_to = ""
        self.on_connect: Signal[[str]] = Signal()
        self.on_disconnect: Signal[[]] = Signal()
        self.on_unreachable: Signal[[str]] = Signal()
        # Why the last attempt to reach a control server failed, and since when attempts have
        # failed (None once a stream has delivered a response).
        self.last_error = ""
        self._failing_since: float | None = None
        self._up_until = 0.0  # wall time the last stream ended; 0: none has
        self._sotw_only: set[str] = set()  # servers that answered UNIMPLEMENTED to delta
        self._held: HeldVersions = {}  # what the cache holds, as delta servers versioned it
        self._stream: UpstreamStream | None = None
        self._metrics = metrics if metrics is not None else agent_metrics()
        self._metrics.observe_config_age(self)
        self._metrics.observe_upstream(self, self.servers)

    @property
    def connected(self) -> bool:
        return bool(self.connected_to)

    def upstream_connected(self) -> bool:
        """:attr:`connected`, for the metrics reader's thread (reads one reference)."""
        return self.connected

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
        if self._stream is not None:
            self._stream.interest_changed(type_url)

    async def run(self) -> None:
        """Connects, serves and reconnects until cancelled."""
        delays = self.backoff.delays()
        attempt = 0
        while True:
            server = self.servers[attempt % len(self.servers)]
            attempt += 1
            started = time.monotonic()
            reason = await self._attempt(server)
            if time.monotonic() - started > STABLE_AFTER:
                delays = self.backoff.delays()
                self._failing_since = None  # a long-lived stream: this is a new outage
            self._failed(server, reason)
            await asyncio.sleep(next(delays))

    async def _attempt(self, server: str) -> str:
        """One stream to ``server``, served until it ends; returns why it ended."""
        try:
            if self._use_delta(server):
                try:
                    await self._serve(server, delta=True)
                except grpc.aio.AioRpcError as error:
                    if error.code() is not grpc.StatusCode.UNIMPLEMENTED:
                        raise
                    log.info("no delta xDS on this server; state of the world", server=server)
                    self._sotw_only.add(server)
                    await self._serve(server, delta=False)
            else:
                await self._serve(server, delta=False)
        except grpc.aio.AioRpcError as error:
            log.warning(
                "upstream stream failed",
                server=server,
                code=error.code().name,
                details=error.details(),
            )
            return f"{error.code().name}: {error.details()}"
        except UnavailableError as error:
            log.warning("control server unreachable", server=server, reason=str(error))
            return str(error)
        log.warning("upstream stream ended", server=server)
        return "the control server ended the stream"

    def _use_delta(self, server: str) -> bool:
        return self.protocol == "delta" or (
            self.protocol == "auto" and server not in self._sotw_only
        )

    async def _serve(self, server: str, *, delta: bool) -> None:
        channel = open_channel(server, self.tls)
        try:
            await wait_ready(channel)
            stream: UpstreamStream = (
                DeltaStream(self.node, self.cache, self.interest, self._responded, self._held)
                if delta
                else SotwStream(self.node, self.cache, self.interest, self._responded)
            )
            self._stream = stream
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            await stream.serve(stub, lambda: self._connected(server, stream.flavour))
        finally:
            self._stream = None
            self._disconnected()
            with contextlib.suppress(Exception):
                await channel.close()

    def _connected(self, server: str, flavour: str) -> None:
        self.connected_to = server
        log.info("upstream connected", server=server, protocol=flavour)
        self._metrics.upstream_connect(server)
        self.on_connect.emit(server)

    def _disconnected(self) -> None:
        if not self.connected:
            return
        self._up_until = time.time()
        self.connected_to = ""
        self.on_disconnect.emit()

    def _failed(self, server: str, reason: str) -> None:
        self.last_error = f"{server}: {reason}"
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self.on_unreachable.emit(self.last_error)

    def _responded(self, type_url: TypeUrl, version: Version, error: str | None) -> None:
        """A stream handled a response: the control plane answers."""
        self._failing_since = None
        stats = self.stats.setdefault(type_url, TypeStats())
        stats.responses += 1
        stats.rejected = error is not None
        if error is None:
            log.debug("upstream config accepted", type=short_name(type_url), version=version)
            return
        stats.last_nack = error
        log.warning(
            "upstream config rejected (NACK)",
            type=short_name(type_url),
            version=version,
            error=error,
        )


__all__ = ["PROTOCOLS", "UpstreamClient"]
