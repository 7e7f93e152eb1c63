"""The channel ``aio_mesh_channel()`` returns: a ``grpc.aio.Channel`` around grpcio's own,
whose multicallables put the service's :class:`~mesh_agent.client._gate.Gate` in front of each
call themselves, without grpc.aio's interceptor machinery (a task per call, and a proxy
around the call) that costs more than the gate (docs/benchmarks.md, section ``datapath``).

Once the agent has told the service's policy (every call but the first few), the gate decides
at once and the caller gets grpc.aio's own call object, its outcome recorded by the call's
done-callback. Two cases get a proxy instead, built the way grpc.aio builds its intercepted
calls (a future that gives the real call, everything forwarded to it through the public call
API), of the same ``grpc.aio`` call type:

* the first calls to a service, which wait for its policy timeout (bounded, see
  :meth:`AgentLink.call_timeout_async`) before the call exists;
* a call failed fast by an open circuit: the same ``AioRpcError`` as from the asyncio
  interceptors, raised where the call is awaited or iterated, its status in ``code()``,
  ``details()`` and ``trailing_metadata()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from mesh_agent.client._gate import Gate, Ticket
from mesh_agent.client._rejection import aio_rejection

# grpc.aio's own texts for a write to a call that is over (grpc/aio/_call.py).
_FINISHED = "RPC already finished."
_CANCELLED_DETAILS = "Locally cancelled by application!"

Request = Any
Response = Any
DoneCallback = Callable[[Any], None]


class _Pending:
    """A call whose grpc.aio call is not there yet: ``starting`` gives it (or raises the
    fast-fail error). Like grpc.aio's ``InterceptedCall``: what the caller does before the
    call exists waits for it, done-callbacks are passed on to it, and it is cancelled if this
    proxy is dropped unfinished."""

    def __init__(self, starting: asyncio.Future[Any]) -> None:
        self._starting = starting
        self._callbacks: list[DoneCallback] = []
        starting.add_done_callback(self._started)

    def __del__(self) -> None:
        # As grpc.aio's calls do: a call that nobody can await any more is cancelled.
        if hasattr(self, "_starting") and not self.done():
            with contextlib.suppress(RuntimeError):  # its loop is closed
                self.cancel()

    def _call(self) -> Any:
        """The grpc.aio call, or None while it is not there or if it never will be."""
        starting = self._starting
        if not starting.done() or starting.cancelled() or starting.exception() is not None:
            return None
        return starting.result()

    def _started(self, starting: asyncio.Future[Any]) -> None:
        # Looking at the outcome marks a fast-fail error as retrieved: asyncio logs no
        # "exception was never retrieved" for a failed call that nobody awaited.
        call = self._call()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._pass_on(call, callback)

    def _pass_on(self, call: Any, callback: DoneCallback) -> None:
        if call is None or call.done():
            callback(self)
        else:
            call.add_done_callback(lambda _: callback(self))

    def add_done_callback(self, callback: DoneCallback) -> None:
        if not self._starting.done():
            self._callbacks.append(callback)
        else:
            self._pass_on(self._call(), callback)

    def cancel(self) -> bool:
        if not self._starting.done():
            return self._starting.cancel()
        call = self._call()
        return call is not None and bool(call.cancel())

    def cancelled(self) -> bool:
        starting = self._starting
        if not starting.done():
            return False
        if starting.cancelled():
            return True
        error = starting.exception()
        if error is not None:
            return isinstance(error, grpc.aio.AioRpcError) and (
                error.code() is grpc.StatusCode.CANCELLED
            )
        return bool(starting.result().cancelled())

    def done(self) -> bool:
        call = self._call()
        return self._starting.done() if call is None else bool(call.done())

    def time_remaining(self) -> float | None:
        call = self._call()
        return None if call is None else call.time_remaining()

    async def _status(
        self,
        read: Callable[[Any], Awaitable[Any]],
        failed: Callable[[grpc.aio.AioRpcError], Any],
        cancelled: Any,
    ) -> Any:
        """What a status accessor says: ``read(call)``, or ``failed(error)`` for a call failed
        fast, or ``cancelled`` for one cancelled before it started. Like grpc.aio's own
        accessors, cancelling the caller that waits here does not cancel the call."""
        try:
            call = await asyncio.shield(self._starting)
        except grpc.aio.AioRpcError as error:
            return failed(error)
        except asyncio.CancelledError:
            if self._starting.cancelled():
                return cancelled
            raise
        return await read(call)

    async def initial_metadata(self) -> Any:
        return await self._status(
            lambda call: call.initial_metadata(), grpc.aio.AioRpcError.initial_metadata, None
        )

    async def trailing_metadata(self) -> Any:
        return await self._status(
            lambda call: call.trailing_metadata(), grpc.aio.AioRpcError.trailing_metadata, None
        )

    async def code(self) -> grpc.StatusCode:
        return await self._status(  # type: ignore[no-any-return]
            lambda call: call.code(), grpc.aio.AioRpcError.code, grpc.StatusCode.CANCELLED
        )

    async def details(self) -> str:
        return await self._status(  # type: ignore[no-any-return]
            lambda call: call.details(), grpc.aio.AioRpcError.details, _CANCELLED_DETAILS
        )

    async def debug_error_string(self) -> str | None:
        return await self._status(  # type: ignore[no-any-return]
            lambda call: call.debug_error_string(), grpc.aio.AioRpcError.debug_error_string, ""
        )

    async def wait_for_connection(self) -> None:
        call = await self._starting
        await call.wait_for_connection()


class _PendingResponse(_Pending):
    def __await__(self) -> Generator[Any, None, Response]:
        call = yield from self._starting.__await__()
        response = yield from call.__await__()
        return response


class _PendingResponses(_Pending):
    def __aiter__(self) -> AsyncIterator[Response]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[Response]:
        call = await self._starting
        async for response in call:
            yield response

    async def read(self) -> Any:
        call = await self._starting
        return await call.read()


class _PendingRequests(_Pending):
    async def write(self, request: Request) -> None:
        try:
            call = await self._starting
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            raise asyncio.InvalidStateError(_FINISHED) from None
        await call.write(request)

    async def done_writing(self) -> None:
        try:
            call = await self._starting
        except asyncio.CancelledError:
            raise asyncio.InvalidStateError(_FINISHED) from None
        await call.done_writing()


class _PendingUnaryUnary(_PendingResponse, grpc.aio.UnaryUnaryCall[Any, Any]):
    pass


class _PendingUnaryStream(_PendingResponses, grpc.aio.UnaryStreamCall[Any, Any]):
    pass


class _PendingStreamUnary(_PendingRequests, _PendingResponse, grpc.aio.StreamUnaryCall[Any, Any]):
    pass


class _PendingStreamStream(
    _PendingRequests, _PendingResponses, grpc.aio.StreamStreamCall[Any, Any]
):
    pass


class _MultiCallable:
    """What the four arities share: the gate, grpcio's multicallable for the method, and the
    proxy class of the arity."""

    __slots__ = ("_gate", "_inner", "_method")
    _pending: type[_Pending]

    def __init__(self, inner: Any, gate: Gate, method: str) -> None:
        self._inner = inner
        self._gate = gate
        self._method = method

    def _call(
        self,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> Any:
        ticket = self._gate.admit_now(self._method, timeout, metadata)
        if ticket is None or ticket.rejected:
            return self._not_now(
                ticket, request, timeout, metadata, credentials, wait_for_ready, compression
            )
        call = self._inner(
            request,
            timeout=ticket.timeout,
            metadata=ticket.metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        call.add_done_callback(ticket.aio_done)
        return call

    def _not_now(
        self,
        ticket: Ticket | None,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> _Pending:
        """The proxy of a call that does not start now: refused (``ticket.rejected``), or one
        of the first calls, which wait for the service's policy (no ticket yet)."""
        if ticket is None:
            starting = self._start_later(
                request, timeout, metadata, credentials, wait_for_ready, compression
            )
            return self._pending(asyncio.get_running_loop().create_task(starting))
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(aio_rejection(self._gate.service, ticket.open_until))
        return self._pending(failed)

    async def _start_later(
        self,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> Any:
        ticket = await self._gate.admit_async(self._method, timeout, metadata)
        if ticket.rejected:
            raise aio_rejection(self._gate.service, ticket.open_until)
        call = self._inner(
            request,
            timeout=ticket.timeout,
            metadata=ticket.metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        call.add_done_callback(ticket.aio_done)
        return call


class _UnaryUnary(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    __slots__ = ()
    _pending = _PendingUnaryUnary

    def __call__(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        # _call, inlined for the most common kind of call (a call frame less).
        ticket = self._gate.admit_now(self._method, timeout, metadata)
        if ticket is None or ticket.rejected:
            return self._not_now(
                ticket, request, timeout, metadata, credentials, wait_for_ready, compression
            )
        call = self._inner(
            request,
            timeout=ticket.timeout,
            metadata=ticket.metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        call.add_done_callback(ticket.aio_done)
        return call


class _UnaryStream(_MultiCallable, grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    __slots__ = ()
    _pending = _PendingUnaryStream

    def __call__(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._call(request, timeout, metadata, credentials, wait_for_ready, compression)


class _StreamUnary(_MultiCallable, grpc.aio.StreamUnaryMultiCallable[Any, Any]):
    __slots__ = ()
    _pending = _PendingStreamUnary

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._call(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )


class _StreamStream(_MultiCallable, grpc.aio.StreamStreamMultiCallable[Any, Any]):
    __slots__ = ()
    _pending = _PendingStreamStream

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._call(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )


class AioMeshChannel(grpc.aio.Channel):
    """``channel``, with every call on it a call to the gate's mesh service. Connectivity,
    ``close`` and the async context manager are the wrapped channel's; closing this one
    closes it."""

    def __init__(self, channel: grpc.aio.Channel, gate: Gate) -> None:
        # Any: grpc.aio's multicallable factories take ``_registered_method`` (which
        # generated stubs pass), and the type stubs do not know it.
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

    async def __aenter__(self) -> AioMeshChannel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self._channel.close(None)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)  # type: ignore[no-any-return]

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()
