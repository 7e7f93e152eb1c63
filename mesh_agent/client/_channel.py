"""``mesh_channel()`` and ``aio_mesh_channel()``: an xDS channel fed by the node's agent, with
the service's :class:`~mesh_agent.client._gate.Gate` in front of every call
(:class:`~mesh_agent.client._sync_channel.MeshChannel`,
:class:`~mesh_agent.client._aio_channel.AioMeshChannel`); ``mesh_interceptor()`` and
``aio_mesh_interceptors()``, the same gate as interceptors for channels of one's own.

The channel dials ``xds:///mesh-client/SERVICE`` (:func:`mesh_core.names.client_listener_name`),
an alias Listener with the service's routes minus the route timeout, with ``SERVICE`` as its
authority; the gate applies the timeout to each call instead, since grpcio (1.85) fires
a route timeout 1-2 s early (grpc/grpc#40633). The bootstrap is process-wide, so a plain
``xds:///SERVICE`` channel in the same process still gets the route timeout as xDS defines it.

TLS: with ``tls=TlsFiles(...)``, or ``$MESH_TLS_CERT``/``$MESH_TLS_KEY``/``$MESH_TLS_CA`` (the
variables ``meshctl`` reads), a TCP agent address (and a fallback control server) is reached
with mTLS, both by grpcio's xDS client (bootstrap channel creds ``tls``, gRFC A65) and by the
process's :class:`AgentLink`. A unix-socket agent address is always plaintext.
"""

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
import grpc.experimental

from mesh_agent.client._aio_channel import AioMeshChannel
from mesh_agent.client._bootstrap import bootstrap_config, is_unix
from mesh_agent.client._caller import CALLER
from mesh_agent.client._gate import Gate
from mesh_agent.client._identity import IDENTITY, hold_identity
from mesh_agent.client._interceptors import MeshClientInterceptor, aio_interceptors
from mesh_agent.client._link import AgentLink, link_for
from mesh_agent.client._sync_channel import MeshChannel
from mesh_core.errors import BootstrapConflictError
from mesh_core.identity_files import CERTIFICATE_PROVIDER
from mesh_core.names import SERVER_LISTENER_TEMPLATE, client_listener_name
from mesh_core.tls import TlsFiles, env_files

DEFAULT_AGENT = "unix:/run/mesh-agent/agent.sock"
ENV_AGENT = "MESH_AGENT"
_BOOTSTRAP_ENV = "GRPC_XDS_BOOTSTRAP_CONFIG"
_AUTHORITY = "grpc.default_authority"
_lock = threading.Lock()
_configured: list[dict[str, Any]] | None = None


def agent_address(agent: str | None = None) -> str:
    """The agent to use: ``agent``, else ``$MESH_AGENT``, else the default socket. A bare
    path is taken as a unix socket."""
    address = agent or os.environ.get(ENV_AGENT) or DEFAULT_AGENT
    if address.startswith("/"):
        address = f"unix:{address}"
    return address


def tls_files(tls: TlsFiles | None = None) -> TlsFiles | None:
    """The TLS files to use: ``tls``, else ``$MESH_TLS_CERT``/``_KEY``/``_CA`` (all three or
    none), else None. The files are checked (readable PEM, key matching the certificate)."""
    if tls is None:
        return env_files()
    tls.read()
    return tls


def _existing_servers() -> list[dict[str, Any]] | None:
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
        return [
            {"server_uri": s["server_uri"], "channel_creds": s.get("channel_creds") or []}
            for s in json.loads(text).get("xds_servers", [])
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _tls_creds(server: dict[str, Any]) -> Any:
    """The server's ``tls`` channel creds (what grpcio uses when listed first), or None."""
    creds = server.get("channel_creds")
    first = creds[0] if isinstance(creds, list) and creds else None
    return first if isinstance(first, dict) and first.get("type") == "tls" else None


def _same(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """The same server, and the same mTLS files when either side uses mTLS."""
    if current["server_uri"] != wanted["server_uri"]:
        return False
    mtls = _tls_creds(current), _tls_creds(wanted)
    return mtls == (None, None) or mtls[0] == mtls[1]


def _describe(servers: Sequence[dict[str, Any]]) -> str:
    return ", ".join(
        s["server_uri"] + (" (mTLS)" if _tls_creds(s) is not None else "") for s in servers
    )


def configure_bootstrap(
    servers: Sequence[str], node_id: str | None = None, *, tls: TlsFiles | None = None
) -> None:
    """Points grpcio's xDS client at ``servers`` (the agent first, then fallbacks, gRFC A71)
    for this whole process, with mTLS to the TCP ones if ``tls`` is given. Asking again for
    the same servers is a no-op; asking for others, or for the same over other credentials,
    raises :class:`BootstrapConflictError`, since grpcio would silently keep the first."""
    global _configured
    node = node_id or os.environ.get("MESH_CLIENT_ID") or f"{socket.gethostname()}-{os.getpid()}"
    config = bootstrap_config(
        list(servers),
        node,
        tls=tls,
        certificate_providers={CERTIFICATE_PROVIDER: IDENTITY.provider()},
        server_listener_template=SERVER_LISTENER_TEMPLATE,
    )
    wanted: list[dict[str, Any]] = [
        {"server_uri": s["server_uri"], "channel_creds": s["channel_creds"]}
        for s in config["xds_servers"]
    ]
    with _lock:
        current = _configured if _configured is not None else _existing_servers()
        if current is not None:
            if len(current) < len(wanted) or not all(
                _same(c, w) for c, w in zip(current, wanted, strict=False)
            ):
                raise BootstrapConflictError(
                    f"this process's xDS bootstrap already points at {_describe(current)}; "
                    f"grpcio reads it once per process, so {_describe(wanted)} cannot be used"
                )
            _configured = current
            return
        os.environ[_BOOTSTRAP_ENV] = json.dumps(config)
        _configured = wanted
        CALLER.client_id = node


def forget_bootstrap() -> None:
    """Forgets what :func:`configure_bootstrap` set in this process (the environment is left
    as it is), so that the next call decides afresh: for tests that configure it more than
    once in one process. grpcio itself still reads the bootstrap once per process."""
    global _configured
    with _lock:
        _configured = None


def _setup(
    service: str,
    agent: str | None,
    fallback: str | None,
    node_id: str | None,
    tls: TlsFiles | None,
    caller: str | None = None,
) -> tuple[str, AgentLink]:
    CALLER.check_env()
    if caller is not None:
        CALLER.give(caller)
    address = agent_address(agent)
    servers = [address, *([fallback] if fallback else [])]
    files = tls_files(tls) if not all(is_unix(server) for server in servers) else None
    configure_bootstrap(servers, node_id, tls=files)
    return f"xds:///{client_listener_name(service)}", link_for(address, files)


def _setup_link(
    agent: str | None, fallback: str | None, node_id: str | None, tls: TlsFiles | None
) -> AgentLink:
    """The bootstrap configured as for a channel, and the link to the agent: for servers."""
    return _setup("", agent, fallback, node_id, tls)[1]


def _options(service: str, options: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    """The caller's channel options, with the service as the default authority (the target
    names the alias Listener) unless they set one."""
    given = list(options or ())
    if any(name == _AUTHORITY for name, _ in given):
        return given
    return [*given, (_AUTHORITY, service)]


def _credentials() -> grpc.ChannelCredentials:
    """xDS channel credentials: mTLS where the Cluster carries a TLS context, else
    plaintext."""
    return grpc.xds_channel_credentials(
        fallback_credentials=grpc.experimental.insecure_channel_credentials()  # type: ignore[no-untyped-call]
    )


def _link(agent: str | None, tls: TlsFiles | None) -> AgentLink:
    address = agent_address(agent)
    return link_for(address, None if is_unix(address) else tls_files(tls))


def mesh_channel(
    service: str,
    *,
    agent: str | None = None,
    fallback_control: str | None = None,
    node_id: str | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
    tls: TlsFiles | None = None,
    identity: str | None = None,
    caller: str | None = None,
) -> grpc.Channel:
    """A channel to mesh service ``service`` through the node's agent, with circuit breaking
    and outcome reporting. ``fallback_control`` (``HOST:PORT``) is used by grpcio when the
    agent cannot be reached at start. ``tls`` (default: ``$MESH_TLS_*``): mTLS to a TCP agent
    address and to the fallback.

    Calls to a service in ``strict`` security mode use mTLS (``grpc.xds_channel_credentials``:
    the service's Cluster says so, and names the server's identity, so a call reaches only
    the real service); others are plaintext. ``identity`` (a service name) is the identity the
    process calls with, if it serves none: the agent gets a certificate for it if the node
    may hold it (PermissionDeniedError otherwise).

    ``caller`` names the process in the service graph (``meshctl top``) when it uses no
    service identity (default: ``$MESH_CALLER``, else its xDS client id; see
    :mod:`mesh_agent.client._caller`); one name per process (ConfigError for a second).

    The service's policy timeout is each call's deadline, unless the caller's is earlier."""
    target, link = _setup(service, agent, fallback_control, node_id, tls, caller)
    if identity is not None:
        hold_identity(link, identity)
    channel = grpc.secure_channel(target, _credentials(), options=_options(service, options))
    return MeshChannel(channel, Gate(link, service))


def aio_mesh_channel(
    service: str,
    *,
    agent: str | None = None,
    fallback_control: str | None = None,
    node_id: str | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
    tls: TlsFiles | None = None,
    identity: str | None = None,
    caller: str | None = None,
) -> grpc.aio.Channel:
    """The asyncio counterpart of :func:`mesh_channel` (``identity`` is asked of the agent
    before it returns, blocking: make channels at start-up)."""
    target, link = _setup(service, agent, fallback_control, node_id, tls, caller)
    if identity is not None:
        hold_identity(link, identity)
    channel = grpc.aio.secure_channel(target, _credentials(), options=_options(service, options))
    return AioMeshChannel(channel, Gate(link, service))


def mesh_interceptor(
    service: str, *, agent: str | None = None, tls: TlsFiles | None = None
) -> MeshClientInterceptor:
    """The sync interceptor alone, for a channel of your own:
    ``grpc.intercept_channel(channel, mesh_interceptor("orders"))``. ``tls`` (default:
    ``$MESH_TLS_*``) is for the link to a TCP agent address. It applies the service's policy
    timeout as each call's deadline too (a raw ``xds:///orders`` channel also has grpcio's
    own, early one)."""
    return MeshClientInterceptor(_link(agent, tls), service)


def aio_mesh_interceptors(
    service: str, *, agent: str | None = None, tls: TlsFiles | None = None
) -> list[grpc.aio.ClientInterceptor]:
    """The asyncio interceptors alone, for ``grpc.aio.insecure_channel(..., interceptors=)``."""
    return aio_interceptors(_link(agent, tls), service)
