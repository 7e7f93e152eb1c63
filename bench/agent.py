"""Section ``agent``: what the node agent (``python -m mesh_agent run``) costs and adds.

Real processes on loopback and a unix socket; the ADS clients run in this process
(``mesh_xds.testing.AdsClient`` through ``bench/_ads_client.py``, grpc.aio) and stamp
each response with ``time.time()`` on arrival.

* ``footprint``: the agent holding 100 services (LDS, RDS, CDS, EDS: 100 each). A local ADS
  stream on the agent's socket subscribes to the 100 names of each type, the agent subscribes
  upstream to match; once ``GetAgentStatus`` shows 100 of each type, the agent's RSS
  (``/proc/PID/status`` VmRSS) and idle CPU (``/proc/PID/stat`` utime+stime over a window, %
  of one core) are read, with the control server's RSS for reference, and beside them, read
  at the same moment, the RSS of a process that only imports grpc and of one that also serves
  and calls grpc.aio (``bench._grpc_only``, the floors).
* ``health checks``: what idle agents' active health checks cost, 1,000 services on 2 shared
  backends and 200 distinct targets, next to a bare grpc.aio client making the same checks,
  in one window (``bench/_health_checks.py``).
* ``start to first LDS``: from ``Popen`` of the agent to the first LDS response holding a
  listener on a local ADS stream (opened as soon as the socket file exists). Warm: the state
  dir of the footprint run, the agent's control server killed. Cold: an empty state dir, the
  control server up. Interleaved.
* ``push to client``: control server with ``--debounce 0s`` holding echo and 1000 services
  (300 with ``--quick``); ADS streams through three agents (holding echo only, 101 services,
  1001) and one straight to the control server. Each repetition changes echo's endpoint with
  ``ApplyServices`` and times from just before the RPC to each stream's new EDS, so all paths
  see the same push; each agent's CPU time over the pushes (``/proc/PID/task/*/schedstat``),
  per push, with the echo-only agent as the floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from envoy.config.endpoint.v3 import endpoint_pb2

from bench import Options, Row, _procs, ratio, section, summary
from bench import _health_checks as health_checks
from bench._ads_client import ads_client
from bench._procs import BenchError, Proc, Processes
from control.config import load_documents
from mesh.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, config_pb2
from mesh_xds.testing import AdsClient
from mesh_xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE

SERVICES = 100
LARGE = 1000  # services the largest relay agent holds (besides echo) in a full run
HELD_TYPES = (LISTENER, ROUTE, CLUSTER, ENDPOINT)
NODE_ID = "n1"
START_TIMEOUT = 30.0
HOLD_TIMEOUT = 30.0
PUSH_TIMEOUT = 10.0
SETTLE = 0.05  # seconds between a push being seen and the next apply
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Plan:
    idle_window: float  # seconds of idle CPU measured
    settle: float  # seconds after the agent holds everything, before measuring
    starts: int  # warm and cold starts each
    pushes: int
    large: int  # services the largest relay agent holds, besides echo
    health_window: float  # seconds of health checks measured: a round of every target at least

    @classmethod
    def of(cls, quick: bool) -> Plan:
        interval = health_checks.INTERVAL_S
        if quick:
            return cls(2.0, 0.5, 2, 5, 300, interval * 1.1 + 0.3)
        return cls(10.0, 1.5, 5, 30, LARGE, interval * 3)


# ------------------------------------------------------------------------------------------
# Helpers: services, processes, /proc
# ------------------------------------------------------------------------------------------


def service_names(count: int = SERVICES) -> list[str]:
    return [f"svc-{i:03d}" for i in range(count)]


def _idle_address(k: int) -> str:
    """Endpoint k of the no-health-check services: 127.0.0.x:5005x (nothing listens)."""
    return f"127.0.0.{k % 100 + 1}:{50050 + k // 100}"


def build_services(
    names: Sequence[str], endpoints: Callable[[int], list[str]]
) -> list[config_pb2.Service]:
    documents = []
    for i, name in enumerate(names):
        lines = [f"name: {name}", "endpoints:"]
        lines += [f"  - address: {address}" for address in endpoints(i)]
        lines += ["policy:", "  timeout: 5s"]
        documents.append("\n".join(lines))
    return load_documents("\n---\n".join(documents), "bench agent services")


def echo_service(port: int) -> config_pb2.Service:
    return build_services(["echo"], lambda _: [f"127.0.0.1:{port}"])[0]


async def start_ready(
    procs: Processes, name: str, module: str, *args: str, timeout: float = START_TIMEOUT
) -> tuple[Proc, str]:
    return await _procs.start_ready(procs, name, module, *args, timeout=timeout)


def agent_args(control: str, socket: Path, state_dir: Path) -> list[str]:
    return [
        "run",
        "--control",
        control,
        "--node-id",
        NODE_ID,
        "--socket",
        str(socket),
        "--state-dir",
        str(state_dir),
    ]


def _status_field(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise BenchError(f"no {key} in /proc/{pid}/status")


def rss_mib(pid: int) -> float:
    return round(int(_status_field(pid, "VmRSS").split()[0]) / 1024, 1)


def threads(pid: int) -> int:
    return int(_status_field(pid, "Threads"))


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of the process, in ns (``/proc/PID/task/*/schedstat``: ns
    resolution, where ``/proc/PID/stat`` counts clock ticks of 10 ms)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def apply(
    stub: admin_pb2_grpc.MeshAdminServiceStub, services: list[config_pb2.Service]
) -> float:
    """Applies ``services``; returns the RPC's duration in ms."""
    t0 = time.perf_counter()
    await stub.ApplyServices(admin_pb2.ApplyServicesRequest(services=services), timeout=30)
    return (time.perf_counter() - t0) * 1000


async def agent_status(target: str) -> agent_pb2.GetAgentStatusResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        status: agent_pb2.GetAgentStatusResponse = await stub.GetAgentStatus(
            agent_pb2.GetAgentStatusRequest(), timeout=5
        )
        return status


async def wait_held(target: str, count: int, timeout: float = HOLD_TIMEOUT) -> None:
    """Waits until the agent's status shows ``count`` resources of each of HELD_TYPES."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        while True:
            status = await stub.GetAgentStatus(agent_pb2.GetAgentStatusRequest(), timeout=5)
            held = {t.type_url: t.resources for t in status.types}
            if all(held.get(t, 0) >= count for t in HELD_TYPES):
                return
            if time.monotonic() > deadline:
                short = {t.rsplit(".", 1)[-1]: n for t, n in held.items()}
                raise BenchError(f"agent holds {short} after {timeout}s, expected {count} each")
            await asyncio.sleep(0.05)


def subscribe_all(client: AdsClient, names: Sequence[str]) -> None:
    for type_url in (LISTENER, CLUSTER, ROUTE, ENDPOINT):
        client.subscribe(type_url, names)


def _client_holds(client: AdsClient, count: int) -> bool:
    for type_url in HELD_TYPES:
        got = client.of_type(type_url)
        if not got or len(got[-1].resources) < count:
            return False
    return True


# ------------------------------------------------------------------------------------------
# 1. Footprint
# ------------------------------------------------------------------------------------------


async def footprint(
    procs: Processes,
    control: Proc,
    control_address: str,
    variant: str,
    floors: tuple[Proc, Proc],
    plan: Plan,
) -> tuple[Row, Path]:
    """Agent holding SERVICES services, idle; returns the row and the agent's state dir."""
    workdir = procs.workdir
    slug = "plain"
    socket = workdir / f"agent-{slug}.sock"
    state_dir = workdir / f"state-{slug}"
    names = service_names()
    t0 = time.perf_counter()
    agent, target = await start_ready(
        procs, f"agent-{slug}", "mesh_agent", *agent_args(control_address, socket, state_dir)
    )
    ready_ms = (time.perf_counter() - t0) * 1000
    try:
        pid = agent.popen.pid
        rss_empty = rss_mib(pid)
        async with ads_client(target, "bench-local") as client:
            t1 = time.perf_counter()
            subscribe_all(client, names)
            await wait_held(target, SERVICES)
            await client.wait_for(lambda c: _client_holds(c, SERVICES), HOLD_TIMEOUT)
            hold_ms = (time.perf_counter() - t1) * 1000
            await asyncio.sleep(plan.settle)
            rss_before = rss_mib(pid)
            pushes_before = len(client.received)
            cpu0, control_cpu0, m0 = (
                cpu_seconds(pid),
                cpu_seconds(control.popen.pid),
                time.monotonic(),
            )
            await asyncio.sleep(plan.idle_window)
            cpu1, control_cpu1, m1 = (
                cpu_seconds(pid),
                cpu_seconds(control.popen.pid),
                time.monotonic(),
            )
            window = m1 - m0
            rss_after = rss_mib(pid)
            rss_grpc_only, rss_grpc_serving = (rss_mib(p.popen.pid) for p in floors)
            pushes = len(client.received) - pushes_before
            status = await agent_status(target)
            if not agent.alive:
                raise BenchError(f"agent-{slug} died:\n{agent.errors()}")
        cpu_pct = (cpu1 - cpu0) / window * 100
        healthy = sum(1 for e in status.endpoint_health if e.state == "healthy")
        # The journal; an agent of before it kept one file rewritten whole.
        state_file = next(
            (f for f in (state_dir / "config.journal", state_dir / "config.json") if f.exists()),
            state_dir / "config.journal",
        )
        row: Row = {
            "table": f"footprint ({SERVICES} services held, idle)",
            "variant": variant,
            "agent_rss_mib": rss_after,
            "grpc_only_rss_mib": rss_grpc_only,
            "agent_over_grpc_only_mib": round(rss_after - rss_grpc_only, 1),
            "grpc_serving_rss_mib": rss_grpc_serving,
            "agent_over_grpc_serving_mib": round(rss_after - rss_grpc_serving, 1),
            "agent_rss_empty_mib": rss_empty,
            "agent_rss_growth_mib": round(rss_after - rss_before, 1),
            "agent_idle_cpu_pct": round(cpu_pct, 2),
            "agent_threads": threads(pid),
            "control_rss_mib": rss_mib(control.popen.pid),
            "control_idle_cpu_pct": round((control_cpu1 - control_cpu0) / window * 100, 2),
            "window_s": round(window, 1),
            "local_pushes_in_window": pushes,
            "endpoints_healthy": f"{healthy}/{len(status.endpoint_health)}",
            "state_file_kib": round(state_file.stat().st_size / 1024, 1)
            if state_file.exists()
            else None,
            "ready_ms": round(ready_ms, 1),
            "hold_all_ms": round(hold_ms, 1),
        }
        return row, state_dir
    finally:
        procs.stop(agent)


# ------------------------------------------------------------------------------------------
# 2. Start to first LDS
# ------------------------------------------------------------------------------------------


async def first_listener(
    procs: Processes, label: str, control_address: str, state_from: Path | None
) -> tuple[float, float | None]:
    """Popen -> first LDS response with a listener on a local stream, in ms; and Popen ->
    ready file, in ms (None if the ready file had not appeared by then)."""
    workdir = procs.workdir
    socket = workdir / f"{label}.sock"
    state_dir = workdir / f"state-{label}"
    ready = workdir / f"{label}.ready"
    if state_from is not None:
        shutil.copytree(state_from, state_dir)
    names = service_names()
    t0 = time.time()
    agent = procs.python(
        label,
        "mesh_agent",
        *agent_args(control_address, socket, state_dir),
        "--ready-file",
        str(ready),
    )
    ready_at: float | None = None

    async def watch_ready() -> None:
        nonlocal ready_at
        while not ready.exists():
            await asyncio.sleep(0.005)
        ready_at = time.time()

    watcher = asyncio.create_task(watch_ready())
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not socket.exists():
            if not agent.alive:
                raise BenchError(f"{label} exited:\n{agent.errors()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{label}: no socket after {START_TIMEOUT}s")
            await asyncio.sleep(0.002)
        async with ads_client(f"unix:{socket}", "bench-local") as client:
            subscribe_all(client, names)

            def listeners(c: AdsClient) -> bool:
                return any(r.resources for r in c.of_type(LISTENER))

            try:
                await client.wait_for(listeners, START_TIMEOUT)
            except TimeoutError:
                raise BenchError(f"{label}: no listener after {START_TIMEOUT}s") from None
            first = next(
                r
                for r in client.received
                if r.response.type_url == LISTENER and r.response.resources
            )
        return (first.t - t0) * 1000, (ready_at - t0) * 1000 if ready_at is not None else None
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        procs.stop(agent)


async def start_times(
    procs: Processes, control_address: str, dead_address: str, warm_state: Path, plan: Plan
) -> list[Row]:
    results: dict[str, tuple[list[float], list[float]]] = {"warm": ([], []), "cold": ([], [])}
    for i in range(plan.starts):
        order = ("warm", "cold") if i % 2 == 0 else ("cold", "warm")
        for mode in order:
            if mode == "warm":
                ms, ready_ms = await first_listener(procs, f"warm-{i}", dead_address, warm_state)
            else:
                ms, ready_ms = await first_listener(procs, f"cold-{i}", control_address, None)
            results[mode][0].append(ms)
            if ready_ms is not None:
                results[mode][1].append(ready_ms)
    rows: list[Row] = []
    labels = {
        "warm": "warm: state dir, control server killed",
        "cold": "cold: empty state dir, control server up",
    }
    for mode in ("warm", "cold"):
        values, readies = results[mode]
        rows.append(
            {
                "table": "start to first LDS (Popen -> first listener on a local ADS stream)",
                "start": labels[mode],
                "runs": len(values),
                **summary(values),
                "ready_file_median_ms": round(statistics.median(readies), 1) if readies else None,
                # What the state dir or the control server decide: ready file -> listener.
                "after_ready_median_ms": round(
                    statistics.median(v - r for v, r in zip(values, readies, strict=True)), 1
                )
                if len(readies) == len(values)
                else None,
            }
        )
    return rows


# ------------------------------------------------------------------------------------------
# 3. Push to client: through the agent and straight from the control server
# ------------------------------------------------------------------------------------------


def eds_ports(client: AdsClient, start: int) -> list[tuple[float, set[int]]]:
    """(arrival time, endpoint ports) of each EDS response from index ``start`` on."""
    out: list[tuple[float, set[int]]] = []
    for record in client.received[start:]:
        if record.response.type_url != ENDPOINT:
            continue
        ports: set[int] = set()
        for packed in record.response.resources:
            assignment = endpoint_pb2.ClusterLoadAssignment()
            packed.Unpack(assignment)
            for locality in assignment.endpoints:
                for lb in locality.lb_endpoints:
                    ports.add(lb.endpoint.address.socket_address.port_value)
        out.append((record.t, ports))
    return out


async def arrival(client: AdsClient, start: int, port: int) -> float:
    def seen(c: AdsClient) -> bool:
        return any(port in ports for _, ports in eds_ports(c, start))

    try:
        await client.wait_for(seen, PUSH_TIMEOUT)
    except TimeoutError:
        raise BenchError(f"{client.target}: no EDS with port {port} in {PUSH_TIMEOUT}s") from None
    return next(t for t, ports in eds_ports(client, start) if port in ports)


RELAY_PATHS = ("via agent holding echo only", "via agent holding 101 services", "direct to control")
CPU_GOALS_MS = {SERVICES + 1: 1.5, LARGE + 1: 2.0}


def large_path(plan: Plan) -> str:
    return f"via agent holding {plan.large + 1} services"


async def push_latency(procs: Processes, control_address: str, plan: Plan) -> list[Row]:
    """Each push timed on four streams at once: through an agent that holds only echo's EDS,
    through agents that hold 101 and 1001 services, and straight from the control server;
    and the CPU time each agent spent over the pushes (``/proc/PID/stat``), per push."""
    workdir = procs.workdir
    kinds = ("small", "full", "large")
    agents = await asyncio.gather(
        *(
            start_ready(
                procs,
                f"agent-relay-{kind}",
                "mesh_agent",
                *agent_args(
                    control_address,
                    workdir / f"agent-relay-{kind}.sock",
                    workdir / f"state-relay-{kind}",
                ),
            )
            for kind in kinds
        )
    )
    (small, small_target), (full, full_target), (large, large_target) = agents
    paths = (*RELAY_PATHS, large_path(plan))
    held = {paths[0]: 1, paths[1]: SERVICES + 1, paths[3]: plan.large + 1}
    samples: dict[str, list[float]] = {path: [] for path in paths}
    rpc_ms: list[float] = []
    cpu_ms: dict[str, float] = {}
    try:
        async with grpc.aio.insecure_channel(control_address) as channel:
            stub = admin_pb2_grpc.MeshAdminServiceStub(channel)
            base_port = 51000
            await apply(stub, [echo_service(base_port)])
            async with (
                ads_client(small_target, "bench-relay-small") as via_small,
                ads_client(full_target, "bench-relay-full") as via_full,
                ads_client(control_address, "bench-direct") as direct,
                ads_client(large_target, "bench-relay-large") as via_large,
            ):
                clients = dict(zip(paths, (via_small, via_full, direct, via_large), strict=True))
                pids = {
                    paths[0]: small.popen.pid,
                    paths[1]: full.popen.pid,
                    paths[3]: large.popen.pid,
                }
                via_small.subscribe(ENDPOINT, ["echo"])
                direct.subscribe(ENDPOINT, ["echo"])
                subscribe_all(via_full, [*service_names(), "echo"])
                subscribe_all(via_large, [*service_names(plan.large), "echo"])
                await wait_held(full_target, SERVICES + 1)
                await wait_held(large_target, plan.large + 1, timeout=HOLD_TIMEOUT * 2)
                await asyncio.gather(*(arrival(c, 0, base_port) for c in clients.values()))
                await asyncio.sleep(SETTLE * 10)
                cpu0 = {path: cpu_ns(pid) for path, pid in pids.items()}
                for i in range(1, plan.pushes + 1):
                    port = base_port + i
                    starts = {path: len(c.received) for path, c in clients.items()}
                    t0 = time.time()
                    rpc_ms.append(await apply(stub, [echo_service(port)]))
                    arrivals = await asyncio.gather(
                        *(arrival(c, starts[path], port) for path, c in clients.items())
                    )
                    for path, t in zip(paths, arrivals, strict=True):
                        samples[path].append((t - t0) * 1000)
                    await asyncio.sleep(SETTLE)
                cpu_ms = {
                    path: (cpu_ns(pid) - cpu0[path]) / 1e6 / plan.pushes
                    for path, pid in pids.items()
                }
        for agent in (small, full, large):
            if not agent.alive:
                raise BenchError(f"{agent.name} died:\n{agent.errors()}")
    finally:
        for agent in (large, full, small):
            procs.stop(agent)
    table = "push to client (ApplyServices RPC start -> new EDS on the stream), --debounce 0s"
    rpc = round(statistics.median(rpc_ms), 2)
    rows: list[Row] = [
        {
            "table": table,
            "path": path,
            "pushes": plan.pushes,
            **summary(samples[path]),
            "apply_rpc_median_ms": rpc,
        }
        for path in paths
    ]
    direct_ms = samples["direct to control"]
    for path in (paths[0], paths[1], paths[3]):
        own = [v - d for v, d in zip(samples[path], direct_ms, strict=True)]
        label = "echo only" if held[path] == 1 else f"{held[path]} services"
        rows.append(
            {
                "table": table,
                "path": f"agent's own cost, {label} (via - direct, per push)",
                "pushes": plan.pushes,
                **summary(own),
            }
        )
    floor = cpu_ms[paths[0]]
    for path, ms in cpu_ms.items():
        count = held[path]
        rows.append(
            {
                "table": "agent CPU per push (CPU time of its threads over the pushes / pushes)",
                "agent": "echo only (floor)" if count == 1 else f"{count} services",
                "services_held": count,
                "pushes": plan.pushes,
                "cpu_ms_per_push": round(ms, 3),
                "over_floor_ms": round(ms - floor, 3),
                "ratio_to_floor": ratio(ms, floor),
                "goal_ms": CPU_GOALS_MS.get(count),
            }
        )
    return rows


# ------------------------------------------------------------------------------------------
# The section
# ------------------------------------------------------------------------------------------


def _compare(what: str, a: Row, b: Row) -> Row:
    return {
        "table": "side by side (a / b, medians)",
        "compare": what,
        "a_ms": a["median_ms"],
        "b_ms": b["median_ms"],
        "a_minus_b_ms": round(a["median_ms"] - b["median_ms"], 2),
        "ratio": ratio(a["median_ms"], b["median_ms"]),
    }


async def _run(options: Options) -> list[Row]:
    plan = Plan.of(options.quick)
    names = service_names()
    with Processes(options.workdir) as procs:
        serve = ["serve", "--listen", "127.0.0.1:0", "--store", "memory:", "--debounce", "0s"]
        async with health_checks.backends() as backend:
            (
                (control, control_address),
                (control_hc, control_hc_address),
                (grpc_only, _),
                (grpc_serving, _),
            ) = await asyncio.gather(
                start_ready(procs, "control", "control", *serve),
                start_ready(procs, "control-hc", "control", *serve),
                start_ready(procs, "grpc-only", "bench._grpc_only"),
                start_ready(procs, "grpc-serving", "bench._grpc_only", "--serve"),
            )
            async with (
                grpc.aio.insecure_channel(control_address) as channel,
                grpc.aio.insecure_channel(control_hc_address) as channel_hc,
            ):
                await apply(
                    admin_pb2_grpc.MeshAdminServiceStub(channel),
                    build_services(
                        names, lambda i: [_idle_address(2 * i), _idle_address(2 * i + 1)]
                    ),
                )
                checked = load_documents(
                    health_checks.health_documents(backend.addresses), "bench health checks"
                )
                for at in range(0, len(checked), 500):  # the control server's per-request limit
                    await apply(
                        admin_pb2_grpc.MeshAdminServiceStub(channel_hc), checked[at : at + 500]
                    )

            plain, warm_state = await footprint(
                procs, control, control_address, "no health checks", (grpc_only, grpc_serving), plan
            )
            procs.stop(grpc_only)
            procs.stop(grpc_serving)

            async def start_agent(name: str) -> tuple[Proc, str]:
                args = agent_args(
                    control_hc_address,
                    procs.workdir / f"{name}.sock",
                    procs.workdir / f"state-{name}",
                )
                return await start_ready(procs, name, "mesh_agent", *args)

            checks = await health_checks.health_table(
                procs,
                backend,
                start_agent,
                cpu_seconds,
                rss_mib,
                agent_status,
                window=plan.health_window,
                settle=plan.settle,
            )
        # The health checks' control server, killed: the warm starts' --control.
        control_hc.popen.kill()
        procs.stop(control_hc)

        starts = await start_times(procs, control_address, control_hc_address, warm_state, plan)
        # The pushes' control server holds plan.large services (the 100 and more).
        more = service_names(plan.large)[SERVICES:]
        async with grpc.aio.insecure_channel(control_address) as channel:
            await apply(
                admin_pb2_grpc.MeshAdminServiceStub(channel),
                build_services(
                    more,
                    lambda i: [
                        _idle_address(2 * (i + SERVICES)),
                        _idle_address(2 * (i + SERVICES) + 1),
                    ],
                ),
            )
        pushes = await push_latency(procs, control_address, plan)

    warm, cold = starts
    via_small, via_full, direct, via_large = pushes[:4]
    return [
        plain,
        *checks,
        *starts,
        *pushes,
        _compare("start to first LDS, cold / warm", cold, warm),
        _compare("push to client, via agent holding echo only / direct", via_small, direct),
        _compare("push to client, via agent holding 101 services / direct", via_full, direct),
        _compare(f"push to client, {large_path(plan)} / direct", via_large, direct),
    ]


@section("agent")
def run(options: Options) -> list[Row]:
    return asyncio.run(_run(options))
