"""Section ``service_mtls``: what service mTLS (a service in ``strict`` mode) costs a call
between two services, against the same call to a plaintext (``disabled``) service: each call
on an established connection, and the handshake of a fresh connection.

Real processes on loopback: a PKI from ``control.certs`` (the ``meshctl certs`` CA), a
control server with mTLS and ``--signing-ca`` on a ``file:`` store holding three services,
and agent ``bench-node`` (its node certificate, unix socket):

* ``bench-strict``: ``security: {hosts: [bench-node], mode: strict}``;
* ``bench-plain``: ``security: {mode: disabled}``;
* ``bench-caller``: ``security: {hosts: [bench-node]}``, the identity the caller holds.

One server process (``python -m bench.service_mtls serve``) serves both services, each with
its own ``mesh_agent.client.mesh_server`` (grpcio's xDS-enabled sync server: the strict one
gets a Listener with a ``DownstreamTlsContext`` from the agent and serves with the identity
of ``bench-strict``, the plain one a plaintext Listener) and the same handler: an echo of a
4-byte payload. The section registers both addresses with the agent. One caller process
(``python -m bench.service_mtls call``) holds identity ``bench-caller`` and calls both
through ``mesh_channel`` (grpcio's xDS client with ``xds_channel_credentials``: mTLS where the
Cluster carries an ``UpstreamTlsContext``). Before measuring it checks what each server saw:
the caller's SPIFFE id over ``bench-strict``, none over ``bench-plain``.

``handshake``: per sample a fresh ``mesh_channel`` (``grpc.use_local_subchannel_pool``, so
it cannot reuse another channel's connection; the process's xDS client and its resources
are shared, as in any process), timed from creating it to the end of its first call
(``wait_for_ready``: resolution from the cached xDS resources, connect, handshake), then a
second call on it (``second_call``; ``setup`` = first - second, per sample); the channel is
closed untimed. R rounds of K samples per service, the order alternating as in ``tracing``
(``bench.tracing.order``: ABBA...).

``calls``: sequential unary calls on one established ``mesh_channel`` per service,
``perf_counter_ns`` around each, after a warm-up; R rounds of one B-call block per service,
ordered as above (short blocks: the load on a shared box changes from one second to the
next).

Paired figures: for each round, strict's block median (p50) minus plain's, and their ratio;
the section reports the median over rounds (and quartiles) of both, next to the pooled
p50/p99. CPU: ``client_cpu`` is the caller's ``process_time`` per sample or call, the median
over blocks; ``server_cpu`` is the server process's utime+stime from ``/proc`` over all of a
service's blocks, less its idle rate, per sample or call (clock ticks: read as a total).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import Options, Row, percentile, ratio, section
from bench._procs import BenchError, Processes, child_env
from bench.mtls import _cpu_ns, _diffs, _ms, _quartiles, _us
from bench.tracing import order
from mesh_core import tls

WORKER = "bench.service_mtls"
START_TIMEOUT = 60.0
NODE = "bench-node"
CALLER = "bench-caller"
TRUST_DOMAIN = "bench.mesh"
# Name in the tables: (service, what).
SERVICES: dict[str, tuple[str, str]] = {
    "strict": ("bench-strict", "mode strict: mTLS, the caller's certificate required"),
    "plain": ("bench-plain", "mode disabled: plaintext"),
}
STORE = {
    "bench-strict": f"security: {{hosts: [{NODE}], mode: strict}}",
    "bench-plain": "security: {mode: disabled}",
    CALLER: f"security: {{hosts: [{NODE}]}}",
}
ECHO = "/bench.v1.Echo/Echo"
WHO = "/bench.v1.Echo/Who"
PAYLOAD = b"ping"
FRESH = [("grpc.use_local_subchannel_pool", 1)]
HANDSHAKE_TABLE = (
    "handshake (fresh mesh_channel to the end of its first call; alternating blocks, ms)"
)
CALLS_TABLE = (
    "calls (sequential unary 4-byte echo on an established mesh_channel; alternating blocks, µs)"
)
COST_TABLE = (
    "cost (paired: median over rounds of strict's block median - plain's, and of their ratio)"
)


@dataclass(frozen=True)
class Plan:
    handshake_rounds: int
    handshake_block: int  # fresh channels per service per round
    rounds: int  # call blocks per service
    block: int  # calls per block
    warmup: int  # calls per service before the first round
    idle: float  # seconds the server's idle CPU is measured over

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(2, 3, 6, 40, 50, 0.2)
        return cls(40, 8, 200, 100, 1000, 2.0)

    def args(self) -> list[str]:
        return [
            "--handshake-rounds",
            str(self.handshake_rounds),
            "--handshake-block",
            str(self.handshake_block),
            "--rounds",
            str(self.rounds),
            "--block",
            str(self.block),
            "--warmup",
            str(self.warmup),
            "--idle",
            str(self.idle),
        ]


# ------------------------------------------------------------------------------------------
# The server process
# ------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now: grpc's xDS-enabled server cannot take port 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _peer_id(context: Any) -> str:
    for key in ("peer_spiffe_id", "x509_subject_alternative_name"):
        for value in context.auth_context().get(key, []):
            text = value.decode() if isinstance(value, bytes) else str(value)
            if text.startswith("spiffe://"):
                return text
    return ""


def serve(args: argparse.Namespace) -> None:
    import grpc

    from mesh_agent.client import mesh_server

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        return _peer_id(context).encode()

    handlers = grpc.method_handlers_generic_handler(
        "bench.v1.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Who": grpc.unary_unary_rpc_method_handler(who),
        },
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    servers, addresses = [], []
    for name in SERVICES:  # the strict one first: it gives the process its identity
        server = mesh_server(SERVICES[name][0], agent=args.agent, node_id="bench-server")
        server.add_generic_rpc_handlers([handlers])
        port = server.add_port(f"127.0.0.1:{free_port()}")
        server.start()
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")
    Path(args.ready_file).write_text(" ".join(addresses))
    stop.wait()
    for server in servers:
        server.stop(1).wait(5)


# ------------------------------------------------------------------------------------------
# The caller process
# ------------------------------------------------------------------------------------------


class Caller:
    def __init__(self, args: argparse.Namespace) -> None:
        from mesh_agent.client import mesh_channel

        self.args = args
        self.mesh_channel = mesh_channel
        self.names = tuple(SERVICES)
        self.idle_ns_per_s = 0.0

    def channel(self, name: str, fresh: bool = False, identity: str | None = None) -> Any:
        return self.mesh_channel(
            SERVICES[name][0],
            agent=self.args.agent,
            node_id="bench-caller-process",
            identity=identity,
            options=FRESH if fresh else None,
        )

    def check(self) -> dict[str, str]:
        """Waits until each service answers (its server has its Listener); returns the peer
        id each server saw."""
        import grpc

        peers: dict[str, str] = {}
        first = self.channel(self.names[0], identity=CALLER)
        channels = {self.names[0]: first, **{n: self.channel(n) for n in self.names[1:]}}
        deadline = time.monotonic() + START_TIMEOUT
        for name, channel in channels.items():
            while True:
                try:
                    answer = channel.unary_unary(WHO)(b"", timeout=5, wait_for_ready=True)
                    break
                except grpc.RpcError as error:
                    if time.monotonic() > deadline:
                        raise BenchError(f"{name}: no answer in time: {error}") from None
                    time.sleep(0.2)
            peers[name] = answer.decode()
            channel.close()
        return peers

    def measure_idle(self) -> float:
        before = _cpu_ns(self.args.server_pid)
        t0 = time.perf_counter_ns()
        time.sleep(self.args.idle)
        wall = (time.perf_counter_ns() - t0) / 1e9
        after = _cpu_ns(self.args.server_pid)
        if before is not None and after is not None:
            self.idle_ns_per_s = (after - before) / wall
        return self.idle_ns_per_s / 1e7  # percent of one core

    def server_cpu(self, before: float | None, wall_ns: int) -> float:
        after = _cpu_ns(self.args.server_pid)
        if before is None or after is None:
            return 0.0
        return after - before - self.idle_ns_per_s * wall_ns / 1e9

    def handshakes(self) -> dict[str, Any]:
        import grpc

        names = self.names
        total: dict[str, list[float]] = {name: [] for name in names}
        second: dict[str, list[float]] = {name: [] for name in names}
        block_median: dict[str, list[float]] = {name: [] for name in names}
        client_cpu: dict[str, list[float]] = {name: [] for name in names}
        server_cpu = dict.fromkeys(names, 0.0)
        errors = dict.fromkeys(names, 0)
        for name in names:  # one unmeasured each: first-use costs
            with self.channel(name, fresh=True) as channel:
                channel.unary_unary(ECHO)(PAYLOAD, timeout=10, wait_for_ready=True)
        for r in range(self.args.handshake_rounds):
            for name in order(names, r):
                block: list[float] = []
                cpu = 0
                server_before = _cpu_ns(self.args.server_pid)
                wall0 = time.perf_counter_ns()
                for _ in range(self.args.handshake_block):
                    cpu0 = time.process_time_ns()
                    t0 = time.perf_counter_ns()
                    channel = self.channel(name, fresh=True)
                    try:
                        call = channel.unary_unary(ECHO)
                        call(PAYLOAD, timeout=10, wait_for_ready=True)
                        t1 = time.perf_counter_ns()
                        cpu += time.process_time_ns() - cpu0
                        call(PAYLOAD, timeout=5)
                        t2 = time.perf_counter_ns()
                    except grpc.RpcError:
                        errors[name] += 1
                        continue
                    finally:
                        channel.close()
                    total[name].append(t1 - t0)
                    second[name].append(t2 - t1)
                    block.append(t1 - t0)
                server_cpu[name] += self.server_cpu(server_before, time.perf_counter_ns() - wall0)
                if block:
                    block_median[name].append(statistics.median(block))
                    client_cpu[name].append(cpu / len(block))
        return {
            "total_ns": total,
            "second_ns": second,
            "block_ns": block_median,
            "client_cpu_ns": client_cpu,
            "server_cpu_ns": server_cpu,
            "errors": errors,
        }

    def calls(self) -> dict[str, Any]:
        import grpc

        names = self.names
        channels = {name: self.channel(name) for name in names}
        calls = {name: channels[name].unary_unary(ECHO) for name in names}
        latencies: dict[str, list[int]] = {name: [] for name in names}
        block_p50: dict[str, list[float]] = {name: [] for name in names}
        client_cpu: dict[str, list[float]] = {name: [] for name in names}
        server_cpu = dict.fromkeys(names, 0.0)
        errors = dict.fromkeys(names, 0)
        clock = time.perf_counter_ns
        try:
            for name in names:
                for _ in range(self.args.warmup):
                    calls[name](PAYLOAD, timeout=5)
            started = time.monotonic()
            for r in range(self.args.rounds):
                for name in order(names, r):
                    call = calls[name]
                    block: list[int] = []
                    server_before = _cpu_ns(self.args.server_pid)
                    cpu0 = time.process_time_ns()
                    wall0 = clock()
                    for _ in range(self.args.block):
                        t0 = clock()
                        try:
                            call(PAYLOAD, timeout=5)
                        except grpc.RpcError:
                            errors[name] += 1
                            continue
                        block.append(clock() - t0)
                    wall = clock() - wall0
                    cpu = time.process_time_ns() - cpu0
                    server_cpu[name] += self.server_cpu(server_before, wall)
                    if block:
                        latencies[name].extend(block)
                        block_p50[name].append(statistics.median(block))
                        client_cpu[name].append(cpu / len(block))
            seconds = time.monotonic() - started
        finally:
            for channel in channels.values():
                channel.close()
        return {
            "lat_ns": latencies,
            "block_ns": block_p50,
            "client_cpu_ns": client_cpu,
            "server_cpu_ns": server_cpu,
            "errors": errors,
            "seconds": round(seconds, 1),
        }


def call(args: argparse.Namespace) -> None:
    caller = Caller(args)
    result = {
        "peers": caller.check(),
        "server_idle_cpu_pct": round(caller.measure_idle(), 2),
        "handshake": caller.handshakes(),
        "calls": caller.calls(),
    }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def worker_main(argv: list[str] | None = None) -> None:
    from mesh_core.logs import configure

    plan = Plan.of(False)
    parser = argparse.ArgumentParser(prog=f"python -m {WORKER}", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("serve")
    server.add_argument("--ready-file", required=True)
    caller = sub.add_parser("call")
    caller.add_argument("--server-pid", type=int, required=True)
    caller.add_argument("--handshake-rounds", type=int, default=plan.handshake_rounds)
    caller.add_argument("--handshake-block", type=int, default=plan.handshake_block)
    caller.add_argument("--rounds", type=int, default=plan.rounds)
    caller.add_argument("--block", type=int, default=plan.block)
    caller.add_argument("--warmup", type=int, default=plan.warmup)
    caller.add_argument("--idle", type=float, default=plan.idle)
    for each in (server, caller):
        each.add_argument("--agent", required=True, help="the agent's unix:PATH")
    args = parser.parse_args(argv)
    configure()
    if args.command == "serve":
        serve(args)
    else:
        call(args)


# ------------------------------------------------------------------------------------------
# The section
# ------------------------------------------------------------------------------------------


def _ratios(block: dict[str, list[float]]) -> list[float]:
    return [a / b for a, b in zip(block["strict"], block["plain"], strict=False) if b]


def _per(total_ns: float, count: int) -> float | None:
    return total_ns / count if count else None


def handshake_rows(data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, (service, what) in SERVICES.items():
        samples, second = data["total_ns"][name], data["second_ns"][name]
        base = name == "plain"
        diffs = _diffs(data["block_ns"], name, "plain")
        server = _per(data["server_cpu_ns"][name], len(samples))
        rows.append(
            {
                "table": HANDSHAKE_TABLE,
                "service": name,
                "samples": len(samples),
                "errors": data["errors"][name],
                "p50_ms": _ms(statistics.median(samples)),
                "p90_ms": _ms(percentile(samples, 90)),
                "p99_ms": _ms(percentile(samples, 99)),
                "second_call_p50_ms": _ms(statistics.median(second)),
                "setup_p50_ms": _ms(
                    statistics.median([t - c for t, c in zip(samples, second, strict=True)])
                ),
                "client_cpu_ms": _ms(statistics.median(data["client_cpu_ns"][name])),
                "server_cpu_ms": None if server is None else _ms(server),
                "vs_plain_paired_ms": None if base else _ms(statistics.median(diffs)),
                "rounds_slower": None if base else f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
                "what": f"{service}: {what}",
            }
        )
    return rows


def call_rows(data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, (service, what) in SERVICES.items():
        lat = data["lat_ns"][name]
        base = name == "plain"
        diffs = _diffs(data["block_ns"], name, "plain")
        server = _per(data["server_cpu_ns"][name], len(lat))
        rows.append(
            {
                "table": CALLS_TABLE,
                "service": name,
                "calls": len(lat),
                "errors": data["errors"][name],
                "p50_us": _us(statistics.median(lat)),
                "p90_us": _us(percentile(lat, 90)),
                "p99_us": _us(percentile(lat, 99)),
                "block_p50_min_us": _us(min(data["block_ns"][name])),
                "block_p50_max_us": _us(max(data["block_ns"][name])),
                "client_cpu_us": _us(statistics.median(data["client_cpu_ns"][name])),
                "server_cpu_us": None if server is None else _us(server),
                "vs_plain_paired_us": None if base else _us(statistics.median(diffs)),
                "rounds_slower": None if base else f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
                "what": f"{service}: {what}",
            }
        )
    return rows


def cost_row(kind: str, data: dict[str, Any], unit: str) -> Row:
    """The paired difference and ratio of strict against plain for ``kind`` (``call`` in
    µs, ``handshake`` in ms)."""
    to = _us if unit == "us" else _ms
    diffs = _diffs(data["block_ns"], "strict", "plain")
    ratios = _ratios(data["block_ns"])
    q1, q3 = _quartiles(diffs)
    r1, r3 = _quartiles(ratios)
    samples = data["lat_ns" if kind == "call" else "total_ns"]
    pooled = {name: statistics.median(samples[name]) for name in SERVICES}
    client = {name: statistics.median(data["client_cpu_ns"][name]) for name in SERVICES}
    return {
        "table": COST_TABLE,
        "compare": f"{kind}: strict - plain",
        "unit": unit,
        "paired": to(statistics.median(diffs)),
        "q1": to(q1),
        "q3": to(q3),
        "rounds_strict_slower": f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
        "paired_ratio": round(statistics.median(ratios), 3),
        "ratio_q1": round(r1, 3),
        "ratio_q3": round(r3, 3),
        "ratio_p50": ratio(pooled["strict"], pooled["plain"]),
        "client_cpu": to(client["strict"] - client["plain"]),
    }


def _register(agent: str, service: str, address: str) -> None:
    import grpc

    from mesh.v1 import agent_pb2, agent_pb2_grpc, node_pb2

    with grpc.insecure_channel(agent) as channel:
        agent_pb2_grpc.AgentServiceStub(channel).Register(
            agent_pb2.RegisterRequest(
                registration=node_pb2.Registration(service=service, address=address)
            ),
            timeout=5,
        )


def _start(procs: Processes, name: str, module: str, *args: str) -> tuple[int, list[str]]:
    """Starts a server taking ``--ready-file``; returns its pid and every address it wrote."""
    ready = procs.workdir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    proc = procs.python(name, module, *args, "--ready-file", str(ready))
    deadline = time.monotonic() + START_TIMEOUT
    while not (ready.exists() and (text := ready.read_text().strip())):
        if not proc.alive:
            raise BenchError(f"{name} exited with {proc.popen.returncode}:\n{proc.errors()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{name} not ready after {START_TIMEOUT}s:\n{proc.errors()}")
        time.sleep(0.02)
    return proc.popen.pid, text.split()


@section("service_mtls")
def run(options: Options) -> list[Row]:
    from control import certs

    plan = Plan.of(options.quick)
    workdir = options.workdir
    pki = workdir / "pki"
    certs.init_ca(pki / "ca", TRUST_DOMAIN)
    certs.issue(pki / "ca", pki / "control", server="127.0.0.1")
    certs.issue(pki / "ca", pki / NODE, node=NODE, ips=["127.0.0.1"])
    store = workdir / "store"
    store.mkdir()
    for service, security in STORE.items():
        (store / f"{service}.yaml").write_text(f"name: {service}\nendpoints: []\n{security}\n")
    with Processes(workdir) as procs:
        control = _start(
            procs,
            "control",
            "control",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            f"file:{store}",
            "--signing-ca",
            str(pki / "ca"),
            *tls.flags(pki / "control"),
        )[1][0]
        agent = _start(
            procs,
            NODE,
            "mesh_agent",
            "run",
            "--control",
            control,
            "--node-id",
            NODE,
            "--socket",
            str(workdir / f"{NODE}.sock"),
            "--state-dir",
            str(workdir / f"{NODE}-state"),
            *tls.flags(pki / NODE),
        )[1][0]
        server_pid, addresses = _start(procs, "server", WORKER, "serve", "--agent", agent)
        for (service, _), address in zip(SERVICES.values(), addresses, strict=True):
            _register(agent, service, address)
        err = workdir / "caller.err"
        with err.open("wb") as stderr:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    WORKER,
                    "call",
                    "--agent",
                    agent,
                    "--server-pid",
                    str(server_pid),
                    *plan.args(),
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=child_env(),
                cwd=workdir,
                text=True,
                timeout=900,
                check=False,
            )
    if result.returncode != 0:
        tail = err.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"service_mtls caller exited with {result.returncode}:\n{tail}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    peers = data["peers"]
    expected = f"spiffe://{TRUST_DOMAIN}/service/{CALLER}"
    if peers != {"strict": expected, "plain": ""}:
        raise BenchError(f"the servers saw the wrong peers: {peers} (strict: {expected})")
    handshake, calls = data["handshake"], data["calls"]

    rows = handshake_rows(handshake)
    rows.extend(call_rows(calls))
    call_cost = cost_row("call", calls, "us")
    shake_cost = cost_row("handshake", handshake, "ms")
    rows.extend([call_cost, shake_cost])
    shakes = {row["service"]: row for row in rows if row["table"] == HANDSHAKE_TABLE}
    per_call = {row["service"]: row for row in rows if row["table"] == CALLS_TABLE}
    summary: Row = {"table": "summary", "rpc": ECHO, "peer_seen_by_strict": peers["strict"]}
    for name in SERVICES:
        summary[f"call_{name}_p50_us"] = per_call[name]["p50_us"]
        summary[f"call_{name}_p99_us"] = per_call[name]["p99_us"]
    for name in SERVICES:
        summary[f"handshake_{name}_p50_ms"] = shakes[name]["p50_ms"]
        summary[f"handshake_{name}_p99_ms"] = shakes[name]["p99_ms"]
    summary.update(
        {
            "call_strict_vs_plain_us": call_cost["paired"],
            "call_strict_vs_plain_ratio": call_cost["paired_ratio"],
            "call_rounds_strict_slower": call_cost["rounds_strict_slower"],
            "handshake_strict_vs_plain_ms": shake_cost["paired"],
            "handshake_strict_vs_plain_ratio": shake_cost["paired_ratio"],
            "call_client_cpu_strict_us": per_call["strict"]["client_cpu_us"],
            "call_client_cpu_plain_us": per_call["plain"]["client_cpu_us"],
            "call_server_cpu_strict_us": per_call["strict"]["server_cpu_us"],
            "call_server_cpu_plain_us": per_call["plain"]["server_cpu_us"],
            "server_idle_cpu_pct": data["server_idle_cpu_pct"],
            "errors": sum(calls["errors"].values()) + sum(handshake["errors"].values()),
            "handshake_rounds": plan.handshake_rounds,
            "handshake_block": plan.handshake_block,
            "rounds": plan.rounds,
            "block_calls": plan.block,
            "calls_seconds": calls["seconds"],
        }
    )
    rows.append(summary)
    return rows


if __name__ == "__main__":
    worker_main()
