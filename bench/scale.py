"""Section ``scale``: N simulated nodes on one control server, state of the world and delta,
beside a bare ``grpc.aio`` server holding as many.

Real processes on loopback: mesh-control (``python -m control serve --store memory:``, default
debounce) holding ``SERVICES`` services (two endpoints and a full policy each, applied with
the ``ApplyServices`` RPC ``meshctl apply`` sends), and load generators (``bench/_loadgen.py``,
one process per ``NODES_PER_GENERATOR`` nodes) holding N nodes between them, each a real ADS
stream on its own TCP connection with its own node id, subscribed like an agent with local
clients (LDS/CDS wildcard, RDS, EDS and ``mesh.v1.ServicePolicy`` by name) and ACKing
everything. Then the same with the floor (``bench/_floor.py``) in place of mesh-control: a
minimal ``grpc.aio`` ADS servicer that writes the same responses, serialised once, to as many
streams and reads their ACKs. On a machine with 2 or more cores the server (mesh-control or
the floor) is pinned to core 0 and every generator to core 1 (every thread); the soft limit
of open files is raised to the hard one (each stream is a socket on both sides).

For each mode (``sotw``, ``delta``) and N (100 and 1000; ``--sizes`` overrides, ``--quick``
uses 10 and 50 and measures the floor at its largest N only), for mesh-control then the
floor: start the server and the generators, connect the N nodes and wait until every node
has ACKed all five types, let them idle ``IDLE_SETTLE`` (2 s; 0.5 s with ``--quick``), then
R config changes (10, 3 with ``--quick``), each an ``ApplyServices`` of service ``svc-0000``
with its endpoint ports changed (an EDS change; the floor's ``push`` of the same EDS
response). A change's latency runs from just before the RPC (the push) to the moment the
last of the N nodes has written its ACK of the new EDS (both ``time.time()`` on this
machine).

* ``rss_per_node_kb``: (server VmRSS with N idle connected nodes - VmRSS before any node
  connected) / N, from ``/proc/PID/status``; ``floor_rss_per_node_kb`` the same for the floor;
  ``rss_above_floor_kb`` the difference, mesh-control's own share;
* ``cpu_s_per_change``: server utime+stime (``/proc/PID/stat``) from just before the RPC to
  ``CPU_SETTLE`` after the last ACK, per change; ``cpu_ms_per_node_push`` is that / N,
  ``floor_cpu_ms_per_node_push`` the floor's and ``cpu_vs_floor`` their ratio;
  ``loadgen_cpu_s_per_change`` is the generators' CPU over the same time.

Goals (this 2-core machine): p99 < 1 s at N=1000 and <= 2 s at N=10000 (``goal_p99``), CPU per
node per change <= 1.5 x the floor's (``goal_cpu``), mesh-control's own share <= 5 KB per
idle node above the floor (``goal_rss``). The section prints one JSON line per mode (its
largest N) after its rows are computed; with ``MESH_BENCH_SCALE_LAST=1`` in the environment
(``make bench-scale``) those lines are printed instead when the process exits, after the run's
JSON summary, so they are the last lines.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import resource
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import grpc

from bench import Options, Row, percentile, section
from bench._floor import changed_service
from bench._procs import BenchError, Proc, Processes
from bench.control import filler_services
from mesh.v1 import admin_pb2, admin_pb2_grpc

DEFAULT_SIZES = (100, 1000)
QUICK_SIZES = (10, 50)
MODES = ("sotw", "delta")
SERVICES = 5
NODES_PER_GENERATOR = 5000
SERVE_TIMEOUT = 320.0
CHANGE_TIMEOUT = 60.0
IDLE_SETTLE = 2.0  # seconds with every node connected and idle, before reading RSS
QUICK_IDLE_SETTLE = 0.5  # the same with --quick (a smoke run: the figures are not kept)
CPU_SETTLE = 0.3  # seconds after the last ACK, for the server to finish reading ACKs
QUICK_CPU_SETTLE = 0.1  # the same with --quick
GOAL_P99_S = 1.0
GOAL_AT = 1000
GOAL_10K_P99_S = 2.0
GOAL_10K_AT = 10_000
GOAL_RSS_ABOVE_FLOOR_KB = 5.0
GOAL_CPU_VS_FLOOR = 1.5
CLK_TCK = os.sysconf("SC_CLK_TCK")
LAST_ENV = "MESH_BENCH_SCALE_LAST"
TABLE = "apply -> every node ACKed (per mode and N)"
FLOOR_KEYS = (
    "floor_p50_s",
    "floor_p99_s",
    "floor_rss_per_node_kb",
    "rss_above_floor_kb",
    "floor_cpu_ms_per_node_push",
    "cpu_vs_floor",
    "floor_loadgen_cpu_s_per_change",
    "goal_rss",
    "goal_cpu",
)
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
    "floor_rss_per_node_kb",
    "floor_cpu_ms_per_node_push",
    "rss_above_floor_kb",
    "cpu_vs_floor",
    "floor_p99_s",
    "loadgen_cpu_s_per_change",
    "generators",
    "goal_cpu",
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


class Child:
    """A child driven line by line on stdin whose JSON events are read from its stdout by a
    thread (a load generator, the floor)."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        assert proc.popen.stdout is not None
        threading.Thread(
            target=self._read, args=(proc.popen.stdout,), daemon=True, name=f"bench-{proc.name}"
        ).start()

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

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
                raise BenchError(f"{self.proc.name}: no {'/'.join(events)} within {timeout}s")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event is None:
                raise BenchError(f"{self.proc.name} exited:\n{self.proc.errors()}")
            if event["event"] in events or event["event"] in ("failed", "error"):
                return event

    def quit(self, procs: Processes) -> None:
        if self.proc.alive and self.proc.popen.stdin is not None:
            with contextlib.suppress(OSError, ValueError, subprocess.TimeoutExpired):
                self.proc.popen.stdin.write("quit\n")
                self.proc.popen.stdin.flush()
                self.proc.popen.wait(10)
        procs.stop(self.proc)


def generator_count(nodes: int) -> int:
    """Load generator processes for ``nodes``: one per ``NODES_PER_GENERATOR``."""
    return max(1, -(-nodes // NODES_PER_GENERATOR))


class Generators:
    """The load generators holding ``nodes`` nodes between them (node ids apart), answered
    as one: served when every one is, a change ACKed when the last node of all has ACKed."""

    def __init__(
        self, procs: Processes, name: str, address: str, mode: str, nodes: int, cpu: int | None
    ) -> None:
        count = generator_count(nodes)
        self.children: list[Child] = []
        first = 0
        for index in range(count):
            share = nodes // count + (1 if index < nodes % count else 0)
            args = ["--control", address, "--nodes", str(share), "--mode", mode]
            args += ["--first-index", str(first)]
            if cpu is not None:
                args += ["--cpu", str(cpu)]
            proc = procs.python(
                f"{name}-{index}", "bench._loadgen", *args, pipe_stdout=True, pipe_stdin=True
            )
            self.children.append(Child(proc))
            first += share
        for child in self.children:
            child.expect("ready", timeout=30)

    def send(self, command: str) -> None:
        for child in self.children:
            child.send(command)

    def expect(self, *events: str, timeout: float) -> list[dict[str, Any]]:
        return [child.expect(*events, timeout=timeout) for child in self.children]

    def cpu_s(self) -> float:
        return sum(cpu_s(child.pid) for child in self.children)

    def connect(self) -> dict[str, Any]:
        """Every node connected and served, or the first failure."""
        self.send("connect")
        answers = self.expect("served", timeout=SERVE_TIMEOUT)
        for answer in answers:
            if answer["event"] != "served":
                return answer
        return {"event": "served", "seconds": max(a["seconds"] for a in answers)}

    def rss_kb(self) -> int:
        self.send("stats")
        return sum(int(stats["rss_kb"]) for stats in self.expect("stats", timeout=10))

    def arm(self, ident: str, type_name: str) -> None:
        self.send(f"arm {ident} {type_name}")
        self.expect("armed", timeout=10)

    def acked(self, what: str) -> dict[str, Any]:
        answers = self.expect("acked", timeout=CHANGE_TIMEOUT)
        for answer in answers:
            if answer["event"] != "acked":
                raise BenchError(f"{what} not ACKed: {answer}")
        return {
            "t_first": min(a["t_first"] for a in answers),
            "t_last": max(a["t_last"] for a in answers),
            "versions": max(int(a["versions"]) for a in answers),
        }

    def stop(self, procs: Processes) -> None:
        for child in self.children:
            child.quit(procs)


class Server:
    """What the nodes connect to: mesh-control, or the floor."""

    name = ""
    pid = 0

    def start(self, procs: Processes, mode: str, nodes: int, pinned: bool) -> str:
        """Starts it with its config; returns its address."""
        raise NotImplementedError

    def change(self, change: int) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def stop(self, procs: Processes) -> None:
        raise NotImplementedError


class ControlServer(Server):
    """mesh-control with the section's services; a change is an ``ApplyServices``."""

    name = "control"

    def start(self, procs: Processes, mode: str, nodes: int, pinned: bool) -> str:
        self.label = f"control-{mode}-{nodes}"
        address = procs.start_ready(
            self.label, "control", "serve", "--listen", "127.0.0.1:0", "--store", "memory:"
        )
        self.proc = procs.procs[-1]
        self.pid = self.proc.popen.pid
        if pinned:
            pin(self.pid, 0)
        self.channel = grpc.insecure_channel(address)
        self.stub = admin_pb2_grpc.MeshAdminServiceStub(self.channel)
        _apply(self.stub, filler_services(SERVICES))
        time.sleep(0.5)
        return address

    def change(self, change: int) -> None:
        _apply(self.stub, [changed_service(change)])

    def alive(self) -> bool:
        return self.proc.alive

    def stop(self, procs: Processes) -> None:
        self.channel.close()
        procs.stop(self.proc)


class FloorServer(Server):
    """The bare ``grpc.aio`` servicer of ``bench/_floor.py``; a change is its ``push``."""

    name = "floor"

    def __init__(self, changes: int) -> None:
        self.changes = changes

    def start(self, procs: Processes, mode: str, nodes: int, pinned: bool) -> str:
        args = ["--changes", str(self.changes)] + (["--cpu", "0"] if pinned else [])
        proc = procs.python(
            f"floor-{mode}-{nodes}", "bench._floor", *args, pipe_stdout=True, pipe_stdin=True
        )
        self.child = Child(proc)
        ready = self.child.expect("ready", timeout=30)
        self.pid = proc.popen.pid
        time.sleep(0.2)
        return str(ready["address"])

    def change(self, change: int) -> None:
        self.child.send(f"push {change}")

    def alive(self) -> bool:
        return self.child.proc.alive

    def stop(self, procs: Processes) -> None:
        self.child.quit(procs)


def _apply(stub: admin_pb2_grpc.MeshAdminServiceStub, services: list[Any]) -> None:
    stub.ApplyServices(admin_pb2.ApplyServicesRequest(services=services), timeout=60)


def _goal(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def serve_nodes(
    procs: Processes,
    server: Server,
    mode: str,
    nodes: int,
    changes: int,
    pinned: bool,
    idle_settle: float = IDLE_SETTLE,
    cpu_settle: float = CPU_SETTLE,
) -> dict[str, Any]:
    """``nodes`` nodes on ``server``, idle, then ``changes`` changes: its figures."""
    address = server.start(procs, mode, nodes, pinned)
    gens: Generators | None = None
    try:
        rss_before = rss_kb(server.pid)
        name = f"loadgen-{server.name}-{mode}-{nodes}"
        gens = Generators(procs, name, address, mode, nodes, 1 if pinned else None)
        served = gens.connect()
        if served["event"] != "served":
            code = served.get("code", "error")
            if code == "UNIMPLEMENTED":
                return {"result": f"{mode}: server answers UNIMPLEMENTED"}
            details = served.get("details", "")
            return {"result": f"{mode}: failed ({code}: {details})"[:200]}
        time.sleep(idle_settle)
        rss_idle = rss_kb(server.pid)
        gen_rss = gens.rss_kb()

        latencies: list[float] = []
        first: list[float] = []
        cpu: list[float] = []
        gen_cpu: list[float] = []
        versions = 0
        for change in range(changes):
            gens.arm(f"c{change}", "EDS")
            cpu0, gen_cpu0 = cpu_s(server.pid), gens.cpu_s()
            t0 = time.time()
            server.change(change)
            acked = gens.acked(f"{server.name} {mode} N={nodes}: change {change}")
            time.sleep(cpu_settle)
            cpu.append(cpu_s(server.pid) - cpu0)
            gen_cpu.append(gens.cpu_s() - gen_cpu0)
            latencies.append(acked["t_last"] - t0)
            first.append(acked["t_first"] - t0)
            versions = max(versions, acked["versions"])
        if not server.alive():
            raise BenchError(f"{server.name} {mode} N={nodes} died")
        cpu_change = sum(cpu) / len(cpu)  # the mean: clock ticks are 10 ms
        return {
            "result": "ok",
            "connect_s": served["seconds"],
            "latencies": latencies,
            "first": first,
            "rss_before_kb": rss_before,
            "rss_idle_kb": rss_idle,
            "cpu_s_per_change": cpu_change,
            "loadgen_rss_kb": gen_rss,
            "loadgen_cpu_s_per_change": sum(gen_cpu) / len(gen_cpu),
            "versions": versions,
        }
    finally:
        if gens is not None:
            gens.stop(procs)
        server.stop(procs)


def measure(
    procs: Processes,
    mode: str,
    nodes: int,
    changes: int,
    pinned: bool,
    idle_settle: float = IDLE_SETTLE,
    cpu_settle: float = CPU_SETTLE,
    with_floor: bool = True,
) -> Row:
    """mesh-control with ``nodes`` nodes, then (``with_floor``) the floor with as many; one
    row. Without the floor its columns and the goals read against it are None."""
    row: Row = {"table": TABLE, "mode": mode, "nodes": nodes}
    settles = (idle_settle, cpu_settle)
    mine = serve_nodes(procs, ControlServer(), mode, nodes, changes, pinned, *settles)
    if mine["result"] != "ok":
        row["result"] = mine["result"]
        return row
    floor: dict[str, Any] | None = None
    if with_floor:
        floor = serve_nodes(procs, FloorServer(changes), mode, nodes, changes, pinned, *settles)
        if floor["result"] != "ok":
            raise BenchError(f"the floor failed at {mode} N={nodes}: {floor['result']}")
    latencies = mine["latencies"]
    p50, p99 = statistics.median(latencies), percentile(latencies, 99)
    rss_per_node = (mine["rss_idle_kb"] - mine["rss_before_kb"]) / nodes
    cpu_node = mine["cpu_s_per_change"] * 1000 / nodes
    goal_p99 = None
    if nodes >= GOAL_10K_AT:
        goal_p99 = _goal(p99 <= GOAL_10K_P99_S)
    elif nodes >= GOAL_AT:
        goal_p99 = _goal(p99 < GOAL_P99_S)
    beside: dict[str, Any] = dict.fromkeys(FLOOR_KEYS)
    if floor is not None:
        floor_rss = (floor["rss_idle_kb"] - floor["rss_before_kb"]) / nodes
        floor_cpu_node = floor["cpu_s_per_change"] * 1000 / nodes
        cpu_ratio = cpu_node / floor_cpu_node if floor_cpu_node > 0 else None
        above = rss_per_node - floor_rss
        beside = {
            "floor_p50_s": round(statistics.median(floor["latencies"]), 3),
            "floor_p99_s": round(percentile(floor["latencies"], 99), 3),
            "floor_rss_per_node_kb": round(floor_rss, 1),
            "rss_above_floor_kb": round(above, 1),
            "floor_cpu_ms_per_node_push": round(floor_cpu_node, 3),
            "cpu_vs_floor": round(cpu_ratio, 2) if cpu_ratio is not None else None,
            "floor_loadgen_cpu_s_per_change": round(floor["loadgen_cpu_s_per_change"], 4),
            "goal_rss": _goal(above <= GOAL_RSS_ABOVE_FLOOR_KB),
            "goal_cpu": _goal(cpu_ratio is not None and cpu_ratio <= GOAL_CPU_VS_FLOOR),
        }
    row.update(
        {
            "result": "ok",
            "changes": changes,
            "generators": generator_count(nodes),
            "connect_s": mine["connect_s"],
            "p50_s": round(p50, 3),
            "p99_s": round(p99, 3),
            "min_s": round(min(latencies), 3),
            "first_node_p50_s": round(statistics.median(mine["first"]), 3),
            "floor_p50_s": beside["floor_p50_s"],
            "floor_p99_s": beside["floor_p99_s"],
            "rss_before_mib": round(mine["rss_before_kb"] / 1024, 1),
            "rss_idle_mib": round(mine["rss_idle_kb"] / 1024, 1),
            "rss_per_node_kb": round(rss_per_node, 1),
            "floor_rss_per_node_kb": beside["floor_rss_per_node_kb"],
            "rss_above_floor_kb": beside["rss_above_floor_kb"],
            "cpu_s_per_change": round(mine["cpu_s_per_change"], 4),
            "cpu_ms_per_node_push": round(cpu_node, 3),
            "floor_cpu_ms_per_node_push": beside["floor_cpu_ms_per_node_push"],
            "cpu_vs_floor": beside["cpu_vs_floor"],
            "loadgen_rss_mib": round(mine["loadgen_rss_kb"] / 1024, 1),
            "loadgen_cpu_s_per_change": round(mine["loadgen_cpu_s_per_change"], 4),
            "floor_loadgen_cpu_s_per_change": beside["floor_loadgen_cpu_s_per_change"],
            "eds_versions": mine["versions"],
            "goal_p99": goal_p99,
            "goal_rss": beside["goal_rss"],
            "goal_cpu": beside["goal_cpu"],
        }
    )
    return row


def raise_open_files() -> int:
    """Raises this process's soft limit of open files to its hard limit (the children
    inherit it); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


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
    cpu_settle = QUICK_CPU_SETTLE if options.quick else CPU_SETTLE
    cores = len(os.sched_getaffinity(0))
    pinned = cores >= 2
    open_files = raise_open_files()
    rows: list[Row] = [
        {
            "table": "setup",
            "services": SERVICES,
            "changes_per_case": changes,
            "idle_settle_s": idle_settle,
            "cpu_settle_s": cpu_settle,
            "debounce": "default (100ms)",
            "pinning": "server (control or floor) core 0, every generator core 1"
            if pinned
            else f"none ({cores} core: server and generators share it)",
            "nodes_per_generator": NODES_PER_GENERATOR,
            "floor": "at the largest N only" if options.quick else "at every N",
            "open_files": open_files,
        }
    ]
    with Processes(options.workdir) as procs:
        for mode in MODES:
            for nodes in sizes:
                # --quick (a smoke run) measures the floor at its largest N only.
                with_floor = not options.quick or nodes == sizes[-1]
                row = measure(
                    procs, mode, nodes, changes, pinned, idle_settle, cpu_settle, with_floor
                )
                rows.append(row)
                if row.get("result") != "ok":
                    break  # the server does not serve this mode: no larger N either
    lines = json_lines(rows)
    if os.environ.get(LAST_ENV) == "1":
        atexit.register(_print_lines, lines)
    else:
        _print_lines(lines)
    return rows
