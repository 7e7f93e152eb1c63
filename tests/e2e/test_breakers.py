"""Node-wide circuit breakers with real processes: client processes using mesh_channel(), one
agent holding the breakers, a backend told how to answer."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
from tests.conftest import wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import (
    CLOSED,
    OPEN,
    backend_calls,
    breaker,
    breaker_setup,
    configure,
    meshctl,
    records,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_trip_in_one_process_fails_fast_in_another(procs: MeshProcesses, tmp_path: Path) -> None:
    policy = (
        "circuit_breaker: {consecutive_failures: 3, open_for: 2s, max_open_for: 10s,"
        " half_open_probes: 2}"
    )
    _, backend, agent = breaker_setup(procs, tmp_path, "flaky", policy)
    gate = tmp_path / "go"
    b = procs.mesh_client("B", agent, "flaky", "--interval", "0.002", "--after-file", str(gate))
    configure(backend, fail="UNAVAILABLE")
    a = procs.mesh_client(
        "A",
        agent,
        "flaky",
        "--interval",
        "0.05",
        "--count",
        "3",
        "--touch-after",
        "3",
        str(gate),
    )
    wait_for(lambda: any(r.get("circuit_open") for r in records(b)), 20, "B's first fail-fast")
    tripping = records(a)[2]
    assert tripping["code"] == "UNAVAILABLE" and not tripping["circuit_open"]
    first_fast = next(r for r in records(b) if r.get("circuit_open"))
    assert "circuit for service 'flaky' is open until" in str(first_fast["details"])
    propagation = float(first_fast["t"]) - float(tripping["t"])
    assert propagation <= 0.1, f"B failed fast {propagation * 1000:.0f} ms after A's trip"

    # While open, B's calls never touch the backend.
    status = breaker(agent, "flaky")
    assert status is not None and status.state == OPEN and status.reason == "consecutive_failures"
    before = backend_calls(backend)
    time.sleep(0.5)
    assert backend_calls(backend) == before
    assert all(r.get("circuit_open") for r in records(b)[-50:])

    # Half-open with the backend still failing: only the permitted probes reach it.
    reopened_at = time.time() + 3
    wait_for(
        lambda: (s := breaker(agent, "flaky")) is not None and s.reason == "probe_failed",
        5,
        "the probes to fail and the breaker to reopen",
    )
    probes = backend_calls(backend) - before
    assert 1 <= probes <= 2, f"{probes} calls reached the backend while half-open"
    assert time.time() < reopened_at

    # The backend recovers: the next probes succeed and close the breaker everywhere.
    configure(backend)
    wait_for(
        lambda: (s := breaker(agent, "flaky")) is not None and s.state == CLOSED,
        15,
        "the breaker to close",
    )
    seen = len(records(b))
    wait_for(lambda: sum(r["ok"] for r in records(b)[seen:]) >= 20, 10, "B's calls to succeed")
    closed = breaker(agent, "flaky")
    # open, half-open, open again, half-open, closed: each one counted.
    assert closed is not None and closed.transitions >= 5, closed
    c = procs.mesh_client("C", agent, "flaky", "--interval", "0.01", "--count", "5")
    wait_for(lambda: len(records(c)) == 5, 20, "a new process's calls")
    assert all(r["ok"] for r in records(c)), records(c)


def test_failure_rate_trip_survives_an_agent_restart(procs: MeshProcesses, tmp_path: Path) -> None:
    policy = "circuit_breaker: {failure_rate: 0.5, min_requests: 10, window: 10s, open_for: 60s}"
    control, backend, agent = breaker_setup(procs, tmp_path, "rated", policy)
    configure(backend, fail="INTERNAL")
    client = procs.mesh_client("A", agent, "rated", "--interval", "0.01")
    wait_for(
        lambda: (s := breaker(agent, "rated")) is not None and s.state == OPEN,
        20,
        "the failure rate to open the breaker",
    )
    status = breaker(agent, "rated")
    assert status is not None and status.reason == "failure_rate"
    failed = [r for r in records(client) if not r["ok"] and not r.get("circuit_open")]
    assert len(failed) >= 10  # min_requests honoured
    client.stop()

    procs.named("node-1").stop()
    _, agent = procs.start_agent(control, "node-1")
    wait_for(lambda: breaker(agent, "rated") is not None, 10, "the breaker restored")
    restored = breaker(agent, "rated")
    assert restored is not None and restored.state == OPEN
    assert restored.open_until == status.open_until
    before = backend_calls(backend)
    again = procs.mesh_client("A2", agent, "rated", "--interval", "0.01", "--count", "20")
    wait_for(lambda: len(records(again)) == 20, 20, "20 calls after the restart")
    assert all(r.get("circuit_open") for r in records(again)[-10:]), records(again)
    assert backend_calls(backend) - before <= 1


def test_slow_calls_trip_the_breaker(procs: MeshProcesses, tmp_path: Path) -> None:
    policy = (
        "circuit_breaker: {slow_call: {threshold: 100ms, rate: 0.5}, min_requests: 5,"
        " window: 10s, open_for: 60s}"
    )
    _, _, agent = breaker_setup(procs, tmp_path, "slow", policy, delay=0.15)
    client = procs.mesh_client("A", agent, "slow", "--interval", "0.01")
    wait_for(
        lambda: (s := breaker(agent, "slow")) is not None and s.state == OPEN,
        20,
        "slow calls to open the breaker",
    )
    status = breaker(agent, "slow")
    assert status is not None and status.reason == "slow_call_rate"
    assert all(r["ok"] for r in records(client)[:5])  # slow, yet successful
    wait_for(lambda: any(r.get("circuit_open") for r in records(client)), 10, "a fail-fast")


def test_max_requests_drops_do_not_open_the_breaker(procs: MeshProcesses, tmp_path: Path) -> None:
    policy = "circuit_breaker: {max_requests: 1, consecutive_failures: 3, open_for: 60s}"
    _, _, agent = breaker_setup(procs, tmp_path, "narrow", policy, delay=0.2)
    client = procs.python(
        "A",
        "mesh_demo.client",
        "--service",
        "narrow",
        "--xds-server",
        agent,
        "--aio",
        "--json",
        "--concurrency",
        "8",
        "--count",
        "32",
        "--interval",
        "0.05",
        "--timeout",
        "5",
    )
    wait_for(lambda: len(records(client)) == 32, 40, "32 concurrent calls")
    dropped = [r for r in records(client) if not r["ok"]]
    assert dropped, "max_requests: 1 dropped nothing"
    assert all("circuit breaker drop" in str(r["details"]) for r in dropped), dropped
    assert not any(r.get("circuit_open") for r in records(client))
    status = breaker(agent, "narrow")
    assert status is not None and status.state == CLOSED


@pytest.mark.parametrize("flavour", ["sync", "aio"])
def test_streaming_calls_trip_and_fail_fast(
    procs: MeshProcesses, tmp_path: Path, flavour: str
) -> None:
    policy = "circuit_breaker: {consecutive_failures: 3, open_for: 60s}"
    _, backend, agent = breaker_setup(procs, tmp_path, "streamy", policy)
    configure(backend, fail="UNAVAILABLE")
    client = procs.python(
        "A",
        "mesh_demo.client",
        "--service",
        "streamy",
        "--xds-server",
        agent,
        "--aio" if flavour == "aio" else "--mesh",
        "--stream",
        "--json",
        "--interval",
        "0.02",
        "--count",
        "40",
    )
    wait_for(lambda: len(records(client)) == 40, 30, "40 streaming calls")
    outcomes = records(client)
    assert not outcomes[0]["ok"] and not outcomes[0].get("circuit_open")
    fast = [r for r in outcomes if r.get("circuit_open")]
    assert len(fast) >= 30, outcomes
    assert all(r["code"] == "UNAVAILABLE" for r in fast)
    status = breaker(agent, "streamy")
    assert status is not None and status.state == OPEN


def test_calls_to_a_service_with_no_endpoints_do_not_trip(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    _, control = procs.start_control()
    path = tmp_path / "empty.yaml"
    path.write_text(
        "name: empty\nendpoints: []\npolicy:\n"
        "  circuit_breaker: {consecutive_failures: 3, open_for: 60s}\n"
    )
    meshctl(control, "apply", "-f", str(path))
    _, agent = procs.start_agent(control, "node-1")
    client = procs.mesh_client("A", agent, "empty", "--interval", "0.01", "--count", "30")
    wait_for(lambda: len(records(client)) == 30, 30, "30 calls")
    assert all(r["code"] == "UNAVAILABLE" and not r.get("circuit_open") for r in records(client))
    status = breaker(agent, "empty")
    assert status is not None and status.enabled and status.state == CLOSED


def test_deadlines_and_cancellation_pass_through_and_agent_loss_fails_open(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    from mesh_agent.client import mesh_interceptor
    from mesh_agent.client._link import link_for

    policy = "circuit_breaker: {consecutive_failures: 3, open_for: 60s}"
    _, backend, agent = breaker_setup(procs, tmp_path, "plain", policy, delay=0.3)
    channel = grpc.intercept_channel(
        grpc.insecure_channel(backend), mesh_interceptor("plain", agent=agent)
    )
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    wait_for(
        lambda: (s := breaker(agent, "plain")) is not None and s.enabled,
        10,
        "the breaker policy at the agent",
    )
    # A deadline shorter than the backend's answer passes through and counts as a failure.
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=0.05)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.25
    # Cancellation passes through and is not a failure of the service.
    for _ in range(5):
        future = stub.Echo.future(echo_pb2.EchoRequest(message="x"))
        time.sleep(0.02)
        assert future.cancel()
        assert future.code() is grpc.StatusCode.CANCELLED
    time.sleep(0.3)
    status = breaker(agent, "plain")
    assert status is not None and status.state == CLOSED, "cancellations tripped the breaker"
    # Two more deadline failures make three in a row: the breaker opens, calls fail fast.
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=0.05)
    wait_for(lambda: (s := breaker(agent, "plain")) is not None and s.state == OPEN, 5, "open")
    time.sleep(0.2)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=2)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "is open until" in (caught.value.details() or "")
    channel.close()
    link_for(agent).close()  # the interceptor's link: its watch would hold the agent's stop


def test_unreachable_agent_fails_open(tmp_path: Path, procs: MeshProcesses) -> None:
    from mesh_agent.client import mesh_interceptor

    _, backend = procs.start_backend("b1", proc_name="backend")
    missing = f"unix:{tmp_path / 'no-agent.sock'}"
    channel = grpc.intercept_channel(
        grpc.insecure_channel(backend), mesh_interceptor("lonely", agent=missing)
    )
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    for _ in range(20):
        assert stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=2).backend == "b1"
    channel.close()
