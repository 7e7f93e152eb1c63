"""Section ``scale``: N simulated nodes on one control server, state of the world and delta.

Real processes on loopback: mesh-control (``python -m control serve --store memory:``, default
debounce) holding ``SERVICES`` services (two endpoints and a full policy each, applied with
the ``ApplyServices`` RPC ``meshctl apply`` sends), and one load generator
(``bench/_loadgen.py``) holding N nodes, each a real ADS stream on its own TCP connection with
its own node id, subscribed like an agent with local clients (LDS/CDS wildcard, RDS, EDS and
``mesh.v1.ServicePolicy`` by name) and ACKing everything. On a machine with 2 or more cores
the control server is pinned to core 0 and the generator to core 1 (every thread).

For each mode (``sotw``, ``delta``) and N (100 and 1000; ``--sizes`` overrides, ``--quick``
uses 10 and 50): start both, connect the N nodes and wait until every node has ACKed all
five types, let them idle ``IDLE_SETTLE`` (2 s; 0.5 s with ``--quick``), then R config
changes (10, 3 with ``--quick``), each an ``ApplyServices`` of service ``svc-0000`` with its
endpoint ports changed (an EDS change). A change's latency
runs from just before the RPC to the moment the last of the N nodes has written its ACK of
the new EDS (both ``time.time()`` on this machine).

* ``rss_per_node_kb``: (control-server VmRSS with N idle connected nodes - VmRSS before any
  node connected) / N, from ``/proc/PID/status``;
* ``cpu_s_per_change``: control-server utime+stime (``/proc/PID/stat``) from just before the
  RPC to ``CPU_SETTLE`` after the last ACK, per change; ``cpu_ms_per_node_push`` is that / N.

Goals (this 2-core machine): p99 < 1 s at N=1000, < 20 KB RSS per idle connected node. The
section prints one JSON line per mode (its largest N) after its rows are computed; with
``MESH_BENCH_SCALE_LAST=1`` in the environment (``make bench-scale``) those lines are printed
instead when the process exits, after the run's JSON summary, so they are the last lines.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import grpc

from bench import Options, Row, percentile, section
from bench._procs import BenchError, Proc, Processes
from bench.control import filler_services, make_service
from mesh.v1 import admin_pb2, admin_pb2_grpc

DEFAULT_SIZES = (100, 1000)
QUICK_SIZES = (10, 50)
MODES = ("sotw", "delta")
SERVICES = 5
CHANGED = "svc-0000"
SERVE_TIMEOUT = 320.0
CHANGE_TIMEOUT = 60.0
IDLE_SETTLE = 2.0  # seconds with every node connected and idle, before reading RSS
QUICK_IDLE_SETTLE = 0.5  # the same with --quick (a smoke run: the figures are not kept)
CPU_SETTLE = 0.3  # seconds after the last ACK, for the server to finish reading ACKs
GOAL_P99_S = 1.0
GOAL_RSS_KB = 20.0
GOAL_AT = 1000
CLK_TCK = os.sysconf("SC_CLK_TCK")
LAST_ENV = "MESH_BENCH_SCALE_LAST"
TABLE = "apply -> every node ACKed (per mode and N)"
JSON_KEYS = (
    "mode",
    "nodes",
    "changes",
    "p50_s",
    "p99_s",
    "rss_per_node_kb",
    "cpu_s_per_change",
    "cpu_ms_per_node_push",
    "connect_s",
    "goal_p99",
    "goal_rss",
)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid``, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pin(pid: int, cpu: int) -> None:
    """Pins every thread of ``pid`` (and the threads they start later) to ``cpu``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), {cpu})
        except OSError:
            continue


class LoadGen:
    """The generator's JSON events, read from its stdout by a thread."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        assert proc.popen.stdout is not None
        threading.Thread(
            target=self._read, args=(proc.popen.stdout,), daemon=True, name="bench-loadgen"
        ).start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                if line.startswith("{"):
                    try:
                        self.events.put(json.loads(line))
                    except ValueError:
                        continue
        except (OSError, ValueError):
            pass
        finally:
            self.events.put(None)

    def send(self, command: str) -> None:
        stdin = self.proc.popen.stdin
        assert stdin is not None
        stdin.write(command + "\n")
        stdin.flush()

    def expect(self, *events: str, timeout: float) -> dict[str, Any]:
        """The next event named one of ``events`` (``failed`` and ``error`` always end it)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"load generator: no {'/'.join(events)} within {timeout}s")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event is None:
                raise BenchError(f"load generator exited:\n{self.proc.errors()}")
            if event["event"] in events or event["event"] in ("failed", "error"):
                return event


def _apply(stub: admin_pb2_grpc.MeshAdminServiceStub, services: list[Any]) -> None:
    stub.ApplyServices(admin_pb2.ApplyServicesRequest(services=services), timeout=60)


def _changed_service(change: int) -> Any:
    port = 50100 + change
    return make_service(CHANGED, (f"10.0.0.1:{port}", f"10.0.0.2:{port}"))


def _goal(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def measure(
    procs: Processes,
    mode: str,
    nodes: int,
    changes: int,
    pinned: bool,
    idle_settle: float = IDLE_SETTLE,
) -> Row:
    """One control server and one generator with ``nodes`` nodes; one row."""
    control_name = f"control-{mode}-{nodes}"
    address = procs.start_ready(
        control_name, "control", "serve", "--listen", "127.0.0.1:0", "--store", "memory:"
    )
    control = procs.procs[-1]
    pid = control.popen.pid
    if pinned:
        pin(pid, 0)
    channel = grpc.insecure_channel(address)
    gen_proc: Proc | None = None
    try:
        stub = admin_pb2_grpc.MeshAdminServiceStub(channel)
        _apply(stub, filler_services(SERVICES))
        time.sleep(0.5)
        rss_before = rss_kb(pid)
        args = ["--control", address, "--nodes", str(nodes), "--mode", mode]
        if pinned:
            args += ["--cpu", "1"]
        gen_proc = procs.python(
            f"loadgen-{mode}-{nodes}", "bench._loadgen", *args, pipe_stdout=True, pipe_stdin=True
        )
        gen = LoadGen(gen_proc)
        gen.expect("ready", timeout=30)
        gen.send("connect")
        served = gen.expect("served", timeout=SERVE_TIMEOUT)
        row: Row = {"table": TABLE, "mode": mode, "nodes": nodes}
        if served["event"] != "served":
            code = served.get("code", "error")
            if code == "UNIMPLEMENTED":
                row["result"] = f"{mode}: server answers UNIMPLEMENTED"
            else:
                details = served.get("details", "")
                row["result"] = f"{mode}: failed ({code}: {details})"[:200]
            return row
        time.sleep(idle_settle)
        rss_idle = rss_kb(pid)
        gen.send("stats")
        gen_stats = gen.expect("stats", timeout=10)

        latencies: list[float] = []
        first: list[float] = []
        cpu: list[float] = []
        gen_cpu: list[float] = []
        versions = 0
        for change in range(changes):
            gen.send(f"arm c{change} EDS")
            gen.expect("armed", timeout=10)
            cpu0, gen_cpu0 = cpu_s(pid), cpu_s(gen_proc.popen.pid)
            t0 = time.time()
            _apply(stub, [_changed_service(change)])
            acked = gen.expect("acked", timeout=CHANGE_TIMEOUT)
            if acked["event"] != "acked":
                raise BenchError(f"{mode} N={nodes}: change {change} not ACKed: {acked}")
            time.sleep(CPU_SETTLE)
            cpu.append(cpu_s(pid) - cpu0)
            gen_cpu.append(cpu_s(gen_proc.popen.pid) - gen_cpu0)
            latencies.append(acked["t_last"] - t0)
            first.append(acked["t_first"] - t0)
            versions = max(versions, int(acked["versions"]))
        if not control.alive:
            raise BenchError(f"{control_name} died:\n{control.errors()}")

        p50, p99 = statistics.median(latencies), percentile(latencies, 99)
        rss_per_node = (rss_idle - rss_before) / nodes
        cpu_change = sum(cpu) / len(cpu)  # the mean: clock ticks are 10 ms
        row.update(
            {
                "result": "ok",
                "changes": changes,
                "connect_s": served["seconds"],
                "p50_s": round(p50, 3),
                "p99_s": round(p99, 3),
                "min_s": round(min(latencies), 3),
                "first_node_p50_s": round(statistics.median(first), 3),
                "rss_before_mib": round(rss_before / 1024, 1),
                "rss_idle_mib": round(rss_idle / 1024, 1),
                "rss_per_node_kb": round(rss_per_node, 1),
                "cpu_s_per_change": round(cpu_change, 4),
                "cpu_ms_per_node_push": round(cpu_change * 1000 / nodes, 3),
                "loadgen_rss_mib": round(gen_stats["rss_kb"] / 1024, 1),
                "loadgen_cpu_s_per_change": round(sum(gen_cpu) / len(gen_cpu), 4),
                "eds_versions": versions,
                "goal_p99": _goal(p99 < GOAL_P99_S) if nodes >= GOAL_AT else None,
                "goal_rss": _goal(rss_per_node < GOAL_RSS_KB),
            }
        )
        return row
    finally:
        channel.close()
        if gen_proc is not None:
            if gen_proc.alive and gen_proc.popen.stdin is not None:
                with contextlib.suppress(OSError, ValueError, subprocess.TimeoutExpired):
                    gen_proc.popen.stdin.write("quit\n")
                    gen_proc.popen.stdin.flush()
                    gen_proc.popen.wait(10)
            procs.stop(gen_proc)
        procs.stop(control)


def json_lines(rows: list[Row]) -> list[str]:
    """One line per mode: its largest N that was measured, or why it was not."""
    lines: list[str] = []
    for mode in MODES:
        mine = [r for r in rows if r.get("mode") == mode and r.get("table") == TABLE]
        if not mine:
            continue
        measured = [r for r in mine if r.get("result") == "ok"]
        if measured:
            row = max(measured, key=lambda r: r["nodes"])
            record = {key: row.get(key) for key in JSON_KEYS}
        else:
            row = max(mine, key=lambda r: r["nodes"])
            record = {"mode": mode, "nodes": row["nodes"], "result": row.get("result")}
            record.update({"p50_s": None, "p99_s": None, "rss_per_node_kb": None})
        lines.append(json.dumps(record, sort_keys=False))
    return lines


def _print_lines(lines: list[str]) -> None:
    for line in lines:
        print(line, flush=True)


@section("scale")
def run(options: Options) -> list[Row]:
    sizes = tuple(sorted(set(options.sizes or (QUICK_SIZES if options.quick else DEFAULT_SIZES))))
    changes = 3 if options.quick else 10
    idle_settle = QUICK_IDLE_SETTLE if options.quick else IDLE_SETTLE
    cores = len(os.sched_getaffinity(0))
    pinned = cores >= 2
    rows: list[Row] = [
        {
            "table": "setup",
            "services": SERVICES,
            "changes_per_case": changes,
            "idle_settle_s": idle_settle,
            "debounce": "default (100ms)",
            "pinning": "control core 0, generator core 1"
            if pinned
            else f"none ({cores} core: control and generator share it)",
        }
    ]
    with Processes(options.workdir) as procs:
        for mode in MODES:
            for nodes in sizes:
                row = measure(procs, mode, nodes, changes, pinned, idle_settle)
                rows.append(row)
                if row.get("result") != "ok":
                    break  # the server does not serve this mode: no larger N either
    lines = json_lines(rows)
    if os.environ.get(LAST_ENV) == "1":
        atexit.register(_print_lines, lines)
    else:
        _print_lines(lines)
    return rows
