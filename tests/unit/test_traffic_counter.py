"""The agent's side of the service graph (``mesh_agent.daemon.traffic``): counting outcomes per
caller and service, the cap on pairs, spans taken and put back, reports split into bounded
requests; and the process's caller name (``mesh_agent.client._caller``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from control.node_api import NodeServicer
from control.registry import Registrations
from control.traffic import TrafficGraph
from mesh.v1 import admin_pb2, agent_pb2, node_pb2, node_pb2_grpc
from mesh_agent.client._caller import CALLER, CALLER_ENV, CallerName
from mesh_agent.client._identity import ProcessIdentity
from mesh_agent.daemon.breakers.service import BreakerHub
from mesh_agent.daemon.traffic import (
    KEEP_UNSENT,
    TrafficCounter,
    TrafficReporter,
    breaker_name,
    requests,
)
from mesh_core.errors import ConfigError
from mesh_core.traffic import BUCKETS, LATENCY_BOUNDS_MS, MAX_REPORT_EDGES, bucket_of_us
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(30)


def outcome(service: str, code: str = "OK", latency_us: int = 1000) -> agent_pb2.CallOutcome:
    return agent_pb2.CallOutcome(service=service, code=code, latency_us=latency_us)


def test_outcomes_are_counted_per_caller_and_service() -> None:
    counter = TrafficCounter()
    assert not counter.pending and counter.take() is None
    counter.record("web", [outcome("orders"), outcome("orders", "INTERNAL", 52_000)])
    counter.record("web", [outcome("users")])
    counter.record("api", [outcome("orders", latency_us=400)])
    assert counter.pending
    span = counter.take()
    assert span is not None and span.start <= span.end and span.dropped_calls == 0
    web = span.edges[("web", "orders")]
    assert web.codes == {"OK": 1, "INTERNAL": 1}
    assert web.sum_us == 53_000
    assert web.buckets[bucket_of_us(1000)] == 1 and web.buckets[bucket_of_us(52_000)] == 1
    assert sum(web.buckets) == 2 and len(web.buckets) == BUCKETS
    assert set(span.edges) == {("web", "orders"), ("web", "users"), ("api", "orders")}
    assert not counter.pending and counter.take() is None  # a fresh span


def test_pairs_past_the_cap_are_dropped_and_counted() -> None:
    counter = TrafficCounter(max_edges=2)
    counter.record("web", [outcome("a"), outcome("b"), outcome("c"), outcome("c")])
    counter.record("web", [outcome("a")])  # a known pair is still counted
    span = counter.take()
    assert span is not None
    assert set(span.edges) == {("web", "a"), ("web", "b")}
    assert span.edges[("web", "a")].codes == {"OK": 2}
    assert span.dropped_calls == 2
    counter.record("web", [outcome("c")])  # the next span starts with room again
    assert set(counter.take().edges) == {("web", "c")}  # type: ignore[union-attr]


def test_an_unsent_span_is_put_back_and_keeps_its_start() -> None:
    counter = TrafficCounter()
    counter.record("web", [outcome("orders")])
    first = counter.take()
    assert first is not None
    counter.record("web", [outcome("orders", "UNAVAILABLE")])
    counter.put_back(first)
    span = counter.take()
    assert span is not None
    assert span.start == first.start
    assert span.edges[("web", "orders")].codes == {"OK": 1, "UNAVAILABLE": 1}


def test_a_span_goes_in_requests_of_bounded_size_that_the_control_server_takes() -> None:
    counter = TrafficCounter(max_edges=5000)
    services = [f"s{i:04d}" for i in range(MAX_REPORT_EDGES + 10)]
    counter.record("web", [outcome(s) for s in services])
    span = counter.take()
    assert span is not None
    hub = BreakerHub(None)
    batch = list(requests("n1", span, hub))
    assert [len(r.edges) for r in batch] == [MAX_REPORT_EDGES, 10]
    assert {e.service for r in batch for e in r.edges} == set(services)
    assert all(r.node_id == "n1" and r.HasField("start") for r in batch)
    graph = TrafficGraph(max_edges=10_000)
    assert sum(graph.add(r) for r in batch) == len(services)
    assert breaker_name(hub, "s0000") == ""  # no breaker policy


# -- the caller's name -------------------------------------------------------------------------


def test_the_caller_name_is_the_identity_then_the_given_name_then_the_client_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(CALLER_ENV, raising=False)
    name = CallerName()
    assert name.current("pid-1") == "pid-1"  # no bootstrap written: the link's id
    name.client_id = "host-42"
    assert name.current("pid-1") == "host-42"
    monkeypatch.setenv(CALLER_ENV, "from-env")
    assert name.current() == "from-env"
    name.give("frontend")
    assert name.current() == "frontend"
    name.give("frontend")  # the same again is fine
    with pytest.raises(ConfigError, match="already calls as 'frontend'"):
        name.give("backend")
    name.identity = "orders"
    assert name.current() == "orders"


def test_malformed_caller_names_are_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    name = CallerName()
    for bad in ["", " padded ", "x" * 254, "tab\there"]:
        with pytest.raises(ConfigError, match="caller"):
            name.give(bad)
    monkeypatch.setenv(CALLER_ENV, " bad ")
    with pytest.raises(ConfigError, match=r"\$MESH_CALLER"):
        name.check_env()
    name.client_id = "host-42"
    assert name.current() == "host-42"  # never reported under a malformed name


# -- sending: a real NodeService on loopback ------------------------------------------------


@pytest.fixture
async def control() -> AsyncIterator[tuple[str, TrafficGraph]]:
    """A gRPC server on 127.0.0.1:0 with the control server's NodeService over a graph."""
    graph = TrafficGraph()
    server = grpc.aio.server()
    node_pb2_grpc.add_NodeServiceServicer_to_server(
        NodeServicer(Registrations(), traffic=graph), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", graph
    finally:
        await server.stop(None)


async def test_the_reporter_sends_deltas_and_keeps_what_it_could_not_send(
    control: tuple[str, TrafficGraph],
) -> None:
    address, graph = control
    counter = TrafficCounter()
    reporter = TrafficReporter("n1", counter, BreakerHub(None))
    assert not await reporter.send_once()  # nothing counted: nothing sent
    counter.record("web", [outcome("orders"), outcome("orders", "INTERNAL")])
    assert not await reporter.send_once()  # not connected: kept
    reporter.server = f"127.0.0.1:{free_port()}"  # nobody listens there
    assert not await reporter.send_once()
    assert counter.pending  # put back
    reporter.server = address
    assert await reporter.send_once()
    counter.record("web", [outcome("orders")])
    assert await reporter.send_once()
    [edge] = graph.edges()
    assert (edge.caller, edge.service, edge.node_id) == ("web", "orders", "n1")
    assert edge.codes == {"OK": 2, "INTERNAL": 1}  # deltas, each counted once
    assert reporter.sent == 2


async def test_counts_older_than_the_window_are_dropped_rather_than_sent_as_a_burst(
    control: tuple[str, TrafficGraph],
) -> None:
    address, graph = control
    counter = TrafficCounter()
    old = TrafficCounter()
    old.record("web", [outcome("orders")] * 100)
    span = old.take()
    assert span is not None
    span.start -= KEEP_UNSENT + 1
    counter.put_back(span)
    reporter = TrafficReporter("n1", counter, BreakerHub(None))
    reporter.server = address
    assert not await reporter.send_once()
    assert not counter.pending and graph.edges() == []


async def test_a_control_server_refuses_a_report_past_its_size_limit(
    control: tuple[str, TrafficGraph],
) -> None:
    address, graph = control
    request = node_pb2.ReportTrafficRequest(node_id="n1", latency_bounds_ms=LATENCY_BOUNDS_MS)
    for index in range(MAX_REPORT_EDGES + 1):
        request.edges.add(caller="c", service=f"s{index}", latency_buckets=[0] * BUCKETS)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = node_pb2_grpc.NodeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.ReportTraffic(request, timeout=5)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "501 edges in one request; the limit is 500" in (error.value.details() or "")
        del request.edges[0].latency_buckets[0]
        del request.edges[1:]
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.ReportTraffic(request, timeout=5)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "edges[0].latency_buckets" in (error.value.details() or "")
        request.dropped_calls = 7
        request.edges[0].latency_buckets.append(0)
        reply = await stub.ReportTraffic(request, timeout=5)
        assert reply.accepted == 1
    assert graph.dropped_calls == 7  # what the agent could not count is told
    response = graph.response(admin_pb2.GetTrafficRequest(), None, "s1")
    assert response.dropped_calls == 7


def test_using_a_service_identity_names_the_process_after_it(tmp_path: Path) -> None:
    before = CALLER.identity
    try:
        ProcessIdentity().use("orders", tmp_path)
        assert CALLER.current() == "orders"
    finally:
        CALLER.identity = before
