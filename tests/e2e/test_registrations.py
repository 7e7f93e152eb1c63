"""Endpoint registration and local-client reports (``mesh.v1.NodeService``) against a real
mesh-control process: registered endpoints are served over xDS while their node has an ADS
stream, and dropped once it has been gone longer than ``--registration-grace``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import timestamp_pb2

from mesh.v1 import admin_pb2, admin_pb2_grpc, config_pb2, node_pb2, node_pb2_grpc
from mesh_xds.testing import AdsClient, names_in
from mesh_xds.types import CLUSTER, ENDPOINT, LISTENER
from tests.conftest import wait_for
from tests.e2e import helpers
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import register, status_json
from tests.e2e.lapse import logged_at, registrations_gone, within_bounds

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

GRACE = 1.0


def start(procs: MeshProcesses) -> str:
    _, control = procs.start_control("--registration-grace", f"{GRACE:g}s")
    return control


async def set_registrations(
    control: str, node_id: str, *registrations: node_pb2.Registration
) -> int:
    async with grpc.aio.insecure_channel(control) as channel:
        stub = node_pb2_grpc.NodeServiceStub(channel)
        reply = await stub.SetRegistrations(
            node_pb2.SetRegistrationsRequest(node_id=node_id, registrations=registrations),
            timeout=10,
        )
        return int(reply.accepted)


async def meshctl(control: str, *args: str) -> str:
    return await asyncio.to_thread(helpers.meshctl, control, *args)


async def status(control: str) -> dict[str, Any]:
    return await asyncio.to_thread(status_json, control)


def endpoints(response: discovery_pb2.DiscoveryResponse, name: str) -> list[str] | None:
    """The addresses in ``response``'s assignment for cluster ``name``; None if absent."""
    for packed in response.resources:
        assignment = endpoint_pb2.ClusterLoadAssignment()
        packed.Unpack(assignment)
        if assignment.cluster_name == name:
            return sorted(
                f"{lb.endpoint.address.socket_address.address}:"
                f"{lb.endpoint.address.socket_address.port_value}"
                for locality in assignment.endpoints
                for lb in locality.lb_endpoints
            )
    return None


def last_endpoints(client: AdsClient, name: str) -> list[str] | None:
    response = client.latest(ENDPOINT)
    return endpoints(response, name) if response is not None else None


def last_clusters(client: AdsClient) -> set[str]:
    response = client.latest(CLUSTER)
    return set(names_in(response)) if response is not None else set()


async def connect(client: AdsClient) -> None:
    """Opens ``client``'s stream, names its node and waits until the server answered."""
    client.subscribe(LISTENER)
    await client.wait_for(lambda c: bool(c.of_type(LISTENER)))


async def test_registered_endpoint_is_served_and_dropped_after_grace(procs: MeshProcesses) -> None:
    control = start(procs)
    async with AdsClient(control, "watcher") as watcher:
        watcher.subscribe(CLUSTER)
        watcher.subscribe(ENDPOINT, ["reg"])
        await watcher.wait_for(lambda c: bool(c.of_type(CLUSTER)))
        assert "reg" not in last_clusters(watcher)

        node = AdsClient(control, "node-a")
        async with node:
            await connect(node)
            accepted = await set_registrations(
                control,
                "node-a",
                node_pb2.Registration(service="reg", address="127.0.0.1:7001", zone="z1"),
            )
            assert accepted == 1
            await watcher.wait_for(lambda c: last_endpoints(c, "reg") == ["127.0.0.1:7001"])
            await watcher.wait_for(lambda c: "reg" in last_clusters(c))

            nodes = {n["node_id"]: n for n in (await status(control))["nodes"]}
            assert nodes["node-a"]["registrations"] == [
                {
                    "service": "reg",
                    "address": "127.0.0.1:7001",
                    "zone": "z1",
                    "weight": 0,
                    "metadata": {},
                    "draining": False,
                    "labels": {},
                }
            ]
            table = await meshctl(control, "status")
            assert "SERVICE" in table and "DRAINING" in table
            row = next(line for line in table.splitlines() if "127.0.0.1:7001" in line)
            assert row.split() == ["node-a", "reg", "127.0.0.1:7001", "no"]

        closed = time.monotonic()
        # The service exists only through the registration: its cluster disappears.
        await watcher.wait_for(lambda c: "reg" not in last_clusters(c), timeout=10)
        elapsed = time.monotonic() - closed
        assert GRACE * 0.8 <= elapsed <= GRACE + 4, f"dropped after {elapsed:.2f}s"
        nodes = {n["node_id"]: n for n in (await status(control))["nodes"]}
        assert "node-a" not in nodes


@pytest.mark.parametrize("store", ["memory", "file"])
def test_a_stopped_agents_registrations_last_the_grace(
    procs: MeshProcesses, tmp_path: Path, store: str
) -> None:
    """A real agent stops and its control server stays: measured from the server's own log
    line of the stream's end to the registration's disappearance from its status."""
    grace = 2.0
    control_proc, control = procs.start_control(
        "--registration-grace",
        f"{grace:g}s",
        store="memory:" if store == "memory" else f"file:{tmp_path / 'store'}",
    )
    agent_proc, agent = procs.start_agent(control, "node-1")
    register(agent, "reg", "127.0.0.1:7001")

    def registered() -> bool:
        nodes = {n["node_id"]: n for n in status_json(control)["nodes"]}
        return bool(nodes.get("node-1", {}).get("registrations"))

    wait_for(registered, 20, "node-1's registration")
    stopping = time.time()
    agent_proc.stop()
    departed = logged_at(control_proc, "node disconnected", "node-1", after=stopping)
    gone = registrations_gone(control, "node-1")
    lapse = gone - departed
    assert within_bounds(lapse, grace), f"lapsed {lapse:.2f}s after the node (grace {grace}s)"


async def test_dropping_the_last_registration_empties_an_applied_service(
    procs: MeshProcesses,
) -> None:
    control = start(procs)
    async with grpc.aio.insecure_channel(control) as channel:
        await admin_pb2_grpc.MeshAdminServiceStub(channel).ApplyServices(
            admin_pb2.ApplyServicesRequest(services=[config_pb2.Service(name="reg")])
        )
    async with AdsClient(control, "watcher") as watcher:
        watcher.subscribe(ENDPOINT, ["reg"])
        await watcher.wait_for(lambda c: last_endpoints(c, "reg") == [])
        async with AdsClient(control, "node-a") as node:
            await connect(node)
            await set_registrations(
                control, "node-a", node_pb2.Registration(service="reg", address="127.0.0.1:7001")
            )
            await watcher.wait_for(lambda c: last_endpoints(c, "reg") == ["127.0.0.1:7001"])
        closed = time.monotonic()
        await watcher.wait_for(lambda c: last_endpoints(c, "reg") == [], timeout=10)
        elapsed = time.monotonic() - closed
        assert GRACE * 0.8 <= elapsed <= GRACE + 4, f"dropped after {elapsed:.2f}s"


async def test_reconnect_within_grace_keeps_the_registration(procs: MeshProcesses) -> None:
    control = start(procs)
    async with AdsClient(control, "watcher") as watcher:
        watcher.subscribe(ENDPOINT, ["reg"])
        async with AdsClient(control, "node-a") as node:
            await connect(node)
            await set_registrations(
                control, "node-a", node_pb2.Registration(service="reg", address="127.0.0.1:7001")
            )
            await watcher.wait_for(lambda c: last_endpoints(c, "reg") == ["127.0.0.1:7001"])
        pushes = len(watcher.of_type(ENDPOINT))
        await asyncio.sleep(GRACE * 0.3)
        async with AdsClient(control, "node-a") as again:
            await connect(again)
            await asyncio.sleep(GRACE * 2)
            assert len(watcher.of_type(ENDPOINT)) == pushes, "the endpoint must not move"
            assert last_endpoints(watcher, "reg") == ["127.0.0.1:7001"]
            nodes = {n["node_id"]: n for n in (await status(control))["nodes"]}
            assert [r["address"] for r in nodes["node-a"]["registrations"]] == ["127.0.0.1:7001"]


async def test_invalid_registrations_are_refused_naming_the_field(procs: MeshProcesses) -> None:
    control = start(procs)
    await set_registrations(
        control, "node-a", node_pb2.Registration(service="reg", address="127.0.0.1:7001")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await set_registrations(
            control,
            "node-a",
            node_pb2.Registration(service="reg", address="127.0.0.1:7002"),
            node_pb2.Registration(service="reg", address="backend.local:7003"),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "registrations[1].address: host must be an IP address" in (caught.value.details() or "")
    nodes = {n["node_id"]: n for n in (await status(control))["nodes"]}
    assert [r["address"] for r in nodes["node-a"]["registrations"]] == ["127.0.0.1:7001"]


async def test_reported_client_nack_shows_in_status(procs: MeshProcesses) -> None:
    control = start(procs)
    async with AdsClient(control, "node-a") as node:
        await connect(node)
        when = timestamp_pb2.Timestamp(seconds=1_700_000_000)
        async with grpc.aio.insecure_channel(control) as channel:
            await node_pb2_grpc.NodeServiceStub(channel).ReportClientStatus(
                node_pb2.ReportClientStatusRequest(
                    node_id="node-a",
                    clients=[
                        node_pb2.LocalClientStatus(
                            client_id="app-1",
                            type_url=CLUSTER,
                            version_acked="v1",
                            nack_version="v2",
                            nack_message="cluster reg: bad lb policy",
                            nack_time=when,
                        ),
                        node_pb2.LocalClientStatus(
                            client_id="app-2", type_url=CLUSTER, version_acked="v2"
                        ),
                    ],
                ),
                timeout=10,
            )
        nodes = {n["node_id"]: n for n in (await status(control))["nodes"]}
        clients = nodes["node-a"]["local_clients"]
        assert [c["client_id"] for c in clients] == ["app-1", "app-2"]
        assert clients[0]["nack_message"] == "cluster reg: bad lb policy"
        assert clients[0]["nack_version"] == "v2"

        table = await meshctl(control, "status")
        assert "CLIENT" in table and "NACK" in table
        row = next(line for line in table.splitlines() if "app-1" in line)
        assert row.split()[:3] == ["node-a", "app-1", "CDS"]
        assert "v2: cluster reg: bad lb policy" in row
        assert "app-2" not in table, "only clients that NACKed are listed"
