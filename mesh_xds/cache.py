"""The control server's snapshot cache: the services it serves, built into one snapshot per
node group (de-duplicated by content) and rebuilt only for what changed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import structlog
from envoy.config.core.v3 import base_pb2

from mesh.v1 import config_pb2
from mesh_core.signals import Signal
from mesh_xds.snapshot import Builder, GroupKey, GroupOf, Resource, Snapshot
from mesh_xds.types import ResourceName, TypeUrl

log = structlog.get_logger(__name__)


def _one_group(node: base_pb2.Node) -> GroupKey:
    return ""


class SnapshotCache:
    """Builds and holds one snapshot per node group and tells subscribers when they change.

    Lives on the event loop of the control server; not thread-safe. ``group_of`` maps a node
    to the key of the config it gets (today every node gets the same config). Snapshots are
    built lazily per group and de-duplicated by content, so nodes with the same config share
    one object. Subscribers are plain callables run synchronously on change; they must only
    schedule work, not do it.
    """

    def __init__(self, builder: Builder, group_of: GroupOf = _one_group):
        self._builder = builder
        self._group_of = group_of
        self._services: list[config_pb2.Service] = []
        self._revision = 0
        self._changed_at: float | None = None
        self._loaded = False
        self._by_group: dict[GroupKey, Snapshot] = {}
        self._by_id: dict[str, Snapshot] = {}
        self._memo: dict[bytes, Mapping[TypeUrl, Mapping[ResourceName, Resource]]] = {}
        self._used: set[bytes] = set()
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
        self._by_group.clear()
        self._by_id.clear()
        self.changed.emit()

    def snapshot_for(self, node: base_pb2.Node) -> Snapshot:
        key = self._group_of(node)
        snapshot = self._by_group.get(key)
        if snapshot is None:
            built = Snapshot.assemble(
                self._revision,
                (self._service_resources(svc) for svc in self._services),
                changed_at=self._changed_at,
            )
            self.builds += 1
            snapshot = self._by_id.setdefault(built.id, built)
            self._by_group[key] = snapshot
            log.debug("snapshot built", group=key, snapshot=snapshot.id, revision=self._revision)
        return snapshot

    def _service_resources(
        self, service: config_pb2.Service
    ) -> Mapping[TypeUrl, Mapping[ResourceName, Resource]]:
        """One service's resources, built and packed once per distinct content: a change to
        one service of a thousand rebuilds that one."""
        key = service.SerializeToString(deterministic=True)
        part = self._memo.get(key)
        if part is None:
            part = Snapshot.build(0, self._builder([service])).resources
            self._memo[key] = part
        self._used.add(key)
        return part

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Calls ``callback`` after every change; returns the function that unsubscribes."""
        return self.changed.connect(callback)
