"""The web page's document (:class:`control.web.view.MeshView`) over a memory store, with
the status, registrations and traffic given at its seams (the callables a control server
passes). The page through real servers and a browser: tests/e2e/test_web*.py."""

from __future__ import annotations

import pytest

from control.store import MemoryStore
from control.web.view import MeshView
from mesh.v1 import admin_pb2, config_pb2, traffic_pb2
from mesh_core.traffic import BUCKETS

pytestmark = pytest.mark.timeout(10)


def _status() -> admin_pb2.GetStatusResponse:
    up = admin_pb2.NodeStatus(node_id="n1", stream_id="s1")
    up.health.status = "SERVING"
    up.health.breakers.add(service="orders", state="half_open", reason="failure_rate")
    up.health.warnings.add(service="users", state="degrading", reason="error_budget_burn")
    nack = up.types.add(type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster")
    nack.last_nack.message = "bad cluster"
    nack.last_nack.time.FromSeconds(100)
    late = up.local_clients.add(client_id="app-1", type_url="x.Listener", nack_message="no")
    late.nack_time.FromSeconds(200)
    gone = admin_pb2.NodeStatus(node_id="n2")  # no stream: within its grace
    gone.health.breakers.add(service="orders", state="open", reason="consecutive_failures")
    return admin_pb2.GetStatusResponse(nodes=[up, gone], server_id="c1", store_revision=2)


def _edge(node: str, rps: float, calls: int, error_rate: float, breaker: str, slow: int = 0):
    buckets = [0] * BUCKETS
    buckets[slow] = calls
    return traffic_pb2.TrafficEdge(
        caller="web",
        service="orders",
        node_id=node,
        rps=rps,
        calls=calls,
        error_rate=error_rate,
        breaker=breaker,
        latency_buckets=buckets,
    )


async def test_the_document() -> None:
    store = MemoryStore()
    await store.start()
    await store.apply(
        [
            config_pb2.Service(
                name="orders", endpoints=[config_pb2.Endpoint(address="10.0.0.1:80")]
            ),
            config_pb2.Service(name="users"),
        ]
    )
    registered = {
        "orders": [
            config_pb2.Endpoint(address="10.0.0.2:80", node_id="n2"),
            config_pb2.Endpoint(address="10.0.0.3:80", node_id="n1", draining=True),
        ],
        "billing": [config_pb2.Endpoint(address="10.0.0.4:80", node_id="n1", zone="z")],
    }
    traffic = admin_pb2.GetTrafficResponse(
        edges=[
            _edge("n1", 10.0, 100, 0.0, "closed"),
            _edge("n2", 5.0, 50, 0.3, "open", slow=BUCKETS - 1),
        ]
    )
    view = MeshView(store, _status, lambda: registered, lambda: traffic)
    document = await view.document()

    services = {s["name"]: s for s in document["services"]}
    assert list(services) == ["billing", "orders", "users"]
    orders = services["orders"]
    assert orders["state"] == "open"  # the worst of its nodes' breakers
    assert [(b["node"], b["state"]) for b in orders["breakers"]] == [
        ("n1", "half_open"),
        ("n2", "open"),
    ]
    assert [(e["address"], e["source"], e["state"]) for e in orders["endpoints"]] == [
        ("10.0.0.1:80", "config", "serving"),
        ("10.0.0.2:80", "registered", "node_away"),
        ("10.0.0.3:80", "registered", "draining"),
    ]
    assert services["users"]["state"] == "degrading"
    assert services["users"]["warnings"][0]["reason"] == "error_budget_burn"
    assert services["billing"]["revision"] == 0  # only registered
    assert services["billing"]["endpoints"][0]["zone"] == "z"

    assert [n["node"] for n in document["nacks"]] == ["n1", "n1"]
    assert [n["client"] for n in document["nacks"]] == ["app-1", ""]  # newest first
    assert document["nacks"][1] == {
        "node": "n1",
        "client": "",
        "type": "Cluster",
        "version": "",
        "message": "bad cluster",
        "time": "1970-01-01T00:01:40Z",
    }
    assert [(n["node_id"], n["connected"]) for n in document["nodes"]] == [
        ("n1", True),
        ("n2", False),
    ]

    # One edge per caller and service: rates added, errors over all calls, worst breaker.
    [edge] = document["traffic"]["edges"]
    assert edge["nodes"] == ["n1", "n2"] and edge["calls"] == 150 and edge["rps"] == 15.0
    assert edge["error_rate"] == pytest.approx(15 / 150)
    assert edge["breaker"] == "open"
    assert edge["p50_ms"] < edge["p99_ms"]  # the slow node's calls are the top third

    # Kept for a second: many open pages cost one build.
    await store.apply([config_pb2.Service(name="zeta")])
    assert await view.document() is document
    await store.close()
