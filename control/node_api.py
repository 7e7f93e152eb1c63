"""``mesh.v1.NodeService``: what node agents tell mesh-control besides the ADS stream.

The servicer only moves requests into :class:`~control.registry.Registrations`, where the
rules live. A request names its node; there is no identity check yet (it comes with mTLS,
which will bind the node id to the caller's certificate), so any caller can set any node's
state.
"""

from __future__ import annotations

import grpc
import structlog

from mesh.v1 import node_pb2, node_pb2_grpc

from .registry import RegistrationError, Registrations

log = structlog.get_logger(__name__)
Context = grpc.aio.ServicerContext[object, object]


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, registrations: Registrations) -> None:
        self._registrations = registrations

    async def SetRegistrations(
        self, request: node_pb2.SetRegistrationsRequest, context: Context
    ) -> node_pb2.SetRegistrationsResponse:
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
