"""The agent's ``breakers`` component: the node's :class:`~mesh_agent.daemon.breakers.service.
BreakerHub`, its state restored from the state dir, its policies following the cached config,
its timer turning open breakers half-open on time, and the timer evaluating its early
warnings (:class:`~mesh_agent.daemon.breakers.risk.RiskBoard`). It hands the hub to the others
(:class:`~mesh_agent.daemon.roles.BreakersRole`)."""

from __future__ import annotations

import asyncio

from mesh_agent.components import AgentContext
from mesh_agent.daemon.breakers.service import BreakerHub
from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.roles import BREAKERS, CACHE, CacheRole
from mesh_agent.daemon.settings import SETTINGS, AgentSettings
from mesh_core.errors import ComponentError
from mesh_xds.types import SERVICE_POLICY


class BreakersComponent:
    """The built-in breakers; the hub is made at the first start and kept across restarts
    (its state is restored from the state dir at every start)."""

    name = BREAKERS
    requires = (CACHE,)

    def __init__(self) -> None:
        self._hub: BreakerHub | None = None

    @property
    def hub(self) -> BreakerHub:
        if self._hub is None:
            raise ComponentError("the breaker hub is made when the breakers component starts")
        return self._hub

    async def start(self, ctx: AgentContext) -> None:
        cache = ctx.require(CACHE, CacheRole).cache
        if self._hub is None:
            self._hub = BreakerHub(ctx.setting(SETTINGS, AgentSettings).state_dir)
        hub = self._hub
        hub.load()
        hub.apply_policies(cache)
        ctx.connect(cache.changed, lambda: self._cache_changed(cache))

    def _cache_changed(self, cache: ConfigCache) -> None:
        """Breakers and call policies follow the policies alone."""
        if SERVICE_POLICY in cache.last_change:
            self.hub.apply_policies(cache)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.hub.run())
            group.create_task(self.hub.risk.run())

    async def stop(self) -> None:
        return None


__all__ = ["BreakersComponent"]
