"""``mesh.v1.NodeService``: what node agents tell mesh-control besides the ADS stream.

The servicer only moves requests into :class:`~control.registry.Registrations`, where the
rules live. A request names its node; with mTLS the caller must be that node (its
certificate's URI SAN), and may register endpoints only on its own addresses. Without mTLS
any caller can set any node's state (a development set-up).
"""

from __future__ import annotations

import grpc
import structlog

from control.registry import Registrations
from control.security import Access
from mesh.v1 import node_pb2, node_pb2_grpc
from mesh_core.errors import PermissionDeniedError
from mesh_core.limits import Limits
from mesh_core.status import grpc_errors


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

    @grpc_errors
    async def SetRegistrations(
        self, request: node_pb2.SetRegistrationsRequest, context: Context
    ) -> node_pb2.SetRegistrationsResponse:
        self._limits.check_registrations(request.node_id, len(request.registrations))
        self._access.require_node(context, request.node_id, "SetRegistrations")
        foreign = self._access.foreign_hosts(
            context, (split_host(r.address) for r in request.registrations)
        )
        if foreign:
            raise PermissionDeniedError(
                f"node {request.node_id!r} may not register endpoints on {', '.join(foreign)}: "
                "not its address (its certificate's IP SANs, or the address it connects from)"
            )
        accepted = self._registrations.set(request.node_id, list(request.registrations))
        return node_pb2.SetRegistrationsResponse(accepted=accepted)

    @grpc_errors
    async def ReportClientStatus(
        self, request: node_pb2.ReportClientStatusRequest, context: Context
    ) -> node_pb2.ReportClientStatusResponse:
        self._limits.check_client_report(request.node_id, len(request.clients))
        self._access.require_node(context, request.node_id, "ReportClientStatus")
        self._registrations.report_clients(
            request.node_id,
            list(request.clients),
            request.health if request.HasField("health") else None,
        )
        return node_pb2.ReportClientStatusResponse()
