"""mesh-agent end to end: control server, agent, backends and grpcio xDS clients whose
bootstrap points at the agent's unix socket."""

from __future__ import annotations

import collections
import json
import signal
import stat
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from tests.conftest import free_port, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import (
    agent_status,
    health,
    meshctl,
    records,
    responses_received,
    status_json,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def write_service(path: Path, name: str, *addresses: str, health: str = "") -> Path:
    lines = [f"name: {name}", "endpoints:"] + [f"  - address: {a}" for a in addresses]
    lines += ["policy:", "  timeout: 5s"]
    if health:
        lines.append(f"  health_check: {health}")
    path.write_text("\n".join(lines) + "\n")
    return path


def backends_of(records: list[dict[str, object]]) -> collections.Counter[str]:
    return collections.Counter(str(r["backend"]) for r in records if r["ok"])


def test_calls_through_the_agent_spread_over_both_backends(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    _, control = procs.start_control(store=f"file:{tmp_path / 'store'}")
    (_, one), (_, two) = procs.start_backend("backend-1"), procs.start_backend("backend-2")
    meshctl(control, "apply", "-f", str(write_service(tmp_path / "s.yaml", "echo", one, two)))
    _, agent = procs.start_agent(control, "node-1", "--listen", "127.0.0.1:0")
    socket_path = Path(agent.removeprefix("unix:"))
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o660
    tcp = procs.agent_addresses("node-1")[1]
    assert tcp.startswith("127.0.0.1:") and agent_status(tcp).node_id == "node-1"
    client = procs.start_client(agent, "echo")
    wait_for(lambda: len([c for c in records(client) if c["ok"]]) >= 45, 40, "45 successful calls")
    ok = [c for c in records(client) if c["ok"]]
    counts = backends_of(ok[-40:])
    assert counts["backend-1"] >= 10 and counts["backend-2"] >= 10, counts
    status = agent_status(agent)
    assert status.connected and status.upstream == control
    # The control server sees the agent and the process behind it.
    nodes = status_json(control)["nodes"]
    assert any(n["node_id"] == "node-1" for n in nodes)


def test_control_restart_resends_nothing_unchanged(procs: MeshProcesses, tmp_path: Path) -> None:
    store = f"file:{tmp_path / 'store'}"
    # Restarted under its agent: no need to wait out the default drain of the agent's stream.
    control_proc, control = procs.start_control("--drain-grace", "500ms", store=store)
    _, backend = procs.start_backend("backend-1")
    meshctl(control, "apply", "-f", str(write_service(tmp_path / "s.yaml", "echo", backend)))
    _, agent = procs.start_agent(control, "node-1")
    client = procs.start_client(agent, "echo")
    wait_for(lambda: any(c["ok"] for c in records(client)), 30, "a successful call")
    time.sleep(0.5)
    before = responses_received(agent)
    assert {"Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"} <= set(before)

    control_proc.stop()
    procs.start_control(store=store, name="control-2", listen=control)
    wait_for(lambda: agent_status(agent).connected, 20, "the agent to reconnect")
    time.sleep(1.5)
    assert responses_received(agent) == before, "unchanged resources were sent again"
    # And a real change still arrives.
    meshctl(
        control,
        "apply",
        "-f",
        str(write_service(tmp_path / "s.yaml", "echo", backend, "127.0.0.1:9")),
    )
    wait_for(
        lambda: (
            responses_received(agent)["ClusterLoadAssignment"] > before["ClusterLoadAssignment"]
        ),
        10,
        "the change to reach the agent",
    )


def test_node_keeps_working_without_the_control_server(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    store = f"file:{tmp_path / 'store'}"
    control_proc, control = procs.start_control(store=store)
    (_, one), (_, two) = procs.start_backend("backend-1"), procs.start_backend("backend-2")
    meshctl(control, "apply", "-f", str(write_service(tmp_path / "s.yaml", "echo", one)))
    agent_proc, agent = procs.start_agent(control, "node-1")
    client = procs.start_client(agent, "echo")
    wait_for(lambda: any(c["ok"] for c in records(client)), 30, "a successful call")

    control_proc.kill()
    seen = len(records(client))
    wait_for(lambda: len(records(client)) >= seen + 20, 20, "20 calls with the control server down")
    assert all(c["ok"] for c in records(client)[seen:]), records(client)[seen:]

    # The agent restarts while the control server is still down: a new process gets config.
    client.stop()
    agent_proc.stop()
    _, agent = procs.start_agent(control, "node-1")
    assert not agent_status(agent).connected
    fresh = procs.start_client(agent, "echo", node="client-2")
    wait_for(lambda: any(c["ok"] for c in records(fresh)), 30, "a call served from the state dir")

    # The control server comes back: a change applied there reaches the client.
    procs.start_control(store=store, name="control-2", listen=control)
    meshctl(control, "apply", "-f", str(write_service(tmp_path / "s.yaml", "echo", two)))
    seen = len(records(fresh))
    wait_for(
        lambda: any(c.get("backend") == "backend-2" for c in records(fresh)[seen:]),
        30,
        "the change to reach the client",
    )


def test_health_checks_steer_traffic_and_panic_keeps_it_flowing(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    _, control = procs.start_control()
    one_proc, one = procs.start_backend("backend-1")
    two_proc, two = procs.start_backend("backend-2")
    hc = "{interval: 200ms, timeout: 100ms, unhealthy_threshold: 2, healthy_threshold: 2}"
    meshctl(
        control, "apply", "-f", str(write_service(tmp_path / "s.yaml", "echo", one, two, health=hc))
    )
    _, agent = procs.start_agent(control, "node-1")
    client = procs.start_client(agent, "echo")
    wait_for(lambda: len(backends_of(records(client))) == 2, 30, "traffic on both backends")

    one_proc.popen.send_signal(signal.SIGUSR1)  # backend-1 reports NOT_SERVING
    started = time.monotonic()

    def only_backend_2() -> bool:
        recent = records(client)[-15:]
        return len(recent) == 15 and backends_of(recent) == {"backend-2": 15}

    wait_for(only_backend_2, 10, "traffic to leave the failing backend")
    # interval x threshold (0.4 s), plus the push to the client and 15 calls of 50 ms.
    assert time.monotonic() - started < 5
    unhealthy = {h.address for h in agent_status(agent).endpoint_health if h.state == "unhealthy"}
    assert unhealthy == {one}

    one_proc.popen.send_signal(signal.SIGUSR2)
    seen = len(records(client))
    wait_for(lambda: backends_of(records(client)[seen:])["backend-1"] > 0, 10, "traffic to return")

    # Every endpoint failing its checks: panic threshold, calls still go out.
    one_proc.popen.send_signal(signal.SIGUSR1)
    two_proc.popen.send_signal(signal.SIGUSR1)
    wait_for(
        lambda: sum(h.state == "unhealthy" for h in agent_status(agent).endpoint_health) == 2,
        10,
        "both endpoints unhealthy",
    )
    seen = len(records(client))
    wait_for(lambda: len(records(client)) >= seen + 20, 10, "20 more calls")
    recent = records(client)[seen:]
    assert all(c["ok"] for c in recent), recent
    assert len(backends_of(recent)) == 2


def test_an_agent_that_never_reached_the_control_server_says_so(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    control = f"127.0.0.1:{free_port()}"  # nothing listens here yet
    agent_proc, agent = procs.start_agent(control, "node-1")

    def upstream() -> object:
        found = [c for c in agent_status(agent).components if c.name == "upstream"]
        return found[0] if found and found[0].state == "degraded" else None

    component = wait_for(upstream, 20, "the upstream component to say it is not connected")
    assert control in component.last_error and "Connection refused" in component.last_error
    status = agent_status(agent)
    assert not status.connected and status.upstream == ""
    assert health(agent, "upstream") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert "Connection refused" in agent_proc.errors()  # the log says why, not only "unreachable"

    # A local process asking for a service is told the control plane cannot be reached, at
    # once, instead of waiting out grpcio's does-not-exist timer for a service that may exist.
    started = time.monotonic()
    caller = procs.python(
        "caller",
        "tests.xds_caller",
        "--server",
        agent,
        "--node-id",
        "app-1",
        "--fail-fast",
        "--timeout",
        "30",
        "orders",
    )
    assert caller.popen.wait(30) == 0, caller.errors()[-2000:]
    record = json.loads(caller.lines()[0])
    assert not record["ok"] and record["code"] == "UNAVAILABLE", record
    assert "cannot reach the control plane" in record["details"], record
    assert "does not exist" not in record["details"], record
    assert time.monotonic() - started < 10, "the caller waited for the resource"

    # The control plane comes: the agent says so, and calls go through.
    _, backend = procs.start_backend("b1", proc_name="backend")
    procs.start_control(listen=control)
    meshctl(control, "apply", "-f", str(write_service(tmp_path / "orders.yaml", "orders", backend)))
    wait_for(lambda: agent_status(agent).connected, 30, "the agent to connect")
    running = [c for c in agent_status(agent).components if c.name == "upstream"]
    assert running[0].state == "running", running
    assert health(agent, "upstream") == health_pb2.HealthCheckResponse.SERVING
    again = procs.python(
        "caller-2", "tests.xds_caller", "--server", agent, "--node-id", "app-2", "orders"
    )
    assert again.popen.wait(60) == 0, again.errors()[-2000:]
    assert json.loads(again.lines()[0])["ok"], again.lines()


def test_health_checks_steer_traffic_within_a_subset(procs: MeshProcesses, tmp_path: Path) -> None:
    # Every call goes to subset v2 (both backends): the agent checks each endpoint once and
    # writes its verdict into the subset's assignment, which is all the client holds.
    _, control = procs.start_control()
    one_proc, one = procs.start_backend("backend-1")
    _, two = procs.start_backend("backend-2")
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: echo\n"
        f"endpoints: [{{address: '{one}', labels: {{v: '2'}}}}, "
        f"{{address: '{two}', labels: {{v: '2'}}}}]\n"
        "subsets: [{name: v2, labels: {v: '2'}}]\n"
        "routes: [{to: {v2: 1}}]\n"
        "policy: {health_check: {interval: 200ms, timeout: 100ms, unhealthy_threshold: 2}}\n"
    )
    meshctl(control, "apply", "-f", str(path))
    _, agent = procs.start_agent(control, "node-1")
    client = procs.start_client(agent, "echo")
    wait_for(lambda: len(backends_of(records(client))) == 2, 30, "traffic on both backends")

    one_proc.popen.send_signal(signal.SIGUSR1)  # backend-1 reports NOT_SERVING

    def only_backend_2() -> bool:
        recent = records(client)[-15:]
        return len(recent) == 15 and backends_of(recent) == {"backend-2": 15}

    wait_for(only_backend_2, 10, "traffic to leave the failing backend")
    health = {(h.service, h.address): h.state for h in agent_status(agent).endpoint_health}
    assert health == {("echo", one): "unhealthy", ("echo", two): "healthy"}, health
