"""The agent's ``identities`` component: its :class:`~.keeper.IdentityKeeper`, told what to hold
by the registrations (services with ``security.hosts``, as their ``mesh.v1.ServicePolicy``
says, which it asks the upstream for) and by ``--identity``, signing through the control
server (:class:`ControlSigner`) with the node's own mTLS certificate."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import grpc
import structlog

from mesh.v1 import config_pb2, node_pb2, node_pb2_grpc
from mesh_agent.components import AgentContext
from mesh_agent.daemon.cache import ConfigCache, decode
from mesh_agent.daemon.identities.keeper import CONFIGURED, REGISTRATION, IdentityKeeper
from mesh_agent.daemon.reporter import Reporter
from mesh_agent.daemon.roles import (
    CACHE,
    IDENTITIES,
    REPORTER,
    UPSTREAM,
    CacheRole,
    ReporterRole,
    Upstream,
)
from mesh_agent.daemon.settings import SETTINGS, AgentSettings
from mesh_core.errors import (
    ComponentError,
    ConfigError,
    MeshError,
    PermissionDeniedError,
    PreconditionError,
    UnavailableError,
)
from mesh_core.identity import NODE, parse_uri
from mesh_core.identity_files import CERTS_SUBDIR
from mesh_core.tls import TlsFiles, aio_channel, certificate_uris
from mesh_xds.types import SERVICE_POLICY

log = structlog.get_logger(__name__)
SIGN_TIMEOUT = 10.0
_REFUSALS: dict[grpc.StatusCode, type[MeshError]] = {
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionError,
    grpc.StatusCode.INVALID_ARGUMENT: ConfigError,
}


class ControlSigner:
    """Signs through ``NodeService/SignCertificate``: the control server the upstream is
    connected to first, then the others configured. A refusal (PERMISSION_DENIED,
    FAILED_PRECONDITION, INVALID_ARGUMENT) ends the attempt with the error of our tree it
    maps to; anything else moves on to the next server, and UnavailableError when none
    signed."""

    def __init__(
        self, node_id: str, tls: TlsFiles | None, servers: Callable[[], Sequence[str]]
    ) -> None:
        self.node_id = node_id
        self.tls = tls
        self.servers = servers

    async def sign(self, csr_pem: str) -> node_pb2.SignCertificateResponse:
        if self.tls is None:
            raise PreconditionError(
                "signing needs the node's certificate (--tls-cert, --tls-key, --tls-ca)"
            )
        request = node_pb2.SignCertificateRequest(node_id=self.node_id, csr=csr_pem)
        failures: list[str] = []
        for server in dict.fromkeys(self.servers()):
            try:
                async with aio_channel(server, self.tls) as channel:
                    stub = node_pb2_grpc.NodeServiceStub(channel)
                    response: node_pb2.SignCertificateResponse = await stub.SignCertificate(
                        request, timeout=SIGN_TIMEOUT
                    )
                    return response
            except grpc.aio.AioRpcError as error:
                refusal = _REFUSALS.get(error.code())
                details = error.details() or error.code().name
                if refusal is not None:
                    raise refusal(f"control server {server}: {details}") from None
                failures.append(f"{server}: {error.code().name} {details}")
        raise UnavailableError(f"no control server signed: {'; '.join(failures) or 'none known'}")


def node_trust_domain(tls: TlsFiles | None) -> str | None:
    """The trust domain of the node's certificate (``spiffe://TD/node/ID``), or None."""
    if tls is None:
        return None
    for uri in certificate_uris(tls):
        parsed = parse_uri(uri)
        if parsed is not None and parsed[1] == NODE:
            return parsed[0]
    return None


def security_hosts(cache: ConfigCache, services: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The ``security.hosts`` of those of ``services`` whose policy the cache holds."""
    policies = cache.resources(SERVICE_POLICY)
    hosts: dict[str, tuple[str, ...]] = {}
    for name in set(services):
        packed = policies.get(name)
        if packed is not None:
            policy = decode(packed, SERVICE_POLICY)
            assert isinstance(policy, config_pb2.ServicePolicy)
            hosts[name] = tuple(policy.security.hosts)
    return hosts


class PolicyFollower:
    """Called at every change of the registrations or the cache: asks the upstream for the
    policies of the services registered and configured, tells the keeper which registered
    ones have an identity (``security.hosts``), and retries the identities that failed when
    the hosts of one of them change (a node an operator has just added is served at once,
    not at its next backoff)."""

    def __init__(
        self,
        keeper: IdentityKeeper,
        cache: ConfigCache,
        upstream: Upstream,
        reporter: Reporter,
        configured: Iterable[str],
    ) -> None:
        self._keeper = keeper
        self._cache = cache
        self._upstream = upstream
        self._reporter = reporter
        self._configured = frozenset(configured)
        self._asked: frozenset[str] | None = None  # most changes leave it as it is
        self._hosts: dict[str, tuple[str, ...]] | None = None

    def __call__(self) -> None:
        registered = frozenset(r.service for r in self._reporter.registrations.values())
        services = registered | self._configured
        if services != self._asked:
            self._asked = services
            self._upstream.demand(IDENTITIES, {SERVICE_POLICY: services})
        hosts = security_hosts(self._cache, services)
        self._keeper.want(REGISTRATION, {name for name in registered if hosts.get(name)})
        if hosts != self._hosts:
            if self._hosts is not None:
                self._keeper.retry_now()
            self._hosts = hosts


class IdentitiesComponent:
    """The built-in identities; the keeper is made at the first start and kept across
    restarts (its files are on disk, and read back by each identity's first attempt)."""

    name = IDENTITIES
    requires = (CACHE, UPSTREAM, REPORTER)

    def __init__(self) -> None:
        self._keeper: IdentityKeeper | None = None

    @property
    def keeper(self) -> IdentityKeeper:
        if self._keeper is None:
            raise ComponentError("the identity keeper is made when the component starts")
        return self._keeper

    async def start(self, ctx: AgentContext) -> None:
        settings = ctx.setting(SETTINGS, AgentSettings)
        cache = ctx.require(CACHE, CacheRole).cache
        upstream = ctx.require(UPSTREAM, Upstream)
        reporter = ctx.require(REPORTER, ReporterRole).reporter
        if self._keeper is None:
            self._keeper = self._make_keeper(settings, ctx.state_dir, upstream)
        keeper = self._keeper
        keeper.want(CONFIGURED, settings.identities)

        follow = PolicyFollower(keeper, cache, upstream, reporter, settings.identities)
        ctx.connect(reporter.registrations_changed, follow)
        ctx.connect(cache.changed, follow)
        ctx.connect(upstream.on_connect, lambda server: keeper.retry_now())
        follow()

    @staticmethod
    def _make_keeper(
        settings: AgentSettings, state_dir: Path, upstream: Upstream
    ) -> IdentityKeeper:
        certs_dir = settings.certs_dir or (settings.state_dir or state_dir) / CERTS_SUBDIR

        def servers() -> list[str]:
            return [s for s in (upstream.connected_to, *settings.control) if s]

        signer = ControlSigner(settings.node_id, settings.tls, servers)
        return IdentityKeeper(certs_dir, node_trust_domain(settings.tls), signer)

    async def run(self) -> None:
        await self.keeper.run()

    async def stop(self) -> None:
        return None


__all__ = [
    "ControlSigner",
    "IdentitiesComponent",
    "PolicyFollower",
    "node_trust_domain",
    "security_hosts",
]
