"""Immutable, versioned sets of packed xDS resources, and the cache that hands them out.

A :class:`Snapshot` is built once per distinct config and shared by every node that gets
that config: resources are packed into ``Any`` and hashed once, so serving another node
costs no rebuild and no copy. Versions are content hashes, so a node that reconnects to any
control server with the versions it holds is not sent what it already has.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from control.resources import Resources, build_resources
from mesh.v1 import config_pb2
from mesh_xds.types import ResourceName, TypeUrl, Version

log = structlog.get_logger(__name__)

GroupKey = str
Builder = Callable[[Iterable[config_pb2.Service]], Resources]
GroupOf = Callable[[base_pb2.Node], GroupKey]


@dataclass(frozen=True, slots=True)
class Resource:
    name: ResourceName
    packed: any_pb2.Any
    digest: str
    _delta: discovery_pb2.Resource | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def delta(self) -> discovery_pb2.Resource:
        """The resource as delta xDS sends it (its version is its digest), built on first use
        and shared by every stream and snapshot that holds this resource."""
        message = self._delta
        if message is None:
            message = discovery_pb2.Resource(
                name=self.name, version=self.digest, resource=self.packed
            )
            object.__setattr__(self, "_delta", message)
        return message


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def version_of(digests: Mapping[ResourceName, str]) -> Version:
    """The version of a set of resources: a hash of their names and content digests."""
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(digests):
        h.update(name.encode())
        h.update(b"\0")
        h.update(digests[name].encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one group of nodes is served. Owned by the cache; never mutated.

    ``revision`` is the store revision it was built from; ``id`` is a hash of its whole
    content, equal for equal snapshots. ``changed_at`` is the ``time.monotonic()`` of the
    earliest config change it was built from (the first of changes coalesced into one
    publication), or None when it was not built from a change seen by this process (the
    first load, config the agent relays)."""

    revision: int
    resources: Mapping[TypeUrl, Mapping[ResourceName, Resource]]
    id: str = field(default="")
    changed_at: float | None = field(default=None, compare=False)

    @classmethod
    def build(cls, revision: int, built: Resources) -> Snapshot:
        return cls.from_packed(
            revision,
            {
                type_url: {
                    name: any_pb2.Any(
                        type_url=type_url, value=message.SerializeToString(deterministic=True)
                    )
                    for name, message in by_name.items()
                }
                for type_url, by_name in built.items()
            },
        )

    @classmethod
    def from_packed(
        cls, revision: int, packed: Mapping[TypeUrl, Mapping[ResourceName, any_pb2.Any]]
    ) -> Snapshot:
        """A snapshot of resources already packed (the agent relays what it was sent)."""
        resources: dict[TypeUrl, dict[ResourceName, Resource]] = {}
        overall = hashlib.blake2b(digest_size=8)
        for type_url in sorted(packed):
            by_name: dict[ResourceName, Resource] = {}
            for name in sorted(packed[type_url]):
                any_ = packed[type_url][name]
                digest = _digest(any_.value)
                by_name[name] = Resource(name, any_, digest)
                overall.update(f"{type_url}/{name}={digest};".encode())
            resources[type_url] = by_name
        return cls(revision=revision, resources=resources, id=overall.hexdigest())

    @classmethod
    def assemble(
        cls,
        revision: int,
        parts: Iterable[Mapping[TypeUrl, Mapping[ResourceName, Resource]]],
        changed_at: float | None = None,
    ) -> Snapshot:
        """A snapshot of resources packed and hashed already, e.g. per service."""
        resources: dict[TypeUrl, dict[ResourceName, Resource]] = {}
        for part in parts:
            for type_url, by_name in part.items():
                resources.setdefault(type_url, {}).update(by_name)
        overall = hashlib.blake2b(digest_size=8)
        for type_url in sorted(resources):
            by_name = dict(sorted(resources[type_url].items()))
            resources[type_url] = by_name
            for name, resource in by_name.items():
                overall.update(f"{type_url}/{name}={resource.digest};".encode())
        return cls(
            revision=revision, resources=resources, id=overall.hexdigest(), changed_at=changed_at
        )


class SnapshotSource(Protocol):
    """Where an ADS session gets what it serves: the control server's
    :class:`SnapshotCache`, or the agent's view of its cache."""

    @property
    def loaded(self) -> bool:
        """False until there is config to serve; sessions wait until then."""
        ...

    def snapshot_for(self, node: base_pb2.Node) -> Snapshot: ...

    def unavailable(self) -> str | None:
        """While not :attr:`loaded`: why there will be no config for a while (the agent cannot
        reach the control plane); sessions then end their streams with UNAVAILABLE and this
        reason instead of waiting. None: wait."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Calls ``callback`` after every change; returns the function that unsubscribes."""
        ...


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

    def __init__(self, builder: Builder = build_resources, group_of: GroupOf = _one_group):
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
        self._subscribers: dict[int, Callable[[], None]] = {}
        self._next_token = 0
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
        for callback in list(self._subscribers.values()):
            callback()

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
        token = self._next_token
        self._next_token += 1
        self._subscribers[token] = callback

        def unsubscribe() -> None:
            self._subscribers.pop(token, None)

        return unsubscribe
