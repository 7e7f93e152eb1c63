"""Section ``mtls``: what mTLS on the agent link costs a client process: the handshake of a new
channel, and each call on an established one, side by side with plaintext TCP and the unix
socket.

Real processes on loopback: a PKI from ``control.certs`` (the ``meshctl certs`` CA), two
control servers (memory store), one plaintext and one with mTLS, and two agents, identical
but for ``--tls-*``: agent A (plaintext, on the plaintext control server) and agent B (a node
certificate, on the mTLS control server), each with its unix socket and ``--listen
127.0.0.1:0``. An agent's ``--tls-*`` sets both its upstream link and its TCP listener, hence
two control servers; the upstream streams are idle while the client measures. One client
process (``python -m bench.mtls``, with a certificate for agent B's node from the same CA, as
an application on that node has: the listener admits no other node) measures four
transports, in alternating blocks:

* ``unix``: agent A's unix socket (plaintext, as the client library always uses it);
* ``tcp``: agent A's TCP listener, plaintext (``grpc.insecure_channel``);
* ``mtls``: agent B's TCP listener, mTLS (``grpc.secure_channel`` with
  ``mesh_core.tls.channel_credentials``: what ``AgentLink`` uses with TLS files);
* ``unix_b``: agent B's unix socket, plaintext: a check that the two agents are alike
  (``unix_b - unix`` should be about 0).

``handshake``: per sample a fresh channel (``grpc.use_local_subchannel_pool``, so it cannot
reuse another channel's connection; credentials object made once per transport, no TLS
session cache), timed from creating it to the end of its first call (``ms``):
``AgentService/AcquirePermit`` for a service without a breaker, ``wait_for_ready``, so the
call waits for connect + handshake. Then a second call on it (``second_call``: the same call
without the handshake; ``setup`` = first - second, per sample), and the channel is closed (not
timed). Not ``grpc.channel_ready_future``: its connectivity subscription made
``channel.close()`` hang now and then (a grpcio deadlock of the kind in grpc/grpc#20026).
R rounds of K samples per transport, the order rotated each round and reversed every other
cycle (as in ``tracing``). The paired difference is the median over rounds of (block median
of one - block median of the other, same round).

``calls``: sequential unary ``AcquirePermit`` on one established channel per transport,
``perf_counter_ns`` around each call: the only unary RPC the client library makes to its
agent (a half-open permit; outcomes and breaker state go over two long-lived streams). R
rounds of one B-call block per transport, ordered as above; p50/p99 pooled, the paired
difference as above (block p50).

CPU: ``client_cpu`` is the client process's CPU time (``process_time``: every thread, grpc's
included) per sample or call, the median over blocks; ``agent_cpu`` is the serving agent's
utime+stime from ``/proc/PID/stat`` over all its blocks, less its idle rate (measured over
an idle window first) times their wall time, divided by their samples or calls (clock ticks,
so it is read as a total, not per block). ``credentials``: the cost of
``mesh_core.tls.channel_credentials(files)`` itself (read and check the three files), once per
``AgentLink`` channel.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import Options, Row, percentile, section
from bench._procs import BenchError, Processes, child_env
from bench.tracing import order
from mesh_core import tls

WORKER = "bench.mtls"
START_TIMEOUT = 60.0
SERVICE = "bench-mtls"  # no breaker: AcquirePermit answers from a dict lookup
# Transport: what it is. ``tcp`` is the base of the mTLS comparison.
TRANSPORTS: dict[str, str] = {
    "unix": "agent A's unix socket, plaintext",
    "tcp": "agent A's TCP listener, plaintext",
    "mtls": "agent B's TCP listener, mTLS (client certificate from the mesh CA)",
    "unix_b": "agent B's unix socket, plaintext (check: the two agents are alike)",
}
# The cost table: (a, b, what a - b is).
COSTS: tuple[tuple[str, str, str], ...] = (
    ("mtls", "tcp", "mTLS vs plaintext TCP"),
    ("tcp", "unix", "plaintext TCP vs the unix socket"),
    ("mtls", "unix", "mTLS TCP vs the unix socket"),
    ("unix_b", "unix", "agent B vs agent A, both on their unix socket (should be ~0)"),
)
HANDSHAKE_TABLE = (
    "handshake (fresh channel to the end of its first AcquirePermit; alternating blocks, ms)"
)
CALLS_TABLE = (
    "calls (sequential unary AcquirePermit on an established channel; alternating blocks, µs)"
)
COST_TABLE = "cost (paired: median over rounds of a's block median - b's, same round)"


@dataclass(frozen=True)
class Plan:
    handshake_rounds: int
    handshake_block: int  # fresh channels per transport per round
    rounds: int  # call blocks per transport
    block: int  # calls per block
    warmup: int  # calls per transport before the first round
    credentials: int  # channel_credentials(files) timings
    idle: float  # seconds the agents' idle CPU is measured over

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(4, 4, 8, 60, 100, 10, 0.5)
        return cls(40, 8, 200, 50, 500, 50, 3.0)

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
            "--credentials",
            str(self.credentials),
            "--idle",
            str(self.idle),
        ]


# ------------------------------------------------------------------------------------------
# The client process
# ------------------------------------------------------------------------------------------

_TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 1e7


def _cpu_ns(pid: int) -> float | None:
    """utime + stime of process ``pid`` in ns, or None without ``/proc``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * _TICK_NS


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        import grpc

        from mesh.v1 import agent_pb2
        from mesh_core.tls import TlsFiles, channel_credentials

        self.args = args
        self.files = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
        credentials = channel_credentials(self.files)
        self.targets = {
            "unix": args.unix,
            "tcp": args.tcp,
            "mtls": args.mtls,
            "unix_b": args.unix_b,
        }
        self.credentials: dict[str, grpc.ChannelCredentials | None] = {
            name: credentials if name == "mtls" else None for name in TRANSPORTS
        }
        self.pids = {
            "unix": args.agent_a_pid,
            "tcp": args.agent_a_pid,
            "mtls": args.agent_b_pid,
            "unix_b": args.agent_b_pid,
        }
        self.request = agent_pb2.AcquirePermitRequest(service=SERVICE)
        self.idle_ns_per_s: dict[int, float] = {}

    def measure_idle(self) -> dict[str, float | None]:
        """Each agent's CPU over ``--idle`` quiet seconds: ns of CPU per second of wall time."""
        pids = sorted(set(self.pids.values()))
        before = {pid: _cpu_ns(pid) for pid in pids}
        t0 = time.perf_counter_ns()
        time.sleep(self.args.idle)
        wall = (time.perf_counter_ns() - t0) / 1e9
        rates: dict[str, float | None] = {}
        for pid in pids:
            after, start = _cpu_ns(pid), before[pid]
            rate = None if after is None or start is None else (after - start) / wall
            if rate is not None:
                self.idle_ns_per_s[pid] = rate
            name = "a" if pid == self.args.agent_a_pid else "b"
            rates[f"agent_{name}_idle_cpu_pct"] = None if rate is None else rate / 1e7
        return rates

    def agent_cpu(self, name: str, before: float | None, wall_ns: int) -> float:
        """The serving agent's CPU since ``before``, less its idle CPU over ``wall_ns``."""
        pid = self.pids[name]
        after = _cpu_ns(pid)
        if before is None or after is None:
            return 0.0
        return after - before - self.idle_ns_per_s.get(pid, 0.0) * wall_ns / 1e9

    def channel(self, name: str, fresh: bool) -> Any:
        import grpc

        options = [("grpc.use_local_subchannel_pool", 1)] if fresh else []
        credentials = self.credentials[name]
        if credentials is None:
            return grpc.insecure_channel(self.targets[name], options=options)
        return grpc.secure_channel(self.targets[name], credentials, options=options)

    def handshakes(self) -> dict[str, Any]:
        import grpc

        from mesh.v1 import agent_pb2_grpc

        names = tuple(TRANSPORTS)
        total: dict[str, list[float]] = {name: [] for name in names}
        second: dict[str, list[float]] = {name: [] for name in names}
        block_median: dict[str, list[float]] = {name: [] for name in names}
        client_cpu: dict[str, list[float]] = {name: [] for name in names}
        agent_cpu: dict[str, float] = dict.fromkeys(names, 0.0)
        errors = dict.fromkeys(names, 0)
        for name in names:  # one unmeasured handshake each: imports, first-use costs
            with self.channel(name, fresh=True) as channel:
                stub = agent_pb2_grpc.AgentServiceStub(channel)
                stub.AcquirePermit(self.request, timeout=10, wait_for_ready=True)
        for r in range(self.args.handshake_rounds):
            for name in order(names, r):
                block: list[float] = []
                cpu = 0
                agent_before = _cpu_ns(self.pids[name])
                wall0 = time.perf_counter_ns()
                for _ in range(self.args.handshake_block):
                    cpu0 = time.process_time_ns()
                    t0 = time.perf_counter_ns()
                    channel = self.channel(name, fresh=True)
                    try:
                        stub = agent_pb2_grpc.AgentServiceStub(channel)
                        stub.AcquirePermit(self.request, timeout=10, wait_for_ready=True)
                        t1 = time.perf_counter_ns()
                        cpu += time.process_time_ns() - cpu0
                        stub.AcquirePermit(self.request, timeout=5)
                        t2 = time.perf_counter_ns()
                    except grpc.RpcError:
                        errors[name] += 1
                        continue
                    finally:
                        channel.close()
                    total[name].append(t1 - t0)
                    second[name].append(t2 - t1)
                    block.append(t1 - t0)
                agent_cpu[name] += self.agent_cpu(
                    name, agent_before, time.perf_counter_ns() - wall0
                )
                if block:
                    block_median[name].append(statistics.median(block))
                    client_cpu[name].append(cpu / len(block))
        return {
            "total_ns": total,
            "second_ns": second,
            "block_median_ns": block_median,
            "client_cpu_ns": client_cpu,
            "agent_cpu_ns": agent_cpu,
            "errors": errors,
        }

    def calls(self) -> dict[str, Any]:
        import grpc

        from mesh.v1 import agent_pb2_grpc

        names = tuple(TRANSPORTS)
        channels = {name: self.channel(name, fresh=False) for name in names}
        stubs = {name: agent_pb2_grpc.AgentServiceStub(channels[name]) for name in names}
        latencies: dict[str, list[int]] = {name: [] for name in names}
        block_p50: dict[str, list[float]] = {name: [] for name in names}
        client_cpu: dict[str, list[float]] = {name: [] for name in names}
        agent_cpu: dict[str, float] = dict.fromkeys(names, 0.0)
        errors = dict.fromkeys(names, 0)
        request = self.request
        try:
            for name in names:
                for _ in range(self.args.warmup):
                    stubs[name].AcquirePermit(request, timeout=5)
            started = time.monotonic()
            for r in range(self.args.rounds):
                for name in order(names, r):
                    call = stubs[name].AcquirePermit
                    block: list[int] = []
                    agent_before = _cpu_ns(self.pids[name])
                    wall0 = time.perf_counter_ns()
                    cpu0 = time.process_time_ns()
                    for _ in range(self.args.block):
                        t0 = time.perf_counter_ns()
                        try:
                            call(request, timeout=5)
                        except grpc.RpcError:
                            errors[name] += 1
                            continue
                        block.append(time.perf_counter_ns() - t0)
                    cpu = time.process_time_ns() - cpu0
                    agent_cpu[name] += self.agent_cpu(
                        name, agent_before, time.perf_counter_ns() - wall0
                    )
                    if block:
                        latencies[name].extend(block)
                        block_p50[name].append(statistics.median(block))
                        client_cpu[name].append(cpu / len(block))
            seconds = round(time.monotonic() - started, 1)
        finally:
            for channel in channels.values():
                channel.close()
        return {
            "lat_ns": latencies,
            "block_p50_ns": block_p50,
            "client_cpu_ns": client_cpu,
            "agent_cpu_ns": agent_cpu,
            "errors": errors,
            "seconds": seconds,
        }

    def credentials_cost(self) -> list[float]:
        from mesh_core.tls import channel_credentials

        samples: list[float] = []
        for _ in range(self.args.credentials):
            t0 = time.perf_counter_ns()
            channel_credentials(self.files)
            samples.append(time.perf_counter_ns() - t0)
        return samples


def worker_main(argv: list[str] | None = None) -> None:
    plan = Plan.of(False)
    parser = argparse.ArgumentParser(prog=f"python -m {WORKER}", description=__doc__)
    for flag in ("--unix", "--tcp", "--mtls", "--unix-b"):
        parser.add_argument(flag, required=True, help="agent address")
    parser.add_argument("--agent-a-pid", type=int, required=True)
    parser.add_argument("--agent-b-pid", type=int, required=True)
    parser.add_argument("--tls-cert", type=Path, required=True)
    parser.add_argument("--tls-key", type=Path, required=True)
    parser.add_argument("--tls-ca", type=Path, required=True)
    parser.add_argument("--handshake-rounds", type=int, default=plan.handshake_rounds)
    parser.add_argument("--handshake-block", type=int, default=plan.handshake_block)
    parser.add_argument("--rounds", type=int, default=plan.rounds)
    parser.add_argument("--block", type=int, default=plan.block)
    parser.add_argument("--warmup", type=int, default=plan.warmup)
    parser.add_argument("--credentials", type=int, default=plan.credentials)
    parser.add_argument("--idle", type=float, default=plan.idle)
    args = parser.parse_args(argv)
    worker = Worker(args)
    result = {
        "idle": worker.measure_idle(),
        "credentials_ns": worker.credentials_cost(),
        "handshake": worker.handshakes(),
        "calls": worker.calls(),
    }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------
# The section
# ------------------------------------------------------------------------------------------


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


def _us(ns: float) -> float:
    return round(ns / 1000, 1)


def _diffs(block: dict[str, list[float]], a: str, b: str) -> list[float]:
    return [x - y for x, y in zip(block[a], block[b], strict=False)]


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


def _per(total_ns: float, count: int) -> float | None:
    return total_ns / count if count else None


def handshake_rows(data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, what in TRANSPORTS.items():
        samples = data["total_ns"][name]
        diffs = _diffs(data["block_median_ns"], name, "tcp")
        base = name == "tcp"
        agent = _per(data["agent_cpu_ns"][name], len(samples))
        rows.append(
            {
                "table": HANDSHAKE_TABLE,
                "transport": name,
                "samples": len(samples),
                "errors": data["errors"][name],
                "p50_ms": _ms(statistics.median(samples)),
                "second_call_p50_ms": _ms(statistics.median(data["second_ns"][name])),
                "setup_p50_ms": _ms(
                    statistics.median(
                        [t - c for t, c in zip(samples, data["second_ns"][name], strict=True)]
                    )
                ),
                "p90_ms": _ms(percentile(samples, 90)),
                "p99_ms": _ms(percentile(samples, 99)),
                "min_ms": _ms(min(samples)),
                "client_cpu_ms": _ms(statistics.median(data["client_cpu_ns"][name])),
                "agent_cpu_ms": None if agent is None else _ms(agent),
                "vs_tcp_paired_ms": None if base else _ms(statistics.median(diffs)),
                "rounds_slower": None if base else f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
                "what": what,
            }
        )
    return rows


def call_rows(data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, what in TRANSPORTS.items():
        lat = data["lat_ns"][name]
        diffs = _diffs(data["block_p50_ns"], name, "tcp")
        base = name == "tcp"
        agent = _per(data["agent_cpu_ns"][name], len(lat))
        rows.append(
            {
                "table": CALLS_TABLE,
                "transport": name,
                "calls": len(lat),
                "errors": data["errors"][name],
                "p50_us": _us(statistics.median(lat)),
                "p90_us": _us(percentile(lat, 90)),
                "p99_us": _us(percentile(lat, 99)),
                "block_p50_min_us": _us(min(data["block_p50_ns"][name])),
                "block_p50_max_us": _us(max(data["block_p50_ns"][name])),
                "client_cpu_us": _us(statistics.median(data["client_cpu_ns"][name])),
                "agent_cpu_us": None if agent is None else _us(agent),
                "vs_tcp_paired_us": None if base else _us(statistics.median(diffs)),
                "rounds_slower": None if base else f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
                "what": what,
            }
        )
    return rows


def cost_rows(handshake: dict[str, Any], calls: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for a, b, what in COSTS:
        shake = _diffs(handshake["block_median_ns"], a, b)
        call = _diffs(calls["block_p50_ns"], a, b)
        shake_q1, shake_q3 = _quartiles(shake)
        call_q1, call_q3 = _quartiles(call)
        rows.append(
            {
                "table": COST_TABLE,
                "compare": f"{a} - {b}",
                "handshake_ms": _ms(statistics.median(shake)),
                "handshake_q1_ms": _ms(shake_q1),
                "handshake_q3_ms": _ms(shake_q3),
                "handshake_rounds_a_slower": f"{sum(d > 0 for d in shake)}/{len(shake)}",
                "call_us": _us(statistics.median(call)),
                "call_q1_us": _us(call_q1),
                "call_q3_us": _us(call_q3),
                "call_rounds_a_slower": f"{sum(d > 0 for d in call)}/{len(call)}",
                "call_client_cpu_us": _us(
                    statistics.median(calls["client_cpu_ns"][a])
                    - statistics.median(calls["client_cpu_ns"][b])
                ),
                "what": what,
            }
        )
    return rows


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


def _agent(procs: Processes, name: str, control: str, *extra: str) -> tuple[int, list[str]]:
    workdir = procs.workdir
    pid, addresses = _start(
        procs,
        name,
        "mesh_agent",
        "run",
        "--control",
        control,
        "--node-id",
        name,
        "--socket",
        str(workdir / f"{name}.sock"),
        "--state-dir",
        str(workdir / f"{name}-state"),
        "--listen",
        "127.0.0.1:0",
        *extra,
    )
    if len(addresses) != 2 or not addresses[0].startswith("unix:"):
        raise BenchError(f"{name}: expected a unix socket and a TCP address, got {addresses}")
    return pid, addresses


@section("mtls")
def run(options: Options) -> list[Row]:
    from control import certs

    plan = Plan.of(options.quick)
    workdir = options.workdir
    pki = workdir / "pki"
    certs.init_ca(pki / "ca", "bench.mesh")
    certs.issue(pki / "ca", pki / "control", server="127.0.0.1")
    certs.issue(pki / "ca", pki / "agent-b", node="agent-b", ips=["127.0.0.1"])
    # An application on node agent-b: the agent's listener admits the node's own identity.
    certs.issue(pki / "ca", pki / "client", node="agent-b")
    with Processes(workdir) as procs:
        serve = ["serve", "--listen", "127.0.0.1:0", "--store", "memory:"]
        control_plain = _start(procs, "control-plain", "control", *serve)[1][0]
        tls_serve = [*serve, *tls.flags(pki / "control")]
        control_mtls = _start(procs, "control-mtls", "control", *tls_serve)[1][0]
        pid_a, (unix_a, tcp_a) = _agent(procs, "agent-a", control_plain)
        pid_b, (unix_b, tcp_b) = _agent(procs, "agent-b", control_mtls, *tls.flags(pki / "agent-b"))
        err = workdir / "mtls-worker.err"
        with err.open("wb") as stderr:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    WORKER,
                    "--unix",
                    unix_a,
                    "--tcp",
                    tcp_a,
                    "--mtls",
                    tcp_b,
                    "--unix-b",
                    unix_b,
                    "--agent-a-pid",
                    str(pid_a),
                    "--agent-b-pid",
                    str(pid_b),
                    *tls.flags(pki / "client"),
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
        raise RuntimeError(f"mtls worker exited with {result.returncode}:\n{tail}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    handshake, calls = data["handshake"], data["calls"]

    rows = handshake_rows(handshake)
    rows.extend(call_rows(calls))
    costs = cost_rows(handshake, calls)
    rows.extend(costs)
    credentials = data["credentials_ns"]
    rows.append(
        {
            "table": "credentials (mesh_core.tls.channel_credentials(files): read and check the "
            "three files, once per AgentLink channel)",
            "samples": len(credentials),
            "median_us": _us(statistics.median(credentials)),
            "min_us": _us(min(credentials)),
            "max_us": _us(max(credentials)),
        }
    )
    shakes = {row["transport"]: row for row in rows if row["table"] == HANDSHAKE_TABLE}
    per_call = {row["transport"]: row for row in rows if row["table"] == CALLS_TABLE}
    cost = {row["compare"]: row for row in costs}
    summary: Row = {"table": "summary", "rpc": "mesh.v1.AgentService/AcquirePermit"}
    for name in TRANSPORTS:
        summary[f"handshake_{name}_p50_ms"] = shakes[name]["p50_ms"]
        summary[f"handshake_{name}_p99_ms"] = shakes[name]["p99_ms"]
    for name in TRANSPORTS:
        summary[f"call_{name}_p50_us"] = per_call[name]["p50_us"]
        summary[f"call_{name}_p99_us"] = per_call[name]["p99_us"]
    summary.update(
        {
            "handshake_mtls_vs_tcp_ms": cost["mtls - tcp"]["handshake_ms"],
            "handshake_tcp_vs_unix_ms": cost["tcp - unix"]["handshake_ms"],
            "call_mtls_vs_tcp_us": cost["mtls - tcp"]["call_us"],
            "call_mtls_vs_tcp_rounds_slower": cost["mtls - tcp"]["call_rounds_a_slower"],
            "call_tcp_vs_unix_us": cost["tcp - unix"]["call_us"],
            "call_agents_alike_us": cost["unix_b - unix"]["call_us"],
            "handshake_client_cpu_mtls_ms": shakes["mtls"]["client_cpu_ms"],
            "handshake_client_cpu_tcp_ms": shakes["tcp"]["client_cpu_ms"],
            "handshake_agent_cpu_mtls_ms": shakes["mtls"]["agent_cpu_ms"],
            "handshake_agent_cpu_tcp_ms": shakes["tcp"]["agent_cpu_ms"],
            "call_client_cpu_mtls_us": per_call["mtls"]["client_cpu_us"],
            "call_client_cpu_tcp_us": per_call["tcp"]["client_cpu_us"],
            "call_agent_cpu_mtls_us": per_call["mtls"]["agent_cpu_us"],
            "call_agent_cpu_tcp_us": per_call["tcp"]["agent_cpu_us"],
            "credentials_us": _us(statistics.median(credentials)),
            **{key: None if v is None else round(v, 2) for key, v in data["idle"].items()},
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
