"""The operator API (``mesh.v1.MeshAdminService``) over the store: services, their history
and rollback, the audit trail of writes (:mod:`control.audit`), and status."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import structlog

from control.audit import AuditTrail, operator_name
from control.config import validate_service
from control.nodes import ConnectedNodes
from control.security import Access
from control.store import Change, Store
from control.traffic import TrafficGraph, health_lookup
from mesh.v1 import admin_pb2, admin_pb2_grpc
from mesh_core.errors import ConfigError, NotFoundError, PreconditionError, RateLimited
from mesh_core.limits import Limits, peer_host
from mesh_core.status import grpc_errors, retry_after_ms
from mesh_xds.cache import SnapshotCache

log = structlog.get_logger(__name__)
Context = grpc.aio.ServicerContext[object, object]
MAX_MESSAGE = 1000
"""Characters in a write's message (``meshctl apply -m``)."""


def _check_message(message: str) -> None:
    if len(message) > MAX_MESSAGE:
        raise ConfigError(f"message: {len(message)} characters, at most {MAX_MESSAGE}")


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
        traffic: TrafficGraph | None = None,
    ) -> None:
        """``access``: who may write (default: anyone, a development set-up); ``limits``:
        request sizes and the rate of writes per caller; ``traffic``: the service graph's
        window (GetTraffic; default: an empty one)."""
        self._traffic = traffic if traffic is not None else TrafficGraph()
        self._limits = limits or Limits()
        self._writes = self._limits.write_limiter()
        self._access = access or Access()
        self._remote_nodes = remote_nodes
        self._store = store
        self._cache = cache
        self._nodes = nodes
        self._server_id = server_id
        self._extra_problems = extra_problems
        self._audit = AuditTrail(store, self._access, server_id)

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
        names = [s.name for s in request.services]
        async with self._audit.write(context, "apply", names, request.message) as record:
            operator = self._writer(context, "apply")
            record.who = operator_name(operator)
            self._limits.check_apply(len(request.services))
            _check_message(request.message)
            problems: list[str] = []
            seen: set[str] = set()
            for index, service in enumerate(request.services, start=1):
                label = f"service {index}" + (f" ({service.name})" if service.name else "")
                problems += [f"{label}: {p}" for p in validate_service(service)]
                if service.name in seen:
                    problems.append(
                        f"{label}: name: duplicate of an earlier service in the request"
                    )
                seen.add(service.name)
            if not request.services:
                problems.append("no services given")
            if problems:
                raise ConfigError(problems)
            revision, applied = await self._store.apply(
                list(request.services),
                if_revision=request.if_revision,
                change=Change(record.who, request.message),
            )
            record.revision = revision
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
        async with self._audit.write(context, "delete", [request.name], request.message) as record:
            operator = self._writer(context, "delete")
            record.who = operator_name(operator)
            self._limits.check_name("name", request.name)
            _check_message(request.message)
            revision = await self._store.delete(
                request.name,
                if_revision=request.if_revision,
                change=Change(record.who, request.message),
            )
            record.revision = revision
        log.info(
            "service deleted",
            service=request.name,
            revision=revision,
            peer=context.peer(),
            operator=operator,
        )
        return admin_pb2.DeleteServiceResponse(revision=revision)

    @grpc_errors
    async def GetHistory(
        self, request: admin_pb2.GetHistoryRequest, context: Context
    ) -> admin_pb2.GetHistoryResponse:
        self._limits.check_name("name", request.name)
        if not request.name:
            raise ConfigError("name: give the service whose history to show")
        revision = self._store.revision
        entries = await self._store.history(request.name)
        if not entries:
            raise NotFoundError(f"service {request.name!r} has no history (it was never written)")
        return admin_pb2.GetHistoryResponse(entries=entries, revision=revision)

    @grpc_errors
    async def RollbackService(
        self, request: admin_pb2.RollbackServiceRequest, context: Context
    ) -> admin_pb2.RollbackServiceResponse:
        name, to = request.name, request.to_revision
        async with self._audit.write(context, "rollback", [name], request.message) as record:
            operator = self._writer(context, "rollback")
            record.who = operator_name(operator)
            self._limits.check_name("name", name)
            _check_message(request.message)
            if to <= 0:
                raise ConfigError(f"to_revision: a revision of {name!r}'s history, got {to}")
            entries = await self._store.history(name)
            target = next((e for e in entries if e.revision == to), None)
            if target is None:
                kept = ", ".join(str(e.revision) for e in entries) or "none"
                raise NotFoundError(
                    f"service {name!r} has no revision {to} in its history (revisions kept: {kept})"
                )
            if not target.HasField("service"):
                raise PreconditionError(
                    f"revision {to} of {name!r} is its deletion; roll back to a revision "
                    "that has the service"
                )
            problems = validate_service(target.service)
            if problems:  # the rules may have grown stricter since
                raise ConfigError([f"revision {to} of {name!r}: {p}" for p in problems])
            message = request.message or f"rollback to revision {to}"
            revision, [applied] = await self._store.apply(
                [target.service],
                if_revision=request.if_revision,
                change=Change(record.who, message, "rollback", to),
            )
            record.revision = revision
        log.info(
            "service rolled back",
            service=name,
            to_revision=to,
            revision=revision,
            changed=applied.changed,
            peer=context.peer(),
            operator=operator,
        )
        return admin_pb2.RollbackServiceResponse(service=applied, revision=revision)

    @grpc_errors
    async def GetAudit(
        self, request: admin_pb2.GetAuditRequest, context: Context
    ) -> admin_pb2.GetAuditResponse:
        self._limits.check_name("service", request.service)
        since = request.since.ToNanoseconds() if request.HasField("since") else 0
        entries = await self._store.audit(since_ns=since, service=request.service)
        return admin_pb2.GetAuditResponse(entries=entries)

    @grpc_errors
    async def GetTraffic(
        self, request: admin_pb2.GetTrafficRequest, context: Context
    ) -> admin_pb2.GetTrafficResponse:
        """The service graph's edges (see :mod:`control.traffic`), with each node's breaker
        and warning from its health as this server knows it (shared: every server's)."""
        self._limits.check_name("service", request.service)
        self._limits.check_name("caller", request.caller)
        return self.traffic(request)

    def traffic(
        self, request: admin_pb2.GetTrafficRequest | None = None
    ) -> admin_pb2.GetTrafficResponse:
        """What ``GetTraffic`` answers for ``request`` (None: every edge)."""
        request = request if request is not None else admin_pb2.GetTrafficRequest()
        remote = (
            {s.node_id: s for s in self._remote_nodes(set())}
            if self._remote_nodes is not None
            else None
        )
        health = health_lookup(self._nodes.registrations.health, remote)
        return self._traffic.response(request, health, self._server_id)

    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: Context
    ) -> admin_pb2.GetStatusResponse:
        return self.status()

    def status(self) -> admin_pb2.GetStatusResponse:
        """What ``GetStatus`` answers: the nodes (this server's, then, with a shared store,
        the other servers'), each with its agent's health, and the store's state."""
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
