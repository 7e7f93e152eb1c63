"""``mesh_server()`` and ``aio_mesh_server()``: servers of a mesh service, with the service's
identity and its security mode (``disabled``: plaintext; ``strict``: mTLS, a client
certificate from the mesh required of every caller).

    server = mesh_server("payments")                  # grpc.server(..., xds=True)
    add_PaymentsServicer_to_server(Payments(), server)
    port = server.add_port("0.0.0.0:50051")            # declared to the node's agent
    server.start()

The sync server is grpcio's xDS-enabled server (gRFC A36) with ``grpc.xds_server_credentials``:
it asks the node's agent (through the process's bootstrap, which names the template
``mesh-server/%s``) for the Listener of each address it listens on, and serves once it has it.
The agent builds that Listener from the service's policy (``add_port`` declares the address
to it), with a ``DownstreamTlsContext`` in ``strict`` mode; a change of mode applies to the
running server at the next push, with no restart. Certificates come from the agent's files
through the process's certificate provider (``mesh_agent.client._identity``) and renewals
are picked up without a restart.

grpcio has no xDS-enabled asyncio server: ``aio_mesh_server`` is a ``grpc.aio.server`` whose
``add_port`` asks the agent for the service's mode once and binds a plaintext port or one with
``ssl_server_credentials`` from the agent's files (client certificates required), reloaded
when the agent renews them (at the next handshake after the swap). A change of mode needs
a restart of an asyncio server.

gRPC's xDS server cannot tell plaintext from TLS on one port, so there is no permissive mode:
to move a service to mTLS without failed calls, serve a second port (registered as its own
endpoints) and switch (README, "Service identities and mTLS").
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import structlog

from mesh_agent.client._authorization import AuthorizationInterceptor
from mesh_agent.client._channel import _setup_link
from mesh_agent.client._identity import IDENTITY, hold_identity
from mesh_agent.client._link import AgentLink
from mesh_core.authorization import service_of_id
from mesh_core.errors import ConfigError, MeshError, UnavailableError
from mesh_core.identity_files import CA_FILE, CERT_FILE, KEY_FILE
from mesh_core.policy import SECURITY_STRICT
from mesh_core.rpc_server import AioMeshServerInterceptor, MeshServerInterceptor
from mesh_core.tls import TlsFiles

log = structlog.get_logger(__name__)
DECLARE_WAIT = 5.0  # seconds the agent may wait for the service's policy


def listening_addresses(address: str, port: int) -> list[str]:
    """The ``IP:PORT`` strings grpc names the Listeners of ``address`` (bound to ``port``)
    by: the address itself for an IP literal or a wildcard, each resolved address for a
    host name."""
    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    try:
        ips = [ipaddress.ip_address(host or "0.0.0.0")]
    except ValueError:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        ips = [ipaddress.ip_address(info[4][0]) for info in infos]
        if host == "localhost":
            ips += [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    joined = (f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}" for ip in ips)
    return list(dict.fromkeys(joined))


def _port_of(address: str) -> int:
    """The port of ``HOST:PORT``; ConfigError when there is none."""
    try:
        return int(address.rpartition(":")[2])
    except ValueError:
        raise ConfigError(f"{address!r}: expected HOST:PORT") from None


def _declare(link: AgentLink, service: str, addresses: Iterable[str]) -> tuple[str, bool]:
    """Declares each address to the agent; the service's ``(mode, has_identity)``."""
    mode, has_identity = "", False
    for listening in addresses:
        try:
            response = link.declare_server(service, listening, DECLARE_WAIT)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise ConfigError(f"mesh server of {service!r}: {details}") from None
            raise UnavailableError(
                f"mesh server of {service!r}: the node's agent ({link.target}) was not reached "
                f"to declare {listening}, and a mesh server gets its Listener from it: {details}"
            ) from None
        if not response.mode:
            raise ConfigError(
                f"mesh server of {service!r}: the node's agent holds no policy for the "
                f"service after {DECLARE_WAIT:g} s; apply its config first "
                f"(meshctl apply -f ...)"
            )
        mode, has_identity = response.mode, response.has_identity
        if not listening:
            continue
        log.info(
            "mesh server declared",
            service=service,
            listening_address=listening,
            listener=response.listener_name,
            mode=mode,
        )
    return mode, has_identity


def _identity(link: AgentLink, service: str, mode: str, has_identity: bool) -> Path | None:
    """The agent's ``current`` directory of the service's identity, held for the process:
    required in strict mode, taken when the service has one otherwise (the process then
    calls strict services with it)."""
    if mode != SECURITY_STRICT and not has_identity:
        return None
    try:
        return hold_identity(link, service)
    except MeshError as error:
        if mode == SECURITY_STRICT:
            raise
        log.warning(
            "service identity not held; serving plaintext", service=service, error=str(error)
        )
        return None


AUDIT_ENV = "GRPC_EXPERIMENTAL_XDS_RBAC_AUDIT_LOGGING"


def _audit_denials() -> None:
    """Turns on gRPC's RBAC audit logging (gRFC A59, still behind ``AUDIT_ENV`` in grpcio
    1.85; ``false`` in the environment keeps it off), whose ``stdout_logger`` the agent's
    server Listeners name: one JSON line (``grpc_audit_log``: method, caller, rule) on the
    process's stdout per denied call. grpc writes it with C stdio, which buffers whole blocks
    when stdout is a pipe or a file: the C stdout is made line-buffered, so each line is out
    when the call is denied (where the C library allows; the lines are written either way)."""
    os.environ.setdefault(AUDIT_ENV, "true")
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        stdout = ctypes.c_void_p.in_dll(libc, "stdout")
        libc.setvbuf(stdout, None, 1, 0)  # _IOLBF
    except (OSError, ValueError, AttributeError):
        log.debug("C stdout left as it is: audit lines may come in blocks")


RULES_WAIT = 10.0  # seconds an asyncio server waits for the service's rules at start


def _wait_for_rules(link: AgentLink, service: str) -> None:
    """Waits until the link holds the service's call policy (with its authorization rules):
    a server must not serve, open, before it knows who may call it."""
    deadline = time.monotonic() + RULES_WAIT
    while service not in link.timeouts:
        if time.monotonic() > deadline:
            raise UnavailableError(
                f"mesh server of {service!r}: the node's agent ({link.target}) did not send "
                f"the service's policy (its authorization rules) within {RULES_WAIT:g} s"
            )
        time.sleep(0.02)


class _ServerOfService:
    """What the sync and asyncio servers share: handlers go to grpc's ``server``, and every
    port is added with ``add_port``, secured as the mesh says."""

    server: Any
    service: str

    def add_insecure_port(self, address: str) -> int:
        raise ConfigError("a mesh server's ports are added with add_port (security by the mesh)")

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        raise ConfigError("a mesh server's ports are added with add_port (security by the mesh)")

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]
    ) -> None:
        self.server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.server.add_registered_method_handlers(service_name, method_handlers)


class MeshServer(_ServerOfService, grpc.Server):
    """A ``grpc.server(..., xds=True)`` serving one mesh service. Ports are added with
    :meth:`add_port`; ``add_insecure_port`` and ``add_secure_port`` refuse, since every port of
    an xDS-enabled server takes its security from the mesh."""

    server: grpc.Server

    def __init__(self, server: grpc.Server, service: str, link: AgentLink) -> None:
        self.server = server
        self.service = service
        self._link = link
        self.mode = ""

    def add_port(self, address: str) -> int:
        """Adds ``address`` (``IP:PORT``; not port 0: grpc's xDS server binds a port only
        once its Listener has come) and declares it to the agent; returns the port. The
        server serves once the agent's Listener has reached it."""
        port = _port_of(address)
        if not port:
            raise ConfigError(
                f"mesh server of {self.service!r}: {address}: give the port to listen on; "
                f"grpc's xDS-enabled server binds only once its Listener has come, so it "
                f"cannot tell which port 0 would be"
            )
        credentials = grpc.xds_server_credentials(grpc.insecure_server_credentials())
        self.server.add_secure_port(address, credentials)  # -1: bound later
        mode, has_identity = _declare(self._link, self.service, listening_addresses(address, port))
        _identity(self._link, self.service, mode, has_identity)
        self.mode = mode
        return port

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float | None) -> threading.Event:
        return self.server.stop(grace)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)


class _Reloader:
    """The ``certificate_configuration_fetcher`` of an asyncio server's credentials: the
    agent's files of the identity, read again at the next handshake after ``current`` moved
    to a new version."""

    def __init__(self, current: Path) -> None:
        self.current = current
        self.version = ""
        self._lock = threading.Lock()

    def configuration(self) -> Any:
        version = Path(os.path.realpath(self.current))
        material = TlsFiles(version / CERT_FILE, version / KEY_FILE, version / CA_FILE).read()
        self.version = str(version)
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.cert)], root_certificates=material.ca
        )

    def __call__(self) -> Any:
        with self._lock:
            if os.path.realpath(self.current) == self.version:
                return None
            try:
                configuration = self.configuration()
            except MeshError as error:
                log.warning("renewed identity files not read; keeping the last", error=str(error))
                return None
            log.info("server certificate reloaded", files=self.version)
            return configuration


class AioMeshServer(_ServerOfService, grpc.aio.Server):
    """A ``grpc.aio.server`` serving one mesh service; ports are added with
    :meth:`add_port`."""

    server: grpc.aio.Server

    def __init__(
        self,
        server: grpc.aio.Server,
        service: str,
        link: AgentLink,
        authorization: AuthorizationInterceptor,
    ) -> None:
        self.server = server
        self.service = service
        self._link = link
        self.authorization = authorization
        self.mode = ""

    def add_port(self, address: str) -> int:
        """Binds ``address`` as the service's mode says (asked of the agent, blocking: call
        it at start-up); the port bound."""
        mode, has_identity = _declare(self._link, self.service, [""])
        current = _identity(self._link, self.service, mode, has_identity)
        parsed = service_of_id(IDENTITY.spiffe_id) if current is not None else None
        self.authorization.trust_domain = parsed[0] if parsed is not None else None
        _wait_for_rules(self._link, self.service)
        if mode == SECURITY_STRICT:
            assert current is not None  # _identity raises otherwise
            reloader = _Reloader(current)
            credentials = grpc.dynamic_ssl_server_credentials(
                reloader.configuration(), reloader, require_client_authentication=True
            )
            port = self.server.add_secure_port(address, credentials)
        else:
            port = self.server.add_insecure_port(address)
        if not port:
            raise ConfigError(f"mesh server of {self.service!r}: could not bind {address}")
        _declare(self._link, self.service, listening_addresses(address, port))
        self.mode = mode
        return port

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float | None) -> None:
        await self.server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self.server.wait_for_termination(timeout)


def mesh_server(
    service: str,
    *,
    thread_pool: futures.ThreadPoolExecutor | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    options: Sequence[tuple[str, Any]] | None = None,
    agent: str | None = None,
    fallback_control: str | None = None,
    node_id: str | None = None,
    tls: TlsFiles | None = None,
) -> MeshServer:
    """A server of mesh service ``service``: grpcio's xDS-enabled server, secured as the
    service's policy says (see the module's docstring), with
    :class:`~mesh_agent.client.MeshServerInterceptor` (traces and metrics) before
    ``interceptors``. ``agent``, ``fallback_control``, ``node_id``, ``tls``: as for
    :func:`~mesh_agent.client.mesh_channel` (one bootstrap per process)."""
    link = _setup_link(agent, fallback_control, node_id, tls)
    _audit_denials()
    server = grpc.server(
        thread_pool or futures.ThreadPoolExecutor(max_workers=16),
        interceptors=[MeshServerInterceptor(), *interceptors],
        options=options,
        xds=True,
    )
    return MeshServer(server, service, link)


def aio_mesh_server(
    service: str,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    options: Sequence[tuple[str, Any]] | None = None,
    agent: str | None = None,
    fallback_control: str | None = None,
    node_id: str | None = None,
    tls: TlsFiles | None = None,
) -> AioMeshServer:
    """A ``grpc.aio`` server of mesh service ``service``. grpcio (1.85) has no xDS-enabled
    asyncio server, so this one takes the service's mode from the agent when a port is
    added, and in ``strict`` mode serves ``ssl_server_credentials`` from the agent's files of
    the service's identity (client certificates required), reloaded on renewal; a change of
    mode needs a restart. With :class:`~mesh_agent.client.AioMeshServerInterceptor` before
    ``interceptors``."""
    link = _setup_link(agent, fallback_control, node_id, tls)
    link.watch(service)  # its call policy carries the authorization rules
    authorization = AuthorizationInterceptor(link, service, None)
    server = grpc.aio.server(
        interceptors=[AioMeshServerInterceptor(), authorization, *interceptors],
        options=options,
    )
    return AioMeshServer(server, service, link, authorization)


__all__ = ["AioMeshServer", "MeshServer", "aio_mesh_server", "listening_addresses", "mesh_server"]
