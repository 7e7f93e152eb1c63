"""The xDS bootstrap that points grpcio's own xDS client at a mesh server.

grpcio reads the bootstrap once per process, from ``GRPC_XDS_BOOTSTRAP`` (a file) or
``GRPC_XDS_BOOTSTRAP_CONFIG`` (the JSON itself), when the first ``xds:`` channel is made.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def bootstrap_config(
    servers: Sequence[str],
    node_id: str,
    *,
    zone: str = "",
    cluster: str = "",
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A bootstrap naming ``servers`` (``HOST:PORT`` or ``unix:PATH``) in order of preference:
    the first is used, later ones are fallbacks (gRFC A71)."""
    node: dict[str, Any] = {"id": node_id}
    if cluster:
        node["cluster"] = cluster
    if zone:
        node["locality"] = {"zone": zone}
    if metadata:
        node["metadata"] = dict(metadata)
    return {
        "xds_servers": [
            {
                "server_uri": uri,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
            for uri in servers
        ],
        "node": node,
    }


def bootstrap_json(servers: Sequence[str], node_id: str, **kwargs: Any) -> str:
    return json.dumps(bootstrap_config(servers, node_id, **kwargs))
