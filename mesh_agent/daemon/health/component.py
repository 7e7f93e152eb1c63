"""The agent's ``health`` component: active ``grpc.health.v1`` checks of the endpoints of every
service whose policy asks for them, the targets following the cached config, and the
:class:`~mesh_agent.daemon.health.table.HealthTable` of their verdicts, which it hands to the
others (:class:`~mesh_agent.daemon.roles.HealthRole`)."""

from __future__ import annotations

from envoy.config.endpoint.v3 import endpoint_pb2

from mesh.v1 import config_pb2
from mesh_agent.components import AgentContext
from mesh_agent.daemon.cache import ConfigCache, decode
from mesh_agent.daemon.health.checker import HealthChecker
from mesh_agent.daemon.health.table import HealthTable
from mesh_agent.daemon.roles import CACHE, HEALTH, CacheRole
from mesh_agent.daemon.settings import SETTINGS, AgentSettings
from mesh_core.errors import ComponentError
from mesh_core.names import service_of_cluster
from mesh_xds.addresses import join_address
from mesh_xds.types import ENDPOINT, SERVICE_POLICY

Targets = dict[str, tuple[list[str], config_pb2.HealthCheckPolicy]]
"""Per service: the endpoint addresses to check, and how."""


def health_targets(cache: ConfigCache) -> Targets:
    """The endpoints to check: those of every service whose policy has a health check, each
    once, whether it is held through the service's assignment or its subsets'
    (``orders/v2``)."""
    policies = cache.resources(SERVICE_POLICY)
    targets: Targets = {}
    for name, packed in sorted(cache.resources(ENDPOINT).items()):
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
        addresses, _ = targets.setdefault(service, ([], policy.policy.health_check))
        for locality in assignment.endpoints:
            for lb in locality.lb_endpoints:
                address = join_address(lb.endpoint.address.socket_address)
                if address not in addresses:
                    addresses.append(address)
    return targets


class HealthComponent:
    """The built-in health checks; the checker (and its table) is made at the first start
    and kept across restarts."""

    name = HEALTH
    requires = (CACHE,)

    def __init__(self) -> None:
        self._checker: HealthChecker | None = None

    @property
    def table(self) -> HealthTable:
        return self._started().table

    async def start(self, ctx: AgentContext) -> None:
        cache = ctx.require(CACHE, CacheRole).cache
        if self._checker is None:
            settings = ctx.setting(SETTINGS, AgentSettings)
            self._checker = HealthChecker(HealthTable(panic_threshold=settings.panic_threshold))
        ctx.connect(cache.changed, lambda: self._follow(cache))
        self._follow(cache)
        await self._checker.start()

    async def run(self) -> None:
        return None  # the checker runs its own tasks; it stays up until shutdown

    async def stop(self) -> None:
        if self._checker is not None:
            await self._checker.stop()

    def _follow(self, cache: ConfigCache) -> None:
        checker = self._started()
        targets = health_targets(cache)
        for service, (addresses, policy) in targets.items():
            checker.set_targets(service, addresses, policy)
        for service in set(checker.targets()) - set(targets):
            checker.remove_service(service)

    def _started(self) -> HealthChecker:
        if self._checker is None:
            raise ComponentError("the health table is made when the health component starts")
        return self._checker


__all__ = ["HealthComponent", "health_targets"]
