"""mesh-agent: the node agent, assembled from components.

:class:`Agent` owns the node's shared state (config cache, local snapshot source, local
sessions, health table, reporter, upstream client); the components below give each part its
lifecycle under the :class:`~mesh_agent.components.Supervisor`:

========== ============== =====================================================
component  requires       does
========== ============== =====================================================
cache      -              loads the last good config from the state dir
upstream   cache          the ADS stream to the control plane, with failover
health     cache          active grpc.health.v1 checks of the endpoints served
breakers   cache          the node's circuit breakers, fed by local interceptors
reporter   upstream       registrations, local NACKs and the agent's health (its
                          components, open breakers), to the control server
server     cache, health, local ADS, agent API, CSDS, health, reflection
           breakers
========== ============== =====================================================
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2, ads_pb2_grpc
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh.v1 import agent_pb2, agent_pb2_grpc, config_pb2, node_pb2
from mesh_agent import __version__
from mesh_agent.components import AgentContext, Component, Supervisor, load_components
from mesh_agent.daemon.api import AgentCsdsServicer, AgentServicer
from mesh_agent.daemon.breakers.service import BreakerHub
from mesh_agent.daemon.cache import ConfigCache, decode
from mesh_agent.daemon.health.checker import HealthChecker
from mesh_agent.daemon.health.table import HealthTable
from mesh_agent.daemon.listener_access import ListenerAccess, node_identity
from mesh_agent.daemon.local import LocalSessions, LocalSnapshotSource
from mesh_agent.daemon.reporter import Reporter, node_health
from mesh_agent.daemon.unix_socket import (
    SocketId,
    SocketLock,
    SocketSetupError,
    bind_unix_socket,
    make_socket_dir,
    remove_own_socket,
)
from mesh_agent.daemon.upstream.client import UpstreamClient
from mesh_agent.daemon.upstream.interest import compute_interest, local_demand, merged
from mesh_core.limits import Limits
from mesh_core.tls import TlsFiles, server_credentials
from mesh_xds.addresses import join_address
from mesh_xds.callbacks import Callbacks, SessionCallbacks
from mesh_xds.metrics import AGENT, XdsMetrics
from mesh_xds.servicer import AdsServicer
from mesh_xds.session import Session, TypeState
from mesh_xds.types import ENDPOINT, PUSH_ORDER, SERVICE_POLICY

log = structlog.get_logger(__name__)

SERVICE_NAMES = (
    ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name,
    csds_pb2.DESCRIPTOR.services_by_name["ClientStatusDiscoveryService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
)
DEFAULT_SOCKET = "/run/mesh-agent/agent.sock"
DEFAULT_STATE_DIR = "/var/lib/mesh-agent"


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


class Agent:
    """The node's shared state and the wiring between its parts. Event-loop owned."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.node = base_pb2.Node(
            id=settings.node_id,
            cluster=settings.cluster,
            locality=base_pb2.Locality(zone=settings.zone),
            user_agent_name="mesh-agent",
            user_agent_version=__version__,
        )
        if settings.state_dir is not None:
            settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.cache = ConfigCache(settings.state_dir, settings.node_id)
        self.table = HealthTable(panic_threshold=settings.panic_threshold)
        self.checker = HealthChecker(self.table)
        self.source = LocalSnapshotSource(
            self.cache, self.table.overrides, lambda: self.upstream.unreachable
        )
        self.local_registry = LocalSessions(lambda: self.update_interest())
        self.upstream = UpstreamClient(
            settings.control,
            self.node,
            self.cache,
            tls=settings.tls,
            protocol=settings.xds_protocol,
        )
        self.reporter = Reporter(
            settings.node_id,
            self.local_registry,
            settings.state_dir,
            settings.registrations,
            tls=settings.tls,
        )
        self.breakers = BreakerHub(settings.state_dir)
        self.health = health.aio.HealthServicer()
        self.addresses: list[str] = []
        self.supervisor: Supervisor | None = None
        self.socket_error: SocketSetupError | None = None
        self.socket_lock: SocketLock | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.cache.subscribe(self._config_changed)
        self.table.changed.connect(lambda service: self.source.invalidate())
        self.upstream.on_connect.connect(self.reporter.connected)
        self.upstream.on_disconnect.connect(self.reporter.disconnected)
        self.upstream.on_unreachable.connect(self._upstream_unreachable)
        self.reporter.health_source = self.node_health
        self.breakers.board.transitions.connect(lambda transition: self.reporter.status_changed())

    # -- wiring --------------------------------------------------------------------------------

    def _config_changed(self) -> None:
        self.update_interest()
        self.update_health_targets()
        self.breakers.apply_policies(self.cache)

    def _upstream_unreachable(self, reason: str) -> None:
        if not self.source.loaded:
            self.source.invalidate()  # local streams waiting for config learn why none comes

    def local_callbacks(self) -> SessionCallbacks:
        """The hooks of every local ADS session: what local processes subscribe to becomes
        what the agent asks upstream for; their NACKs are reported to the control server."""
        agent = self

        class Local(SessionCallbacks):
            def on_subscribe(self, session: Session, state: TypeState) -> None:
                agent.update_interest()

            def on_nack(self, session: Session, state: TypeState) -> None:
                agent.reporter.status_changed()

        return Callbacks(Local(), XdsMetrics(AGENT))

    def update_interest(self) -> None:
        demand = merged(
            [
                local_demand(self.local_registry.sessions()),
                {SERVICE_POLICY: self.breakers.watched()},
            ]
        )
        interest = compute_interest(self.cache, demand)
        for type_url, names in interest.items():
            self.upstream.want(type_url, names)

    def update_health_targets(self) -> None:
        policies = self.cache.resources(SERVICE_POLICY)
        checked: set[str] = set()
        for name, packed in self.cache.resources(ENDPOINT).items():
            policy_packed = policies.get(name)
            if policy_packed is None:
                continue
            policy = decode(policy_packed, SERVICE_POLICY)
            assert isinstance(policy, config_pb2.ServicePolicy)
            if not policy.policy.HasField("health_check"):
                continue
            assignment = decode(packed, ENDPOINT)
            assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
            addresses = [
                join_address(lb.endpoint.address.socket_address)
                for locality in assignment.endpoints
                for lb in locality.lb_endpoints
            ]
            self.checker.set_targets(name, addresses, policy.policy.health_check)
            checked.add(name)
        for service in set(self.checker.targets()) - checked:
            self.checker.remove_service(service)

    def component_changed(self, name: str, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        task = asyncio.get_running_loop().create_task(self.health.set(name, status))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.reporter.status_changed()

    def node_health(self) -> node_pb2.NodeHealth:
        """The agent's health as reported to the control server."""
        components = self.supervisor.statuses() if self.supervisor is not None else []
        return node_health(components, self.breakers)

    # -- status --------------------------------------------------------------------------------

    def status(self) -> agent_pb2.GetAgentStatusResponse:
        response = agent_pb2.GetAgentStatusResponse(
            node_id=self.node.id,
            upstream=self.upstream.connected_to,
            connected=self.upstream.connected,
            registrations=[r for _, r in sorted(self.reporter.registrations.items())],
        )
        for type_url in PUSH_ORDER:
            stats = self.upstream.stats.get(type_url)
            entry = self.cache.types.get(type_url)
            if stats is None and entry is None:
                continue
            response.types.add(
                type_url=type_url,
                version_acked=entry.version if entry else "",
                responses_received=stats.responses if stats else 0,
                resources=len(entry.resources) if entry else 0,
                last_nack=stats.last_nack if stats else "",
            )
        if self.supervisor is not None:
            for state in self.supervisor.statuses():
                response.components.add(
                    name=state.name,
                    state=state.state,
                    last_error=state.last_error or "",
                    restarts=state.restarts,
                )
        for service in self.table.services():
            in_panic = self.table.in_panic(service)
            for address, status in sorted(self.table.statuses(service).items()):
                response.endpoint_health.add(
                    service=service, address=address, state=status, applied=not in_panic
                )
        response.breakers.extend(self.breakers.statuses())
        if self.cache.updated_at:
            response.config_updated.FromNanoseconds(int(self.cache.updated_at * 1e9))
        return response

    # -- lifecycle -----------------------------------------------------------------------------

    def components(self) -> list[Component]:
        return load_components(
            [
                CacheComponent(self),
                UpstreamComponent(self),
                HealthComponent(self),
                BreakersComponent(self),
                ReporterComponent(self),
                ServerComponent(self),
            ]
        )

    async def start(self, components: Sequence[Component] | None = None) -> None:
        """Starts the components; raises :class:`SocketSetupError` (the agent exits) when the
        unix socket is another agent's or cannot be made as asked. The socket's lock is taken
        before any component starts, so an agent that must give way touches nothing: not the
        socket, not the state dir, not the control server."""
        if self.settings.socket and self.socket_lock is None:
            path = Path(self.settings.socket)
            make_socket_dir(path.parent)
            self.socket_lock = SocketLock.acquire(path)
        self.supervisor = Supervisor(
            list(components) if components is not None else self.components(),
            settings={"agent": self},
            state_dir=self.settings.state_dir or Path("."),
            on_change=self.component_changed,
        )
        await self.supervisor.start()
        if self.socket_error is not None:
            await self.stop()
            raise self.socket_error

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        if self.supervisor is not None:
            await self.supervisor.stop()
        for task in list(self._tasks):
            task.cancel()
        if self.socket_lock is not None:
            self.socket_lock.release()
            self.socket_lock = None


async def _forever() -> None:
    await asyncio.Event().wait()


class _AgentComponent:
    name = ""
    requires: tuple[str, ...] = ()

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def start(self, ctx: AgentContext) -> None:
        return None

    async def run(self) -> None:
        await _forever()

    async def stop(self) -> None:
        return None


class CacheComponent(_AgentComponent):
    name = "cache"

    @property
    def cache(self) -> ConfigCache:
        return self.agent.cache

    async def start(self, ctx: AgentContext) -> None:
        if not self.agent.cache.types:
            self.agent.cache.load()
        self.agent.update_interest()


class UpstreamComponent(_AgentComponent):
    """Degraded, with the reason, while no control server can be reached."""

    name = "upstream"
    requires = ("cache",)

    def __init__(self, agent: Agent) -> None:
        super().__init__(agent)
        self._ctx: AgentContext | None = None
        agent.upstream.on_connect.connect(self._connected)
        agent.upstream.on_unreachable.connect(self._unreachable)

    def _connected(self, server: str) -> None:
        if self._ctx is not None:
            self._ctx.recovered()

    def _unreachable(self, reason: str) -> None:
        if self._ctx is not None:
            self._ctx.degraded(f"not connected to a control server: {reason}")

    async def start(self, ctx: AgentContext) -> None:
        self._ctx = ctx

    async def run(self) -> None:
        await self.agent.upstream.run()


class HealthComponent(_AgentComponent):
    name = "health"
    requires = ("cache",)

    async def start(self, ctx: AgentContext) -> None:
        self.agent.update_health_targets()
        await self.agent.checker.start()

    async def stop(self) -> None:
        await self.agent.checker.stop()


class BreakersComponent(_AgentComponent):
    """The node's circuit breakers: restored from the state dir, policies from the cache."""

    name = "breakers"
    requires = ("cache",)

    async def start(self, ctx: AgentContext) -> None:
        self.agent.breakers.load()
        self.agent.breakers.apply_policies(self.agent.cache)

    async def run(self) -> None:
        await self.agent.breakers.run()


class ReporterComponent(_AgentComponent):
    name = "reporter"
    requires = ("upstream",)

    async def run(self) -> None:
        await self.agent.reporter.run()


class ServerComponent(_AgentComponent):
    """The agent's gRPC server: the unix socket (mode 0660 unless set otherwise) and the
    optional loopback TCP; with mTLS there, only the node's own identity and those in
    ``listen_allow`` may use it (:class:`~mesh_agent.daemon.listener_access.ListenerAccess`)."""

    name = "server"
    requires = ("cache", "health", "breakers")

    def __init__(self, agent: Agent) -> None:
        super().__init__(agent)
        self.server: grpc.aio.Server | None = None
        self.socket: tuple[Path, SocketId] | None = None

    async def start(self, ctx: AgentContext) -> None:
        agent = self.agent
        settings = agent.settings
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if settings.listen and settings.tls is not None:
            own = node_identity(settings.tls, agent.node.id)
            interceptors.append(ListenerAccess(own, settings.listen_allow))
        server = grpc.aio.server(interceptors=interceptors, options=Limits().server_options())
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            AdsServicer(agent.source, agent.local_registry, agent.node.id, agent.local_callbacks()),
            server,
        )
        csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(
            AgentCsdsServicer(agent), server
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(agent), server)
        health_pb2_grpc.add_HealthServicer_to_server(agent.health, server)
        reflection.enable_server_reflection((*SERVICE_NAMES, reflection.SERVICE_NAME), server)
        addresses: list[str] = []
        if settings.socket:
            path = Path(settings.socket)
            make_socket_dir(path.parent)
            try:
                socket_id = bind_unix_socket(server, path, settings)
            except SocketSetupError as error:
                await server.stop(None)
                agent.socket_error = error
                raise
            self.server, self.socket = server, (path, socket_id)  # stop() removes it
            addresses.append(f"unix:{path}")
        if settings.listen:
            port = (
                server.add_secure_port(settings.listen, server_credentials(settings.tls))
                if settings.tls is not None
                else server.add_insecure_port(settings.listen)
            )
            if port == 0:
                raise OSError(f"cannot listen on {settings.listen}")
            addresses.append(f"{settings.listen.rpartition(':')[0]}:{port}")
        await server.start()
        self.server = server
        agent.addresses = addresses
        await agent.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("agent serving", addresses=addresses, node=agent.node.id)

    async def stop(self) -> None:
        if self.socket is not None:
            remove_own_socket(*self.socket)  # new clients find no socket from here on
            self.socket = None
        if self.server is not None:
            await self.server.stop(self.agent.settings.grace)
            self.server = None


__all__ = ["Agent", "AgentSettings"]
