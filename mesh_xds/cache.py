"""The control server's snapshot cache: the services it serves, built into one snapshot per
zone of the nodes it serves (de-duplicated by content) and rebuilt only for what changed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import structlog
from envoy.config.core.v3 import base_pb2

from mesh.v1 import config_pb2
from mesh_core.signals import Signal
from mesh_xds.snapshot import Builder, Resource, Snapshot, ZoneKey
from mesh_xds.types import ResourceName, TypeUrl

log = structlog.get_logger(__name__)


def _no_zones(service: config_pb2.Service, zone: str) -> str:
    return ""


class SnapshotCache:
    """Builds and holds one snapshot per zone of the nodes it serves and tells subscribers
    when they change.

    Lives on the event loop of the control server; not thread-safe. A node's zone is its
    ``Node.locality.zone``; ``zone_key`` says, per service, which variant of the service's
    resources a node of a zone gets ("" for the one every node shares), so a service is
    built once per zone only when its resources differ by zone. Snapshots are built lazily
    per zone and de-duplicated by content, so nodes with the same config share one object.
    Subscribers are plain callables run synchronously on change; they must only schedule
    work, not do it.
    """

    def __init__(self, builder: Builder, zone_key: ZoneKey = _no_zones):
        self._builder = builder
        self._zone_key = zone_key
        self._services: list[config_pb2.Service] = []
        self._revision = 0
        self._changed_at: float | None = None
        self._loaded = False
        self._by_zone: dict[str, Snapshot] = {}
        self._by_id: dict[str, Snapshot] = {}
        self._memo: dict[tuple[bytes, str], Mapping[TypeUrl, Mapping[ResourceName, Resource]]]
        self._memo = {}
        self._used: set[tuple[bytes, str]] = set()
        self.changed: Signal[[]] = Signal()
        self.builds = 0

    @property
    def revision(self) -> int:
        """Store revision of the services the snapshots are built from."""
        return self._revision

    @property
    def loaded(self) -> bool:
        return self._loaded

    def unavailable(self) -> str | None:
        return None  # the control server's own store: its first snapshot comes at start

    def set_services(
        self,
        revision: int,
        services: Iterable[config_pb2.Service],
        changed_at: float | None = None,
    ) -> None:
        """Replaces the config; snapshots are rebuilt on next use and subscribers told.
        ``changed_at`` (``time.monotonic()``) is when the earliest change behind it happened;
        the snapshots built from it carry it."""
        self._services = sorted(services, key=lambda s: s.name)
        if self._used:
            # Forget the parts of services that are gone or changed since the last build.
            self._memo = {k: v for k, v in self._memo.items() if k in self._used}
            self._used = set()
        self._revision = revision
        self._changed_at = changed_at
        self._loaded = True
        self._by_zone.clear()
        self._by_id.clear()
        self.changed.emit()

    def snapshot_for(self, node: base_pb2.Node) -> Snapshot:
        zone = node.locality.zone
        snapshot = self._by_zone.get(zone)
        if snapshot is None:
            built = Snapshot.assemble(
                self._revision,
                (self._service_resources(svc, self._zone_key(svc, zone)) for svc in self._services),
                changed_at=self._changed_at,
            )
            self.builds += 1
            snapshot = self._by_id.setdefault(built.id, built)
            self._by_zone[zone] = snapshot
            log.debug("snapshot built", zone=zone, snapshot=snapshot.id, revision=self._revision)
        return snapshot

    def _service_resources(
        self, service: config_pb2.Service, zone: str
    ) -> Mapping[TypeUrl, Mapping[ResourceName, Resource]]:
        """One service's resources as nodes of ``zone`` get them, built and packed once per
        distinct content and zone: a change to one service of a thousand rebuilds that one
        (once per zone whose nodes see it differently)."""
        key = (service.SerializeToString(deterministic=True), zone)
        part = self._memo.get(key)
        if part is None:
            part = Snapshot.build(0, self._builder([service], zone)).resources
            self._memo[key] = part
        self._used.add(key)
        return part

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Calls ``callback`` after every change; returns the function that unsubscribes."""
        return self.changed.connect(callback)
