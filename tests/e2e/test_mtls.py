"""mTLS between services with real processes: a control server signing with a ``meshctl certs``
CA, an agent with its node certificate, servers from ``mesh_server`` (grpcio's xDS-enabled
server) and ``aio_mesh_server``, and callers through ``mesh_channel`` (grpcio's xDS client
with ``xds_channel_credentials``), each in its own process (:mod:`tests.e2e.mtls_peer`).

Service ``web`` is ``strict``; ``client`` and ``other`` are identities the node may hold
(``other``, strict too, is a real identity, just not web's); ``secret`` is one it
may not.

The tests that neither reconfigure nor restart the mesh share one (``shared_mesh``): each
starts its own servers and callers, stopped at its end, and its servers' registrations are
removed, so the next test finds ``web`` with no endpoint."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from control import certs
from tests.conftest import Proc, run_cli, wait_for
from tests.e2e.commands import Commands
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import Pki, agent_status, deregister, log_lines, register

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

TD = "mesh.test"
SERVICES = """\
name: web
endpoints: []
security: {hosts: ['node-*'], mode: %(mode)s}
---
name: client
endpoints: []
security: {hosts: ['node-*']}
---
name: other
endpoints: []
security: {hosts: ['node-*'], mode: strict}
---
name: secret
endpoints: []
security: {hosts: ['vault-*'], mode: strict}
"""
REFRESH = {"MESH_IDENTITY_REFRESH": "1"}


class Mesh:
    """A PKI, a TLS control server signing with the PKI's CA (``--cert-lifetime`` from
    ``extra``), the services above, and agent ``node-1``."""

    def __init__(
        self,
        procs: MeshProcesses,
        tmp_path: Path,
        *extra: str,
        mode: str = "strict",
        bundle: Path | None = None,
    ) -> None:
        self.procs, self.tmp_path = procs, tmp_path
        self.pki = Pki(tmp_path / "pki", TD)
        if bundle is not None:  # the trust bundle starts as the PKI's CA alone
            _write(bundle, (self.pki.ca / "ca.pem").read_bytes())
            extra = (*extra, "--trust-bundle", str(bundle))
        self.signing = tmp_path / "signing"
        self.signing.mkdir()
        for name in ("ca.pem", "key.pem"):
            (self.signing / name).write_bytes((self.pki.ca / name).read_bytes())
        server = self.pki.issue("server", server="127.0.0.1")
        _, self.control = procs.start_control(
            "--signing-ca", str(self.signing), *extra, tls_dir=server
        )
        self.operator = self.pki.issue("operator", operator="alice")
        self.apply(SERVICES % {"mode": mode})
        tls_dir = self.pki.issue("node-1", node="node-1", ips=["127.0.0.1"])
        self.agent_proc, self.agent = procs.start_agent(self.control, "node-1", tls_dir=tls_dir)
        wait_for(lambda: agent_status(self.agent).upstream == self.control, 20, "agent on mTLS")
        self.callers = 0
        self.registered: list[tuple[str, str]] = []

    def for_test(self, procs: MeshProcesses, tmp_path: Path) -> Mesh:
        """This mesh for one more test: its servers and callers are started by ``procs``
        (stopped at the test's end), their files under ``tmp_path``."""
        view = copy.copy(self)
        view.procs, view.tmp_path, view.callers, view.registered = procs, tmp_path, 0, []
        return view

    def deregister_servers(self) -> None:
        """Removes every endpoint :meth:`server` registered, and waits until the agent no
        longer reports them."""
        for service, address in self.registered:
            deregister(self.agent, service, address)
        gone = set(self.registered)
        wait_for(
            lambda: (
                not {(r.service, r.address) for r in agent_status(self.agent).registrations} & gone
            ),
            10,
            "the test's endpoints deregistered",
        )

    def apply(self, text: str) -> None:
        path = self.tmp_path / "services.yaml"
        path.write_text(text)
        flags = Pki.flags(self.operator)
        done = run_cli(
            "control.meshctl", "--control", self.control, *flags, "apply", "-f", str(path)
        )
        assert done.returncode == 0, done.stderr

    def server(self, service: str, flavour: str, register_as: str = "web") -> tuple[Proc, str]:
        """A server of ``service`` from ``mesh_server`` / ``aio_mesh_server``, registered as an
        endpoint of ``register_as``."""
        name = f"{service}-{flavour}-server"
        proc, address = self.procs.start_ready(
            name,
            "tests.e2e.mtls_peer",
            "serve",
            "--service",
            service,
            "--flavour",
            flavour,
            "--agent",
            self.agent,
            "--node-id",
            name,
            env=REFRESH,
            timeout=40,
        )
        register(self.agent, register_as, address)
        self.registered.append((register_as, address))
        return proc, address

    def caller(self, *extra: str) -> Commands:
        self.callers += 1
        name = f"caller-{self.callers}"
        directory = self.tmp_path / name
        directory.mkdir()
        proc = self.procs.python(
            name,
            "tests.e2e.mtls_peer",
            "call",
            "--agent",
            self.agent,
            "--node-id",
            name,
            "--commands",
            str(directory),
            *extra,
            env=REFRESH,
        )
        return Commands(directory, proc)


@pytest.fixture(scope="module")
def module_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    procs = MeshProcesses(tmp_path_factory.mktemp("mtls-mesh"))
    try:
        yield Mesh(procs, procs.workdir)
    finally:
        procs.stop_all()


@pytest.fixture
def shared_mesh(module_mesh: Mesh, procs: MeshProcesses, tmp_path: Path) -> Iterator[Mesh]:
    """The module's strict mesh, for a test that neither reconfigures nor restarts it."""
    mesh = module_mesh.for_test(procs, tmp_path)
    yield mesh
    mesh.deregister_servers()


def first_ok(caller: Commands, service: str = "web") -> dict[str, object]:
    """Calls until one succeeds (the server serves once the agent's Listener reached it)."""
    last: dict[str, object] = {}

    def ok() -> bool:
        nonlocal last
        last = caller.run({"call": service}, 10, "a call")
        return last["code"] == "OK"

    wait_for(ok, 40, f"a call to {service} to succeed", every=0.2)
    return last


@pytest.mark.parametrize("flavour", ["sync", "aio"])
def test_strict_service_takes_callers_with_an_identity_and_refuses_plaintext(
    shared_mesh: Mesh, flavour: str
) -> None:
    mesh = shared_mesh
    _, address = mesh.server("web", flavour)
    caller = mesh.caller("--identity", "client")
    answer = first_ok(caller)
    assert answer["server"] == "web"
    assert answer["peer"] == f"spiffe://{TD}/service/client"
    plain = caller.run({"plain": address}, 15, "a plaintext call")
    assert plain["code"] == "UNAVAILABLE", plain
    # A caller without an identity has no client certificate to show.
    anonymous = mesh.caller()
    answer = anonymous.run({"call": "web"}, 15, "a call without an identity")
    assert answer["code"] == "UNAVAILABLE", answer
    status = agent_status(mesh.agent)
    assert {i.service for i in status.identities if i.HasField("not_after")} >= {"web", "client"}
    # This test's server (the shared agent keeps earlier tests' declarations).
    declared = next(d for d in status.servers if d.listening_address == address)
    assert (declared.service, declared.mode) == ("web", "strict")
    assert declared.listener_name == f"mesh-server/{address}"


def test_a_disabled_service_is_served_plaintext_by_both_servers(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    mesh = Mesh(procs, tmp_path, mode="disabled")
    _, sync_address = mesh.server("web", "sync")
    _, aio_address = mesh.server("web", "aio")
    caller = mesh.caller()
    assert first_ok(caller)["peer"] == ""
    for address in (sync_address, aio_address):
        answer = caller.run({"plain": address}, 15, "a plaintext call")
        assert answer["code"] == "OK" and answer["peer"] == "", answer


def test_a_mode_change_reaches_a_running_sync_server(procs: MeshProcesses, tmp_path: Path) -> None:
    mesh = Mesh(procs, tmp_path, mode="disabled")
    _, address = mesh.server("web", "sync")
    caller = mesh.caller("--identity", "client")
    assert first_ok(caller)["peer"] == ""  # plaintext
    assert caller.run({"plain": address}, 15, "a plaintext call")["code"] == "OK"
    mesh.apply(SERVICES % {"mode": "strict"})

    def strict() -> bool:
        return caller.run({"plain": address}, 15, "a plaintext call")["code"] == "UNAVAILABLE"

    wait_for(strict, 30, "the server to refuse plaintext", every=0.2)
    # The same server, not restarted, now takes mTLS callers (and sees who they are).
    answer = first_ok(caller)
    assert answer["peer"] == f"spiffe://{TD}/service/client", answer


@pytest.mark.parametrize("flavour", ["sync", "aio"])
def test_a_server_holding_another_identity_is_refused_by_the_caller(
    shared_mesh: Mesh, flavour: str
) -> None:
    mesh = shared_mesh
    # "other" serves with its own valid certificate, registered as other and as web.
    _, address = mesh.server("other", flavour, register_as="other")
    register(mesh.agent, "web", address)
    mesh.registered.append(("web", address))
    caller = mesh.caller("--identity", "client")
    assert first_ok(caller, "other")["server"] == "other"  # the certificate is good
    for _ in range(5):  # but it is not web's
        answer = caller.run({"call": "web"}, 15, "a call to the impostor")
        assert answer["code"] == "UNAVAILABLE", answer


def test_a_node_asking_for_an_identity_it_may_not_hold_is_refused(shared_mesh: Mesh) -> None:
    mesh = shared_mesh
    caller = mesh.caller()
    answer = caller.run({"service": "web", "identity": "secret"}, 30, "the refusal")
    assert answer["error"] == "PermissionDeniedError", answer
    assert "secret" in answer["details"]
    held = next(i for i in agent_status(mesh.agent).identities if i.service == "secret")
    assert held.refused and held.source == "process"
    warnings = [
        e
        for e in log_lines(mesh.agent_proc)
        if e.get("event") == "identity certificate not renewed; retrying"
        and e.get("service") == "secret"
    ]
    assert warnings


def _renewals(mesh: Mesh, service: str) -> int:
    held = next((i for i in agent_status(mesh.agent).identities if i.service == service), None)
    return 0 if held is None else held.updated.ToNanoseconds()


@pytest.mark.parametrize("flavour", ["sync", "aio"])
def test_renewals_while_calls_run_fail_no_call(
    procs: MeshProcesses, tmp_path: Path, flavour: str
) -> None:
    mesh = Mesh(procs, tmp_path, "--cert-lifetime", "4s")
    mesh.server("web", flavour)
    caller = mesh.caller("--identity", "client")
    first_ok(caller)
    caller.run({"start": "web", "fresh": 0.5}, 10, "the call loop")
    seen = {s: {_renewals(mesh, s)} for s in ("web", "client")}

    def renewed_twice() -> bool:
        for service, stamps in seen.items():
            stamps.add(_renewals(mesh, service))
        return all(len(stamps) >= 3 for stamps in seen.values())

    wait_for(renewed_twice, 40, "two renewals of both identities")
    result = caller.run({"stop": True}, 20, "the loop's counts")
    assert result["failures"] == [], result
    assert result["ok"] > 30 and result["fresh_ok"] >= 4, result


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.mark.parametrize("flavour", ["sync", "aio"])
def test_a_ca_rotation_fails_no_call(procs: MeshProcesses, tmp_path: Path, flavour: str) -> None:
    bundle = tmp_path / "bundle.pem"
    mesh = Mesh(procs, tmp_path, "--cert-lifetime", "4s", bundle=bundle)
    new = tmp_path / "ca-new"
    certs.init_ca(new, TD)
    old_ca, new_ca = (mesh.pki.ca / "ca.pem").read_bytes(), (new / "ca.pem").read_bytes()
    mesh.server("web", flavour)
    caller = mesh.caller("--identity", "client")
    first_ok(caller)
    caller.run({"start": "web", "fresh": 0.5}, 10, "the call loop")

    def everywhere(expected_bundle: bytes, issuer: Path) -> bool:
        """Both identities' files in place have ``expected_bundle`` and a certificate of
        the CA in ``issuer``."""
        subject = x509.load_pem_x509_certificate((issuer / "ca.pem").read_bytes()).subject
        for service in ("web", "client"):
            held = next(i for i in agent_status(mesh.agent).identities if i.service == service)
            version = Path(os.path.realpath(Path(held.certificate_file).parent))
            leaf = x509.load_pem_x509_certificates((version / "cert.pem").read_bytes())[0]
            if (version / "ca.pem").read_bytes() != expected_bundle or leaf.issuer != subject:
                return False
        return True

    def settled() -> None:
        """Both identities renewed once more (2 s): every process's file watcher (every 1 s)
        has read the files of the step."""
        stamps = {s: {_renewals(mesh, s)} for s in ("web", "client")}

        def renewed() -> bool:
            for service, seen in stamps.items():
                seen.add(_renewals(mesh, service))
            return all(len(seen) >= 2 for seen in stamps.values())

        wait_for(renewed, 30, "a renewal more")

    steps = [
        (bundle, old_ca + new_ca, old_ca + new_ca, mesh.pki.ca, "both CAs in the bundles"),
        (None, b"", old_ca + new_ca, new, "certificates of the new CA"),
        (bundle, new_ca, new_ca, new, "the new CA alone"),
    ]
    for path, data, expected, issuer, what in steps:
        if path is not None:
            _write(path, data)
        else:  # the signing CA becomes the new one
            for name in ("ca.pem", "key.pem"):
                _write(mesh.signing / name, (new / name).read_bytes())
        wait_for(lambda e=expected, i=issuer: everywhere(e, i), 30, what)  # type: ignore[misc]
        settled()
    result = caller.run({"stop": True}, 20, "the loop's counts")
    assert result["failures"] == [], result
    assert result["ok"] > 50 and result["fresh_ok"] >= 5, result


def test_a_restarted_agent_still_serves_the_declared_server(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    mesh = Mesh(procs, tmp_path)
    _, address = mesh.server("web", "sync")
    first_ok(mesh.caller("--identity", "client"))
    mesh.agent_proc.stop()
    tls_dir = mesh.pki.issue("node-1", node="node-1", ips=["127.0.0.1"])
    mesh.agent_proc, _ = procs.start_agent(mesh.control, "node-1", tls_dir=tls_dir)
    # Read back from its state dir: the Listener is served before anyone declares again.
    (declared,) = agent_status(mesh.agent).servers
    assert (declared.listening_address, declared.mode) == (address, "strict")
    answer = first_ok(mesh.caller("--identity", "client"))
    assert answer["peer"] == f"spiffe://{TD}/service/client"
