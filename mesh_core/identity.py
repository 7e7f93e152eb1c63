"""Identities in the mesh: SPIFFE IDs in the URI SANs of mTLS certificates,
``spiffe://<trust-domain>/<kind>/<name>``: ``node/<id>`` for a node's agent,
``operator/<name>`` for an operator, ``server/<dns name>`` for a control server. Read here
from a caller's TLS peer (the grpc auth context) and from certificate files."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mesh_core.limits import peer_host

if TYPE_CHECKING:
    from cryptography import x509

TOKEN_KEY = "authorization"
"""The metadata key of an operator's bearer token (``Bearer TOKEN``)."""
NODE = "node"
OPERATOR = "operator"
SERVER = "server"


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
            ips = frozenset(normal_ip(ip) for ip in _strings(auth.get("peer_ip", ())))
            return Identity(*parsed, ips=ips)
    return None


def normal_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return text


def peer_ip(context: Any) -> str:
    """The IP address a caller connects from (``ipv4:1.2.3.4:5`` / ``ipv6:[::1]:5``); empty
    for a caller on a unix socket."""
    peer = str(context.peer() or "")
    return normal_ip(peer_host(peer)) if peer.startswith(("ipv4:", "ipv6:")) else ""


def uri_sans(cert: x509.Certificate) -> list[str]:
    """The certificate's URI SANs."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def trust_domain_of(cert: x509.Certificate) -> str | None:
    """The trust domain named by the certificate's first ``spiffe://`` URI SAN."""
    for uri in uri_sans(cert):
        if uri.startswith("spiffe://"):
            return uri.removeprefix("spiffe://").split("/", 1)[0]
    return None
