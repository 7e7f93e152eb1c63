"""The xDS bootstrap that points grpcio's own xDS client at a mesh server.

grpcio reads the bootstrap once per process, from ``GRPC_XDS_BOOTSTRAP`` (a file) or
``GRPC_XDS_BOOTSTRAP_CONFIG`` (the JSON itself), when the first ``xds:`` channel is made.
A TCP server is reached with mTLS when TLS files are given (channel creds type ``tls``,
gRFC A65: grpcio watches the files and uses renewed ones); a unix socket stays plaintext.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mesh_core.tls import TlsFiles


def is_unix(address: str) -> bool:
    """Whether ``address`` is a unix socket target (``unix:PATH``, ``unix-abstract:NAME``)."""
    return address.startswith(("unix:", "unix-abstract:"))


def channel_creds(server_uri: str, tls: TlsFiles | None = None) -> list[dict[str, Any]]:
    """The bootstrap's ``channel_creds`` for ``server_uri``: mTLS with ``tls`` to a TCP
    server, plaintext to a unix socket or without ``tls``."""
    if tls is None or is_unix(server_uri):
        return [{"type": "insecure"}]
    return [
        {
            "type": "tls",
            "config": {
                "ca_certificate_file": os.path.abspath(tls.ca),
                "certificate_file": os.path.abspath(tls.cert),
                "private_key_file": os.path.abspath(tls.key),
            },
        }
    ]


def bootstrap_config(
    servers: Sequence[str],
    node_id: str,
    *,
    zone: str = "",
    cluster: str = "",
    metadata: dict[str, str] | None = None,
    tls: TlsFiles | None = None,
    certificate_providers: dict[str, Any] | None = None,
    server_listener_template: str | None = None,
) -> dict[str, Any]:
    """A bootstrap naming ``servers`` (``HOST:PORT`` or ``unix:PATH``) in order of preference:
    the first is used, later ones are fallbacks (gRFC A71). With ``tls``, TCP servers are
    reached with mTLS. ``certificate_providers`` (gRFC A29) and
    ``server_listener_template`` (A36) are copied in as given."""
    node: dict[str, Any] = {"id": node_id}
    if cluster:
        node["cluster"] = cluster
    if zone:
        node["locality"] = {"zone": zone}
    if metadata:
        node["metadata"] = dict(metadata)
    config: dict[str, Any] = {
        "xds_servers": [
            {
                "server_uri": uri,
                "channel_creds": channel_creds(uri, tls),
                "server_features": ["xds_v3"],
            }
            for uri in servers
        ],
        "node": node,
    }
    if certificate_providers:
        config["certificate_providers"] = dict(certificate_providers)
    if server_listener_template:
        config["server_listener_resource_name_template"] = server_listener_template
    return config


def bootstrap_json(servers: Sequence[str], node_id: str, **kwargs: Any) -> str:
    return json.dumps(bootstrap_config(servers, node_id, **kwargs))
