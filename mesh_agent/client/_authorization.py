"""The service's authorization on an asyncio server (``aio_mesh_server``): grpcio has no
xDS-enabled ``grpc.aio`` server, so the RBAC filters a sync server gets on its Listener are
enforced here instead, from the same rules compiled the same way
(:mod:`mesh_core.authorization`), before the handler runs. The rules come from the node's
agent with the service's call policy (the link's watch stream), so a change applied with
``meshctl apply`` reaches a running server within a push.

The caller is who its TLS certificate says (the SPIFFE id in its URI SAN, from the call's
auth context); a plaintext caller has none. A denied call ends with PERMISSION_DENIED and
grpc's own words for it, is logged with the caller, the method and the rule that denied it,
and counted in ``mesh.server.denied_calls``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc
import grpc.aio
import structlog
from opentelemetry import metrics

from mesh_agent.client._link import AgentLink
from mesh_core.authorization import OPEN, Authorization, compile_rules
from mesh_core.rpc_server import handler_kind, rebuild_handler

log = structlog.get_logger(__name__)
DENIED_DETAILS: Final = "Unauthorized RPC request rejected."
"""What grpc's RBAC filter answers a denied call with; the asyncio server says the same."""
_SPIFFE_KEYS = ("peer_spiffe_id", "x509_subject_alternative_name")


def peer_identity(context: Any) -> str | None:
    """The caller's SPIFFE id; "" for a certificate without one; None without a certificate
    (plaintext, or TLS without a client certificate)."""
    auth = context.auth_context()
    if not auth.get("x509_pem_cert") and not auth.get("x509_subject_alternative_name"):
        return None
    for key in _SPIFFE_KEYS:
        for value in auth.get(key, ()):
            text = value.decode() if isinstance(value, bytes) else str(value)
            if text.startswith("spiffe://"):
                return text
    return ""


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):
    """Enforces ``service``'s rules as ``link`` last heard them; ``trust_domain`` is the
    server's own (the callers' ids are in it; None: any)."""

    def __init__(self, link: AgentLink, service: str, trust_domain: str | None) -> None:
        self.link = link
        self.service = service
        self.trust_domain = trust_domain
        self._rules: tuple[Any, ...] = ()
        self._compiled: Authorization = OPEN
        self._denied = metrics.get_meter("mesh_agent.client").create_counter(
            "mesh.server.denied_calls",
            unit="{call}",
            description="Calls refused by the service's authorization rules",
        )

    def authorization(self) -> Authorization:
        """The rules compiled, again only when the agent told new ones."""
        rules = self.link.authorization.get(self.service, ())
        if rules is not self._rules:
            self._compiled = compile_rules(rules, self.trust_domain)
            self._rules = rules
        return self._compiled

    def check(self, method: str, context: Any) -> str | None:
        """None when the call may go on; the deciding rule when it is denied."""
        authorization = self.authorization()
        if authorization.open:
            return None
        peer = peer_identity(context)
        allowed, rule = authorization.decide(peer, method, context.invocation_metadata() or ())
        if allowed:
            return None
        caller = peer if peer else ("a certificate without an identity" if peer == "" else "")
        log.warning(
            "call denied",
            service=self.service,
            method=method,
            caller=caller or "plaintext",
            rule=rule,
        )
        self._denied.add(1, {"mesh.service": self.service, "rpc.method": method, "rule": rule})
        return rule

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or self.authorization().open:
            return handler
        method = handler_call_details.method
        method = method.decode() if isinstance(method, bytes) else method
        kind = handler_kind(handler)
        return rebuild_handler(handler, kind, self._guard(kind, method, getattr(handler, kind)))

    def _guard(self, kind: str, method: str, behavior: Any) -> Any:
        check = self.check
        if kind.endswith("_stream"):

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                if check(method, context) is not None:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, DENIED_DETAILS)
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        yield response
                elif inspect.isawaitable(result):
                    await result

            return streaming

        async def unary(request: Any, context: Any) -> Any:
            if check(method, context) is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, DENIED_DETAILS)
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result

        return unary


__all__ = ["DENIED_DETAILS", "AuthorizationInterceptor", "peer_identity"]
