"""``mesh_channel()`` and ``aio_mesh_channel()``: an ``xds:///SERVICE`` channel fed by the
node's agent, with the mesh interceptors on it."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from control.errors import MeshError
from mesh_agent._bootstrap import bootstrap_config

from ._interceptors import MeshClientInterceptor, aio_interceptors
from ._link import AgentLink, link_for

DEFAULT_AGENT = "unix:/run/mesh-agent/agent.sock"
ENV_AGENT = "MESH_AGENT"
_BOOTSTRAP_ENV = "GRPC_XDS_BOOTSTRAP_CONFIG"
_lock = threading.Lock()
_configured: list[str] | None = None


class BootstrapConflictError(MeshError):
    """The process's xDS bootstrap already points elsewhere; grpcio reads it only once."""


def agent_address(agent: str | None = None) -> str:
    """The agent to use: ``agent``, else ``$MESH_AGENT``, else the default socket. A bare
    path is taken as a unix socket."""
    address = agent or os.environ.get(ENV_AGENT) or DEFAULT_AGENT
    if address.startswith("/"):
        address = f"unix:{address}"
    return address


def _existing_servers() -> list[str] | None:
    """The servers of a bootstrap someone else set in this process's environment."""
    text = os.environ.get(_BOOTSTRAP_ENV)
    path = os.environ.get("GRPC_XDS_BOOTSTRAP")
    if text is None and path:
        try:
            text = Path(path).read_text()
        except OSError:
            return None
    if text is None:
        return None
    try:
        return [s["server_uri"] for s in json.loads(text).get("xds_servers", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def configure_bootstrap(servers: Sequence[str], node_id: str | None = None) -> None:
    """Points grpcio's xDS client at ``servers`` (the agent first, then fallbacks, gRFC A71)
    for this whole process. Asking again for the same servers is a no-op; asking for others
    raises :class:`BootstrapConflictError`, since grpcio would silently keep the first."""
    global _configured
    wanted = list(servers)
    with _lock:
        current = _configured if _configured is not None else _existing_servers()
        if current is not None:
            if current[: len(wanted)] != wanted:
                raise BootstrapConflictError(
                    f"this process's xDS bootstrap already points at {', '.join(current)}; "
                    f"grpcio reads it once per process, so {', '.join(wanted)} cannot be used"
                )
            _configured = current
            return
        node = (
            node_id or os.environ.get("MESH_CLIENT_ID") or (f"{socket.gethostname()}-{os.getpid()}")
        )
        os.environ[_BOOTSTRAP_ENV] = json.dumps(bootstrap_config(wanted, node))
        _configured = wanted


def _setup(
    service: str, agent: str | None, fallback: str | None, node_id: str | None
) -> tuple[str, AgentLink]:
    address = agent_address(agent)
    configure_bootstrap([address, *([fallback] if fallback else [])], node_id)
    return f"xds:///{service}", link_for(address)


def mesh_channel(
    service: str,
    *,
    agent: str | None = None,
    fallback_control: str | None = None,
    node_id: str | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
) -> grpc.Channel:
    """A channel to mesh service ``service`` through the node's agent, with circuit breaking
    and outcome reporting. ``fallback_control`` (``HOST:PORT``) is used by grpcio when the
    agent cannot be reached at start."""
    target, link = _setup(service, agent, fallback_control, node_id)
    channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(channel, MeshClientInterceptor(link, service))


def aio_mesh_channel(
    service: str,
    *,
    agent: str | None = None,
    fallback_control: str | None = None,
    node_id: str | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
) -> grpc.aio.Channel:
    """The asyncio counterpart of :func:`mesh_channel`."""
    target, link = _setup(service, agent, fallback_control, node_id)
    return grpc.aio.insecure_channel(
        target, options=options, interceptors=aio_interceptors(link, service)
    )


def mesh_interceptor(service: str, *, agent: str | None = None) -> MeshClientInterceptor:
    """The sync interceptor alone, for a channel of your own:
    ``grpc.intercept_channel(channel, mesh_interceptor("orders"))``."""
    return MeshClientInterceptor(link_for(agent_address(agent)), service)


def aio_mesh_interceptors(
    service: str, *, agent: str | None = None
) -> list[grpc.aio.ClientInterceptor]:
    """The asyncio interceptors alone, for ``grpc.aio.insecure_channel(..., interceptors=)``."""
    return aio_interceptors(link_for(agent_address(agent)), service)
