"""What ``mesh.v1.AgentService/GetAgentStatus`` answers: the node's view from every part of
the agent (the upstream connection and what it received, the cache, the components, endpoint
health, the breakers and the early warnings, the registrations, the service identities
held). Plain functions of what the parts hold."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mesh.v1 import agent_pb2, node_pb2
from mesh_agent.components import ComponentState
from mesh_agent.daemon.breakers.service import BreakerHub
from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.health.table import HealthTable
from mesh_agent.daemon.identities.keeper import HeldIdentity
from mesh_agent.daemon.roles import Upstream
from mesh_xds.types import PUSH_ORDER


def agent_status(
    node_id: str,
    upstream: Upstream,
    cache: ConfigCache,
    components: Iterable[ComponentState],
    table: HealthTable,
    hub: BreakerHub,
    registrations: Mapping[tuple[str, str], node_pb2.Registration],
) -> agent_pb2.GetAgentStatusResponse:
    response = agent_pb2.GetAgentStatusResponse(
        node_id=node_id,
        upstream=upstream.connected_to,
        connected=bool(upstream.connected_to),
        registrations=[r for _, r in sorted(registrations.items())],
    )
    for type_url in PUSH_ORDER:
        stats = upstream.stats.get(type_url)
        entry = cache.types.get(type_url)
        if stats is None and entry is None:
            continue
        response.types.add(
            type_url=type_url,
            version_acked=entry.version if entry else "",
            responses_received=stats.responses if stats else 0,
            resources=len(entry.resources) if entry else 0,
            last_nack=stats.last_nack if stats else "",
        )
    for state in components:
        response.components.add(
            name=state.name,
            state=state.state,
            last_error=state.last_error or "",
            restarts=state.restarts,
        )
    for service in table.services():
        in_panic = table.in_panic(service)
        for address, status in sorted(table.statuses(service).items()):
            response.endpoint_health.add(
                service=service, address=address, state=status, applied=not in_panic
            )
    response.breakers.extend(hub.statuses())
    response.warnings.extend(w.to_proto() for w in hub.risk.warnings())
    if cache.updated_at:
        response.config_updated.FromNanoseconds(int(cache.updated_at * 1e9))
    return response


def identity_statuses(held: Iterable[HeldIdentity]) -> list[agent_pb2.IdentityStatus]:
    """One entry per identity the node holds or tries to, with the paths of its files."""
    statuses = []
    for identity in held:
        status = agent_pb2.IdentityStatus(
            service=identity.service,
            spiffe_id=identity.spiffe_id,
            source=",".join(sorted(identity.sources)),
            certificate_file=str(identity.paths.cert),
            private_key_file=str(identity.paths.key),
            ca_certificate_file=str(identity.paths.ca),
            last_error=identity.last_error,
            refused=identity.refused,
        )
        if identity.not_after is not None:
            status.not_after.FromDatetime(identity.not_after)
        if identity.renew_at is not None:
            status.renew_at.FromDatetime(identity.renew_at)
        if identity.updated is not None:
            status.updated.FromDatetime(identity.updated)
        statuses.append(status)
    return statuses


__all__ = ["agent_status", "identity_statuses"]
