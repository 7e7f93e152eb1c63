"""Hostile ADS streams against real processes: a control server (memory store, one service
applied with meshctl) and an agent, each sent arbitrary DiscoveryRequest sequences on real
gRPC streams, one stream per example, with a client deadline.

Properties: every stream ends OK, or with a clear status (INVALID_ARGUMENT,
RESOURCE_EXHAUSTED, PERMISSION_DENIED; never INTERNAL, UNKNOWN or a deadline, which would be
a hang), or is still serving when the client leaves; no response repeats a name or is of a type
the stream never asked for. After each example both processes are alive, a well-behaved
client of each gets exactly the config it got before, the stored services are unchanged, the
agent's own config (GetAgentStatus, CSDS) and what it subscribes to upstream are unchanged,
and the control server knows the same nodes as before. Hundreds of garbage streams in a row
leave no node, session or per-node stream count behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.rpc import status_pb2
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mesh.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc
from mesh_core.names import client_listener_name
from mesh_xds.testing import AdsClient
from mesh_xds.testing import resource_name as name_of
from mesh_xds.types import ALL_TYPES, CLUSTER, LISTENER
from tests.conftest import Proc, run_cli, wait_for
from tests.e2e.conftest import MeshProcesses

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SERVICE = "echo"
AGENT_NODE = "agent-1"
SERVICE_YAML = f"""\
name: {SERVICE}
endpoints:
  - address: 127.0.0.1:50051
    zone: z1
  - address: "[::1]:50052"
    weight: 3
policy:
  timeout: 2s
  retry: {{attempts: 2, retry_on: [UNAVAILABLE]}}
  circuit_breaker: {{max_requests: 100, failure_rate: 0.5, window: 10s}}
"""
STREAM_DEADLINE = 5.0
OK_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
}
Config = dict[str, dict[str, bytes]]


# ---------------------------------------------------------------------------- well-behaved views


def names(type_url: str) -> list[str]:
    """What a well-behaved client asks for: the service, and (a mesh_channel process) the
    client library's alias Listener of it."""
    return [SERVICE, client_listener_name(SERVICE)] if type_url == LISTENER else [SERVICE]


def fetch_config(target: str, node_id: str, timeout: float = 5.0) -> Config:
    """What a well-behaved client subscribed to every type of the service gets (ACKing
    each response), once every type has arrived; an empty dict per missing type."""

    async def fetch() -> Config:
        async with AdsClient(target, node_id) as client:
            for type_url in sorted(ALL_TYPES):
                client.subscribe(type_url, names(type_url))
            with contextlib.suppress(TimeoutError):
                await client.wait_for(
                    lambda c: {r.type_url for r in c.responses} >= ALL_TYPES, timeout
                )
            got: Config = {t: {} for t in ALL_TYPES}
            for response in client.responses:
                got[response.type_url] = {name_of(r): r.value for r in response.resources}
            return got

    return asyncio.run(fetch())


@dataclass
class State:
    """Everything a hostile stream must leave as it was."""

    services: admin_pb2.GetServicesResponse
    nodes: list[str]
    agent_upstream: list[tuple[str, bool, tuple[str, ...], str]]
    control_config: Config
    agent_config: Config
    agent_types: list[tuple[str, str, int]]
    agent_own_csds: list[tuple[Any, ...]]


@dataclass
class Mesh:
    procs: MeshProcesses
    control_proc: Proc
    agent_proc: Proc
    control: str
    agent: str
    control_channel: grpc.Channel
    agent_channel: grpc.Channel
    baseline: State | None = None

    def control_view(self) -> tuple[list[str], list[tuple[str, bool, tuple[str, ...], str]]]:
        """The nodes the control server knows, and what the agent's stream subscribes to (type,
        wildcard, names, version ACKed) as the control server records it."""
        stub = admin_pb2_grpc.MeshAdminServiceStub(self.control_channel)
        status = stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
        subscribed = [
            (t.type_url, t.wildcard, tuple(t.resource_names), t.version_acked)
            for node in status.nodes
            if node.node_id == AGENT_NODE
            for t in node.types
        ]
        return sorted(node.node_id for node in status.nodes), sorted(subscribed)

    def node_ids(self) -> list[str]:
        return self.control_view()[0]

    def state(self) -> State:
        admin = admin_pb2_grpc.MeshAdminServiceStub(self.control_channel)
        agent = agent_pb2_grpc.AgentServiceStub(self.agent_channel)
        csds = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(self.agent_channel)
        status = agent.GetAgentStatus(agent_pb2.GetAgentStatusRequest(), timeout=5)
        assert status.connected, "the agent lost its control server"
        dump = csds.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=5)
        own = next(c for c in dump.config if c.node.id == AGENT_NODE)
        return State(
            services=admin.GetServices(admin_pb2.GetServicesRequest(), timeout=5),
            nodes=self.node_ids(),
            agent_upstream=self.control_view()[1],
            control_config=fetch_config(self.control, "well-behaved"),
            agent_config=fetch_config(self.agent, "well-behaved-local"),
            agent_types=[(t.type_url, t.version_acked, t.resources) for t in status.types],
            agent_own_csds=[
                (
                    c.type_url,
                    c.name,
                    c.version_info,
                    c.client_status,
                    c.xds_config.SerializeToString(),
                    c.error_state.details,
                )
                for c in own.generic_xds_configs
            ],
        )

    def check_unchanged(self) -> None:
        assert self.baseline is not None
        assert self.control_proc.alive, f"control died:\n{self.control_proc.errors()[-3000:]}"
        assert self.agent_proc.alive, f"agent died:\n{self.agent_proc.errors()[-3000:]}"
        # A stream the client cancelled is cleaned up on the server a moment later.
        before = (self.baseline.nodes, self.baseline.agent_upstream)
        wait_for(lambda: self.control_view() == before, 5, "the same nodes and subscriptions")
        assert self.state() == self.baseline


def _complete(config: Config) -> bool:
    return all(SERVICE in config[t] for t in ALL_TYPES)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    procs = MeshProcesses(tmp_path_factory.mktemp("hostile-ads"))
    try:
        control_proc, control = procs.start_control()
        path = procs.workdir / "echo.yaml"
        path.write_text(SERVICE_YAML)
        applied = run_cli("control.meshctl", "--control", control, "apply", "-f", str(path))
        assert applied.returncode == 0, applied.stderr
        agent_proc, agent = procs.start_agent(control, AGENT_NODE)
        with (
            grpc.insecure_channel(control) as control_channel,
            grpc.insecure_channel(agent) as agent_channel,
        ):
            mesh = Mesh(
                procs, control_proc, agent_proc, control, agent, control_channel, agent_channel
            )
            # The agent fetches what its local clients ask for: ask until it holds all of it.
            wait_for(
                lambda: _complete(fetch_config(agent, "warm-up", timeout=2)),
                20,
                "the agent to serve the whole service",
            )
            mesh.baseline = mesh.state()
            assert _complete(mesh.baseline.control_config)
            assert mesh.baseline.agent_config == mesh.baseline.control_config
            assert mesh.baseline.nodes == [AGENT_NODE]
            yield mesh
    finally:
        procs.stop_all()


# ---------------------------------------------------------------------------- hostile streams


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(
        lambda chosen: chosen
    )


type_urls = weighted(
    (8, st.sampled_from(sorted(ALL_TYPES))),
    (1, st.sampled_from(["", "*", LISTENER + " ", "type.googleapis.com/envoy.api.v2.Listener"])),
    (1, st.text(max_size=30)),
)
resource_name = weighted(
    (8, st.sampled_from([SERVICE, "*", "missing", ""])),
    (1, st.sampled_from(["x" * 2000, "\x00", "ECHO"])),
    (1, st.text(max_size=20)),
)
resource_names = weighted(
    (9, st.lists(resource_name, max_size=5)),
    (1, st.integers(1, 30_000).map(lambda n: [f"n{i}" for i in range(n)])),
)
node_ids = st.sampled_from(["hostile-1", "hostile-2", AGENT_NODE, ""]) | st.text(max_size=30)


@st.composite
def requests_(draw: st.DrawFn, first: bool) -> discovery_pb2.DiscoveryRequest:
    request = discovery_pb2.DiscoveryRequest(
        type_url=draw(type_urls),
        resource_names=draw(resource_names),
        version_info=draw(st.sampled_from(["", "", "0", "garbage"]) | st.text(max_size=10)),
        # Nonces a server hands out are small counters: guesses hit real ones.
        response_nonce=draw(st.sampled_from(["", "", "1", "2", "3", "x"])),
    )
    if first or draw(st.sampled_from([False] * 4 + [True])):
        request.node.CopyFrom(base_pb2.Node(id=draw(node_ids), cluster=draw(st.text(max_size=5))))
    if draw(st.sampled_from([False] * 4 + [True])):
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=draw(st.text())))
    return request


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[discovery_pb2.DiscoveryRequest], bool]:
    """A sequence of requests, and whether the client keeps the stream open after them."""
    first = draw(requests_(first=True))
    if draw(st.sampled_from([True] * 4 + [False])):
        first.node.id = draw(st.sampled_from(["hostile-1", "hostile-2"]))
    rest = draw(st.lists(requests_(first=False), max_size=8))
    return [first, *rest], draw(st.booleans())


def hostile_stream(
    channel: grpc.Channel, requests: list[discovery_pb2.DiscoveryRequest], hold: bool
) -> grpc.StatusCode:
    """Sends ``requests`` on one stream; then half-closes, or (``hold``) keeps the stream open
    for a moment and cancels it. Returns how the stream ended (CANCELLED: still serving when
    the client left). Checks each response on the way."""
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    leave = threading.Event()
    asked = {r.type_url for r in requests}

    def send() -> Iterator[discovery_pb2.DiscoveryRequest]:
        yield from requests
        if hold:
            leave.wait(STREAM_DEADLINE)

    call = stub.StreamAggregatedResources(send(), timeout=STREAM_DEADLINE)
    timer = threading.Timer(0.3, call.cancel) if hold else None
    if timer is not None:
        timer.start()
    try:
        for response in call:
            assert response.type_url in asked, f"a response of type {response.type_url}"
            assert response.type_url in ALL_TYPES
            names = [name_of(r) for r in response.resources]
            assert len(names) == len(set(names)), f"duplicate names: {names}"
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        if code == grpc.StatusCode.CANCELLED and hold:
            return code
        assert code in OK_CODES, f"stream ended {code.name}: {error.details()}"
        return code
    finally:
        leave.set()
        if timer is not None:
            timer.cancel()


@settings(
    database=None,
    deadline=timedelta(seconds=15),
    max_examples=40,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(streams(), streams())
def test_hostile_streams_leave_control_and_agent_serving_the_same_config(
    mesh: Mesh,
    to_control: tuple[list[discovery_pb2.DiscoveryRequest], bool],
    to_agent: tuple[list[discovery_pb2.DiscoveryRequest], bool],
) -> None:
    hostile_stream(mesh.control_channel, *to_control)
    hostile_stream(mesh.agent_channel, *to_agent)
    mesh.check_unchanged()


def test_oversized_requests_are_refused_cleanly(mesh: Mesh) -> None:
    """Requests larger than a server takes: one message over the size limit, one name over
    the name limit, more names than one request may carry."""
    oversized = [
        discovery_pb2.DiscoveryRequest(type_url=LISTENER, resource_names=["x" * (5 << 20)]),
        discovery_pb2.DiscoveryRequest(type_url=LISTENER, resource_names=["x" * (64 << 10)]),
        discovery_pb2.DiscoveryRequest(
            type_url=CLUSTER, resource_names=[f"n{i}" for i in range(200_000)]
        ),
    ]
    for request in oversized:
        request.node.id = "hostile-big"
        for channel in (mesh.control_channel, mesh.agent_channel):
            code = hostile_stream(channel, [request], hold=False)
            assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
    mesh.check_unchanged()


def test_stored_services_are_exactly_the_applied_one(mesh: Mesh) -> None:
    """``meshctl get services -o json``, after the hostile streams of the test above."""
    result = run_cli("control.meshctl", "--control", mesh.control, "get", "services", "-o", "json")
    assert result.returncode == 0, result.stderr
    stored = json.loads(result.stdout)["services"]
    assert [s["service"]["name"] for s in stored] == [SERVICE]
    assert stored[0]["revision"] == 1
    endpoints = stored[0]["service"]["endpoints"]
    assert [e["address"] for e in endpoints] == ["127.0.0.1:50051", "[::1]:50052"]


def _agent_connected(mesh: Mesh) -> bool:
    stub = agent_pb2_grpc.AgentServiceStub(mesh.agent_channel)
    return bool(stub.GetAgentStatus(agent_pb2.GetAgentStatusRequest(), timeout=5).connected)


def test_local_clients_cannot_cut_the_agent_off(mesh: Mesh) -> None:
    """Two local clients, each within the agent's limits, together ask for more names than
    the control server takes in one request: the agent stays connected upstream while they
    stay, and once they leave it asks for no more than before."""
    leave = threading.Event()
    answered = threading.Barrier(3, timeout=10)

    def hold(prefix: str) -> None:
        def send() -> Iterator[discovery_pb2.DiscoveryRequest]:
            request = discovery_pb2.DiscoveryRequest(
                type_url=LISTENER,
                resource_names=[SERVICE, *(f"{prefix}-{i:05}" for i in range(9_000))],
            )
            request.node.id = f"local-{prefix}"
            yield request
            leave.wait(STREAM_DEADLINE)

        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(mesh.agent_channel)
        call = stub.StreamAggregatedResources(send(), timeout=STREAM_DEADLINE + 5)
        responses = iter(call)
        assert SERVICE in {name_of(r) for r in next(responses).resources}
        answered.wait()
        leave.wait(STREAM_DEADLINE)
        call.cancel()

    with ThreadPoolExecutor(2) as pool:
        clients = [pool.submit(hold, prefix) for prefix in ("a", "b")]
        answered.wait()
        try:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                assert _agent_connected(mesh), "local clients cut the agent off upstream"
                time.sleep(0.1)
        finally:
            leave.set()
            for client in clients:
                client.result()
    wait_for(lambda: _agent_connected(mesh), 10, "the agent to be connected")
    mesh.check_unchanged()


def _garbage(index: int) -> tuple[list[discovery_pb2.DiscoveryRequest], str]:
    """Stream ``index`` of the storm: its requests and how it ends."""
    node = base_pb2.Node(id=f"storm-{index % 7}" if index % 5 else "")
    requests = [
        discovery_pb2.DiscoveryRequest(
            node=node,
            type_url=sorted(ALL_TYPES)[index % 5] if index % 3 else f"garbage/{index}",
            resource_names=[SERVICE, f"missing-{index}"] if index % 2 else ["*"],
            response_nonce=str(index % 4),
            version_info="v",
        )
        for _ in range(index % 4 + 1)
    ]
    return requests, ["close", "cancel", "hold", "channel"][index % 4]


def _storm_stream(target: str, channel: grpc.Channel, index: int) -> None:
    requests, ending = _garbage(index)
    if ending == "close":
        code = hostile_stream(channel, requests, hold=False)
        assert code in OK_CODES
    elif ending == "hold":
        code = hostile_stream(channel, requests, hold=True)
        assert code in OK_CODES | {grpc.StatusCode.CANCELLED}
    elif ending == "cancel":
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        stub.StreamAggregatedResources(iter(requests), timeout=STREAM_DEADLINE).cancel()
    else:  # the whole connection goes away mid-stream
        leave = threading.Event()

        def send() -> Iterator[discovery_pb2.DiscoveryRequest]:
            yield from requests
            leave.wait(STREAM_DEADLINE)

        own = grpc.insecure_channel(target)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(own)
        stub.StreamAggregatedResources(send(), timeout=STREAM_DEADLINE)
        time.sleep(0.05)
        own.close()
        leave.set()


def test_a_storm_of_garbage_streams_leaves_nothing_behind(mesh: Mesh) -> None:
    assert mesh.baseline is not None
    for target, channel in ((mesh.control, mesh.control_channel), (mesh.agent, mesh.agent_channel)):
        with ThreadPoolExecutor(16) as pool:
            for future in [pool.submit(_storm_stream, target, channel, i) for i in range(300)]:
                future.result()
    wait_for(lambda: mesh.node_ids() == mesh.baseline.nodes, 10, "the storm's nodes to go")
    csds = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(mesh.agent_channel)
    wait_for(
        lambda: (
            [c.node.id for c in csds.FetchClientStatus(csds_pb2.ClientStatusRequest()).config]
            == [AGENT_NODE]
        ),
        10,
        "the agent to forget the storm's local sessions",
    )
    # The per-node stream counts went back too: each storm node may stream again.
    for index in range(1, 7):
        assert _complete(fetch_config(mesh.control, f"storm-{index}"))
    status = run_cli("control.meshctl", "--control", mesh.control, "status", "-o", "json")
    assert status.returncode == 0, status.stderr
    assert [n["node_id"] for n in json.loads(status.stdout)["nodes"]] == mesh.baseline.nodes
    mesh.check_unchanged()
