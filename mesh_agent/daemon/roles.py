"""What each of the agent's built-in components is to the others: its name, and the protocol
another component asks its context for (``ctx.require(UPSTREAM, Upstream)``).

A component that replaces a built-in one through the ``mesh_agent.components`` entry point
group must satisfy that protocol; since every component reaches the others only through its
context, the replacement is then what they all use, and the built-in is never built into the
wiring. Most built-ins own one plain object and their role is to hand it out (the config
cache, the health table, the breaker hub, the reporter), so a replacement brings its own such
object. The upstream's role is behaviour: what keeps the cache filled, whether and where it is
connected, and what it is asked for. A replacement can be anything that fills the cache (a
file, another protocol, a test's fake) and emits the signals.

========== ============== ========================================================
name       protocol       what the others use
========== ============== ========================================================
cache      CacheRole      ``.cache``: the :class:`ConfigCache` every part reads
upstream   Upstream       where it is connected and the signals that say so, why no
                          control server can be reached, per-type stats, ``demand``
health     HealthRole     ``.table``: the endpoints' health and the verdicts served
breakers   BreakersRole   ``.hub``: the node's circuit breakers as a service
reporter   ReporterRole   ``.reporter``: registrations, and the reports it sends
identities IdentitiesRole ``.keeper``: the service identities the node holds
traffic    TrafficRole    ``.counter``: the calls of local processes, per caller and service
server     ServerRole     ``.addresses`` the agent serves on
========== ============== ========================================================

The protocols are checked at run time (``isinstance``), which looks at names only: a
property or a plain attribute both do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mesh_agent.daemon.breakers.service import BreakerHub
    from mesh_agent.daemon.cache import ConfigCache
    from mesh_agent.daemon.health.table import HealthTable
    from mesh_agent.daemon.identities.keeper import IdentityKeeper
    from mesh_agent.daemon.reporter import Reporter
    from mesh_agent.daemon.traffic import TrafficCounter
    from mesh_agent.daemon.upstream.interest import Interest
    from mesh_agent.daemon.upstream.stream import TypeStats
    from mesh_core.signals import Signal
    from mesh_xds.types import TypeUrl

CACHE: Final = "cache"
UPSTREAM: Final = "upstream"
HEALTH: Final = "health"
BREAKERS: Final = "breakers"
REPORTER: Final = "reporter"
IDENTITIES: Final = "identities"
SERVER: Final = "server"
TRAFFIC: Final = "traffic"


@runtime_checkable
class CacheRole(Protocol):
    @property
    def cache(self) -> ConfigCache:
        """The node's config cache: the last good config, persisted in the state dir."""
        ...


@runtime_checkable
class Upstream(Protocol):
    """What keeps the node's config cache filled from the control plane, as the reporter
    (where to report), the server (what local processes ask for; why there is no config yet)
    and the agent's status and CSDS see it. Event-loop owned; the signals are emitted on
    that loop."""

    @property
    def connected_to(self) -> str:
        """The control server the upstream is connected to; empty while it is not."""
        ...

    @property
    def unreachable(self) -> str:
        """Why no control server can be reached, once that has lasted long enough to tell
        from a blip; empty otherwise."""
        ...

    @property
    def stats(self) -> Mapping[TypeUrl, TypeStats]:
        """Per resource type: responses received, and the last one NACKed and why."""
        ...

    @property
    def on_connect(self) -> Signal[[str]]:
        """Emitted with the control server's address on every (re)connection."""
        ...

    @property
    def on_disconnect(self) -> Signal[[]]:
        """Emitted when the connection to the control server is lost."""
        ...

    @property
    def on_unreachable(self) -> Signal[[str]]:
        """Emitted with the reason after every attempt that did not get (or lost) a
        connection."""
        ...

    def demand(self, source: str, wanted: Mapping[TypeUrl, Interest]) -> None:
        """What ``source`` (a part of the agent: the local ADS sessions, the breaker
        watchers) asks for, per type (None: every resource of the type); replaces what
        ``source`` asked for before. The upstream asks the control plane for the union of
        every source's demand and what the cached config refers to."""
        ...


@runtime_checkable
class HealthRole(Protocol):
    @property
    def table(self) -> HealthTable:
        """The health of every checked endpoint, and the overrides served in local EDS."""
        ...


@runtime_checkable
class BreakersRole(Protocol):
    @property
    def hub(self) -> BreakerHub:
        """The node's circuit breakers: outcomes in, states and transitions out."""
        ...


@runtime_checkable
class ReporterRole(Protocol):
    @property
    def reporter(self) -> Reporter:
        """Registrations made on the node, and the reports sent to the control server."""
        ...


@runtime_checkable
class IdentitiesRole(Protocol):
    @property
    def keeper(self) -> IdentityKeeper:
        """The service identities the node holds: their files, state and renewals."""
        ...


@runtime_checkable
class TrafficRole(Protocol):
    @property
    def counter(self) -> TrafficCounter:
        """Counts the outcomes local processes report, per caller and service."""
        ...


@runtime_checkable
class ServerRole(Protocol):
    @property
    def addresses(self) -> Sequence[str]:
        """Where the agent serves (``unix:PATH``, ``HOST:PORT``), once started."""
        ...


__all__ = [
    "BREAKERS",
    "CACHE",
    "HEALTH",
    "IDENTITIES",
    "REPORTER",
    "SERVER",
    "TRAFFIC",
    "UPSTREAM",
    "BreakersRole",
    "CacheRole",
    "HealthRole",
    "IdentitiesRole",
    "ReporterRole",
    "ServerRole",
    "TrafficRole",
    "Upstream",
]
