"""Who is calling, and what they may do.

Identities are the URI SANs of mTLS client certificates, SPIFFE-style:
``spiffe://<trust-domain>/node/<id>`` for a node's agent, ``spiffe://<trust-domain>/operator/
<name>`` for an operator (``meshctl certs`` issues both). The policy of a control server:

- With mTLS on, every caller has a certificate from the mesh's CA (the handshake refuses any
  other). An ADS stream or a NodeService call must come from the node it names; a node may
  register endpoints only on its own addresses (the certificate's IP SANs, or the address it
  connects from when the certificate has none).
- Writes through the admin API need an operator: a certificate with an operator SAN, or the
  bearer token of ``--operator-token-file`` (for local development). Reads are open to any
  caller that got through the handshake.
- With neither mTLS nor a token file the server is open (a development set-up), and says so
  in its log at start.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog

from control.limits import peer_host

log = structlog.get_logger(__name__)

NODE = "node"
OPERATOR = "operator"
SERVER = "server"
TOKEN_KEY = "authorization"


@dataclass(frozen=True)
class Identity:
    """A caller as its certificate names it."""

    trust_domain: str
    kind: str
    name: str
    ips: frozenset[str] = frozenset()

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/{self.kind}/{self.name}"

    def __str__(self) -> str:
        return self.uri


def parse_uri(uri: str) -> tuple[str, str, str] | None:
    """``spiffe://td/kind/name`` → (td, kind, name); None for anything else."""
    if not uri.startswith("spiffe://"):
        return None
    trust_domain, _, path = uri[len("spiffe://") :].partition("/")
    kind, _, name = path.partition("/")
    if not trust_domain or not kind or not name or "/" in name:
        return None
    return trust_domain, kind, name


def _strings(values: Iterable[Any]) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def identity_of(context: Any) -> Identity | None:
    """The caller's identity from its TLS peer certificate, or None (no TLS, or no SPIFFE URI
    SAN)."""
    auth = context.auth_context() or {}
    for uri in _strings(auth.get("peer_uri", ())):
        parsed = parse_uri(uri)
        if parsed is not None:
            ips = frozenset(_normal_ip(ip) for ip in _strings(auth.get("peer_ip", ())))
            return Identity(*parsed, ips=ips)
    return None


def _normal_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return text


def peer_ip(context: Any) -> str:
    """The IP address a caller connects from (``ipv4:1.2.3.4:5`` / ``ipv6:[::1]:5``); empty
    for a caller on a unix socket."""
    peer = str(context.peer() or "")
    return _normal_ip(peer_host(peer)) if peer.startswith(("ipv4:", "ipv6:")) else ""


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

    async def require_node(self, context: Any, node_id: str, what: str) -> None:
        """Aborts with PERMISSION_DENIED unless the caller is node ``node_id``."""
        refusal = self.node_refusal(context, node_id, what)
        if refusal is not None:
            await _deny(context, refusal)

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
        return sorted({h for h in (_normal_ip(h) for h in hosts) if h not in owned})

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

    async def require_operator(self, context: Any, what: str) -> str:
        operator = self.operator(context)
        if operator is None:
            identity = self.identity(context)
            who = f"the caller's certificate names {identity}" if identity else "no operator"
            log.warning("write refused", what=what, peer=context.peer(), caller=str(identity))
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{what} needs an operator (a certificate with an operator SAN"
                + (", or the operator token" if self.token_file is not None else "")
                + f"); {who}",
            )
        assert operator is not None
        return operator


async def _deny(context: Any, message: str) -> None:
    log.warning("refused", reason=message, peer=context.peer())
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
