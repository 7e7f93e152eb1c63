"""mTLS identities and authorization with real processes: a control server with
``--tls-*`` flags, agents and ``meshctl`` holding certificates from ``meshctl certs``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from mesh.v1 import node_pb2, node_pb2_grpc
from mesh_xds.types import LISTENER
from tests.conftest import run_cli, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import Pki, agent_status

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


SERVICE = "name: echo\nendpoints: [{address: '127.0.0.1:9'}]\n"


def _meshctl(control: str, tls_dir: Path | None, *args: str, token: Path | None = None):
    flags = Pki.flags(tls_dir) if tls_dir is not None else []
    if token is not None:
        flags += ["--token-file", str(token)]
    return run_cli("control.meshctl", "--control", control, *flags, *args)


def _start_control(procs: MeshProcesses, pki: Pki, *extra: str) -> str:
    _, control = procs.start_control(*extra, tls_dir=pki.issue("server", server="127.0.0.1"))
    return control


def _ads_first_response(control: str, credentials: grpc.ChannelCredentials | None, node: str):
    """Opens an ADS stream as ``node`` and returns the first response, or the error."""
    channel = (
        grpc.secure_channel(control, credentials)
        if credentials is not None
        else grpc.insecure_channel(control)
    )
    with channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        request = discovery_pb2.DiscoveryRequest(type_url=LISTENER)
        request.node.id = node
        try:
            return next(iter(stub.StreamAggregatedResources(iter([request]), timeout=5)))
        except grpc.RpcError as error:
            return error


def test_only_nodes_with_their_own_certificate_are_served(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    pki = Pki(tmp_path / "pki")
    control = _start_control(procs, pki)
    operator = pki.issue("operator", operator="alice")
    service = tmp_path / "echo.yaml"
    service.write_text(SERVICE)
    applied = _meshctl(control, operator, "apply", "-f", str(service))
    assert applied.returncode == 0, applied.stderr

    n1 = pki.issue("n1", node="n1", ips=["127.0.0.1"])
    other = Pki(tmp_path / "other", "mesh.test")
    stranger = other.issue("n1", node="n1")

    # No certificate, and one from another CA: the handshake refuses them.
    for credentials in (
        grpc.ssl_channel_credentials((n1 / "ca.pem").read_bytes()),
        Pki.credentials(stranger),
    ):
        error = _ads_first_response(control, credentials, "n1")
        assert isinstance(error, grpc.RpcError) and error.code() is grpc.StatusCode.UNAVAILABLE
    # Plaintext to a TLS port: refused too.
    error = _ads_first_response(control, None, "n1")
    assert isinstance(error, grpc.RpcError) and error.code() is grpc.StatusCode.UNAVAILABLE

    # A valid certificate of node n1 speaking for node n2: PERMISSION_DENIED, named.
    error = _ads_first_response(control, Pki.credentials(n1), "n2")
    assert isinstance(error, grpc.RpcError)
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "certificate identifies node 'n1'" in (error.details() or "")
    # An operator's certificate is not a node's.
    error = _ads_first_response(control, Pki.credentials(operator), "n1")
    assert isinstance(error, grpc.RpcError)
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED

    # n1 as itself is served, and so is a real agent with n1's certificate.
    response = _ads_first_response(control, Pki.credentials(n1), "n1")
    assert isinstance(response, discovery_pb2.DiscoveryResponse), response
    assert [r.type_url for r in response.resources] == [LISTENER] * len(response.resources)
    _, agent = procs.start_agent(control, "n1", tls_dir=n1)
    wait_for(lambda: agent_status(agent).upstream == control, 20, "the agent on mTLS")
    status = _meshctl(control, operator, "status", "-o", "json")
    assert status.returncode == 0, status.stderr
    assert "n1" in {n["node_id"] for n in json.loads(status.stdout).get("nodes", [])}


def test_a_node_registers_only_its_own_addresses(procs: MeshProcesses, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    control = _start_control(procs, pki)
    n1 = pki.issue("n1", node="n1", ips=["127.0.0.1"])
    with grpc.secure_channel(control, Pki.credentials(n1)) as channel:
        stub = node_pb2_grpc.NodeServiceStub(channel)

        def register(node: str, address: str) -> grpc.RpcError | int:
            request = node_pb2.SetRegistrationsRequest(node_id=node)
            request.registrations.add(service="echo", address=address)
            try:
                return int(stub.SetRegistrations(request, timeout=5).accepted)
            except grpc.RpcError as error:
                return error

        assert register("n1", "127.0.0.1:7000") == 1
        refused = register("n1", "10.9.9.9:7000")
        assert isinstance(refused, grpc.RpcError)
        assert refused.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "10.9.9.9" in (refused.details() or "") and "not its address" in (
            refused.details() or ""
        )
        other = register("n2", "127.0.0.1:7000")
        assert isinstance(other, grpc.RpcError)
        assert other.code() is grpc.StatusCode.PERMISSION_DENIED
    # The refused requests changed nothing: n1 keeps its one endpoint.
    operator = pki.issue("operator", operator="alice")
    status = json.loads(_meshctl(control, operator, "status", "-o", "json").stdout)
    registered = [
        (r["service"], r["address"])
        for n in status.get("nodes", [])
        for r in n.get("registrations", [])
    ]
    assert registered == [("echo", "127.0.0.1:7000")]


def test_writes_need_an_operator(procs: MeshProcesses, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o600)
    control = _start_control(procs, pki, "--operator-token-file", str(token))
    service = tmp_path / "echo.yaml"
    service.write_text(SERVICE)
    node = pki.issue("n1", node="n1")
    operator = pki.issue("operator", operator="alice")

    refused = _meshctl(control, node, "apply", "-f", str(service))
    assert refused.returncode != 0
    assert "permission denied" in refused.stderr and "needs an operator" in refused.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("guess")
    assert _meshctl(control, node, "apply", "-f", str(service), token=wrong).returncode != 0
    # Reads are open to a node.
    listed = _meshctl(control, node, "get", "services", "-o", "json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["services"] == []

    accepted = _meshctl(control, operator, "apply", "-f", str(service))
    assert accepted.returncode == 0, accepted.stderr
    by_token = _meshctl(control, node, "delete", "service", "echo", token=token)
    assert by_token.returncode == 0, by_token.stderr
    assert _meshctl(control, node, "delete", "service", "echo").returncode != 0


def test_writes_need_the_token_without_tls(procs: MeshProcesses, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("dev-token")
    _, control = procs.start_control("--operator-token-file", str(token))
    service = tmp_path / "echo.yaml"
    service.write_text(SERVICE)
    refused = _meshctl(control, None, "apply", "-f", str(service))
    assert refused.returncode != 0 and "needs an operator" in refused.stderr
    accepted = _meshctl(control, None, "apply", "-f", str(service), token=token)
    assert accepted.returncode == 0, accepted.stderr


def test_a_renewed_certificate_is_used_without_a_restart(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    pki = Pki(tmp_path / "pki")
    server = pki.issue("server", server="127.0.0.1")
    _, control = procs.start_control(tls_dir=server)
    n1 = pki.issue("n1", node="n1")

    first = _ads_first_response(control, Pki.credentials(n1), "n1")
    assert isinstance(first, discovery_pb2.DiscoveryResponse)

    # A new CA takes over (a rotation): the server's files are replaced in place; clients
    # with the new CA's certificates are served without a restart, the old ones no longer.
    rotated = Pki(tmp_path / "pki2", "mesh.test")
    renewed = rotated.issue("server", server="127.0.0.1")
    staging = tmp_path / "staging"
    shutil.copytree(renewed, staging)
    for name in ("cert.pem", "key.pem", "ca.pem"):
        os.replace(staging / name, server / name)
    n1_new = rotated.issue("n1", node="n1")

    def served() -> bool:
        response = _ads_first_response(control, Pki.credentials(n1_new), "n1")
        return isinstance(response, discovery_pb2.DiscoveryResponse)

    wait_for(served, 20, "the renewed certificate to be used", every=0.2)
    old = _ads_first_response(control, Pki.credentials(n1), "n1")
    assert isinstance(old, grpc.RpcError) and old.code() is grpc.StatusCode.UNAVAILABLE


def test_agent_refuses_a_certificate_of_another_node(procs: MeshProcesses, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    n1 = pki.issue("n1", node="n1")
    agent = procs.python(
        "agent",
        "mesh_agent",
        "run",
        "--control",
        "127.0.0.1:1",
        "--node-id",
        "n2",
        "--socket",
        str(tmp_path / "a.sock"),
        "--state-dir",
        str(tmp_path / "state"),
        *Pki.flags(n1),
    )
    assert agent.popen.wait(20) == 2
    assert "does not match the certificate, which identifies node 'n1'" in agent.errors()
