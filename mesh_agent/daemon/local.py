"""What the agent serves to the processes on its node: the cached config, with endpoint health
rewritten from the agent's own active checks, and zones spilled over as the checks say
(:class:`~mesh_agent.daemon.health.table.Verdict`).

:class:`LocalSnapshotSource` gives the local ADS server (the same protocol code as the control
server, :class:`mesh_xds.sotw.SotwSession`) one snapshot for every local process, updated in
proportion to each change (the server tells it what changed: the cache's resources, a
service's health verdict, the declared servers): a :class:`LocalSnapshot` shares every
unchanged resource, and what a subscription selects, with the one before it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.health.table import NO_VERDICT, Verdict
from mesh_core.names import service_of_cluster
from mesh_core.signals import Signal
from mesh_xds.addresses import join_address
from mesh_xds.snapshot import Resource, Selection, Snapshot
from mesh_xds.types import ENDPOINT, LISTENER, SERVICE_POLICY, ResourceName, TypeUrl

Verdicts = Callable[[str], Verdict]
"""service -> what its endpoints' checks say (:meth:`HealthTable.verdict`); applied to the
service's assignment and to each of its subsets' (``orders/v2``)."""


def _no_verdicts(service: str) -> Verdict:
    return NO_VERDICT


def apply_verdict(
    assignment: endpoint_pb2.ClusterLoadAssignment, verdict: Verdict
) -> endpoint_pb2.ClusterLoadAssignment:
    """``assignment`` as the node is served it: the verdict's unhealthy endpoints marked
    UNHEALTHY, each locality weighted by its usable endpoints, and when the own zone spills
    over, the verdict's first zones at priority 0 and the others renumbered after them
    without gaps. Changed in place and returned."""
    for locality in assignment.endpoints:
        usable_weight = 0
        marked = False
        for lb_endpoint in locality.lb_endpoints:
            if join_address(lb_endpoint.endpoint.address.socket_address) in verdict.unhealthy:
                lb_endpoint.health_status = health_check_pb2.UNHEALTHY
                marked = True
            else:
                usable_weight += lb_endpoint.load_balancing_weight.value or 1
        if marked and usable_weight:
            locality.load_balancing_weight.value = usable_weight
    if verdict.first_zones:
        ranks = {
            -1 if locality.locality.zone in verdict.first_zones else locality.priority
            for locality in assignment.endpoints
        }
        renumbered = {rank: index for index, rank in enumerate(sorted(ranks))}
        for locality in assignment.endpoints:
            first = locality.locality.zone in verdict.first_zones
            locality.priority = renumbered[-1 if first else locality.priority]
    return assignment


def rewrite_health(packed: any_pb2.Any, verdict: Verdict) -> any_pb2.Any:
    """The ClusterLoadAssignment in ``packed`` with ``verdict`` applied (:func:`apply_verdict`)."""
    assignment = endpoint_pb2.ClusterLoadAssignment()
    packed.Unpack(assignment)
    apply_verdict(assignment, verdict)
    return any_pb2.Any(
        type_url=packed.type_url, value=assignment.SerializeToString(deterministic=True)
    )


def _zones_of(name: str, packed: any_pb2.Any) -> list[tuple[str, str, int]]:
    assignment = endpoint_pb2.ClusterLoadAssignment()
    packed.Unpack(assignment)
    if len({locality.locality.zone for locality in assignment.endpoints}) < 2:
        return []
    return [(name, loc.locality.zone, loc.priority) for loc in assignment.endpoints]


def zone_priorities(snapshot: Snapshot) -> list[tuple[str, str, int]]:
    """``(service, zone, priority)`` as ``snapshot`` serves each service's own assignment,
    for the services whose endpoints span zones."""
    out: list[tuple[str, str, int]] = []
    for name, resource in snapshot.resources.get(ENDPOINT, {}).items():
        if service_of_cluster(name) == name:
            out += _zones_of(name, resource.packed)
    return out


class ZonePriorities:
    """:func:`zone_priorities` followed from snapshot to snapshot: only the assignments that
    changed since the last one are read again."""

    def __init__(self) -> None:
        self._by_service: dict[str, list[tuple[str, str, int]]] = {}
        self._seen: Snapshot | None = None

    def update(self, snapshot: Snapshot) -> list[tuple[str, str, int]]:
        available = snapshot.resources.get(ENDPOINT, {})
        seen = self._seen
        names = available.keys() if seen is None else snapshot.changed_since(seen, ENDPOINT)
        for name in names:
            resource = available.get(name)
            if service_of_cluster(name) != name:
                continue
            zones = _zones_of(name, resource.packed) if resource is not None else []
            if zones:
                self._by_service[name] = zones
            else:
                self._by_service.pop(name, None)
        self._seen = snapshot
        return [entry for name in sorted(self._by_service) for entry in self._by_service[name]]


_MASK = (1 << 64) - 1


def content_digest(data: bytes) -> str:
    """A resource's digest (its version in delta xDS): a hash of its bytes."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _entry_hash(*parts: str) -> int:
    h = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


def _hex(total: int) -> str:
    return f"{total & _MASK:016x}"


SelectionKey = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class LocalSnapshot(Snapshot):
    """A snapshot the agent serves, made from the one before it by redoing what changed.

    Versions are sums (mod 2**64) of a hash per resource (of its name and digest; of the type,
    name and digest for the snapshot's ``id``), so they follow a change in O(change) and stay
    content hashes: equal content, equal version, in any process. What a subscription selects
    is derived from the same selection of the snapshot before (``parent``): unchanged
    (the very same objects, so a session sees at once that nothing is new) when no resource
    it selects changed, else a copy with the changed ones redone."""

    total: int = field(default=0, compare=False)
    parent: LocalSnapshot | None = field(default=None, compare=False, repr=False)
    changes: Mapping[TypeUrl, frozenset[ResourceName]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _sums: dict[SelectionKey, int] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def derived(
        self,
        revision: int,
        resources: Mapping[TypeUrl, Mapping[ResourceName, Resource]],
        changes: Mapping[TypeUrl, frozenset[ResourceName]],
        total: int,
    ) -> LocalSnapshot:
        """The snapshot after this one: ``resources`` differ from this one's in ``changes``.
        This one forgets its own parent (one step back is all a derivation reads)."""
        object.__setattr__(self, "parent", None)
        return LocalSnapshot(
            revision, resources, id=_hex(total), total=total, parent=self, changes=changes
        )

    def selection(
        self, type_url: TypeUrl, wildcard: bool, names: frozenset[ResourceName]
    ) -> Selection:
        key: SelectionKey = ("selection", type_url, wildcard, frozenset() if wildcard else names)
        found = self._memo.get(key)
        if found is not None:
            return found  # type: ignore[return-value]
        parent = self.parent
        previous = parent._memo.get(key) if parent is not None else None
        if parent is not None and previous is not None:
            assert isinstance(previous, tuple)
            result, total = self._follow(type_url, wildcard, names, previous, parent._sums[key])
        else:
            available = self.resources.get(type_url, {})
            selected = (
                dict(available)
                if wildcard
                else {name: available[name] for name in sorted(names) if name in available}
            )
            digests = {name: resource.digest for name, resource in selected.items()}
            total = sum(_entry_hash(name, digest) for name, digest in digests.items())
            result = (selected, digests, _hex(total))
        self._memo[key] = result
        self._sums[key] = total
        return result

    def _follow(
        self,
        type_url: TypeUrl,
        wildcard: bool,
        names: frozenset[ResourceName],
        previous: Selection,
        total: int,
    ) -> tuple[Selection, int]:
        """The parent's selection ``previous`` (of sum ``total``) brought up to this one."""
        changed = [name for name in self.changes.get(type_url, ()) if wildcard or name in names]
        if not changed:
            return previous, total
        selected, digests = dict(previous[0]), dict(previous[1])
        available = self.resources.get(type_url, {})
        for name in changed:
            old = digests.pop(name, None)
            selected.pop(name, None)
            if old is not None:
                total -= _entry_hash(name, old)
            resource = available.get(name)
            if resource is not None:
                selected[name] = resource
                digests[name] = resource.digest
                total += _entry_hash(name, resource.digest)
        return (selected, digests, _hex(total)), total

    def changed_since(self, old: Snapshot, type_url: TypeUrl) -> frozenset[ResourceName]:
        if old is self.parent:
            return self.changes.get(type_url, frozenset())
        return Snapshot.changed_since(self, old, type_url)


class LocalSnapshotSource:
    """The snapshot source of the agent's local ADS server. Event-loop owned.

    The snapshot is updated in place of a rebuild: each change names what it touched (the
    cache's :attr:`~mesh_agent.daemon.cache.ConfigCache.last_change`, a service whose health
    verdict moved, the declared servers' Listeners), and the next :meth:`snapshot_for` makes
    a :class:`LocalSnapshot` from the last one with only those resources redone. Only
    :meth:`invalidate` (and the first call) builds it whole."""

    def __init__(
        self,
        cache: ConfigCache,
        verdicts: Verdicts = _no_verdicts,
        unreachable: Callable[[], str] = str,
        local_listeners: Callable[[], Mapping[ResourceName, Message]] = dict,
    ) -> None:
        """``unreachable`` says why no control server can be reached ("" while one is, or
        before the first attempt ended): while the cache is empty that ends local streams.
        ``local_listeners``: Listeners the agent builds itself (the servers processes
        declared, :class:`~mesh_agent.daemon.servers.Declarations`), served beside the
        cache's (and in place of a cache's Listener of the same name)."""
        self._cache = cache
        self._verdicts = verdicts
        self._unreachable = unreachable
        self._local_listeners = local_listeners
        self._own: dict[ResourceName, any_pb2.Any] = {}
        self._snapshot: LocalSnapshot | None = None
        self._dirty: dict[TypeUrl, set[ResourceName]] | None = None  # None: build it whole
        self._revision = 0
        self.builds = 0  # whole builds, for tests and benchmarks
        self.changed: Signal[[]] = Signal()
        """Emitted after every change: sessions then push what changed."""

    @property
    def loaded(self) -> bool:
        """True once there is config to serve (from upstream or from the state dir)."""
        return bool(self._cache.types)

    def unavailable(self) -> str | None:
        if self.loaded:
            return None
        reason = self._unreachable()
        if not reason:
            return None
        return (
            "the mesh agent has no config yet and cannot reach the control plane "
            f"({reason}); calls can be made once it has reached a control server"
        )

    # -- what changed ------------------------------------------------------------------------

    def invalidate(self) -> None:
        """Anything it serves may have changed: the next snapshot is built whole."""
        self._dirty = None
        self._announce()

    def cache_changed(self) -> None:
        """The cache changed as its ``last_change`` says (a policy change may change the
        declared servers' Listeners too)."""
        change = self._cache.last_change
        for type_url, names in change.items():
            self._touch(type_url, names)
        if SERVICE_POLICY in change:
            self._touch(LISTENER, self._refresh_own())
        self._announce()

    def listeners_changed(self) -> None:
        """The declared servers changed: their Listeners are redone."""
        self._touch(LISTENER, self._refresh_own())
        self._announce()

    def verdict_changed(self, service: str) -> None:
        """The health verdict of ``service`` changed: its assignments (its own and its
        subsets') are redone."""
        self._touch(
            ENDPOINT,
            [n for n in self._cache.resources(ENDPOINT) if service_of_cluster(n) == service],
        )
        self._announce()

    def _touch(self, type_url: TypeUrl, names: Iterable[ResourceName]) -> None:
        if self._dirty is not None:
            self._dirty.setdefault(type_url, set()).update(names)

    def _announce(self) -> None:
        self._revision += 1
        self.changed.emit()

    def _refresh_own(self) -> set[ResourceName]:
        """Packs the declared servers' Listeners anew; returns the names that changed."""
        own = {
            name: any_pb2.Any(type_url=LISTENER, value=m.SerializeToString(deterministic=True))
            for name, m in self._local_listeners().items()
        }
        moved = {n for n in own.keys() | self._own.keys() if own.get(n) != self._own.get(n)}
        self._own = own
        return moved

    # -- the snapshot ------------------------------------------------------------------------

    def snapshot_for(self, node: base_pb2.Node) -> Snapshot:
        snapshot = self._snapshot
        if snapshot is None or self._dirty is None:
            self._refresh_own()
            snapshot = self._build()
        elif self._dirty:
            snapshot = self._derive(snapshot, self._dirty)
        self._snapshot = snapshot
        self._dirty = {}
        return snapshot

    def _packed(self, type_url: TypeUrl, name: ResourceName) -> any_pb2.Any | None:
        """The resource ``name`` as the node is served it; None when there is none."""
        if type_url == LISTENER and name in self._own and self._cache.types:
            return self._own[name]
        packed = self._cache.resources(type_url).get(name)
        if packed is not None and type_url == ENDPOINT:
            verdict = self._verdicts(service_of_cluster(name))
            if verdict.unhealthy or verdict.first_zones:
                return rewrite_health(packed, verdict)
        return packed

    def _build(self) -> LocalSnapshot:
        self.builds += 1
        resources: dict[TypeUrl, dict[ResourceName, Resource]] = {}
        total = 0
        for type_url, entry in self._cache.types.items():
            names = entry.resources.keys() | (self._own.keys() if type_url == LISTENER else ())
            by_name = resources[type_url] = {}
            for name in sorted(names):
                packed = self._packed(type_url, name)
                if packed is not None:
                    by_name[name] = resource = Resource(name, packed, content_digest(packed.value))
                    total += _entry_hash(type_url, name, resource.digest)
        if self._own and self._cache.types and LISTENER not in resources:
            resources[LISTENER] = {
                n: Resource(n, p, content_digest(p.value)) for n, p in self._own.items()
            }
            total += sum(_entry_hash(LISTENER, n, r.digest) for n, r in resources[LISTENER].items())
        return LocalSnapshot(self._revision, resources, id=_hex(total), total=total)

    def _derive(
        self, old: LocalSnapshot, dirty: Mapping[TypeUrl, set[ResourceName]]
    ) -> LocalSnapshot:
        """``old`` with the ``dirty`` resources redone; ``old`` itself when none differs."""
        resources = dict(old.resources)
        total = old.total
        changes: dict[TypeUrl, frozenset[ResourceName]] = {}
        for type_url, names in dirty.items():
            before = old.resources.get(type_url, {})
            by_name: dict[ResourceName, Resource] | None = None
            moved: set[ResourceName] = set()
            for name in names:
                had = before.get(name)
                packed = self._packed(type_url, name)
                digest = content_digest(packed.value) if packed is not None else None
                if (had.digest if had is not None else None) == digest:
                    continue
                if by_name is None:
                    by_name = dict(before)
                if had is not None:
                    total -= _entry_hash(type_url, name, had.digest)
                    del by_name[name]
                if packed is not None and digest is not None:
                    by_name[name] = Resource(name, packed, digest)
                    total += _entry_hash(type_url, name, digest)
                moved.add(name)
            if by_name is not None:
                resources[type_url] = by_name
                changes[type_url] = frozenset(moved)
        if not changes:
            return old
        return old.derived(self._revision, resources, changes, total)

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Calls ``callback`` after every change; returns the function that unsubscribes."""
        return self.changed.connect(callback)
