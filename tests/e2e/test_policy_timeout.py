"""Policy timeouts applied by the client library, with real processes: a control server, an
agent, a backend told how long to take (``Configure(delay=...)``) and client processes.

grpcio (1.85) starts a route's ``max_stream_duration`` 1-2 s early (grpc/grpc#40633), so
``mesh_channel()`` dials the alias Listener ``mesh-client/SERVICE`` (no route timeout) and its
interceptors make the policy timeout each call's deadline; a raw ``xds:///SERVICE`` channel,
in the same process or another, still gets the route timeout as xDS defines it."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
from mesh_agent.client import mesh_interceptor
from mesh_agent.client._link import AgentLink, link_for
from mesh_core.names import client_listener_name
from mesh_xds.types import LISTENER, ROUTE
from tests.conftest import Proc, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import breaker_setup, configure, meshctl, records

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SERVICE = "slow"
POLICY = "timeout: 3s"


@pytest.fixture(scope="module")
def slow_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """A control server, a backend behind ``slow`` with the 3 s policy timeout, and agent
    node-1, shared by the tests below that take it: each of them starts client processes of
    its own (their own node ids), every call sets the backend's delay first, and a test that
    changes ``slow`` puts it back. Returns the control server's, backend's and agent's
    addresses."""
    workdir = tmp_path_factory.mktemp("slow-mesh")
    shared = MeshProcesses(workdir)
    try:
        yield breaker_setup(shared, workdir, SERVICE, POLICY)
    finally:
        shared.stop_all()


def run_client(
    procs: MeshProcesses,
    name: str,
    agent: str,
    backend: str,
    channels: str,
    plan: str,
    *,
    linger: float = 0.0,
) -> Proc:
    return procs.python(
        name,
        "tests.e2e.timeout_client",
        "--agent",
        agent,
        "--service",
        SERVICE,
        "--backend",
        backend,
        "--channels",
        channels,
        "--plan",
        plan,
        "--node-id",
        name,
        "--linger",
        str(linger),
    )


def finished(client: Proc, timeout: float = 60) -> list[dict[str, Any]]:
    def done() -> bool:
        if not client.alive and not any(r.get("done") for r in records(client)):
            pytest.fail(f"{client.name} exited:\n{client.errors()[-3000:]}")
        return any(r.get("done") for r in records(client))

    wait_for(done, timeout, f"{client.name}'s calls")
    return [r for r in records(client) if "channel" in r]


def deadline_exceeded(record: dict[str, Any], low: float, high: float) -> None:
    assert record["code"] == "DEADLINE_EXCEEDED", record
    assert low <= record["s"] <= high, record


@pytest.mark.parametrize("flavour", ["mesh", "aio"])
def test_mesh_channels_apply_the_policy_timeout_themselves(
    procs: MeshProcesses, slow_mesh: tuple[str, str, str], flavour: str
) -> None:
    _, backend, agent = slow_mesh
    # The first call (before the process knows the policy) is a slow one: it must wait for
    # the policy and measure the timeout from when it was made. Then a warm-up, a call
    # within the timeout, one past it, and one whose caller's own deadline is shorter.
    plan = "3.6:20,0:20,2.5:20,3.6:20,3.6:1"
    client = run_client(procs, flavour, agent, backend, flavour, plan)
    first, warm, within, past, caller = finished(client)
    # 3.5 s at most: the timeout counts from when the call was made, not from when the
    # policy arrived. The other bounds only need to tell the policy's 3 s from the backend's
    # 3.6 s delay (the code does) and from the caller's deadline, so they leave room for a
    # busy machine.
    deadline_exceeded(first, 3.0, 3.5)
    assert warm["ok"], warm
    assert within["ok"] and within["s"] >= 2.5, within  # grpcio alone fails it at ~1.9 s
    deadline_exceeded(past, 3.0, 4.5)
    deadline_exceeded(caller, 1.0, 2.5)  # the caller's 1 s wins over the policy's 3 s
    assert "mesh agent unreachable" not in client.errors()


ROUTED = """
name: slow
endpoints: [{address: '%s'}]
policy: {timeout: 3s}
routes:
  - name: fast
    match: {headers: {x-route: {exact: fast}}}
    policy: {timeout: 1s}
"""


@pytest.mark.parametrize("flavour", ["mesh", "aio"])
def test_each_call_takes_the_timeout_of_its_route(
    procs: MeshProcesses, tmp_path: Path, flavour: str
) -> None:
    _, control = procs.start_control()
    _, backend = procs.start_backend("b1", proc_name="backend")
    path = tmp_path / "routed.yaml"
    path.write_text(ROUTED % backend)
    meshctl(control, "apply", "-f", str(path))
    _, agent = procs.start_agent(control, "node-1")
    # The first call, made before the process knows the policy, takes the route's 1 s; then
    # a call without the header keeps the service's 3 s, and one with it the route's again.
    plan = "2:20:H,2:20,2:20:H"
    client = procs.python(
        flavour,
        "tests.e2e.timeout_client",
        *("--agent", agent, "--service", SERVICE, "--backend", backend),
        *("--channels", flavour, "--plan", plan, "--node-id", flavour),
        "--header=x-route=fast",
    )
    first, other, routed = finished(client)
    deadline_exceeded(first, 1.0, 1.45)
    assert other["ok"] and other["s"] >= 2.0, other
    deadline_exceeded(routed, 1.0, 1.45)


def _client_config(agent: str, node_id: str) -> dict[tuple[str, str], Any]:
    """What the agent sent the process ``node_id`` (its CSDS), decoded, by type and name."""
    with grpc.insecure_channel(agent) as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        request = csds_pb2.ClientStatusRequest(node=base_pb2.Node(id=node_id))
        response = stub.FetchClientStatus(request, timeout=5)
    kinds = {LISTENER: listener_pb2.Listener, ROUTE: route_pb2.RouteConfiguration}
    held: dict[tuple[str, str], Any] = {}
    for config in response.config:
        for entry in config.generic_xds_configs:
            if entry.type_url in kinds and entry.client_status == config_dump_shared_pb2.ACKED:
                message = kinds[entry.type_url]()
                assert entry.xds_config.Unpack(message)
                held[(entry.type_url, entry.name)] = message
    return held


def _manager(listener: listener_pb2.Listener) -> hcm_pb2.HttpConnectionManager:
    manager = hcm_pb2.HttpConnectionManager()
    assert listener.api_listener.api_listener.Unpack(manager)
    return manager


def _route_timeout(route: route_pb2.RouteConfiguration) -> float | None:
    action = route.virtual_hosts[0].routes[0].route
    if not action.HasField("max_stream_duration"):
        return None
    return action.max_stream_duration.max_stream_duration.ToNanoseconds() / 1e9


def test_raw_xds_channels_keep_the_route_timeout_as_xds_defines_it(
    procs: MeshProcesses, slow_mesh: tuple[str, str, str]
) -> None:
    _, backend, agent = slow_mesh
    # A process with a raw channel alone, and then (the backend's delay is shared) one with a
    # mesh_channel and a raw xds:/// channel side by side, under one bootstrap.
    raw = run_client(procs, "raw", agent, backend, "raw", "0:20", linger=60)
    finished(raw)
    mixed = run_client(procs, "mixed", agent, backend, "mesh,raw", "0:20,2.5:20", linger=60)
    calls = finished(mixed)
    by = {(r["channel"], r["delay"]): r for r in calls}
    assert by[("mesh", 0.0)]["ok"] and by[("raw", 0.0)]["ok"], calls
    assert by[("mesh", 2.5)]["ok"], calls
    # grpcio's own early route timeout, on the raw channel only.
    deadline_exceeded(by[("raw", 2.5)], 0.5, 2.45)

    alias = client_listener_name(SERVICE)

    def mixed_config() -> dict[tuple[str, str], Any] | None:
        held = _client_config(agent, "mixed")
        return held if (LISTENER, alias) in held else None

    held = wait_for(mixed_config, 10, "the mixed process's config at the agent")
    # The raw channel's Listener and routes: the timeout as max_stream_duration (gRFC A31).
    assert _manager(held[(LISTENER, SERVICE)]).rds.route_config_name == SERVICE
    assert _route_timeout(held[(ROUTE, SERVICE)]) == 3.0
    # The mesh channel's alias: the same routes inline, with no route timeout at all.
    inline = _manager(held[(LISTENER, alias)]).route_config
    assert inline.name == alias and _route_timeout(inline) is None
    assert (
        not inline.virtual_hosts[0]
        .routes[0]
        .route.max_stream_duration.HasField("grpc_timeout_header_max")
    )
    assert inline.virtual_hosts[0].routes[0].route.cluster == SERVICE

    alone = _client_config(agent, "raw")
    assert _route_timeout(alone[(ROUTE, SERVICE)]) == 3.0
    assert (LISTENER, alias) not in alone


def _until(link: AgentLink, service: str, timeout: float | None) -> None:
    wait_for(
        lambda: service in link.timeouts and link.timeouts[service] == timeout,
        10,
        f"the link to hear {service}'s timeout {timeout}",
    )


def test_the_agent_tells_each_watched_service_its_call_policy(
    slow_mesh: tuple[str, str, str], tmp_path: Path
) -> None:
    control, backend, agent = slow_mesh
    # mesh_interceptor() on a plain channel of one's own applies the same deadline.
    channel = grpc.intercept_channel(
        grpc.insecure_channel(backend), mesh_interceptor(SERVICE, agent=agent)
    )
    configure(backend, delay=3.6)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        echo_pb2_grpc.EchoServiceStub(channel).Echo(echo_pb2.EchoRequest(), timeout=20)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert 3.0 <= time.monotonic() - started <= 4.5  # the policy's 3 s, not the caller's 20 s
    channel.close()
    link_for(agent).close()  # the interceptor's link: its watch would hold the agent's stop

    link = AgentLink(agent)
    document = tmp_path / "changed.yaml"
    try:
        assert link.call_timeout(SERVICE) == 3.0  # waited for, the agent fetched it
        document.write_text(f"name: {SERVICE}\nendpoints: [{{address: '{backend}'}}]\n")
        meshctl(control, "apply", "-f", str(document))
        _until(link, SERVICE, None)  # no timeout any more
        document.write_text(
            f"name: {SERVICE}\nendpoints: [{{address: '{backend}'}}]\npolicy: {{timeout: 500ms}}\n"
        )
        meshctl(control, "apply", "-f", str(document))
        _until(link, SERVICE, 0.5)

        # A service the agent cannot know: a call waits a bounded time, the next ones not.
        started = time.monotonic()
        assert link.call_timeout("later") is None
        assert 0.9 <= time.monotonic() - started < 2.0
        started = time.monotonic()
        assert link.call_timeout("later") is None
        assert time.monotonic() - started < 0.05
        # Once it exists, the agent learns its policy and tells the link.
        (tmp_path / "later.yaml").write_text("name: later\npolicy: {timeout: 4s}\n")
        meshctl(control, "apply", "-f", str(tmp_path / "later.yaml"))
        _until(link, "later", 4.0)
        meshctl(control, "delete", "service", "later")
        _until(link, "later", None)
    finally:
        link.close()
        # Back as the module's other tests have it: the policy's 3 s, no delay.
        document.write_text(
            f"name: {SERVICE}\nendpoints: [{{address: '{backend}'}}]\npolicy:\n  {POLICY}\n"
        )
        meshctl(control, "apply", "-f", str(document))
        configure(backend)


WARNED_PROGRAM = """
import time

import grpc

from mesh_core.logs import configure
from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
from mesh_agent.client import mesh_interceptor

configure()
channel = grpc.intercept_channel(grpc.insecure_channel({backend!r}), mesh_interceptor("slow"))
stub = echo_pb2_grpc.EchoServiceStub(channel)
for _ in range(3):
    started = time.perf_counter()
    reply = stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5)
    print(reply.backend, round(time.perf_counter() - started, 3), flush=True)
"""


def test_without_an_agent_calls_go_at_once_and_the_warning_says_how_to_point_at_one(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    _, backend = procs.start_backend("b1", proc_name="backend")
    default = "unix:/run/mesh-agent/agent.sock"
    if Path(default.removeprefix("unix:")).exists():
        pytest.skip(f"an agent listens at {default} on this machine")
    procs.env.pop("MESH_AGENT", None)
    client = procs.start("lonely", sys.executable, "-c", WARNED_PROGRAM.format(backend=backend))
    wait_for(lambda: len(client.lines()) == 3 or not client.alive, 30, "three calls")
    assert len(client.lines()) == 3, client.errors()[-3000:]
    for line in client.lines():
        name, seconds = line.split()
        assert name == "b1" and float(seconds) < 0.5, line  # no wait for a call policy
    warnings = [
        json.loads(line)
        for line in client.errors().splitlines()
        if line.startswith("{") and "mesh agent unreachable" in line
    ]
    assert len(warnings) == 1, client.errors()
    event = warnings[0]["event"]
    assert default in event and "$MESH_AGENT" in event and "agent=" in event, event
