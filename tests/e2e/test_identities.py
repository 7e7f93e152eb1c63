"""Service identities with real processes: a control server with mTLS and ``--signing-ca`` (a
``meshctl certs`` CA), agents with node certificates, services whose ``security.hosts`` say
which nodes may hold their identity. The agent's files are read as grpcio's file watcher
reads them."""

from __future__ import annotations

import datetime
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store

from control import certs
from mesh.v1 import agent_pb2
from mesh_agent.daemon import cli
from mesh_core.identity_files import identity_paths
from tests.conftest import run_cli, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import Pki, agent_status, log_lines, register

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TD = "mesh.test"
WEB = f"spiffe://{TD}/service/web"
SERVICE = "name: web\nendpoints: []\nsecurity: {hosts: ['web-*'], mode: strict}\n"


class Mesh:
    """A PKI, a TLS control server signing with ``signing`` (the PKI's CA unless given), and
    service ``web`` applied by an operator."""

    def __init__(
        self,
        procs: MeshProcesses,
        tmp_path: Path,
        *extra: str,
        signing: Path | None = None,
        pki: Pki | None = None,
    ) -> None:
        self.procs = procs
        self.pki = pki or Pki(tmp_path / "pki", TD)
        server = self.pki.issue("server", server="127.0.0.1")
        self.control_proc, self.control = procs.start_control(
            "--signing-ca", str(signing or self.pki.ca), *extra, tls_dir=server
        )
        self.operator = self.pki.issue("operator", operator="alice")
        self.service_file = tmp_path / "web.yaml"
        self.apply(SERVICE)

    def apply(self, text: str) -> None:
        """``meshctl apply`` of ``text`` as operator alice."""
        self.service_file.write_text(text)
        flags = Pki.flags(self.operator)
        path = str(self.service_file)
        applied = run_cli("control.meshctl", "--control", self.control, *flags, "apply", "-f", path)
        assert applied.returncode == 0, applied.stderr

    def agent(self, node: str, *extra: str) -> str:
        """Agent ``node`` with its node certificate (127.0.0.1 its address); its socket."""
        tls_dir = self.pki.issue(node, node=node, ips=["127.0.0.1"])
        _, unix = self.procs.start_agent(self.control, node, *extra, tls_dir=tls_dir)
        wait_for(lambda: agent_status(unix).upstream == self.control, 20, f"{node} on mTLS")
        return unix

    def certs_dir(self, node: str) -> Path:
        return self.procs.agent_state_dir(node) / "identities"


def identity(unix: str, service: str = "web") -> agent_pb2.IdentityStatus | None:
    return next((i for i in agent_status(unix).identities if i.service == service), None)


def verified(chain_pem: bytes, bundle_pem: bytes) -> list[x509.Certificate]:
    """The chain, path-validated against the bundle as a client certificate (cryptography's
    verifier: signatures, validity, CA constraints, usages); raises when it does not verify."""
    leaf, *intermediates = x509.load_pem_x509_certificates(chain_pem)
    verifier = (
        PolicyBuilder().store(Store(x509.load_pem_x509_certificates(bundle_pem)))
    ).build_client_verifier()
    return list(verifier.verify(leaf, intermediates).chain)


def key_matches(chain_pem: bytes, key_pem: bytes) -> bool:
    leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    key = serialization.load_pem_private_key(key_pem, password=None)
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(
        key.public_key().public_bytes(der, spki) == leaf.public_key().public_bytes(der, spki)
    )


def test_a_node_the_hosts_match_gets_the_identity_files(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    mesh = Mesh(procs, tmp_path)
    unix = mesh.agent("web-1")
    register(unix, "web", "127.0.0.1:7001")
    held = wait_for(
        lambda: (i := identity(unix)) is not None and i.HasField("not_after") and i,
        20,
        "the web identity on web-1",
    )
    paths = identity_paths("web", mesh.certs_dir("web-1"))
    assert held.spiffe_id == WEB and held.source == "registration" and not held.last_error
    assert held.certificate_file == str(paths.cert)
    assert held.private_key_file == str(paths.key)
    assert held.ca_certificate_file == str(paths.ca)
    assert held.renew_at.ToDatetime() < held.not_after.ToDatetime()
    assert stat.S_IMODE(os.stat(paths.key).st_mode) == 0o600
    assert paths.current.is_symlink()
    chain, key, bundle = paths.cert.read_bytes(), paths.key.read_bytes(), paths.ca.read_bytes()
    assert key_matches(chain, key)
    leaf = x509.load_pem_x509_certificates(chain)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(WEB)]
    assert verified(chain, bundle)[-1] == x509.load_pem_x509_certificate(
        (mesh.pki.ca / "ca.pem").read_bytes()
    )
    lifetime = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(hours=23) < lifetime <= datetime.timedelta(hours=24, seconds=1)
    assert bundle == (mesh.pki.ca / "ca.pem").read_bytes()
    signed = [e for e in log_lines(mesh.control_proc) if e.get("event") == "certificate signed"]
    assert signed and signed[-1]["node_id"] == "web-1" and signed[-1]["identity"] == WEB


def test_a_node_the_hosts_do_not_match_is_refused(procs: MeshProcesses, tmp_path: Path) -> None:
    mesh = Mesh(procs, tmp_path)
    unix = mesh.agent("db-1")
    register(unix, "web", "127.0.0.1:7002")
    held = wait_for(
        lambda: (i := identity(unix)) is not None and i.last_error and i, 20, "the refusal"
    )
    assert held.last_error.startswith(f"control server {mesh.control}: ")
    assert f"node 'db-1' may not hold {WEB}" in held.last_error
    assert "matches none of the service's security.hosts (web-*)" in held.last_error
    assert not held.HasField("not_after") and not held.spiffe_id

    def refusals() -> list[dict[str, object]]:
        entries = log_lines(mesh.control_proc)
        return [e for e in entries if e.get("event") == "certificate refused"]

    logged = wait_for(refusals, 10, "the control server to log the refusal")[0]
    assert logged["node_id"] == "db-1" and logged["identity"] == WEB
    assert logged["code"] == "PERMISSION_DENIED" and logged["level"] == "warning"
    paths = identity_paths("web", mesh.certs_dir("db-1"))
    assert not paths.current.exists() and not paths.cert.exists()

    # Four refusals: the agent's next try is 4-8 s away. An operator adds the node to the
    # hosts; the agent sees the policy change and tries again at once.
    wait_for(lambda: len(refusals()) >= 4, 30, "four refusals")
    mesh.apply(SERVICE.replace("['web-*']", "['web-*', db-1]"))
    wait_for(paths.cert.exists, 3, "the files, once db-1 may hold the identity")
    wait_for(lambda: (i := identity(unix)) is not None and not i.last_error, 5, "no error")


def test_a_configured_identity_is_held_without_a_registration(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    mesh = Mesh(procs, tmp_path)
    unix = mesh.agent("web-2", "--identity", "web")
    held = wait_for(
        lambda: (i := identity(unix)) is not None and i.HasField("not_after") and i, 20, "web"
    )
    assert held.source == "configured"
    assert identity_paths("web", mesh.certs_dir("web-2")).cert.exists()


@dataclass
class PairReader:
    """Reads the identity's key and certificate over and over, the way grpcio's file watcher
    does (modification times in whole seconds before and after; read again when one
    moved), and checks that each pair it keeps belongs together."""

    cert: Path
    key: Path
    kept: int = 0
    retried: int = 0
    mismatched: int = 0
    certificates: set[bytes] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.002):  # a few hundred reads a second, not a busy loop
            try:
                before = (int(self.key.stat().st_mtime), int(self.cert.stat().st_mtime))
                key, chain = self.key.read_bytes(), self.cert.read_bytes()
                after = (int(self.key.stat().st_mtime), int(self.cert.stat().st_mtime))
            except FileNotFoundError:
                continue
            if before != after:
                self.retried += 1
                continue
            self.kept += 1
            self.certificates.add(chain)
            if not key_matches(chain, key):
                self.mismatched += 1


def test_renewals_replace_the_pair_atomically(procs: MeshProcesses, tmp_path: Path) -> None:
    mesh = Mesh(procs, tmp_path, "--cert-lifetime", "2s")
    unix = mesh.agent("web-3", "--identity", "web")
    paths = identity_paths("web", mesh.certs_dir("web-3"))
    wait_for(paths.cert.exists, 20, "the first certificate")
    reader = PairReader(paths.cert, paths.key)
    thread = threading.Thread(target=reader.run, daemon=True)
    thread.start()
    resolved: set[bytes] = set()
    try:
        # A second reader resolves ``current`` once per pair (mesh_core's IdentityPaths.read).
        def renewed() -> bool:
            material = paths.read()
            assert key_matches(material.cert, material.key)
            resolved.add(material.cert)
            return len(reader.certificates) >= 5

        wait_for(renewed, 30, "five certificates seen by the reader", every=0.01)
    finally:
        reader.stop.set()
        thread.join(5)
    assert reader.mismatched == 0, reader
    assert reader.kept > 50, reader
    assert len(resolved) >= 3
    held = identity(unix)
    assert held is not None and not held.last_error
    assert held.not_after.ToDatetime() - held.renew_at.ToDatetime() < datetime.timedelta(seconds=2)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_a_ca_rotation_reaches_the_written_bundle(procs: MeshProcesses, tmp_path: Path) -> None:
    # The PKI's CA (mTLS between the agent and the control server) signs first, then a new one.
    pki = Pki(tmp_path / "pki", TD)
    new, signing, bundle = tmp_path / "ca-new", tmp_path / "signing", tmp_path / "bundle.pem"
    certs.init_ca(new, TD)
    old_ca, new_ca = (pki.ca / "ca.pem").read_bytes(), (new / "ca.pem").read_bytes()
    signing.mkdir()
    for name in ("ca.pem", "key.pem"):
        (signing / name).write_bytes((pki.ca / name).read_bytes())
    _write(bundle, old_ca.decode())
    mesh = Mesh(
        procs,
        tmp_path,
        "--trust-bundle",
        str(bundle),
        "--cert-lifetime",
        "2s",
        signing=signing,
        pki=pki,
    )
    unix = mesh.agent("web-4", "--identity", "web")
    paths = identity_paths("web", mesh.certs_dir("web-4"))

    def written(expected: bytes, issuer: bytes) -> bool:
        if not paths.current.exists():
            return False
        material = paths.read()
        if material.ca != expected:
            return False
        return verified(material.cert, material.ca)[-1] == x509.load_pem_x509_certificate(issuer)

    wait_for(lambda: written(old_ca, old_ca), 20, "the old CA alone")
    _write(bundle, (old_ca + new_ca).decode())
    wait_for(lambda: written(old_ca + new_ca, old_ca), 20, "both CAs, signed by the old one")
    for name in ("ca.pem", "key.pem"):
        _write(signing / name, (new / name).read_text())
    wait_for(lambda: written(old_ca + new_ca, new_ca), 20, "certificates of the new CA")
    _write(bundle, new_ca.decode())
    wait_for(lambda: written(new_ca, new_ca), 20, "the new CA alone")
    held = identity(unix)
    assert held is not None and not held.last_error


def test_without_a_signing_ca_the_agent_says_how_to_enable_it(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    pki = Pki(tmp_path / "pki", TD)
    _, control = procs.start_control(tls_dir=pki.issue("server", server="127.0.0.1"))
    node = pki.issue("web-5", node="web-5", ips=["127.0.0.1"])
    _, unix = procs.start_agent(control, "web-5", "--identity", "web", tls_dir=node)
    held = wait_for(
        lambda: (i := identity(unix)) is not None and i.last_error and i, 20, "the error"
    )
    assert "certificate signing is not enabled on this control server" in held.last_error
    assert "--signing-ca DIR" in held.last_error


def test_signing_and_identity_settings_are_checked_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = Pki(tmp_path / "pki", TD)
    server = Pki.flags(pki.issue("server", server="127.0.0.1"))
    base = ["serve", "--listen", "127.0.0.1:0", "--store", "memory:"]
    for extra, words in (
        (["--signing-ca", str(pki.ca)], "a signing CA needs mTLS"),
        ([*server, "--trust-bundle", str(pki.ca / "ca.pem")], "need a signing CA"),
        ([*server, "--signing-cert", str(pki.ca / "ca.pem")], "go together"),
        ([*server, "--signing-ca", str(tmp_path)], "does not exist"),
        ([*server, "--signing-ca", str(pki.ca), "--cert-lifetime", "0s"], "at least 1s"),
    ):
        result = run_cli("control", *base, *extra, timeout=30)
        assert result.returncode != 0, extra
        assert words in result.stderr, (extra, result.stderr)

    node = Pki.flags(pki.issue("n1", node="n1"))

    def failure(*args: str) -> str:
        parsed = cli.build_parser().parse_args(["run", "--control", "127.0.0.1:1", *args])
        with pytest.raises(SystemExit) as exit_:
            cli.settings_from(parsed)
        assert exit_.value.code == 2
        return capsys.readouterr().err.strip()

    parsed = cli.build_parser().parse_args(
        ["run", "--control", "127.0.0.1:1", *node, "--identity", "web", "--identity", "db"]
    )
    assert cli.settings_from(parsed).identities == ["web", "db"]
    assert "needs mTLS" in failure("--identity", "web")
    assert "'Web': must be a lowercase DNS name" in failure(*node, "--identity", "Web")
