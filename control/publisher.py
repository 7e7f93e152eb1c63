"""Follows the store and the registered endpoints and feeds the snapshot cache, coalescing
bursts of changes."""

from __future__ import annotations

import asyncio
import time

import structlog

from control.registry import RegistrationSource, merge_registered
from control.store import Store
from mesh.v1 import config_pb2
from mesh_xds.cache import SnapshotCache

log = structlog.get_logger(__name__)


class Publisher:
    """Keeps ``cache`` equal to the store's content.

    A change is published once the store has been quiet for ``debounce`` seconds, and never
    later than ``max_delay`` after the first change of a burst, so a burst of applies becomes
    one push and a steady trickle still gets through. ``pushes`` counts publications.

    With ``registrations``, endpoints registered by nodes are merged into the services before
    publishing (:func:`~control.registry.merge_registered`), and a change of them goes
    through the same debounce as a store change.

    Each publication carries the ``time.monotonic()`` of the first change it coalesced
    (:attr:`~mesh_xds.snapshot.Snapshot.changed_at`), for the convergence time.
    """

    def __init__(
        self,
        store: Store,
        cache: SnapshotCache,
        *,
        debounce: float = 0.1,
        max_delay: float = 1.0,
        registrations: RegistrationSource | None = None,
    ) -> None:
        self._store = store
        self._registrations = registrations
        self._cache = cache
        self._debounce = debounce
        self._max_delay = max_delay
        self._services: dict[str, config_pb2.Service] = {}
        self._revision = 0
        self._last_change = 0.0
        self._first_change: float | None = None
        self._dirty = asyncio.Event()
        self.pushes = 0

    async def run(self) -> None:
        revision, stored = await self._store.list()
        self._services = {s.service.name: s.service for s in stored}
        self._revision = revision
        self._publish()
        follower = asyncio.create_task(self._follow(revision))
        unsubscribe = (
            self._registrations.subscribe(self.mark_dirty)
            if self._registrations is not None
            else None
        )
        try:
            await self._publish_loop()
        finally:
            if unsubscribe is not None:
                unsubscribe()
            follower.cancel()

    def mark_dirty(self) -> None:
        """Something the published config is built from changed: publish after the debounce."""
        self._last_change = asyncio.get_running_loop().time()
        if self._first_change is None:
            self._first_change = time.monotonic()
        self._dirty.set()

    async def _follow(self, after: int) -> None:
        async for event in self._store.watch(after):
            if event.service is None:
                self._services.pop(event.name, None)
            else:
                self._services[event.name] = event.service
            self._revision = max(self._revision, event.revision)
            self.mark_dirty()

    async def _publish_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._dirty.wait()
            deadline = loop.time() + self._max_delay
            while (wait := min(self._last_change + self._debounce, deadline) - loop.time()) > 0:
                await asyncio.sleep(wait)
            self._dirty.clear()
            self._publish()

    def services(self) -> list[config_pb2.Service]:
        """What is published: the store's services with the registered endpoints merged in."""
        if self._registrations is None:
            return list(self._services.values())
        return merge_registered(self._services.values(), self._registrations.by_service())

    def _publish(self) -> None:
        services = self.services()
        changed_at, self._first_change = self._first_change, None
        self._cache.set_services(self._revision, services, changed_at)
        self.pushes += 1
        log.info(
            "config published",
            revision=self._revision,
            services=len(services),
            stored=len(self._services),
        )
