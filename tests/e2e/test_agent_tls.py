"""The client library over mTLS to the agent's TCP listener, with real processes: a TLS control
server, a TLS agent with ``--listen 127.0.0.1:0``, client processes with ``$MESH_TLS_*`` whose
grpcio xDS client (bootstrap channel creds ``tls``) and AgentLink both use mTLS."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from control import certs
from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
from mesh.v1 import agent_pb2, agent_pb2_grpc
from mesh_agent.client import BootstrapConflictError, _channel, mesh_interceptor
from mesh_agent.client._bootstrap import bootstrap_config
from mesh_agent.daemon import cli
from mesh_core.errors import TlsError
from mesh_core.tls import TlsFiles
from mesh_xds.types import LISTENER
from tests.conftest import Proc, run_cli, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import OPEN, Pki, agent_status, breaker, configure, log_lines, records

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

POLICY = "circuit_breaker: {consecutive_failures: 3, open_for: 60s}"
NO_TLS = {"MESH_TLS_CERT": "", "MESH_TLS_KEY": "", "MESH_TLS_CA": ""}


def tls_env(directory: Path) -> dict[str, str]:
    return {
        "MESH_TLS_CERT": str(directory / "cert.pem"),
        "MESH_TLS_KEY": str(directory / "key.pem"),
        "MESH_TLS_CA": str(directory / "ca.pem"),
    }


def files_of(directory: Path) -> TlsFiles:
    return TlsFiles(directory / "cert.pem", directory / "key.pem", directory / "ca.pem")


class Mesh:
    """A TLS control server, one backend serving ``service``, and agent n1 with mTLS on its
    TCP listener."""

    def __init__(self, procs: MeshProcesses, tmp_path: Path, service: str) -> None:
        self.procs = procs
        self.pki = Pki(tmp_path / "pki")
        server = self.pki.issue("server", server="127.0.0.1")
        _, self.control = procs.start_control(tls_dir=server)
        _, self.backend = procs.start_backend("b1", proc_name="backend")
        operator = self.pki.issue("operator", operator="alice")
        path = tmp_path / f"{service}.yaml"
        path.write_text(
            f"name: {service}\nendpoints: [{{address: '{self.backend}'}}]\npolicy:\n  {POLICY}\n"
        )
        applied = run_cli(
            "control.meshctl",
            "--control",
            self.control,
            *Pki.flags(operator),
            "apply",
            "-f",
            str(path),
        )
        assert applied.returncode == 0, applied.stderr
        node = self.pki.issue("n1", node="n1", ips=["127.0.0.1"])
        _, self.unix = procs.start_agent(
            self.control, "n1", "--listen", "127.0.0.1:0", tls_dir=node
        )
        addresses = procs.agent_addresses("n1")
        assert addresses[0] == self.unix and len(addresses) == 2, addresses
        self.tcp = addresses[1]
        wait_for(lambda: agent_status(self.unix).upstream == self.control, 20, "agent on mTLS")
        # The application's own certificate from the mesh CA.
        self.app = self.pki.issue("app", node="n1")

    def client(self, name: str, agent: str, service: str, env: dict[str, str], *args: str) -> Proc:
        return self.procs.mesh_client(name, agent, service, *args, env=env)


def test_mesh_channel_uses_mtls_to_the_agent_and_its_breaker(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    mesh = Mesh(procs, tmp_path, "flaky")
    client = mesh.client("A", mesh.tcp, "flaky", tls_env(mesh.app), "--interval", "0.02")
    wait_for(lambda: sum(r["ok"] for r in records(client)) >= 10, 30, "calls over xds + mTLS")
    assert all(r["backend"] == "b1" for r in records(client) if r["ok"])

    # The outcomes reach the agent over the TLS link: a failing backend opens its breaker,
    # and the open state comes back over the same link (the client then fails fast).
    configure(mesh.backend, fail="UNAVAILABLE")
    wait_for(
        lambda: (s := breaker(mesh.unix, "flaky")) is not None and s.state == OPEN,
        20,
        "the client's failures to open the agent's breaker",
    )
    status = breaker(mesh.unix, "flaky")
    assert status is not None and status.reason == "consecutive_failures"
    wait_for(lambda: any(r.get("circuit_open") for r in records(client)), 10, "a fail-fast")
    assert "mesh agent unreachable" not in client.errors()


def test_the_tcp_listener_refuses_clients_without_a_certificate(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    mesh = Mesh(procs, tmp_path, "echo")
    request = agent_pb2.GetAgentStatusRequest()
    ca = (mesh.app / "ca.pem").read_bytes()
    for channel in (
        grpc.insecure_channel(mesh.tcp),
        grpc.secure_channel(mesh.tcp, grpc.ssl_channel_credentials(ca)),  # no client cert
    ):
        with channel, pytest.raises(grpc.RpcError) as refused:
            agent_pb2_grpc.AgentServiceStub(channel).GetAgentStatus(request, timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(mesh.tcp, Pki.credentials(mesh.app)) as channel:
        status = agent_pb2_grpc.AgentServiceStub(channel).GetAgentStatus(request, timeout=5)
        assert status.node_id == "n1"

    # Three mesh_channel processes, independent of each other, started together: one without
    # certificates (grpcio's xDS client cannot connect), one with them over the unix socket
    # (plaintext there: the TLS files are ignored), one with them through the TCP listener.
    plain = mesh.client("plain", mesh.tcp, "echo", NO_TLS, "--count", "2", "--interval", "0.5")
    unix = mesh.client("unix", mesh.unix, "echo", tls_env(mesh.app), "--count", "5")
    tcp = mesh.client("tcp", mesh.tcp, "echo", tls_env(mesh.app), "--count", "5")
    wait_for(lambda: len(records(plain)) == 2, 30, "two calls without certificates")
    for record in records(plain):
        assert record["code"] == "UNAVAILABLE" and mesh.tcp in str(record["details"]), record
    wait_for(lambda: len(records(unix)) == 5, 30, "five calls over the unix socket")
    assert all(r["ok"] for r in records(unix)), records(unix)
    # Through the agent's TCP listener with them: the same calls work.
    wait_for(lambda: len(records(tcp)) == 5, 30, "five calls over mTLS")
    assert all(r["ok"] for r in records(tcp)), records(tcp)


def test_mesh_interceptor_over_a_plain_channel_reports_over_mtls(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    mesh = Mesh(procs, tmp_path, "plain")
    interceptor = mesh_interceptor("plain", agent=mesh.tcp, tls=files_of(mesh.app))
    link = interceptor._link
    assert link.tls == files_of(mesh.app)
    channel = grpc.intercept_channel(grpc.insecure_channel(mesh.backend), interceptor)
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    wait_for(
        lambda: (s := breaker(mesh.unix, "plain")) is not None and s.enabled,
        10,
        "the breaker policy at the agent",
    )
    assert stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=2).backend == "b1"
    configure(mesh.backend, fail="INTERNAL")
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=2)
    wait_for(lambda: (s := breaker(mesh.unix, "plain")) is not None and s.state == OPEN, 5, "open")

    def fails_fast() -> grpc.RpcError | None:
        # The open state reaches the process over its watch stream.
        try:
            stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=2)
        except grpc.RpcError as error:
            return error if "is open until" in (error.details() or "") else None
        return None

    error = wait_for(fails_fast, 5, "a fail-fast from the open breaker")
    assert error.code() is grpc.StatusCode.UNAVAILABLE

    # A renewed certificate: after a failed call the link makes a new channel with it.
    before = link._channel
    mesh.pki.issue("app", node="n1")
    link._agent_away(None)
    assert link._channel is not before
    status = link._stub.GetAgentStatus(agent_pb2.GetAgentStatusRequest(), timeout=5)
    assert status.node_id == "n1"
    channel.close()
    link.close()


@pytest.mark.usefixtures("fresh_bootstrap")
def test_the_bootstrap_names_tls_creds_for_tcp_servers_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = Pki(tmp_path / "pki")
    app = pki.issue("app", node="n1")
    files = files_of(app)
    config = bootstrap_config(["unix:/tmp/a.sock", "127.0.0.1:15011"], "p1", tls=files)
    unix, tcp = config["xds_servers"]
    assert unix["channel_creds"] == [{"type": "insecure"}]
    assert tcp["channel_creds"] == [
        {
            "type": "tls",
            "config": {
                "ca_certificate_file": str(app / "ca.pem"),
                "certificate_file": str(app / "cert.pem"),
                "private_key_file": str(app / "key.pem"),
            },
        }
    ]

    # The process's bootstrap is set once: the same agent over other credentials is refused.
    # setenv first, so that teardown restores each variable (delenv of an absent one does not).
    for name in ("MESH_TLS_CERT", "MESH_TLS_KEY", "MESH_TLS_CA"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    _channel.configure_bootstrap(["127.0.0.1:15011"], "p1", tls=files)
    written = json.loads(os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"])
    assert written["xds_servers"][0]["channel_creds"][0]["type"] == "tls"
    _channel.configure_bootstrap(["127.0.0.1:15011"], tls=files)  # the same: fine
    with pytest.raises(BootstrapConflictError, match=r"127\.0\.0\.1:15011 \(mTLS\)"):
        _channel.configure_bootstrap(["127.0.0.1:15011"])
    # The environment's files are used when none are given; a unix agent ignores them.
    monkeypatch.setenv("MESH_TLS_CERT", str(app / "cert.pem"))
    monkeypatch.setenv("MESH_TLS_KEY", str(app / "key.pem"))
    monkeypatch.setenv("MESH_TLS_CA", str(app / "ca.pem"))
    assert _channel.tls_files() == files
    _channel.configure_bootstrap(["127.0.0.1:15011"], tls=_channel.tls_files())
    monkeypatch.setenv("MESH_TLS_CA", "")
    with pytest.raises(TlsError, match="missing --tls-ca"):
        _channel.tls_files()


# -- who may use the TCP listener ----------------------------------------------------------

# No control server is needed: the agent serves locally while it retries the upstream.
NO_CONTROL = "127.0.0.1:1"
ALICE = "spiffe://mesh.test/operator/alice"


def calls(channel: grpc.Channel) -> dict[str, Callable[[], object]]:
    """One call of each kind the agent serves: unary, server stream, bidirectional streams
    (its xDS, reflection) and CSDS."""
    agent = agent_pb2_grpc.AgentServiceStub(channel)
    ads = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    csds = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    node = base_pb2.Node(id="p1")
    return {
        "GetAgentStatus": lambda: agent.GetAgentStatus(
            agent_pb2.GetAgentStatusRequest(), timeout=5
        ),
        "WatchBreakers": lambda: next(
            agent.WatchBreakers(agent_pb2.WatchBreakersRequest(), timeout=5)
        ),
        # Without config (no control server) the agent has nothing to send: the stream ends
        # when the request stream does.
        "StreamAggregatedResources": lambda: list(
            ads.StreamAggregatedResources(
                iter([discovery_pb2.DiscoveryRequest(node=node, type_url=LISTENER)]), timeout=5
            )
        ),
        "FetchClientStatus": lambda: csds.FetchClientStatus(
            csds_pb2.ClientStatusRequest(), timeout=5
        ),
        "ServerReflectionInfo": lambda: next(
            reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        ),
    }


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def test_the_tcp_listener_admits_the_node_and_listen_allow_only(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    pki = Pki(tmp_path / "pki")
    node = pki.issue("n1", node="n1", ips=["127.0.0.1"])
    agent, unix = procs.start_agent(
        NO_CONTROL,
        "n1",
        "--listen",
        "127.0.0.1:0",
        "--listen-allow",
        ALICE,
        "--listen-allow",
        "spiffe://mesh.test/operator/carol",
        tls_dir=node,
    )
    tcp = procs.agent_addresses("n1")[1]

    # The node's own identity (an application on the node, with a certificate for it) and
    # an identity given with --listen-allow: every kind of call goes through.
    for admitted in (pki.issue("app", node="n1"), pki.issue("alice", operator="alice")):
        with grpc.secure_channel(tcp, Pki.credentials(admitted)) as channel:
            for name, call in calls(channel).items():
                assert call() is not None, name

    # Another node of the same CA, and an operator not given: refused, every kind of call.
    for other, identity in (
        (pki.issue("n2", node="n2", ips=["127.0.0.1"]), "spiffe://mesh.test/node/n2"),
        (pki.issue("bob", operator="bob"), "spiffe://mesh.test/operator/bob"),
    ):
        with grpc.secure_channel(tcp, Pki.credentials(other)) as channel:
            for name, call in calls(channel).items():
                error = refused(call)
                assert error.code() is grpc.StatusCode.PERMISSION_DENIED, (name, error)
                assert error.details() == (
                    f"{identity} may not use this agent's TCP listener: it admits the node's "
                    "own identity (spiffe://mesh.test/node/n1) and the identities given with "
                    "--listen-allow (listen_allow in --config)"
                ), name
            # grpc.health.v1 stays open to any certificate of the mesh CA.
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING

    def refusals() -> list[dict[str, object]]:
        return [line for line in log_lines(agent) if line.get("event") == "listener call refused"]

    wait_for(lambda: len(refusals()) == 10, 5, "ten refusals in the agent's log")
    logged = refusals()
    assert all(line["level"] == "warning" for line in logged)
    assert {line["identity"] for line in logged} == {
        "spiffe://mesh.test/node/n2",
        "spiffe://mesh.test/operator/bob",
    }
    assert all(str(line["peer"]).startswith("ipv4:127.0.0.1:") for line in logged)
    assert "/mesh.v1.AgentService/GetAgentStatus" in {line["method"] for line in logged}

    # The unix socket is not affected: anyone its file mode lets in, without a certificate.
    with grpc.insecure_channel(unix) as channel:
        for name, call in calls(channel).items():
            assert call() is not None, name
    assert len(refusals()) == 10


def test_listen_allow_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--listen-allow (repeatable) and listen_allow in --config: full SPIFFE IDs, with mTLS."""
    pki = Pki(tmp_path / "pki")
    node = Pki.flags(pki.issue("n1", node="n1"))
    config = tmp_path / "agent.yaml"

    def settings(*args: str, yaml: str | None = None) -> list[str]:
        extra = ["--config", str(config)] if yaml is not None else []
        if yaml is not None:
            config.write_text(yaml)
        parsed = cli.build_parser().parse_args(["run", "--control", NO_CONTROL, *extra, *args])
        return cli.settings_from(parsed).listen_allow

    def failure(*args: str, yaml: str | None = None) -> str:
        with pytest.raises(SystemExit) as exit_:
            settings(*args, yaml=yaml)
        assert exit_.value.code == 2
        return capsys.readouterr().err.strip()

    bob = "spiffe://mesh.test/operator/bob"
    assert settings(*node) == []
    assert settings(*node, "--listen-allow", ALICE, "--listen-allow", bob) == [ALICE, bob]
    assert settings(*node, yaml=f"listen_allow: [{ALICE}]\n") == [ALICE]
    # Flags given on the command line win over the config file, as for every setting.
    assert settings(*node, "--listen-allow", bob, yaml=f"listen_allow: [{ALICE}]\n") == [bob]
    assert failure(*node, "--listen-allow", "operator/alice") == (
        "mesh-agent: --listen-allow: 'operator/alice' is not a SPIFFE ID; give it in full, "
        f"as in {ALICE}"
    )
    assert failure(*node, yaml=f"listen_allow: {ALICE}\n") == (
        f"mesh-agent: {config}: listen_allow: expected a list of SPIFFE IDs, got '{ALICE}'"
    )
    assert failure("--listen-allow", ALICE) == (
        "mesh-agent: --listen-allow needs mTLS on the listener (--tls-cert, --tls-key, "
        "--tls-ca): without certificates a caller has no identity to check"
    )


def test_renewed_client_certificates_are_used_before_any_call_fails(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    pki = Pki(tmp_path / "pki")  # the mesh CA
    old = Pki(tmp_path / "old-pki")  # the CA the application's first certificate is from
    mesh_ca = (pki.ca / "ca.pem").read_bytes()
    server = pki.issue("server", server="127.0.0.1")
    _, control = procs.start_control(tls_dir=server)
    _, backend = procs.start_backend("b1", proc_name="backend")
    operator = pki.issue("operator", operator="alice")
    document = tmp_path / "plain.yaml"
    document.write_text(
        f"name: plain\nendpoints: [{{address: '{backend}'}}]\npolicy:\n  {POLICY}\n"
    )
    applied = run_cli(
        "control.meshctl", "--control", control, *Pki.flags(operator), "apply", "-f", str(document)
    )
    assert applied.returncode == 0, applied.stderr
    node = pki.issue("n1", node="n1", ips=["127.0.0.1"])
    # The agent trusts both CAs for now.
    (node / "ca.pem").write_bytes(mesh_ca + (old.ca / "ca.pem").read_bytes())
    _, unix = procs.start_agent(control, "n1", "--listen", "127.0.0.1:0", tls_dir=node)
    tcp = procs.agent_addresses("n1")[1]
    app = old.issue("app", node="n1")
    (app / "ca.pem").write_bytes(mesh_ca)  # to trust the agent's certificate

    # What the client library logs in this process, captured (no logger replaced).
    with structlog.testing.capture_logs() as said:
        interceptor = mesh_interceptor("plain", agent=tcp, tls=files_of(app))
        link = interceptor._link
        channel = grpc.intercept_channel(grpc.insecure_channel(backend), interceptor)
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        wait_for(lambda: (s := breaker(unix, "plain")) is not None and s.enabled, 20, "the policy")
        wait_for(lambda: "plain" in link.breakers, 10, "the breaker watch over mTLS")
        assert stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5).backend == "b1"

        # The agent stops trusting the old CA (new handshakes only), and the application's files
        # are renewed from the mesh CA: the link moves to them with no failed call.
        (node / "ca.pem").write_bytes(mesh_ca)
        before = link._channel
        certs.issue(pki.ca, app, node="n1")

        def moved() -> bool:
            assert stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5).backend == "b1"
            return link._channel is not before

        wait_for(moved, 15, "the link to move to the renewed certificate", every=0.1)

        def closed() -> bool:
            try:
                agent_pb2_grpc.AgentServiceStub(before).GetAgentStatus(
                    agent_pb2.GetAgentStatusRequest(), timeout=2
                )
            except ValueError:  # "Cannot invoke RPC on closed channel!"
                return True
            return False

        wait_for(closed, 10, "the old channel to be closed once its calls could finish")
        # The new channel's handshake used the renewed certificate (the old one is refused now),
        # and both streams run on it: reported failures open the breaker, which comes back.
        status = link._stub.GetAgentStatus(agent_pb2.GetAgentStatusRequest(), timeout=5)
        assert status.node_id == "n1"
        configure(backend, fail="INTERNAL")
        for _ in range(3):
            with pytest.raises(grpc.RpcError):
                stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5)
        wait_for(lambda: (s := breaker(unix, "plain")) is not None and s.state == OPEN, 10, "open")
        wait_for(lambda: link.breakers["plain"].state == OPEN, 10, "the open state at the link")
    assert not [e for e in said if e["log_level"] == "warning"], said
    assert any("TLS files changed" in e["event"] for e in said), said
    channel.close()
    link.close()
