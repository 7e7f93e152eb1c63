"""Server interceptors that time and trace every call, sync and asyncio, for all four call
types: the backends in the mesh install them (``mesh_agent.client`` re-exports them), and so
do the mesh's own daemons, whose servers' call durations the dashboard shows.

    server = grpc.server(executor, interceptors=[MeshServerInterceptor()])
    server = grpc.aio.server(interceptors=[AioMeshServerInterceptor()])

Each call gets an OpenTelemetry server span, continuing the caller's trace from the W3C
trace context in its metadata, current while the handler runs (so log lines written in the
handler carry its ``trace_id`` and ``span_id``), and is timed into
``rpc.server.call.duration``. With no tracer provider installed only the histogram is
recorded; with neither a tracer nor a meter provider installed, calls pass through
untouched.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import grpc.aio
from opentelemetry import metrics, trace

from mesh_core.rpc_telemetry import ServerCall, ServerRpcTelemetry, rpc_method, status_of

__all__ = [
    "AioMeshServerInterceptor",
    "MeshServerInterceptor",
    "handler_kind",
    "rebuild_handler",
]

_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def handler_kind(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    """``unary_unary``, ``unary_stream``, ``stream_unary`` or ``stream_stream``."""
    for kind in _KINDS:
        if getattr(handler, kind) is not None:
            return kind
    raise ValueError("method handler without a behavior")


def rebuild_handler(
    handler: grpc.RpcMethodHandler[Any, Any], kind: str, behavior: Any
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with ``behavior`` in place of its own (same kind and serializers)."""
    return _FACTORIES[kind](
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _HandlerCache:
    """Wrapped handlers by the handler grpc resolved: a method's handler is wrapped once,
    not on every call (building one costs more than the rest of the interceptor)."""

    LIMIT = 4096

    def __init__(self, telemetry: ServerRpcTelemetry) -> None:
        self.telemetry = telemetry
        self._entries: dict[int, tuple[Any, str | bytes, grpc.RpcMethodHandler[Any, Any]]] = {}

    def get(
        self,
        handler: grpc.RpcMethodHandler[Any, Any],
        method: str | bytes,
        wrap: Callable[[ServerRpcTelemetry, str, str, Any], Any],
    ) -> grpc.RpcMethodHandler[Any, Any]:
        entry = self._entries.get(id(handler))
        if entry is not None and entry[0] is handler and entry[1] == method:
            return entry[2]
        kind = handler_kind(handler)
        wrapped = rebuild_handler(
            handler, kind, wrap(self.telemetry, kind, rpc_method(method), getattr(handler, kind))
        )
        if len(self._entries) >= self.LIMIT:  # handlers made per call: keep it bounded
            self._entries.clear()
        self._entries[id(handler)] = (handler, method, wrapped)
        return wrapped


# -- sync ---------------------------------------------------------------------------------------


def _sync_unary_response(
    telemetry: ServerRpcTelemetry, method: str, behavior: Callable[..., Any]
) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        call = telemetry.call(method, context.invocation_metadata(), context.peer())
        token = call.enter()
        try:
            response = behavior(request, context)
        except BaseException as error:
            call.finish(*status_of(context, error))
            raise
        finally:
            call.exit(token)
        call.finish(*status_of(context, None))
        return response

    return handle


def _sync_stream_response(
    telemetry: ServerRpcTelemetry, method: str, behavior: Callable[..., Iterator[Any]]
) -> Callable[..., Iterator[Any]]:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        call = telemetry.call(method, context.invocation_metadata(), context.peer())
        return _traced_iterator(call, context, lambda: behavior(request, context))

    return handle


def _traced_iterator(
    call: ServerCall, context: grpc.ServicerContext, start: Callable[[], Iterator[Any]]
) -> Iterator[Any]:
    """Runs the handler's generator with the call's span current for each step (never across
    a ``yield``, so an abandoned stream cannot leave a context attached)."""
    error: BaseException | None = None
    try:
        token = call.enter()
        try:
            responses = iter(start())
        finally:
            call.exit(token)
        yield from _stepwise(call, responses)
    except BaseException as raised:
        error = raised
        raise
    finally:
        if isinstance(error, GeneratorExit):
            call.finish("CANCELLED", "stream closed before it ended")
        else:
            call.finish(*status_of(context, error))


def _stepwise(call: ServerCall, responses: Iterator[Any]) -> Iterator[Any]:
    while True:
        token = call.enter()
        try:
            response = next(responses)
        except StopIteration:
            return
        finally:
            call.exit(token)
        yield response


def _sync_wrap(telemetry: ServerRpcTelemetry, kind: str, method: str, behavior: Any) -> Any:
    if kind.endswith("_stream"):
        return _sync_stream_response(telemetry, method, behavior)
    return _sync_unary_response(telemetry, method, behavior)


class MeshServerInterceptor(grpc.ServerInterceptor):
    """For ``grpc.server(..., interceptors=[MeshServerInterceptor()])``."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._handlers = _HandlerCache(ServerRpcTelemetry(tracer_provider, meter_provider))

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or not self._handlers.telemetry.active():
            return handler
        return self._handlers.get(handler, handler_call_details.method, _sync_wrap)


# -- asyncio ------------------------------------------------------------------------------------


def _aio_coroutine(
    telemetry: ServerRpcTelemetry, method: str, behavior: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    """Unary-response handlers, and streaming ones written with ``context.write()``."""

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = telemetry.call(method, context.invocation_metadata(), context.peer())
        token = call.enter()
        try:
            response = behavior(request, context)
            if inspect.isawaitable(response):
                response = await response
        except BaseException as error:
            call.finish(*status_of(context, error))
            raise
        finally:
            call.exit(token)
        call.finish(*status_of(context, None))
        return response

    return handle


def _aio_generator(
    telemetry: ServerRpcTelemetry, method: str, behavior: Callable[..., Any]
) -> Callable[..., AsyncIterator[Any]]:
    """Streaming-response handlers written as generators (async, or plain ones, which
    ``grpc.aio`` also accepts)."""

    async def handle(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        call = telemetry.call(method, context.invocation_metadata(), context.peer())
        error: BaseException | None = None
        try:
            token = call.enter()
            try:
                responses = behavior(request, context)
            finally:
                call.exit(token)
            if not hasattr(responses, "__aiter__"):
                for response in _stepwise(call, iter(responses)):
                    yield response
                return
            stream = responses.__aiter__()
            while True:
                token = call.enter()
                try:
                    response = await stream.__anext__()
                except StopAsyncIteration:
                    return
                finally:
                    call.exit(token)
                yield response
        except BaseException as raised:
            error = raised
            raise
        finally:
            if isinstance(error, GeneratorExit):
                call.finish("CANCELLED", "stream closed before it ended")
            else:
                call.finish(*status_of(context, error))

    return handle


def _aio_wrap(telemetry: ServerRpcTelemetry, kind: str, method: str, behavior: Any) -> Any:
    if kind.endswith("_stream") and (
        inspect.isasyncgenfunction(behavior) or inspect.isgeneratorfunction(behavior)
    ):
        return _aio_generator(telemetry, method, behavior)
    return _aio_coroutine(telemetry, method, behavior)


class AioMeshServerInterceptor(grpc.aio.ServerInterceptor):
    """For ``grpc.aio.server(interceptors=[AioMeshServerInterceptor()])``."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._handlers = _HandlerCache(ServerRpcTelemetry(tracer_provider, meter_provider))

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or not self._handlers.telemetry.active():
            return handler
        return self._handlers.get(handler, handler_call_details.method, _aio_wrap)
