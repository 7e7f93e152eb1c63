"""Section ``graph``: what the service graph costs where it runs per call or per report.

In process, side by side, nothing mocked but the network (the parts are the agent's and the
control server's own classes):

* ``agent record path``: what ``AgentServicer.ReportOutcomes`` does with each batch, with and
  without the service graph's hook. Batches of 512 outcomes (3 services, 5% failures,
  latencies 0.3-5 ms), parsed from the wire bytes before each use as the servicer receives
  them; ``BreakerHub.record`` (breakers with a policy) alone, then with
  ``TrafficCounter.record`` after it, alternating blocks of 20 batches, the order reversed
  every other round. ns per outcome, medians over rounds, and their ratio.
* ``control window``: ``TrafficGraph.add`` of a report of 500 edges (the most a request
  carries) and ``TrafficGraph.edges`` over a full window of 2000 edges x 12 slots (the most
  one server keeps), µs per call.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

from bench import Options, Row, ratio, section
from control.traffic import MAX_EDGES, TrafficGraph
from mesh.v1 import agent_pb2, config_pb2, node_pb2
from mesh_agent.daemon.breakers.service import BreakerHub
from mesh_agent.daemon.traffic import TrafficCounter
from mesh_core.traffic import BUCKETS, LATENCY_BOUNDS_MS, MAX_REPORT_EDGES

BATCH = 512
SERVICES = ("orders", "users", "payments")


def _batch_bytes() -> bytes:
    rnd = random.Random(1)
    request = agent_pb2.ReportOutcomesRequest(client_id="pid-1", caller="web")
    now = int(time.time() * 1000)
    for _ in range(BATCH):
        request.outcomes.add(
            service=rnd.choice(SERVICES),
            code="OK" if rnd.random() < 0.95 else "UNAVAILABLE",
            latency_us=rnd.randint(300, 5000),
            end_unix_ms=now,
        )
    return request.SerializeToString()


def _hub() -> BreakerHub:
    hub = BreakerHub(None)
    policy = config_pb2.CircuitBreakerPolicy(
        failure_rate=0.9, min_requests=20, consecutive_failures=100_000
    )
    policy.window.FromSeconds(10)
    policy.open_for.FromSeconds(30)
    for service in SERVICES:
        hub.board.set_policy(service, policy)
    return hub


def _ns_per(fn: Callable[[], None], repeat: int, per: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(repeat):
        fn()
    return (time.perf_counter_ns() - started) / repeat / per


def record_path(rounds: int) -> list[Row]:
    wire = _batch_bytes()
    hub, counter = _hub(), TrafficCounter()
    parse = agent_pb2.ReportOutcomesRequest.FromString

    def breakers() -> None:
        batch = parse(wire)
        hub.record(batch.outcomes)

    def with_graph() -> None:
        batch = parse(wire)
        hub.record(batch.outcomes)
        counter.record(batch.caller or batch.client_id, batch.outcomes)

    samples: dict[str, list[float]] = {"breakers": [], "breakers + graph": []}
    variants = [("breakers", breakers), ("breakers + graph", with_graph)]
    for index in range(rounds):
        for name, fn in variants if index % 2 == 0 else list(reversed(variants)):
            samples[name].append(_ns_per(fn, 20, BATCH))
        counter.take()
    base = statistics.median(samples["breakers"])
    graph = statistics.median(samples["breakers + graph"])
    return [
        {
            "table": "agent record path (ns per outcome, medians over rounds)",
            "breakers_ns": round(base, 1),
            "breakers_and_graph_ns": round(graph, 1),
            "graph_ns": round(graph - base, 1),
            "x_breakers": ratio(graph, base),
            "rounds": rounds,
        }
    ]


def _report(node: str, callers: int, services: int) -> node_pb2.ReportTrafficRequest:
    request = node_pb2.ReportTrafficRequest(node_id=node, latency_bounds_ms=LATENCY_BOUNDS_MS)
    buckets = [0] * BUCKETS
    buckets[10] = 90
    buckets[20] = 10
    for caller in range(callers):
        for service in range(services):
            request.edges.add(
                caller=f"c{caller}",
                service=f"s{service}",
                codes={"OK": 95, "UNAVAILABLE": 5},
                latency_buckets=buckets,
                latency_sum_ms=500.0,
                breaker="closed",
            )
    return request


def control_window(repeat: int) -> list[Row]:
    clock = [1_000_000.0]
    graph = TrafficGraph(clock=lambda: clock[0])
    reports = [_report(f"n{n}", 20, MAX_REPORT_EDGES // 20) for n in range(MAX_EDGES // 500)]
    add_us = []
    for _ in range(12):  # 12 slots of 5 s, each with every node's report
        for request in reports:
            started = time.perf_counter_ns()
            graph.add(request)
            add_us.append((time.perf_counter_ns() - started) / 1000)
        clock[0] += 5.0
    clock[0] -= 5.0
    edges = len(graph.edges())
    read_us = [_ns_per(graph.edges, 1, 1) / 1000 for _ in range(repeat)]
    return [
        {
            "table": "control window (µs per call)",
            "add_500_edges_us": round(statistics.median(add_us), 1),
            "edges_us": round(statistics.median(read_us), 1),
            "edges": edges,
            "slots": 12,
        }
    ]


@section("graph")
def run(options: Options) -> list[Row]:
    return [*record_path(6 if options.quick else 30), *control_window(2 if options.quick else 5)]
