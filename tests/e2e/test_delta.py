"""Delta ADS end to end: a real mesh-control process, services applied with meshctl, and a
delta stream (``DeltaAggregatedResources``) opened by the test with grpc.aio."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from mesh_core.names import client_listener_name
from mesh_xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.conftest import Processes
from tests.e2e.test_control_xds import meshctl
from tests.e2e.test_security import Pki, _start_control, _start_pki

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

NAMES = ["a", "b", "c"]
TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)


def services_yaml(path: Path, endpoints: dict[str, str]) -> Path:
    docs = [
        f"name: {name}\nendpoints:\n  - address: {address}\npolicy:\n  timeout: 2s\n"
        for name, address in endpoints.items()
    ]
    path.write_text("---\n".join(docs))
    return path


class DeltaClient:
    """One delta ADS stream; keeps what it holds per type (name -> version) and ACKs."""

    def __init__(self, channel: grpc.aio.Channel, node: str) -> None:
        self.node = node
        self._requests: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = stub.DeltaAggregatedResources(self._iterate())
        self.held: dict[str, dict[str, str]] = {t: {} for t in TYPES}
        self._named = False
        # Reads on a task of its own: cancelling a pending read() would cancel the call.
        self._responses: asyncio.Queue[discovery_pb2.DeltaDiscoveryResponse | BaseException] = (
            asyncio.Queue()
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while (response := await self.call.read()) is not grpc.aio.EOF:
                await self._responses.put(response)
        except BaseException as error:
            await self._responses.put(error)

    async def _iterate(self) -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    async def request(
        self,
        type_url: str,
        subscribe: list[str] | None = None,
        *,
        initial: dict[str, str] | None = None,
        nonce: str = "",
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=subscribe or [],
            initial_resource_versions=initial or {},
            response_nonce=nonce,
        )
        if not self._named:
            request.node.id = self.node
            self._named = True
        await self._requests.put(request)

    async def next(self, timeout: float = 10.0) -> discovery_pb2.DeltaDiscoveryResponse:
        response = await asyncio.wait_for(self._responses.get(), timeout)
        if isinstance(response, BaseException):
            raise response
        held = self.held[response.type_url]
        for resource in response.resources:
            held[resource.name] = resource.version
        for name in response.removed_resources:
            held.pop(name, None)
        await self.request(response.type_url, nonce=response.nonce)  # ACK
        return response

    async def nothing(self, wait: float) -> None:
        try:
            response = await asyncio.wait_for(self._responses.get(), wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected response: {response}")

    async def subscribe_all(self, initial: dict[str, dict[str, str]] | None = None) -> None:
        initial = initial or {}
        for type_url in TYPES:
            wildcard = type_url in (CLUSTER, LISTENER)
            names = ["*"] if wildcard else NAMES
            await self.request(type_url, names, initial=initial.get(type_url))

    async def close(self) -> None:
        await self._requests.put(None)
        self.call.cancel()
        self._reader.cancel()


def served(type_url: str, services: list[str]) -> list[str]:
    """The names of ``services``' resources of a type: Listeners come with the client alias."""
    if type_url != LISTENER:
        return services
    return sorted(services + [client_listener_name(s) for s in services])


def by_type(responses: list[discovery_pb2.DeltaDiscoveryResponse]) -> dict[str, object]:
    return {
        r.type_url: (sorted(x.name for x in r.resources), sorted(r.removed_resources))
        for r in responses
    }


async def test_delta_stream_follows_changes(procs: Processes, tmp_path: Path) -> None:
    _, control = procs.start_ready(
        "control", "control", "serve", "--listen", "127.0.0.1:0", "--store", "memory:"
    )
    endpoints = {name: f"10.0.0.{i}:50051" for i, name in enumerate(NAMES, 1)}
    config = tmp_path / "services.yaml"
    await asyncio.to_thread(meshctl, control, "apply", "-f", str(services_yaml(config, endpoints)))

    async with grpc.aio.insecure_channel(control) as channel:
        client = DeltaClient(channel, "delta-1")
        await client.subscribe_all()
        first = [await client.next() for _ in TYPES]
        assert by_type(first) == {t: (served(t, NAMES), []) for t in TYPES}
        assert [r.type_url for r in first] == list(TYPES)
        assert all(r.resources[0].version for r in first)

        # One service's endpoints change: only its ClusterLoadAssignment is sent.
        endpoints["b"] = "10.0.0.9:50051"
        await asyncio.to_thread(
            meshctl, control, "apply", "-f", str(services_yaml(config, endpoints))
        )
        changed = await client.next()
        assert by_type([changed]) == {ENDPOINT: (["b"], [])}
        await client.nothing(1.5)

        # A deleted service: named in removed_resources for every type.
        await asyncio.to_thread(meshctl, control, "delete", "service", "c")
        removed = [await client.next() for _ in TYPES]
        assert by_type(removed) == {t: ([], served(t, ["c"])) for t in TYPES}
        await client.nothing(1.0)

        status = json.loads(await asyncio.to_thread(meshctl, control, "status", "-o", "json"))
        node = next(n for n in status["nodes"] if n["node_id"] == "delta-1")
        assert node["stream_id"].endswith("-delta")
        types = {t["type_url"]: t for t in node["types"]}
        assert set(types) == set(TYPES)
        for t in types.values():
            assert t["version_sent"] and t["version_sent"] == t["version_acked"], t
        held = {t: dict(v) for t, v in client.held.items()}
        await client.close()

        # Reconnect holding everything current: nothing is sent.
        again = DeltaClient(channel, "delta-1")
        await again.subscribe_all(held)
        await again.nothing(1.5)
        await again.close()

        # Reconnect holding an old b and the deleted c: b is resent, c named removed.
        stale = {t: held[t] | {"b": "old", "c": "old"} for t in TYPES}
        third = DeltaClient(channel, "delta-1")
        third.held = {t: dict(v) for t, v in stale.items()}
        await third.subscribe_all(stale)
        resumed = [await third.next() for _ in TYPES]
        assert by_type(resumed) == {t: (["b"], ["c"]) for t in TYPES}
        assert third.held == held
        await third.nothing(1.0)
        await third.close()


async def test_delta_refuses_a_certificate_of_another_node(
    procs: Processes, tmp_path: Path
) -> None:
    pki = _start_pki(tmp_path)
    control = await asyncio.to_thread(_start_control, procs, pki)
    n1 = pki.issue("n1", node="n1", ips=["127.0.0.1"])
    async with grpc.aio.secure_channel(control, Pki.credentials(n1)) as channel:
        client = DeltaClient(channel, "n2")
        await client.request(CLUSTER, ["*"])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.next()
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "certificate identifies node 'n1'" in (refused.value.details() or "")
        await client.close()
