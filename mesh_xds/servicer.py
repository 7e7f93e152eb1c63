"""gRPC servicers for xDS: ADS (state of the world and delta) and CSDS. They only move
messages between streams and :class:`~mesh_xds.sotw.SotwSession` or
:class:`~mesh_xds.delta.DeltaSession`; the protocol lives there, and what a server does with
its sessions' events is its :class:`~mesh_xds.callbacks.SessionCallbacks`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from mesh_core.errors import MeshError
from mesh_core.limits import Limits, StreamCounter
from mesh_core.status import abort
from mesh_xds.callbacks import NO_CALLBACKS, Callbacks, SessionCallbacks
from mesh_xds.delta import DeltaSession
from mesh_xds.guard import AdsStreamGuard
from mesh_xds.registry import SessionRegistry
from mesh_xds.session import BaseSession
from mesh_xds.snapshot import SnapshotSource
from mesh_xds.sotw import SotwSession
from mesh_xds.wire import ADS_SERVICE, ads_method_handlers

log = structlog.get_logger(__name__)

StreamCallbacks = Callable[[Any], SessionCallbacks]
"""Hooks made for one stream from its gRPC context (a check of the caller's identity)."""


def _no_stream_callbacks(context: Any) -> SessionCallbacks:
    return NO_CALLBACKS


class Requests:
    """The requests of one stream, read with ``context.read()`` and each checked by ``check``
    (which raises to refuse it). The servicer reads this way rather than through the request
    iterator gRPC also hands it: no async generator per stream, and none that would hold the
    stream's last request while it waits, idle, for the next."""

    __slots__ = ("_check", "_read")

    def __init__(self, context: Any, check: Callable[[Any], None]) -> None:
        self._read = context.read
        self._check = check

    def __aiter__(self) -> Requests:
        return self

    async def __anext__(self) -> Any:
        request = await self._read()
        if request is grpc.aio.EOF:
            raise StopAsyncIteration
        self._check(request)
        return request


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        source: SnapshotSource,
        registry: SessionRegistry,
        server_id: str,
        callbacks: SessionCallbacks = NO_CALLBACKS,
        *,
        stream_callbacks: StreamCallbacks = _no_stream_callbacks,
        limits: Limits | None = None,
        streams: StreamCounter | None = None,
    ) -> None:
        """``callbacks`` are told of every session's events (metrics, a node's liveness);
        ``stream_callbacks(context)`` gives hooks of one stream's own, run first (a check of
        the caller's identity, which may refuse the node). ``limits`` bound each request
        (default :class:`~mesh_core.limits.Limits`); ``streams`` counts the streams of each
        node id against its limit."""
        self._limits = limits or Limits()
        self._streams = streams
        self._source = source
        self._registry = registry
        self._server_id = server_id
        self._callbacks = callbacks
        self._stream_callbacks = stream_callbacks

    def _session(
        self, kind: type[SotwSession] | type[DeltaSession], guard: AdsStreamGuard, context: Any
    ) -> BaseSession[Any, Any]:
        """A state-of-the-world or delta session for one stream, with the server's hooks."""
        return kind(
            self._source,
            context.write,  # bytes: the ADS methods pass responses through (add_ads_servicer)
            peer=context.peer(),
            server_id=self._server_id,
            callbacks=Callbacks(self._stream_callbacks(context), guard, self._callbacks),
        )

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[
            discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse
        ],
    ) -> None:
        guard = AdsStreamGuard(self._limits, self._streams)
        session = self._session(SotwSession, guard, context)
        await self._serve(session, guard, Requests(context, guard.check), context)

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[
            discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse
        ],
    ) -> None:
        guard = AdsStreamGuard(self._limits, self._streams)
        session = self._session(DeltaSession, guard, context)
        await self._serve(session, guard, Requests(context, guard.check_delta), context)

    async def _serve(
        self,
        session: BaseSession[Any, Any],
        guard: AdsStreamGuard,
        requests: AsyncIterator[Any],
        context: Any,
    ) -> None:
        self._registry.add(session)
        session.callbacks.on_open(session)
        try:
            await session.run(requests)
        except MeshError as error:
            await abort(
                context, error, event="stream ended", node=guard.node_id, stream=session.stream_id
            )
        finally:
            guard.release()
            self._registry.remove(session)
            session.callbacks.on_close(session)
            if session.node is not None:
                session.log.info("node disconnected")


def add_ads_servicer(servicer: AdsServicer, server: grpc.aio.Server) -> None:
    """Registers ``servicer``'s ADS methods on ``server``, in place of the generated
    ``add_AggregatedDiscoveryServiceServicer_to_server``: its sessions write responses
    serialised already, shared by the streams that are sent the same (:mod:`mesh_xds.wire`),
    which gRPC must pass through rather than serialise."""
    handlers = ads_method_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))
    server.add_registered_method_handlers(ADS_SERVICE, handlers)


class CsdsServicer(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, registry: SessionRegistry) -> None:
        self._registry = registry

    async def FetchClientStatus(
        self,
        request: csds_pb2.ClientStatusRequest,
        context: grpc.aio.ServicerContext[
            csds_pb2.ClientStatusRequest, csds_pb2.ClientStatusResponse
        ],
    ) -> csds_pb2.ClientStatusResponse:
        configs = list(self._registry.client_configs())
        if request.HasField("node") and request.node.id:
            configs = [c for c in configs if c.node.id == request.node.id]
        return csds_pb2.ClientStatusResponse(config=configs)
