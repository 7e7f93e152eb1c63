"""mesh-control as an operator sees it: reflection and health for grpcurl, a CSDS dump that
decodes, and a clean SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh_xds.testing import AdsClient
from mesh_xds.types import CLUSTER, LISTENER
from tests.conftest import require_tool, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import meshctl, service_yaml

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def grpcurl(*args: str) -> str:
    tool = require_tool("grpcurl")
    result = subprocess.run(
        [tool, "-plaintext", *args], capture_output=True, text=True, timeout=20, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_grpcurl_lists_describes_and_dumps_csds(procs: MeshProcesses, tmp_path: Path) -> None:
    _, control = procs.start_control()
    listed = grpcurl(control, "list").split()
    for service in (
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        "envoy.service.status.v3.ClientStatusDiscoveryService",
        "mesh.v1.MeshAdminService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ):
        assert service in listed
    described = grpcurl(control, "describe", "mesh.v1.MeshAdminService")
    assert "rpc ApplyServices" in described
    health = json.loads(grpcurl(control, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}

    meshctl(control, "apply", "-f", str(service_yaml(tmp_path / "s.yaml", "echo", "127.0.0.1:9")))

    async def connected() -> str:
        async with AdsClient(control, "csds-node") as client:
            client.subscribe(LISTENER)
            client.subscribe(CLUSTER)
            await client.wait_for(lambda c: any(r.resources for r in c.of_type(CLUSTER)))
            await client.wait_for(lambda c: any(r.resources for r in c.of_type(LISTENER)))
            # grpcurl runs in a thread: the client must keep ACKing meanwhile.
            for _ in range(50):
                dump = await asyncio.to_thread(
                    grpcurl,
                    "-d",
                    "{}",
                    control,
                    "envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus",
                )
                if '"ACKED"' in dump and "REQUESTED" not in dump:
                    break
                await asyncio.sleep(0.1)
            return dump

    import asyncio

    dump = json.loads(asyncio.run(connected()))
    (config,) = dump["config"]
    assert config["node"]["id"] == "csds-node"
    # grpcurl prints the field names as the descriptors served by reflection spell them.
    entries = {
        (e["type_url"].rsplit(".", 1)[-1], e["name"]): e for e in config["generic_xds_configs"]
    }
    listener = entries[("Listener", "echo")]
    assert listener["client_status"] == "ACKED"
    # The resource itself, inside the Any, decodes through reflection.
    assert listener["xds_config"]["name"] == "echo"
    assert "api_listener" in listener["xds_config"]["api_listener"]
    assert entries[("Cluster", "echo")]["xds_config"]["type"] == "EDS"


def test_sigterm_stops_cleanly_and_health_goes_not_serving(procs: MeshProcesses) -> None:
    control_proc = procs.python(
        "control-term",
        "control",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "memory:",
        "--ready-file",
        str(procs.workdir / "r"),
    )
    ready = procs.workdir / "r"
    address = wait_for(lambda: ready.exists() and ready.read_text().strip(), 20, "control ready")
    statuses: list[int] = []
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=15)
        statuses.append(next(watch).status)
        control_proc.popen.send_signal(signal.SIGTERM)
        try:
            for reply in watch:
                statuses.append(reply.status)
        except grpc.RpcError:
            pass
    assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses[1:]
    started = time.monotonic()
    code = control_proc.popen.wait(15)
    assert code == 0, control_proc.errors()[-2000:]
    assert time.monotonic() - started < 10
    assert '"stopped"' in control_proc.errors()
