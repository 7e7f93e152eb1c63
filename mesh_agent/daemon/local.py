"""What the agent serves to the processes on its node: the cached config, with endpoint health
rewritten from the agent's own active checks.

:class:`LocalSnapshotSource` gives the local ADS server (the same protocol code as the control
server, :class:`mesh_xds.sotw.SotwSession`) one snapshot for every local process, rebuilt
when the cache or the health verdicts change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import any_pb2

from mesh_agent.daemon.cache import ConfigCache
from mesh_xds.addresses import join_address
from mesh_xds.registry import SessionRegistry
from mesh_xds.session import Session
from mesh_xds.snapshot import Snapshot
from mesh_xds.types import ENDPOINT, ResourceName, TypeUrl

HealthOverrides = Callable[[str], Mapping[str, str]]
"""service -> {address: "unhealthy"} for endpoints the checker says must not get traffic."""


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
        self._subscribers: dict[int, Callable[[], None]] = {}
        self._next = 0
        cache.subscribe(self.invalidate)

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

    def set_overrides(self, overrides: HealthOverrides) -> None:
        self._overrides = overrides
        self.invalidate()

    def invalidate(self) -> None:
        self._snapshot = None
        self._revision += 1
        for callback in list(self._subscribers.values()):
            callback()

    def snapshot_for(self, node: base_pb2.Node) -> Snapshot:
        if self._snapshot is None:
            packed: dict[TypeUrl, dict[ResourceName, any_pb2.Any]] = {}
            for type_url, entry in self._cache.types.items():
                resources = dict(entry.resources)
                if type_url == ENDPOINT:
                    for name, resource in resources.items():
                        unhealthy = self._overrides(name)
                        if unhealthy:
                            resources[name] = rewrite_health(resource, unhealthy)
                packed[type_url] = resources
            self._snapshot = Snapshot.from_packed(self._revision, packed)
        return self._snapshot

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        token = self._next
        self._next += 1
        self._subscribers[token] = callback

        def unsubscribe() -> None:
            self._subscribers.pop(token, None)

        return unsubscribe


class LocalSessions(SessionRegistry):
    """The local ADS sessions; ``ended`` is called after one ends, so that what the agent asks
    the control plane for stops including what only that session asked for."""

    def __init__(self, ended: Callable[[], None]) -> None:
        super().__init__()
        self._ended = ended

    def remove(self, session: Session) -> None:
        super().remove(session)
        self._ended()
