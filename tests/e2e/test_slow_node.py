"""A node that stops reading its ADS stream does not hold back anyone else: with a config
large enough to fill the slow stream's flow-control window, other nodes still get every
change promptly, and the server keeps answering its admin API."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from mesh.v1 import config_pb2
from mesh_xds.testing import AdsClient
from mesh_xds.types import CLUSTER, LISTENER
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import apply, echo, status_json

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SERVICES = 400  # LDS + CDS responses of a few hundred KB: more than a stream's window


def services(generation: int) -> list[config_pb2.Service]:
    """The same services, plus one new per generation: LDS and CDS change every time."""
    return [
        echo(f"10.0.{i // 250}.{i % 250 + 1}:8080", f"svc-{i:04d}") for i in range(SERVICES)
    ] + [echo("10.1.0.1:8080", f"gen-{generation}")]


async def test_a_node_that_stops_reading_does_not_delay_the_others(procs: MeshProcesses) -> None:
    _, control = procs.start_control()
    await apply(control, *services(0))

    # The slow node: subscribes to everything, then never reads a response.
    channel = grpc.aio.insecure_channel(control)
    requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

    async def send():  # type: ignore[no-untyped-def]
        while (request := await requests.get()) is not None:
            yield request

    for type_url in (LISTENER, CLUSTER):
        request = discovery_pb2.DiscoveryRequest(type_url=type_url)
        request.node.id = "slow"
        requests.put_nowait(request)
    slow = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(send())

    async with (
        AdsClient(control, "fast-1") as a,
        AdsClient(control, "fast-2") as b,
    ):
        for client in (a, b):
            client.subscribe(LISTENER)
            client.subscribe(CLUSTER)
        for client in (a, b):
            await client.wait_for(lambda c: bool(c.of_type(CLUSTER)), 20)
        delays = []
        for generation in range(1, 6):
            seen = len(a.of_type(CLUSTER)), len(b.of_type(CLUSTER))
            started = time.monotonic()
            await apply(control, *services(generation))
            await a.wait_for(lambda c, n=seen[0]: len(c.of_type(CLUSTER)) > n, 10)
            await b.wait_for(lambda c, n=seen[1]: len(c.of_type(CLUSTER)) > n, 10)
            delays.append(time.monotonic() - started)
        # Each change reaches the others within the debounce plus a push, while the slow
        # node's stream is stuck behind a full window.
        assert max(delays) < 2.0, delays
        assert status_json(control)["nodes"], "the admin API still answers"
        nodes = {n["node_id"]: n for n in status_json(control)["nodes"]}
        slow_cds = next(t for t in nodes["slow"]["types"] if t["type_url"] == CLUSTER)
        fast_cds = next(t for t in nodes["fast-1"]["types"] if t["type_url"] == CLUSTER)
        assert fast_cds["version_acked"] == fast_cds["version_sent"]
        assert slow_cds.get("version_acked", "") != fast_cds["version_acked"], "slow never ACKed"
    requests.put_nowait(None)
    slow.cancel()
    await channel.close()
