"""The agent's ``health`` component: active ``grpc.health.v1`` checks of the endpoints of every
service whose policy asks for them, the targets following the cached config, and the
:class:`~mesh_agent.daemon.health.table.HealthTable` of their verdicts, which it hands to the
others (:class:`~mesh_agent.daemon.roles.HealthRole`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from envoy.config.endpoint.v3 import endpoint_pb2

from mesh.v1 import config_pb2
from mesh_agent.components import AgentContext
from mesh_agent.daemon.cache import ConfigCache, decode
from mesh_agent.daemon.health.checker import HealthChecker
from mesh_agent.daemon.health.table import HealthTable, Placement
from mesh_agent.daemon.roles import CACHE, HEALTH, CacheRole
from mesh_agent.daemon.settings import SETTINGS, AgentSettings
from mesh_core.errors import ComponentError
from mesh_core.names import service_of_cluster
from mesh_core.policy import SPILL_OVER_BELOW
from mesh_xds.addresses import join_address
from mesh_xds.types import ENDPOINT, SERVICE_POLICY


@dataclass
class Target:
    """One service's endpoints to check, how, and where each is served: its zone and that
    zone's priority for this node (spill-over and panic are judged per zone)."""

    policy: config_pb2.HealthCheckPolicy
    spill_over_below: float
    zones: dict[str, str] = field(default_factory=dict)
    """address -> zone, in the order the assignments list them."""
    levels: dict[str, int] = field(default_factory=dict)
    """zone -> priority: the highest any of the service's assignments gives it (an
    assignment without the own zone, a subset's, has every zone at 0)."""

    @property
    def addresses(self) -> list[str]:
        return list(self.zones)

    @property
    def placement(self) -> dict[str, Placement]:
        return {address: (zone, self.levels[zone]) for address, zone in self.zones.items()}


Targets = dict[str, Target]


def _spill_over_below(policy: config_pb2.Policy) -> float:
    locality = policy.locality
    return locality.spill_over_below if locality.HasField("spill_over_below") else SPILL_OVER_BELOW


def health_targets(cache: ConfigCache, assignments: Iterable[str] | None = None) -> Targets:
    """The endpoints to check: those of every service whose policy has a health check, each
    once, whether it is held through the service's assignment or its subsets'
    (``orders/v2``). ``assignments``: only these (every one of a service, to have all of
    its endpoints); None: all."""
    policies = cache.resources(SERVICE_POLICY)
    held = cache.resources(ENDPOINT)
    targets: Targets = {}
    names = held if assignments is None else [n for n in assignments if n in held]
    for name in sorted(names):
        packed = held[name]
        service = service_of_cluster(name)
        policy_packed = policies.get(service)
        if policy_packed is None:
            continue
        policy = decode(policy_packed, SERVICE_POLICY)
        assert isinstance(policy, config_pb2.ServicePolicy)
        if not policy.policy.HasField("health_check"):
            continue
        assignment = decode(packed, ENDPOINT)
        assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
        target = targets.get(service)
        if target is None:
            target = targets[service] = Target(
                policy.policy.health_check, _spill_over_below(policy.policy)
            )
        for group in assignment.endpoints:
            zone = group.locality.zone
            target.levels[zone] = max(target.levels.get(zone, 0), group.priority)
            for lb in group.lb_endpoints:
                target.zones.setdefault(join_address(lb.endpoint.address.socket_address), zone)
    return targets


class HealthComponent:
    """The built-in health checks; the checker (and its table) is made at the first start
    and kept across restarts."""

    name = HEALTH
    requires = (CACHE,)

    def __init__(self) -> None:
        self._checker: HealthChecker | None = None
        self._assignments: dict[str, set[str]] = {}  # service -> its assignments held

    @property
    def table(self) -> HealthTable:
        return self._started().table

    async def start(self, ctx: AgentContext) -> None:
        cache = ctx.require(CACHE, CacheRole).cache
        if self._checker is None:
            settings = ctx.setting(SETTINGS, AgentSettings)
            self._checker = HealthChecker(HealthTable(panic_threshold=settings.panic_threshold))
        self._assignments = {}
        for name in cache.resources(ENDPOINT):
            self._assignments.setdefault(service_of_cluster(name), set()).add(name)
        ctx.connect(cache.changed, lambda: self._changed(cache))
        self._follow(cache)
        await self._checker.start()

    async def run(self) -> None:
        return None  # the checker runs its own tasks; it stays up until shutdown

    async def stop(self) -> None:
        if self._checker is not None:
            await self._checker.stop()

    def _changed(self, cache: ConfigCache) -> None:
        """Follows a change of the cache for the services whose assignments or policy it
        touched, and only those."""
        change = cache.last_change
        services = set(change.get(SERVICE_POLICY, ()))
        held = cache.resources(ENDPOINT)
        for name in change.get(ENDPOINT, ()):
            service = service_of_cluster(name)
            services.add(service)
            names = self._assignments.setdefault(service, set())
            if name in held:
                names.add(name)
            else:
                names.discard(name)
                if not names:
                    del self._assignments[service]
        if services:
            self._follow(cache, services)

    def _follow(self, cache: ConfigCache, services: set[str] | None = None) -> None:
        """Checks what the cache says, for ``services`` (None: every service)."""
        checker = self._started()
        if services is None:
            targets = health_targets(cache)
            gone = set(checker.targets()) - set(targets)
        else:
            assignments = [n for s in services for n in self._assignments.get(s, ())]
            targets = health_targets(cache, assignments)
            unchecked = services - set(targets)
            gone = unchecked & set(checker.targets()) if unchecked else set()
        for service, target in targets.items():
            checker.set_targets(
                service, target.addresses, target.policy, target.placement, target.spill_over_below
            )
        for service in gone:
            checker.remove_service(service)

    def _started(self) -> HealthChecker:
        if self._checker is None:
            raise ComponentError("the health table is made when the health component starts")
        return self._checker


__all__ = ["HealthComponent", "Target", "health_targets"]
