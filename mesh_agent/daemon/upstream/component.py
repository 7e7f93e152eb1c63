"""The agent's ``upstream`` component: the built-in :class:`~mesh_agent.daemon.roles.Upstream`,
an :class:`~mesh_agent.daemon.upstream.client.UpstreamClient` on the shared settings, asking
the control plane for what the cached config refers to and what the agent's other parts
demand. It shows as degraded, with the reason, while no control server can be reached."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3 import base_pb2

from mesh_agent.components import AgentContext
from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.roles import CACHE, UPSTREAM, CacheRole
from mesh_agent.daemon.settings import NODE, SETTINGS, AgentSettings
from mesh_agent.daemon.upstream.client import UpstreamClient
from mesh_agent.daemon.upstream.interest import Demand, References, compute_interest, merged
from mesh_agent.daemon.upstream.stream import TypeStats
from mesh_core.signals import Signal
from mesh_xds.types import CLUSTER, LISTENER, TypeUrl


class UpstreamComponent:
    """The built-in upstream. Its client is made at the first start and kept across
    restarts; its signals relay the client's."""

    name = UPSTREAM
    requires = (CACHE,)

    def __init__(self) -> None:
        self.on_connect: Signal[[str]] = Signal()
        self.on_disconnect: Signal[[]] = Signal()
        self.on_unreachable: Signal[[str]] = Signal()
        self._client: UpstreamClient | None = None
        self._cache: ConfigCache | None = None
        self._references = References()
        self._demand: dict[str, Demand] = {}

    # -- the Upstream role ---------------------------------------------------------------------

    @property
    def connected_to(self) -> str:
        return self._client.connected_to if self._client is not None else ""

    @property
    def unreachable(self) -> str:
        return self._client.unreachable if self._client is not None else ""

    @property
    def stats(self) -> Mapping[TypeUrl, TypeStats]:
        return self._client.stats if self._client is not None else {}

    def demand(self, source: str, wanted: Demand) -> None:
        self._demand[source] = dict(wanted)
        self._ask()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, ctx: AgentContext) -> None:
        cache = ctx.require(CACHE, CacheRole).cache
        if self._client is None:
            settings = ctx.setting(SETTINGS, AgentSettings)
            client = UpstreamClient(
                settings.control,
                ctx.setting(NODE, base_pb2.Node),
                cache,
                tls=settings.tls,
                protocol=settings.xds_protocol,
            )
            client.on_connect.connect(self.on_connect.emit)
            client.on_disconnect.connect(self.on_disconnect.emit)
            client.on_unreachable.connect(self.on_unreachable.emit)
            self._client = client
        self._cache = cache
        self._references = References.of(cache)
        ctx.connect(cache.changed, self._cache_changed)
        ctx.connect(self.on_connect, lambda server: ctx.recovered())
        ctx.connect(
            self.on_unreachable,
            lambda reason: ctx.degraded(f"not connected to a control server: {reason}"),
        )
        self._ask()

    async def run(self) -> None:
        assert self._client is not None, "started first"
        await self._client.run()

    async def stop(self) -> None:
        return None

    def _cache_changed(self) -> None:
        """Asks again only when listeners or clusters came, went or refer elsewhere: routes,
        endpoints and policies refer to nothing the agent would ask for."""
        assert self._cache is not None
        change = self._cache.last_change
        if (LISTENER in change or CLUSTER in change) and self._references.update(
            self._cache, change
        ):
            self._ask()

    def _ask(self) -> None:
        """Follows the cache and the demand: what the client subscribes to upstream."""
        if self._client is None or self._cache is None:
            return
        demand = merged(self._demand.values())
        interest = compute_interest(self._cache, demand, self._references)
        for type_url, names in interest.items():
            self._client.want(type_url, names)


__all__ = ["UpstreamComponent"]
