"""A service's authorization rules (``security.authorization``), compiled once for the two
places they are enforced: the RBAC filters of a sync server's Listener (gRFC A41,
:func:`mesh_xds.transport.rbac_filters`, built by the agent) and the asyncio server's
interceptor (:mod:`mesh_agent.client._authorization`), so that both give the same answers.

Semantics, as Envoy's and gRPC's RBAC with a DENY filter before an ALLOW filter: a call that
matches a ``deny`` rule is refused; otherwise, if the service has any ``allow`` rule, the call
must match one; a service without rules is open. A rule matches a call when its caller, its
method and its headers all match:

- ``callers``: service names whose identity (``spiffe://TD/service/NAME`` in the caller's
  certificate) the caller holds, or ``*`` for any caller with a certificate of the mesh;
  empty: any caller, with a certificate or not;
- ``methods``: ``/pkg.Service/Method``, or ``/pkg.Service/*``; empty: every method;
- ``headers``: every one listed matches (as a route's headers do, :mod:`mesh_core.routing`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from mesh.v1 import config_pb2
from mesh_core.routing import HeaderRule, Metadata, header_value, path_match

ALLOW: Final = "allow"
DENY: Final = "deny"
ACTIONS: Final = (ALLOW, DENY)
ANY_AUTHENTICATED: Final = "*"
NO_ALLOW_MATCHED: Final = "no allow rule matched"
"""The 'rule' that refuses a call when the service has allow rules and none matched."""


def rule_name(rule: config_pb2.AuthorizationRule, index: int) -> str:
    return rule.name or f"rule-{index}"


def service_id(trust_domain: str, service: str) -> str:
    return f"spiffe://{trust_domain}/service/{service}"


def service_of_id(peer: str) -> tuple[str, str] | None:
    """``(trust domain, service)`` of a service's SPIFFE id, or None for any other id."""
    if not peer.startswith("spiffe://"):
        return None
    domain, _, path = peer[len("spiffe://") :].partition("/")
    kind, _, name = path.partition("/")
    if kind != "service" or not name or "/" in name:
        return None
    return domain, name


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    action: str
    callers: tuple[str, ...]  # service names; empty (and not any_authenticated): anyone
    any_authenticated: bool  # "*": any caller with a certificate of the mesh
    methods: tuple[tuple[str, bool], ...]  # (path, is_prefix); empty: every method
    headers: tuple[HeaderRule, ...]

    def matches(
        self, peer: str | None, method: str, metadata: Metadata, trust_domain: str | None
    ) -> bool:
        """Whether the call matches. ``peer``: the caller's SPIFFE id, "" for a certificate
        without one, None without a certificate (plaintext)."""
        if self.any_authenticated:
            if peer is None:
                return False
        elif self.callers:
            parsed = service_of_id(peer) if peer else None
            if parsed is None or parsed[1] not in self.callers:
                return False
            if trust_domain and parsed[0] != trust_domain:
                return False
        if self.methods and not any(
            method.startswith(path) if prefix else method == path for path, prefix in self.methods
        ):
            return False
        if self.headers:
            pairs = list(metadata)
            return all(rule.matches(header_value(pairs, rule.name)) for rule in self.headers)
        return True


@dataclass(frozen=True, slots=True)
class Authorization:
    """A service's compiled rules and its trust domain (the callers' ids are in it)."""

    rules: tuple[CompiledRule, ...]
    trust_domain: str | None

    @property
    def open(self) -> bool:
        return not self.rules

    @property
    def deny_rules(self) -> tuple[CompiledRule, ...]:
        return tuple(rule for rule in self.rules if rule.action == DENY)

    @property
    def allow_rules(self) -> tuple[CompiledRule, ...]:
        return tuple(rule for rule in self.rules if rule.action == ALLOW)

    def decide(self, peer: str | None, method: str, metadata: Metadata) -> tuple[bool, str]:
        """``(allowed, the rule that decided)``; ``""`` as the rule when no rule decided
        (an open service)."""
        if not self.rules:
            return True, ""
        pairs = list(metadata)
        for rule in self.deny_rules:
            if rule.matches(peer, method, pairs, self.trust_domain):
                return False, rule.name
        allows = self.allow_rules
        if not allows:
            return True, ""
        for rule in allows:
            if rule.matches(peer, method, pairs, self.trust_domain):
                return True, rule.name
        return False, NO_ALLOW_MATCHED


OPEN: Final = Authorization((), None)


def compile_rules(
    rules: Iterable[config_pb2.AuthorizationRule], trust_domain: str | None
) -> Authorization:
    """Validated rules (:func:`mesh_core.validation.validate_service`) compiled."""
    compiled = []
    for index, rule in enumerate(rules):
        callers = tuple(c for c in rule.callers if c != ANY_AUTHENTICATED)
        compiled.append(
            CompiledRule(
                name=rule_name(rule, index),
                action=rule.action,
                callers=callers,
                any_authenticated=ANY_AUTHENTICATED in rule.callers,
                methods=tuple(path_match(method) for method in rule.methods),
                headers=tuple(
                    HeaderRule.of(name, rule.headers[name]) for name in sorted(rule.headers)
                ),
            )
        )
    return Authorization(tuple(compiled), trust_domain)


__all__ = [
    "ACTIONS",
    "ALLOW",
    "ANY_AUTHENTICATED",
    "DENY",
    "NO_ALLOW_MATCHED",
    "OPEN",
    "Authorization",
    "CompiledRule",
    "compile_rules",
    "rule_name",
    "service_id",
    "service_of_id",
]
