"""The signing checks: what a CSR may ask for and what the certificate holds
(:mod:`control.signing`), and who may hold which identity (``NodeService/SignCertificate``
in :mod:`control.node_api`), with a CA from ``control.certs`` and a fake servicer context
whose TLS peer is a node."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import grpc
import pytest
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from control import certs
from control.node_api import NodeServicer
from control.registry import Registrations
from control.security import Access
from control.signing import SigningAuthority, SigningFiles, load_signing_ca
from control.store.memory import MemoryStore
from mesh.v1 import config_pb2, node_pb2
from mesh_agent.daemon.identities.keys import key_matches, new_key_and_csr
from mesh_core.errors import CertError, ConfigError, PermissionDeniedError

pytestmark = pytest.mark.timeout(30)

TD = "mesh.test"
WEB = f"spiffe://{TD}/service/web"


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class NodeContext:
    """A servicer context whose TLS peer is ``identity`` (None: no TLS)."""

    def __init__(self, identity: str | None) -> None:
        self.identity = identity

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"peer_uri": [self.identity.encode()]} if self.identity else {}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str = "", **_: object) -> None:
        raise Aborted(code, details)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    certs.init_ca(tmp_path / "ca", TD)
    return tmp_path / "ca"


@pytest.fixture
def authority(ca_dir: Path) -> SigningAuthority:
    return SigningAuthority(SigningFiles.ca_dir(ca_dir), TD)


def _csr(uri: str | None, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uri is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _verifies(leaf: x509.Certificate, bundle_pem: str) -> bool:
    for root in x509.load_pem_x509_certificates(bundle_pem.encode()):
        try:
            leaf.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


# -- control.signing ---------------------------------------------------------------------------


def test_a_certificate_holds_the_identity_only_with_both_usages(
    authority: SigningAuthority, ca_dir: Path
) -> None:
    request = new_key_and_csr(WEB)
    csr, service = authority.requested(request.csr_pem)
    assert service == "web"
    signed = authority.sign(csr, service)
    leaf = x509.load_pem_x509_certificates(signed.chain_pem.encode())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(WEB)]
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    # Rounded up to the second: X.509 times have no fraction.
    assert datetime.timedelta(hours=24) - datetime.timedelta(seconds=1) < lifetime
    assert lifetime <= datetime.timedelta(hours=24, seconds=1)
    assert leaf.not_valid_after_utc.microsecond == 0
    assert key_matches(signed.chain_pem.encode(), request.key_pem)
    assert signed.bundle_pem == (ca_dir / "ca.pem").read_text()
    assert _verifies(leaf, signed.bundle_pem)
    assert signed.spiffe_id == WEB


def test_the_lifetime_is_a_setting_and_never_passes_the_ca(ca_dir: Path, tmp_path: Path) -> None:
    short = SigningAuthority(SigningFiles.ca_dir(ca_dir), TD, datetime.timedelta(seconds=5))
    signed = short.sign(*short.requested(_csr(WEB)))
    start = signed.certificate.not_valid_before_utc
    # 60 s backdated, the end rounded up to the second: 65 or 66 seconds in all.
    assert signed.certificate.not_valid_after_utc - start in {
        datetime.timedelta(seconds=65),
        datetime.timedelta(seconds=66),
    }
    certs.init_ca(tmp_path / "brief", TD, days=1)
    long = SigningAuthority(SigningFiles.ca_dir(tmp_path / "brief"), TD, datetime.timedelta(days=9))
    capped = long.sign(*long.requested(_csr(WEB)))
    ca_end = load_signing_ca(SigningFiles.ca_dir(tmp_path / "brief")).cert.not_valid_after_utc
    assert capped.certificate.not_valid_after_utc == ca_end
    with pytest.raises(ConfigError, match="at least 1s"):
        SigningAuthority(SigningFiles.ca_dir(ca_dir), TD, datetime.timedelta(0))


@pytest.mark.parametrize(
    ("csr", "error", "words"),
    [
        ("not a csr", ConfigError, "not a PEM certificate signing request"),
        (None, ConfigError, "exactly one subject alternative name"),
        ("dns", ConfigError, "exactly one subject alternative name"),
        ("two", ConfigError, "exactly one subject alternative name"),
        (f"spiffe://{TD}/node/web", PermissionDeniedError, "a node identity"),
        ("spiffe://other.test/service/web", PermissionDeniedError, "trust domain 'other.test'"),
        ("https://example.com/x", PermissionDeniedError, "no SPIFFE identity"),
        (f"spiffe://{TD}/service/Web_1", ConfigError, "service name"),
        ("p192", ConfigError, "use P-256"),
        ("rsa1024", ConfigError, "RSA key of 1024 bits"),
    ],
)
def test_what_a_csr_may_not_ask_for(
    authority: SigningAuthority, csr: str | None, error: type[Exception], words: str
) -> None:
    text = _odd_csr(csr)
    with pytest.raises(error, match=words):
        authority.requested(text)


def _odd_csr(kind: str | None) -> str:
    if kind == "not a csr":
        return "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    if kind == "dns":
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName("web.example")]
    elif kind == "two":
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.UniformResourceIdentifier(WEB), x509.DNSName("web.example")]
    elif kind == "p192":
        return _csr(WEB, ec.generate_private_key(ec.SECP192R1()))
    elif kind == "rsa1024":
        return _csr(WEB, rsa.generate_private_key(65537, 1024))
    else:
        return _csr(kind)
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def test_an_rsa_key_is_signed_too(authority: SigningAuthority) -> None:
    signed = authority.sign(*authority.requested(_csr(WEB, rsa.generate_private_key(65537, 2048))))
    usage = signed.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment


def test_a_rotation_of_the_bundle_and_then_of_the_signer_needs_no_restart(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    certs.init_ca(old, TD)
    certs.init_ca(new, TD)
    signing = tmp_path / "signing"
    signing.mkdir()
    bundle = tmp_path / "bundle.pem"
    _place(signing, old)
    bundle.write_text((old / "ca.pem").read_text())
    authority = SigningAuthority(SigningFiles.ca_dir(signing, bundle), TD)
    first = authority.sign(*authority.requested(_csr(WEB)))
    assert _subjects(first.bundle_pem) == [_subject(old)]

    _touch_write(bundle, (old / "ca.pem").read_text() + (new / "ca.pem").read_text())
    both = authority.sign(*authority.requested(_csr(WEB)))
    assert _subjects(both.bundle_pem) == [_subject(old), _subject(new)]
    assert both.certificate.issuer.rfc4514_string() == _subject(old)

    _place(signing, new)
    switched = authority.sign(*authority.requested(_csr(WEB)))
    assert switched.certificate.issuer.rfc4514_string() == _subject(new)
    assert _verifies(switched.certificate, switched.bundle_pem)

    _touch_write(bundle, (new / "ca.pem").read_text())
    last = authority.sign(*authority.requested(_csr(WEB)))
    assert _subjects(last.bundle_pem) == [_subject(new)]


def test_unusable_new_files_keep_the_last_good_ca(tmp_path: Path, ca_dir: Path) -> None:
    other = tmp_path / "other"
    certs.init_ca(other, TD)
    bundle = tmp_path / "bundle.pem"
    bundle.write_text((ca_dir / "ca.pem").read_text())
    authority = SigningAuthority(SigningFiles.ca_dir(ca_dir, bundle), TD)
    _touch_write(bundle, (other / "ca.pem").read_text())  # does not hold the signing CA
    with structlog.testing.capture_logs() as logs:
        signed = authority.sign(*authority.requested(_csr(WEB)))
    assert _subjects(signed.bundle_pem) == [_subject(ca_dir)]
    assert any("does not hold the signing CA" in entry.get("error", "") for entry in logs), logs


def test_a_bundle_without_the_signer_or_a_foreign_key_is_refused_at_start(
    tmp_path: Path, ca_dir: Path
) -> None:
    other = tmp_path / "other"
    certs.init_ca(other, TD)
    with pytest.raises(CertError, match="does not hold the signing CA"):
        SigningAuthority(SigningFiles.ca_dir(ca_dir, other / "ca.pem"), TD)
    with pytest.raises(CertError, match="is not the key of"):
        SigningAuthority(SigningFiles(ca_dir / "ca.pem", other / "key.pem"), TD)
    with pytest.raises(CertError, match=r"trust domain 'mesh\.test'"):
        SigningAuthority(SigningFiles.ca_dir(ca_dir), "elsewhere.test")
    leaf = certs_issue_node(ca_dir, tmp_path / "n1")
    with pytest.raises(CertError, match="not a CA certificate"):
        SigningAuthority(SigningFiles(leaf / "cert.pem", leaf / "key.pem"), TD)


def certs_issue_node(ca_dir: Path, out: Path) -> Path:
    certs.issue(ca_dir, out, node="n1")
    return out


def _place(signing: Path, source: Path) -> None:
    for name in ("ca.pem", "key.pem"):
        _touch_write(signing / name, (source / name).read_text())


def _touch_write(path: Path, text: str) -> None:
    """Writes ``text`` and moves the mtime on, so a reload sees it in the same second."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def _subject(ca_dir: Path) -> str:
    return x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes()).subject.rfc4514_string()


def _subjects(bundle: str) -> list[str]:
    return [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(bundle.encode())]


# -- NodeService/SignCertificate -----------------------------------------------------------------


async def _servicer(
    authority: SigningAuthority | None, *services: config_pb2.Service, mtls: bool = True
) -> NodeServicer:
    store = MemoryStore()
    if services:
        await store.apply(services)
    access = Access(mtls=mtls, trust_domain=TD)
    return NodeServicer(Registrations(), access, store=store, signing=authority)


def _web(*hosts: str) -> config_pb2.Service:
    return config_pb2.Service(name="web", security=config_pb2.ServiceSecurity(hosts=hosts))


def _request(node: str, uri: str = WEB) -> node_pb2.SignCertificateRequest:
    return node_pb2.SignCertificateRequest(node_id=node, csr=new_key_and_csr(uri).csr_pem)


async def test_a_node_the_hosts_match_gets_its_certificate(authority: SigningAuthority) -> None:
    servicer = await _servicer(authority, _web("db-1", "web-*"))
    context = NodeContext(f"spiffe://{TD}/node/web-7")
    response = await servicer.SignCertificate(_request("web-7"), context)  # type: ignore[arg-type]
    assert response.spiffe_id == WEB
    leaf = x509.load_pem_x509_certificates(response.certificate_chain.encode())[0]
    assert response.not_after.ToDatetime(datetime.UTC) == leaf.not_valid_after_utc
    assert response.not_before.ToDatetime(datetime.UTC) == leaf.not_valid_before_utc
    assert _verifies(leaf, response.trust_bundle)


@pytest.mark.parametrize(
    ("service", "caller", "node", "words"),
    [
        (_web("web-*"), "db-1", "db-1", "matches none of the service's security.hosts (web-*)"),
        (_web(), "web-1", "web-1", "has no security.hosts"),
        (None, "web-1", "web-1", "there is no service 'web'"),
        (_web("web-*"), "db-1", "web-1", "certificate identifies node 'db-1'"),
    ],
)
async def test_a_refusal_names_the_node_the_identity_and_why_and_is_logged(
    authority: SigningAuthority,
    service: config_pb2.Service | None,
    caller: str,
    node: str,
    words: str,
) -> None:
    servicer = await _servicer(authority, *([service] if service else []))
    context = NodeContext(f"spiffe://{TD}/node/{caller}")
    with structlog.testing.capture_logs() as logs, pytest.raises(Aborted) as refused:
        await servicer.SignCertificate(_request(node), context)  # type: ignore[arg-type]
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert words in refused.value.details
    if caller == node:
        assert f"node {node!r} may not hold {WEB}" in refused.value.details
    entry = next(e for e in logs if e["event"] == "certificate refused")
    assert entry["node_id"] == node and entry["code"] == "PERMISSION_DENIED"
    assert words in entry["error"]


async def test_an_operator_certificate_is_no_node(authority: SigningAuthority) -> None:
    servicer = await _servicer(authority, _web("*"))
    context = NodeContext(f"spiffe://{TD}/operator/alice")
    with pytest.raises(Aborted) as refused:
        await servicer.SignCertificate(_request("alice"), context)  # type: ignore[arg-type]
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert "needs a node certificate" in refused.value.details


async def test_a_bad_csr_is_invalid_argument(authority: SigningAuthority) -> None:
    servicer = await _servicer(authority, _web("*"))
    request = node_pb2.SignCertificateRequest(node_id="web-1", csr="nothing")
    with pytest.raises(Aborted) as refused:
        await servicer.SignCertificate(request, NodeContext(f"spiffe://{TD}/node/web-1"))  # type: ignore[arg-type]
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "csr: not a PEM certificate signing request" in refused.value.details


async def test_without_a_signing_ca_or_mtls_signing_is_a_failed_precondition(
    authority: SigningAuthority,
) -> None:
    for servicer, words in (
        (await _servicer(None, _web("*")), "--signing-ca DIR"),
        (await _servicer(authority, _web("*"), mtls=False), "needs mTLS"),
    ):
        with pytest.raises(Aborted) as refused:
            await servicer.SignCertificate(_request("web-1"), NodeContext(None))  # type: ignore[arg-type]
        assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert words in refused.value.details
