"""``mesh.v1.NodeService``: what node agents tell mesh-control besides the ADS stream.

The servicer only moves requests into :class:`~control.registry.Registrations`, where the
rules live. A request names its node; with mTLS the caller must be that node (its
certificate's URI SAN), and may register endpoints only on its own addresses. Without mTLS
any caller can set any node's state (a development set-up).
"""

from __future__ import annotations

import grpc
import structlog

from control.limits import Limits, enforce
from control.registry import RegistrationError, Registrations
from control.security import Access
from mesh.v1 import node_pb2, node_pb2_grpc


def split_host(address: str) -> str:
    """The host of ``host:port`` / ``[v6]:port`` (the whole text if it has no port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address
    return host.strip("[]")


log = structlog.get_logger(__name__)
Context = grpc.aio.ServicerContext[object, object]


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(
        self,
        registrations: Registrations,
        access: Access | None = None,
        *,
        limits: Limits | None = None,
    ) -> None:
        self._registrations = registrations
        self._limits = limits or Limits()
        self._access = access or Access()

    async def SetRegistrations(
        self, request: node_pb2.SetRegistrationsRequest, context: Context
    ) -> node_pb2.SetRegistrationsResponse:
        limited = self._limits.check_registrations(request.node_id, len(request.registrations))
        await enforce(context, limited, method="SetRegistrations", node=request.node_id[:64])
        await self._access.require_node(context, request.node_id, "SetRegistrations")
        foreign = self._access.foreign_hosts(
            context, (split_host(r.address) for r in request.registrations)
        )
        if foreign:
            message = (
                f"node {request.node_id!r} may not register endpoints on {', '.join(foreign)}: "
                "not its address (its certificate's IP SANs, or the address it connects from)"
            )
            log.warning(
                "registrations refused",
                node=request.node_id,
                peer=context.peer(),
                problems=[message],
            )
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
        try:
            accepted = self._registrations.set(request.node_id, list(request.registrations))
        except RegistrationError as error:
            log.warning(
                "registrations refused",
                node=request.node_id,
                peer=context.peer(),
                problems=error.problems,
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise
        return node_pb2.SetRegistrationsResponse(accepted=accepted)

    async def ReportClientStatus(
        self, request: node_pb2.ReportClientStatusRequest, context: Context
    ) -> node_pb2.ReportClientStatusResponse:
        limited = self._limits.check_client_report(request.node_id, len(request.clients))
        await enforce(context, limited, method="ReportClientStatus", node=request.node_id[:64])
        await self._access.require_node(context, request.node_id, "ReportClientStatus")
        try:
            self._registrations.report_clients(
                request.node_id,
                list(request.clients),
                request.health if request.HasField("health") else None,
            )
        except RegistrationError as error:
            log.warning(
                "client status refused",
                node=request.node_id,
                peer=context.peer(),
                problems=error.problems,
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise
        return node_pb2.ReportClientStatusResponse()
