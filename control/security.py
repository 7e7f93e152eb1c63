"""Who may do what on a control server, by the caller's identity (:mod:`mesh_core.identity`:
``spiffe://<trust-domain>/node/<id>`` for a node's agent, ``.../operator/<name>`` for an
operator; ``meshctl certs`` issues both). The policy:

- With mTLS on, every caller has a certificate from the mesh's CA (the handshake refuses any
  other). An ADS stream or a NodeService call must come from the node it names; a node may
  register endpoints only on its own addresses (the certificate's IP SANs, or the address it
  connects from when the certificate has none).
- Writes through the admin API need an operator: a certificate with an operator SAN, or the
  bearer token of ``--operator-token-file`` (for local development). Reads are open to any
  caller that got through the handshake.
- With neither mTLS nor a token file the server is open (a development set-up), and says so
  in its log at start.

A refusal raises :class:`~mesh_core.errors.PermissionDeniedError` naming the caller; the
servicers' boundary (:mod:`mesh_core.status`) makes it PERMISSION_DENIED and logs it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from mesh_core.errors import PermissionDeniedError
from mesh_core.identity import (
    NODE,
    OPERATOR,
    TOKEN_KEY,
    Identity,
    identity_of,
    normal_ip,
    peer_ip,
)
from mesh_xds.callbacks import NO_CALLBACKS, SessionCallbacks
from mesh_xds.session import Session

log = structlog.get_logger(__name__)


@dataclass
class Access:
    """A control server's access policy (see the module's docstring)."""

    mtls: bool = False
    trust_domain: str | None = None
    token_file: Path | None = None
    _token: bytes | None = field(default=None, init=False, repr=False)
    _token_stamp: tuple[int, int] | None = field(default=None, init=False, repr=False)

    @property
    def open(self) -> bool:
        return not self.mtls and self.token_file is None

    def describe(self) -> str:
        if self.open:
            return "open: no mTLS and no operator token; anyone can change the config"
        parts = []
        if self.mtls:
            parts.append(f"mTLS, trust domain {self.trust_domain or 'any'}")
        if self.token_file is not None:
            parts.append(f"operator token from {self.token_file}")
        return ", ".join(parts)

    # -- identities -----------------------------------------------------------------------------

    def identity(self, context: Any) -> Identity | None:
        identity = identity_of(context) if self.mtls else None
        if (
            identity is not None
            and self.trust_domain
            and identity.trust_domain != self.trust_domain
        ):
            return None
        return identity

    def node_refusal(self, context: Any, node_id: str, what: str) -> str | None:
        """Why the caller may not act as node ``node_id`` (None: it may)."""
        if not self.mtls:
            return None
        identity = self.identity(context)
        if identity is None or identity.kind != NODE:
            named = f"certificate names {identity}" if identity else "certificate names no node"
            return f"{what} needs a node certificate; the {named}"
        if identity.name != node_id:
            return (
                f"{what} for node {node_id!r} refused: the certificate identifies node "
                f"{identity.name!r}"
            )
        return None

    def require_node(self, context: Any, node_id: str, what: str) -> None:
        """Raises PermissionDeniedError unless the caller is node ``node_id``."""
        refusal = self.node_refusal(context, node_id, what)
        if refusal is not None:
            raise PermissionDeniedError(refusal)

    def stream_callbacks(self, context: Any) -> SessionCallbacks:
        """The hooks of one ADS stream: with mTLS, its node must be the caller's."""
        return _StreamAccess(self, context) if self.mtls else NO_CALLBACKS

    def foreign_hosts(self, context: Any, hosts: Iterable[str]) -> list[str]:
        """Of ``hosts``, those the calling node does not own: not among its certificate's IP
        SANs (or, without any, not the address it connects from)."""
        if not self.mtls:
            return []
        identity = self.identity(context)
        owned = set(identity.ips) if identity is not None and identity.ips else set()
        if not owned:
            host = peer_ip(context)
            owned = {host} if host else set()
        return sorted({h for h in (normal_ip(h) for h in hosts) if h not in owned})

    # -- operators ------------------------------------------------------------------------------

    def _current_token(self) -> bytes | None:
        if self.token_file is None:
            return None
        try:
            stat = self.token_file.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._token_stamp:
                self._token = self.token_file.read_bytes().strip() or None
                self._token_stamp = stamp
        except OSError as error:
            log.error(
                "cannot read the operator token file", path=str(self.token_file), error=str(error)
            )
            return None
        return self._token

    def operator_token(self) -> bytes | None:
        """The operator token as the token file holds it now (None: no token, or the file
        cannot be read, which is logged); read again when the file changes."""
        return self._current_token()

    def operator(self, context: Any) -> str | None:
        """The operator making this call, or None."""
        if self.open:
            return "anyone"
        identity = self.identity(context)
        if identity is not None and identity.kind == OPERATOR:
            return str(identity)
        token = self._current_token()
        if token is not None:
            for key, value in context.invocation_metadata() or ():
                if key != TOKEN_KEY:
                    continue
                text = value.encode() if isinstance(value, str) else bytes(value)
                scheme, _, given = text.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token):
                    return "token"
        return None

    def require_operator(self, context: Any, what: str) -> str:
        """The operator making this call; raises PermissionDeniedError when it is none."""
        operator = self.operator(context)
        if operator is None:
            identity = self.identity(context)
            who = f"the caller's certificate names {identity}" if identity else "no operator"
            raise PermissionDeniedError(
                f"{what} needs an operator (a certificate with an operator SAN"
                + (", or the operator token" if self.token_file is not None else "")
                + f"); {who}"
            )
        return operator


class _StreamAccess(SessionCallbacks):
    """Refuses an ADS stream whose node is not the caller's own (PERMISSION_DENIED)."""

    def __init__(self, access: Access, context: Any) -> None:
        self._access = access
        self._context = context

    def on_node(self, session: Session) -> None:
        refusal = self._access.node_refusal(self._context, session.node_id, "ADS stream")
        if refusal is not None:
            raise PermissionDeniedError(refusal)
