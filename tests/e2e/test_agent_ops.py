"""mesh-agent as an operator and a service owner see it: registration through the agent,
NACKs of local processes shown upstream, components from entry points, grpcurl and CSDS."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest
from google.protobuf import duration_pb2

from mesh.v1 import agent_pb2, node_pb2
from mesh_xds.testing import AdsClient
from mesh_xds.types import LISTENER
from tests.conftest import eventually, require_tool, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import (
    agent_status,
    agent_stub,
    health,
    install_plugin,
    log_lines,
    meshctl,
    plugin_env,
    records,
    register,
    status_json,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_registered_endpoint_reaches_other_nodes_and_leaves_with_its_agent(
    procs: MeshProcesses,
) -> None:
    _, control = procs.start_control("--registration-grace", "1s")
    _, backend = procs.start_backend("backend-reg")
    owner_proc, owner = procs.start_agent(control, "node-a")
    _, other = procs.start_agent(control, "node-b")
    register(owner, "reg", backend)
    client = procs.start_client(other, "reg")
    wait_for(
        lambda: any(c.get("backend") == "backend-reg" for c in records(client)),
        30,
        "a call from node-b to the endpoint node-a registered",
    )
    nodes = status_json(control)["nodes"]
    node_a = next(n for n in nodes if n["node_id"] == "node-a")
    assert node_a["registrations"][0]["address"] == backend

    seen = len(records(client))
    stopped = time.monotonic()
    owner_proc.stop()
    wait_for(
        lambda: any(not c["ok"] for c in records(client)[seen:]),
        20,
        "the endpoint to go away with its agent",
    )
    assert time.monotonic() - stopped >= 0.9, (
        "dropped before the grace period",
        [c for c in records(client)[seen:] if not c["ok"]][:2],
    )


def test_deregister_drains_before_removal(procs: MeshProcesses) -> None:
    _, control = procs.start_control()
    (_, one), (_, two) = procs.start_backend("backend-1"), procs.start_backend("backend-2")
    _, agent = procs.start_agent(control, "node-a")
    channel, stub = agent_stub(agent)
    with channel:
        for address in (one, two):
            stub.Register(
                agent_pb2.RegisterRequest(
                    registration=node_pb2.Registration(service="svc", address=address)
                ),
                timeout=5,
            )
        client = procs.start_client(agent, "svc")
        wait_for(
            lambda: {c.get("backend") for c in records(client)} >= {"backend-1", "backend-2"},
            30,
            "traffic on both",
        )
        future = stub.Deregister.future(
            agent_pb2.DeregisterRequest(
                service="svc", address=one, drain=duration_pb2.Duration(seconds=2)
            ),
            timeout=10,
        )
        time.sleep(1.0)
        draining = [r for r in agent_status(agent).registrations if r.address == one]
        assert draining and draining[0].draining
        seen = len(records(client))
        time.sleep(0.7)
        assert {c.get("backend") for c in records(client)[seen:]} == {"backend-2"}
        future.result()
    assert [r.address for r in agent_status(agent).registrations] == [two]


def test_local_nack_is_reported_to_meshctl_status(procs: MeshProcesses, tmp_path: Path) -> None:
    _, control = procs.start_control()
    (tmp_path / "s.yaml").write_text("name: echo\nendpoints: [{address: 127.0.0.1:9}]\n")
    meshctl(control, "apply", "-f", str(tmp_path / "s.yaml"))
    _, agent = procs.start_agent(control, "node-a")

    async def nack_once() -> None:
        client = AdsClient(agent, "picky-process", reject=lambda r: "no thanks: test")
        async with client:
            client.subscribe(LISTENER, ["echo"])
            await client.wait_for(lambda c: any(r.resources for r in c.of_type(LISTENER)))

            def reported() -> bool:
                nodes = status_json(control)["nodes"]
                node = next((n for n in nodes if n["node_id"] == "node-a"), {})
                return any(
                    c.get("client_id") == "picky-process"
                    and "no thanks" in c.get("nack_message", "")
                    for c in node.get("local_clients", [])
                )

            await eventually(
                lambda: asyncio.to_thread(reported),
                60,
                "the local NACK to reach meshctl status",
                every=0.1,
            )
            table = await asyncio.to_thread(meshctl, control, "status")
            assert "picky-process" in table and "no thanks: test" in table

    asyncio.run(nack_once())


def test_entry_point_component_is_restarted_and_shown_in_health(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    from grpc_health.v1 import health_pb2

    plugin = tmp_path / "plugin"
    plugin.mkdir()
    install_plugin(plugin)
    (plugin / "fail-start").touch()
    _, control = procs.start_control()
    proc, agent = procs.start_agent(control, "node-a", env=plugin_env(procs, plugin))

    def component(name: str) -> agent_pb2.ComponentStatus:
        return next(c for c in agent_status(agent).components if c.name == name)

    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    # Failing at start: restarted, shown NOT_SERVING under its own name; the rest serves.
    wait_for(lambda: component("flaky").restarts >= 2, 20, "restarts of the failing start")
    assert "flaky start failure" in component("flaky").last_error
    assert health(agent, "flaky") == not_serving
    assert health(agent, "") == serving and health(agent, "upstream") == serving
    assert agent_status(agent).connected
    (plugin / "fail-start").unlink()
    wait_for(lambda: health(agent, "flaky") == serving, 20, "the component to come up")

    # Failing at run time: the same.
    (plugin / "fail-run").touch()
    wait_for(lambda: health(agent, "flaky") == not_serving, 10, "the run failure to show")
    assert "flaky run failure" in component("flaky").last_error
    (plugin / "fail-run").unlink()
    wait_for(lambda: health(agent, "flaky") == serving, 20, "recovery after the run failure")
    assert all(c.state == "running" for c in agent_status(agent).components)

    proc.stop()
    log = log_lines(proc)
    order = next(e["order"] for e in log if e.get("event") == "components started")
    assert order.index("flaky") > order.index("cache")
    stops = [e["component"] for e in log if e.get("event") == "component stopping"]
    assert stops.index("flaky") < stops.index("cache"), stops


def test_grpcurl_on_the_agent_socket(procs: MeshProcesses, tmp_path: Path) -> None:
    tool = require_tool("grpcurl")
    _, control = procs.start_control()
    (tmp_path / "s.yaml").write_text("name: echo\nendpoints: [{address: 127.0.0.1:9}]\n")
    meshctl(control, "apply", "-f", str(tmp_path / "s.yaml"))
    _, agent = procs.start_agent(control, "node-a")
    client = procs.start_client(agent, "echo")
    wait_for(lambda: records(client), 30, "the client's first call")
    socket = agent.removeprefix("unix:")

    def run(*args: str) -> str:
        result = subprocess.run(
            [tool, "-plaintext", "-unix", *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    listed = run(socket, "list").split()
    for service in (
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        "envoy.service.status.v3.ClientStatusDiscoveryService",
        "mesh.v1.AgentService",
        "grpc.health.v1.Health",
    ):
        assert service in listed
    assert "rpc Register" in run(socket, "describe", "mesh.v1.AgentService")
    dump = json.loads(
        run(
            "-d",
            "{}",
            socket,
            "envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus",
        )
    )
    own = next(c for c in dump["config"] if c["node"]["id"] == "node-a")
    kinds = {e["type_url"].rsplit(".", 1)[-1]: e for e in own["generic_xds_configs"]}
    assert kinds["Listener"]["client_status"] == "ACKED"
    assert kinds["Listener"]["xds_config"]["name"] == "echo"  # decoded through reflection
    assert kinds["Cluster"]["xds_config"]["type"] == "EDS"
    assert any(c["node"]["id"] == "client-1" for c in dump["config"])
