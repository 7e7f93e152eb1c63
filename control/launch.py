"""``mesh-control``'s console script, as light as the base install allows: it checks that the
``control`` extra is installed before it imports anything that needs it."""

from __future__ import annotations

from mesh_core.extras import require

# What `pip install 'python-mesh[control]'` adds that these programs import.
SERVER_MODULES = (
    "envoy.service.discovery.v3",
    "grpc_health.v1",
    "grpc_reflection.v1alpha",
    "google.rpc",
    "yaml",
    "cryptography",
    "opentelemetry.sdk",
)


def mesh_control() -> None:
    require("mesh-control", "control", SERVER_MODULES)
    from control.cli import main

    main()
