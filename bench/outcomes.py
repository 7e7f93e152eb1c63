"""Section ``outcomes``: what the node agent spends on each reported call outcome, in
process: ``BreakerHub.record`` (what ``ReportOutcomes`` calls with every batch a local
process sends), and what the early warnings add to it.

Batches of 64 ``mesh.v1.CallOutcome`` (3 % failing, latencies 1-250 ms) for one service
whose breaker judges the failure rate, recorded by three hubs, interleaved, each repeat
timing every variant once:

* ``no_warnings``: the hub's risk board never told of the service (its ``record`` looks the
  service up and finds nothing), the cost before early warnings;
* ``breaker_trend``: the service judged on its breaker's trend only;
* ``slo``: also an objective with success and two latency quantiles (three latency targets
  counted per outcome).

``counts_add`` times the early warnings' own share alone: ``SlotCounts.add`` of the ``slo``
variant (three latency targets) over the same outcomes, already decoded.
``evaluate_100_services`` is one evaluation of the risk board holding 100 services like
``slo`` (the timer runs it every 0.5 s). Figures are ns per outcome (µs per evaluation), the
median and the best of the repeats; compare the ratios (``best_vs_no_warnings``: of the
best, which other work on the machine disturbs least).
"""

from __future__ import annotations

import random
import statistics
import time

from bench import Options, Row, ratio, section
from mesh.v1 import agent_pb2, config_pb2
from mesh_agent.daemon.breakers.policy import Outcome
from mesh_agent.daemon.breakers.risk import RiskPolicy
from mesh_agent.daemon.breakers.service import BreakerHub
from mesh_agent.daemon.breakers.slots import SlotCounts
from mesh_agent.daemon.metrics import AgentMetrics

BATCH = 64
SERVICE = "orders"


def _policy(slo: bool) -> config_pb2.Policy:
    policy = config_pb2.Policy()
    breaker = policy.circuit_breaker
    breaker.failure_rate = 0.5
    breaker.window.FromSeconds(10)
    breaker.min_requests = 20
    if slo:
        policy.slo.success = 99.0
        policy.slo.latency.p99.FromMilliseconds(300)
        policy.slo.latency.p50.FromMilliseconds(200)
        breaker.slow_call.threshold.FromSeconds(1)
        breaker.slow_call.rate = 0.8
    return policy


def _hub(judged: bool, slo: bool) -> BreakerHub:
    hub = BreakerHub(None, metrics=AgentMetrics())
    policy = _policy(slo)
    hub.board.set_policy(SERVICE, policy.circuit_breaker)
    if judged:
        hub.risk.set_policies({SERVICE: policy})
    return hub


def _batches(count: int, rng: random.Random) -> list[list[agent_pb2.CallOutcome]]:
    batches = []
    for _ in range(count):
        now_ms = int(time.time() * 1000)
        batches.append(
            [
                agent_pb2.CallOutcome(
                    service=SERVICE,
                    code="UNAVAILABLE" if rng.random() < 0.03 else "OK",
                    latency_us=rng.randint(1_000, 250_000),
                    end_unix_ms=now_ms,
                )
                for _ in range(BATCH)
            ]
        )
    return batches


def _time_record(hub: BreakerHub, batches: list[list[agent_pb2.CallOutcome]]) -> float:
    """ns per outcome over ``batches``."""
    t0 = time.perf_counter_ns()
    for batch in batches:
        hub.record(batch)
    return (time.perf_counter_ns() - t0) / (len(batches) * BATCH)


def _time_counts(counts: SlotCounts, batches: list[list[agent_pb2.CallOutcome]]) -> float:
    decoded = [
        [Outcome(o.code, o.latency_us / 1e6, o.end_unix_ms / 1000) for o in batch]
        for batch in batches
    ]
    t0 = time.perf_counter_ns()
    for batch in decoded:
        counts.add(batch)
    return (time.perf_counter_ns() - t0) / (len(batches) * BATCH)


def _evaluate_us(repeats: int) -> list[float]:
    hub = BreakerHub(None, metrics=AgentMetrics())
    names = [f"svc-{i}" for i in range(100)]
    hub.risk.set_policies({name: _policy(slo=True) for name in names})
    rng = random.Random(1)
    for name in names:
        for batch in _batches(3, rng):
            for outcome in batch:
                outcome.service = name
            hub.record(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        hub.risk.evaluate()
        times.append((time.perf_counter_ns() - t0) / 1000)
    return times


@section("outcomes")
def run(options: Options) -> list[Row]:
    repeats, per_repeat = (5, 20) if options.quick else (30, 100)
    rng = random.Random(7)
    variants = {
        "no_warnings": _hub(judged=False, slo=False),
        "breaker_trend": _hub(judged=True, slo=False),
        "slo": _hub(judged=True, slo=True),
    }
    times: dict[str, list[float]] = {name: [] for name in [*variants, "counts_add"]}
    found = RiskPolicy.from_proto(_policy(slo=True))
    assert found is not None
    counts = SlotCounts(found.slot, found.span, found.targets, found.failure_codes)
    for _ in range(repeats):
        batches = _batches(per_repeat, rng)
        for name, hub in variants.items():
            times[name].append(_time_record(hub, batches))
        times["counts_add"].append(_time_counts(counts, batches))
    base, best = statistics.median(times["no_warnings"]), min(times["no_warnings"])
    rows: list[Row] = []
    for name, values in times.items():
        median = statistics.median(values)
        rows.append(
            {
                "variant": name,
                "ns_per_outcome": round(median),
                "best_ns": round(min(values)),
                "vs_no_warnings": ratio(median, base),
                "best_vs_no_warnings": ratio(min(values), best),
            }
        )
    evaluations = _evaluate_us(repeats)
    rows.append(
        {
            "variant": "evaluate_100_services",
            "evaluate_us": round(statistics.median(evaluations), 1),
            "best_us": round(min(evaluations), 1),
        }
    )
    return rows
