"""mesh-control's xDS behaviour seen from real ADS streams: NACKs recorded and not resent,
bursts coalesced, one snapshot shared by nodes with the same config."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mesh.v1 import admin_pb2, admin_pb2_grpc
from mesh_xds.testing import AdsClient
from mesh_xds.types import CLUSTER, ENDPOINT, LISTENER
from tests.conftest import run_cli
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import apply, echo, status_json

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


async def test_nack_is_shown_in_status_and_not_resent(procs: MeshProcesses) -> None:
    _, control = procs.start_control()
    await apply(control, echo("127.0.0.1:1001"))
    rejecting = AdsClient(control, "nacker", reject=lambda r: "listener rejected: test")
    async with rejecting:
        rejecting.subscribe(LISTENER)
        await rejecting.wait_for(lambda c: any(r.resources for r in c.of_type(LISTENER)))
        sent = len(rejecting.of_type(LISTENER))
        await asyncio.sleep(1.5)
        assert len(rejecting.of_type(LISTENER)) == sent, "a NACKed version was resent"

        nodes = status_json(control)["nodes"]
        node = next(n for n in nodes if n["node_id"] == "nacker")
        lds = next(t for t in node["types"] if t["type_url"] == LISTENER)
        assert lds["last_nack"]["message"] == "listener rejected: test"
        assert lds["last_nack"]["version"] == lds["version_sent"]
        assert lds.get("version_acked", "") == ""
        table = run_cli("control.meshctl", "--control", control, "status").stdout
        assert "NACKED" in table and "listener rejected: test" in table

        # A real change is sent (once), and rejected again without a loop.
        await apply(control, echo("127.0.0.1:1002", "other"))
        await rejecting.wait_for(lambda c: len(c.of_type(LISTENER)) == sent + 1)
        await asyncio.sleep(1.5)
        assert len(rejecting.of_type(LISTENER)) == sent + 1


async def test_burst_of_applies_is_coalesced(procs: MeshProcesses) -> None:
    _, control = procs.start_control("--debounce", "200ms")
    await apply(control, echo("127.0.0.1:2000"))
    async with AdsClient(control, "watcher") as client:
        client.subscribe(ENDPOINT, ["echo"])
        await client.wait_for(lambda c: len(c.of_type(ENDPOINT)) == 1)
        await asyncio.sleep(0.5)
        async with grpc.aio.insecure_channel(control) as channel:
            stub = admin_pb2_grpc.MeshAdminServiceStub(channel)
            for port in range(2001, 2021):
                await stub.ApplyServices(
                    admin_pb2.ApplyServicesRequest(services=[echo(f"127.0.0.1:{port}")])
                )
        await asyncio.sleep(1.5)
        pushes = client.of_type(ENDPOINT)[1:]
        assert 1 <= len(pushes) <= 3, f"{len(pushes)} pushes for a burst of 20 applies"
        from envoy.config.endpoint.v3 import endpoint_pb2

        last = endpoint_pb2.ClusterLoadAssignment()
        pushes[-1].resources[0].Unpack(last)
        port = last.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value
        assert port == 2020, "the last push must carry the last applied config"


async def test_nodes_with_the_same_config_share_one_snapshot(procs: MeshProcesses) -> None:
    _, control = procs.start_control()
    await apply(control, echo("127.0.0.1:3000"))
    async with AdsClient(control, "node-a") as a, AdsClient(control, "node-b") as b:
        a.subscribe(CLUSTER)
        b.subscribe(CLUSTER)
        await a.wait_for(lambda c: len(c.of_type(CLUSTER)) == 1)
        await b.wait_for(lambda c: len(c.of_type(CLUSTER)) == 1)
        nodes = {n["node_id"]: n for n in status_json(control)["nodes"]}
        assert nodes["node-a"]["snapshot_id"] == nodes["node-b"]["snapshot_id"] != ""
        assert a.of_type(CLUSTER)[0].version_info == b.of_type(CLUSTER)[0].version_info


async def test_resource_requested_before_it_exists_arrives(procs: MeshProcesses) -> None:
    _, control = procs.start_control()
    async with AdsClient(control, "early") as client:
        client.subscribe(ENDPOINT, ["later"])
        await asyncio.sleep(0.5)
        assert client.of_type(ENDPOINT) == []
        await apply(control, echo("127.0.0.1:4000", "later"))
        await client.wait_for(lambda c: len(c.of_type(ENDPOINT)) == 1)
