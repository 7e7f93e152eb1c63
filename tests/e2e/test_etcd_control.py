"""Control servers on a real etcd, end to end: several control servers sharing one etcd, agents
failing over between them, an etcd restart under a stream of writes, compaction past a control
server's watch, an etcd outage, and racing conditional applies."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from grpc_health.v1 import health_pb2

from control.config import service_to_dict
from control.server import DRAIN_GRACE, STOP_TIMEOUT
from mesh.v1 import admin_pb2, admin_pb2_grpc, config_pb2
from mesh_xds.types import CLUSTER, ENDPOINT
from tests.conftest import Proc, run_cli, wait_for
from tests.e2e.conftest import EtcdRelay, EtcdServer, MeshProcesses
from tests.e2e.helpers import (
    agent_status,
    health,
    meshctl,
    records,
    register,
    service_yaml,
    status_json,
)

pytestmark = [pytest.mark.e2e]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# What a loaded two-core machine adds to a control server's stop: the process's exit itself.
STOP_MARGIN = 5.0


# -- helpers -----------------------------------------------------------------------------------


def get_service(control: str, name: str) -> dict[str, object]:
    return json.loads(meshctl(control, "get", "services", name, "-o", "json"))


def stored(control: str, name: str) -> dict[str, object]:
    """The service as ``control`` serves it through ``meshctl get -o json``."""
    [entry] = get_service(control, name)["services"]
    return entry["service"]


def settled_on(client: Proc, backend: str, last: int = 10) -> bool:
    """Whether the client's last ``last`` calls all succeeded on ``backend``."""
    recent = records(client)[-last:]
    return len(recent) == last and all(c.get("backend") == backend for c in recent)


def wait_settled(client: Proc, backend: str, what: str, timeout: float = 30) -> None:
    wait_for(lambda: settled_on(client, backend), timeout, f"{what}: {client.name} on {backend}")


def echo(tmp_path: Path, *addresses: str) -> str:
    return str(service_yaml(tmp_path / "echo.yaml", "echo", *addresses))


# -- 1. two control servers, two agents, failover ----------------------------------------------


@pytest.mark.timeout(120)
def test_two_control_servers_share_etcd_and_agents_fail_over(
    procs: MeshProcesses, etcd: EtcdServer, tmp_path: Path
) -> None:
    store = etcd.url("/mesh")
    c1_proc, c1 = procs.start_control(store=store, name="control-1")
    _, c2 = procs.start_control(store=store, name="control-2")
    b1, b2, b3 = (procs.start_backend(f"backend-{i}")[1] for i in (1, 2, 3))
    meshctl(c1, "apply", "-f", echo(tmp_path, b1))

    _, agent1 = procs.start_agent(f"{c1},{c2}", "node-1")
    _, agent2 = procs.start_agent(f"{c2},{c1}", "node-2")
    client1 = procs.start_client(agent1, "echo", node="client-1")
    client2 = procs.start_client(agent2, "echo", node="client-2")
    for client in (client1, client2):
        wait_settled(client, "backend-1", "first calls")
    assert agent_status(agent1).upstream == c1
    assert agent_status(agent2).upstream == c2

    # a change through control-1 reaches the node on control-2 too, through etcd
    meshctl(c1, "apply", "-f", echo(tmp_path, b2))
    for client in (client1, client2):
        wait_settled(client, "backend-2", "a change through control-1")

    seen = {c.name: len(records(c)) for c in (client1, client2)}
    c1_proc.kill()
    wait_for(lambda: agent_status(agent1).upstream == c2, 30, "node-1 to fail over to control-2")
    assert agent_status(agent2).upstream == c2
    meshctl(c2, "apply", "-f", echo(tmp_path, b3))
    for client in (client1, client2):
        wait_settled(client, "backend-3", "a change through control-2 after the failover")
        after = records(client)[seen[client.name] :]
        assert all(c["ok"] for c in after), [c for c in after if not c["ok"]]


# -- 2. etcd restart under a stream of writes --------------------------------------------------

ROTATION = [(0,), (1,), (2,), (0, 1), (1, 2), (0, 2), (0, 1, 2)]


def load_service(seq: int, backends: list[str]) -> config_pb2.Service:
    """Version ``seq`` of the service ``load``: a rotating endpoint list, weights and a
    metadata value that make every version different."""
    service = config_pb2.Service(name="load")
    for index in ROTATION[seq % len(ROTATION)]:
        service.endpoints.add(
            address=backends[index], weight=1 + (seq + index) % 7, metadata={"seq": str(seq)}
        )
    service.policy.timeout.FromSeconds(3)
    return service


@dataclass
class Writer:
    """Applies a new version of ``load`` every ~100 ms through one control server's admin API,
    one at a time, keeping track of what succeeded and what failed."""

    control: str
    backends: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    successes: list[tuple[float, int, config_pb2.Service]] = field(default_factory=list)
    failures: list[tuple[float, int, str]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def run(self) -> None:
        try:
            with grpc.insecure_channel(self.control) as channel:
                stub = admin_pb2_grpc.MeshAdminServiceStub(channel)
                seq = 0
                while not self.stop.is_set():
                    seq += 1
                    service = load_service(seq, self.backends)
                    started = time.monotonic()
                    try:
                        stub.ApplyServices(
                            admin_pb2.ApplyServicesRequest(services=[service]), timeout=20
                        )
                    except grpc.RpcError as error:
                        self.failures.append(
                            (started, seq, f"{error.code().name}: {error.details()}")
                        )
                    else:
                        self.successes.append((started, seq, service))
                    self.stop.wait(0.1)
        except BaseException as error:  # surfaced by the test
            self.errors.append(error)

    def successes_since(self, moment: float) -> int:
        return sum(1 for started, _, _ in self.successes if started >= moment)


def endpoints_of(assignment: endpoint_pb2.ClusterLoadAssignment) -> list[tuple[str, int]]:
    return sorted(
        (
            f"{lb.endpoint.address.socket_address.address}:"
            f"{lb.endpoint.address.socket_address.port_value}",
            lb.load_balancing_weight.value,
        )
        for locality in assignment.endpoints
        for lb in locality.lb_endpoints
    )


def agent_assignment(
    agent: str, node_id: str, name: str
) -> endpoint_pb2.ClusterLoadAssignment | None:
    """The ClusterLoadAssignment ``name`` the agent holds, from its CSDS (own node first)."""
    with grpc.insecure_channel(agent) as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        response = stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=5)
    own = response.config[0]
    assert own.node.id == node_id, own.node
    for config in own.generic_xds_configs:
        if config.type_url == ENDPOINT and config.name == name:
            assignment = endpoint_pb2.ClusterLoadAssignment()
            assert config.xds_config.Unpack(assignment)
            return assignment
    return None


def acked_versions(agent: str) -> dict[str, str]:
    return {
        t.type_url: t.version_acked
        for t in agent_status(agent).types
        if t.type_url in (CLUSTER, ENDPOINT)
    }


@pytest.mark.timeout(120)
def test_etcd_restart_under_writes_converges_on_the_last_write(
    procs: MeshProcesses, etcd: EtcdServer, tmp_path: Path
) -> None:
    store = etcd.url("/mesh")
    _, c1 = procs.start_control(store=store, name="control-1")
    _, c2 = procs.start_control(store=store, name="control-2")
    backends = [procs.start_backend(f"backend-{i}")[1] for i in (1, 2, 3)]
    names = {address: f"backend-{i}" for i, address in enumerate(backends, start=1)}
    (tmp_path / "load.yaml").write_text(f"name: load\nendpoints: [{{address: '{backends[0]}'}}]\n")
    meshctl(c1, "apply", "-f", str(tmp_path / "load.yaml"))
    _, agent1 = procs.start_agent(f"{c1},{c2}", "node-1")
    _, agent2 = procs.start_agent(f"{c2},{c1}", "node-2")
    clients = [
        procs.start_client(agent1, "load", node="client-1"),
        procs.start_client(agent2, "load", node="client-2"),
    ]
    for client in clients:
        wait_settled(client, "backend-1", "first calls")

    writer = Writer(c1, backends)
    thread = threading.Thread(target=writer.run, name="writer", daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(writer.successes) >= 5, 20, "5 writes before the restart")
        etcd.stop()
        time.sleep(1)
        etcd.start()
        back = time.monotonic()
        wait_for(lambda: writer.successes_since(back) >= 5, 40, "5 writes after the restart")
    finally:
        writer.stop.set()
        thread.join(30)
    assert not thread.is_alive() and not writer.errors, writer.errors
    assert writer.failures, "no write failed: etcd was not down while writing"
    for _, seq, reason in writer.failures:
        assert "etcd" in reason or "UNAVAILABLE" in reason, (seq, reason)
    _, last_seq, last = writer.successes[-1]
    assert last_seq == max(seq for _, seq, _ in writer.successes + writer.failures)
    expected = service_to_dict(last)

    # both control servers hold the last write
    wait_for(
        lambda: stored(c1, "load") == expected and stored(c2, "load") == expected,
        20,
        "both control servers to hold the last write",
    )
    one, two = get_service(c1, "load"), get_service(c2, "load")
    assert one["services"] == two["services"]

    # both agents hold it: same versions ACKed, and the endpoints of the last write
    want = sorted((e.address, e.weight) for e in last.endpoints)

    def converged() -> bool:
        v1, v2 = acked_versions(agent1), acked_versions(agent2)
        return (
            set(v1) == {CLUSTER, ENDPOINT}
            and v1 == v2
            and all(v1.values())
            and all(
                (a := agent_assignment(agent, node, "load")) is not None and endpoints_of(a) == want
                for agent, node in ((agent1, "node-1"), (agent2, "node-2"))
            )
        )

    wait_for(converged, 30, "both agents to hold the last write")
    for agent in (agent1, agent2):
        status = agent_status(agent)
        assert status.connected
        assert all(not t.last_nack for t in status.types), status

    # and the clients call only the endpoints of the last write
    allowed = {names[e.address] for e in last.endpoints}
    seen = [len(records(c)) for c in clients]
    for client, start in zip(clients, seen, strict=True):
        wait_for(lambda c=client, s=start: len(records(c)) >= s + 20, 20, "20 more calls")
        recent = records(client)[-10:]
        assert all(c["ok"] and c["backend"] in allowed for c in recent), (allowed, recent)


# -- 3. compaction past a control server's revision --------------------------------------------


@pytest.mark.timeout(120)
def test_compaction_past_a_control_servers_revision_recovers_without_restart(
    procs: MeshProcesses, etcd: EtcdServer, etcd_relay: EtcdRelay, tmp_path: Path
) -> None:
    behind_proc, behind = procs.start_control(
        store=f"etcd://{etcd_relay.endpoint}/mesh", name="control-behind"
    )
    _, direct = procs.start_control(store=etcd.url("/mesh"), name="control-direct")
    b1, b2, b3 = (procs.start_backend(f"backend-{i}")[1] for i in (1, 2, 3))
    meshctl(behind, "apply", "-f", echo(tmp_path, b1))
    client = procs.start_client(behind, "echo")
    wait_settled(client, "backend-1", "first calls")
    assert health(behind, "store") == SERVING
    pid = behind_proc.popen.pid

    etcd_relay.cut()
    wait_for(lambda: health(behind, "store") == NOT_SERVING, 20, "the cut-off store to be reported")

    # several changes the cut-off control server does not see, then their history is compacted
    (tmp_path / "aux.yaml").write_text("name: aux\nendpoints: [{address: '127.0.0.1:9'}]\n")
    (tmp_path / "extra.yaml").write_text("name: extra\nendpoints: [{address: '127.0.0.1:9'}]\n")
    meshctl(direct, "apply", "-f", str(tmp_path / "aux.yaml"))
    meshctl(direct, "apply", "-f", echo(tmp_path, b2))
    meshctl(direct, "apply", "-f", str(tmp_path / "extra.yaml"))
    meshctl(direct, "delete", "service", "aux")
    last = meshctl(direct, "apply", "-f", echo(tmp_path, b3))
    last_revision = int(last.removeprefix("service/echo configured (revision ").split(")")[0])
    revision = asyncio.run(etcd.revision())
    asyncio.run(etcd.compact(revision))
    # meanwhile the cut-off server still serves the last state it read
    assert stored(behind, "echo")["endpoints"] == [{"address": b1}]
    assert settled_on(client, "backend-1")

    etcd_relay.restore()
    wait_for(lambda: health(behind, "store") == SERVING, 30, "the store to be SERVING again")
    want = json.loads(meshctl(direct, "get", "services", "-o", "json"))
    # the store's revision is its services' (the audit entry of the write came after it)
    assert want["revision"] == last_revision <= revision
    wait_for(
        # services alike; the store revisions may differ: a reload takes etcd's revision,
        # which counts the audit entries' keys too
        lambda: (
            json.loads(meshctl(behind, "get", "services", "-o", "json"))["services"]
            == want["services"]
        ),
        20,
        "the recovered control server to serve the latest config",
    )
    assert [s["service"]["name"] for s in want["services"]] == ["echo", "extra"]
    wait_settled(client, "backend-3", "the last change to reach the client")
    assert behind_proc.alive and behind_proc.popen.pid == pid  # not restarted
    assert "etcd compacted the history" in behind_proc.output() + behind_proc.errors()
    status = status_json(behind)
    assert not status.get("store_problems"), status

    # and it keeps following etcd
    meshctl(direct, "apply", "-f", echo(tmp_path, b2))
    wait_settled(client, "backend-2", "a later change")


# -- 4. etcd unreachable -----------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_etcd_outage_is_reported_and_the_last_config_stays(
    procs: MeshProcesses, etcd: EtcdServer, tmp_path: Path
) -> None:
    _, control = procs.start_control(store=etcd.url("/mesh"))
    (_, b1), (_, b2) = procs.start_backend("backend-1"), procs.start_backend("backend-2")
    meshctl(control, "apply", "-f", echo(tmp_path, b1))
    client = procs.start_client(control, "echo")
    wait_settled(client, "backend-1", "first calls")
    assert health(control, "store") == SERVING
    before = get_service(control, "echo")

    etcd.stop()
    wait_for(lambda: health(control, "store") == NOT_SERVING, 20, "store health NOT_SERVING")
    status = status_json(control)
    [problem] = status["store_problems"]
    assert problem["source"] == etcd.url("/mesh")
    assert "unreachable" in problem["message"], problem
    assert get_service(control, "echo") == before  # reads serve the last state

    started = time.monotonic()
    result = run_cli("control.meshctl", "--control", control, "apply", "-f", echo(tmp_path, b2))
    took = time.monotonic() - started
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("meshctl: ") and etcd.endpoint in lines[0], lines[0]
    assert "unreachable" in lines[0], lines[0]
    assert took < 15, took
    seen = len(records(client))
    wait_for(lambda: len(records(client)) >= seen + 20, 20, "20 calls during the outage")
    during = records(client)[seen:]
    assert all(c.get("backend") == "backend-1" for c in during), during

    etcd.start()
    wait_for(lambda: health(control, "store") == SERVING, 30, "store health SERVING again")
    assert not status_json(control).get("store_problems")
    meshctl(control, "apply", "-f", echo(tmp_path, b2))
    wait_settled(client, "backend-2", "an apply after the outage")


@pytest.mark.timeout(60)
def test_apply_during_an_outage_blames_etcd_not_the_control_server(
    procs: MeshProcesses, etcd: EtcdServer, tmp_path: Path
) -> None:
    _, control = procs.start_control(store=etcd.url("/mesh"))
    etcd.stop()
    wait_for(lambda: health(control, "store") == NOT_SERVING, 20, "store health NOT_SERVING")
    result = run_cli(
        "control.meshctl", "--control", control, "apply", "-f", echo(tmp_path, "127.0.0.1:9")
    )
    assert result.returncode != 0
    assert "etcd is unreachable" in result.stderr, result.stderr
    assert "cannot reach mesh-control" not in result.stderr, result.stderr


# -- 5. racing conditional applies through two control servers ---------------------------------


@pytest.mark.timeout(120)
def test_concurrent_conditional_applies_through_two_control_servers(
    procs: MeshProcesses, etcd: EtcdServer, tmp_path: Path
) -> None:
    store = etcd.url("/mesh")
    _, c1 = procs.start_control(store=store, name="control-1")
    _, c2 = procs.start_control(store=store, name="control-2")
    meshctl(c1, "apply", "-f", str(service_yaml(tmp_path / "race.yaml", "race", "127.0.0.1:7000")))

    for round_ in range(3):
        base = get_service(c1, "race")
        wait_for(lambda b=base: get_service(c2, "race") == b, 10, "control-2 to catch up")
        revision = base["revision"]
        files = {
            control: service_yaml(
                tmp_path / f"race-{round_}-{i}.yaml", "race", f"127.0.0.{i}:{7100 + round_}"
            )
            for i, control in enumerate((c1, c2), start=1)
        }
        runs = {
            control: subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "control.meshctl",
                    "--control",
                    control,
                    "apply",
                    "-f",
                    str(path),
                    "--if-revision",
                    str(revision),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=procs.env,
            )
            for control, path in files.items()
        }
        outputs = {control: p.communicate(timeout=30) for control, p in runs.items()}
        results = {c: (runs[c].returncode, out, err) for c, (out, err) in outputs.items()}
        winners = [c for c, (code, _, _) in results.items() if code == 0]
        losers = [c for c, (code, _, _) in results.items() if code != 0]
        assert len(winners) == 1 and len(losers) == 1, results
        [winner], [loser] = winners, losers
        assert results[winner][1].startswith("service/race configured (revision "), results
        reason = results[loser][2].strip()
        assert len(reason.splitlines()) == 1, reason
        assert "aborted" in reason and "race" in reason, reason
        want = [{"address": f"127.0.0.{1 if winner == c1 else 2}:{7100 + round_}"}]
        for control in (c1, c2):
            wait_for(
                lambda c=control, w=want: stored(c, "race")["endpoints"] == w,
                10,
                f"the winner's content on {control}",
            )
        after = get_service(c1, "race")
        assert after["revision"] > revision
        assert after["services"][0]["revision"] > revision


@pytest.mark.timeout(60)
def test_sigterm_stops_a_control_server_whose_etcd_is_down(
    procs: MeshProcesses, etcd: EtcdServer, tmp_path: Path
) -> None:
    # Its node-state sync keeps retrying etcd; SIGTERM must still end it cleanly at once.
    control_proc, control = procs.start_control(store=etcd.url("/mesh"))
    _, b1 = procs.start_backend("backend-1")
    meshctl(control, "apply", "-f", echo(tmp_path, b1))
    client = procs.start_client(control, "echo")
    wait_settled(client, "backend-1", "first calls")
    etcd.stop()
    wait_for(lambda: health(control, "store") == NOT_SERVING, 20, "store health NOT_SERVING")
    # Both at once: the node leaving wakes the sync, whose etcd call SIGTERM then cancels.
    client.popen.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = control_proc.stop(timeout=8)
    assert code == 0, (code, time.monotonic() - started, control_proc.errors()[-2000:])


@pytest.mark.timeout(90)
@pytest.mark.parametrize("etcd_state", ["serving", "frozen"])
def test_sigterm_to_a_control_server_and_its_agent_at_once_stops_the_server_in_time(
    procs: MeshProcesses, etcd: EtcdServer, etcd_state: str
) -> None:
    # The agent's stream ends as the server stops: that wakes the server's node-state sync
    # just before the stop cancels it, a cancellation that asyncio.wait_for (Python 3.11) lost,
    # so the sync ran on and the server never exited. With etcd frozen (SIGSTOP), every etcd
    # call hangs until its deadline instead; the stop must not wait for them either.
    control_proc, control = procs.start_control(store=etcd.url("/mesh"))
    agent_proc, agent = procs.start_agent(control, "node-1")
    register(agent, "reg", "127.0.0.1:7001")
    wait_for(
        lambda: any(n["registrations"] for n in status_json(control)["nodes"]),
        20,
        "the registration to reach the control server",
    )
    if etcd_state == "frozen":
        etcd.pause()
    try:
        time.sleep(1)  # the sync and the lease renewal are in their etcd calls, or waiting
        agent_proc.popen.send_signal(signal.SIGTERM)
        control_proc.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = control_proc.reap(timeout=30)
        took = time.monotonic() - signalled
    finally:
        etcd.resume()
    bound = DRAIN_GRACE + 2 * STOP_TIMEOUT + STOP_MARGIN
    assert code == 0 and took < bound, (code, f"{took:.1f}s", control_proc.errors()[-3000:])
