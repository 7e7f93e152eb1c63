"""The parts of service mTLS that need no process: the TLS contexts the control server and the
agent build, the agent's declarations of servers and identities, and the listening addresses
a mesh server declares. The real handshakes are in tests/e2e/test_mtls.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from control.config import load_documents
from control.resources import build_resources
from mesh_agent.client._mesh_server import listening_addresses
from mesh_agent.daemon.servers import MAX_DECLARED, STATE_FILE, Declarations
from mesh_agent.daemon.upstream.interest import local_demand
from mesh_core.errors import ConfigError
from mesh_core.identity_files import CERTIFICATE_PROVIDER
from mesh_xds.session import TypeState
from mesh_xds.transport import server_listener
from mesh_xds.types import CLUSTER, LISTENER
from tests.unit.agent_caches import agent_cache

SERVICES = """\
name: web
endpoints: [{address: 10.0.0.1:80}]
security: {hosts: ['web-*'], mode: strict}
subsets: [{name: v2, labels: {version: v2}}]
---
name: api
endpoints: [{address: 10.0.0.2:80}]
security: {hosts: ['api-*']}
"""


def built(trust_domain: str | None = "mesh.test") -> dict[str, dict[str, object]]:
    return build_resources(load_documents(SERVICES, "services.yaml"), trust_domain=trust_domain)  # type: ignore[return-value]


def upstream_context(cluster: cluster_pb2.Cluster) -> tls_pb2.UpstreamTlsContext:
    context = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(context)
    return context


def test_a_strict_service_s_clusters_name_the_server_s_identity() -> None:
    clusters = built()[CLUSTER]
    for name in ("web", "web/v2"):
        context = upstream_context(clusters[name])  # type: ignore[arg-type]
        common = context.common_tls_context
        assert common.tls_certificate_provider_instance.instance_name == CERTIFICATE_PROVIDER
        validation = common.validation_context
        assert validation.ca_certificate_provider_instance.instance_name == CERTIFICATE_PROVIDER
        assert [m.exact for m in validation.match_subject_alt_names] == [
            "spiffe://mesh.test/service/web"
        ]
    assert not clusters["api"].HasField("transport_socket")  # type: ignore[attr-defined]


def test_without_a_trust_domain_the_match_takes_any_trust_domain() -> None:
    context = upstream_context(built(None)[CLUSTER]["web"])  # type: ignore[arg-type]
    (matcher,) = context.common_tls_context.validation_context.match_subject_alt_names
    assert matcher.safe_regex.regex == "spiffe://[^/]+/service/web"


def test_a_server_listener_has_the_listening_address_and_mode() -> None:
    strict = server_listener("[::]:50051", "strict")
    assert strict.name == "mesh-server/[::]:50051"
    assert strict.address.socket_address.address == "::"
    assert strict.address.socket_address.port_value == 50051
    context = tls_pb2.DownstreamTlsContext()
    assert strict.filter_chains[0].transport_socket.typed_config.Unpack(context)
    assert context.require_client_certificate.value
    plain = server_listener("127.0.0.1:7000", "disabled")
    assert not plain.filter_chains[0].HasField("transport_socket")


def policies_cache() -> object:
    resources = build_resources(load_documents(SERVICES, "services.yaml"))
    return agent_cache(resources, {"type.googleapis.com/mesh.v1.ServicePolicy": ["web", "api"]})


def test_declarations_serve_listeners_once_the_policy_is_held(tmp_path: Path) -> None:
    declarations = Declarations(tmp_path)
    declarations.declare_server("web", "127.0.0.1:7000")
    declarations.declare_server("api", "127.0.0.1:7001")
    declarations.declare_server("unknown", "127.0.0.1:7002")
    listeners = declarations.listeners(policies_cache())  # type: ignore[arg-type]
    assert sorted(listeners) == ["mesh-server/127.0.0.1:7000", "mesh-server/127.0.0.1:7001"]
    assert listeners["mesh-server/127.0.0.1:7000"].filter_chains[0].HasField("transport_socket")
    assert not listeners["mesh-server/127.0.0.1:7001"].filter_chains[0].HasField("transport_socket")
    assert Declarations.policy_facts(policies_cache(), "web") == ("strict", True)  # type: ignore[arg-type]
    assert Declarations.policy_facts(policies_cache(), "unknown") is None  # type: ignore[arg-type]


def test_declarations_are_kept_bounded_and_checked(tmp_path: Path) -> None:
    declarations = Declarations(tmp_path)
    changes: list[int] = []
    declarations.changed.connect(lambda: changes.append(1))
    declarations.declare_server("web", "127.0.0.1:7000")
    declarations.declare_server("web", "127.0.0.1:7000")  # the same: no change
    declarations.hold_identity("client")
    assert len(changes) == 2
    again = Declarations(tmp_path)
    again.load()
    assert again.servers == {"127.0.0.1:7000": "web"} and list(again.identities) == ["client"]
    for port in range(MAX_DECLARED + 5):
        again.declare_server("web", f"127.0.0.1:{10000 + port}")
    assert len(again.servers) == MAX_DECLARED
    assert "127.0.0.1:7000" not in again.servers  # the oldest went first
    with pytest.raises(ConfigError, match="listening_address"):
        again.declare_server("web", "localhost:80")
    with pytest.raises(ConfigError, match="service"):
        again.hold_identity("Not A Name")


def test_a_damaged_declarations_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text(json.dumps({"servers": {"nonsense": "web"}}))
    declarations = Declarations(tmp_path)
    declarations.load()
    assert declarations.servers == {}
    assert (tmp_path / f"{STATE_FILE}.bad").exists()


class _Session:
    def __init__(self, names: set[str]) -> None:
        state = TypeState(LISTENER)
        state.names = names
        self.types = {LISTENER: state}


def test_server_listeners_are_never_asked_upstream() -> None:
    demand = local_demand([_Session({"mesh-client/web", "mesh-server/127.0.0.1:7000"})])  # type: ignore[list-item]
    assert demand[LISTENER] == frozenset({"mesh-client/web"})


def test_listening_addresses_are_written_as_grpc_names_them() -> None:
    assert listening_addresses("0.0.0.0:50051", 50051) == ["0.0.0.0:50051"]
    assert listening_addresses("[::]:50051", 50051) == ["[::]:50051"]
    assert listening_addresses("10.1.2.3:7000", 7000) == ["10.1.2.3:7000"]
    assert set(listening_addresses("localhost:7000", 7000)) >= {"127.0.0.1:7000", "[::1]:7000"}
