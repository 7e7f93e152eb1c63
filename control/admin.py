"""The operator API (``mesh.v1.MeshAdminService``) over the store."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import structlog

from control.config import validate_service
from control.nodes import ConnectedNodes
from control.security import Access
from control.store import Store
from mesh.v1 import admin_pb2, admin_pb2_grpc
from mesh_core.errors import ConfigError, RateLimited
from mesh_core.limits import Limits, peer_host
from mesh_core.status import grpc_errors, retry_after_ms
from mesh_xds.cache import SnapshotCache

log = structlog.get_logger(__name__)
Context = grpc.aio.ServicerContext[object, object]


class AdminServicer(admin_pb2_grpc.MeshAdminServiceServicer):
    def __init__(
        self,
        store: Store,
        cache: SnapshotCache,
        nodes: ConnectedNodes,
        server_id: str,
        extra_problems: Callable[[], list[admin_pb2.StoreProblem]] = list,
        remote_nodes: Callable[[set[str]], list[admin_pb2.NodeStatus]] | None = None,
        access: Access | None = None,
        limits: Limits | None = None,
    ) -> None:
        """``access``: who may write (default: anyone, a development set-up); ``limits``:
        request sizes and the rate of writes per caller."""
        self._limits = limits or Limits()
        self._writes = self._limits.write_limiter()
        self._access = access or Access()
        self._remote_nodes = remote_nodes
        self._store = store
        self._cache = cache
        self._nodes = nodes
        self._server_id = server_id
        self._extra_problems = extra_problems

    def _admit_write(self, context: Context, operator: str) -> None:
        """Rate-limits writes per caller: the operator's certificate identity, else (a token,
        or an open server) the peer's host. Raises RateLimited."""
        caller = operator if operator.startswith("spiffe://") else peer_host(context.peer())
        wait = self._writes.acquire(caller)
        if wait > 0:
            raise RateLimited(
                "admin_writes_per_second",
                f"too many admin writes: at most {self._writes.rate:g} a second (bursts of "
                f"{self._writes.burst}) per caller; retry after {retry_after_ms(wait)} ms",
                wait,
                caller=caller,
            )

    def _writer(self, context: Context, what: str) -> str:
        """The operator making a write, admitted by the rate limit; raises otherwise."""
        operator = self._access.require_operator(context, what)
        self._admit_write(context, operator)
        return operator

    @grpc_errors
    async def ApplyServices(
        self, request: admin_pb2.ApplyServicesRequest, context: Context
    ) -> admin_pb2.ApplyServicesResponse:
        operator = self._writer(context, "apply")
        self._limits.check_apply(len(request.services))
        problems: list[str] = []
        seen: set[str] = set()
        for index, service in enumerate(request.services, start=1):
            label = f"service {index}" + (f" ({service.name})" if service.name else "")
            problems += [f"{label}: {p}" for p in validate_service(service)]
            if service.name in seen:
                problems.append(f"{label}: name: duplicate of an earlier service in the request")
            seen.add(service.name)
        if not request.services:
            problems.append("no services given")
        if problems:
            raise ConfigError(problems)
        revision, applied = await self._store.apply(
            list(request.services), if_revision=request.if_revision
        )
        log.info(
            "services applied",
            revision=revision,
            changed=[a.name for a in applied if a.changed],
            peer=context.peer(),
            operator=operator,
        )
        return admin_pb2.ApplyServicesResponse(services=applied, revision=revision)

    @grpc_errors
    async def GetServices(
        self, request: admin_pb2.GetServicesRequest, context: Context
    ) -> admin_pb2.GetServicesResponse:
        self._limits.check_name("name", request.name)
        if request.name:
            stored = await self._store.get(request.name)
            return admin_pb2.GetServicesResponse(services=[stored], revision=self._store.revision)
        revision, services = await self._store.list()
        return admin_pb2.GetServicesResponse(services=services, revision=revision)

    @grpc_errors
    async def DeleteService(
        self, request: admin_pb2.DeleteServiceRequest, context: Context
    ) -> admin_pb2.DeleteServiceResponse:
        operator = self._writer(context, "delete")
        self._limits.check_name("name", request.name)
        revision = await self._store.delete(request.name)
        log.info(
            "service deleted",
            service=request.name,
            revision=revision,
            peer=context.peer(),
            operator=operator,
        )
        return admin_pb2.DeleteServiceResponse(revision=revision)

    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: Context
    ) -> admin_pb2.GetStatusResponse:
        nodes = self._nodes.node_statuses()
        for node in nodes:
            node.server_id = node.server_id or self._server_id
            health = self._nodes.registrations.health(node.node_id)
            if health is not None and not node.HasField("health"):
                node.health.CopyFrom(health)
        if self._remote_nodes is not None:
            nodes += self._remote_nodes({n.node_id for n in nodes})
        return admin_pb2.GetStatusResponse(
            nodes=nodes,
            store_revision=self._store.revision,
            snapshot_revision=self._cache.revision,
            store_problems=[*self._store.problems(), *self._extra_problems()],
            server_id=self._server_id,
        )
