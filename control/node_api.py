"""``mesh.v1.NodeService``: what node agents tell mesh-control besides the ADS stream.

The servicer only moves requests into :class:`~control.registry.Registrations`, where the
rules live. A request names its node; with mTLS the caller must be that node (its
certificate's URI SAN), and may register endpoints only on its own addresses. Without mTLS
any caller can set any node's state (a development set-up).

``SignCertificate`` signs a service identity for a node only with mTLS and a signing CA
(:class:`~control.signing.SigningAuthority`; FAILED_PRECONDITION without either), and only
when the service's ``security.hosts`` match the node its certificate names
(:func:`mesh_core.identity.host_matching`): a registration grants nothing, since a node
asserts its own. A refusal is PERMISSION_DENIED naming the node, the identity and why, and is
logged as ``certificate refused``.

``ReportTraffic`` adds a node's call counts to the :class:`~control.traffic.TrafficGraph`
(the service graph's window); a report with bounds or counts that do not fit is
INVALID_ARGUMENT naming the field, and so is one with more than
:data:`~mesh_core.traffic.MAX_REPORT_EDGES` edges (limit ``max_edges_per_report``).
"""

from __future__ import annotations

import grpc
import structlog

from control.registry import Registrations
from control.security import Access
from control.signing import SignedCertificate, SigningAuthority
from control.store import Store
from control.traffic import TrafficGraph
from mesh.v1 import node_pb2, node_pb2_grpc
from mesh_core.errors import (
    ConfigError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
)
from mesh_core.identity import host_matching, service_uri
from mesh_core.limits import Limits, too_many
from mesh_core.status import abort, grpc_errors
from mesh_core.traffic import MAX_REPORT_EDGES

SIGNING_NOT_ENABLED = (
    "certificate signing is not enabled on this control server: start mesh-control serve "
    "with --signing-ca DIR (a CA from meshctl certs init, or --signing-cert and --signing-key "
    "for your own)"
)
SIGNING_NEEDS_MTLS = (
    "certificate signing needs mTLS (--tls-cert, --tls-key, --tls-ca): only a node's own "
    "certificate says which node is asking"
)


def split_host(address: str) -> str:
    """The host of ``host:port`` / ``[v6]:port`` (the whole text if it has no port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address
    return host.strip("[]")


log = structlog.get_logger(__name__)
Context = grpc.aio.ServicerContext[object, object]


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(
        self,
        registrations: Registrations,
        access: Access | None = None,
        *,
        limits: Limits | None = None,
        store: Store | None = None,
        signing: SigningAuthority | None = None,
        traffic: TrafficGraph | None = None,
    ) -> None:
        """``store`` and ``signing``: where services' ``security`` is read, and the CA that
        signs what it allows (without either, SignCertificate is FAILED_PRECONDITION).
        ``traffic``: the window ReportTraffic adds to (default: one of its own)."""
        self._traffic = traffic if traffic is not None else TrafficGraph()
        self._registrations = registrations
        self._limits = limits or Limits()
        self._access = access or Access()
        self._store = store
        self._signing = signing

    @grpc_errors
    async def SetRegistrations(
        self, request: node_pb2.SetRegistrationsRequest, context: Context
    ) -> node_pb2.SetRegistrationsResponse:
        self._limits.check_registrations(request.node_id, len(request.registrations))
        self._access.require_node(context, request.node_id, "SetRegistrations")
        foreign = self._access.foreign_hosts(
            context, (split_host(r.address) for r in request.registrations)
        )
        if foreign:
            raise PermissionDeniedError(
                f"node {request.node_id!r} may not register endpoints on {', '.join(foreign)}: "
                "not its address (its certificate's IP SANs, or the address it connects from)"
            )
        accepted = self._registrations.set(request.node_id, list(request.registrations))
        return node_pb2.SetRegistrationsResponse(accepted=accepted)

    @grpc_errors
    async def ReportClientStatus(
        self, request: node_pb2.ReportClientStatusRequest, context: Context
    ) -> node_pb2.ReportClientStatusResponse:
        self._limits.check_client_report(request.node_id, len(request.clients))
        self._access.require_node(context, request.node_id, "ReportClientStatus")
        self._registrations.report_clients(
            request.node_id,
            list(request.clients),
            request.health if request.HasField("health") else None,
        )
        return node_pb2.ReportClientStatusResponse()

    @grpc_errors
    async def ReportTraffic(
        self, request: node_pb2.ReportTrafficRequest, context: Context
    ) -> node_pb2.ReportTrafficResponse:
        self._limits.check_client_report(request.node_id, 0)
        error = too_many("edges", len(request.edges), MAX_REPORT_EDGES, "max_edges_per_report")
        if error is not None:
            error.who["node"] = request.node_id[:64]
            raise error
        self._access.require_node(context, request.node_id, "ReportTraffic")
        return node_pb2.ReportTrafficResponse(accepted=self._traffic.add(request))

    @grpc_errors
    async def SignCertificate(
        self, request: node_pb2.SignCertificateRequest, context: Context
    ) -> node_pb2.SignCertificateResponse:
        node_id = request.node_id
        identity = "(not read)"
        try:
            signing, store = self._signing_set_up()
            self._access.require_node(context, node_id, "SignCertificate")
            csr, service = signing.requested(request.csr)
            identity = service_uri(signing.trust_domain, service)
            await self._check_may_hold(store, node_id, service, identity)
            signed = signing.sign(csr, service)
        except (PermissionDeniedError, PreconditionError, ConfigError) as error:
            await abort(context, error, "certificate refused", node_id=node_id, identity=identity)
        log.info(
            "certificate signed",
            node_id=node_id,
            identity=signed.spiffe_id,
            serial=f"{signed.certificate.serial_number:x}",
            not_after=signed.certificate.not_valid_after_utc.isoformat(),
        )
        return _response(signed)

    def _signing_set_up(self) -> tuple[SigningAuthority, Store]:
        if self._signing is None or self._store is None:
            raise PreconditionError(SIGNING_NOT_ENABLED)
        if not self._access.mtls:
            raise PreconditionError(SIGNING_NEEDS_MTLS)
        return self._signing, self._store

    @staticmethod
    async def _check_may_hold(store: Store, node_id: str, service: str, identity: str) -> None:
        """Node ``node_id`` may hold ``service``'s identity iff the service's
        ``security.hosts`` match it; PermissionDeniedError saying why not."""
        refused = f"node {node_id!r} may not hold {identity}"
        try:
            stored = await store.get(service)
        except NotFoundError:
            raise PermissionDeniedError(f"{refused}: there is no service {service!r}") from None
        hosts = list(stored.service.security.hosts)
        if not hosts:
            raise PermissionDeniedError(
                f"{refused}: service {service!r} has no security.hosts, so no node may hold "
                "its identity"
            )
        if host_matching(hosts, node_id) is None:
            raise PermissionDeniedError(
                f"{refused}: it matches none of the service's security.hosts ({', '.join(hosts)})"
            )


def _response(signed: SignedCertificate) -> node_pb2.SignCertificateResponse:
    response = node_pb2.SignCertificateResponse(
        spiffe_id=signed.spiffe_id,
        certificate_chain=signed.chain_pem,
        trust_bundle=signed.bundle_pem,
    )
    response.not_before.FromDatetime(signed.certificate.not_valid_before_utc)
    response.not_after.FromDatetime(signed.certificate.not_valid_after_utc)
    return response
