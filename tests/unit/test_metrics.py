"""The OpenTelemetry instruments of the control server and the agent, read through an SDK
``MeterProvider`` with an in-memory reader (injected; the global provider is left alone)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from grpc_health.v1 import health, health_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric

from control.publisher import Publisher
from control.resources import build_resources
from control.store import MemoryStore
from mesh.v1 import agent_pb2, config_pb2
from mesh_agent.daemon import journal
from mesh_agent.daemon.breakers.service import BreakerHub
from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.health.checker import HealthChecker
from mesh_agent.daemon.health.table import HealthPolicy, HealthTable
from mesh_agent.daemon.metrics import AgentMetrics
from mesh_agent.daemon.upstream.client import UpstreamClient
from mesh_xds.cache import SnapshotCache
from mesh_xds.callbacks import Callbacks, SessionCallbacks
from mesh_xds.metrics import AGENT, CONTROL, XdsMetrics, type_name
from mesh_xds.registry import SessionRegistry
from mesh_xds.servicer import AdsServicer, add_ads_servicer
from mesh_xds.session import Session, TypeState
from mesh_xds.types import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SERVICE_POLICY
from tests.conftest import eventually, free_port
from tests.unit.xds_streams import FakeStream, service

pytestmark = pytest.mark.timeout(20)

ROOT = Path(__file__).resolve().parents[2]


# -- reading metrics ---------------------------------------------------------------------------


class Metrics:
    """An SDK provider with an in-memory reader, and ways to read what it collected."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.meter = self.provider.get_meter("test")

    def collect(self) -> dict[str, Metric]:
        data = self.reader.get_metrics_data()
        found: dict[str, Metric] = {}
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = metric
        return found

    def points(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """The data points of ``name``: attributes -> value (the sum, for a counter)."""
        metric = self.collect().get(name)
        if metric is None:
            return {}
        return {
            frozenset((p.attributes or {}).items()): p.value
            for p in metric.data.data_points  # type: ignore[union-attr]
        }

    def counted(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """:meth:`points` without the series still at zero."""
        return {key: value for key, value in self.points(name).items() if value}


def attrs(**values: Any) -> frozenset[tuple[str, Any]]:
    return frozenset((key.replace("_", "."), value) for key, value in values.items())


def xds(type_url: str, server: str = CONTROL) -> frozenset[tuple[str, Any]]:
    return frozenset({("mesh.xds.type", type_name(type_url)), ("mesh.xds.server", server)})


@pytest.fixture
def otel() -> Iterator[Metrics]:
    metrics = Metrics()
    yield metrics
    metrics.provider.shutdown()


# -- ADS ---------------------------------------------------------------------------------------


def open_stream(cache: SnapshotCache, metrics: XdsMetrics, node_id: str) -> FakeStream:
    """One SotwSession driven with real DiscoveryRequests, counted by ``metrics``."""
    stream = FakeStream(cache, node_id, callbacks=metrics)
    stream.start()
    return stream


async def settle() -> None:
    """Lets the sessions handle what was queued."""
    await asyncio.sleep(0.05)


async def test_pushes_acks_and_nacks_are_counted_per_type(otel: Metrics) -> None:
    cache = SnapshotCache(build_resources)
    cache.set_services(1, [service("a", "10.0.0.1:1"), service("b", "10.0.0.2:1")])
    xds_metrics = XdsMetrics(CONTROL, otel.meter)
    # Every series is there from the start, at zero.
    zeros = {xds(type_url): 0 for type_url in PUSH_ORDER}
    for name in ("mesh.xds.pushes", "mesh.xds.acks", "mesh.xds.nacks"):
        assert otel.points(name) == zeros, name
    assert otel.points("mesh.xds.connected_nodes") == {attrs(mesh_xds_server=CONTROL): 0}
    stream = open_stream(cache, xds_metrics, "node-1")
    try:
        await stream.request(LISTENER)
        listeners = await stream.next()
        await stream.ack(listeners, [])
        await stream.request(CLUSTER)
        clusters = await stream.next()
        await stream.request(CLUSTER, nonce=clusters.nonce, error="bad cluster")
        await stream.request(ROUTE, ["a", "b"])
        routes = await stream.next()
        await stream.ack(routes, ["a", "b"])
        await stream.request(ENDPOINT, ["a"])
        await stream.request(SERVICE_POLICY, ["*"])
        await stream.next()
        await stream.next()
        await settle()
    finally:
        await stream.close()

    found = otel.collect()
    assert found["mesh.xds.pushes"].unit == "{response}"
    assert found["mesh.xds.acks"].unit == "{request}"
    assert found["mesh.xds.nacks"].unit == "{request}"
    assert otel.counted("mesh.xds.pushes") == {
        xds(LISTENER): 1,
        xds(CLUSTER): 1,
        xds(ROUTE): 1,
        xds(ENDPOINT): 1,
        xds(SERVICE_POLICY): 1,
    }
    assert otel.counted("mesh.xds.acks") == {xds(LISTENER): 1, xds(ROUTE): 1}
    assert otel.counted("mesh.xds.nacks") == {xds(CLUSTER): 1}
    assert {type_name(t) for t in (LISTENER, ROUTE, CLUSTER, ENDPOINT, SERVICE_POLICY)} == {
        "Listener",
        "RouteConfiguration",
        "Cluster",
        "ClusterLoadAssignment",
        "ServicePolicy",
    }
    assert "mesh.xds.convergence.duration" not in found, "no config change was pushed"


async def test_convergence_counts_pushed_changes_once_and_not_late_joiners(
    otel: Metrics,
) -> None:
    store = MemoryStore()
    await store.apply([service("a", "10.0.0.1:1")])
    cache = SnapshotCache(build_resources)
    publisher = Publisher(store, cache, debounce=0.1, max_delay=1.0)
    task = asyncio.create_task(publisher.run())
    metrics = XdsMetrics(CONTROL, otel.meter)
    early = late = None
    try:
        await eventually(lambda: cache.loaded, 5.0, "the cache loaded", every=0.01)
        early = open_stream(cache, metrics, "early")
        await early.request(LISTENER)
        first = await early.next()
        await early.ack(first, [])
        await settle()

        # Two changes within the debounce become one publication, timed from the first.
        before = time.monotonic()
        await store.apply([service("b", "10.0.0.2:1")])
        await asyncio.sleep(0.05)
        between = time.monotonic()
        await store.apply([service("c", "10.0.0.3:1")])
        pushed = await early.next()
        assert pushed.version_info != first.version_info
        assert len(pushed.resources) == 6  # three services, each with its client alias
        snapshot = cache.snapshot_for(early.node)
        assert snapshot.changed_at is not None and before <= snapshot.changed_at < between
        await early.ack(pushed, [])
        # The same version again (a subscription change carries it too): not counted twice.
        await early.ack(pushed, ["a", "b", "c"])
        await settle()
        acked = time.monotonic()

        # A node that connects now gets that version on request: not counted.
        late = open_stream(cache, metrics, "late")
        await late.request(LISTENER)
        joined = await late.next()
        assert joined.version_info == pushed.version_info
        await late.ack(joined, [])
        await settle()
    finally:
        for stream in (early, late):
            if stream is not None:
                await stream.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()

    metric = otel.collect()["mesh.xds.convergence.duration"]
    assert metric.unit == "s"
    (point,) = metric.data.data_points  # type: ignore[union-attr]
    assert dict(point.attributes or {}) == {"mesh.xds.type": "Listener"}
    assert point.count == 1
    assert 0.1 <= point.sum <= acked - before
    assert otel.counted("mesh.xds.acks") == {xds(LISTENER): 4}


class FakeContext:
    """What AdsServicer uses of a grpc.aio ServicerContext."""

    def __init__(
        self,
        sent: asyncio.Queue[discovery_pb2.DiscoveryResponse],
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
    ) -> None:
        self._sent = sent
        self._requests = requests

    async def read(self) -> Any:
        return await anext(self._requests, grpc.aio.EOF)

    async def write(self, data: bytes) -> None:
        await self._sent.put(discovery_pb2.DiscoveryResponse.FromString(data))

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


async def test_servicer_counts_open_streams_and_tags_the_server(otel: Metrics) -> None:
    cache = SnapshotCache(build_resources)
    cache.set_services(1, [service("a", "10.0.0.1:1")])
    events: list[str] = []

    class Events(SessionCallbacks):
        def on_send(self, session: Session, state: TypeState) -> None:
            events.append("send")

        def on_ack(self, session: Session, state: TypeState) -> None:
            events.append("ack")

        def on_nack(self, session: Session, state: TypeState) -> None:
            events.append("nack")

        def on_subscribe(self, session: Session, state: TypeState) -> None:
            events.append("subscribe")

    servicer = AdsServicer(
        cache,
        SessionRegistry(),
        "agent-node",
        Callbacks(Events(), XdsMetrics(AGENT, otel.meter)),
    )
    requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
    sent: asyncio.Queue[discovery_pb2.DiscoveryResponse] = asyncio.Queue()

    async def iterate() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (request := await requests.get()) is not None:
            yield request

    streams = [
        asyncio.create_task(servicer.StreamAggregatedResources(it, FakeContext(sent, it)))
        for it in (iterate(), iterate())
    ]
    await asyncio.sleep(0.05)
    assert otel.points("mesh.xds.connected_nodes") == {attrs(mesh_xds_server=AGENT): 2}
    await requests.put(
        discovery_pb2.DiscoveryRequest(type_url=LISTENER, node=base_pb2.Node(id="process-1"))
    )
    response = await asyncio.wait_for(sent.get(), 2.0)
    await requests.put(None)
    await requests.put(None)
    await asyncio.wait_for(asyncio.gather(*streams), 2.0)

    assert response.type_url == LISTENER
    assert events == ["subscribe", "send"], "the servicer's own hook still hears every event"
    found = otel.collect()
    assert found["mesh.xds.connected_nodes"].unit == "{node}"
    assert otel.points("mesh.xds.connected_nodes") == {attrs(mesh_xds_server=AGENT): 0}
    assert otel.counted("mesh.xds.pushes") == {xds(LISTENER, AGENT): 1}


async def test_agent_server_records_no_convergence(otel: Metrics) -> None:
    cache = SnapshotCache(build_resources)
    cache.set_services(1, [service("a", "10.0.0.1:1")])
    stream = open_stream(cache, XdsMetrics(AGENT, otel.meter), "process-1")
    try:
        await stream.request(LISTENER)
        first = await stream.next()
        await stream.ack(first, [])
        await settle()
        cache.set_services(2, [service("a"), service("b")], changed_at=time.monotonic())
        pushed = await stream.next()
        await stream.ack(pushed, [])
        await settle()
        assert stream.session.types[LISTENER].converged_in is not None
    finally:
        await stream.close()
    assert "mesh.xds.convergence.duration" not in otel.collect()
    assert otel.counted("mesh.xds.acks") == {xds(LISTENER, AGENT): 2}


# -- breakers ----------------------------------------------------------------------------------


def policy_cache(open_for: float) -> ConfigCache:
    policy = config_pb2.Policy()
    policy.circuit_breaker.consecutive_failures = 3
    policy.circuit_breaker.open_for.FromNanoseconds(int(open_for * 1e9))
    message = config_pb2.ServicePolicy(name="orders", policy=policy)
    cache = ConfigCache(None, "node-1")
    packed = any_pb2.Any(type_url=SERVICE_POLICY, value=message.SerializeToString())
    assert cache.accept(SERVICE_POLICY, "v1", [packed], None) is None
    return cache


def failures(count: int) -> list[agent_pb2.CallOutcome]:
    now_ms = int(time.time() * 1000)
    return [
        agent_pb2.CallOutcome(
            service="orders", code="UNAVAILABLE", latency_us=1000, end_unix_ms=now_ms
        )
        for _ in range(count)
    ]


def transition(old: str, new: str) -> frozenset[tuple[str, Any]]:
    return frozenset(
        {
            ("mesh.service", "orders"),
            ("mesh.breaker.state", new),
            ("mesh.breaker.previous_state", old),
        }
    )


async def test_breaker_state_and_transitions(otel: Metrics) -> None:
    hub = BreakerHub(None, metrics=AgentMetrics(otel.meter))
    hub.apply_policies(policy_cache(open_for=0.2))
    orders = attrs(mesh_service="orders")
    found = otel.collect()
    assert found["mesh.breaker.state"].unit == "{state}"
    assert otel.points("mesh.breaker.state") == {orders: 0}

    hub.record(failures(3))
    assert otel.points("mesh.breaker.state") == {orders: 2}
    await asyncio.sleep(0.3)
    hub.board.tick()
    assert otel.points("mesh.breaker.state") == {orders: 1}

    found = otel.collect()
    assert found["mesh.breaker.transitions"].unit == "{transition}"
    assert otel.points("mesh.breaker.transitions") == {
        transition("closed", "open"): 1,
        transition("open", "half_open"): 1,
    }

    # The policy goes: the breaker closes (a transition) and is no longer reported.
    hub.apply_policies(ConfigCache(None, "node-1"))
    assert otel.points("mesh.breaker.state") == {}
    assert otel.points("mesh.breaker.transitions") == {
        transition("closed", "open"): 1,
        transition("open", "half_open"): 1,
        transition("half_open", "closed"): 1,
    }


# -- health ------------------------------------------------------------------------------------


def endpoint(address: str) -> frozenset[tuple[str, Any]]:
    return frozenset({("mesh.service", "orders"), ("server.address", address)})


def test_endpoint_health_follows_the_table(otel: Metrics) -> None:
    table = HealthTable(panic_threshold=0.0)
    HealthChecker(table, metrics=AgentMetrics(otel.meter))
    table.update_targets(
        "orders", ["10.0.0.1:80", "10.0.0.2:80"], HealthPolicy(unhealthy_threshold=1)
    )
    assert otel.collect()["mesh.endpoint.health"].unit == "{endpoint}"
    assert otel.points("mesh.endpoint.health") == {
        endpoint("10.0.0.1:80"): 1,
        endpoint("10.0.0.2:80"): 1,
    }
    table.record("orders", "10.0.0.2:80", ok=False)
    assert otel.points("mesh.endpoint.health") == {
        endpoint("10.0.0.1:80"): 1,
        endpoint("10.0.0.2:80"): 0,
    }
    table.record("orders", "10.0.0.2:80", ok=True)
    table.record("orders", "10.0.0.2:80", ok=True)
    assert otel.points("mesh.endpoint.health")[endpoint("10.0.0.2:80")] == 1
    table.remove_service("orders")
    assert otel.points("mesh.endpoint.health") == {}


async def test_every_health_check_is_counted_by_result(otel: Metrics) -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    serving, dead = f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"
    checker = HealthChecker(rng=random.Random(1), metrics=AgentMetrics(otel.meter))
    checker.set_targets("orders", [serving, dead], HealthPolicy(interval=0.05, timeout=0.5))
    await checker.start()

    def result(address: str, value: str) -> frozenset[tuple[str, Any]]:
        return endpoint(address) | {("mesh.health_check.result", value)}

    try:
        await eventually(
            lambda: (
                otel.points("mesh.health_check.results").get(result(serving, "healthy"), 0) >= 2
                and otel.points("mesh.health_check.results").get(result(dead, "unhealthy"), 0) >= 2
            ),
            5.0,
            "two checks of each endpoint counted",
            every=0.01,
        )
    finally:
        await checker.stop()
        await server.stop(None)
    assert otel.collect()["mesh.health_check.results"].unit == "{check}"
    assert set(otel.points("mesh.health_check.results")) == {
        result(serving, "healthy"),
        result(dead, "unhealthy"),
    }
    # Timed by service and result (no address: a histogram per endpoint would cost too much).
    timed = otel.collect()["mesh.health_check.duration"]
    assert timed.unit == "s"
    by_result = {
        dict(p.attributes or {})["mesh.health_check.result"]: p
        for p in timed.data.data_points  # type: ignore[union-attr]
    }
    assert set(by_result) == {"healthy", "unhealthy"}
    for point in by_result.values():
        assert dict(point.attributes or {})["mesh.service"] == "orders"
        assert point.count >= 2 and 0 < point.sum / point.count < 0.5


# -- cache age ---------------------------------------------------------------------------------


def cache_age(otel: Metrics) -> float | None:
    points = otel.points("mesh.agent.cache.age")
    assert len(points) <= 1
    return next(iter(points.values()), None)


async def test_cache_age_from_the_state_file(otel: Metrics, tmp_path: Path) -> None:
    message = config_pb2.ServicePolicy(name="orders")
    record = journal.change_record(
        SERVICE_POLICY,
        "v1",
        {"orders": any_pb2.Any(type_url=SERVICE_POLICY, value=message.SerializeToString())},
        (),
        time.time() - 100,
    )
    (tmp_path / journal.JOURNAL_FILE).write_bytes(journal.header_record("node-1") + record)

    cache = ConfigCache(tmp_path, "node-1")
    client = UpstreamClient(
        ["127.0.0.1:1"], base_pb2.Node(id="node-1"), cache, metrics=AgentMetrics(otel.meter)
    )
    assert cache_age(otel) is None, "no config: nothing to report"
    assert cache.load()
    age = cache_age(otel)
    assert age is not None and 100 <= age < 110
    assert otel.collect()["mesh.agent.cache.age"].unit == "s"
    assert client.config_age() == pytest.approx(age, abs=1.0)


async def test_cache_age_is_zero_while_connected_then_grows(otel: Metrics) -> None:
    control = SnapshotCache(build_resources)
    control.set_services(1, [service("a", "10.0.0.1:1")])
    server = grpc.aio.server()
    add_ads_servicer(
        AdsServicer(control, SessionRegistry(), "control-1", XdsMetrics(CONTROL, otel.meter)),
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    cache = ConfigCache(None, "node-1")
    client = UpstreamClient(
        [f"127.0.0.1:{port}"],
        base_pb2.Node(id="node-1"),
        cache,
        metrics=AgentMetrics(otel.meter),
    )
    client.want(LISTENER, None)
    assert otel.points("mesh.agent.upstream.connects") == {
        attrs(server_address=f"127.0.0.1:{port}"): 0
    }, "at zero from the start"
    task = asyncio.create_task(client.run())
    try:
        assert cache_age(otel) is None
        await eventually(
            lambda: bool(cache.resources(LISTENER)),
            5.0,
            "the listeners in the cache",
            every=0.01,
        )
        assert cache_age(otel) == 0.0
        assert otel.points("mesh.agent.upstream.connected") == {frozenset(): 1}
        assert otel.points("mesh.agent.upstream.connects") == {
            attrs(server_address=f"127.0.0.1:{port}"): 1
        }
        connected = {attrs(mesh_xds_server=CONTROL): 1}
        assert otel.points("mesh.xds.connected_nodes") == connected
        await eventually(
            lambda: otel.counted("mesh.xds.acks") == {xds(LISTENER): 1},
            5.0,
            "one LDS ACK counted",
            every=0.01,
        )
        await server.stop(None)
        await eventually(
            lambda: not client.connected, 5.0, "the client to see the server gone", every=0.01
        )
        assert otel.points("mesh.agent.upstream.connected") == {frozenset(): 0}
        down = time.time()
        await asyncio.sleep(0.2)
        age = cache_age(otel)
        assert age is not None and 0.2 <= age <= time.time() - down + 0.05
        await eventually(
            lambda: otel.points("mesh.xds.connected_nodes") == {attrs(mesh_xds_server=CONTROL): 0},
            5.0,
            "no node connected",
            every=0.01,
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.stop(None)


# -- the global meter --------------------------------------------------------------------------

GLOBAL_SCRIPT = """
import asyncio, json, time
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from mesh_xds.metrics import CONTROL, XdsMetrics
from mesh_xds.session import TypeState
from mesh_xds.types import LISTENER
from mesh.v1 import agent_pb2, config_pb2
from mesh_agent.daemon.breakers.service import BreakerHub
from mesh_agent.daemon.cache import ConfigCache
from google.protobuf import any_pb2

async def main():
    # Created before the SDK is installed, as in a process that imports first.
    xds = XdsMetrics(CONTROL)
    hub = BreakerHub(None)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    later = BreakerHub(None)
    xds.on_send(None, TypeState(LISTENER))
    for each, name in ((hub, "orders"), (later, "billing")):
        policy = config_pb2.Policy()
        policy.circuit_breaker.consecutive_failures = 1
        message = config_pb2.ServicePolicy(name=name, policy=policy)
        cache = ConfigCache(None, "n")
        url = "type.googleapis.com/mesh.v1.ServicePolicy"
        packed = any_pb2.Any(type_url=url, value=message.SerializeToString())
        assert cache.accept(url, "v1", [packed], None) is None
        each.apply_policies(cache)
    now_ms = int(time.time() * 1000)
    hub.record([agent_pb2.CallOutcome(service="orders", code="UNAVAILABLE", end_unix_ms=now_ms)])
    out = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = [sm.scope.name, sorted(p.value for p in m.data.data_points)]
    print(json.dumps(out))

asyncio.run(main())
"""


def test_production_code_records_through_the_global_meter() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", GLOBAL_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["mesh.xds.pushes"] == ["mesh.control", [1]]
    assert found["mesh.breaker.transitions"] == ["mesh.agent", [1]]
    # Both hubs report (orders open, billing closed), through one set of instruments.
    assert found["mesh.breaker.state"] == ["mesh.agent", [0, 2]]
