"""Section ``control``: how fast mesh-control turns config into what clients use.

* ``snapshot build``: ``build_resources`` + ``Snapshot.build`` for N services (two endpoints
  each, a full policy), in this process.
* ``snapshot build, plain vs traffic rules``: the same, side by side in alternating blocks,
  for N plain services and N services each with 5 subsets and 10 routes (method and header
  matches, splits, a route policy, one fault); the issue's goal is at most 3x a plain service.
* ``apply to call``: real processes. mesh-control (``python -m control serve``), two echo
  backends (``mesh_demo.backend``) and a client calling ``xds:///echo`` in a tight loop
  through grpcio's own xDS client (``bench/_xds_client.py``). Service ``echo`` is flipped
  between the backends with the ``ApplyServices`` RPC ``meshctl apply`` sends; a flip's
  latency runs from just before the RPC to the first reply from the new backend (both
  ``time.time()`` on this machine). Comparisons (file vs memory store, 100 ms debounce vs
  none, plain vs traffic rules) run at N=100, or at the largest size when ``--sizes`` leaves
  100 out.
"""

from __future__ import annotations

import json
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
import yaml

from bench import Options, Row, ratio, section, summary
from bench._procs import BenchError, Proc, Processes, child_env
from control.config import dump_documents, load_documents
from control.resources import build_resources
from mesh.v1 import admin_pb2, admin_pb2_grpc, config_pb2
from mesh_xds.snapshot import Snapshot

DEFAULT_SIZES = (1, 100, 1000)
COMPARE_AT = 100
SERVICE = "echo"
FIRST_CALL_TIMEOUT = 60.0
FLIP_TIMEOUT = 30.0
SETTLE = 0.05  # seconds between a flip being seen and the next apply

# timeout 5s, retry attempts 3, circuit_breaker max_requests 100, outlier detection by
# failure percentage, health checks: every part of the policy the builder translates.
_TEMPLATE = """
name: template
endpoints:
  - address: 10.0.0.1:50051
policy:
  timeout: 5s
  retry: {attempts: 3, retry_on: [UNAVAILABLE], backoff: {base: 25ms, max: 250ms}}
  circuit_breaker: {max_requests: 100, failure_rate: 0.5, window: 10s, min_requests: 20,
                    consecutive_failures: 5, open_for: 30s, half_open_probes: 3,
                    slow_call: {threshold: 1s, rate: 0.8}}
  outlier_detection: {failure_percentage: {threshold: 50, minimum_hosts: 2},
                      base_ejection_time: 30s, max_ejection_percent: 50}
  health_check: {interval: 5s, timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 2}
"""
_template: config_pb2.Service | None = None

# The same service and policy, plus traffic rules: the endpoints carry labels, 5 subsets
# select them, and 10 routes match methods and headers (exact, prefix, regex, present,
# inverted), split calls by weight, set a route policy, and one injects faults; the last
# route matches every call, so no default route is added.
_TRAFFIC_RULES = """
endpoints:
  - {address: 10.0.0.1:50051, labels: {version: v1, track: stable}}
  - {address: 10.0.0.2:50051, labels: {version: v2, track: canary}}
subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: stable, labels: {track: stable}}
  - {name: canary, labels: {track: canary}}
  - {name: v1-stable, labels: {version: v1, track: stable}}
routes:
  - {name: refund, match: {method: /shop.Orders/Refund}, to: {v2: 100}}
  - {match: {method: /shop.Admin/*}, to: {stable: 100}}
  - match: {headers: {x-canary: {exact: "yes"}}}
    to: {canary: 100}
    policy: {timeout: 2s, retry: {attempts: 2}}
  - {match: {headers: {x-user: {prefix: beta-}}}, to: {v1: 50, v2: 50}}
  - {match: {headers: {x-debug: {present: true}}}, to: {v1-stable: 100}}
  - match: {method: /shop.Orders/Get, headers: {x-region: {regex: "eu-[a-z]+"}}}
    to: {v1: 80, v2: 20}
  - {match: {headers: {x-internal: {exact: "no", invert: true}}}, to: {stable: 100}}
  - match: {method: /shop.Orders/Create}
    to: {v1: 90, v2: 10}
    fault: {abort: {status: UNAVAILABLE, percent: 5}, delay: {fixed: 50ms, percent: 10},
            max_active_faults: 5}
  - {match: {method: /shop.Orders/List, headers: {x-tenant: {exact: a}}},
     to: {canary: 30, stable: 70}}
  - {name: split, to: {v1: 90, v2: 10}}
"""
_traffic_template: config_pb2.Service | None = None


def make_service(name: str, addresses: Iterable[str]) -> config_pb2.Service:
    global _template
    if _template is None:
        _template = load_documents(_TEMPLATE, "bench template")[0]
    service = config_pb2.Service()
    service.CopyFrom(_template)
    service.name = name
    del service.endpoints[:]
    for address in addresses:
        service.endpoints.add(address=address)
    return service


def make_traffic_service(name: str, addresses: Iterable[str]) -> config_pb2.Service:
    """:func:`make_service` with the traffic rules of ``_TRAFFIC_RULES`` (its endpoints'
    labels on ``addresses``, in order)."""
    global _traffic_template
    if _traffic_template is None:
        rules = yaml.safe_load(_TRAFFIC_RULES)
        text = dump_documents([make_service("template", [])])
        _traffic_template = load_documents(
            yaml.safe_dump({**yaml.safe_load(text), **rules}), "bench traffic template"
        )[0]
    service = config_pb2.Service()
    service.CopyFrom(_traffic_template)
    service.name = name
    for endpoint, address in zip(service.endpoints, addresses, strict=True):
        endpoint.address = address
    return service


def _address(index: int) -> str:
    return f"10.0.{index // 250}.{index % 250 + 1}:50051"


def filler_services(count: int, prefix: str = "svc") -> list[config_pb2.Service]:
    """``count`` services, each with two endpoints 10.0.x.y:50051 and the full policy."""
    return [
        make_service(f"{prefix}-{i:04d}", (_address(2 * i), _address(2 * i + 1)))
        for i in range(count)
    ]


def traffic_services(count: int, prefix: str = "svc") -> list[config_pb2.Service]:
    """:func:`filler_services` with the traffic rules: 5 subsets and 10 routes each."""
    return [
        make_traffic_service(f"{prefix}-{i:04d}", (_address(2 * i), _address(2 * i + 1)))
        for i in range(count)
    ]


# ------------------------------------------------------------------------------------------
# Snapshot build
# ------------------------------------------------------------------------------------------


def snapshot_build(n: int, repeats: int) -> Row:
    services = filler_services(n)
    Snapshot.build(0, build_resources(services))  # warm up imports and caches
    totals: list[float] = []
    builds: list[float] = []
    for revision in range(1, repeats + 1):
        t0 = time.perf_counter()
        built = build_resources(services)
        t1 = time.perf_counter()
        Snapshot.build(revision, built)
        t2 = time.perf_counter()
        totals.append((t2 - t0) * 1000)
        builds.append((t1 - t0) * 1000)
    stats = summary(totals)
    return {
        "table": "snapshot build (build_resources + Snapshot.build)",
        "services": n,
        "repeats": repeats,
        "median_ms": stats["median_ms"],
        "p99_ms": stats["p99_ms"],
        "us_per_service": round(stats["median_ms"] * 1000 / n, 1),
        "build_resources_share": round(sum(builds) / sum(totals), 2),
    }


TRAFFIC_TABLE = "snapshot build, plain vs traffic rules (alternating blocks)"
TRAFFIC_GOAL = 3.0
"""Traffic rules may cost at most this many times a plain service's build (issue 14)."""


def traffic_rules_build(n: int, blocks: int) -> list[Row]:
    """``build_resources`` + ``Snapshot.build`` of N plain services and of N services with
    traffic rules, in alternating blocks (one build of each per block, the order swapped
    every block); the verdict is on the median of the blocks' ratios."""
    kinds = {"plain": filler_services(n), "traffic rules": traffic_services(n)}
    counts: dict[str, int] = {}
    for kind, services in kinds.items():  # warm up imports and caches
        built = build_resources(services)
        counts[kind] = sum(len(by_name) for by_name in built.values())
        Snapshot.build(0, built)
    totals: dict[str, list[float]] = {kind: [] for kind in kinds}
    for block in range(blocks):
        order = list(kinds) if block % 2 == 0 else list(reversed(kinds))
        for kind in order:
            t0 = time.perf_counter()
            Snapshot.build(block + 1, build_resources(kinds[kind]))
            totals[kind].append((time.perf_counter() - t0) * 1000)
    paired = statistics.median(
        t / p for t, p in zip(totals["traffic rules"], totals["plain"], strict=True)
    )
    rows: list[Row] = []
    for kind, services in kinds.items():
        stats = summary(totals[kind])
        median = statistics.median(totals[kind])
        row: Row = {
            "table": TRAFFIC_TABLE,
            "services": n,
            "kind": kind,
            "subsets": len(services[0].subsets),
            "routes": len(services[0].routes),
            "resources_per_service": counts[kind] // n,
            "blocks": blocks,
            "median_ms": stats["median_ms"],
            "p99_ms": stats["p99_ms"],
            "us_per_service": round(median * 1000 / n, 1),
            "ratio_to_plain": ratio(median, statistics.median(totals["plain"])),
            "paired_ratio": None,
            "goal": None,
            "verdict": None,
        }
        if kind != "plain":
            row["paired_ratio"] = round(paired, 2)
            row["goal"] = f"<= {TRAFFIC_GOAL:g}x"
            row["verdict"] = "PASS" if paired <= TRAFFIC_GOAL else "MISS"
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------
# Apply to call
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    services: int
    store: str = "memory"  # or "file"
    debounce: str | None = None  # None: the server's default (100ms)
    flips: int = 20
    meshctl: bool = False

    @property
    def label(self) -> str:
        return f"n{self.services}-{self.store}-{self.debounce_text.replace('.', '_')}"

    @property
    def debounce_text(self) -> str:
        return self.debounce or "100ms"


class Client:
    """The bench xDS client's change events, read from its stdout by a thread."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        assert proc.popen.stdout is not None
        self._thread = threading.Thread(
            target=self._read, args=(proc.popen.stdout,), daemon=True, name="bench-client"
        )
        self._thread.start()

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

    def wait_for(self, backend: str, timeout: float) -> tuple[float, int]:
        """Time of the first reply from ``backend`` and the failed-call episodes before it."""
        deadline = time.monotonic() + timeout
        failures = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no reply from {backend} within {timeout}s")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event is None:
                raise BenchError(f"bench client exited:\n{self.proc.errors()}")
            if not event["ok"]:
                failures += 1
            elif event["backend"] == backend:
                return float(event["t"]), failures


def _apply(stub: admin_pb2_grpc.MeshAdminServiceStub, services: list[config_pb2.Service]) -> float:
    """Applies ``services``; returns the RPC's duration in ms."""
    t0 = time.perf_counter()
    stub.ApplyServices(admin_pb2.ApplyServicesRequest(services=services), timeout=60)
    return (time.perf_counter() - t0) * 1000


def apply_to_call(
    procs: Processes, workdir: Path, backends: dict[str, str], setup: Setup
) -> tuple[Row, Row | None]:
    store = "memory:" if setup.store == "memory" else f"file:{workdir / ('store-' + setup.label)}"
    extra = ["--debounce", setup.debounce] if setup.debounce else []
    control_name = f"control-{setup.label}"
    address = procs.start_ready(
        control_name, "control", "serve", "--listen", "127.0.0.1:0", "--store", store, *extra
    )
    control = procs.procs[-1]
    channel = grpc.insecure_channel(address)
    client_proc: Proc | None = None
    try:
        stub = admin_pb2_grpc.MeshAdminServiceStub(channel)
        names = sorted(backends)
        echo = {name: make_service(SERVICE, [backends[name]]) for name in names}
        initial_ms = _apply(stub, [*filler_services(setup.services - 1), echo[names[0]]])
        client_proc = procs.python(
            f"client-{setup.label}",
            "bench._xds_client",
            "--service",
            SERVICE,
            "--xds-server",
            address,
            pipe_stdout=True,
        )
        client = Client(client_proc)
        client.wait_for(names[0], FIRST_CALL_TIMEOUT)

        latencies: list[float] = []
        rpcs: list[float] = []
        failures = 0
        current = 0
        for _ in range(setup.flips):
            current = 1 - current
            target = names[current]
            t_apply = time.time()
            rpcs.append(_apply(stub, [echo[target]]))
            t_seen, failed = client.wait_for(target, FLIP_TIMEOUT)
            latencies.append((t_seen - t_apply) * 1000)
            failures += failed
            time.sleep(SETTLE)

        row: Row = {
            "table": "apply to call (ApplyServices RPC -> first reply from the new backend)",
            "services": setup.services,
            "store": setup.store,
            "debounce": setup.debounce_text,
            "flips": setup.flips,
            **summary(latencies),
            "apply_rpc_median_ms": round(statistics.median(rpcs), 2),
            "initial_apply_ms": round(initial_ms, 1),
            "failed_calls": failures,
        }
        meshctl_row = None
        if setup.meshctl:
            current = 1 - current
            target = names[current]
            path = workdir / f"echo-{setup.label}.yaml"
            path.write_text(dump_documents([echo[target]]))
            meshctl_args = [sys.executable, "-m", "control.meshctl", "--control", address]
            meshctl_args += ["apply", "-f", str(path)]
            t_apply = time.time()
            t0 = time.perf_counter()
            result = subprocess.run(
                meshctl_args,
                capture_output=True,
                text=True,
                timeout=60,
                env=child_env(),
                check=False,
            )
            wall_ms = (time.perf_counter() - t0) * 1000
            if result.returncode != 0:
                raise BenchError(f"meshctl apply failed: {result.stderr}")
            t_seen, _ = client.wait_for(target, FLIP_TIMEOUT)
            meshctl_row = {
                "table": "meshctl apply subprocess (once, for reference)",
                "services": setup.services,
                "store": setup.store,
                "debounce": setup.debounce_text,
                "meshctl_wall_ms": round(wall_ms, 1),
                "apply_to_call_ms": round((t_seen - t_apply) * 1000, 1),
            }
        if not control.alive:
            raise BenchError(f"{control_name} died:\n{control.errors()}")
        return row, meshctl_row
    finally:
        channel.close()
        if client_proc is not None:
            procs.stop(client_proc)
        procs.stop(control)


def _flips(n: int, quick: bool) -> int:
    if quick:
        return 3
    return 20 if n <= 100 else 10


def _repeats(n: int, quick: bool) -> int:
    if quick:
        return 3 if n <= 100 else 2
    return 20 if n <= 100 else 5


def _find(rows: list[Row], **match: Any) -> Row | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _compare(what: str, a: Row | None, b: Row | None, key: str = "median_ms") -> Row | None:
    if a is None or b is None:
        return None
    return {
        "table": "side by side (a / b, medians)",
        "compare": what,
        "a_ms": a[key],
        "b_ms": b[key],
        "a_minus_b_ms": round(a[key] - b[key], 2),
        "ratio": ratio(a[key], b[key]),
    }


@section("control")
def run(options: Options) -> list[Row]:
    sizes = tuple(sorted(set(options.sizes or DEFAULT_SIZES)))
    compare_at = COMPARE_AT if COMPARE_AT in sizes else max(sizes)

    builds = [snapshot_build(n, _repeats(n, options.quick)) for n in sizes]
    traffic = traffic_rules_build(compare_at, _repeats(compare_at, options.quick))

    setups: list[Setup] = []
    for n in sizes:
        flips = _flips(n, options.quick)
        setups.append(Setup(n, flips=flips, meshctl=n == compare_at))
        if n == compare_at:
            setups.append(Setup(n, debounce="0s", flips=flips))
            setups.append(Setup(n, store="file", flips=flips))

    applies: list[Row] = []
    meshctl: list[Row] = []
    with Processes(options.workdir) as procs:
        backends = {
            name: procs.start_ready(name, "mesh_demo.backend", "--name", name)
            for name in ("b1", "b2")
        }
        for setup in setups:
            row, extra = apply_to_call(procs, options.workdir, backends, setup)
            applies.append(row)
            if extra is not None:
                meshctl.append(extra)

    n = compare_at
    pairs = [
        _compare(
            f"snapshot build, traffic rules / plain, N={n}",
            _find(traffic, kind="traffic rules"),
            _find(traffic, kind="plain"),
        ),
        _compare(
            f"file / memory store, N={n}",
            _find(applies, services=n, store="file"),
            _find(applies, services=n, store="memory", debounce="100ms"),
        ),
        _compare(
            f"debounce 100ms / 0s, N={n}",
            _find(applies, services=n, store="memory", debounce="100ms"),
            _find(applies, services=n, store="memory", debounce="0s"),
        ),
    ]
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        pairs.append(
            _compare(
                f"apply to call N={large} / N={small}",
                _find(applies, services=large, store="memory", debounce="100ms"),
                _find(applies, services=small, store="memory", debounce="100ms"),
            )
        )
        # Against the next size down: N=1 is all fixed cost, so N/1 says little about scaling.
        below = sizes[-2]
        pairs.append(
            _compare(
                f"snapshot build N={large} / N={below}",
                _find(builds, services=large),
                _find(builds, services=below),
            )
        )
    return builds + traffic + applies + meshctl + [p for p in pairs if p is not None]
