"""The agent's ``server`` component: its gRPC server for the processes of the node.

It serves, on the unix socket (mode 0660 unless set otherwise, made by
:mod:`~mesh_agent.daemon.unix_socket`) and on the optional loopback TCP listener (with mTLS
there, only the node's own identity and those in ``listen_allow`` may use it:
:class:`~mesh_agent.daemon.listener_access.ListenerAccess`):

* local ADS: the cached config with endpoint health from the checks
  (:class:`~mesh_agent.daemon.local.LocalSnapshotSource`), by the same protocol code as the
  control server's. What local processes subscribe to, and the services whose breakers they
  watch, are its demand on the upstream; their NACKs are reported.
* ``mesh.v1.AgentService`` (:mod:`~mesh_agent.daemon.api`): registrations, breaker outcomes
  and watches, the agent's status (:mod:`~mesh_agent.daemon.status`), with the service
  identities the node holds (:mod:`~mesh_agent.daemon.identities`).
* CSDS, ``grpc.health.v1`` (the agent, and each component under its own name, following the
  supervisor) and reflection.

A socket that cannot be made as asked stops the agent
(:class:`~mesh_core.errors.ComponentFatalError`); the socket's lock is the agent's, taken
before any component starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh.v1 import agent_pb2, agent_pb2_grpc
from mesh_agent.components import AgentContext
from mesh_agent.daemon.api import AgentCsdsServicer, AgentServicer
from mesh_agent.daemon.breakers.service import BreakerHub
from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.health.table import HealthTable
from mesh_agent.daemon.identities.keeper import PROCESS, IdentityKeeper
from mesh_agent.daemon.local import LocalSnapshotSource, ZonePriorities, zone_priorities
from mesh_agent.daemon.reporter import MAX_REPORTED_ENDPOINTS, Reporter
from mesh_agent.daemon.roles import (
    BREAKERS,
    CACHE,
    HEALTH,
    IDENTITIES,
    REPORTER,
    SERVER,
    TRAFFIC,
    UPSTREAM,
    BreakersRole,
    CacheRole,
    HealthRole,
    IdentitiesRole,
    ReporterRole,
    TrafficRole,
    Upstream,
)
from mesh_agent.daemon.servers import Declarations, ProcessRequests
from mesh_agent.daemon.settings import NODE, SETTINGS, AgentSettings
from mesh_agent.daemon.status import agent_status, identity_statuses
from mesh_agent.daemon.unix_socket import (
    SocketId,
    bind_unix_socket,
    make_socket_dir,
    remove_own_socket,
)
from mesh_agent.daemon.upstream.interest import local_demand
from mesh_core.errors import ComponentFatalError, SocketSetupError, UnavailableError
from mesh_core.limits import Limits
from mesh_core.rpc_server import AioMeshServerInterceptor
from mesh_core.tls import server_credentials
from mesh_xds.callbacks import Callbacks, SessionCallbacks
from mesh_xds.metrics import AGENT, XdsMetrics
from mesh_xds.registry import SessionRegistry
from mesh_xds.servicer import AdsServicer, add_ads_servicer
from mesh_xds.session import Session, TypeState
from mesh_xds.types import SERVICE_POLICY

log = structlog.get_logger(__name__)

SERVICE_NAMES = (
    ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name,
    csds_pb2.DESCRIPTOR.services_by_name["ClientStatusDiscoveryService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
)
LOCAL_ADS = "local ADS sessions"
"""The server's demand on the upstream for what local processes subscribe to."""
DECLARED = "declared servers and identities"
"""The server's demand on the upstream for the policies of the services processes declared
they serve or whose identity they use."""
BREAKER_WATCHERS = "breaker watchers"
"""The server's demand on the upstream for the policies of the services watched."""
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class LocalDemand(SessionCallbacks):
    """The hooks of every local ADS session: what local processes subscribe to becomes what
    the agent asks upstream for (also when a session ends), and their NACKs are reported."""

    def __init__(self, sessions: SessionRegistry, upstream: Upstream, reporter: Reporter) -> None:
        self._sessions = sessions
        self._upstream = upstream
        self._reporter = reporter

    def ask(self) -> None:
        self._upstream.demand(LOCAL_ADS, local_demand(self._sessions.sessions()))

    def on_subscribe(self, session: Session, state: TypeState) -> None:
        self.ask()

    def on_nack(self, session: Session, state: TypeState) -> None:
        self._reporter.status_changed()

    def on_close(self, session: Session) -> None:
        self.ask()  # the registry no longer holds it


def watched_policies(upstream: Upstream, hub: BreakerHub) -> None:
    """Asks upstream for the policies of the services whose breakers local processes watch."""
    upstream.demand(BREAKER_WATCHERS, {SERVICE_POLICY: hub.watched()})


def local_source(
    ctx: AgentContext,
    cache: ConfigCache,
    table: HealthTable,
    upstream: Upstream,
    declarations: Declarations,
) -> LocalSnapshotSource:
    """What local ADS serves: the cache, with the health table's overrides, and the Listeners
    of the servers processes declared, rebuilt when any of them changes, and ending local
    streams with the reason while there is no config and no control server to get it
    from."""
    source = LocalSnapshotSource(
        cache,
        table.verdict,
        lambda: upstream.unreachable,
        lambda: declarations.listeners(cache),
    )
    ctx.connect(cache.changed, source.cache_changed)
    ctx.connect(declarations.changed, source.listeners_changed)
    ctx.connect(table.changed, source.verdict_changed)

    def unreachable(reason: str) -> None:
        if not source.loaded:
            source.invalidate()  # local streams waiting for config learn why none comes

    ctx.connect(upstream.on_unreachable, unreachable)
    return source


def follow_declarations(
    ctx: AgentContext, declarations: Declarations, keeper: IdentityKeeper, upstream: Upstream
) -> None:
    """Keeps the identities processes use wanted, and the policies of the services they
    serve or use asked for upstream."""

    def changed() -> None:
        keeper.want(PROCESS, declarations.identities)
        upstream.demand(DECLARED, {SERVICE_POLICY: frozenset(declarations.services())})

    ctx.connect(declarations.changed, changed)
    changed()


def once_per_burst(refresh: Callable[[], None]) -> Callable[..., None]:
    """A signal observer that runs ``refresh`` once, on the loop's next turn, for however many
    emissions come before it (whatever they carry)."""
    loop = asyncio.get_running_loop()
    pending = False

    def run() -> None:
        nonlocal pending
        pending = False
        refresh()

    def changed(*_: object) -> None:
        nonlocal pending
        if not pending:
            pending = True
            loop.call_soon(run)

    return changed


def follow_zone_priorities(
    ctx: AgentContext, source: LocalSnapshotSource, node: base_pb2.Node, reporter: Reporter
) -> None:
    """Keeps the reporter's ``zone_priorities`` (sent to the control server with the agent's
    health, shown by ``meshctl status``) as the node is served, and reports a change: a zone
    that spills over or fails over shows at once. Worked out once per burst of changes, from
    the assignments that changed."""
    priorities = ZonePriorities()

    def refresh() -> None:
        if not source.loaded:
            return
        now = priorities.update(source.snapshot_for(node))
        if now != reporter.zone_priorities:
            reporter.zone_priorities = now
            reporter.status_changed()

    ctx.connect(source.changed, once_per_burst(refresh))
    refresh()


def follow_endpoint_checks(ctx: AgentContext, table: HealthTable, reporter: Reporter) -> None:
    """Keeps the reporter's ``endpoint_checks`` (each checked endpoint's state, sent to the
    control server with the agent's health: the web page shows them) as the checks judge,
    and reports a change. Worked out once per burst of verdicts."""

    def refresh() -> None:
        now: list[tuple[str, str, str, bool]] = []
        for service in sorted(table.services()):
            applied = not table.in_panic(service)
            for address, state in sorted(table.statuses(service).items()):
                now.append((service, address, state, applied))
        del now[MAX_REPORTED_ENDPOINTS:]
        if now != reporter.endpoint_checks:
            reporter.endpoint_checks = now
            reporter.status_changed()

    changed = once_per_burst(refresh)
    ctx.connect(table.statuses_changed, changed)
    ctx.connect(table.changed, changed)  # panic
    refresh()


class ServerComponent:
    """The built-in server. The local sessions are kept across restarts of the component;
    the gRPC server and its health servicer are made at every start."""

    name = SERVER
    requires = (CACHE, HEALTH, BREAKERS, UPSTREAM, REPORTER, IDENTITIES, TRAFFIC)

    def __init__(self) -> None:
        self.sessions = SessionRegistry()
        self._addresses: list[str] = []
        self._server: grpc.aio.Server | None = None
        self._socket: tuple[Path, SocketId] | None = None
        self._health: health.aio.HealthServicer | None = None
        self._grace = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._declarations: Declarations | None = None

    @property
    def addresses(self) -> Sequence[str]:
        return tuple(self._addresses)

    async def start(self, ctx: AgentContext) -> None:
        settings = ctx.setting(SETTINGS, AgentSettings)
        node = ctx.setting(NODE, base_pb2.Node)
        cache = ctx.require(CACHE, CacheRole).cache
        table = ctx.require(HEALTH, HealthRole).table
        hub = ctx.require(BREAKERS, BreakersRole).hub
        upstream = ctx.require(UPSTREAM, Upstream)
        reporter = ctx.require(REPORTER, ReporterRole).reporter
        keeper = ctx.require(IDENTITIES, IdentitiesRole).keeper
        traffic = ctx.require(TRAFFIC, TrafficRole).counter
        self._grace = settings.grace
        if self._declarations is None:
            self._declarations = Declarations(settings.state_dir, keeper.trust_domain)
            self._declarations.load()
        declarations = self._declarations
        follow_declarations(ctx, declarations, keeper, upstream)
        source = local_source(ctx, cache, table, upstream, declarations)
        if node.locality.zone:
            follow_zone_priorities(ctx, source, node, reporter)
        follow_endpoint_checks(ctx, table, reporter)
        demand = LocalDemand(self.sessions, upstream, reporter)
        demand.ask()
        watched_policies(upstream, hub)
        ctx.connect(hub.watched_changed, lambda: watched_policies(upstream, hub))
        reporter.report_local(self.sessions)
        self._health = await self._component_health(ctx)

        # Outermost, the calls' durations (rpc.server.call.duration), refusals included.
        interceptors: list[grpc.aio.ServerInterceptor] = [AioMeshServerInterceptor()]
        if settings.listen and settings.tls is not None:
            # Only a TLS listener checks its callers (and loads the server interceptors).
            from mesh_agent.daemon.listener_access import ListenerAccess, node_identity

            own = node_identity(settings.tls, node.id)
            interceptors.append(ListenerAccess(own, settings.listen_allow))
        server = grpc.aio.server(interceptors=interceptors, options=Limits().server_options())
        add_ads_servicer(
            AdsServicer(source, self.sessions, node.id, Callbacks(demand, XdsMetrics(AGENT))),
            server,
        )
        csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(
            AgentCsdsServicer(node, cache, upstream, self.sessions), server
        )

        def status() -> agent_pb2.GetAgentStatusResponse:
            components = ctx.statuses()
            registrations = reporter.registrations
            response = agent_status(node.id, upstream, cache, components, table, hub, registrations)
            response.zone = node.locality.zone
            response.identities.extend(identity_statuses(keeper.held()))
            response.servers.extend(declarations.statuses(cache))
            if source.loaded:
                for service, zone, priority in zone_priorities(source.snapshot_for(node)):
                    response.zone_priorities.add(service=service, zone=zone, priority=priority)
            return response

        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentServicer(
                reporter,
                hub,
                status,
                ProcessRequests(declarations, keeper, cache),
                traffic=traffic,
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((*SERVICE_NAMES, reflection.SERVICE_NAME), server)
        self._addresses = await self._listen(server, settings)
        await server.start()
        self._server = server
        await self._health.set("", SERVING)
        log.info("agent serving", addresses=self._addresses, node=node.id)

    async def _component_health(self, ctx: AgentContext) -> health.aio.HealthServicer:
        """A health servicer with every component under its own name, following the
        supervisor from now on."""
        servicer = health.aio.HealthServicer()
        for state in ctx.statuses():
            await servicer.set(state.name, SERVING if state.state == "running" else NOT_SERVING)
        ctx.connect(ctx.component_changed, self._component_changed)
        return servicer

    async def _listen(self, server: grpc.aio.Server, settings: AgentSettings) -> list[str]:
        """Binds ``server`` to the unix socket and the TCP listener; returns the addresses."""
        addresses: list[str] = []
        if settings.socket:
            path = Path(settings.socket)
            make_socket_dir(path.parent)
            try:
                socket_id = bind_unix_socket(server, path, settings)
            except SocketSetupError as error:
                await server.stop(None)
                raise ComponentFatalError(str(error)) from error
            self._server, self._socket = server, (path, socket_id)  # stop() removes it
            addresses.append(f"unix:{path}")
        if settings.listen:
            port = (
                server.add_secure_port(settings.listen, server_credentials(settings.tls))
                if settings.tls is not None
                else server.add_insecure_port(settings.listen)
            )
            if port == 0:
                raise UnavailableError(f"cannot listen on {settings.listen}")
            addresses.append(f"{settings.listen.rpartition(':')[0]}:{port}")
        return addresses

    def _component_changed(self, name: str, serving: bool) -> None:
        if self._health is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._health.set(name, SERVING if serving else NOT_SERVING)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        return None  # grpc serves on its own; it stays up until shutdown

    async def stop(self) -> None:
        if self._health is not None:
            await self._health.enter_graceful_shutdown()  # NOT_SERVING before anything goes
        if self._socket is not None:
            remove_own_socket(*self._socket)  # new clients find no socket from here on
            self._socket = None
        if self._server is not None:
            await self._server.stop(self._grace)
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        self._addresses = []


__all__ = ["SERVICE_NAMES", "ServerComponent"]
