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
from google.protobuf.message import Message

from mesh.v1 import config_pb2
from mesh_xds.types import ResourceName, TypeUrl, Version

log = structlog.get_logger(__name__)

Resources = dict[TypeUrl, dict[ResourceName, Message]]
"""Built resources (not packed yet), by type URL and name."""
Builder = Callable[[Iterable[config_pb2.Service], str], Resources]
"""Builds every resource of some services as a node of a zone ("": any node) is served them
(the control server's :func:`control.resources.build_resources`)."""
ZoneKey = Callable[[config_pb2.Service, str], str]
"""The zone whose variant of a service a node of a zone is served; "" for the variant every
node shares (the control server's :func:`control.resources.zone_key`)."""


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


Selection = tuple[dict[ResourceName, "Resource"], dict[ResourceName, str], Version]
"""What a subscription selects of a snapshot: resources by name, their digests, the set's
version."""


def _same(a: Resource | None, b: Resource | None) -> bool:
    if a is b:
        return True
    return a is not None and b is not None and a.digest == b.digest


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
    # What subscriptions select of this snapshot, and how it differs from others: computed
    # once and shared by every stream serving it (a push to many nodes costs each selection
    # once, not once per node). Lives and dies with the snapshot.
    _memo: dict[tuple[object, ...], object] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def selection(
        self, type_url: TypeUrl, wildcard: bool, names: frozenset[ResourceName]
    ) -> Selection:
        """What a subscription (every resource of the type, or these ``names``) selects:
        the resources by name, their digests and the version of the set. Never mutated."""
        key = ("selection", type_url, wildcard, frozenset() if wildcard else names)
        found = self._memo.get(key)
        if found is None:
            available = self.resources.get(type_url, {})
            selected = (
                dict(available)
                if wildcard
                else {name: available[name] for name in sorted(names) if name in available}
            )
            digests = {name: resource.digest for name, resource in selected.items()}
            found = self._memo[key] = (selected, digests, version_of(digests))
        return found  # type: ignore[return-value]

    def encoded(self, key: tuple[object, ...], encode: Callable[[], bytes]) -> bytes:
        """A response serialised from this snapshot, by ``key`` (what it depends on besides
        the snapshot: type, subscription, server): ``encode()`` the first time, then the same
        bytes for every stream that asks (:mod:`mesh_xds.wire`)."""
        memo_key = ("encoded", *key)
        found = self._memo.get(memo_key)
        if found is None:
            found = self._memo[memo_key] = encode()
        return found  # type: ignore[return-value]

    def changed_since(self, old: Snapshot, type_url: TypeUrl) -> frozenset[ResourceName]:
        """Names of ``type_url`` added, changed or removed from ``old`` to this snapshot."""
        if old is self or (old.id and old.id == self.id):
            return frozenset()
        key = ("changed", old.id or id(old), type_url)
        found = self._memo.get(key)
        if found is None:
            before = old.resources.get(type_url, {})
            after = self.resources.get(type_url, {})
            found = self._memo[key] = frozenset(
                name
                for name in before.keys() | after.keys()
                if not _same(before.get(name), after.get(name))
            )
        return found  # type: ignore[return-value]

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
