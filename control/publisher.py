"""Follows the store and feeds the snapshot cache, coalescing bursts of changes."""

from __future__ import annotations

import asyncio

import structlog

from mesh.v1 import config_pb2

from .store import Store
from .xds.snapshot import SnapshotCache

log = structlog.get_logger(__name__)


class Publisher:
    """Keeps ``cache`` equal to the store's content.

    A change is published once the store has been quiet for ``debounce`` seconds, and never
    later than ``max_delay`` after the first change of a burst, so a burst of applies becomes
    one push and a steady trickle still gets through. ``pushes`` counts publications.
    """

    def __init__(
        self,
        store: Store,
        cache: SnapshotCache,
        *,
        debounce: float = 0.1,
        max_delay: float = 1.0,
    ) -> None:
        self._store = store
        self._cache = cache
        self._debounce = debounce
        self._max_delay = max_delay
        self._services: dict[str, config_pb2.Service] = {}
        self._revision = 0
        self._last_change = 0.0
        self._dirty = asyncio.Event()
        self.pushes = 0

    async def run(self) -> None:
        revision, stored = await self._store.list()
        self._services = {s.service.name: s.service for s in stored}
        self._revision = revision
        self._publish()
        follower = asyncio.create_task(self._follow(revision))
        try:
            await self._publish_loop()
        finally:
            follower.cancel()

    async def _follow(self, after: int) -> None:
        loop = asyncio.get_running_loop()
        async for event in self._store.watch(after):
            if event.service is None:
                self._services.pop(event.name, None)
            else:
                self._services[event.name] = event.service
            self._revision = max(self._revision, event.revision)
            self._last_change = loop.time()
            self._dirty.set()

    async def _publish_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._dirty.wait()
            deadline = loop.time() + self._max_delay
            while (wait := min(self._last_change + self._debounce, deadline) - loop.time()) > 0:
                await asyncio.sleep(wait)
            self._dirty.clear()
            self._publish()

    def _publish(self) -> None:
        self._cache.set_services(self._revision, self._services.values())
        self.pushes += 1
        log.info("config published", revision=self._revision, services=len(self._services))
