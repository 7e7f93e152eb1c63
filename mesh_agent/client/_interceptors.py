"""Client interceptors: the breaker check before a call and the outcome after it, for all
four call types; sync ones for ``grpc.intercept_channel`` and asyncio ones (one object per
arity, since ``grpc.aio`` registers a multi-arity interceptor only for the first it matches).
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from ._classify import counts_for_breaker
from ._link import AgentLink, Decision

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


def _finish(link: AgentLink, service: str, started: float, probe: bool) -> Callable[[Any], None]:
    def done(call: Any) -> None:
        code = call.code()
        name = code.name if code is not None else "CANCELLED"
        if counts_for_breaker(name, call.details()):
            link.record(service, name, time.perf_counter() - started, probe=probe)

    return done


class MeshClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """For ``grpc.intercept_channel(channel, MeshClientInterceptor(link, "orders"))``: every
    call on the channel is a call to mesh service ``service``."""

    def __init__(self, link: AgentLink, service: str) -> None:
        self._link = link
        self._service = service
        link.watch(service)

    def _intercept(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        decision, open_until = self._link.decide(self._service)
        if decision is Decision.REJECT:
            return CircuitOpenError(self._service, open_until)
        started = time.perf_counter()
        call = continuation(details, request)
        call.add_done_callback(
            _finish(self._link, self._service, started, decision is Decision.PROBE)
        )
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


class _AioBase:
    def __init__(self, link: AgentLink, service: str) -> None:
        self._link = link
        self._service = service
        link.watch(service)

    def _decide(self) -> tuple[Decision, float]:
        return self._link.decide(self._service)

    def _on_done(self, started: float, probe: bool) -> Callable[[Any], None]:
        link, service = self._link, self._service

        def done(call: Any) -> None:
            # aio calls expose their status only through coroutines: read it in a task.
            async def read() -> None:
                code = await call.code()
                name = code.name
                if counts_for_breaker(name, await call.details()):
                    link.record(service, name, time.perf_counter() - started, probe=probe)

            asyncio.get_running_loop().create_task(read())

        return done


class AioUnaryUnaryInterceptor(_AioBase, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        decision, open_until = self._decide()
        if decision is Decision.REJECT:
            raise _aio_rejection(self._service, open_until)
        started = time.perf_counter()
        call = await continuation(client_call_details, request)
        try:
            await call
        except grpc.aio.AioRpcError as error:
            name = error.code().name
            if counts_for_breaker(name, error.details()):
                self._link.record(
                    self._service,
                    name,
                    time.perf_counter() - started,
                    probe=decision is Decision.PROBE,
                )
            raise
        self._link.record(
            self._service, "OK", time.perf_counter() - started, probe=decision is Decision.PROBE
        )
        return call


class _AioStreaming(_AioBase):
    """Calls with a response stream or a request stream finish after the interceptor returns:
    their outcome is read when they are done."""

    async def _intercept(self, continuation: Any, details: Any, request: Any) -> Any:
        decision, open_until = self._decide()
        if decision is Decision.REJECT:
            raise _aio_rejection(self._service, open_until)
        started = time.perf_counter()
        call = await continuation(details, request)
        call.add_done_callback(self._on_done(started, decision is Decision.PROBE))
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


def aio_interceptors(link: AgentLink, service: str) -> list[grpc.aio.ClientInterceptor]:
    """One interceptor per arity, for ``grpc.aio.insecure_channel(..., interceptors=...)``."""
    return [
        AioUnaryUnaryInterceptor(link, service),
        AioUnaryStreamInterceptor(link, service),
        AioStreamUnaryInterceptor(link, service),
        AioStreamStreamInterceptor(link, service),
    ]
