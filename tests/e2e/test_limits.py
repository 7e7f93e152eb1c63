"""mesh-control's limits on a real server started with small ones: each breach ends only the
call or stream that broke it, with RESOURCE_EXHAUSTED or INVALID_ARGUMENT, is logged, and
everyone else keeps being served."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from mesh.v1 import admin_pb2, admin_pb2_grpc, config_pb2, node_pb2, node_pb2_grpc
from mesh_xds.testing import AdsClient, names_in
from mesh_xds.types import CLUSTER
from tests.conftest import Proc, eventually, run_cli
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import log_lines, meshctl, service_yaml

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

LIMITS = (
    "--max-streams-per-node",
    "2",
    "--admin-writes-per-second",
    "2",
    "--admin-write-burst",
    "2",
    "--max-names-per-request",
    "5",
    "--max-message-bytes",
    "65536",
    "--max-name-length",
    "200",
    "--max-services-per-apply",
    "3",
    "--max-registrations-per-node",
    "3",
    "--max-clients-per-report",
    "2",
)


def start_control(procs: MeshProcesses, *extra: str) -> tuple[Proc, str]:
    return procs.start_control(*extra)


def breaches(proc: Proc, limit: str) -> list[dict[str, Any]]:
    return [
        e for e in log_lines(proc) if e.get("event") == "limit exceeded" and e.get("limit") == limit
    ]


def clusters(client: AdsClient) -> set[str]:
    """The clusters in the latest CDS response ``client`` received (CDS is full state)."""
    latest = client.latest(CLUSTER)
    return set(names_in(latest)) if latest is not None else set()


def has_cluster(name: str) -> Callable[[AdsClient], bool]:
    return lambda client: name in clusters(client)


async def connected(client: AdsClient, names: list[str] | None = None) -> AdsClient:
    client.subscribe(CLUSTER, names)
    await client.wait_for(lambda c: bool(c.of_type(CLUSTER)))
    return client


def echo(name: str = "echo", port: int = 7000) -> config_pb2.Service:
    return config_pb2.Service(
        name=name, endpoints=[config_pb2.Endpoint(address=f"127.0.0.1:{port}")]
    )


async def test_third_stream_of_a_node_is_refused(procs: MeshProcesses, tmp_path: Path) -> None:
    proc, control = procs.start_control(*LIMITS)
    async with (
        AdsClient(control, "n1") as one,
        AdsClient(control, "n1") as two,
        AdsClient(control, "n2") as other,
    ):
        await connected(one)
        await connected(two)
        async with AdsClient(control, "n1") as three:
            three.subscribe(CLUSTER)
            await eventually(
                lambda: three.error is not None, 10, "the third stream to be refused", every=0.05
            )
            assert three.error is not None
            assert three.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert three.error.details().startswith("node n1 already has 2 streams")
            assert not three.of_type(CLUSTER)
        await connected(other)  # another node id is accepted

        yaml = service_yaml(tmp_path / "echo.yaml", "echo", "127.0.0.1:7000")
        await asyncio.to_thread(meshctl, control, "apply", "-f", str(yaml))
        for client in (one, two, other):
            await client.wait_for(has_cluster("echo"))
            assert client.error is None

        logged = await eventually(
            lambda: breaches(proc, "max_streams_per_node"), 10, "the log line", every=0.05
        )
        assert logged[0]["node"] == "n1" and logged[0]["code"] == "RESOURCE_EXHAUSTED"
        assert logged[0]["level"] == "warning" and logged[0]["peer"].startswith("ipv4:127.0.0.1")

        await one.__aexit__(None, None, None)

        async def a_new_stream_is_accepted() -> bool:
            async with AdsClient(control, "n1") as again:
                again.subscribe(CLUSTER)
                await eventually(
                    lambda: again.error is not None or again.of_type(CLUSTER),
                    10,
                    "an answer",
                    every=0.05,
                )
                return again.error is None and has_cluster("echo")(again)

        await eventually(
            a_new_stream_is_accepted, 10, "a new stream of n1 accepted after one closed", every=0.1
        )
        assert two.error is None


def retry_after(error: grpc.aio.AioRpcError) -> int:
    trailing = dict(error.trailing_metadata() or ())
    ms = int(trailing["retry-after-ms"])
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() == ms
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    return ms


async def test_admin_writes_are_rate_limited_per_caller(procs: MeshProcesses) -> None:
    proc, control = procs.start_control(*LIMITS)
    async with (
        grpc.aio.insecure_channel(control) as channel,
        AdsClient(control, "watcher") as watcher,
    ):
        await connected(watcher)
        stub = admin_pb2_grpc.MeshAdminServiceStub(channel)
        outcomes: list[object] = []
        for port in range(7001, 7006):
            try:
                await stub.ApplyServices(admin_pb2.ApplyServicesRequest(services=[echo(port=port)]))
                outcomes.append("ok")
            except grpc.aio.AioRpcError as error:
                outcomes.append(error)
        with pytest.raises(grpc.aio.AioRpcError) as deleting:
            await stub.DeleteService(admin_pb2.DeleteServiceRequest(name="echo"))

        assert outcomes[:2] == ["ok", "ok"], outcomes
        refused = outcomes[2]
        assert isinstance(refused, grpc.aio.AioRpcError)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 2 a second (bursts of 2) per caller" in (refused.details() or "")
        ms = retry_after(refused)
        assert 0 < ms <= 500 and f"retry after {ms} ms" in (refused.details() or "")
        assert deleting.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # Reads and ADS streams are not limited.
        for _ in range(10):
            got = await stub.GetServices(admin_pb2.GetServicesRequest())
            await stub.GetStatus(admin_pb2.GetStatusRequest())
        assert [s.service.endpoints[0].address for s in got.services] == ["127.0.0.1:7002"]
        await watcher.wait_for(has_cluster("echo"))
        async with AdsClient(control, "late") as late:
            await connected(late)
            assert has_cluster("echo")(late)

        # Waiting as told is enough.
        await asyncio.sleep(retry_after(deleting.value) / 1000 + 0.05)
        await stub.DeleteService(admin_pb2.DeleteServiceRequest(name="echo"))
        await asyncio.sleep(0.55)
        await stub.ApplyServices(admin_pb2.ApplyServicesRequest(services=[echo(port=7009)]))

    logged = await eventually(
        lambda: breaches(proc, "admin_writes_per_second"), 10, "the log line", every=0.05
    )
    assert {e["method"] for e in logged} == {"ApplyServices", "DeleteService"}
    assert all(e["caller"] == "127.0.0.1" and e["retry_after_ms"] > 0 for e in logged)


async def test_too_many_names_end_only_that_stream(procs: MeshProcesses) -> None:
    proc, control = procs.start_control(*LIMITS)
    async with (
        grpc.aio.insecure_channel(control) as channel,
        AdsClient(control, "good") as good,
        AdsClient(control, "greedy") as greedy,
        AdsClient(control, "long-name") as long_name,
        AdsClient(control, "") as nameless,
        AdsClient(control, "n" * 2000) as long_node,
    ):
        await connected(good)
        await connected(greedy, ["s0"])
        greedy.subscribe(CLUSTER, [f"s{i}" for i in range(6)])
        long_name.subscribe(CLUSTER, ["x" * 201])
        nameless.subscribe(CLUSTER)
        long_node.subscribe(CLUSTER)
        for client in (greedy, long_name, nameless, long_node):
            await eventually(
                lambda c=client: c.error is not None,
                10,
                f"{client.node_id[:9]} refused",
                every=0.05,
            )
        errors = {c.node_id[:9]: c.error for c in (greedy, long_name, nameless, long_node)}
        assert all(e.code() == grpc.StatusCode.INVALID_ARGUMENT for e in errors.values())
        assert errors["greedy"].details() == "6 resource names in one request; the limit is 5"
        assert "201 characters long; the limit is 200" in errors["long-name"].details()
        assert errors[""].details() == "the first request on a stream must carry node.id"
        assert "2000 characters long; the limit is 1024" in errors["n" * 9].details()

        stub = admin_pb2_grpc.MeshAdminServiceStub(channel)
        await stub.ApplyServices(admin_pb2.ApplyServicesRequest(services=[echo()]))
        await good.wait_for(has_cluster("echo"))
        assert good.error is None

    names = await eventually(
        lambda: breaches(proc, "max_names_per_request"), 10, "the log line", every=0.05
    )
    assert names[0]["node"] == "greedy" and names[0]["code"] == "INVALID_ARGUMENT"
    assert "6 resource names" in names[0]["error"]
    assert [e["node"] for e in breaches(proc, "max_name_length")] == ["long-name"]
    (node,) = breaches(proc, "max_node_id_length")
    assert node["node"] == "n" * 1024


async def test_oversized_messages_are_refused_and_the_server_keeps_serving(
    procs: MeshProcesses,
) -> None:
    proc, control = procs.start_control(*LIMITS)
    blob = "x" * (100 * 1024)
    async with (
        grpc.aio.insecure_channel(control) as channel,
        AdsClient(control, "bystander") as bystander,
        AdsClient(control, "big") as big,
    ):
        await connected(bystander)
        await connected(big)
        stub = admin_pb2_grpc.MeshAdminServiceStub(channel)
        service = echo()
        service.endpoints[0].metadata["blob"] = blob
        with pytest.raises(grpc.aio.AioRpcError) as applying:
            await stub.ApplyServices(admin_pb2.ApplyServicesRequest(services=[service]))
        assert applying.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in (applying.value.details() or "")
        assert "vs. 65536" in (applying.value.details() or "")

        big.subscribe(CLUSTER, [blob])
        await eventually(
            lambda: big.error is not None, 10, "the oversized request to be refused", every=0.05
        )
        assert big.error is not None and big.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # Everyone else is still served.
        await stub.ApplyServices(admin_pb2.ApplyServicesRequest(services=[echo()]))
        await bystander.wait_for(has_cluster("echo"))
        status = await stub.GetStatus(admin_pb2.GetStatusRequest())
        assert "bystander" in {n.node_id for n in status.nodes}
        assert bystander.error is None and proc.alive


async def test_request_counts_are_capped(procs: MeshProcesses) -> None:
    proc, control = procs.start_control(*LIMITS)
    async with grpc.aio.insecure_channel(control) as channel:
        admin = admin_pb2_grpc.MeshAdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as applying:
            await admin.ApplyServices(
                admin_pb2.ApplyServicesRequest(services=[echo(f"s{i}") for i in range(4)])
            )
        assert applying.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert applying.value.details() == "4 services in one request; the limit is 3"

        node = node_pb2_grpc.NodeServiceStub(channel)
        registrations = [
            node_pb2.Registration(service="echo", address=f"127.0.0.1:{7000 + i}") for i in range(4)
        ]
        with pytest.raises(grpc.aio.AioRpcError) as registering:
            await node.SetRegistrations(
                node_pb2.SetRegistrationsRequest(node_id="n1", registrations=registrations)
            )
        assert registering.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert registering.value.details() == "4 registrations in one request; the limit is 3"
        accepted = await node.SetRegistrations(
            node_pb2.SetRegistrationsRequest(node_id="n1", registrations=registrations[:3])
        )
        assert accepted.accepted == 3

        clients = [node_pb2.LocalClientStatus(client_id=f"c{i}") for i in range(3)]
        with pytest.raises(grpc.aio.AioRpcError) as reporting:
            await node.ReportClientStatus(
                node_pb2.ReportClientStatusRequest(node_id="n1", clients=clients)
            )
        assert reporting.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reporting.value.details() == "3 clients in one request; the limit is 2"

    assert [e["method"] for e in breaches(proc, "max_services_per_apply")] == ["ApplyServices"]
    assert [e["node"] for e in breaches(proc, "max_registrations_per_node")] == ["n1"]
    assert [e["node"] for e in breaches(proc, "max_clients_per_report")] == ["n1"]


def test_meshctl_shows_the_retry_hint(procs: MeshProcesses, tmp_path: Path) -> None:
    _, control = start_control(
        procs, "--admin-writes-per-second", "0.01", "--admin-write-burst", "1"
    )
    yaml = service_yaml(tmp_path / "echo.yaml", "echo", "127.0.0.1:7000")
    meshctl(control, "apply", "-f", str(yaml))
    result = run_cli("control.meshctl", "--control", control, "apply", "-f", str(yaml))
    assert result.returncode != 0
    assert result.stderr.startswith("meshctl: resource exhausted: too many admin writes")
    assert "retry after" in result.stderr
