"""Section ``etcd``: one config write fanned out to every agent, two control servers on one etcd.

Real processes on loopback: one etcd member (``etcd --data-dir`` in the section's work dir,
free ports), control servers ``python -m control serve --store etcd://127.0.0.1:P/PREFIX``
and node agents ``python -m mesh_agent run``. Two meshes run side by side on the same etcd,
each under its own key prefix, so they never see each other's writes:

* ``debounce 0s``: control servers 1 and 2 with ``--debounce 0s``, and N agents;
* ``debounce 100ms``: control servers 1 and 2 with the default debounce, and N agents.

In each mesh half the agents list ``--control C1,C2`` and half ``C2,C1``, so half hold their
upstream stream on server 1 and half on server 2 (checked with ``GetAgentStatus``). Agents
start 5 at a time. For every agent the bench process (grpc.aio,
``mesh_xds.testing.AdsClient`` through ``bench/_ads_client.py``) opens one ADS stream on the
agent's unix socket subscribed to EDS ``fan``, ACKs every response and stamps it with
``time.time()`` as it arrives.

Each write changes the one endpoint of ``fan`` (its port alternates) with the
``mesh.v1.MeshAdminService/ApplyServices`` RPC that ``meshctl apply`` sends, always to control
server 1, with ``t0 = time.time()`` just before the RPC. It is done once every agent's local
stream got the EDS holding the new port; the write's fan-out time is the latest arrival - t0,
its median-agent time the median arrival - t0, also for the agents on server 1 (the server
that took the write) and server 2 (which learns of it through its etcd watch) separately.
The two meshes take turns, write by write (which goes first alternates).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from bench import Options, Row, _procs, ratio, section, summary
from bench._ads_client import ads_client
from bench._procs import BenchError, Proc, Processes
from control.config import load_documents
from mesh.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, config_pb2
from mesh_xds.testing import AdsClient
from mesh_xds.types import ENDPOINT

SERVICE = "fan"
BASE_PORT = 51000
BATCH = 5  # agents started at once (2 cores)
DEBOUNCES = ("0s", "100ms")
START_TIMEOUT = 60.0
ETCD_TIMEOUT = 20.0
PUSH_TIMEOUT = 20.0
SETTLE = 0.05  # seconds after a write was seen everywhere, before the next one
CLK_TCK = os.sysconf("SC_CLK_TCK")
TABLE = "fan-out (ApplyServices on server 1 -> new EDS on every agent's local stream)"


@dataclass(frozen=True)
class Plan:
    agents: int  # per mesh
    writes: int  # per mesh

    @classmethod
    def of(cls, quick: bool) -> Plan:
        return cls(10, 5) if quick else cls(50, 20)


@dataclass
class Agent:
    name: str
    proc: Proc
    socket: Path
    home: int  # 1 or 2: the control server listed first
    client: AdsClient | None = None
    upstream: int = 0  # the control server its stream is on (GetAgentStatus), 0: unknown


@dataclass
class Mesh:
    debounce: str
    prefix: str
    controls: list[tuple[Proc, str]] = field(default_factory=list)  # server 1, server 2
    agents: list[Agent] = field(default_factory=list)
    fanout: dict[str, list[float]] = field(default_factory=dict)  # scope -> ms per write
    median_agent: dict[str, list[float]] = field(default_factory=dict)
    rpc_ms: list[float] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return "d" + self.debounce.replace("ms", "").replace("s", "")

    @property
    def addresses(self) -> list[str]:
        return [address for _, address in self.controls]


# ------------------------------------------------------------------------------------------
# Processes: etcd, control servers, agents
# ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _http_json(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            data = json.loads(response.read())
            return data if isinstance(data, dict) else None
    except (OSError, urllib.error.URLError, ValueError):
        return None


def start_etcd(procs: Processes, binary: str) -> tuple[Proc, int]:
    """One etcd member on free loopback ports (after ``tests/e2e/conftest.py``), healthy."""
    port, peer_port = free_port(), free_port()
    client, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
    proc = procs.command(
        "etcd",
        [
            binary,
            "--name",
            "b",
            "--data-dir",
            str(procs.workdir / "etcd-data"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"b={peer}",
        ],
    )
    deadline = time.monotonic() + ETCD_TIMEOUT
    while (health := _http_json(f"{client}/health")) is None or health.get("health") != "true":
        if not proc.alive:
            raise BenchError(f"etcd exited with {proc.popen.returncode}:\n{proc.errors()}")
        if time.monotonic() > deadline:
            raise BenchError(f"etcd not healthy after {ETCD_TIMEOUT}s:\n{proc.errors()}")
        time.sleep(0.05)
    return proc, port


def etcd_version(binary: str, port: int) -> str:
    version = _http_json(f"http://127.0.0.1:{port}/version")
    if version and version.get("etcdserver"):
        return str(version["etcdserver"])
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0].split()[-1] if out.stdout else "unknown"


async def start_ready(
    procs: Processes, name: str, module: str, *args: str, timeout: float = START_TIMEOUT
) -> tuple[Proc, str]:
    return await _procs.start_ready(procs, name, module, *args, timeout=timeout)


def fan_service(port: int) -> config_pb2.Service:
    text = f"name: {SERVICE}\nendpoints:\n  - address: 127.0.0.1:{port}\n"
    service: config_pb2.Service = load_documents(text, "bench etcd service")[0]
    return service


async def apply(stub: admin_pb2_grpc.MeshAdminServiceStub, port: int) -> float:
    """Applies ``fan`` pointing at ``port``; returns the RPC's duration in ms."""
    t0 = time.perf_counter()
    request = admin_pb2.ApplyServicesRequest(services=[fan_service(port)])
    await stub.ApplyServices(request, timeout=30)
    return (time.perf_counter() - t0) * 1000


async def start_agent(procs: Processes, mesh: Mesh, i: int) -> Agent:
    home = 1 if i % 2 == 0 else 2
    controls = mesh.addresses if home == 1 else mesh.addresses[::-1]
    name = f"{mesh.slug}-agent-{i}"
    sock = procs.workdir / f"{name}.sock"
    proc, _ = await start_ready(
        procs,
        name,
        "mesh_agent",
        "run",
        "--control",
        ",".join(controls),
        "--node-id",
        name,
        "--socket",
        str(sock),
        "--state-dir",
        str(procs.workdir / name),
    )
    agent = Agent(name, proc, sock, home)
    agent.client = ads_client(f"unix:{sock}", f"bench-{name}")
    await agent.client.__aenter__()
    agent.client.subscribe(ENDPOINT, [SERVICE])
    return agent


async def upstream_of(agent: Agent, mesh: Mesh) -> int:
    async with grpc.aio.insecure_channel(f"unix:{agent.socket}") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        status = await stub.GetAgentStatus(agent_pb2.GetAgentStatusRequest(), timeout=10)
    addresses = mesh.addresses
    return addresses.index(status.upstream) + 1 if status.upstream in addresses else 0


def stop_agents(agents: Sequence[Agent], procs: Processes) -> None:
    """SIGTERM to every agent at once, then wait for each (SIGKILL after 5 s)."""
    for agent in agents:
        if agent.proc.alive:
            agent.proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    for agent in agents:
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.proc.popen.wait(max(0.0, deadline - time.monotonic()))
        procs.stop(agent.proc)


# ------------------------------------------------------------------------------------------
# Arrivals
# ------------------------------------------------------------------------------------------


def _ports(response: discovery_pb2.DiscoveryResponse) -> set[int]:
    ports: set[int] = set()
    for packed in response.resources:
        assignment = endpoint_pb2.ClusterLoadAssignment()
        packed.Unpack(assignment)
        for locality in assignment.endpoints:
            for lb in locality.lb_endpoints:
                ports.add(lb.endpoint.address.socket_address.port_value)
    return ports


def _first_with(client: AdsClient, start: int, port: int) -> float | None:
    for record in client.received[start:]:
        if record.response.type_url == ENDPOINT and port in _ports(record.response):
            return record.t
    return None


async def arrival(agent: Agent, start: int, port: int) -> float:
    client = agent.client
    assert client is not None
    try:
        await client.wait_for(lambda c: _first_with(c, start, port) is not None, PUSH_TIMEOUT)
    except TimeoutError:
        raise BenchError(
            f"{agent.name}: no EDS with port {port} in {PUSH_TIMEOUT}s:\n{agent.proc.errors()}"
        ) from None
    t = _first_with(client, start, port)
    assert t is not None
    return t


async def write_once(mesh: Mesh, stub: admin_pb2_grpc.MeshAdminServiceStub, port: int) -> None:
    starts = [len(a.client.received) if a.client else 0 for a in mesh.agents]
    t0 = time.time()
    mesh.rpc_ms.append(await apply(stub, port))
    times = await asyncio.gather(
        *(arrival(a, start, port) for a, start in zip(mesh.agents, starts, strict=True))
    )
    scopes = {
        "all": list(times),
        "on server 1": [t for a, t in zip(mesh.agents, times, strict=True) if a.upstream == 1],
        "on server 2": [t for a, t in zip(mesh.agents, times, strict=True) if a.upstream == 2],
    }
    for scope, values in scopes.items():
        if not values:
            continue
        mesh.fanout.setdefault(scope, []).append((max(values) - t0) * 1000)
        mesh.median_agent.setdefault(scope, []).append((statistics.median(values) - t0) * 1000)


# ------------------------------------------------------------------------------------------
# The section
# ------------------------------------------------------------------------------------------


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _rows(meshes: Sequence[Mesh]) -> list[Row]:
    rows: list[Row] = []
    for mesh in meshes:
        for scope, values in mesh.fanout.items():
            median_agent = mesh.median_agent[scope]
            count = {
                "all": len(mesh.agents),
                "on server 1": sum(a.upstream == 1 for a in mesh.agents),
                "on server 2": sum(a.upstream == 2 for a in mesh.agents),
            }[scope]
            rows.append(
                {
                    "table": TABLE,
                    "debounce": mesh.debounce,
                    "agents": scope,
                    "count": count,
                    "writes": len(values),
                    **summary(values),
                    "median_agent_median_ms": round(statistics.median(median_agent), 3),
                    "median_agent_p99_ms": summary(median_agent)["p99_ms"],
                    "apply_rpc_median_ms": round(statistics.median(mesh.rpc_ms), 2),
                }
            )
    by = {(r["debounce"], r["agents"]): r for r in rows}
    for what, a, b in (
        ("all agents, debounce 100ms / 0s", ("100ms", "all"), ("0s", "all")),
        ("debounce 0s, server 2 / server 1", ("0s", "on server 2"), ("0s", "on server 1")),
        ("debounce 100ms, server 2 / server 1", ("100ms", "on server 2"), ("100ms", "on server 1")),
    ):
        if a in by and b in by:
            rows.append(
                {
                    "table": "side by side (a / b, fan-out medians)",
                    "compare": what,
                    "a_ms": by[a]["median_ms"],
                    "b_ms": by[b]["median_ms"],
                    "a_minus_b_ms": round(by[a]["median_ms"] - by[b]["median_ms"], 2),
                    "ratio": ratio(by[a]["median_ms"], by[b]["median_ms"]),
                }
            )
    return rows


async def _run(options: Options, binary: str) -> list[Row]:
    plan = Plan.of(options.quick)
    meshes = [Mesh(debounce, f"/bench-{i}") for i, debounce in enumerate(DEBOUNCES)]
    started = time.monotonic()
    procs = Processes(options.workdir)
    agents: list[Agent] = []
    try:
        etcd, etcd_port = start_etcd(procs, binary)
        version = etcd_version(binary, etcd_port)
        starts = []
        for mesh in meshes:
            store = f"etcd://127.0.0.1:{etcd_port}{mesh.prefix}"
            for k in (1, 2):
                args = ["serve", "--listen", "127.0.0.1:0", "--store", store]
                if mesh.debounce != "100ms":
                    args += ["--debounce", mesh.debounce]
                starts.append(start_ready(procs, f"{mesh.slug}-control-{k}", "control", *args))
        servers = await asyncio.gather(*starts)
        for j, mesh in enumerate(meshes):
            mesh.controls = list(servers[2 * j : 2 * j + 2])

        channels = [grpc.aio.insecure_channel(mesh.addresses[0]) for mesh in meshes]
        stubs = [admin_pb2_grpc.MeshAdminServiceStub(channel) for channel in channels]
        try:
            for stub in stubs:
                await apply(stub, BASE_PORT)

            # Agents, BATCH at a time, the two meshes' agents interleaved.
            t_agents = time.monotonic()
            order = [(mesh, i) for i in range(plan.agents) for mesh in meshes]
            for b in range(0, len(order), BATCH):
                batch = order[b : b + BATCH]
                started_batch = await asyncio.gather(
                    *(start_agent(procs, mesh, i) for mesh, i in batch), return_exceptions=True
                )
                for (mesh, _), agent in zip(batch, started_batch, strict=True):
                    if isinstance(agent, Agent):
                        mesh.agents.append(agent)
                        agents.append(agent)
                for error in started_batch:
                    if isinstance(error, BaseException):
                        raise error
            agents_s = time.monotonic() - t_agents
            for mesh in meshes:
                await asyncio.gather(*(arrival(a, 0, BASE_PORT) for a in mesh.agents))
            ready_s = time.monotonic() - t_agents
            for mesh in meshes:
                ups = await asyncio.gather(*(upstream_of(a, mesh) for a in mesh.agents))
                for agent, up in zip(mesh.agents, ups, strict=True):
                    agent.upstream = up
            await asyncio.sleep(0.5)

            # The writes: the meshes take turns, which one goes first alternates.
            pids = {
                "agents": [a.proc.popen.pid for a in agents],
                "control_servers": [p.popen.pid for m in meshes for p, _ in m.controls],
                "etcd": [etcd.popen.pid],
                "bench_process": [os.getpid()],
            }
            cpu0 = {who: sum(map(_cpu_seconds, ps)) for who, ps in pids.items()}
            for w in range(plan.writes):
                port = BASE_PORT + 1 + w % 2  # differs from the previous write's
                pairs = list(zip(meshes, stubs, strict=True))
                for mesh, stub in pairs if w % 2 == 0 else pairs[::-1]:
                    await write_once(mesh, stub, port)
                    await asyncio.sleep(SETTLE)

            cpu = {
                f"cpu_ms_per_write_{who}": round(
                    (sum(map(_cpu_seconds, ps)) - cpu0[who]) * 1000 / (plan.writes * len(meshes)),
                    1,
                )
                for who, ps in pids.items()
            }
            # Who held which stream at the end (a stream that moved would skew the split).
            moved = 0
            for mesh in meshes:
                ups = await asyncio.gather(*(upstream_of(a, mesh) for a in mesh.agents))
                moved += sum(up != a.upstream for a, up in zip(mesh.agents, ups, strict=True))
            dead = [a.name for a in agents if not a.proc.alive]
            if dead:
                raise BenchError(f"agents died: {dead}")
            agent_rss = [r for a in agents if (r := _rss_mib(a.proc.popen.pid)) is not None]
            control_rss = {
                f"control_rss_mib_{mesh.slug}_s{k}": _rss_mib(proc.popen.pid)
                for mesh in meshes
                for k, (proc, _) in enumerate(mesh.controls, start=1)
            }
            setup: Row = {
                "table": "setup",
                "etcd_version": version,
                "agents_per_mesh": plan.agents,
                "agents_total": len(agents),
                "writes_per_mesh": plan.writes,
                **{
                    f"on_server_{k}_{mesh.slug}": sum(a.upstream == k for a in mesh.agents)
                    for mesh in meshes
                    for k in (1, 2)
                },
                "streams_moved": moved,
                "agents_start_s": round(agents_s, 1),
                "agents_hold_fan_s": round(ready_s, 1),
                **control_rss,
                "etcd_rss_mib": _rss_mib(etcd.popen.pid),
                **cpu,
                "agent_rss_median_mib": round(statistics.median(agent_rss), 1),
                "section_s": round(time.monotonic() - started, 1),
            }
        finally:
            for channel in channels:
                await channel.close()
    finally:
        for agent in agents:
            if agent.client is not None:
                with contextlib.suppress(Exception):
                    await agent.client.close()
        stop_agents(agents, procs)
        procs.stop_all()  # control servers (newest first), then etcd
    return [setup, *_rows(meshes)]


@section("etcd")
def run(options: Options) -> list[Row]:
    binary = shutil.which("etcd")
    if binary is None:  # ``make bench`` still runs the other sections
        return [{"table": "setup", "skipped": "etcd is not installed (needs the etcd binary)"}]
    return asyncio.run(_run(options, binary))
