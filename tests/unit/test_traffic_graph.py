"""The service graph's arithmetic: latency buckets and quantiles (``mesh_core.traffic``) and
the control server's rolling window (``control.traffic.TrafficGraph``): merging, rates,
expiry, the caps, and the sharing between control servers. A clock of the test's own drives
the window."""

from __future__ import annotations

import itertools
import json

import pytest

from control.meshctl.top import top_json, top_lines
from control.traffic import TrafficGraph, breaker_state, health_lookup, warning_state
from mesh.v1 import admin_pb2, node_pb2, traffic_pb2
from mesh_core.errors import ConfigError
from mesh_core.traffic import (
    BUCKETS,
    LATENCY_BOUNDS_MS,
    LATENCY_BOUNDS_US,
    bucket_of_us,
    check_bounds,
    quantile_ms,
)

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def histogram(*latencies_ms: float) -> list[int]:
    counts = [0] * BUCKETS
    for latency in latencies_ms:
        counts[bucket_of_us(round(latency * 1000))] += 1
    return counts


def report(
    node: str,
    *edges: tuple[str, str, dict[str, int], list[int]],
    start: float | None = None,
    breaker: str = "",
) -> node_pb2.ReportTrafficRequest:
    request = node_pb2.ReportTrafficRequest(node_id=node, latency_bounds_ms=LATENCY_BOUNDS_MS)
    if start is not None:
        request.start.FromNanoseconds(int(start * 1e9))
    for caller, service, codes, buckets in edges:
        request.edges.add(
            caller=caller,
            service=service,
            codes=codes,
            latency_buckets=buckets,
            latency_sum_ms=float(sum(buckets)),
            breaker=breaker,
        )
    return request


# -- buckets and quantiles ---------------------------------------------------------------------


def test_bounds_increase_and_buckets_take_the_first_bound_at_least_the_latency() -> None:
    assert all(a < b for a, b in itertools.pairwise(LATENCY_BOUNDS_MS))
    assert all(b / a <= 1.67 for a, b in itertools.pairwise(LATENCY_BOUNDS_MS))
    assert bucket_of_us(0) == 0
    assert bucket_of_us(100) == 0  # exactly on the first bound
    assert bucket_of_us(101) == 1
    assert bucket_of_us(LATENCY_BOUNDS_US[-1]) == BUCKETS - 2
    assert bucket_of_us(LATENCY_BOUNDS_US[-1] + 1) == BUCKETS - 1  # overflow


def test_quantiles_interpolate_within_the_bucket() -> None:
    assert quantile_ms([0] * BUCKETS, 0.5) == 0.0
    # 100 calls in (50, 70] ms: the median halfway, the 99th near the top.
    counts = histogram(*[52.0] * 100)
    assert quantile_ms(counts, 0.5) == pytest.approx(60.0)
    assert quantile_ms(counts, 0.99) == pytest.approx(69.8)
    # 90 fast calls and 10 slow ones: p50 among the fast, p99 among the slow.
    counts = histogram(*[0.4] * 90, *[400.0] * 10)
    assert 0.3 < quantile_ms(counts, 0.5) <= 0.5
    assert 300.0 < quantile_ms(counts, 0.99) <= 500.0
    # Past the last bound: the last bound.
    assert quantile_ms(histogram(100_000.0), 0.5) == LATENCY_BOUNDS_MS[-1]


def test_merged_histograms_give_the_quantiles_of_all_calls() -> None:
    fast, slow = histogram(*[1.2] * 50), histogram(*[120.0] * 50)
    merged = [a + b for a, b in zip(fast, slow, strict=True)]
    assert quantile_ms(merged, 0.25) < 1.5
    assert quantile_ms(merged, 0.99) > 100.0


def test_other_bounds_are_refused_by_name() -> None:
    check_bounds(LATENCY_BOUNDS_MS)
    with pytest.raises(ConfigError, match="latency_bounds_ms"):
        check_bounds([1.0, 2.0])


# -- the window --------------------------------------------------------------------------------


def test_an_edge_adds_its_reports_and_reads_rate_errors_and_quantiles() -> None:
    clock = Clock()
    graph = TrafficGraph(clock=clock)
    start = clock.now
    for _ in range(6):  # six reports, 5 s apart, 100 calls each, 10 failed
        clock.now += 5
        graph.add(
            report(
                "n1",
                ("web", "orders", {"OK": 90, "UNAVAILABLE": 10}, histogram(*[52.0] * 100)),
                start=clock.now - 5,
            )
        )
    [edge] = graph.edges()
    assert (edge.caller, edge.service, edge.node_id) == ("web", "orders", "n1")
    assert edge.calls == 600
    assert edge.codes == {"OK": 540, "UNAVAILABLE": 60}
    assert edge.error_rate == pytest.approx(0.1)
    assert edge.seconds == pytest.approx(clock.now - start)
    assert edge.rps == pytest.approx(20.0)
    assert edge.p50_ms == pytest.approx(60.0)
    assert edge.mean_ms == pytest.approx(1.0)  # latency_sum_ms / calls as reported


def test_edges_leave_with_the_window_and_rates_decay_meanwhile() -> None:
    clock = Clock()
    graph = TrafficGraph(window=60, slot=5, clock=clock)
    graph.add(
        report("n1", ("web", "orders", {"OK": 100}, histogram(*[1.0] * 100)), start=clock.now - 5)
    )
    first = graph.edges()[0].rps
    clock.now += 30
    later = graph.edges()[0].rps
    assert later < first
    clock.now += 30  # the report's slot is past the window now
    assert graph.edges() == []
    assert graph.export("s1").edges == []


def test_the_window_keeps_at_most_max_edges_and_counts_the_rest() -> None:
    clock = Clock()
    graph = TrafficGraph(max_edges=3, clock=clock)
    edges = [(f"c{i}", "orders", {"OK": 1}, histogram(1.0)) for i in range(5)]
    assert graph.add(report("n1", *edges)) == 3
    assert graph.dropped_edges == 2
    assert graph.add(report("n1", *edges[:3])) == 3  # known edges are still counted
    assert len(graph.edges()) == 3
    clock.now += 70  # all gone: room again
    assert graph.add(report("n1", *edges[3:])) == 2


def test_malformed_reports_are_refused_naming_the_field() -> None:
    graph = TrafficGraph()
    bad = report("n1", ("web", "orders", {"OK": 1}, [1, 2, 3]))
    with pytest.raises(ConfigError, match=r"edges\[0\]\.latency_buckets: 3 entries"):
        graph.add(bad)
    with pytest.raises(ConfigError, match=r"edges\[0\]: caller and service"):
        graph.add(report("n1", ("", "orders", {"OK": 1}, histogram(1.0))))
    wrong_bounds = report("n1", ("web", "orders", {"OK": 1}, histogram(1.0)))
    del wrong_bounds.latency_bounds_ms[-1]
    with pytest.raises(ConfigError, match="latency_bounds_ms"):
        graph.add(wrong_bounds)
    assert graph.edges() == []  # nothing of a refused report is kept


def test_filters_and_order() -> None:
    graph = TrafficGraph()
    graph.add(
        report(
            "n2",
            ("web", "orders", {"OK": 1}, histogram(1.0)),
            ("api", "users", {"OK": 1}, histogram(1.0)),
        )
    )
    graph.add(report("n1", ("web", "orders", {"OK": 1}, histogram(1.0))))
    keys = [(e.service, e.caller, e.node_id) for e in graph.edges()]
    assert keys == [("orders", "web", "n1"), ("orders", "web", "n2"), ("users", "api", "n2")]
    assert [e.node_id for e in graph.edges(service="orders", caller="web")] == ["n1", "n2"]
    assert graph.edges(service="nope") == []


def test_servers_share_their_windows_and_add_up_a_node_that_moved() -> None:
    clock = Clock()
    a, b = TrafficGraph(clock=clock), TrafficGraph(clock=clock)
    a.add(report("n1", ("web", "orders", {"OK": 30}, histogram(*[1.0] * 30)), start=clock.now - 5))
    clock.now += 5
    # n1 moved to server b; n2 reports to b only.
    b.add(report("n1", ("web", "orders", {"INTERNAL": 10}, histogram(*[100.0] * 10))))
    b.add(report("n2", ("api", "users", {"OK": 5}, histogram(*[2.0] * 5))))
    record = traffic_pb2.TrafficWindow.FromString(a.export("A").SerializeToString())
    b.set_remote([record, b.export("B")], own="B")  # its own record is skipped
    edges = {(e.node_id, e.service): e for e in b.edges()}
    moved = edges[("n1", "orders")]
    assert moved.calls == 40
    assert moved.error_rate == pytest.approx(0.25)
    assert moved.seconds == pytest.approx(10.0)  # from a's report's start
    assert edges[("n2", "users")].calls == 5
    # A stale remote record's edges stop counting once they are older than the window.
    clock.now += 120
    b.set_remote([record], own="B")
    assert b.edges() == []


def test_a_remote_record_with_other_bounds_is_ignored() -> None:
    graph = TrafficGraph()
    record = traffic_pb2.TrafficWindow(server_id="A", latency_bounds_ms=[1.0, 2.0])
    record.edges.add(node_id="n1", counts=traffic_pb2.TrafficCounts(caller="c", service="s"))
    graph.set_remote([record], own="B")
    assert graph.edges() == []


# -- breaker and warning from the node's health ----------------------------------------------


def test_breaker_and_warning_come_from_the_nodes_health() -> None:
    health = node_pb2.NodeHealth()
    health.breakers.add(service="orders", state="open")
    health.warnings.add(service="orders", state="degrading")
    assert breaker_state("orders", "closed", health) == "open"
    assert breaker_state("users", "closed", health) == "closed"  # has one, not listed
    assert breaker_state("users", "", health) == ""  # no breaker policy
    assert breaker_state("orders", "half_open", None) == "half_open"  # health unknown
    assert warning_state("orders", health) == "degrading"
    assert warning_state("users", health) == ""
    graph = TrafficGraph()
    graph.add(report("n1", ("web", "orders", {"OK": 1}, histogram(1.0)), breaker="closed"))
    [edge] = graph.edges(lambda node: health if node == "n1" else None)
    assert (edge.breaker, edge.warning) == ("open", "degrading")


def test_health_lookup_prefers_this_servers_report_then_the_shared_record() -> None:
    mine = node_pb2.NodeHealth(status="SERVING")
    theirs = admin_pb2.NodeStatus(node_id="n2", health=node_pb2.NodeHealth(status="NOT_SERVING"))
    lookup = health_lookup(lambda node: mine if node == "n1" else None, {"n2": theirs})
    assert lookup("n1") is mine
    found = lookup("n2")
    assert found is not None and found.status == "NOT_SERVING"
    assert lookup("n3") is None


# -- meshctl top's rendering -------------------------------------------------------------------


def test_top_renders_a_row_per_edge_and_says_what_it_covers() -> None:
    graph = TrafficGraph()
    graph.add(
        report("n1", ("web", "orders", {"OK": 3, "INTERNAL": 1}, histogram(1.0, 1.0, 2.0, 60.0)))
    )
    response = graph.response(admin_pb2.GetTrafficRequest(), None, "s1")
    lines = top_lines(response)
    assert lines[0].split()[:3] == ["CALLER", "→", "SERVICE"]
    assert lines[1].startswith("web → orders") and "25.0" in lines[1].split()
    assert lines[-1] == "1 edge(s) over the last 60s, from server s1"
    [document] = json.loads(top_json(response))
    assert document["error_rate"] == 0.25 and document["codes"] == {"INTERNAL": 1, "OK": 3}
    empty = admin_pb2.GetTrafficResponse(window_seconds=60)
    assert top_lines(empty) == ["no calls reported over the last 60s"]
    assert json.loads(top_json(empty)) == []


def test_slots_leave_one_by_one_and_take_their_calls_with_them() -> None:
    clock = Clock(1_000_000.0)  # a slot boundary
    graph = TrafficGraph(window=60, slot=5, clock=clock)
    graph.add(report("n1", ("web", "orders", {"OK": 10}, histogram(*[1.0] * 10)), start=clock.now))
    clock.now += 30
    graph.add(
        report("n1", ("web", "orders", {"INTERNAL": 5}, histogram(*[100.0] * 5)), start=clock.now)
    )
    [both] = graph.edges()
    assert both.codes == {"OK": 10, "INTERNAL": 5}
    clock.now += 31  # the first slot left the window, the second is still in
    [edge] = graph.edges()
    assert edge.codes == {"INTERNAL": 5} and edge.calls == 5
    assert edge.error_rate == 1.0
    assert sum(edge.latency_buckets) == 5 and edge.p50_ms > 70  # the fast calls are gone
    assert edge.seconds == pytest.approx(31.0)  # from the start of what is left
    clock.now += 30
    assert graph.edges() == []
