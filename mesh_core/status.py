"""Where the error tree meets gRPC: one table from :mod:`mesh_core.errors` classes to status
codes, used by every servicer of the control server and the agent, and :func:`abort`, which
logs a refusal and ends the call with its status.

A servicer raises errors of the tree (or lets them through from the store, the limits, the
access policy); :func:`grpc_errors` around its methods turns them into the call's status in
this one place. Trailing metadata says more where a client can use it: ``retry-after-ms``
and a ``google.rpc.RetryInfo`` for a rate limit, ``mesh-store-unavailable`` when the server
answered and its store did not.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn, TypeVar

import grpc
import structlog

from mesh_core.errors import (
    ConfigError,
    ConflictError,
    LimitExceeded,
    MeshError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    ProtocolError,
    RateLimited,
    StoreUnavailableError,
    TooManyStreams,
    UnavailableError,
)

log = structlog.get_logger(__name__)

STATUS_CODES: Final[dict[type[MeshError], grpc.StatusCode]] = {
    ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    ProtocolError: grpc.StatusCode.INVALID_ARGUMENT,
    LimitExceeded: grpc.StatusCode.INVALID_ARGUMENT,  # a request larger than accepted
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TooManyStreams: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    ConflictError: grpc.StatusCode.ABORTED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    PreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
}
"""Status code per error class; a class not listed takes its nearest listed base's."""

RETRY_AFTER_KEY: Final = "retry-after-ms"
STORE_ERROR_KEY: Final = "mesh-store-unavailable"
_STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"

Metadata = tuple[tuple[str, str | bytes], ...]


def status_code(error: MeshError) -> grpc.StatusCode:
    """The status a call that failed with ``error`` ends with (INTERNAL for none listed)."""
    for kind in type(error).__mro__:
        code = STATUS_CODES.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def trailing_metadata(error: MeshError) -> Metadata:
    """What a client can use besides the status: when to retry a rate-limited call, and
    whether it was the store that could not be reached."""
    if isinstance(error, RateLimited):
        from google.rpc import error_details_pb2, status_pb2

        ms = retry_after_ms(error.retry_after)
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(ms)
        status = status_pb2.Status(code=status_code(error).value[0], message=str(error))
        status.details.add().Pack(retry)
        return ((RETRY_AFTER_KEY, str(ms)), (_STATUS_DETAILS_KEY, status.SerializeToString()))
    if isinstance(error, StoreUnavailableError):
        return ((STORE_ERROR_KEY, "1"),)
    return ()


def retry_after_ms(seconds: float) -> int:
    """Milliseconds to wait, as the trailing metadata and messages say it (at least 1)."""
    return max(1, math.ceil(seconds * 1000))


async def abort(context: Any, error: MeshError, event: str = "", **fields: object) -> NoReturn:
    """Logs ``error`` (a warning: ``limit exceeded`` for a limit, else ``event`` or ``call
    refused``, with the caller's peer and ``fields``) and ends the call with its status and
    trailing metadata. Always raises."""
    code = status_code(error)
    if isinstance(error, LimitExceeded):
        fields = {"limit": error.limit, **error.who, **fields}
        if isinstance(error, RateLimited):
            fields = {"retry_after_ms": retry_after_ms(error.retry_after), **fields}
    log.warning(
        "limit exceeded" if isinstance(error, LimitExceeded) else (event or "call refused"),
        code=code.name,
        error=str(error),
        peer=context.peer(),
        **fields,
    )
    await context.abort(code, str(error), trailing_metadata=trailing_metadata(error))
    raise AssertionError("context.abort returned")  # it raises; this line keeps types honest


_Self = TypeVar("_Self")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def grpc_errors(
    method: Callable[[_Self, _Request, Any], Awaitable[_Response]],
) -> Callable[[_Self, _Request, Any], Awaitable[_Response]]:
    """For an async unary servicer method: a :class:`MeshError` it raises ends the call with
    the status :func:`status_code` gives (logged by :func:`abort`)."""

    @functools.wraps(method)
    async def wrapper(self: _Self, request: _Request, context: Any) -> _Response:
        try:
            return await method(self, request, context)
        except MeshError as error:
            await abort(context, error, method=method.__name__)

    return wrapper
