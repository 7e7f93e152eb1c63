"""Who may use the agent's TCP listener.

The agent serves its local API on the unix socket, guarded by the socket's file mode, and
optionally on ``--listen HOST:PORT`` with mTLS. The handshake there admits any certificate
of the mesh CA, and grpcio cannot choose among identities at the handshake, so
:class:`ListenerAccess`, a server interceptor, checks every call (streams included) before
its handler runs: a caller on the TCP listener must present the node's own identity
(``spiffe://TD/node/ID``, the one in the agent's certificate) or one of those given with
``--listen-allow`` (``listen_allow`` in ``--config``), as full SPIFFE IDs. Anyone else gets
PERMISSION_DENIED naming its identity and the setting, and the agent logs a warning.
Callers on the unix socket are not checked.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio
import structlog
from grpc_health.v1 import health_pb2

from mesh_core.errors import ConfigError
from mesh_core.identity import NODE, parse_uri
from mesh_core.rpc_server import handler_kind, rebuild_handler
from mesh_core.tls import TlsFiles, certificate_uris

log = structlog.get_logger(__name__)

SETTING = "--listen-allow (listen_allow in --config)"
# grpc.health.v1 stays open to any caller that passed the handshake (a certificate of the
# mesh CA): monitoring probes the agent's liveness with whatever certificate it has, and
# the answer (SERVING or not, per component) tells nothing about the node's config, its
# endpoints or its breakers. Everything else needs an admitted identity.
OPEN_SERVICES = (f"/{health_pb2.DESCRIPTOR.services_by_name['Health'].full_name}/",)


def node_identity(files: TlsFiles, node_id: str) -> str:
    """The SPIFFE ID of node ``node_id`` in the agent's certificate."""
    for uri in certificate_uris(files):
        parsed = parse_uri(uri)
        if parsed is not None and parsed[1:] == (NODE, node_id):
            return uri
    raise ConfigError(f"the certificate {files.cert} does not identify node {node_id!r}")


def _spiffe_ids(context: Any) -> list[str]:
    auth = context.auth_context() or {}
    uris = (
        v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        for v in auth.get("peer_uri", ())
    )
    return [uri for uri in uris if parse_uri(uri) is not None]


class ListenerAccess(grpc.aio.ServerInterceptor):
    """Admits, on the TCP listener, only the node's own identity (``own``) and ``allowed``."""

    def __init__(self, own: str, allowed: Iterable[str] = ()) -> None:
        self.own = own
        self.admitted = frozenset((own, *allowed))
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def refusal(self, context: Any) -> str | None:
        """Why this call may not go on (None: it may)."""
        if str(context.peer() or "").startswith("unix:"):
            return None  # the unix socket: its file mode decides who gets here
        identities = _spiffe_ids(context)
        if self.admitted.intersection(identities):
            return None
        caller = ", ".join(identities) if identities else "a certificate with no SPIFFE ID"
        return (
            f"{caller} may not use this agent's TCP listener: it admits the node's own "
            f"identity ({self.own}) and the identities given with {SETTING}"
        )

    async def check(self, context: Any, method: str) -> None:
        """Aborts the call with PERMISSION_DENIED, and logs it, unless it is admitted."""
        refusal = self.refusal(context)
        if refusal is not None:
            log.warning(
                "listener call refused",
                identity=", ".join(_spiffe_ids(context)) or None,
                peer=context.peer(),
                method=method,
            )
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if isinstance(method, bytes):
            method = method.decode()
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        kind = handler_kind(handler)
        wrapped = rebuild_handler(
            handler, kind, self._guarded(method, kind, getattr(handler, kind))
        )
        self._handlers[method] = wrapped  # one per method of the agent's own services
        return wrapped

    def _guarded(self, method: str, kind: str, behavior: Any) -> Any:
        if kind.endswith("_stream") and (
            inspect.isasyncgenfunction(behavior) or inspect.isgeneratorfunction(behavior)
        ):

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                await self.check(context, method)
                responses = behavior(request, context)
                if hasattr(responses, "__aiter__"):
                    async for response in responses:
                        yield response
                else:
                    for response in responses:
                        yield response

            return stream

        async def call(request: Any, context: Any) -> Any:
            await self.check(context, method)
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result

        return call


__all__ = ["ListenerAccess", "node_identity"]
