"""The operator API (``mesh.v1.MeshAdminService``) over the store."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import structlog

from control.config import validate_service
from control.limits import Limits, admit_write, enforce, peer_host
from control.security import Access
from control.store import Store
from mesh.v1 import admin_pb2, admin_pb2_grpc
from mesh_core.errors import ConflictError, NotFoundError, StoreUnavailableError
from mesh_xds.servicer import NodeRegistry
from mesh_xds.snapshot import SnapshotCache

log = structlog.get_logger(__name__)
Context = grpc.aio.ServicerContext[object, object]
STORE_ERROR = "mesh-store-unavailable"


async def _abort_for(context: Context, error: Exception) -> None:
    if isinstance(error, NotFoundError):
        await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
    if isinstance(error, ConflictError):
        await context.abort(grpc.StatusCode.ABORTED, str(error))
    if isinstance(error, StoreUnavailableError):
        # UNAVAILABLE (a retry may succeed), marked so a client can tell that this server
        # answered and its store did not.
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, str(error), trailing_metadata=((STORE_ERROR, "1"),)
        )
    raise error


class AdminServicer(admin_pb2_grpc.MeshAdminServiceServicer):
    def __init__(
        self,
        store: Store,
        cache: SnapshotCache,
        registry: NodeRegistry,
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
        self._registry = registry
        self._server_id = server_id
        self._extra_problems = extra_problems

    async def _admit_write(self, context: Context, method: str, operator: str) -> None:
        """Rate-limits writes per caller: the operator's certificate identity, else (a token,
        or an open server) the peer's host."""
        caller = operator if operator.startswith("spiffe://") else peer_host(context.peer())
        await admit_write(self._writes, context, method, caller=caller)

    async def ApplyServices(
        self, request: admin_pb2.ApplyServicesRequest, context: Context
    ) -> admin_pb2.ApplyServicesResponse:
        operator = await self._access.require_operator(context, "apply")
        await self._admit_write(context, "ApplyServices", operator)
        limited = self._limits.check_apply(len(request.services))
        await enforce(context, limited, method="ApplyServices")
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
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        try:
            revision, applied = await self._store.apply(
                list(request.services), if_revision=request.if_revision
            )
        except (ConflictError, StoreUnavailableError) as error:
            await _abort_for(context, error)
            raise
        log.info(
            "services applied",
            revision=revision,
            changed=[a.name for a in applied if a.changed],
            peer=context.peer(),
            operator=operator,
        )
        return admin_pb2.ApplyServicesResponse(services=applied, revision=revision)

    async def GetServices(
        self, request: admin_pb2.GetServicesRequest, context: Context
    ) -> admin_pb2.GetServicesResponse:
        limited = self._limits.check_name("name", request.name)
        await enforce(context, limited, method="GetServices")
        try:
            if request.name:
                stored = await self._store.get(request.name)
                return admin_pb2.GetServicesResponse(
                    services=[stored], revision=self._store.revision
                )
            revision, services = await self._store.list()
        except (NotFoundError, StoreUnavailableError) as error:
            await _abort_for(context, error)
            raise
        return admin_pb2.GetServicesResponse(services=services, revision=revision)

    async def DeleteService(
        self, request: admin_pb2.DeleteServiceRequest, context: Context
    ) -> admin_pb2.DeleteServiceResponse:
        operator = await self._access.require_operator(context, "delete")
        await self._admit_write(context, "DeleteService", operator)
        limited = self._limits.check_name("name", request.name)
        await enforce(context, limited, method="DeleteService")
        try:
            revision = await self._store.delete(request.name)
        except (NotFoundError, ConflictError, StoreUnavailableError) as error:
            await _abort_for(context, error)
            raise
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
        nodes = self._registry.node_statuses()
        registrations = self._registry.registrations
        for node in nodes:
            node.server_id = node.server_id or self._server_id
            health = registrations.health(node.node_id) if registrations is not None else None
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
