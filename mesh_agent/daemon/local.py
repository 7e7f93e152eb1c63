"""What the agent serves to the processes on its node: the cached config, with endpoint health
rewritten from the agent's own active checks, and zones spilled over as the checks say
(:class:`~mesh_agent.daemon.health.table.Verdict`).

:class:`LocalSnapshotSource` gives the local ADS server (the same protocol code as the control
server, :class:`mesh_xds.sotw.SotwSession`) one snapshot for every local process, rebuilt
after :meth:`LocalSnapshotSource.invalidate` (which the server calls when the cache or the
health verdicts change).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.health.table import NO_VERDICT, Verdict
from mesh_core.names import service_of_cluster
from mesh_core.signals import Signal
from mesh_xds.addresses import join_address
from mesh_xds.snapshot import Snapshot
from mesh_xds.types import ENDPOINT, LISTENER, ResourceName, TypeUrl

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


def zone_priorities(snapshot: Snapshot) -> list[tuple[str, str, int]]:
    """``(service, zone, priority)`` as ``snapshot`` serves each service's own assignment,
    for the services whose endpoints span zones."""
    out: list[tuple[str, str, int]] = []
    for name, resource in snapshot.resources.get(ENDPOINT, {}).items():
        if service_of_cluster(name) != name:
            continue
        assignment = endpoint_pb2.ClusterLoadAssignment()
        resource.packed.Unpack(assignment)
        if len({locality.locality.zone for locality in assignment.endpoints}) < 2:
            continue
        out += [(name, loc.locality.zone, loc.priority) for loc in assignment.endpoints]
    return out


class LocalSnapshotSource:
    """The snapshot source of the agent's local ADS server. Event-loop owned."""

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
        cache's."""
        self._cache = cache
        self._verdicts = verdicts
        self._unreachable = unreachable
        self._local_listeners = local_listeners
        self._snapshot: Snapshot | None = None
        self._revision = 0
        self.changed: Signal[[]] = Signal()
        """Emitted after every :meth:`invalidate`: sessions then push what changed."""

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

    def invalidate(self) -> None:
        """What it serves changed (the cache, health verdicts, why there is no config)."""
        self._snapshot = None
        self._revision += 1
        self.changed.emit()

    def snapshot_for(self, node: base_pb2.Node) -> Snapshot:
        if self._snapshot is None:
            packed: dict[TypeUrl, dict[ResourceName, any_pb2.Any]] = {}
            for type_url, entry in self._cache.types.items():
                resources = dict(entry.resources)
                if type_url == ENDPOINT:
                    for name, resource in resources.items():
                        verdict = self._verdicts(service_of_cluster(name))
                        if verdict.unhealthy or verdict.first_zones:
                            resources[name] = rewrite_health(resource, verdict)
                packed[type_url] = resources
            own = self._local_listeners()
            if own and packed:
                listeners = packed.setdefault(LISTENER, {})
                for name, listener in own.items():
                    value = listener.SerializeToString(deterministic=True)
                    listeners[name] = any_pb2.Any(type_url=LISTENER, value=value)
            self._snapshot = Snapshot.from_packed(self._revision, packed)
        return self._snapshot

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Calls ``callback`` after every change; returns the function that unsubscribes."""
        return self.changed.connect(callback)
