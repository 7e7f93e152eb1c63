"""The transport security of the resources that carry calls between services (gRFC A29):
a Cluster's ``UpstreamTlsContext`` (the caller presents its identity and accepts only the
service's), built by the control server, and the server Listener of an xDS-enabled server
(gRFC A36) with its ``DownstreamTlsContext`` (client certificates required), built by the
node's agent for a process that declared what it serves.

Both name the certificate-provider instance :data:`CERTIFICATE_PROVIDER`, which the
bootstrap the client library writes always defines (a ``file_watcher`` on the process's
identity files): grpcio NACKs a resource naming an instance its bootstrap does not have.
"""

from __future__ import annotations

import re

from envoy.config.core.v3 import address_pb2, base_pb2, extension_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.rbac.audit_loggers.stream.v3 import stream_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from mesh_core.authorization import Authorization, CompiledRule
from mesh_core.identity_files import CERTIFICATE_PROVIDER
from mesh_core.names import server_listener_name
from mesh_core.policy import SECURITY_STRICT
from mesh_core.routing import HeaderRule
from mesh_xds.addresses import split_address

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
RBAC_DENY_FILTER = "mesh.authorization.deny"
RBAC_ALLOW_FILTER = "mesh.authorization.allow"
AUDIT_LOGGER = "stdout_logger"
"""gRPC's built-in RBAC audit logger (gRFC A59): one JSON line on the server's stdout per
denied call, with the rule (policy) that matched, the caller and the method."""


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _provider() -> common_pb2.CertificateProviderPluginInstance:
    return common_pb2.CertificateProviderPluginInstance(instance_name=CERTIFICATE_PROVIDER)


def _transport_socket(
    context: tls_pb2.UpstreamTlsContext | tls_pb2.DownstreamTlsContext,
) -> base_pb2.TransportSocket:
    packed = any_pb2.Any()
    packed.Pack(context)
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=packed)


def service_identity_matcher(service: str, trust_domain: str | None) -> string_pb2.StringMatcher:
    """What a caller accepts in the server's certificate: the service's SPIFFE id, exactly
    when the trust domain is known, else that id in any trust domain (the trust bundle, the
    mesh CA's, still decides which certificates verify at all)."""
    if trust_domain:
        return string_pb2.StringMatcher(exact=f"spiffe://{trust_domain}/service/{service}")
    regex = "spiffe://[^/]+/service/" + re.escape(service)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex))


def upstream_tls(service: str, trust_domain: str | None) -> base_pb2.TransportSocket:
    """A Cluster's transport socket for a service with mTLS: the caller's own identity as its
    certificate, the mesh's trust bundle as roots, and the server's certificate must name
    the service (a caller talks only to the real service)."""
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_provider_instance=_provider(),
            validation_context=common_pb2.CertificateValidationContext(
                ca_certificate_provider_instance=_provider(),
                match_subject_alt_names=[service_identity_matcher(service, trust_domain)],
            ),
        )
    )
    return _transport_socket(context)


def downstream_tls() -> base_pb2.TransportSocket:
    """A server Listener's transport socket in ``strict`` mode: the service's identity as the
    server certificate, and a client certificate that verifies with the mesh's trust bundle
    required of every caller (which identity may call what is authorization's business)."""
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_provider_instance=_provider(),
            validation_context=common_pb2.CertificateValidationContext(
                ca_certificate_provider_instance=_provider()
            ),
        )
    )
    context.require_client_certificate.value = True
    return _transport_socket(context)


def _string_matcher(rule: HeaderRule) -> string_pb2.StringMatcher:
    if rule.kind == "exact":
        return string_pb2.StringMatcher(exact=rule.value)
    if rule.kind == "prefix":
        return string_pb2.StringMatcher(prefix=rule.value)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=rule.value))


def _header_permission(rule: HeaderRule) -> rbac_pb2.Permission:
    header = route_components_pb2.HeaderMatcher(name=rule.name)
    if rule.kind == "present":
        header.present_match = True
    else:
        header.string_match.CopyFrom(_string_matcher(rule))
    header.invert_match = rule.invert
    return rbac_pb2.Permission(header=header)


def _permission(rule: CompiledRule) -> rbac_pb2.Permission:
    """The rule's methods (any of them) and headers (all of them)."""
    parts: list[rbac_pb2.Permission] = []
    if rule.methods:
        paths = [
            rbac_pb2.Permission(
                url_path=path_pb2.PathMatcher(
                    path=string_pb2.StringMatcher(prefix=path)
                    if prefix
                    else string_pb2.StringMatcher(exact=path)
                )
            )
            for path, prefix in rule.methods
        ]
        parts.append(rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=paths)))
    parts.extend(_header_permission(header) for header in rule.headers)
    if not parts:
        return rbac_pb2.Permission(any=True)
    if len(parts) == 1:
        return parts[0]
    return rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=parts))


def _principal(rule: CompiledRule, trust_domain: str | None) -> rbac_pb2.Principal:
    """Any caller; any caller with a certificate (``*``); or callers holding one of the
    named services' identities (the certificate's SPIFFE id, A41's principal name)."""
    if rule.any_authenticated:
        return rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated())
    if not rule.callers:
        return rbac_pb2.Principal(any=True)
    ids = [
        rbac_pb2.Principal(
            authenticated=rbac_pb2.Principal.Authenticated(
                principal_name=service_identity_matcher(caller, trust_domain)
            )
        )
        for caller in rule.callers
    ]
    return ids[0] if len(ids) == 1 else rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=ids))


def _rbac_filter(
    name: str, action: int, rules: tuple[CompiledRule, ...], trust_domain: str | None
) -> hcm_pb2.HttpFilter:
    rbac = rbac_pb2.RBAC(
        action=action,
        audit_logging_options=rbac_pb2.RBAC.AuditLoggingOptions(
            audit_condition=rbac_pb2.RBAC.AuditLoggingOptions.ON_DENY,
            logger_configs=[
                rbac_pb2.RBAC.AuditLoggingOptions.AuditLoggerConfig(
                    audit_logger=extension_pb2.TypedExtensionConfig(
                        name=AUDIT_LOGGER, typed_config=_pack(stream_pb2.StdoutAuditLog())
                    ),
                    is_optional=False,
                )
            ],
        ),
    )
    for rule in rules:
        rbac.policies[rule.name].CopyFrom(
            rbac_pb2.Policy(
                permissions=[_permission(rule)], principals=[_principal(rule, trust_domain)]
            )
        )
    return hcm_pb2.HttpFilter(name=name, typed_config=_pack(rbac_filter_pb2.RBAC(rules=rbac)))


def rbac_filters(authorization: Authorization) -> list[hcm_pb2.HttpFilter]:
    """The RBAC HTTP filters (gRFC A41) enforcing ``authorization`` before the router: a DENY
    filter with the deny rules (a call matching one is refused), then, if there are allow
    rules, an ALLOW filter with them (a call must match one). None for an open service."""
    domain = authorization.trust_domain
    filters = []
    denies, allows = authorization.deny_rules, authorization.allow_rules
    if denies:
        filters.append(_rbac_filter(RBAC_DENY_FILTER, rbac_pb2.RBAC.DENY, denies, domain))
    if allows:
        filters.append(_rbac_filter(RBAC_ALLOW_FILTER, rbac_pb2.RBAC.ALLOW, allows, domain))
    return filters


def _server_manager(authorization: Authorization | None) -> hcm_pb2.HttpConnectionManager:
    """The HCM of a server Listener: the authorization's RBAC filters, then every call goes
    to the server's own handlers."""
    router = any_pb2.Any()
    router.Pack(router_pb2.Router())
    filters = rbac_filters(authorization) if authorization is not None else []
    return hcm_pb2.HttpConnectionManager(
        stat_prefix="mesh-server",
        route_config=route_pb2.RouteConfiguration(
            name="mesh-server",
            virtual_hosts=[
                route_components_pb2.VirtualHost(
                    name="mesh-server",
                    domains=["*"],
                    routes=[
                        route_components_pb2.Route(
                            match=route_components_pb2.RouteMatch(prefix="/"),
                            non_forwarding_action=route_components_pb2.NonForwardingAction(),
                        )
                    ],
                )
            ],
        ),
        http_filters=[*filters, hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=router)],
    )


def server_listener(
    listening_address: str, mode: str, authorization: Authorization | None = None
) -> listener_pb2.Listener:
    """The Listener of an xDS-enabled server listening on ``listening_address`` (``IP:PORT``
    as grpc writes it: the Listener's address must be the same, or grpc refuses it) for a
    service in security ``mode``: ``strict`` requires mTLS; anything else serves plaintext
    (grpc's xDS server cannot tell plaintext from TLS on one port). ``authorization``: the
    service's rules, enforced by RBAC filters before any handler."""
    host, port = split_address(listening_address)
    manager = any_pb2.Any()
    manager.Pack(_server_manager(authorization))
    chain = listener_components_pb2.FilterChain(
        name="mesh-server",
        filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=manager)],
    )
    if mode == SECURITY_STRICT:
        chain.transport_socket.CopyFrom(downstream_tls())
    return listener_pb2.Listener(
        name=server_listener_name(listening_address),
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=host, port_value=port)
        ),
        filter_chains=[chain],
    )


__all__ = [
    "AUDIT_LOGGER",
    "RBAC_ALLOW_FILTER",
    "RBAC_DENY_FILTER",
    "TLS_TRANSPORT_SOCKET",
    "downstream_tls",
    "rbac_filters",
    "server_listener",
    "service_identity_matcher",
    "upstream_tls",
]
