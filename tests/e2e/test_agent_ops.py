"""mesh-agent as an operator and a service owner see it: registration through the agent,
NACKs of local processes shown upstream, components from entry points, grpcurl and CSDS."""

from __future__ import annotations

import asyncio
import json
import subprocess
import textwrap
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

from mesh.v1 import agent_pb2, agent_pb2_grpc, node_pb2
from mesh_xds.types import LISTENER
from tests.adsclient import AdsTestClient
from tests.conftest import Processes, require_tool, wait_for
from tests.e2e.agentutil import agent_status, start_agent
from tests.e2e.test_control_xds import calls, meshctl, start_backend, start_client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def agent_stub(target: str) -> tuple[grpc.Channel, agent_pb2_grpc.AgentServiceStub]:
    channel = grpc.insecure_channel(target)
    return channel, agent_pb2_grpc.AgentServiceStub(channel)


def start_control(procs: Processes, *extra: str) -> str:
    _, address = procs.start_ready(
        "control", "control", "serve", "--listen", "127.0.0.1:0", "--store", "memory:", *extra
    )
    return address


def test_registered_endpoint_reaches_other_nodes_and_leaves_with_its_agent(
    procs: Processes,
) -> None:
    control = start_control(procs, "--registration-grace", "1s")
    backend = start_backend(procs, "backend-reg")
    owner_proc, owner = start_agent(procs, control, "node-a")
    _, other = start_agent(procs, control, "node-b")
    channel, stub = agent_stub(owner)
    with channel:
        stub.Register(
            agent_pb2.RegisterRequest(
                registration=node_pb2.Registration(service="reg", address=backend)
            ),
            timeout=5,
        )
    client = start_client(procs, other, "reg")
    wait_for(
        lambda: any(c.get("backend") == "backend-reg" for c in calls(client)),
        30,
        "a call from node-b to the endpoint node-a registered",
    )
    nodes = json.loads(meshctl(control, "status", "-o", "json"))["nodes"]
    node_a = next(n for n in nodes if n["node_id"] == "node-a")
    assert node_a["registrations"][0]["address"] == backend

    seen = len(calls(client))
    stopped = time.monotonic()
    owner_proc.stop()
    wait_for(
        lambda: any(not c["ok"] for c in calls(client)[seen:]),
        20,
        "the endpoint to go away with its agent",
    )
    assert time.monotonic() - stopped >= 0.9, (
        "dropped before the grace period",
        [c for c in calls(client)[seen:] if not c["ok"]][:2],
    )


def test_deregister_drains_before_removal(procs: Processes) -> None:
    control = start_control(procs)
    one, two = start_backend(procs, "backend-1"), start_backend(procs, "backend-2")
    _, agent = start_agent(procs, control, "node-a")
    channel, stub = agent_stub(agent)
    with channel:
        for address in (one, two):
            stub.Register(
                agent_pb2.RegisterRequest(
                    registration=node_pb2.Registration(service="svc", address=address)
                ),
                timeout=5,
            )
        client = start_client(procs, agent, "svc")
        wait_for(
            lambda: {c.get("backend") for c in calls(client)} >= {"backend-1", "backend-2"},
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
        seen = len(calls(client))
        time.sleep(0.7)
        assert {c.get("backend") for c in calls(client)[seen:]} == {"backend-2"}
        future.result()
    assert [r.address for r in agent_status(agent).registrations] == [two]


def test_local_nack_is_reported_to_meshctl_status(procs: Processes, tmp_path: Path) -> None:
    control = start_control(procs)
    (tmp_path / "s.yaml").write_text("name: echo\nendpoints: [{address: 127.0.0.1:9}]\n")
    meshctl(control, "apply", "-f", str(tmp_path / "s.yaml"))
    _, agent = start_agent(procs, control, "node-a")

    async def nack_once() -> None:
        client = AdsTestClient(agent, "picky-process", reject=lambda r: "no thanks: test")
        async with client:
            client.subscribe(LISTENER, ["echo"])
            await client.wait_for(lambda c: any(r.resources for r in c.of_type(LISTENER)))

            def reported() -> bool:
                nodes = json.loads(meshctl(control, "status", "-o", "json"))["nodes"]
                node = next((n for n in nodes if n["node_id"] == "node-a"), {})
                return any(
                    c.get("client_id") == "picky-process"
                    and "no thanks" in c.get("nack_message", "")
                    for c in node.get("local_clients", [])
                )

            for _ in range(100):
                if await asyncio.to_thread(reported):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the local NACK never reached meshctl status")
            table = await asyncio.to_thread(meshctl, control, "status")
            assert "picky-process" in table and "no thanks: test" in table

    asyncio.run(nack_once())


PLUGIN = """
import asyncio, os
from pathlib import Path

CONTROL = Path(os.environ["PLUGIN_DIR"])


class Flaky:
    # Fails to start while CONTROL/fail-start exists, fails while running while
    # CONTROL/fail-run exists.

    name = "flaky"
    requires = ("cache",)

    async def start(self, ctx):
        ctx.require("cache", object)
        if (CONTROL / "fail-start").exists():
            raise RuntimeError("flaky start failure")

    async def run(self):
        while not (CONTROL / "fail-run").exists():
            await asyncio.sleep(0.05)
        raise RuntimeError("flaky run failure")

    async def stop(self):
        pass
"""


def install_plugin(root: Path) -> None:
    """A tiny distribution, installed by putting it on the agent's path."""
    (root / "mesh_test_plugin.py").write_text(textwrap.dedent(PLUGIN))
    dist = root / "mesh_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mesh-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[mesh_agent.components]\nflaky = mesh_test_plugin:Flaky\n"
    )


def test_entry_point_component_is_restarted_and_shown_in_health(
    procs: Processes, tmp_path: Path
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    plugin = tmp_path / "plugin"
    plugin.mkdir()
    install_plugin(plugin)
    (plugin / "fail-start").touch()
    control = start_control(procs)
    env = {"PYTHONPATH": f"{plugin}:{procs.env['PYTHONPATH']}", "PLUGIN_DIR": str(plugin)}
    proc, agent = start_agent(procs, control, "node-a", env=env)

    def component(name: str) -> agent_pb2.ComponentStatus:
        return next(c for c in agent_status(agent).components if c.name == name)

    def health(service: str) -> int:
        with grpc.insecure_channel(agent) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=service)
            return int(stub.Check(request, timeout=5).status)

    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    # Failing at start: restarted, shown NOT_SERVING under its own name; the rest serves.
    wait_for(lambda: component("flaky").restarts >= 2, 20, "restarts of the failing start")
    assert "flaky start failure" in component("flaky").last_error
    assert health("flaky") == not_serving
    assert health("") == serving and health("upstream") == serving
    assert agent_status(agent).connected
    (plugin / "fail-start").unlink()
    wait_for(lambda: health("flaky") == serving, 20, "the component to come up")

    # Failing at run time: the same.
    (plugin / "fail-run").touch()
    wait_for(lambda: health("flaky") == not_serving, 10, "the run failure to show")
    assert "flaky run failure" in component("flaky").last_error
    (plugin / "fail-run").unlink()
    wait_for(lambda: health("flaky") == serving, 20, "recovery after the run failure")
    assert all(c.state == "running" for c in agent_status(agent).components)

    proc.stop()
    log = [json.loads(line) for line in proc.errors().splitlines() if line.startswith("{")]
    order = next(e["order"] for e in log if e.get("event") == "components started")
    assert order.index("flaky") > order.index("cache")
    stops = [e["component"] for e in log if e.get("event") == "component stopping"]
    assert stops.index("flaky") < stops.index("cache"), stops


def test_grpcurl_on_the_agent_socket(procs: Processes, tmp_path: Path) -> None:
    tool = require_tool("grpcurl")
    control = start_control(procs)
    (tmp_path / "s.yaml").write_text("name: echo\nendpoints: [{address: 127.0.0.1:9}]\n")
    meshctl(control, "apply", "-f", str(tmp_path / "s.yaml"))
    _, agent = start_agent(procs, control, "node-a")
    client = start_client(procs, agent, "echo")
    wait_for(lambda: calls(client), 30, "the client's first call")
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
