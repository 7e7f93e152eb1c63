"""Identities in the mesh: SPIFFE IDs in the URI SANs of mTLS certificates,
``spiffe://<trust-domain>/<kind>/<name>``: ``node/<id>`` for a node's agent,
``operator/<name>`` for an operator, ``server/<dns name>`` for a control server and
``service/<name>`` for a service (its endpoints and the processes that call as it). Read here
from a caller's TLS peer (the grpc auth context) and from certificate files.

Who may hold a service's identity is the service's ``security.hosts``: node ids or
fnmatch-style patterns (``*`` any run of characters, ``?`` one, ``[0-9]`` one of a set,
``[!0-9]`` one not in it), each matched against the whole node id, case-sensitive
(:func:`host_matching`). The control server checks it before it signs; the same function
serves anyone who wants to know in advance. No cryptography import at module level: the
client library imports this module.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
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
SERVICE = "service"

_NODE_CHARS = "A-Za-z0-9._-"
_NODE_RUN = re.compile(f"[{_NODE_CHARS}]+")
MAX_HOST_PATTERN = 256


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


def service_uri(trust_domain: str, service: str) -> str:
    """The identity of ``service``: ``spiffe://<trust domain>/service/<name>``."""
    return f"spiffe://{trust_domain}/{SERVICE}/{service}"


def service_of_uri(uri: str) -> tuple[str, str] | None:
    """``spiffe://td/service/name`` → (td, name); None for any other URI."""
    parsed = parse_uri(uri)
    if parsed is None or parsed[1] != SERVICE:
        return None
    return parsed[0], parsed[2]


def host_pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be an entry of ``security.hosts`` (None: it can). Node ids are
    letters, digits, ``.``, ``_`` and ``-``; a pattern adds ``*``, ``?`` and closed, non-empty
    ``[...]`` sets of those characters (``[!...]`` negated, ``a-z`` ranges). Anything else
    could never match a node id, so it is refused rather than left to match nothing."""
    if not pattern:
        return "must not be empty"
    if len(pattern) > MAX_HOST_PATTERN:
        return f"at most {MAX_HOST_PATTERN} characters, got {len(pattern)}"
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                return f"{pattern!r}: '[' at {i} is never closed with ']'"
            body = pattern[i + 1 : end].removeprefix("!")
            if not _NODE_RUN.fullmatch(body):
                return (
                    f"{pattern!r}: the set {pattern[i : end + 1]!r} must hold node id "
                    "characters or ranges (like [0-9] or [!a-c])"
                )
            i = end + 1
        elif char == "]":
            return f"{pattern!r}: ']' at {i} closes no '['"
        elif char in "*?" or _NODE_RUN.fullmatch(char):
            i += 1
        else:
            return (
                f"{pattern!r}: {char!r} is not in any node id (letters, digits, '.', '_', '-') "
                "nor a pattern character ('*', '?', '[...]')"
            )
    return None


def host_matching(hosts: Iterable[str], node_id: str) -> str | None:
    """The first entry of ``hosts`` (a service's ``security.hosts``) that matches
    ``node_id``, or None: node ``node_id`` may hold the service's identity iff this is not
    None. Matching is fnmatch's, case-sensitive, against the whole id."""
    for pattern in hosts:
        if fnmatch.fnmatchcase(node_id, pattern):
            return pattern
    return None
