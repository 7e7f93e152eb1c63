"""The channel ``mesh_channel()`` returns: a ``grpc.Channel`` around grpcio's own, whose
multicallables put the service's :class:`~mesh_agent.client._gate.Gate` in front of each call
themselves.

Why not ``grpc.intercept_channel``: its machinery (call details tuples, continuations, an
outcome object per call) costs more per call than the breaker check, the policy timeout and
the outcome report together (docs/benchmarks.md, section ``datapath``). Here a blocking call
is grpcio's own blocking call inside a ``try``; a future or a streaming call is grpcio's own
rendezvous, with the outcome recorded by its done-callback. Callers get grpcio's objects
(``grpc.Call`` and ``grpc.Future``, ``grpc.RpcError`` when a call fails), and, when the
service's circuit is open, the same :class:`CircuitOpenError` as from
:class:`~mesh_agent.client._interceptors.MeshClientInterceptor`: raised by a blocking call,
returned by ``future()`` and by streaming calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import grpc

from mesh_agent.client._gate import Gate
from mesh_agent.client._rejection import CircuitOpenError

Request = Any
Response = Any


class _MultiCallable:
    """What the four arities share: a gate, and grpcio's multicallable for the method."""

    __slots__ = ("_gate", "_inner", "_method")

    def __init__(self, inner: Any, gate: Gate, method: str) -> None:
        self._inner = inner
        self._gate = gate
        self._method = method

    def _blocking(
        self,
        invoke: Callable[..., Any],
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> Any:
        """``invoke`` (grpcio's ``__call__`` or ``with_call``) through the gate."""
        ticket = self._gate.admit(self._method, timeout, metadata)
        if ticket.rejected:
            raise CircuitOpenError(self._gate.service, ticket.open_until)
        try:
            result = invoke(
                request,
                timeout=ticket.timeout,
                metadata=ticket.metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
        except grpc.RpcError as error:
            ticket.done(error)
            raise
        ticket.ok()
        return result

    def _started(
        self,
        invoke: Callable[..., Any],
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> Any:
        """``invoke`` (grpcio's ``future`` or a streaming ``__call__``) through the gate: the
        call, its outcome recorded when it is done; or the fast-fail error as a failed call."""
        ticket = self._gate.admit(self._method, timeout, metadata)
        if ticket.rejected:
            return CircuitOpenError(self._gate.service, ticket.open_until)
        call = invoke(
            request,
            timeout=ticket.timeout,
            metadata=ticket.metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        call.add_done_callback(ticket.done)
        return call


class _UnaryUnary(_MultiCallable, grpc.UnaryUnaryMultiCallable):  # type: ignore[type-arg]
    __slots__ = ()

    def __call__(
        self,
        request: Request,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Response:
        inner = self._inner
        return self._blocking(
            inner, request, timeout, metadata, credentials, wait_for_ready, compression
        )

    def with_call(
        self,
        request: Request,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> tuple[Response, grpc.Call]:
        invoke = self._inner.with_call
        return self._blocking(  # type: ignore[no-any-return]
            invoke, request, timeout, metadata, credentials, wait_for_ready, compression
        )

    def future(
        self,
        request: Request,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        invoke = self._inner.future
        return self._started(
            invoke, request, timeout, metadata, credentials, wait_for_ready, compression
        )


class _UnaryStream(_MultiCallable, grpc.UnaryStreamMultiCallable):  # type: ignore[type-arg]
    __slots__ = ()

    def __call__(
        self,
        request: Request,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        inner = self._inner
        return self._started(
            inner, request, timeout, metadata, credentials, wait_for_ready, compression
        )


class _StreamUnary(_MultiCallable, grpc.StreamUnaryMultiCallable):  # type: ignore[type-arg]
    __slots__ = ()

    def __call__(
        self,
        request_iterator: Iterator[Request],
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Response:
        inner = self._inner
        return self._blocking(
            inner, request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )

    def with_call(
        self,
        request_iterator: Iterator[Request],
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> tuple[Response, grpc.Call]:
        invoke = self._inner.with_call
        return self._blocking(  # type: ignore[no-any-return]
            invoke, request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )

    def future(
        self,
        request_iterator: Iterator[Request],
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        invoke = self._inner.future
        return self._started(
            invoke, request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )


class _StreamStream(_MultiCallable, grpc.StreamStreamMultiCallable):  # type: ignore[type-arg]
    __slots__ = ()

    def __call__(
        self,
        request_iterator: Iterator[Request],
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        inner = self._inner
        return self._started(
            inner, request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )


class MeshChannel(grpc.Channel):
    """``channel``, with every call on it a call to the gate's mesh service. Connectivity
    (``subscribe``/``unsubscribe``), ``close`` and the context manager are the wrapped
    channel's; closing this one closes it."""

    def __init__(self, channel: grpc.Channel, gate: Gate) -> None:
        # Any: grpcio's multicallable factories take ``_registered_method`` (which generated
        # stubs pass), and the type stubs do not know it.
        self._channel: Any = channel
        self._gate = gate

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> _UnaryUnary:
        inner = self._channel.unary_unary(
            method, request_serializer, response_deserializer, _registered_method
        )
        return _UnaryUnary(inner, self._gate, method)

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> _UnaryStream:
        inner = self._channel.unary_stream(
            method, request_serializer, response_deserializer, _registered_method
        )
        return _UnaryStream(inner, self._gate, method)

    def stream_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> _StreamUnary:
        inner = self._channel.stream_unary(
            method, request_serializer, response_deserializer, _registered_method
        )
        return _StreamUnary(inner, self._gate, method)

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> _StreamStream:
        inner = self._channel.stream_stream(
            method, request_serializer, response_deserializer, _registered_method
        )
        return _StreamStream(inner, self._gate, method)

    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> MeshChannel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._channel.close()
