"""gRPC servicers for xDS: ADS (state of the world and delta) and CSDS. They only move
messages between streams and :class:`~mesh_xds.session.AdsSession` or
:class:`~mesh_xds.delta.DeltaSession`; the protocol lives there."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.protobuf import timestamp_pb2

from control.limits import AdsStreamGuard, LimitExceeded, Limits, StreamCounter, refuse
from control.registry import Registrations
from mesh.v1 import admin_pb2
from mesh_xds.delta import DeltaSession
from mesh_xds.session import AdsSession, NodeRefused, ProtocolError, SourceUnavailable, TypeState
from mesh_xds.snapshot import SnapshotSource
from mesh_xds.types import PUSH_ORDER

if TYPE_CHECKING:
    from control.security import Access
    from mesh_xds.metrics import XdsMetrics

log = structlog.get_logger(__name__)


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class NodeRegistry:
    """The sessions connected to this server, for status and CSDS. Event-loop owned.

    With ``registrations``, it tells them when a node's stream is known (its first request
    named the node: :meth:`node_known`) and when that stream ends (:meth:`remove`), so a
    node's registrations live as long as its streams plus the grace; status then shows each
    node's registrations and local clients."""

    def __init__(self, registrations: Registrations | None = None) -> None:
        self._sessions: dict[str, AdsSession] = {}
        self._known: set[str] = set()  # stream ids announced to the registrations
        self.registrations = registrations

    def add(self, session: AdsSession) -> None:
        self._sessions[session.stream_id] = session

    def node_known(self, session: AdsSession) -> None:
        if self.registrations is None or session.node is None:
            return
        if session.stream_id not in self._known:
            self._known.add(session.stream_id)
            self.registrations.connected(session.node_id)

    def remove(self, session: AdsSession) -> None:
        self._sessions.pop(session.stream_id, None)
        if self.registrations is not None and session.stream_id in self._known:
            self._known.discard(session.stream_id)
            self.registrations.disconnected(session.node_id)

    def sessions(self) -> list[AdsSession]:
        return sorted(self._sessions.values(), key=lambda s: (s.node_id, s.stream_id))

    def node_statuses(self) -> list[admin_pb2.NodeStatus]:
        """One status per connected stream, then one (with no stream) per node that has no
        stream but still has registrations or client reports (within its grace)."""
        statuses = [self._node_status(s) for s in self.sessions() if s.node is not None]
        if self.registrations is not None:
            streaming = {status.node_id for status in statuses}
            for node_id in self.registrations.nodes():
                if node_id not in streaming:
                    statuses.append(self._with_node_state(admin_pb2.NodeStatus(node_id=node_id)))
        return statuses

    def _with_node_state(self, status: admin_pb2.NodeStatus) -> admin_pb2.NodeStatus:
        if self.registrations is not None:
            status.registrations.extend(self.registrations.registrations(status.node_id))
            status.local_clients.extend(self.registrations.local_clients(status.node_id))
        return status

    @staticmethod
    def _type_status(state: TypeState) -> admin_pb2.TypeStatus:
        status = admin_pb2.TypeStatus(
            type_url=state.type_url,
            version_sent=state.sent_version,
            version_acked=state.acked_version,
            responses_sent=state.responses,
            resource_names=sorted(state.names),
            wildcard=state.wildcard,
        )
        if state.last_nack is not None:
            status.last_nack.version = state.last_nack.version
            status.last_nack.message = state.last_nack.message
            status.last_nack.time.CopyFrom(_timestamp(state.last_nack.at))
        return status

    def _node_status(self, session: AdsSession) -> admin_pb2.NodeStatus:
        assert session.node is not None
        ordered = sorted(
            session.types.values(),
            key=lambda t: PUSH_ORDER.index(t.type_url) if t.type_url in PUSH_ORDER else 99,
        )
        status = admin_pb2.NodeStatus(
            node_id=session.node.id,
            zone=session.node.locality.zone,
            user_agent=f"{session.node.user_agent_name} {session.node.user_agent_version}".strip(),
            peer=session.peer,
            connected_since=_timestamp(session.connected_at),
            types=[self._type_status(t) for t in ordered],
            snapshot_id=session.snapshot.id if session.snapshot is not None else "",
            stream_id=session.stream_id,
        )
        return self._with_node_state(status)

    def client_configs(self) -> Iterator[csds_pb2.ClientConfig]:
        """What each connected node was sent, and whether it ACKed it, as CSDS reports it."""
        for session in self.sessions():
            if session.node is None:
                continue
            config = csds_pb2.ClientConfig(node=session.node)
            snapshot = session.snapshot
            for state in session.types.values():
                for name in sorted(state.sent or {}):
                    entry = config.generic_xds_configs.add(
                        type_url=state.type_url, name=name, version_info=state.sent_version
                    )
                    resource = (
                        snapshot.resources.get(state.type_url, {}).get(name) if snapshot else None
                    )
                    if resource is not None and resource.digest == (state.sent or {}).get(name):
                        entry.xds_config.CopyFrom(resource.packed)
                    nacked = (
                        state.last_nack is not None
                        and state.last_nack.version == state.sent_version
                    )
                    if nacked and state.last_nack is not None:
                        entry.client_status = config_dump_shared_pb2.NACKED
                        entry.error_state.details = state.last_nack.message
                    elif state.acked_version == state.sent_version:
                        entry.client_status = config_dump_shared_pb2.ACKED
                    else:
                        entry.client_status = config_dump_shared_pb2.REQUESTED
            yield config


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        cache: SnapshotSource,
        registry: NodeRegistry,
        server_id: str,
        on_event: Callable[[str, AdsSession, TypeState], None] | None = None,
        *,
        metrics: XdsMetrics | None = None,
        access: Access | None = None,
        limits: Limits | None = None,
        streams: StreamCounter | None = None,
    ) -> None:
        """``on_event`` is told of every session's events (subscribe, ack, nack, send).
        ``metrics`` records them; by default as the control server, on the global meter.
        ``access`` decides whether a caller may speak for the node its stream names.
        ``limits`` bound each request (defaults: :class:`~control.limits.Limits`);
        ``streams`` counts the streams of each node id against its limit."""
        self._limits = limits or Limits()
        self._streams = streams
        self._access = access
        self._cache = cache
        self._registry = registry
        self._server_id = server_id
        self._on_event = on_event
        if metrics is None:
            # Imported here: meshctl imports this module and must start without OpenTelemetry.
            from mesh_xds.metrics import CONTROL, XdsMetrics

            metrics = XdsMetrics(CONTROL)
        self._metrics = metrics

    def _event(self, event: str, session: AdsSession, state: TypeState) -> None:
        self._metrics.on_event(event, session, state)
        if self._on_event is not None:
            self._on_event(event, session, state)

    def _authorizer(self, context: Any) -> Callable[[str], str | None] | None:
        access = self._access
        if access is None or not access.mtls:
            return None
        return lambda node_id: access.node_refusal(context, node_id, "ADS stream")

    def _session(self, kind: type[AdsSession], guard: AdsStreamGuard, context: Any) -> AdsSession:
        """A state-of-the-world or delta session for one stream, with the server's hooks."""
        return kind(
            self._cache,
            context.write,
            peer=context.peer(),
            server_id=self._server_id,
            on_event=self._event,
            on_node=guard.holding(self._registry.node_known),
            authorize=self._authorizer(context),
        )

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[
            discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse
        ],
    ) -> None:
        guard = AdsStreamGuard(self._limits, self._streams)
        session = self._session(AdsSession, guard, context)
        await self._serve(session, guard, guard.requests(request_iterator), context)

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[
            discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse
        ],
    ) -> None:
        guard = AdsStreamGuard(self._limits, self._streams)
        session = self._session(DeltaSession, guard, context)
        await self._serve(session, guard, _checked_delta(guard, request_iterator), context)

    async def _serve(
        self,
        session: AdsSession,
        guard: AdsStreamGuard,
        requests: AsyncIterator[Any],
        context: Any,
    ) -> None:
        self._registry.add(session)
        self._metrics.stream_opened()
        try:
            await session.run(requests)
        except ProtocolError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except NodeRefused as error:
            session.log.warning("stream refused", reason=str(error), peer=context.peer())
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
        except LimitExceeded as error:
            await refuse(context, error, node=guard.node_id, stream=session.stream_id)
        except SourceUnavailable as error:
            session.log.warning("stream ended: no config to serve", reason=str(error))
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        finally:
            guard.release()
            self._metrics.stream_closed()
            self._registry.remove(session)
            if session.node is not None:
                session.log.info("node disconnected")


async def _checked_delta(
    guard: AdsStreamGuard, source: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]
) -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
    """``source``, each request checked against the same limits as a state-of-the-world one:
    the node id, the type URL, and each of its lists of names (subscribed, unsubscribed,
    initially held)."""
    async for request in source:
        guard.check_parts(
            request.node.id if request.HasField("node") else "",
            request.type_url,
            (
                request.resource_names_subscribe,
                request.resource_names_unsubscribe,
                request.initial_resource_versions.keys(),
            ),
        )
        yield request


class CsdsServicer(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, registry: NodeRegistry) -> None:
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
