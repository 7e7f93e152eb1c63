"""The ``agent`` section's health-check table: what an idle agent's active health checks
cost, next to a bare grpc.aio client making the same checks, all in one window.

* Two health backends run in the bench process (grpc.aio, ``grpc.health.v1``): they answer
  SERVING to any health service name and count the Check calls by the name's prefix, so each
  checking process's checks are counted where they land.
* Agent *shared*: ``SHARED`` services whose two endpoints are the two backends, all with the
  same health service name (""): 2 targets, so 2 checks per interval, each result fanned out
  to ``SHARED`` (service, endpoint) pairs.
* Agent *distinct*: ``DISTINCT`` services on the same two backends, each with its own health
  service name (``hc-NNN``): 2 x ``DISTINCT`` targets, as many checks per interval.
* The floor: ``bench._health_client`` making the distinct agent's checks (its own names,
  ``bare-NNN``), on the checker's tick; and the same without the tick (a loop per target
  that wakes for each check).

Every agent holds its services through a local ADS stream (CDS and EDS); once every endpoint
is healthy, and a settle, the window: CPU (``utime+stime`` of ``/proc``) of each process and
the checks each backend counted for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import Row, ratio
from bench._ads_client import ads_client
from bench._procs import BenchError, Proc, Processes
from mesh_xds.testing import AdsClient
from mesh_xds.types import CLUSTER, ENDPOINT

SHARED = 1000
DISTINCT = 100
INTERVAL_S = 5.0
TICK_S = 0.25  # the checker's TICK
HOLD_TIMEOUT = 60.0
HEALTHY_TIMEOUT = 30.0
TABLE = "health checks (idle agents, 5 s interval, one window)"


class CountingHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """SERVING to every name; counts the calls by prefix (the name up to its last ``-``)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    async def Check(self, request: Any, context: Any) -> Any:
        key = request.service.rsplit("-", 1)[0]
        self.counts[key] = self.counts.get(key, 0) + 1
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@dataclass
class Backends:
    servers: list[grpc.aio.Server] = field(default_factory=list)
    health: list[CountingHealth] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for servicer in self.health:
            for key, n in servicer.counts.items():
                total[key] = total.get(key, 0) + n
        return total


@contextlib.asynccontextmanager
async def backends(count: int = 2) -> AsyncIterator[Backends]:
    out = Backends()
    try:
        for _ in range(count):
            server = grpc.aio.server()
            servicer = CountingHealth()
            health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            out.servers.append(server)
            out.health.append(servicer)
            out.addresses.append(f"127.0.0.1:{port}")
        yield out
    finally:
        for server in out.servers:
            await server.stop(grace=None)


def health_documents(addresses: Sequence[str]) -> str:
    """The services of both agents, as YAML documents."""
    check = f"interval: {INTERVAL_S:g}s, timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 1"
    endpoints = "\n".join(f"  - address: {a}" for a in addresses)
    docs = [
        f"name: {name}\nendpoints:\n{endpoints}\npolicy:\n  health_check: {{{check}}}"
        for name in shared_names()
    ]
    docs += [
        f"name: {name}\nendpoints:\n{endpoints}\npolicy:\n"
        f"  health_check: {{{check}, service_name: {name}}}"
        for name in distinct_names()
    ]
    return "\n---\n".join(docs)


def shared_names() -> list[str]:
    return [f"shared-{i:04d}" for i in range(SHARED)]


def distinct_names() -> list[str]:
    return [f"hc-{i:03d}" for i in range(DISTINCT)]


async def hold(target: str, names: Sequence[str], node: str) -> AdsClient:
    """A local stream that makes the agent at ``target`` hold ``names`` (clusters, endpoints,
    and the policies that come with them); returned open, to be closed by the caller."""
    client = ads_client(target, node)
    await client.__aenter__()
    client.subscribe(CLUSTER, names)
    client.subscribe(ENDPOINT, names)

    def held(c: AdsClient) -> bool:
        got = c.of_type(ENDPOINT)
        return bool(got) and len(got[-1].resources) >= len(names)

    try:
        await client.wait_for(held, HOLD_TIMEOUT)
    except TimeoutError:
        await client.__aexit__(None, None, None)
        raise BenchError(f"{target}: does not hold {len(names)} services") from None
    return client


@dataclass
class Checker:
    """One process that checks, what it is, and the backends' count key of its checks."""

    label: str
    proc: Proc
    key: str
    targets: int
    results_per_round: int


def _rows(
    checkers: Sequence[Checker],
    cpu: dict[str, float],
    checks: dict[str, int],
    rss: Callable[[int], float],
    window: float,
) -> list[Row]:
    rows: list[Row] = []
    for c in checkers:
        n = checks.get(c.key, 0)
        rows.append(
            {
                "table": TABLE,
                "checker": c.label,
                "targets": c.targets,
                "results_per_interval": c.results_per_round,
                "checks_in_window": n,
                "checks_per_s": round(n / window, 2),
                "cpu_pct": round(cpu[c.label] / window * 100, 2),
                "cpu_ms_per_check": round(cpu[c.label] * 1000 / n, 3) if n else None,
                "rss_mib": rss(c.proc.popen.pid),
                "window_s": round(window, 1),
            }
        )
    return rows


async def health_table(
    procs: Processes,
    backend: Backends,
    start_agent: Callable[[str], Any],
    cpu_seconds: Callable[[int], float],
    rss_mib: Callable[[int], float],
    agent_status: Callable[[str], Any],
    window: float,
    settle: float,
) -> list[Row]:
    """Starts the two agents and the two bare clients, waits for every check to run, and
    measures them side by side over one window."""
    (shared, shared_target), (distinct, distinct_target) = await asyncio.gather(
        start_agent("agent-shared"), start_agent("agent-distinct")
    )
    clients: list[AdsClient] = []
    bare: dict[str, Proc] = {}
    try:
        clients = list(
            await asyncio.gather(
                hold(shared_target, shared_names(), "bench-shared"),
                hold(distinct_target, distinct_names(), "bench-distinct"),
            )
        )
        for prefix, tick in (("bare", TICK_S), ("free", 0.0)):
            ready = procs.workdir / f"bare-{prefix}.ready"
            bare[prefix] = procs.python(
                f"bare-{prefix}",
                "bench._health_client",
                *(f"--target={a}" for a in backend.addresses),
                f"--names={DISTINCT}",
                f"--prefix={prefix}",
                f"--interval={INTERVAL_S:g}",
                f"--tick={tick:g}",
                f"--ready-file={ready}",
            )
        for target, count in ((shared_target, SHARED * 2), (distinct_target, DISTINCT * 2)):
            await _all_healthy(agent_status, target, count)
        await asyncio.sleep(settle)
        checkers = [
            Checker(f"agent, {SHARED} services on 2 shared backends", shared, "", 2, 2 * SHARED),
            Checker(
                f"agent, {DISTINCT} services x 2 backends, own health service name each",
                distinct,
                "hc",
                2 * DISTINCT,
                2 * DISTINCT,
            ),
            Checker(
                "bare grpc.aio client, the same checks, on the tick",
                bare["bare"],
                "bare",
                2 * DISTINCT,
                0,
            ),
            Checker(
                "bare grpc.aio client, the same checks, no tick",
                bare["free"],
                "free",
                2 * DISTINCT,
                0,
            ),
        ]
        for c in checkers:
            if not c.proc.alive:
                raise BenchError(f"{c.proc.name} died:\n{c.proc.errors()}")
        loop = asyncio.get_running_loop()
        cpu0 = {c.label: cpu_seconds(c.proc.popen.pid) for c in checkers}
        counts0, t0 = backend.counts(), loop.time()
        await asyncio.sleep(window)
        cpu1 = {c.label: cpu_seconds(c.proc.popen.pid) for c in checkers}
        counts1, t1 = backend.counts(), loop.time()
        cpu = {label: cpu1[label] - cpu0[label] for label in cpu0}
        checks = {k: counts1.get(k, 0) - counts0.get(k, 0) for k in counts1}
        rows = _rows(checkers, cpu, checks, rss_mib, t1 - t0)
    finally:
        for client in clients:
            await client.__aexit__(None, None, None)
        for proc in (*bare.values(), distinct, shared):
            procs.stop(proc)
    agent_row, bare_row = rows[1], rows[2]
    rows.append(
        {
            "table": "side by side (a / b, medians)",
            "compare": "CPU per check, agent (distinct targets) / bare client on the tick",
            "a_ms": agent_row["cpu_ms_per_check"],
            "b_ms": bare_row["cpu_ms_per_check"],
            "a_minus_b_ms": round(agent_row["cpu_ms_per_check"] - bare_row["cpu_ms_per_check"], 3)
            if agent_row["cpu_ms_per_check"] and bare_row["cpu_ms_per_check"]
            else None,
            "ratio": ratio(agent_row["cpu_ms_per_check"] or 0, bare_row["cpu_ms_per_check"] or 0),
        }
    )
    return rows


async def _all_healthy(agent_status: Callable[[str], Any], target: str, count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HEALTHY_TIMEOUT
    while True:
        status = await agent_status(target)
        healthy = sum(1 for e in status.endpoint_health if e.state == "healthy")
        if healthy >= count:
            return
        if loop.time() > deadline:
            raise BenchError(f"{target}: {healthy}/{count} endpoints healthy")
        await asyncio.sleep(0.2)
