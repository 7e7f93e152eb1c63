"""mesh-agent under faults: failover between control servers, a broken state file, an
upstream that serves something unusable, and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from control.resources import build_listener
from mesh.v1 import config_pb2
from mesh_agent.daemon.journal import JOURNAL_FILE, parse
from mesh_xds.testing import AdsClient
from mesh_xds.types import LISTENER
from tests.conftest import eventually, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import agent_status, meshctl, records

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def test_agent_fails_over_between_control_servers(procs: MeshProcesses, tmp_path: Path) -> None:
    store = f"file:{tmp_path / 'store'}"
    first_proc, first = procs.start_control(store=store, name="control-1")
    _, second = procs.start_control(store=store, name="control-2")
    (_, one), (_, two) = procs.start_backend("backend-1"), procs.start_backend("backend-2")
    (tmp_path / "s.yaml").write_text(f"name: echo\nendpoints: [{{address: '{one}'}}]\n")
    meshctl(first, "apply", "-f", str(tmp_path / "s.yaml"))
    _, agent = procs.start_agent(f"{first},{second}", "node-1")
    client = procs.start_client(agent, "echo")
    wait_for(lambda: any(c["ok"] for c in records(client)), 30, "a first call")
    assert agent_status(agent).upstream == first

    first_proc.kill()
    wait_for(lambda: agent_status(agent).upstream == second, 20, "failover to control-2")
    (tmp_path / "s.yaml").write_text(f"name: echo\nendpoints: [{{address: '{two}'}}]\n")
    meshctl(second, "apply", "-f", str(tmp_path / "s.yaml"))
    seen = len(records(client))
    wait_for(
        lambda: any(c.get("backend") == "backend-2" for c in records(client)[seen:]),
        20,
        "a change through control-2 to reach the client",
    )
    assert all(c["ok"] for c in records(client)[seen:])


def test_corrupt_state_file_is_set_aside(procs: MeshProcesses, tmp_path: Path) -> None:
    _, control = procs.start_control()
    _, backend = procs.start_backend("backend-1")
    (tmp_path / "s.yaml").write_text(f"name: echo\nendpoints: [{{address: '{backend}'}}]\n")
    meshctl(control, "apply", "-f", str(tmp_path / "s.yaml"))
    state = procs.agent_state_dir("node-1")
    state.mkdir()
    (state / "config.json").write_text('{"format": 1, "node_id": "node-1", "types": {"x": ')
    proc, agent = procs.start_agent(control, "node-1")
    assert proc.alive
    assert list(state.glob("config.json.rejected-*")), "the corrupt file was not set aside"
    assert "state file rejected" in proc.errors()
    client = procs.start_client(agent, "echo")
    wait_for(lambda: any(c["ok"] for c in records(client)), 30, "calls with fresh config")
    saved = parse((state / JOURNAL_FILE).read_bytes(), "node-1")
    assert LISTENER in saved.types and not (state / "config.json").exists()


def test_state_of_another_node_is_not_used(procs: MeshProcesses) -> None:
    state = procs.agent_state_dir("node-2")
    state.mkdir()
    (state / "config.json").write_text('{"format": 1, "node_id": "node-1", "types": {}}')
    proc, agent = procs.start_agent("127.0.0.1:1", "node-2")
    assert list(state.glob("config.json.rejected-*"))
    assert "not of this node" in proc.errors()
    assert agent_status(agent).node_id == "node-2"


class UpstreamServingGarbage(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """An ADS server that serves a good listener, then one the agent cannot use."""

    def __init__(self) -> None:
        self.requests: list[discovery_pb2.DiscoveryRequest] = []
        self.send_bad = asyncio.Event()

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: object
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        good = any_pb2.Any()
        good.Pack(build_listener(config_pb2.Service(name="echo")))
        bad_listener = listener_pb2.Listener(name="echo")
        bad_listener.api_listener.api_listener.Pack(cluster_pb2.Cluster(name="not-a-manager"))
        bad = any_pb2.Any()
        bad.Pack(bad_listener)
        sent_good = False
        async for request in request_iterator:
            self.requests.append(request)
            if request.type_url != LISTENER or "echo" not in request.resource_names:
                continue
            if not sent_good:
                sent_good = True
                yield discovery_pb2.DiscoveryResponse(
                    version_info="v1", type_url=LISTENER, nonce="1", resources=[good]
                )
                await self.send_bad.wait()
                yield discovery_pb2.DiscoveryResponse(
                    version_info="v2", type_url=LISTENER, nonce="2", resources=[bad]
                )


async def test_unusable_upstream_config_is_nacked_and_the_last_good_kept(
    procs: MeshProcesses,
) -> None:
    upstream = UpstreamServingGarbage()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(upstream, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        _, agent = await asyncio.to_thread(procs.start_agent, f"127.0.0.1:{port}", "node-1")
        async with AdsClient(agent, "local-process") as local:
            local.subscribe(LISTENER, ["echo"])
            await local.wait_for(lambda c: len(c.of_type(LISTENER)) == 1)
            upstream.send_bad.set()
            nacks = await eventually(
                lambda: [r for r in upstream.requests if r.HasField("error_detail")],
                5,
                "the agent to NACK",
                every=0.05,
            )
            assert nacks[0].response_nonce == "2"
            assert nacks[0].version_info == "v1", "a NACK carries the last accepted version"
            assert "not an HttpConnectionManager" in nacks[0].error_detail.message
            status = await asyncio.to_thread(agent_status, agent)
            lds = next(t for t in status.types if t.type_url == LISTENER)
            assert lds.version_acked == "v1" and "HttpConnectionManager" in lds.last_nack
            await asyncio.sleep(0.3)
            assert len(local.of_type(LISTENER)) == 1, "the local client got the bad config"
    finally:
        await server.stop(0)


def test_sigterm_stops_the_agent_cleanly(procs: MeshProcesses) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    proc, agent = procs.start_agent("127.0.0.1:1", "node-1")
    statuses: list[int] = []
    with grpc.insecure_channel(agent) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=15
        )
        statuses.append(next(watch).status)
        proc.popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(grpc.RpcError):
            statuses.extend(reply.status for reply in watch)
    assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses[1:]
    assert proc.popen.wait(15) == 0
    log = proc.errors()
    assert '"components stopped"' in log and '"stopped"' in log
