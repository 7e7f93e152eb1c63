"""The agent's settings, as the command line and its ``--config`` file give them, and the xDS
node the agent presents upstream. Both are shared with every component through its context
(``ctx.setting("agent", AgentSettings)``, ``ctx.setting("node", base_pb2.Node)``)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from envoy.config.core.v3 import base_pb2

from mesh.v1 import node_pb2
from mesh_agent import __version__
from mesh_core.tls import TlsFiles

DEFAULT_SOCKET = "/run/mesh-agent/agent.sock"
DEFAULT_STATE_DIR = "/var/lib/mesh-agent"
SETTINGS = "agent"
"""The key of the :class:`AgentSettings` among the settings shared with components."""
NODE = "node"
"""The key of the agent's xDS node (a ``base_pb2.Node``) among the shared settings."""


@dataclass
class AgentSettings:
    control: list[str]
    node_id: str = field(default_factory=socket.gethostname)
    zone: str = ""
    cluster: str = ""
    socket: str = DEFAULT_SOCKET
    # The unix socket's mode, and its owner and group (uid, gid; None leaves them unchanged).
    socket_mode: int = 0o660
    socket_owner: int | None = None
    socket_group: int | None = None
    listen: str = ""
    state_dir: Path | None = Path(DEFAULT_STATE_DIR)
    registrations: list[node_pb2.Registration] = field(default_factory=list)
    panic_threshold: float = 0.5
    grace: float = 5.0
    # mTLS to the control server, and on the TCP listener (the unix socket stays plaintext,
    # guarded by its file mode).
    tls: TlsFiles | None = None
    # With mTLS, the identities (SPIFFE IDs) besides the node's own that may use the TCP
    # listener.
    listen_allow: list[str] = field(default_factory=list)
    # Upstream xDS flavour: "auto" (delta where the server offers it), "delta" or "sotw".
    xds_protocol: str = "auto"
    # Service identities to hold besides those of the services registered (--identity), and
    # where their files go (None: identities/ in the state dir).
    identities: list[str] = field(default_factory=list)
    certs_dir: Path | None = None


def node_of(settings: AgentSettings) -> base_pb2.Node:
    """The xDS node the agent presents to the control plane."""
    return base_pb2.Node(
        id=settings.node_id,
        cluster=settings.cluster,
        locality=base_pb2.Locality(zone=settings.zone),
        user_agent_name="mesh-agent",
        user_agent_version=__version__,
    )


__all__ = ["DEFAULT_SOCKET", "DEFAULT_STATE_DIR", "NODE", "SETTINGS", "AgentSettings", "node_of"]
