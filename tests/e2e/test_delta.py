"""Delta ADS end to end: a real mesh-control process, services applied with meshctl, and a
delta stream (``DeltaAggregatedResources``) opened by the test (``mesh_xds.testing``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from mesh_core.names import client_listener_name
from mesh_xds.testing import DeltaAdsClient, DeltaRules
from mesh_xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import Pki, meshctl

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


def subscribe_all(stream: DeltaAdsClient, initial: dict[str, dict[str, str]] | None = None) -> None:
    """CDS and LDS by wildcard, EDS and RDS by name: what an agent holding NAMES asks for."""
    initial = initial or {}
    for type_url in TYPES:
        wildcard = type_url in (CLUSTER, LISTENER)
        names = ["*"] if wildcard else NAMES
        stream.request(type_url, names, initial=initial.get(type_url))


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


def client(control: str, node: str, **kwargs: object) -> DeltaAdsClient:
    """A delta stream to our control server, which also numbers its nonces and versions the
    system."""
    rules = DeltaRules(increasing_nonces=True, system_version=True)
    return DeltaAdsClient(control, node, rules=rules, **kwargs)  # type: ignore[arg-type]


async def test_delta_stream_follows_changes(procs: MeshProcesses, tmp_path: Path) -> None:
    _, control = procs.start_control()
    endpoints = {name: f"10.0.0.{i}:50051" for i, name in enumerate(NAMES, 1)}
    config = tmp_path / "services.yaml"
    await asyncio.to_thread(meshctl, control, "apply", "-f", str(services_yaml(config, endpoints)))

    async with client(control, "delta-1") as first_client:
        subscribe_all(first_client)
        first = [await first_client.next() for _ in TYPES]
        assert by_type(first) == {t: (served(t, NAMES), []) for t in TYPES}
        assert [r.type_url for r in first] == list(TYPES)
        assert all(r.resources[0].version for r in first)

        # One service's endpoints change: only its ClusterLoadAssignment is sent.
        endpoints["b"] = "10.0.0.9:50051"
        await asyncio.to_thread(
            meshctl, control, "apply", "-f", str(services_yaml(config, endpoints))
        )
        changed = await first_client.next()
        assert by_type([changed]) == {ENDPOINT: (["b"], [])}
        await first_client.nothing(1.5)

        # A deleted service: named in removed_resources for every type.
        await asyncio.to_thread(meshctl, control, "delete", "service", "c")
        removed = [await first_client.next() for _ in TYPES]
        assert by_type(removed) == {t: ([], served(t, ["c"])) for t in TYPES}
        await first_client.nothing(1.0)

        status = json.loads(await asyncio.to_thread(meshctl, control, "status", "-o", "json"))
        node = next(n for n in status["nodes"] if n["node_id"] == "delta-1")
        assert node["stream_id"].endswith("-delta")
        types = {t["type_url"]: t for t in node["types"]}
        assert set(types) == set(TYPES)
        for t in types.values():
            assert t["version_sent"] and t["version_sent"] == t["version_acked"], t
        held = {t: dict(v) for t, v in first_client.held.items()}

    # Reconnect holding everything current: nothing is sent.
    async with client(control, "delta-1") as again:
        subscribe_all(again, held)
        await again.nothing(1.5)

    # Reconnect holding an old b and the deleted c: b is resent, c named removed.
    stale = {t: held[t] | {"b": "old", "c": "old"} for t in TYPES}
    async with client(control, "delta-1") as third:
        subscribe_all(third, stale)
        resumed = [await third.next() for _ in TYPES]
        assert by_type(resumed) == {t: (["b"], ["c"]) for t in TYPES}
        assert third.held == held
        await third.nothing(1.0)


async def test_delta_refuses_a_certificate_of_another_node(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    pki = Pki(tmp_path / "pki")
    _, control = await asyncio.to_thread(
        procs.start_control, tls_dir=pki.issue("server", server="127.0.0.1")
    )
    n1 = pki.issue("n1", node="n1", ips=["127.0.0.1"])
    async with client(control, "n2", credentials=Pki.credentials(n1)) as refused_client:
        refused_client.request(CLUSTER, ["*"])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await refused_client.next()
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "certificate identifies node 'n1'" in (refused.value.details() or "")
