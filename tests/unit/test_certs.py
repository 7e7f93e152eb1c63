"""``meshctl certs``: the development CA, its certificates, and a real mTLS handshake with them."""

from __future__ import annotations

import ipaddress
import re
import stat
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from control import certs
from control.certs import CertError
from mesh_core.errors import MeshError
from tests.conftest import run_cli


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    certs.init_ca(directory, trust_domain="prod.example")
    return directory


def test_init_writes_a_self_signed_ca_carrying_its_trust_domain(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    certs.init_ca(directory)
    ca = load(directory / "ca.pem")
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert sans(ca).get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://mesh.local"]
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"
    assert ca.signature_hash_algorithm is not None
    assert ca.signature_hash_algorithm.name == "sha256"
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert 3649 < lifetime.days <= 3650
    assert mode(directory / "key.pem") == 0o600
    assert not list(directory.glob(".*"))  # no temporary file left behind


def test_init_refuses_to_overwrite_a_ca_unless_forced(ca_dir: Path) -> None:
    before = (ca_dir / "key.pem").read_bytes()
    with pytest.raises(CertError, match=r"already holds a CA.*--force"):
        certs.init_ca(ca_dir)
    assert (ca_dir / "key.pem").read_bytes() == before
    assert issubclass(CertError, MeshError)
    certs.init_ca(ca_dir, force=True)
    assert (ca_dir / "key.pem").read_bytes() != before
    assert mode(ca_dir / "key.pem") == 0o600


def test_init_refuses_a_bad_trust_domain(tmp_path: Path) -> None:
    for bad in ("Mesh.Local", "mesh/local", ""):
        with pytest.raises(CertError, match="invalid trust domain"):
            certs.init_ca(tmp_path / "ca", trust_domain=bad)
    assert not (tmp_path / "ca").exists()


def check_leaf(out: Path, ca_dir: Path) -> x509.Certificate:
    ca = load(ca_dir / "ca.pem")
    cert = load(out / "cert.pem")
    cert.verify_directly_issued_by(ca)
    assert cert.issuer == ca.subject
    assert (out / "ca.pem").read_bytes() == (ca_dir / "ca.pem").read_bytes()
    assert mode(out / "key.pem") == 0o600
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    return cert


def test_issue_node(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "n1"
    certs.issue(ca_dir, out, node="n1", ips=["10.0.0.5", "fd00::5"])
    cert = check_leaf(out, ca_dir)
    names = sans(cert)
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://prod.example/node/n1"
    ]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("fd00::5"),
    ]
    assert names.get_values_for_type(x509.DNSName) == []
    assert usages(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 364 < lifetime.days <= 365


def test_issue_operator(ca_dir: Path, tmp_path: Path) -> None:
    cert = certs.issue(ca_dir, tmp_path / "op", operator="alice", days=7)
    assert check_leaf(tmp_path / "op", ca_dir) == cert
    assert sans(cert).get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://prod.example/operator/alice"
    ]
    assert usages(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 7


def test_issue_server_by_dns_name_and_by_ip(ca_dir: Path, tmp_path: Path) -> None:
    cert = certs.issue(ca_dir, tmp_path / "dns", server="control.example.com", ips=["10.1.2.3"])
    check_leaf(tmp_path / "dns", ca_dir)
    names = sans(cert)
    assert names.get_values_for_type(x509.DNSName) == ["control.example.com"]
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://prod.example/server/control.example.com"
    ]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert usages(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}

    cert = certs.issue(ca_dir, tmp_path / "ip", server="127.0.0.1")
    names = sans(cert)
    assert names.get_values_for_type(x509.DNSName) == []
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://prod.example/server/127.0.0.1"
    ]


def test_issue_refuses_bad_input(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = [
        ({"node": "a/b"}, "invalid node id 'a/b'"),
        ({"node": ".."}, "invalid node id"),
        ({"node": "x" * 129}, "invalid node id"),
        ({"operator": "bob smith"}, "invalid operator name"),
        ({"server": "-bad.example"}, "invalid DNS name"),
        ({"server": "a..b"}, "invalid DNS name"),
        ({"server": "x" * 64 + ".example"}, "invalid DNS name"),
        ({"server": "::1"}, "IPv6 address"),
        ({"node": "n1", "ips": ["10.0.0.300"]}, "invalid IP address '10.0.0.300'"),
        ({"node": "n1", "days": 0}, "--days"),
        ({}, "exactly one of --node, --operator or --server"),
        ({"node": "n1", "operator": "alice"}, "exactly one of"),
    ]
    for kwargs, message in cases:
        with pytest.raises(CertError, match=re.escape(message)):
            certs.issue(ca_dir, out, **kwargs)  # type: ignore[arg-type]
    assert not out.exists()
    with pytest.raises(CertError, match="no CA in"):
        certs.issue(tmp_path / "nowhere", out, node="n1")
    with pytest.raises(CertError, match="CA's own directory"):
        certs.issue(ca_dir, ca_dir, node="n1")
    assert certs.load_ca(ca_dir).trust_domain == "prod.example"


def test_a_long_node_id_is_issued_without_a_common_name(ca_dir: Path, tmp_path: Path) -> None:
    node = "n" * 128
    cert = certs.issue(ca_dir, tmp_path / "long", node=node)
    assert sans(cert).get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://prod.example/node/{node}"
    ]


def test_leaf_expiry_is_capped_at_the_cas(tmp_path: Path) -> None:
    certs.init_ca(tmp_path / "ca", days=10)
    cert = certs.issue(tmp_path / "ca", tmp_path / "n", node="n1", days=365)
    assert cert.not_valid_after_utc <= load(tmp_path / "ca" / "ca.pem").not_valid_after_utc


def serve_health(server_dir: Path) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    credentials = grpc.ssl_server_credentials(
        [((server_dir / "key.pem").read_bytes(), (server_dir / "cert.pem").read_bytes())],
        root_certificates=(server_dir / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


def check_health(port: int, client_dir: Path, trust: Path) -> health_pb2.HealthCheckResponse:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=trust.read_bytes(),
        private_key=(client_dir / "key.pem").read_bytes(),
        certificate_chain=(client_dir / "cert.pem").read_bytes(),
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response: health_pb2.HealthCheckResponse = stub.Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return response


def test_mtls_handshake_with_issued_certificates(ca_dir: Path, tmp_path: Path) -> None:
    certs.issue(ca_dir, tmp_path / "server", server="127.0.0.1")
    certs.issue(ca_dir, tmp_path / "n1", node="n1")
    certs.init_ca(tmp_path / "other-ca")
    certs.issue(tmp_path / "other-ca", tmp_path / "stranger", node="n1")
    server, port = serve_health(tmp_path / "server")
    try:
        response = check_health(port, tmp_path / "n1", tmp_path / "n1" / "ca.pem")
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        # A client certificate from another CA is refused by the server.
        with pytest.raises(grpc.RpcError) as refused:
            check_health(port, tmp_path / "stranger", tmp_path / "n1" / "ca.pem")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # A client trusting only another CA refuses the server.
        with pytest.raises(grpc.RpcError) as distrusted:
            check_health(port, tmp_path / "stranger", tmp_path / "stranger" / "ca.pem")
        assert distrusted.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_the_cli(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    result = run_cli("control.meshctl", "certs", "init", "--out", str(ca), "--trust-domain", "t.d")
    assert result.returncode == 0, result.stderr
    assert mode(ca / "key.pem") == 0o600
    assert load(ca / "ca.pem").extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    again = run_cli("control.meshctl", "certs", "init", "--out", str(ca))
    assert again.returncode == 2
    assert again.stderr.startswith("meshctl: ") and "--force" in again.stderr

    out = tmp_path / "op"
    issued = run_cli(
        "control.meshctl", "certs", "issue", "--ca", str(ca), "--operator", "ops", "--out", str(out)
    )
    assert issued.returncode == 0, issued.stderr
    shown = run_cli("control.meshctl", "certs", "show", str(out / "cert.pem"))
    assert shown.returncode == 0, shown.stderr
    assert "URI:spiffe://t.d/operator/ops" in shown.stdout
    assert "clientAuth" in shown.stdout and "CA:        no" in shown.stdout

    bad = run_cli(
        "control.meshctl", "certs", "issue", "--ca", str(ca), "--node", "a b", "--out", str(out)
    )
    assert bad.returncode == 2
    assert "meshctl: invalid node id 'a b': use 1-128 letters" in bad.stderr
