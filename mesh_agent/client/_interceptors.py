"""Client interceptors, for applications with channels of their own: the same breaker check,
policy timeout, outcome report, span and call-duration histogram as the mesh channels
(all of it in :class:`mesh_agent.client._gate.Gate`), for all four call types; sync ones for
``grpc.intercept_channel`` and asyncio ones (one object per arity, since ``grpc.aio``
registers a multi-arity interceptor only for the first it matches).

``mesh_channel()`` does not use them: grpc's interceptor machinery costs more per call than
everything the mesh does (docs/benchmarks.md, section ``datapath``), so its channels call the
gate themselves (:mod:`mesh_agent.client._sync_channel`, :mod:`mesh_agent.client._aio_channel`).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
from opentelemetry import metrics, trace

from mesh_agent.client._gate import Gate, Ticket
from mesh_agent.client._link import AgentLink
from mesh_agent.client._rejection import CircuitOpenError, aio_rejection


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """Call details with another timeout, or the trace context added to the metadata."""


class MeshClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """For ``grpc.intercept_channel(channel, MeshClientInterceptor(link, "orders"))``: every
    call on the channel is a call to mesh service ``service``. Each call is checked against
    the node's breaker, traced (when a tracer provider is installed), timed into
    ``rpc.client.call.duration``, and its outcome reported to the agent."""

    def __init__(
        self,
        link: AgentLink,
        service: str,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._link = link  # the process's link to the agent, as before the gate
        self._gate = Gate(
            link, service, tracer_provider=tracer_provider, meter_provider=meter_provider
        )

    def _intercept(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        ticket = self._gate.admit(details.method, details.timeout, details.metadata)
        if ticket.rejected:
            return CircuitOpenError(self._gate.service, ticket.open_until)
        if ticket.timeout is not details.timeout or ticket.metadata is not details.metadata:
            details = _CallDetails(
                details.method,
                ticket.timeout,
                ticket.metadata,
                details.credentials,
                getattr(details, "wait_for_ready", None),
                getattr(details, "compression", None),
            )
        call = continuation(details, request)
        call.add_done_callback(ticket.done)
        return call

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator)


# -- asyncio -----------------------------------------------------------------------------------


class _AioBase:
    def __init__(
        self,
        link: AgentLink,
        service: str,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._gate = Gate(
            link, service, tracer_provider=tracer_provider, meter_provider=meter_provider
        )

    async def _admit(self, details: Any) -> tuple[Ticket, Any]:
        """The call's ticket and the details to send; raises the fast-fail error when the
        breaker is open."""
        ticket = await self._gate.admit_async(details.method, details.timeout, details.metadata)
        if ticket.rejected:
            raise aio_rejection(self._gate.service, ticket.open_until)
        if ticket.timeout is not details.timeout or ticket.metadata is not details.metadata:
            metadata = ticket.metadata
            if metadata is not details.metadata:
                metadata = grpc.aio.Metadata(*metadata)
            details = grpc.aio.ClientCallDetails(
                details.method,
                ticket.timeout,
                metadata,
                details.credentials,
                details.wait_for_ready,
            )
        return ticket, details


class AioUnaryUnaryInterceptor(_AioBase, grpc.aio.UnaryUnaryClientInterceptor):
    """The unary call is awaited here, so its outcome is known whatever a later interceptor
    returns in its place."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        ticket, details = await self._admit(client_call_details)
        call = await continuation(details, request)
        try:
            await call
        except grpc.aio.AioRpcError as error:
            ticket.finish(error.code().name, error.details())
            raise
        except asyncio.CancelledError:
            ticket.finish("CANCELLED", "")
            raise
        ticket.ok()
        return call


class _AioStreaming(_AioBase):
    """Calls with a response stream or a request stream finish after the interceptor returns:
    their outcome is read when they are done."""

    async def _intercept(self, continuation: Any, details: Any, request: Any) -> Any:
        ticket, details = await self._admit(details)
        call = await continuation(details, request)
        call.add_done_callback(ticket.aio_done)
        return call


class AioUnaryStreamInterceptor(_AioStreaming, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request)


class AioStreamUnaryInterceptor(_AioStreaming, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)


class AioStreamStreamInterceptor(_AioStreaming, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)


def aio_interceptors(
    link: AgentLink,
    service: str,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> list[grpc.aio.ClientInterceptor]:
    """One interceptor per arity, for ``grpc.aio.insecure_channel(..., interceptors=...)``."""
    kinds = (
        AioUnaryUnaryInterceptor,
        AioUnaryStreamInterceptor,
        AioStreamUnaryInterceptor,
        AioStreamStreamInterceptor,
    )
    return [
        kind(link, service, tracer_provider=tracer_provider, meter_provider=meter_provider)
        for kind in kinds
    ]
