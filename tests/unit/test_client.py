"""The client library's pieces that need no agent: classification of the mesh's own
rejections, the fast-fail error, and the process-wide bootstrap."""

from __future__ import annotations

import json
import os

import grpc
import pytest

from mesh_agent.client import (
    OPEN_CIRCUIT_KEY,
    BootstrapConflictError,
    CircuitOpenError,
    _channel,
    agent_address,
    is_mesh_rejection,
)

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("code", "details", "mesh"),
    [
        ("UNAVAILABLE", "circuit breaker drop", True),
        ("UNAVAILABLE", "empty address list (LDS resource echo: does not exist (node ID:x))", True),
        ("UNAVAILABLE", "CDS resource orders does not exist", True),
        ("UNAVAILABLE", "no children in weighted_target policy", True),
        ("UNAVAILABLE", "No matching route found in xDS route config", True),
        ("UNAVAILABLE", "circuit for service 'orders' is open until 2026-01-01T00:00:00", True),
        ("UNAVAILABLE", "failed to connect to all addresses", False),
        ("UNAVAILABLE", "b1 told to fail", False),
        ("INTERNAL", "circuit breaker drop", False),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", False),
        ("UNAVAILABLE", None, False),
        ("UNAVAILABLE", "Fault injected", True),  # fault injection (A33), any code
        ("RESOURCE_EXHAUSTED", "Fault injected", True),
        ("INTERNAL", "Fault injected by the backend's own test hook", False),
    ],
)
def test_mesh_rejections_are_told_apart(code: str, details: str | None, mesh: bool) -> None:
    assert is_mesh_rejection(code, details) is mesh


def test_fast_fail_looks_like_a_failed_call() -> None:
    error = CircuitOpenError("orders", 1_800_000_000.5)
    assert isinstance(error, grpc.RpcError) and isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert error.details().startswith("circuit for service 'orders' is open until 2027-")
    assert dict(error.trailing_metadata())[OPEN_CIRCUIT_KEY] == "open"
    with pytest.raises(CircuitOpenError):
        error.result()
    seen: list[object] = []
    error.add_done_callback(seen.append)
    assert seen == [error] and error.done() and is_mesh_rejection("UNAVAILABLE", error.details())


def test_agent_address_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESH_AGENT", raising=False)
    assert agent_address() == "unix:/run/mesh-agent/agent.sock"
    monkeypatch.setenv("MESH_AGENT", "127.0.0.1:15011")
    assert agent_address() == "127.0.0.1:15011"
    assert agent_address("/tmp/a.sock") == "unix:/tmp/a.sock"


@pytest.mark.usefixtures("fresh_bootstrap")
def test_bootstrap_is_process_wide() -> None:
    _channel.configure_bootstrap(["unix:/tmp/agent.sock", "10.0.0.2:15010"], "proc-1")
    config = json.loads(os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"])
    assert [s["server_uri"] for s in config["xds_servers"]] == [
        "unix:/tmp/agent.sock",
        "10.0.0.2:15010",
    ]
    assert config["node"]["id"] == "proc-1"
    _channel.configure_bootstrap(["unix:/tmp/agent.sock"])  # the same agent: fine
    with pytest.raises(BootstrapConflictError, match="reads it once per process"):
        _channel.configure_bootstrap(["unix:/tmp/other.sock"])


@pytest.mark.usefixtures("fresh_bootstrap")
def test_bootstrap_set_by_someone_else_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "GRPC_XDS_BOOTSTRAP_CONFIG",
        json.dumps({"xds_servers": [{"server_uri": "10.1.1.1:15010"}], "node": {"id": "n"}}),
    )
    with pytest.raises(BootstrapConflictError, match=r"10\.1\.1\.1:15010"):
        _channel.configure_bootstrap(["unix:/tmp/agent.sock"])


@pytest.mark.parametrize(
    ("code", "details", "counts"),
    [
        ("OK", None, True),
        ("UNAVAILABLE", "failed to connect to all addresses", True),
        ("INTERNAL", "boom", True),
        ("CANCELLED", "Locally cancelled by application!", False),
        ("UNAVAILABLE", "circuit breaker drop", False),
    ],
)
def test_what_counts_for_the_breaker(code: str, details: str | None, counts: bool) -> None:
    from mesh_agent.client._classify import counts_for_breaker

    assert counts_for_breaker(code, details) is counts
