"""What the agent serves to the processes on its node: the cached config, with endpoint health
rewritten from the agent's own active checks.

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

from mesh_agent.daemon.cache import ConfigCache
from mesh_core.names import service_of_cluster
from mesh_core.signals import Signal
from mesh_xds.addresses import join_address
from mesh_xds.snapshot import Snapshot
from mesh_xds.types import ENDPOINT, ResourceName, TypeUrl

HealthOverrides = Callable[[str], Mapping[str, str]]
"""service -> {address: "unhealthy"} for endpoints the checker says must not get traffic;
applied to the service's assignment and to each of its subsets' (``orders/v2``)."""


def _no_overrides(service: str) -> Mapping[str, str]:
    return {}


def rewrite_health(packed: any_pb2.Any, unhealthy: Mapping[str, str]) -> any_pb2.Any:
    """The ClusterLoadAssignment in ``packed`` with the listed addresses marked UNHEALTHY."""
    assignment = endpoint_pb2.ClusterLoadAssignment()
    packed.Unpack(assignment)
    for locality in assignment.endpoints:
        for lb_endpoint in locality.lb_endpoints:
            if join_address(lb_endpoint.endpoint.address.socket_address) in unhealthy:
                lb_endpoint.health_status = health_check_pb2.UNHEALTHY
    return any_pb2.Any(
        type_url=packed.type_url, value=assignment.SerializeToString(deterministic=True)
    )


class LocalSnapshotSource:
    """The snapshot source of the agent's local ADS server. Event-loop owned."""

    def __init__(
        self,
        cache: ConfigCache,
        overrides: HealthOverrides = _no_overrides,
        unreachable: Callable[[], str] = str,
    ) -> None:
        """``unreachable`` says why no control server can be reached ("" while one is, or
        before the first attempt ended): while the cache is empty that ends local streams."""
        self._cache = cache
        self._overrides = overrides
        self._unreachable = unreachable
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
                        unhealthy = self._overrides(service_of_cluster(name))
                        if unhealthy:
                            resources[name] = rewrite_health(resource, unhealthy)
                packed[type_url] = resources
            self._snapshot = Snapshot.from_packed(self._revision, packed)
        return self._snapshot

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Calls ``callback`` after every change; returns the function that unsubscribes."""
        return self.changed.connect(callback)
