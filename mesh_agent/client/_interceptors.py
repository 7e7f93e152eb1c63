"""Client interceptors: the breaker check before a call and the outcome after it, with an
OpenTelemetry client span and call-duration histogram around it, for all four call types;
sync ones for ``grpc.intercept_channel`` and asyncio ones (one object per arity, since
``grpc.aio`` registers a multi-arity interceptor only for the first it matches).

They also apply the service's policy timeout (told by the agent) as the call's deadline: the
earlier of the caller's deadline and the call's start plus the timeout. grpcio would apply it
1-2 s early from the route's ``max_stream_duration`` (grpc/grpc#40633), so ``mesh_channel()``
dials an alias Listener without it (:mod:`mesh_core.names`).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
from opentelemetry import metrics, trace

from mesh_agent.client._classify import counts_for_breaker
from mesh_agent.client._link import UNKNOWN, AgentLink, CallTimeout, Decision
from mesh_core.routing import RouteTimeouts
from mesh_core.rpc_telemetry import CODE_NAMES, ClientRpcTelemetry, rpc_method, trace_headers

OPEN_CIRCUIT_KEY = "mesh-circuit"


def _rejection_details(service: str, open_until: float) -> str:
    until = datetime.datetime.fromtimestamp(open_until, datetime.UTC).isoformat(
        timespec="milliseconds"
    )
    return f"circuit for service {service!r} is open until {until}"


def _rejection_metadata(service: str, open_until: float) -> tuple[tuple[str, str], ...]:
    return (
        (OPEN_CIRCUIT_KEY, "open"),
        ("mesh-service", service),
        ("mesh-open-until-ms", str(int(open_until * 1000))),
    )


class CircuitOpenError(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[type-arg]
    """A call the interceptor failed fast: UNAVAILABLE, never sent."""

    def __init__(self, service: str, open_until: float) -> None:
        super().__init__()
        self.service = service
        self.open_until = open_until
        self._details = _rejection_details(service, open_until)
        self._trailing = _rejection_metadata(service, open_until)

    def __str__(self) -> str:
        return f"<CircuitOpenError: UNAVAILABLE: {self._details}>"

    # grpc.Call / grpc.RpcError
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def trailing_metadata(self) -> Any:
        return self._trailing

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    # grpc.Future
    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> Exception:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    # response iterators of streaming calls
    def __iter__(self) -> CircuitOpenError:
        return self

    def __next__(self) -> Any:
        raise self


def _report(link: AgentLink, service: str, started: float, probe: bool) -> Callable[[Any], None]:
    def done(call: Any) -> None:
        code = call.code()
        name = CODE_NAMES[code] if code is not None else "CANCELLED"
        if counts_for_breaker(name, call.details()):
            link.record(service, name, time.perf_counter() - started, probe=probe)

    return done


def _remaining(timeout: float | None, begun: float) -> float | None:
    """What is left of a timeout of the call that began at ``begun`` (``time.monotonic()``)."""
    return None if timeout is None else timeout - (time.monotonic() - begun)


def _for_call(timeout: CallTimeout, details: Any) -> float | None:
    """The policy timeout of one call: its route's, when the service's routes set their own."""
    if type(timeout) is RouteTimeouts:
        return timeout.timeout_for(details.method, details.metadata)
    return timeout  # type: ignore[return-value]


def _deadline(caller: float | None, policy: float | None, begun: float) -> float | None:
    """The timeout to send now for a call that began at ``begun``: until the earlier of the
    caller's deadline and the policy's (both from ``begun``); None if neither has one."""
    if policy is not None and (caller is None or policy < caller):
        caller = policy
    return _remaining(caller, begun)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """Call details with the trace context added to the metadata, or another timeout."""


def _with_trace(details: Any, span: trace.Span) -> Any:
    metadata = [*(details.metadata or ()), *trace_headers(span)]
    return _CallDetails(
        details.method,
        details.timeout,
        metadata,
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


class MeshClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
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
        self._link = link
        self._service = service
        self._rpc = ClientRpcTelemetry(service, tracer_provider, meter_provider)
        link.watch(service)

    def _with_deadline(self, details: Any, policy: CallTimeout) -> tuple[Decision, float, Any]:
        """The breaker's decision, and ``details`` with the policy's deadline: ``policy``
        seconds from now (the call's route's), unless the caller's comes first. An UNKNOWN
        policy is waited for (bounded, see :meth:`AgentLink.call_timeout`)."""
        begun = time.monotonic()
        if policy == UNKNOWN:
            policy = self._link.call_timeout(self._service, _remaining(details.timeout, begun))
        known = _for_call(policy, details)
        decision, open_until = self._link.decide(self._service)
        timeout = _deadline(details.timeout, known, begun)
        if timeout is not None and decision is not Decision.REJECT:
            details = _CallDetails(
                details.method,
                timeout,
                details.metadata,
                details.credentials,
                getattr(details, "wait_for_ready", None),
                getattr(details, "compression", None),
            )
        return decision, open_until, details

    def _intercept(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        policy = self._link.timeouts.get(self._service, UNKNOWN)
        if policy is None:  # no policy timeout: nothing more than the breaker's decision
            decision, open_until = self._link.decide(self._service)
        else:
            decision, open_until, details = self._with_deadline(details, policy)
        if not self._rpc.active():
            # No telemetry installed: the breaker alone.
            if decision is Decision.REJECT:
                return CircuitOpenError(self._service, open_until)
            started = time.perf_counter()
            call = continuation(details, request)
            call.add_done_callback(
                _report(self._link, self._service, started, decision is Decision.PROBE)
            )
            return call
        return self._observed(continuation, details, request, decision, open_until)

    def _observed(
        self,
        continuation: Callable[..., Any],
        details: Any,
        request: Any,
        decision: Decision,
        open_until: float,
    ) -> Any:
        method = rpc_method(details.method)
        span = self._rpc.start(method, decision.value) if self._rpc.tracing() else None
        if decision is Decision.REJECT:
            error = CircuitOpenError(self._service, open_until)
            if span is not None:
                self._rpc.rejected(span, error.details(), open_until)
            return error
        if span is not None:
            details = _with_trace(details, span)
        started = time.perf_counter()
        call = continuation(details, request)
        link, service, rpc, probe = self._link, self._service, self._rpc, decision is Decision.PROBE

        def done(finished: Any) -> None:
            code = finished.code()
            name = CODE_NAMES[code] if code is not None else "CANCELLED"
            text = finished.details() or ""
            if counts_for_breaker(name, text):
                link.record(service, name, time.perf_counter() - started, probe=probe)
            rpc.finish(span, method, started, name, text)

        call.add_done_callback(done)
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


def _aio_rejection(service: str, open_until: float) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*_rejection_metadata(service, open_until)),
        _rejection_details(service, open_until),
    )


def _aio_with_trace(details: Any, span: trace.Span) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), *trace_headers(span))
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _AioBase:
    def __init__(
        self,
        link: AgentLink,
        service: str,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._link = link
        self._service = service
        self._rpc = ClientRpcTelemetry(service, tracer_provider, meter_provider)
        link.watch(service)

    async def _begin_with_deadline(
        self, details: Any, policy: CallTimeout
    ) -> tuple[Decision, str, trace.Span | None, Any]:
        """:meth:`_begin` for a service with a policy timeout (or one not told yet, which is
        waited for): the details to send carry the earlier of the caller's deadline and the
        policy's (the call's route's)."""
        begun = time.monotonic()
        if policy == UNKNOWN:
            limit = _remaining(details.timeout, begun)
            policy = await self._link.call_timeout_async(self._service, limit)
        known = _for_call(policy, details)
        decision, open_until = self._link.decide(self._service)
        timeout = _deadline(details.timeout, known, begun)
        if timeout is not None and decision is not Decision.REJECT:
            details = grpc.aio.ClientCallDetails(
                details.method,
                timeout,
                details.metadata,
                details.credentials,
                details.wait_for_ready,
            )
        return self._begin(details, (decision, open_until))

    def _begin(
        self, details: Any, decided: tuple[Decision, float] | None = None
    ) -> tuple[Decision, str, trace.Span | None, Any]:
        """The breaker's decision (``decided``, else asked now), the method (empty when there
        is no telemetry to record), the call's span, and the details to send; raises the
        fast-fail error when the breaker is open."""
        decision, open_until = decided or self._link.decide(self._service)
        if not self._rpc.active():
            if decision is Decision.REJECT:
                raise _aio_rejection(self._service, open_until)
            return decision, "", None, details
        method = rpc_method(details.method)
        span = self._rpc.start(method, decision.value) if self._rpc.tracing() else None
        if decision is Decision.REJECT:
            error = _aio_rejection(self._service, open_until)
            if span is not None:
                self._rpc.rejected(span, error.details() or "", open_until)
            raise error
        if span is not None:
            details = _aio_with_trace(details, span)
        return decision, method, span, details

    def _outcome(
        self,
        span: trace.Span | None,
        method: str,
        started: float,
        probe: bool,
        code: str,
        details: str,
    ) -> None:
        if counts_for_breaker(code, details):
            self._link.record(self._service, code, time.perf_counter() - started, probe=probe)
        if method:
            self._rpc.finish(span, method, started, code, details)

    def _on_done(
        self, span: trace.Span | None, method: str, started: float, probe: bool
    ) -> Callable[[Any], None]:
        def done(call: Any) -> None:
            # aio calls expose their status only through coroutines: read it in a task.
            async def read() -> None:
                code = await call.code()
                name = CODE_NAMES[code]
                self._outcome(span, method, started, probe, name, await call.details())

            asyncio.get_running_loop().create_task(read())

        return done


class AioUnaryUnaryInterceptor(_AioBase, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        policy = self._link.timeouts.get(self._service, UNKNOWN)
        if policy is None:
            decision, method, span, details = self._begin(client_call_details)
        else:
            begin = self._begin_with_deadline(client_call_details, policy)
            decision, method, span, details = await begin
        probe = decision is Decision.PROBE
        started = time.perf_counter()
        call = await continuation(details, request)
        try:
            await call
        except grpc.aio.AioRpcError as error:
            self._outcome(span, method, started, probe, error.code().name, error.details() or "")
            raise
        except asyncio.CancelledError:
            self._outcome(span, method, started, probe, "CANCELLED", "")
            raise
        self._outcome(span, method, started, probe, "OK", "")
        return call


class _AioStreaming(_AioBase):
    """Calls with a response stream or a request stream finish after the interceptor returns:
    their outcome is read when they are done."""

    async def _intercept(self, continuation: Any, details: Any, request: Any) -> Any:
        policy = self._link.timeouts.get(self._service, UNKNOWN)
        if policy is None:
            decision, method, span, details = self._begin(details)
        else:
            decision, method, span, details = await self._begin_with_deadline(details, policy)
        started = time.perf_counter()
        call = await continuation(details, request)
        call.add_done_callback(self._on_done(span, method, started, decision is Decision.PROBE))
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
