"""The agent's console script, as light as the base install allows: it checks that the
``agent`` extra is installed before it imports the daemon."""

from __future__ import annotations

from mesh_core.extras import require

AGENT_MODULES = (
    "envoy.service.discovery.v3",
    "grpc_health.v1",
    "grpc_reflection.v1alpha",
    "google.rpc",
    "yaml",
    "cryptography",
    "opentelemetry.sdk",
)


def mesh_agent() -> None:
    require("mesh-agent", "agent", AGENT_MODULES)
    from mesh_agent.daemon.cli import main

    main()
