"""mesh-agent: the node agent, assembled from components.

:class:`Agent` holds what belongs to the process: its settings and the xDS node it presents
(shared with every component through its context, as ``agent`` and ``node``), the lock on its
unix socket, and the :class:`~mesh_agent.components.Supervisor` of its components. The
components do the work; each owns its part, is built with no arguments (as a plug-in is) and
reaches the others only through its context, by the protocols of
:mod:`~mesh_agent.daemon.roles`. So one given under the same name through the
``mesh_agent.components`` entry point group replaces the built-in everywhere.

========== ============================ ==================================================
component  requires                     does (module)
========== ============================ ==================================================
cache      -                            the node's config cache, loaded from the state dir
                                        (:mod:`~mesh_agent.daemon.cache`)
upstream   cache                        the ADS stream to the control plane, with failover;
                                        asks for what the cache refers to and what the
                                        others demand (:mod:`~mesh_agent.daemon.upstream`)
health     cache                        active grpc.health.v1 checks of the endpoints
                                        served, and their verdicts
                                        (:mod:`~mesh_agent.daemon.health`)
breakers   cache                        the node's circuit breakers, their policies from
                                        the cache, their state in the state dir
                                        (:mod:`~mesh_agent.daemon.breakers`)
reporter   upstream, breakers           registrations, local NACKs and the agent's health
                                        (its components, open breakers), to the control
                                        server the upstream is connected to
                                        (:mod:`~mesh_agent.daemon.reporter`)
identities cache, upstream, reporter    certificates of the service identities the node
                                        holds (its registered services' with
                                        security.hosts, and --identity), signed by the
                                        control server, renewed at half-life
                                        (:mod:`~mesh_agent.daemon.identities`)
traffic    upstream, breakers           the calls of local processes per caller and service,
                                        sent every few seconds to the control server the
                                        upstream is connected to, for the service graph
                                        (:mod:`~mesh_agent.daemon.traffic`)
server     cache, health, breakers,     local ADS, agent API, CSDS, health, reflection on
           upstream, reporter,          the unix socket and the TCP listener
           identities, traffic          (:mod:`~mesh_agent.daemon.server`)
========== ============================ ==================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import structlog

from mesh_agent.components import Component, Supervisor, load_components
from mesh_agent.daemon.breakers.component import BreakersComponent
from mesh_agent.daemon.cache import CacheComponent
from mesh_agent.daemon.health.component import HealthComponent
from mesh_agent.daemon.identities.component import IdentitiesComponent
from mesh_agent.daemon.reporter import ReporterComponent
from mesh_agent.daemon.roles import SERVER, ServerRole
from mesh_agent.daemon.server import ServerComponent
from mesh_agent.daemon.settings import NODE, SETTINGS, AgentSettings, node_of
from mesh_agent.daemon.traffic import TrafficComponent
from mesh_agent.daemon.unix_socket import SocketLock, make_socket_dir
from mesh_agent.daemon.upstream.component import UpstreamComponent
from mesh_core.errors import ComponentFatalError

log = structlog.get_logger(__name__)


def builtin_components() -> list[Component]:
    """A fresh set of the built-in components, in the order of the table above."""
    return [
        CacheComponent(),
        UpstreamComponent(),
        HealthComponent(),
        BreakersComponent(),
        ReporterComponent(),
        IdentitiesComponent(),
        TrafficComponent(),
        ServerComponent(),
    ]


class Agent:
    """The node agent's process-wide state and lifecycle. Event-loop owned."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.node = node_of(settings)
        self.supervisor: Supervisor | None = None
        self._lock: SocketLock | None = None

    @property
    def addresses(self) -> list[str]:
        """Where the agent serves, as its ``server`` component says (empty before start)."""
        if self.supervisor is None:
            return []
        return list(self.supervisor.context.require(SERVER, ServerRole).addresses)

    async def start(self, components: Sequence[Component] | None = None) -> None:
        """Starts the components (the built-in ones and those of the entry point group,
        unless ``components`` are given). Raises :class:`~mesh_core.errors.SocketInUseError`
        when the unix socket is another agent's: its lock is taken before any component
        starts, so an agent that must give way touches nothing (not the socket, not the state
        dir, not the control server). Raises :class:`~mesh_core.errors.ComponentFatalError`,
        everything stopped, when a component cannot run as set up (the socket cannot be made
        as asked)."""
        settings = self.settings
        if settings.socket and self._lock is None:
            path = Path(settings.socket)
            make_socket_dir(path.parent)
            self._lock = SocketLock.acquire(path)
        try:
            if settings.state_dir is not None:
                settings.state_dir.mkdir(parents=True, exist_ok=True)
            self.supervisor = Supervisor(
                list(components)
                if components is not None
                else load_components(builtin_components()),
                settings={SETTINGS: settings, NODE: self.node},
                state_dir=settings.state_dir or Path("."),
            )
            await self.supervisor.start()
        except BaseException:
            self._release()
            raise

    async def failure(self) -> ComponentFatalError:
        """Waits until a component fails in a way that must stop the agent; returns why."""
        assert self.supervisor is not None, "started first"
        return await self.supervisor.failure()

    async def stop(self) -> None:
        """Stops the components (the server first: health goes NOT_SERVING, local streams
        drain) and lets go of the socket."""
        if self.supervisor is not None:
            await self.supervisor.stop()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


__all__ = ["Agent", "builtin_components"]
