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

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2

from mesh_core.identity_files import CERTIFICATE_PROVIDER
from mesh_core.names import server_listener_name
from mesh_core.policy import SECURITY_STRICT
from mesh_xds.addresses import split_address

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"


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


def _server_manager() -> hcm_pb2.HttpConnectionManager:
    """The HCM of a server Listener: every call goes to the server's own handlers."""
    router = any_pb2.Any()
    router.Pack(router_pb2.Router())
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
        http_filters=[hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=router)],
    )


def server_listener(listening_address: str, mode: str) -> listener_pb2.Listener:
    """The Listener of an xDS-enabled server listening on ``listening_address`` (``IP:PORT``
    as grpc writes it: the Listener's address must be the same, or grpc refuses it) for a
    service in security ``mode``: ``strict`` requires mTLS; anything else serves plaintext
    (grpc's xDS server cannot tell plaintext from TLS on one port)."""
    host, port = split_address(listening_address)
    manager = any_pb2.Any()
    manager.Pack(_server_manager())
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
    "TLS_TRANSPORT_SOCKET",
    "downstream_tls",
    "server_listener",
    "service_identity_matcher",
    "upstream_tls",
]
