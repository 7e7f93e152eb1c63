"""What a call failed fast by an open circuit looks like to the caller: ``UNAVAILABLE``, details
``circuit for service 'orders' is open until …`` and trailing metadata ``mesh-circuit: open``;
a :class:`CircuitOpenError` for grpc's sync API, an ``AioRpcError`` for ``grpc.aio``. The
channels and the interceptors build them here, so both fail a call the same way."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

OPEN_CIRCUIT_KEY = "mesh-circuit"


def rejection_details(service: str, open_until: float) -> str:
    until = datetime.datetime.fromtimestamp(open_until, datetime.UTC).isoformat(
        timespec="milliseconds"
    )
    return f"circuit for service {service!r} is open until {until}"


def rejection_metadata(service: str, open_until: float) -> tuple[tuple[str, str], ...]:
    return (
        (OPEN_CIRCUIT_KEY, "open"),
        ("mesh-service", service),
        ("mesh-open-until-ms", str(int(open_until * 1000))),
    )


class CircuitOpenError(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[type-arg]
    """A call failed fast because the service's circuit is open: UNAVAILABLE, never sent.

    Raised by a blocking call; returned by ``future()`` and by a streaming call (it is a
    finished ``grpc.Future`` and ``grpc.Call``, and an iterator that raises it), as grpcio's
    own interceptor machinery returns a failed call."""

    def __init__(self, service: str, open_until: float) -> None:
        super().__init__()
        self.service = service
        self.open_until = open_until
        self._details = rejection_details(service, open_until)
        self._trailing = rejection_metadata(service, open_until)

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


def aio_rejection(service: str, open_until: float) -> grpc.aio.AioRpcError:
    """The ``grpc.aio`` error of a call failed fast."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*rejection_metadata(service, open_until)),
        rejection_details(service, open_until),
    )
