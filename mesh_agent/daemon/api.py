"""The agent's gRPC services for its node: the local API (``mesh.v1.AgentService``) and CSDS
(what the agent holds and whether it ACKed it upstream, plus what each local process holds).
Transport only: they move requests into the parts the server component hands them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import structlog
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from mesh.v1 import agent_pb2, agent_pb2_grpc, config_pb2, node_pb2
from mesh_agent.daemon.breakers.service import BreakerHub
from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.reporter import Reporter
from mesh_agent.daemon.roles import Upstream
from mesh_agent.daemon.servers import ProcessRequests
from mesh_agent.daemon.traffic import TrafficCounter
from mesh_core.errors import ConfigError
from mesh_core.validation import validate_service
from mesh_xds.registry import SessionRegistry
from mesh_xds.types import PUSH_ORDER

log = structlog.get_logger(__name__)
Context = grpc.aio.ServicerContext[object, object]


def registration_problems(registration: node_pb2.Registration) -> list[str]:
    """Checks a registration with the rules of the service config it becomes part of."""
    service = config_pb2.Service(
        name=registration.service,
        endpoints=[
            config_pb2.Endpoint(
                address=registration.address,
                zone=registration.zone,
                weight=registration.weight,
                metadata=registration.metadata,
                labels=registration.labels,
            )
        ],
    )
    problems = validate_service(service)
    return [p.replace("endpoints[0].", "").replace("name:", "service:", 1) for p in problems]


HOLD_IDENTITY_WAIT = 10.0
DECLARE_SERVER_WAIT = 5.0
MAX_WAIT = 60.0


def _wait(duration: duration_pb2.Duration, default: float) -> float:
    seconds = duration.ToNanoseconds() / 1e9
    return min(seconds, MAX_WAIT) if seconds > 0 else default


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """Registrations go to the ``reporter``, outcomes and breaker watches to the ``hub``
    (outcomes also to ``traffic``, the service graph's counts, when given), identities and
    servers declared to ``requests``; ``status`` answers GetAgentStatus."""

    def __init__(
        self,
        reporter: Reporter,
        hub: BreakerHub,
        status: Callable[[], agent_pb2.GetAgentStatusResponse],
        requests: ProcessRequests,
        *,
        traffic: TrafficCounter | None = None,
    ) -> None:
        self._traffic = traffic
        self._reporter = reporter
        self._hub = hub
        self._status = status
        self._requests = requests

    async def Register(
        self, request: agent_pb2.RegisterRequest, context: Context
    ) -> agent_pb2.RegisterResponse:
        problems = registration_problems(request.registration)
        if problems:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        self._reporter.register(request.registration)
        log.info(
            "endpoint registered",
            service=request.registration.service,
            address=request.registration.address,
        )
        return agent_pb2.RegisterResponse()

    async def Deregister(
        self, request: agent_pb2.DeregisterRequest, context: Context
    ) -> agent_pb2.DeregisterResponse:
        reporter = self._reporter
        drain = request.drain.ToNanoseconds() / 1e9
        if drain > 0:
            if not reporter.set_draining(request.service, request.address):
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"no registration of {request.address} for service {request.service!r}",
                )
            log.info(
                "endpoint draining", service=request.service, address=request.address, drain_s=drain
            )
            await asyncio.sleep(drain)
        if not reporter.remove(request.service, request.address) and drain <= 0:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no registration of {request.address} for service {request.service!r}",
            )
        log.info("endpoint deregistered", service=request.service, address=request.address)
        return agent_pb2.DeregisterResponse()

    async def ReportOutcomes(
        self, request_iterator: AsyncIterator[agent_pb2.ReportOutcomesRequest], context: Context
    ) -> agent_pb2.ReportOutcomesResponse:
        accepted = 0
        traffic = self._traffic
        async for batch in request_iterator:
            self._hub.record(batch.outcomes)
            if traffic is not None:
                traffic.record(batch.caller or batch.client_id, batch.outcomes)
            accepted += len(batch.outcomes)
        return agent_pb2.ReportOutcomesResponse(accepted=accepted)

    async def WatchBreakers(
        self, request: agent_pb2.WatchBreakersRequest, context: Context
    ) -> AsyncIterator[agent_pb2.WatchBreakersResponse]:
        hub = self._hub
        watcher = hub.add_watcher(request.services)  # the agent fetches their policies
        try:
            yield agent_pb2.WatchBreakersResponse(
                breakers=hub.initial(watcher), call_policies=hub.initial_call_policies(watcher)
            )
            while True:
                batch = [await watcher.queue.get()]
                while not watcher.queue.empty():
                    batch.append(watcher.queue.get_nowait())
                response = agent_pb2.WatchBreakersResponse()
                for update in batch:
                    if isinstance(update, agent_pb2.CallPolicy):
                        response.call_policies.append(update)
                    else:
                        response.breakers.append(update)
                yield response
        finally:
            hub.remove_watcher(watcher)

    async def AcquirePermit(
        self, request: agent_pb2.AcquirePermitRequest, context: Context
    ) -> agent_pb2.AcquirePermitResponse:
        return self._hub.acquire_permit(request.service)

    async def GetAgentStatus(
        self, request: agent_pb2.GetAgentStatusRequest, context: Context
    ) -> agent_pb2.GetAgentStatusResponse:
        return self._status()

    async def HoldIdentity(
        self, request: agent_pb2.HoldIdentityRequest, context: Context
    ) -> agent_pb2.HoldIdentityResponse:
        try:
            status = await self._requests.hold_identity(
                request.service, _wait(request.wait, HOLD_IDENTITY_WAIT)
            )
        except ConfigError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return agent_pb2.HoldIdentityResponse(identity=status)

    async def DeclareServer(
        self, request: agent_pb2.DeclareServerRequest, context: Context
    ) -> agent_pb2.DeclareServerResponse:
        try:
            return await self._requests.declare_server(
                request.service,
                request.listening_address,
                _wait(request.wait, DECLARE_SERVER_WAIT),
            )
        except ConfigError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))


class AgentCsdsServicer(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):  # type: ignore[misc]
    """The agent's own config (upstream view) first, then one entry per local process."""

    def __init__(
        self,
        node: base_pb2.Node,
        cache: ConfigCache,
        upstream: Upstream,
        sessions: SessionRegistry,
    ) -> None:
        self._node = node
        self._cache = cache
        self._upstream = upstream
        self._sessions = sessions

    async def FetchClientStatus(
        self, request: csds_pb2.ClientStatusRequest, context: Context
    ) -> csds_pb2.ClientStatusResponse:
        cache = self._cache
        own = csds_pb2.ClientConfig(node=self._node)
        updated = timestamp_pb2.Timestamp()
        updated.FromNanoseconds(int(cache.updated_at * 1e9))
        for type_url in PUSH_ORDER:
            entry = cache.types.get(type_url)
            if entry is None:
                continue
            stats = self._upstream.stats.get(type_url)
            for name, packed in sorted(entry.resources.items()):
                config = own.generic_xds_configs.add(
                    type_url=type_url,
                    name=name,
                    version_info=entry.version,
                    client_status=config_dump_shared_pb2.ACKED,
                )
                config.xds_config.CopyFrom(packed)
                config.last_updated.CopyFrom(updated)
                if stats is not None and stats.rejected:
                    config.error_state.details = stats.last_nack
        configs = [own, *self._sessions.client_configs()]
        if request.HasField("node") and request.node.id:
            configs = [c for c in configs if c.node.id == request.node.id]
        return csds_pb2.ClientStatusResponse(config=configs)
