"""The mesh's client library: channels and interceptors through which application processes
use their node's agent.

    channel = mesh_channel("orders")            # breaker, policy timeout, outcome reports
                                                # (dials xds:///mesh-client/orders)
    stub = OrdersStub(channel)

    channel = aio_mesh_channel("orders")        # the same for grpc.aio

    server = mesh_server("payments")            # grpc's xDS server: mTLS as the service's
    port = server.add_port("0.0.0.0:50051")     # policy says (aio_mesh_server for grpc.aio)

    channel = grpc.intercept_channel(my_channel, mesh_interceptor("orders"))

    channel = mesh_channel("orders", agent="127.0.0.1:15011",   # mTLS to a TCP agent address
                           tls=TlsFiles(cert, key, ca))        # (default: $MESH_TLS_*)

    channel = mesh_channel("orders", caller="frontend")  # the process's name in the
                                                # service graph (meshctl top); or $MESH_CALLER;
                                                # a service identity in use names it first

    setup_telemetry("orders")                   # OTLP / Prometheus from the OTEL_* settings
"""

from mesh_agent.client._authorization import peer_identity
from mesh_agent.client._channel import (
    agent_address,
    aio_mesh_channel,
    aio_mesh_interceptors,
    configure_bootstrap,
    mesh_channel,
    mesh_interceptor,
    tls_files,
)
from mesh_agent.client._classify import is_mesh_rejection
from mesh_agent.client._interceptors import MeshClientInterceptor
from mesh_agent.client._mesh_server import AioMeshServer, MeshServer, aio_mesh_server, mesh_server
from mesh_agent.client._rejection import OPEN_CIRCUIT_KEY, CircuitOpenError
from mesh_core.errors import BootstrapConflictError
from mesh_core.rpc_server import AioMeshServerInterceptor, MeshServerInterceptor
from mesh_core.telemetry import setup as setup_telemetry
from mesh_core.tls import TlsFiles

__all__ = [
    "OPEN_CIRCUIT_KEY",
    "AioMeshServer",
    "AioMeshServerInterceptor",
    "BootstrapConflictError",
    "CircuitOpenError",
    "MeshClientInterceptor",
    "MeshServer",
    "MeshServerInterceptor",
    "TlsFiles",
    "agent_address",
    "aio_mesh_channel",
    "aio_mesh_interceptors",
    "aio_mesh_server",
    "configure_bootstrap",
    "is_mesh_rejection",
    "mesh_channel",
    "mesh_interceptor",
    "mesh_server",
    "peer_identity",
    "setup_telemetry",
    "tls_files",
]
